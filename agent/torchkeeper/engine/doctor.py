"""`torchkeeper doctor`: the checks users do by hand (nvidia-smi, nvcc -V, and in Python
torch.__version__, torch.version.cuda, torch.backends.cudnn.version()), done for them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from . import versions
from ..errors import TKError
from .records import JsonObject

PROBE_TIMEOUT_S = 60
PROBE = r"""
import json, sys
out = {"python": sys.version.split()[0]}
try:
    import torch
    out["torch_version"] = getattr(torch, "__version__", None)
    out["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    try:
        import torch.backends.cudnn
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception as e:
        out["cudnn_error"] = f"{type(e).__name__}: {e}"
    try:
        import torch.cuda
        out["cuda_available"] = bool(torch.cuda.is_available())
    except Exception as e:
        out["cuda_error"] = f"{type(e).__name__}: {e}"
except Exception as e:
    out["import_error"] = f"{type(e).__name__}: {e}"
print("TK-PROBE " + json.dumps(out))
"""


def target_python(site_packages: Path) -> Path | None:
    """The interpreter that owns a site-packages folder, for any layout."""
    sp = Path(site_packages)
    if sp.parent.name == "Lib":          # Windows venv, conda env or python_embeded
        root = sp.parent.parent
        for c in (root / "Scripts" / "python.exe", root / "python.exe"):
            if c.is_file():
                return c
        return None
    if sp.parent.name.startswith("python") and sp.parent.parent.name == "lib":
        root = sp.parent.parent.parent
        for c in (root / "bin" / "python", root / "bin" / "python3"):
            if c.exists():
                return c
    if (sp.parent / "python.exe").is_file():  # embeddable Python without Lib/
        return sp.parent / "python.exe"
    return None


def probe_target(site_packages: Path, timeout: float = PROBE_TIMEOUT_S) -> JsonObject:
    py = target_python(site_packages)
    if py is None:
        return {"ok": False, "error": f"no Python interpreter found for {site_packages}"}
    if py.suffix == ".exe" and os.name != "nt":
        return {"ok": False, "error": f"{py} is a Windows interpreter; it cannot run on this system"}
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    try:
        cp = subprocess.run([str(py), "-c", PROBE], capture_output=True, text=True,
                            timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "python": str(py), "error": f"import torch took longer than {timeout:.0f} s"}
    except OSError as e:
        return {"ok": False, "python": str(py), "error": f"cannot run {py}: {e.strerror}"}
    for line in cp.stdout.splitlines():
        if line.startswith("TK-PROBE "):
            out = json.loads(line[len("TK-PROBE "):])
            out["ok"] = "import_error" not in out
            out["python"] = str(py)
            if out.get("import_error"):
                out["error"] = out["import_error"]
            return out
    tail = (cp.stderr or cp.stdout).strip().splitlines()[-3:]
    return {"ok": False, "python": str(py), "error": f"{py} exited {cp.returncode}: " + " | ".join(tail)}


def doctor(eng, probe: bool = False) -> JsonObject:
    from .toolkits import find_toolkits

    d = eng.driver(refresh=True)
    from .driversignal import describe as driver_signal

    report = {"driver": d.to_dict() if hasattr(d, "to_dict") else None, "driver_signal": driver_signal(),
              "toolkits": find_toolkits(), "targets": [], "home": {
                  "config": str(eng.home.config_file), "data": str(eng.home.data_dir),
                  "cache": str(eng.home.cache_dir), "logs": str(eng.home.log_dir)}}
    st = eng.state.read()
    for name in sorted(st["targets"]):
        t = {"name": name}
        try:
            s = eng.target_state(name, st=st)
            t.update({k: getattr(s, k) for k in ("site_packages", "state", "torch_version", "torch_cuda",
                                             "cudnn_stock", "cudnn_now", "cudnn_unknown", "problems",
                                             "standby")})
            t["cudnn_now_int"] = versions.cudnn_int(s.cudnn_now)
            if d is not None and getattr(d, "ok", False) and s.torch_cuda:
                from .driver import cuda_supports

                t["driver_supports_torch_cuda"] = cuda_supports(d.cuda, s.torch_cuda)
        except TKError as e:
            t["error"] = e.message
        if probe and "site_packages" in t and t.get("state") != "missing":
            t["probe"] = probe_target(Path(t["site_packages"]))
        report["targets"].append(t)
    return report


def render(r: JsonObject) -> str:
    d = r.get("driver") or {}
    lines = ["NVIDIA driver (what nvidia-smi shows):"]
    if d.get("state") == "ok":
        lines.append(f"  driver {d.get('version')}, supports CUDA up to {d.get('cuda')}")
        for g in d.get("gpus", []):
            lines.append(f"  GPU {g.get('index')}: {g.get('name')}")
    else:
        lines.append(f"  {d.get('message') or 'not available'}")
        if d.get("hint"):
            lines.append(f"  hint: {d['hint']}")
    if r.get("driver_signal"):
        lines.append(f"  the agent watches for driver changes through {r['driver_signal']}")
    lines.append("CUDA toolkits (what nvcc -V and CUDA_PATH show; torch does not need one):")
    if not r["toolkits"]:
        lines.append("  none installed")
    for tk in r["toolkits"]:
        lines.append(f"  CUDA {tk.get('version') or '?'} at {tk.get('path')} ({', '.join(tk.get('sources') or [tk.get('source')])})"
                     + (f": {tk['problem']}" if tk.get("problem") else ""))
    lines.append("Targets (what torch.__version__, torch.version.cuda, torch.backends.cudnn.version() say):")
    if not r["targets"]:
        lines.append("  none yet")
    for t in r["targets"]:
        if t.get("error"):
            lines.append(f"  {t['name']}: {t['error']}")
            continue
        if t.get("state") == "missing":
            lines.append(f"  {t['name']}: missing: {'; '.join(t.get('problems') or []) or t.get('site_packages')}")
            continue
        now = (f"{t['cudnn_now']} ({t['cudnn_now_int']})" if t.get("cudnn_now") else "unknown")
        lines.append(f"  {t['name']}: torch {t.get('torch_version') or 'unknown'}, "
                     f"{'CUDA ' + t['torch_cuda'] if t.get('torch_cuda') else 'a CPU build'}, cuDNN "
                     f"{now}, stock cuDNN {t.get('cudnn_stock') or 'unknown'}, {t.get('state')}")
        if t.get("cudnn_unknown"):
            lines.append(f"    cuDNN unknown: {t['cudnn_unknown']}")
        sb = t.get("standby")
        if sb and sb.get("state") != "off":
            lines.append(f"    standby: {sb['state']}" + (
                f", {sb['files']} file(s) in {sb['folder']}, {sb['disk_bytes'] / 1e6:.1f} MB of disk "
                "of its own" if sb.get("files") else "") + (f" ({sb['why']})" if sb.get("why") else ""))
        if t.get("driver_supports_torch_cuda") is False:
            lines.append(f"    the driver is too old for CUDA {t.get('torch_cuda')}: update the NVIDIA driver")
        p = t.get("probe")
        if p:
            if p.get("ok"):
                lines.append(f"    probe ({p.get('python')}): torch {p.get('torch_version')}, CUDA "
                             f"{p.get('torch_cuda')}, cuDNN {p.get('cudnn')}, GPU available: "
                             f"{p.get('cuda_available')}")
            else:
                lines.append(f"    probe failed: {p.get('error')}")
    h = r["home"]
    lines.append("Folders torchkeeper uses:")
    lines += [f"  {label:<7} {h[k]}" for k, label in (("config", "config"), ("data", "state"),
                                                       ("cache", "cache"), ("logs", "logs"))]
    return "\n".join(lines)
