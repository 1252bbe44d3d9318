"""Prometheus metrics: what a lab's scraper reads from `torchkeeper metrics`, or from the
textfile the agent keeps for node_exporter's (windows_exporter's) textfile collector.

Built from what status already knows (each target's state, its applied bundle, the driver)
and from the event log (drifts, repairs and their times), so the CLI and the agent say the
same thing. Counters count events in the log: a log deleted by hand starts them again, which
Prometheus reads as a counter reset. Names follow Prometheus' rules: one ``torchkeeper_``
prefix, base units (seconds), ``_total`` for counters, ``_info`` for version labels; the only
per-target label is the target's name (a handful per machine).

:func:`families` is pure (facts in, metric families out) and tested as a table; the text
format is prometheus_client's, imported only here (the agent imports this module only when
metrics are asked for or a textfile folder is set). The file is written with a temp file and
one rename in the same folder (fsynced), as the textfile collector requires: a killed writer
leaves the previous file whole, and its temp file (``.torchkeeper.prom.*.tmp``, which the
collector ignores) is removed by the next write.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import atomic_write_bytes
from .records import DRIFTED, INCOMPATIBLE, MISSING, PATCHED, STOCK, JsonObject

FILENAME = "torchkeeper.prom"
STATES = (PATCHED, DRIFTED, STOCK, INCOMPATIBLE, MISSING)
# repair times from the installer's last write, in seconds: the agent's goal is under 0.5 s
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STALE_TMP_S = 60


@dataclass(frozen=True)
class Facts:
    """What the metrics are made of: status' targets and driver (as `status --json` has them),
    the event log, the time they were read and this torchkeeper's version."""
    targets: list[JsonObject]
    driver: JsonObject | None
    events: list[JsonObject] = field(default_factory=list)
    now: float = 0.0
    version: str = ""


def families(f: Facts) -> list:
    """The metric families for these facts (prometheus_client's core types)."""
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily, InfoMetricFamily)

    out = []
    build = InfoMetricFamily("torchkeeper_build", "torchkeeper's version and the Python it runs on")
    build.add_metric([], {"version": f.version, "python": ".".join(map(str, sys.version_info[:3]))})
    out.append(build)

    state = GaugeMetricFamily("torchkeeper_target_state",
                              "1 for the state each target is in, 0 for the others", labels=["target", "state"])
    bundle = InfoMetricFamily("torchkeeper_target_bundle",
                              "the bundle applied to each target, with its CUDA and cuDNN versions",
                              labels=["target"])
    checked = GaugeMetricFamily("torchkeeper_target_last_check_timestamp_seconds",
                                "when torchkeeper last read each target and found its state (Unix time)",
                                labels=["target"])
    for t in f.targets:
        for s in STATES:
            state.add_metric([t["name"], s], 1.0 if t.get("state") == s else 0.0)
        applied = t.get("applied")
        if applied:
            ref = t.get("bundle") or {}
            same = ref.get("id") == applied.get("bundle")
            bundle.add_metric([t["name"]], {"bundle": applied.get("bundle_name") or "",
                                            "cuda": (ref.get("cuda") if same else None) or "",
                                            "cudnn": (ref.get("cudnn") if same else None) or ""})
        if t.get("state") is not None:
            checked.add_metric([t["name"]], f.now)
    out += [state, bundle, checked]

    names = {t["name"] for t in f.targets}
    drifts = CounterMetricFamily("torchkeeper_drifts", "times a reinstall or another tool undid "
                                 "the overlay of each target (drift events)", labels=["target"])
    repairs = CounterMetricFamily("torchkeeper_repairs", "overlays re-applied by the agent after "
                                  "a drift, per target", labels=["target"])
    counts = {n: [0, 0] for n in sorted(names)}
    latencies = []
    for e in f.events:
        n = e.get("target")
        if n not in counts:
            continue   # a removed target's history is not a series
        if e.get("event") == "drift":
            counts[n][0] += 1
        elif e.get("event") == "repaired":
            counts[n][1] += 1
            if isinstance(e.get("latency"), (int, float)):
                latencies.append(float(e["latency"]))
    for n, (d, r) in counts.items():
        drifts.add_metric([n], d)
        repairs.add_metric([n], r)
    out += [drifts, repairs]

    buckets, total = [], 0
    for b in BUCKETS:
        buckets.append((_le(b), float(sum(1 for x in latencies if x <= b))))
    buckets.append(("+Inf", float(len(latencies))))
    total = sum(latencies)
    out.append(HistogramMetricFamily(
        "torchkeeper_repair_duration_seconds",
        "time from the installer's last write to the overlay verified, per repair",
        buckets=buckets, sum_value=total))

    d = f.driver or {}
    if d.get("state") == "ok" and d.get("version"):
        drv = InfoMetricFamily("torchkeeper_driver", "the NVIDIA driver's version and the CUDA it supports")
        drv.add_metric([], {"version": str(d["version"]), "cuda": str(d.get("cuda") or "")})
        out.append(drv)
    return out


def _le(b: float) -> str:
    return f"{b:g}" if b != int(b) else f"{b:.1f}"


def render(f: Facts) -> bytes:
    """The Prometheus text format (it ends with a newline)."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Collector:
        def collect(self):
            return families(f)

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector())
    return generate_latest(reg)


def write_textfile(folder: Path, data: bytes) -> Path:
    """``folder/torchkeeper.prom``, replaced in one rename; a killed writer's temp files
    (older than a minute) are removed."""
    path = Path(folder) / FILENAME
    now = time.time()
    for old in Path(folder).glob(f".{FILENAME}.*.tmp"):
        try:
            if now - old.lstat().st_mtime > STALE_TMP_S:
                old.unlink()
        except OSError:
            pass
    atomic_write_bytes(path, data)
    return path


def facts(eng, targets: list[JsonObject] | None = None, driver: JsonObject | None = None,
          driver_known: bool = False) -> Facts:
    """Read the facts: every target's state (or ``targets``, as the agent already has them),
    the driver (``driver_known``: the caller passes what it knows, so that no NVML call wakes
    a sleeping GPU), the event log."""
    from .. import __version__
    from .state import read_events

    if targets is None or not driver_known:
        st = eng.status().to_dict()
        targets = st["targets"] if targets is None else targets
        driver = driver if driver_known else st["driver"]
    return Facts(targets, driver, read_events(eng.home), time.time(), __version__)


def textfile_dir(cfg) -> Path | None:
    d = ((cfg or {}).get("metrics") or {}).get("textfile_dir") or ""
    return Path(os.path.expanduser(d)) if d else None
