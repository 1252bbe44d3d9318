"""A private D-Bus session with a real notification server (tests/dbus_notify_server.py).

Shared by several test modules (it was in test_notify.py)."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from kit.agentkit import end_process, wait_for


SERVER = Path(__file__).parents[1] / "dbus_notify_server.py"


START_DEADLINE = 20.0  # seconds; a 2-core machine running tests in parallel


BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def need(tool: str, package: str) -> None:
    """A missing tool fails the test (it is part of the test setup), never skips it."""
    if not shutil.which(tool):
        pytest.fail(f"{tool} not installed ({package}; tests/setup-system.sh installs it)")


@dataclass
class Bus:
    address: str
    record: Path

    def notifications(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text(encoding="utf-8").splitlines()]

    def invoke_action(self, nid: int, action_key: str) -> None:
        """As a user clicking the button: the server emits ActionInvoked(nid, action_key)."""
        from jeepney import DBusAddress, MessageType, new_method_call
        from jeepney.io.blocking import open_dbus_connection

        obj = DBusAddress("/org/freedesktop/Notifications", bus_name="org.freedesktop.Notifications",
                          interface="org.torchkeeper.Test")
        with open_dbus_connection(bus=self.address) as conn:
            reply = conn.send_and_get_reply(new_method_call(obj, "InvokeAction", "us", (nid, action_key)),
                                            timeout=5)
        assert reply.header.message_type == MessageType.method_return, reply.body


class PrivateBus:
    """A private dbus-daemon and tests/dbus_notify_server.py on it, both our direct children, so
    both are ended and reaped here. mode: "serve", "bus-only" (no notification server) or
    "hang" (a server that never answers)."""

    def __init__(self, tmp_path: Path, mode: str = "serve"):
        self.procs: list[subprocess.Popen] = []
        d = tmp_path / f"bus-{mode}"
        d.mkdir()
        (d / "bus.conf").write_text(BUS_CONFIG, encoding="utf-8")
        self.log = d / "bus.log"
        try:
            self.address = self._start_daemon(d / "bus.conf")
            ready = d / "ready"
            cmd = [sys.executable, str(SERVER), "--ready", str(ready), "--record", str(d / "notifications.jsonl")]
            if mode != "serve":
                cmd.append(f"--{mode}")
            server = self._spawn(cmd, env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": self.address})
            wait_for(lambda: self._alive(server) and ready.exists(), START_DEADLINE,
                     "the test notification server")
            self.bus = Bus(json.loads(ready.read_text(encoding="utf-8"))["address"], d / "notifications.jsonl")
        except BaseException:
            self.stop()
            raise

    def _spawn(self, cmd, **kw) -> subprocess.Popen:
        with open(self.log, "ab") as err:
            proc = subprocess.Popen(cmd, stderr=err, **kw)
        self.procs.append(proc)
        return proc

    def _alive(self, proc) -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited ({proc.returncode}): "
                                 f"{self.log.read_text(errors='replace')}")
        return True

    def _start_daemon(self, config: Path) -> str:
        daemon = self._spawn(["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
                             stdout=subprocess.PIPE)
        deadline = time.monotonic() + START_DEADLINE
        line = b""
        while not line.endswith(b"\n"):
            self._alive(daemon)
            if time.monotonic() > deadline:
                raise AssertionError("dbus-daemon did not print its address")
            if select.select([daemon.stdout], [], [], 0.1)[0]:
                chunk = os.read(daemon.stdout.fileno(), 4096)
                line += chunk
        return line.decode().strip()

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the server first, then the bus
            end_process(proc)
            if proc.stdout:
                proc.stdout.close()
