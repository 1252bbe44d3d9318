"""A fake agent for the tray's tests, and a tiny program that shows the real tray with it.

    python tests/tray_demo.py WORKDIR [BACKEND]

shows Tray(FakeController(ok view), backend=BACKEND or "xorg"), then, in WORKDIR:
  writes "shown" once the icon is visible;
  when "switch" appears: switches the view to attention (refresh from a non-GUI thread, the
  way the agent does) and writes "switched";
  when "quit" appears (or after 60 s), or on SIGTERM (as `torchkeeper run` does): stops the
  tray and exits.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "agent"))

from torchkeeper.daemon import view  # noqa: E402


def sample_view(**changes) -> view.AgentView:
    v = view.AgentView(
        overall=view.OK,
        tooltip="torchkeeper: 2 targets ok",
        targets=[
            view.TargetView("a1111", "patched", "cu124-cudnn897", "cuDNN 8.9.7 applied",
                            "/venvs/a1111/torch/lib", details="cudnn64_8.dll: replaced\n..."),
            view.TargetView("comfy", "drifted", "cu124-cudnn897", "pip put the stock files back",
                            None, details=""),
        ],
        driver="driver 551.86 (CUDA 12.4)",
        paused=False,
        autostart=False,
    )
    return replace(v, **changes)


class FakeController:
    """view.Controller for tests: records every call, publishes views to subscribers."""

    def __init__(self, v: view.AgentView | None = None, root: Path | None = None):
        root = root or Path("/nonexistent-tk")
        self.config_file = root / "config.toml"
        self.log_file = root / "logs" / "agent.log"
        self._view = v or sample_view()
        self.calls: list[tuple] = []
        self.subscribers: list = []

    def view(self) -> view.AgentView:
        return self._view

    def request(self, action: str, target: str | None = None) -> None:
        self.calls.append(("request", action, target))

    def set_paused(self, paused: bool) -> None:
        self.calls.append(("set_paused", paused))

    def set_autostart(self, enabled: bool) -> None:
        self.calls.append(("set_autostart", enabled))

    dashboard_url = "http://127.0.0.1:1/login?code=test"

    def open_dashboard(self) -> str:
        self.calls.append(("open_dashboard",))
        return self.dashboard_url

    def subscribe(self, callback) -> None:
        self.subscribers.append(callback)

    def publish(self, v: view.AgentView) -> None:
        """What the agent does after a change: new view, every subscriber told."""
        self._view = v
        for cb in self.subscribers:
            cb(v)


def main(argv: list[str]) -> int:
    work = Path(argv[1])
    backend = argv[2] if len(argv) > 2 else "xorg"
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from torchkeeper.desktop.tray import Tray

    terminated = threading.Event()
    controller = FakeController()
    tray = Tray(controller, backend=backend)

    def watch(_tray):
        (work / "shown").write_text("shown\n")
        deadline = time.monotonic() + 60
        switched = False
        while time.monotonic() < deadline and not (work / "quit").exists() \
                and not terminated.is_set():
            if not switched and (work / "switch").exists():
                controller.publish(sample_view(overall=view.ATTENTION,
                                               tooltip="torchkeeper: comfy drifted"))
                (work / "switched").write_text("switched\n")
                switched = True
            time.sleep(0.05)
        tray.stop()

    def on_sigterm(signum, frame):
        # the agent's way: a signal handler, run on the main thread inside the tray's loop
        terminated.set()
        tray.stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    tray.run(setup=watch)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
