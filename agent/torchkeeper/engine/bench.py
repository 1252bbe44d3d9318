"""`torchkeeper bench TARGET`: the speed-up of a bundle, measured in the target's own Python.

The workload is bench_workload.py (a file in this package a user can read), run with the
target's interpreter: first a probe (no CUDA device: one clear error, nothing touched), then
with the stock libraries, then with the bundle applied through the same transaction as
`apply`, the running agent held off the target all along (hold.py); afterwards the target is put back as it was (its overlay, its chosen bundle),
whatever happened in between.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from ..errors import OperationFailed, TKError, UsageError
from .hold import hold
from .state import log_event, target_lock
from .records import JsonObject, Manifest, TargetRecord
from ..i18n import _

WORKLOAD = Path(__file__).with_name("bench_workload.py")
PROBE_TIMEOUT_S = 120
RUN_TIMEOUT_S = 900


def target_python(rec: TargetRecord) -> Path:
    """The interpreter of a target: the venv's, a portable python_embeded's, a conda env's."""
    sp = Path(rec["site_packages"])
    roots = [Path(rec["path"])] + list(sp.parents)[:4]
    for root in roots:
        for rel in ("bin/python3", "bin/python", "Scripts/python.exe", "python.exe",
                    "venv/bin/python3", "python_embeded/python.exe"):
            p = root / rel
            if p.is_file() and p.stat().st_size > 0:
                return p
    raise UsageError(_("no Python interpreter found for %(path)s") % {"path": rec['path']},
                     _("bench runs the workload with the target's own Python; add the target "
                       "by its venv or python_embeded folder"))


def _run(python: Path, args: list[str], timeout: float) -> JsonObject:
    try:
        p = subprocess.run([str(python), str(WORKLOAD), *args], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OperationFailed(
            _("the benchmark workload did not run with %(python)s: %(e)s") % {"python": python, "e": e},
            _("check that this Python starts (`python -c 'import torch'`)"),
        ) from None
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise OperationFailed(
            _("the benchmark workload failed in %(python)s: %(tail)s") % {"python": python, "tail": tail},
            _("run `torchkeeper doctor --probe` to see whether torch imports there"),
        )
    return json.loads(lines[-1])


def summary(parts: JsonObject) -> float:
    """One figure for a run: the geometric mean of the parts' median iterations per second."""
    vals = [p["it_s"] for p in parts.values()]
    prod = 1.0
    for v in vals:
        prod *= v
    return prod ** (1 / len(vals)) if vals else 0.0


def bench(engine, name: str, bundle_ref: str | None = None, say=None, runner=_run) -> JsonObject:
    say = say or (lambda line: None)
    rec = engine.target(name)
    python = target_python(rec)
    probe = runner(python, ["--probe"], PROBE_TIMEOUT_S)
    if not probe.get("cuda"):
        raise UsageError(
            _("target '%(name)s': no CUDA device to measure on (%(get)s; %(python)s)")
            % {"name": name, "get": probe.get("reason"), "python": python},
            _("bench needs an NVIDIA GPU and a CUDA build of torch"),
        )
    m = engine.bundles.get(bundle_ref) if bundle_ref else engine.desired_bundle(name, engine.state.read())
    if m is None:
        raise UsageError(
            _("target '%(name)s' has no bundle chosen") % {"name": name},
            _("pass --bundle B, or choose one with `torchkeeper use B --target %(name)s`") % {"name": name},
        )
    # the running agent checks nothing on this target until the bench is done, whatever happens
    with hold(engine.home, name, "bench"):
        return _measure(engine, name, m, python, probe, runner, say)


def _measure(engine, name: str, m: Manifest, python: Path, probe: JsonObject, runner, say) -> JsonObject:
    with target_lock(engine.home, name):  # a re-apply the agent began before the hold ends first
        st = engine.state.read()
    prior_overlay = (st["overlays"].get(name) or {}).get("bundle")
    prior_choice = st["targets"][name].get("bundle")
    result = {
        "target": name,
        "bundle": m["id"],
        "bundle_name": m["name"],
        "gpu": probe.get("gpu"),
        "torch": probe.get("torch"),
    }
    d = engine.driver()
    result["driver"] = getattr(d, "version", None) if getattr(d, "ok", False) else None
    try:
        if prior_overlay:
            engine.revert(name)
        say("measuring with the stock libraries ...")
        stock = runner(python, [], RUN_TIMEOUT_S)
        engine.use(m["id"], name)
        engine.apply(name)
        say(f"measuring with '{m['name']}' ...")
        patched = runner(python, [], RUN_TIMEOUT_S)
    finally:
        restore(engine, name, prior_overlay, prior_choice)
    result["stock"], result["with_bundle"] = stock["parts"], patched["parts"]
    result["cudnn"] = {"stock": stock.get("cudnn"), "with_bundle": patched.get("cudnn")}
    a, b = summary(stock["parts"]), summary(patched["parts"])
    result["it_s"] = {"stock": a, "with_bundle": b}
    result["ratio"] = b / a if a else None
    log_event(
        engine.home,
        "bench",
        target=name,
        bundle=m["id"],
        bundle_name=m["name"],
        ratio=result["ratio"],
        it_s=result["it_s"],
        gpu=result["gpu"],
        driver=result["driver"],
    )
    # kept with the target, so status reads it without scanning an event log that only grows
    with engine.state.edit() as st:
        if name in st["targets"]:
            st["targets"][name]["last_bench"] = {
                "ratio": result["ratio"],
                "bundle_name": m["name"],
                "gpu": result["gpu"],
                "it_s": result["it_s"],
                "time": time.strftime("%Y-%m-%d %H:%M"),
                # per workload, the median and its spread (the dashboard's chart)
                "parts": {
                    side: {w: {k: p.get(k) for k in ("it_s", "min", "max")} for w, p in parts.items()}
                    for side, parts in (("stock", stock["parts"]), ("with_bundle", patched["parts"]))
                },
            }
    return result


def restore(engine, name: str, prior_overlay: str | None, prior_choice: str | None) -> None:
    """Puts the target back: its earlier overlay (or stock) and its chosen bundle."""
    errors = []
    for step in (
        (lambda: engine.revert(name)),
        (lambda: (engine.use(prior_overlay, name), engine.apply(name)) if prior_overlay else None),
    ):
        try:
            step()
        except TKError as e:
            errors.append(e.message)
    with engine.state.edit() as st:
        if name in st["targets"]:
            st["targets"][name]["bundle"] = prior_choice
    if errors:
        raise OperationFailed(
            _("target '%(name)s' could not be put back as it was: %(errors)s")
            % {"name": name, "errors": errors[0]},
            _("see `torchkeeper status %(name)s` and `torchkeeper apply` / `revert`") % {"name": name},
        )


def render(r: JsonObject) -> str:
    lines = [f"target '{r['target']}' on {r['gpu']} (driver {r['driver']}), torch {r['torch']}"]
    for label, key in (("stock", "stock"), (f"with '{r['bundle_name']}'", "with_bundle")):
        lines.append(f"  {label}: cuDNN {r['cudnn'][key]}")
        for part, v in r[key].items():
            lines.append(
                f"    {part:<16} {v['it_s']:8.2f} it/s  (spread {v['spread'] * 100:.1f}%, "
                f"{v['reps']} x {v['iters']})"
            )
    lines.append(
        f"  gain: x{r['ratio']:.3f} ({r['it_s']['stock']:.2f} -> {r['it_s']['with_bundle']:.2f} it/s, "
        "geometric mean of the parts)"
    )
    return "\n".join(lines)
