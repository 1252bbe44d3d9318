"""The library catalogue and the version readers, as data (no files needed)."""

from __future__ import annotations

import pytest
from torchkeeper.engine import libs, versions


@pytest.mark.parametrize("name, key, family, member, major, platform", [
    ("cudart64_110.dll", "cudart64_110.dll", "cudart", "", 11, "windows"),
    ("cudart64_12.dll", "cudart64_12.dll", "cudart", "", 12, "windows"),
    ("cublasLt64_11.dll", "cublasLt64_11.dll", "cublas", "Lt", 11, "windows"),
    ("cudnn_ops_infer64_8.dll", "cudnn_ops_infer64_8.dll", "cudnn", "_ops_infer", 8, "windows"),
    ("cudnn_engines_runtime_compiled64_9.dll", "cudnn_engines_runtime_compiled64_9.dll", "cudnn",
     "_engines_runtime_compiled", 9, "windows"),
    ("libcudnn_ops.so.9.1.0", "libcudnn_ops.so.9", "cudnn", "_ops", 9, "linux"),
    ("libcublasLt.so.12.4.5.8", "libcublasLt.so.12", "cublas", "Lt", 12, "linux"),
    ("libcudart.so.12", "libcudart.so.12", "cudart", "", 12, "linux"),
])
def test_parse(name, key, family, member, major, platform):
    ln = libs.parse(name)
    assert (ln.key, ln.family, ln.member, ln.major, ln.platform) == (key, family, member, major, platform)
    assert libs.key_for(ln.family, ln.member, ln.major, ln.platform) == key


@pytest.mark.parametrize("name", ["cufft64_11.dll", "cudnn_bogus64_9.dll", "libcudnn.so", "nvcc.exe",
                                  "cudnn.lib", "libcudnn_adv_static.a", "torch_cuda.dll"])
def test_not_managed(name):
    assert libs.parse(name) is None


def test_cudnn_sets_match_the_releases():
    assert len(libs.cudnn_keys(8, "windows")) == 7
    assert len(libs.cudnn_keys(9, "windows")) == 8
    assert "cudnn_ext64_9.dll" in libs.cudnn_keys(9, "windows", optional=True)
    assert libs.cuda_keys(11, "windows") == ["cudart64_110.dll", "cublas64_11.dll", "cublasLt64_11.dll"]


def test_cuda_major_from_binary():
    assert libs.cuda_major_from_binary(b"\0load cublasLt64_12.dll\0") == 12
    assert libs.cuda_major_from_binary(b"libcublasLt.so.11\0") == 11
    assert libs.cuda_major_from_binary(b"cublasLt64_11.dll cublasLt64_12.dll") is None  # ambiguous
    assert libs.cuda_major_from_binary(b"nothing") is None


@pytest.mark.parametrize("v, n", [("8.9.7.29", 8907), ("8.5.0", 8500), ("9.1.0.70", 90100),
                                  ("9.10.2.21", 91002), (None, None)])
def test_cudnn_int_matches_torch(v, n):
    assert versions.cudnn_int(v) == n


def test_torch_version_py(tmp_path):
    p = tmp_path / "version.py"
    p.write_text("from typing import Optional\n__version__ = '2.14.1+cu130'\ncuda: Optional[str] = '13.0'\n")
    assert versions.torch_version_py(p) == ("2.14.1+cu130", "13.0")
    p.write_text("__version__ = '2.3.1+cpu'\ncuda: Optional[str] = None\n")
    assert versions.torch_version_py(p) == ("2.3.1+cpu", None)


def test_pins_and_products():
    req = ['nvidia-cublas-cu12==12.4.5.8; platform_system == "Linux"',
           'nvidia-cudnn-cu12==9.1.0.70; platform_system == "Linux"']
    assert versions.pinned(req, r"nvidia-cudnn(-cu\d+)?") == ("nvidia-cudnn-cu12", "9.1.0.70")
    assert versions.cuda_version_from_product("NVIDIA CUDA 12.4.127 Runtime") == "12.4.127"
    assert versions.dotted("6,14,11,12040") == "6.14.11.12040"
