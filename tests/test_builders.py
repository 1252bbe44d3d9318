"""Self-tests of tests/kit/builders.py: the artefacts are real PE/ELF files, real wheels, real venvs."""

from __future__ import annotations

import ctypes
import json
import os
import zipfile

import pefile
import pytest
from elftools.elf.elffile import ELFFile

from kit import builders as b
from torchkeeper.engine import libs


def _files_under(root):
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# ---------------------------------------------------------------- libraries


def test_dll_version_resource_read_by_pefile(tmp_path, builder_cache):
    dll = b.build_dll(tmp_path / "cudnn_ops64_9.dll", file_version="9.5.1.17",
                      strings=["cublasLt64_12.dll"], cache_dir=builder_cache)
    pe = pefile.PE(str(dll))
    assert pe.FILE_HEADER.Machine == pefile.MACHINE_TYPE["IMAGE_FILE_MACHINE_AMD64"]
    assert pe.is_dll()
    assert [i.dll for i in pe.DIRECTORY_ENTRY_IMPORT] == [b"KERNEL32.dll"]
    strings = {}
    for fi in pe.FileInfo:
        for entry in fi:
            if entry.Key == b"StringFileInfo":
                for table in entry.StringTable:
                    strings.update(table.entries)
    assert strings[b"FileVersion"] == b"9.5.1.17"
    assert strings[b"ProductName"] == b"NVIDIA CUDA Deep Neural Network library"
    ffi = pe.VS_FIXEDFILEINFO[0]
    assert (ffi.FileVersionMS >> 16, ffi.FileVersionMS & 0xFFFF, ffi.FileVersionLS >> 16,
            ffi.FileVersionLS & 0xFFFF) == (9, 5, 1, 17)
    data = dll.read_bytes()
    assert b"cublasLt64_12.dll" in data and b"cudnn_ops64_9.dll" in data
    assert libs.cuda_major_from_binary(data) == 12
    assert len(data) < 64 * 1024


def test_dll_product_name_and_comma_version(tmp_path, builder_cache):
    dll = b.build_dll(tmp_path / "cudart64_12.dll", file_version="6,14,11,12040",
                      product_name="NVIDIA CUDA 12.4.127 Runtime", cache_dir=builder_cache)
    info = b.pe_version_info(dll)
    assert info["ProductName"] == "NVIDIA CUDA 12.4.127 Runtime"
    assert info["FileVersion"] == "6,14,11,12040"


def test_dll_without_resource(tmp_path, builder_cache):
    dll = b.build_dll(tmp_path / "cudnn_graph64_9.dll", cache_dir=builder_cache)
    pe = pefile.PE(str(dll))
    assert pe.is_dll()
    assert not getattr(pe, "FileInfo", None)
    assert not hasattr(pe, "VS_FIXEDFILEINFO")
    assert b.pe_version_info(dll) == {}


def test_same_inputs_same_bytes_other_name_other_bytes(tmp_path, builder_cache):
    a = b.build_dll(tmp_path / "x" / "cudnn64_9.dll", file_version="9.1.0.70", cache_dir=builder_cache)
    a2 = b.build_dll(tmp_path / "y" / "cudnn64_9.dll", file_version="9.1.0.70", cache_dir=builder_cache)
    c = b.build_dll(tmp_path / "x" / "cudnn_ops64_9.dll", file_version="9.1.0.70", cache_dir=builder_cache)
    d = b.build_dll(tmp_path / "z" / "cudnn64_9.dll", file_version="9.1.0.70", strings=["other"],
                    cache_dir=builder_cache)
    assert a.read_bytes() == a2.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.read_bytes() != d.read_bytes()


def test_cache_is_used(tmp_path):
    cache = tmp_path / "cache"
    b.build_dll(tmp_path / "one.dll", file_version="1.2.3.4", cache_dir=cache)
    entries = list(cache.iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".dll"
    os.utime(entries[0], (1, 1))
    b.build_dll(tmp_path / "again" / "one.dll", file_version="1.2.3.4", cache_dir=cache)
    assert list(cache.iterdir()) == entries  # nothing new compiled, no temp dirs left
    assert entries[0].stat().st_mtime > 1  # touched on use


def test_so_soname_read_by_pyelftools(tmp_path, builder_cache):
    so = b.build_so(tmp_path / "libcudnn_ops.so.9.5.1", soname="libcudnn_ops.so.9",
                    strings=["libcublasLt.so.12"], cache_dir=builder_cache)
    with open(so, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == "EM_X86_64" and elf["e_type"] == "ET_DYN"
        dyn = elf.get_section_by_name(".dynamic")
        sonames = [t.soname for t in dyn.iter_tags() if t.entry.d_tag == "DT_SONAME"]
    assert sonames == ["libcudnn_ops.so.9"]
    assert b.elf_soname(so) == "libcudnn_ops.so.9"
    assert libs.cuda_major_from_binary(so.read_bytes()) == 12


def test_so_exports_are_callable(tmp_path, builder_cache):
    root = b.cudnn_archive(tmp_path, version="9.5.1.17", platform="linux", cache_dir=builder_cache)
    lib = ctypes.CDLL(str(root / "lib" / "libcudnn.so.9"))
    lib.cudnnGetVersion.restype = ctypes.c_size_t
    assert lib.cudnnGetVersion() == 90501


# ---------------------------------------------------------------- folders


def test_cudnn_archive_windows(tmp_path, builder_cache):
    root = b.cudnn_archive(tmp_path, version="9.5.1.17", cuda_major=12, platform="windows",
                           cache_dir=builder_cache)
    assert root.name == "cudnn-windows-x86_64-9.5.1.17_cuda12-archive"
    dlls = sorted(p.name for p in (root / "bin").iterdir())
    assert dlls == sorted(libs.cudnn_keys(9, "windows"))
    assert (root / "lib" / "x64" / "cudnn.lib").is_file()
    assert (root / "LICENSE").is_file()
    header = (root / "include" / "cudnn_version.h").read_text()
    assert "#define CUDNN_MAJOR 9" in header and "#define CUDNN_MINOR 5" in header
    assert "#define CUDNN_PATCHLEVEL 1" in header
    assert b.pe_version_info(root / "bin" / "cudnn_cnn64_9.dll")["FileVersion"] == "9.5.1.17"
    assert b.pe_version_info(root / "bin" / "cudnn_graph64_9.dll") == {}
    assert b"cublasLt64_12.dll" in (root / "bin" / "cudnn64_9.dll").read_bytes()


def test_cudnn_archive_optional_members_and_cuda11(tmp_path, builder_cache):
    root = b.cudnn_archive(tmp_path, version="9.10.2.21", cuda_major=11, platform="windows",
                           cache_dir=builder_cache)
    names = {p.name for p in (root / "bin").iterdir()}
    assert names == set(libs.cudnn_keys(9, "windows", optional=True))
    assert libs.cuda_major_from_binary((root / "bin" / "cudnn_ext64_9.dll").read_bytes()) == 11


def test_cudnn_archive_linux(tmp_path, builder_cache):
    root = b.cudnn_archive(tmp_path, version="8.9.7.29", cuda_major=12, platform="linux",
                           cache_dir=builder_cache)
    assert root.name == "cudnn-linux-x86_64-8.9.7.29_cuda12-archive"
    lib = root / "lib"
    for key in libs.cudnn_keys(8, "linux"):
        real = lib / f"{key.rsplit('.so.', 1)[0]}.so.8.9.7"
        assert real.is_file() and not real.is_symlink()
        assert (lib / key).is_symlink() and os.readlink(lib / key) == real.name
        assert b.elf_soname(real) == key
    assert "#define CUDNN_MAJOR 8" in (root / "include" / "cudnn_version.h").read_text()


def test_cuda_toolkit_windows(tmp_path, builder_cache):
    root = b.cuda_toolkit(tmp_path, version="12.4.127", platform="windows", cache_dir=builder_cache)
    assert root == tmp_path / "CUDA" / "v12.4"
    vj = json.loads((root / "version.json").read_text())
    assert vj["cuda"]["version"] == "12.4.1"
    assert vj["cuda_cudart"]["version"] == "12.4.127"
    assert vj["libcublas"]["version"] == "12.4.5.8"
    assert "#define CUDART_VERSION 12040" in (root / "include" / "cuda_runtime_api.h").read_text()
    info = b.pe_version_info(root / "bin" / "cudart64_12.dll")
    assert info["ProductName"] == "NVIDIA CUDA 12.4.127 Runtime"
    assert info["FileVersion"] == "6,14,11,12040"
    for name in ("cublas64_12.dll", "cublasLt64_12.dll", "cufft64_11.dll", "nvcc.exe"):
        assert pefile.PE(str(root / "bin" / name)).DOS_HEADER.e_magic == 0x5A4D


def test_cuda_toolkit_linux_and_cuda11_names(tmp_path, builder_cache):
    root = b.cuda_toolkit(tmp_path, version="12.4.127", platform="linux", cache_dir=builder_cache)
    lib64 = root / "lib64"
    assert (lib64 / "libcudart.so.12.4.127").is_file()
    assert os.readlink(lib64 / "libcudart.so.12") == "libcudart.so.12.4.127"
    assert os.readlink(lib64 / "libcublasLt.so.12") == "libcublasLt.so.12.4.5.8"
    assert b.elf_soname(lib64 / "libcublas.so.12.4.5.8") == "libcublas.so.12"
    assert (lib64 / "libcufft.so.11").is_file()
    cudart = ctypes.CDLL(str(lib64 / "libcudart.so.12"))
    v = ctypes.c_int()
    assert cudart.cudaRuntimeGetVersion(ctypes.byref(v)) == 0 and v.value == 12040
    win11 = b.cuda_toolkit(tmp_path / "w", version="11.8", platform="windows", cache_dir=builder_cache)
    assert (win11 / "bin" / "cudart64_110.dll").is_file() and (win11 / "bin" / "cublasLt64_11.dll").is_file()


def test_same_release_same_bytes_across_sources(tmp_path, builder_cache):
    """An archive and a wheel of one cuDNN release carry byte-identical libraries."""
    root = b.cudnn_archive(tmp_path, version="9.1.0.70", platform="windows", cache_dir=builder_cache)
    whl = b.nvidia_wheel(tmp_path / "w", lib="cudnn", version="9.1.0.70", platform="windows",
                         cache_dir=builder_cache)
    with zipfile.ZipFile(whl) as z:
        assert z.read("nvidia/cudnn/bin/cudnn_ops64_9.dll") == (root / "bin" / "cudnn_ops64_9.dll").read_bytes()


# ---------------------------------------------------------------- wheels and pip


def _assert_record_matches(sp, dist, version=None):
    rec = b.record_hashes(sp, dist, version)
    assert rec
    for rel, (digest, size) in rec.items():
        f = sp / rel
        assert f.is_file(), rel
        assert f.stat().st_size == size, rel
        assert b.sha256_file(f) == digest, rel
    return rec


@pytest.mark.parametrize("layout", b.TORCH_LAYOUTS)
def test_torch_wheel_installs_with_real_pip(tmp_path, builder_cache, layout):
    platform = "windows" if layout == "windows" else "linux"
    whl = b.torch_wheel(tmp_path / "w1", layout=layout, cache_dir=builder_cache)
    assert whl.name == "torch-2.3.1+cu121-py3-none-any.whl"
    venv = b.make_venv(tmp_path / "venv")
    b.pip_install(venv, whl)
    sp = b.site_packages(venv)
    assert "__version__ = '2.3.1+cu121'" in (sp / "torch" / "version.py").read_text()
    assert "cuda: Optional[str] = '12.1'" in (sp / "torch" / "version.py").read_text()
    rec = _assert_record_matches(sp, "torch")
    lib = sp / "torch" / "lib"
    managed = {p.name for p in lib.iterdir() if libs.parse(p.name)}
    meta = (b.dist_info(sp, "torch") / "METADATA").read_text()
    if layout == "linux-nvidia":
        assert managed == set()
        assert 'Requires-Dist: nvidia-cudnn-cu12==8.8.1.3; platform_system == "Linux"' in meta
        assert "Requires-Dist: nvidia-cublas-cu12==" in meta and "Requires-Dist: nvidia-cuda-runtime-cu12==" in meta
    else:
        assert managed == set(libs.cuda_keys(12, platform) + libs.cudnn_keys(8, platform))
        assert "nvidia-cudnn" not in meta
        assert all(f"torch/lib/{m}" in rec for m in managed)
    if platform == "windows":
        assert b.pe_version_info(lib / "cudnn_ops_infer64_8.dll")["FileVersion"] == "8.8.1.3"
        assert b"cublasLt64_12.dll" in (lib / "cudnn64_8.dll").read_bytes()
        assert b.pe_version_info(lib / "cudart64_12.dll")["FileVersion"].startswith("6.14.11.12010")
        assert pefile.PE(str(lib / "torch_cpu.dll")).is_dll()
    else:
        for so in lib.iterdir():
            assert b.elf_soname(so) == so.name
    if layout == "linux-torchlib":
        assert b"libcublasLt.so.12" in (lib / "libcudnn_cnn_infer.so.8").read_bytes()

    # reinstalling another version really changes the library bytes
    whl2 = b.torch_wheel(tmp_path / "w2", version="2.3.0+cu121", layout=layout, cudnn="8.9.2.26",
                         cache_dir=builder_cache)
    b.pip_install(venv, whl2, force_reinstall=True)
    rec2 = _assert_record_matches(sp, "torch")
    assert "__version__ = '2.3.0+cu121'" in (sp / "torch" / "version.py").read_text()
    assert not list(sp.glob("~*"))  # pip removed its stash
    if layout != "linux-nvidia":
        for key in libs.cudnn_keys(8, platform):
            assert rec[f"torch/lib/{key}"][0] != rec2[f"torch/lib/{key}"][0], key


def test_torch_wheel_cudnn9_and_cpu(tmp_path, builder_cache):
    whl = b.torch_wheel(tmp_path, version="2.5.1+cu124", cuda="12.4", cudnn="9.1.0.70", cache_dir=builder_cache)
    with zipfile.ZipFile(whl) as z:
        names = {n.rsplit("/", 1)[1] for n in z.namelist() if n.startswith("torch/lib/")}
        assert set(libs.cudnn_keys(9, "windows")) <= names
        assert "cudnn64_8.dll" not in names
        graph = z.read("torch/lib/cudnn_graph64_9.dll")
        (tmp_path / "g.dll").write_bytes(graph)
        (tmp_path / "c.dll").write_bytes(z.read("torch/lib/cudnn_cnn64_9.dll"))
    assert b.pe_version_info(tmp_path / "g.dll") == {}
    assert b.pe_version_info(tmp_path / "c.dll")["FileVersion"] == "9.1.0.70"
    cpu = b.torch_wheel(tmp_path / "cpu", version="2.3.1+cpu", cuda=None, cudnn=None, cache_dir=builder_cache)
    with zipfile.ZipFile(cpu) as z:
        assert "cuda: Optional[str] = None" in z.read("torch/version.py").decode()
        assert not [n for n in z.namelist() if libs.parse(n.rsplit("/", 1)[1])]


def test_torch_wheel_extra_libs(tmp_path, builder_cache):
    whl = b.torch_wheel(tmp_path, extra_libs=["zlibwapi.dll", "cufft64_11.dll"], cache_dir=builder_cache)
    with zipfile.ZipFile(whl) as z:
        data = z.read("torch/lib/zlibwapi.dll")
        assert data[:2] == b"MZ" and b"zlibwapi.dll" in data
        assert "torch/lib/cufft64_11.dll" in z.namelist()


def test_record_format(tmp_path, builder_cache):
    whl = b.nvidia_wheel(tmp_path, lib="cuda_runtime", version="12.4.127", cache_dir=builder_cache)
    with zipfile.ZipFile(whl) as z:
        rec = z.read("nvidia_cuda_runtime_cu12-12.4.127.dist-info/RECORD").decode().splitlines()
    assert rec[-1] == "nvidia_cuda_runtime_cu12-12.4.127.dist-info/RECORD,,"
    path, h, size = rec[0].split(",")
    assert h.startswith("sha256=") and "=" not in h[len("sha256="):] and int(size) >= 0


def test_nvidia_wheels_install(tmp_path, builder_cache):
    wheels = [
        b.nvidia_wheel(tmp_path, lib="cudnn", version="9.1.0.70", cache_dir=builder_cache),
        b.nvidia_wheel(tmp_path, lib="cublas", version="12.4.5.8", cache_dir=builder_cache),
        b.nvidia_wheel(tmp_path, lib="cuda_runtime", version="12.4.127", cache_dir=builder_cache),
    ]
    assert wheels[0].name == "nvidia_cudnn_cu12-9.1.0.70-py3-none-any.whl"
    venv = b.make_venv(tmp_path / "venv")
    b.pip_install(venv, *wheels)
    sp = b.site_packages(venv)
    assert not (sp / "nvidia" / "__init__.py").exists()
    cudnn_lib = sp / "nvidia" / "cudnn" / "lib"
    assert {p.name for p in cudnn_lib.glob("*.so.*")} == set(libs.cudnn_keys(9, "linux"))
    assert b.elf_soname(cudnn_lib / "libcudnn_graph.so.9") == "libcudnn_graph.so.9"
    assert "#define CUDNN_MINOR 1" in (sp / "nvidia" / "cudnn" / "include" / "cudnn_version.h").read_text()
    assert (sp / "nvidia" / "cublas" / "lib" / "libcublasLt.so.12").is_file()
    assert (sp / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so.12").is_file()
    for dist in ("nvidia-cudnn-cu12", "nvidia-cublas-cu12", "nvidia-cuda-runtime-cu12"):
        _assert_record_matches(sp, dist)
    # an upgrade to a newer cuDNN wheel replaces the files
    before = b.sha256_file(cudnn_lib / "libcudnn_ops.so.9")
    b.pip_install(venv, b.nvidia_wheel(tmp_path / "new", lib="cudnn", version="9.5.1.17",
                                       cache_dir=builder_cache), upgrade=True)
    assert b.sha256_file(cudnn_lib / "libcudnn_ops.so.9") != before
    assert b.dist_info(sp, "nvidia-cudnn-cu12").name == "nvidia_cudnn_cu12-9.5.1.17.dist-info"


def test_nvidia_wheel_names_windows_and_cu13(tmp_path, builder_cache):
    w = b.nvidia_wheel(tmp_path, lib="cudnn", version="9.1.0.70", platform="windows", cache_dir=builder_cache)
    with zipfile.ZipFile(w) as z:
        names = set(z.namelist())
    assert {f"nvidia/cudnn/bin/{k}" for k in libs.cudnn_keys(9, "windows")} <= names
    assert "nvidia/cudnn/include/cudnn_version.h" in names
    w13 = b.nvidia_wheel(tmp_path, lib="cublas", cuda_major=13, version="13.1.0.3", cache_dir=builder_cache)
    assert w13.name == "nvidia_cublas-13.1.0.3-py3-none-any.whl"
    with zipfile.ZipFile(w13) as z:
        assert "nvidia/cu13/lib/libcublasLt.so.13" in z.namelist()  # PyPI's merged CUDA 13 folder
    assert b.nvidia_wheel(tmp_path, lib="cuda_runtime", cuda_major=13, version="13.0.96",
                          cache_dir=builder_cache).name == "nvidia_cuda_runtime-13.0.96-py3-none-any.whl"
    assert b.nvidia_wheel(tmp_path, lib="cudnn", cuda_major=13, version="9.13.0.50",
                          cache_dir=builder_cache).name == "nvidia_cudnn_cu13-9.13.0.50-py3-none-any.whl"


def test_portable_python_target_install(tmp_path, builder_cache):
    pe = b.portable_python(tmp_path / "ComfyUI_windows_portable")
    assert pe.name == "python_embeded" and (pe / "python.exe").is_file()
    assert "import site" in (pe / "python311._pth").read_text()
    sp = b.site_packages(pe)
    assert sp == pe / "Lib" / "site-packages"
    b.pip_install_target(sp, b.torch_wheel(tmp_path / "w1", cache_dir=builder_cache))
    assert (sp / "torch" / "lib" / "cudnn64_8.dll").is_file()
    _assert_record_matches(sp, "torch")
    whl2 = b.torch_wheel(tmp_path / "w2", version="2.3.0+cu121", cudnn="8.9.2.26", cache_dir=builder_cache)
    b.pip_install_target(sp, whl2, upgrade=True)
    assert b.pe_version_info(sp / "torch" / "lib" / "cudnn64_8.dll")["FileVersion"] == "8.9.2.26"
    # pip --target --upgrade replaces top-level folders by name: the old dist-info stays
    assert sorted(d.name for d in sp.glob("torch-*.dist-info")) == [
        "torch-2.3.0+cu121.dist-info", "torch-2.3.1+cu121.dist-info"]
    _assert_record_matches(sp, "torch", "2.3.0+cu121")
