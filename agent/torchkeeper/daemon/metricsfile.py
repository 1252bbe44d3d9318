"""The agent's Prometheus textfile (engine/metrics.py): written every minute and soon after
each job (a repair, a revert, a check), on its own thread, only while ``[metrics]
textfile_dir`` is set. The driver in it is the one the agent already knows: writing metrics
never calls NVML (a sleeping laptop GPU stays asleep)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("torchkeeper.agent")

PERIOD_S = 60.0
MIN_GAP_S = 1.0   # jobs in a row are one write


class MetricsFile:
    def __init__(self, engine, period: float = PERIOD_S):
        self.engine, self.period = engine, period
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self.writes = 0

    def configured(self) -> bool:
        from ..engine.metrics import textfile_dir

        return textfile_dir(self.engine.config) is not None

    def start_if_configured(self) -> None:
        """Start the thread when a folder is set (at start, and when config.toml sets one)."""
        if self._thread is None and self.configured():
            self._thread = threading.Thread(target=self._loop, name="tk-metrics", daemon=True)
            self._thread.start()

    def changed(self) -> None:
        if self._thread is not None:
            self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.write_now()
            self._wake.wait(self.period)
            self._wake.clear()
            self._stop.wait(MIN_GAP_S)

    def write_now(self) -> None:
        from ..engine import metrics

        folder = metrics.textfile_dir(self.engine.config)
        if folder is None:
            return
        try:
            f = metrics.facts(self.engine, driver=self._known_driver(), driver_known=True)
            metrics.write_textfile(folder, metrics.render(f))
            self.writes += 1
            self._last_error = None
        except Exception as e:  # a folder gone or not writable: said once, tried again later
            why = f"{type(e).__name__}: {e}"
            if why != self._last_error:
                log.warning("metrics: cannot write %s/%s: %s", folder, metrics.FILENAME, why)
                self._last_error = why

    def _known_driver(self):
        d = self.engine.known_driver()   # what the driver watch last read
        return d.to_dict() if d is not None and hasattr(d, "to_dict") else None
