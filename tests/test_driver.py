"""torchkeeper.engine.driver against the real pynvml binding and a stub libnvidia-ml.so.1.

pynvml caches the loaded library (pynvml.nvmlLib) and the loader reads LD_LIBRARY_PATH once, so
every scenario runs in a fresh subprocess started with LD_LIBRARY_PATH=<stub dir>.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
AGENT_DIR = str(TESTS.parent / "agent")
sys.path.insert(0, AGENT_DIR)
sys.path.insert(0, str(TESTS))

from kit.nvmlstub import write_answers  # noqa: E402
from torchkeeper.engine import driver  # noqa: E402

ONE_SHOT = ("import json,sys; sys.path.insert(0, sys.argv[1]); from torchkeeper.engine import driver; "
            "print(json.dumps(driver.query().to_dict()))")
LOOP = ("import json,sys; sys.path.insert(0, sys.argv[1]); from torchkeeper.engine import driver\n"
        "for _ in sys.stdin:\n"
        "    s = driver.query()\n"
        "    print(json.dumps(dict(s.to_dict(), summary=s.summary())), flush=True)\n")

RTX4070 = ("NVIDIA GeForce RTX 4070", "GPU-8d3f3c2a-6f1e-4b0e-9a59-1c2d3e4f5a6b")
A2000 = ("NVIDIA RTX A2000 12GB", "GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")


def _env(lib_dir, answers=None, log=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TK_NVML_STUB")}
    # prepend: the interpreter itself may need what is already there
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib_dir), env.get("LD_LIBRARY_PATH")]))
    if answers is not None:
        env["TK_NVML_STUB_FILE"] = str(answers)
    if log is not None:
        env["TK_NVML_STUB_LOG"] = str(log)
    return env


def run_query(lib_dir, answers=None, log=None) -> dict:
    r = subprocess.run([sys.executable, "-c", ONE_SHOT, AGENT_DIR], env=_env(lib_dir, answers, log),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def answers(tmp_path):
    return tmp_path / "nvml.txt"


# ---- one process per scenario -------------------------------------------------------------

def test_ok_two_gpus(nvml_stub, answers, tmp_path):
    log = tmp_path / "calls.log"
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070, A2000])
    d = run_query(nvml_stub, answers, log)
    assert d["state"] == "ok"
    assert d["version"] == "551.86"
    assert d["cuda"] == "12.4"
    assert d["gpus"] == [
        {"index": 0, "name": RTX4070[0], "uuid": RTX4070[1]},
        {"index": 1, "name": A2000[0], "uuid": A2000[1]},
    ]
    assert d["message"] is None and d["hint"] is None and d["problems"] == []
    # one init, one shutdown
    assert log.read_text().split("\n")[:-1] == ["init 0", "shutdown 0"]


def test_no_library_is_no_driver(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    probe = subprocess.run([sys.executable, "-c", "import ctypes; ctypes.CDLL('libnvidia-ml.so.1')"],
                           env=_env(empty), capture_output=True)
    if probe.returncode == 0:
        pytest.skip("a real NVIDIA driver (libnvidia-ml.so.1) is installed on this machine")
    d = run_query(empty)
    assert d["state"] == "no_driver"
    assert d["message"] == "no NVIDIA driver found (libnvidia-ml / nvml.dll not loadable)"
    assert d["hint"] and "driver" in d["hint"]
    assert d["version"] is None and d["cuda"] is None and d["gpus"] == []


def test_driver_not_loaded(nvml_stub, answers, tmp_path):
    log = tmp_path / "calls.log"
    write_answers(answers, init_rc=9, gpus=[RTX4070])
    d = run_query(nvml_stub, answers, log)
    assert d["state"] == "not_loaded"
    assert "not running" in d["message"] and "Driver Not Loaded" in d["message"]
    assert d["hint"]
    assert d["gpus"] == [] and d["version"] is None
    # no shutdown after a failed init
    assert log.read_text().split("\n")[:-1] == ["init 9"]


def test_version_mismatch_needs_reboot(nvml_stub, answers):
    write_answers(answers, init_rc=18, gpus=[RTX4070])
    d = run_query(nvml_stub, answers)
    assert d["state"] == "reboot_needed"
    assert d["message"] == ("the NVIDIA driver was updated but the old one is still loaded: "
                            "reboot to finish the update")
    assert "reboot" in d["hint"]


@pytest.mark.parametrize("init_rc, text", [
    (4, "Insufficient Permissions"),  # pynvml's own table
    (21, "No data"),                  # not in pynvml's table: comes from the stub's nvmlErrorString
])
def test_other_init_errors_carry_nvml_message(nvml_stub, answers, init_rc, text):
    write_answers(answers, init_rc=init_rc)
    d = run_query(nvml_stub, answers)
    assert d["state"] == "error"
    assert text in d["message"]
    assert d["hint"]


def test_missing_answers_file_is_unknown_error(nvml_stub, tmp_path):
    d = run_query(nvml_stub, tmp_path / "does-not-exist.txt")
    assert d["state"] == "error"
    assert "Unknown Error" in d["message"]


def test_cuda_function_not_found_is_ok_without_cuda(nvml_stub, answers):
    write_answers(answers, cuda=None, cuda_rc=13, gpus=[RTX4070])
    d = run_query(nvml_stub, answers)
    assert d["state"] == "ok"
    assert d["cuda"] is None
    assert d["version"] == "551.86"
    assert d["problems"] == []
    assert d["gpus"][0]["name"] == RTX4070[0]


def test_one_gpu_failing_keeps_the_others(nvml_stub, answers):
    write_answers(answers, gpus=[
        (RTX4070[0], RTX4070[1], {"name_rc": 15}),   # GPU is lost while reading its name
        (A2000[0], A2000[1], {"handle_rc": 15}),     # no handle at all
        ("NVIDIA GeForce RTX 3060", "GPU-3060", {"uuid_rc": 3}),
        ("NVIDIA GeForce RTX 3090", "GPU-3090"),
    ])
    d = run_query(nvml_stub, answers)
    assert d["state"] == "ok"
    g0, g1, g2, g3 = d["gpus"]
    assert g0["name"] is None and g0["uuid"] == RTX4070[1] and "GPU is lost" in g0["error"]
    assert g1["name"] is None and g1["uuid"] is None and "GPU is lost" in g1["error"]
    assert g2["name"] == "NVIDIA GeForce RTX 3060" and g2["uuid"] is None and "Not Supported" in g2["error"]
    assert g3 == {"index": 3, "name": "NVIDIA GeForce RTX 3090", "uuid": "GPU-3090"}
    assert len(d["problems"]) == 3
    assert d["version"] == "551.86" and d["cuda"] == "12.4"


def test_unreadable_system_fields_are_problems(nvml_stub, answers, tmp_path):
    log = tmp_path / "calls.log"
    write_answers(answers, driver_rc=15, cuda_rc=999, count_rc=4, shutdown_rc=999, gpus=[RTX4070])
    d = run_query(nvml_stub, answers, log)
    assert d["state"] == "ok"
    assert d["version"] is None and d["cuda"] is None and d["gpus"] == []
    assert [p.split(":")[0] for p in d["problems"]] == [
        "driver version unreadable", "CUDA version unreadable", "GPU count unreadable"]
    assert "Insufficient Permissions" in d["problems"][2]
    # shutdown still called, its failure ignored
    assert log.read_text().split("\n")[:-1] == ["init 0", "shutdown 999"]


# ---- one long-running process, answers changing between polls ------------------------------

class Poller:
    """A child process that answers one query() per stdin line."""

    def __init__(self, lib_dir, answers, log):
        self.proc = subprocess.Popen([sys.executable, "-c", LOOP, AGENT_DIR],
                                     env=_env(lib_dir, answers, log), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def poll(self) -> dict:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        try:
            line = self.lines.get(timeout=30)
        except queue.Empty:
            raise AssertionError("poller did not answer in 30 s") from None
        assert line is not None, self.proc.stderr.read()
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


def test_long_running_process_sees_driver_changes(nvml_stub, answers, tmp_path):
    log = tmp_path / "calls.log"
    write_answers(answers, driver="551.86", cuda=12040, gpus=[RTX4070])
    p = Poller(nvml_stub, answers, log)
    try:
        d = p.poll()
        assert (d["state"], d["version"], d["cuda"]) == ("ok", "551.86", "12.4")
        assert d["summary"] == "driver 551.86, CUDA 12.4, 1 GPU (NVIDIA GeForce RTX 4070)"

        # the driver is updated in place
        write_answers(answers, driver="560.70", cuda=12060, gpus=[RTX4070])
        d = p.poll()
        assert (d["state"], d["version"], d["cuda"]) == ("ok", "560.70", "12.6")

        # ... and the old kernel module is still loaded
        write_answers(answers, init_rc=18, driver="560.70", cuda=12060, gpus=[RTX4070])
        d = p.poll()
        assert d["state"] == "reboot_needed" and "reboot" in d["hint"]
        assert d["summary"] == d["message"]

        # after the reboot
        write_answers(answers, driver="560.70", cuda=12060, gpus=[RTX4070, A2000])
        d = p.poll()
        assert (d["state"], d["version"], d["cuda"]) == ("ok", "560.70", "12.6")
        assert [g["name"] for g in d["gpus"]] == [RTX4070[0], A2000[0]]
    finally:
        p.close()
    assert p.proc.returncode == 0
    # every successful init was paired with a shutdown; the failed one was not
    assert log.read_text().split("\n")[:-1] == [
        "init 0", "shutdown 0", "init 0", "shutdown 0", "init 18", "init 0", "shutdown 0"]


# ---- in-process: binding missing or odd -----------------------------------------------------

def test_pynvml_missing_is_error_with_reinstall_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    s = driver.query()
    assert s.state == "error" and not s.ok
    assert "pynvml" in s.message
    assert "reinstall torchkeeper" in s.hint
    assert s.summary() == s.message


def _fake_pynvml(**calls):
    class NVMLError(Exception):
        pass

    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError
    for name in ("LibraryNotFound", "DriverNotLoaded", "LibRmVersionMismatch", "FunctionNotFound"):
        setattr(mod, f"NVMLError_{name}", type(f"NVMLError_{name}", (NVMLError,), {}))
    mod.nvmlInit = lambda: None
    mod.nvmlShutdown = lambda: None
    for k, v in calls.items():
        setattr(mod, k, v)
    return mod


def test_bytes_from_an_old_binding_are_decoded(monkeypatch):
    fake = _fake_pynvml(
        nvmlSystemGetDriverVersion=lambda: b"470.256.02",
        nvmlSystemGetCudaDriverVersion_v2=lambda: 11040,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: object(),
        nvmlDeviceGetName=lambda h: b"Tesla T4",
        nvmlDeviceGetUUID=lambda h: b"GPU-t4",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    s = driver.query()
    assert s.ok
    assert (s.version, s.cuda) == ("470.256.02", "11.4")
    assert s.gpus == [{"index": 0, "name": "Tesla T4", "uuid": "GPU-t4"}]


def test_binding_without_a_call_loses_only_that_field(monkeypatch):
    shutdowns = []
    fake = _fake_pynvml(
        nvmlSystemGetDriverVersion=lambda: "390.157",
        # no nvmlSystemGetCudaDriverVersion_v2 at all: AttributeError
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: object(),
        nvmlDeviceGetName=lambda h: "GeForce GTX 1080",
        nvmlDeviceGetUUID=lambda h: "GPU-1080",
        nvmlShutdown=lambda: shutdowns.append(1),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    s = driver.query()
    assert s.ok and s.version == "390.157" and s.cuda is None
    assert s.gpus[0]["name"] == "GeForce GTX 1080"
    assert len(s.problems) == 1 and "AttributeError" in s.problems[0]
    assert shutdowns == [1]


# ---- DriverStatus ---------------------------------------------------------------------------

def test_summary_and_to_dict():
    s = driver.DriverStatus("ok", "551.86", "12.4",
                            [{"index": 0, "name": "NVIDIA GeForce RTX 4070", "uuid": "GPU-1"}])
    assert s.ok
    assert s.summary() == "driver 551.86, CUDA 12.4, 1 GPU (NVIDIA GeForce RTX 4070)"
    assert s.to_dict() == {"state": "ok", "version": "551.86", "cuda": "12.4",
                           "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4070", "uuid": "GPU-1"}],
                           "message": None, "hint": None, "problems": []}
    json.dumps(s.to_dict())

    two = driver.DriverStatus("ok", "560.70", None, [
        {"index": 0, "name": "NVIDIA GeForce RTX 4090", "uuid": "a"},
        {"index": 1, "name": "NVIDIA GeForce RTX 4090", "uuid": "b"},
        {"index": 2, "name": None, "uuid": "c", "error": "GPU 2 name unreadable: GPU is lost"},
    ], problems=["GPU 2 name unreadable: GPU is lost"])
    assert two.summary() == ("driver 560.70, CUDA version unknown, 3 GPUs (NVIDIA GeForce RTX 4090 x2, "
                             "GPU 2) [GPU 2 name unreadable: GPU is lost]")
    assert driver.DriverStatus("ok").summary() == "driver version unknown, CUDA version unknown, no GPU"
    bad = driver.DriverStatus("not_loaded", message="the NVIDIA driver is installed but not running")
    assert not bad.ok and bad.summary() == "the NVIDIA driver is installed but not running"


# ---- cuda_supports --------------------------------------------------------------------------

@pytest.mark.parametrize("have, need, expected", [
    ("12.4", "12.1", True),
    ("12.4", "12.4", True),
    ("12.4", "12.6", False),
    ("12.4", "11.8", True),
    ("11.8", "12.1", False),
    ("12.10", "12.9", True),   # numeric, not string, comparison
    ("12.9", "12.10", False),
    ("13.0", "12.8", True),
    ("12", "12.0", True),
    ("12.4", "12.4.1", True),  # patch ignored
    (None, "12.4", None),
    ("12.4", None, None),
    (None, None, None),
    ("unknown", "12.4", None),
    ("12.4", "", None),
])
def test_cuda_supports(have, need, expected):
    assert driver.cuda_supports(have, need) is expected
