"""The first run, end to end: a real `torchkeeper run --headless` with no config writes the
commented defaults, finds the torch installs in the user's home, says so in one toast (caught
by a real org.freedesktop.Notifications server on a private D-Bus), and touches nothing;
"Manage" in the tray (pystray's dummy backend, a real agent) adds one, and still applies
nothing before the user has chosen a bundle."""

from __future__ import annotations

import json

import pytest

from kit import agentkit
from kit import builders
from kit.bus import PrivateBus, need
from torchkeeper.daemon import view as V
from torchkeeper.desktop import tray
from torchkeeper.engine import config as configmod
from torchkeeper.engine.driver import DriverStatus
from kit.installs import installs


def _no_driver():
    return DriverStatus("no_driver", message="no NVIDIA driver found")


def _snapshot(*sps) -> dict:
    return {str(p): builders.sha256_file(p) for sp in sps for p in sorted(sp.rglob("*.dll"))}


def test_first_run_writes_the_config_finds_installs_and_says_so_once(build, tmp_path, tk_home, run_tk):
    need("dbus-daemon", "dbus-daemon")
    home = tmp_path / "user"
    sps = installs(build, home)
    before = _snapshot(*sps.values())
    bus = PrivateBus(tmp_path)
    config = tk_home / "config" / "config.toml"
    assert not config.exists()
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {"HOME": home, "DBUS_SESSION_BUS_ADDRESS": bus.address, "XDG_RUNTIME_DIR": runtime,
           "DISPLAY": None, "WAYLAND_DISPLAY": None}
    p = agentkit.spawn_agent(tk_home, env)
    try:
        agentkit.wait_for(lambda: agentkit.events(tk_home, "discovered"), 60, "the first discover")
        toasts = agentkit.wait_for(lambda: bus.bus.notifications(), 30, "the first-run toast")
    finally:
        agentkit.end_process(p)
        bus.stop()
    assert config.read_text(encoding="utf-8") == configmod.default_text()
    (n,) = toasts                                               # one toast, not one per install
    assert n["summary"] == "torchkeeper: found 2 torch installs"
    assert "Found 2 torch installs: " in n["body"]
    assert "AUTOMATIC1111 (2.1.2+cu121, cuDNN 8.8.1.3)" in n["body"]
    assert "ComfyUI portable (2.4.1+cu124, cuDNN 9.1.0.70)" in n["body"]
    # headless: no menu to choose Manage in; the toast names the command instead
    assert "torchkeeper discover --add" in n["body"] and "Manage" not in n["body"]
    # the terminal that started it: once, what it found and the next command to type
    said = p.stdout.read()
    assert said.count("first run: default settings in") == 1, said
    assert "found 2 torch installs: " in said and "AUTOMATIC1111 (2.1.2+cu121" in said, said
    assert "next: run `torchkeeper discover --add`" in said and "tray menu" not in said, said
    (ev,) = agentkit.events(tk_home, "discovered")
    assert sorted(f["app"] for f in ev["found"]) == ["AUTOMATIC1111", "ComfyUI portable"]
    # nothing added, nothing applied, no file touched
    st = run_tk("status", "--json").json()
    assert st["targets"] == []
    assert _snapshot(*sps.values()) == before
    log = (tk_home / "logs" / "agent.log").read_text(encoding="utf-8")
    first = log.splitlines()[0]
    assert "no targets yet" in first and "discover --add" in first and "target add" in first, first
    assert "Manage" not in first, first  # headless: there is no menu to choose it in


def test_a_start_in_a_terminal_says_what_it_protects_and_what_to_type_next(build, tmp_path, tk_home, run_tk):
    """Not a first run: the terminal hears the targets it protects, or that there are none
    and the command that adds one."""
    configmod.write_default(tk_home / "config" / "config.toml")
    env = {"HOME": tmp_path / "user", "DISPLAY": None, "WAYLAND_DISPLAY": None}
    p = agentkit.spawn_agent(tk_home, env)
    try:
        agentkit.wait_for(lambda: agentkit.events(tk_home, "started"), 30, "the start")
    finally:
        agentkit.end_process(p)
    said = p.stdout.read()
    assert "no targets yet, so nothing is protected" in said, said
    assert "next: run `torchkeeper discover --add`" in said, said
    agentkit.patched_target(tmp_path, build, run_tk)
    p = agentkit.spawn_agent(tk_home, env)
    try:
        agentkit.wait_for(lambda: len(agentkit.events(tk_home, "started")) == 2, 30, "the start")
    finally:
        agentkit.end_process(p)
    said = p.stdout.read()
    assert "protecting 1 target: a1111" in said and "torchkeeper status" in said, said


def test_a_second_start_is_not_a_first_run(build, tmp_path, tk_home):
    home = tmp_path / "user"
    installs(build, home)
    configmod.write_default(tk_home / "config" / "config.toml")
    agent = agentkit.start_agent(tk_home, watch=False, schedule=False, driver_query=_no_driver)
    try:
        agentkit.wait_idle(agent)
        assert not agent.first_run
        assert agent.notifier.bodies() == []
        assert not agentkit.events(tk_home, "discovered")
    finally:
        agent.stop(timeout=30)


@pytest.fixture
def first_run_tray(build, tmp_path, tk_home, monkeypatch):
    home = tmp_path / "user"
    sps = installs(build, home)
    monkeypatch.setenv("HOME", str(home))
    agent = agentkit.start_agent(tk_home, watch=False, schedule=False, driver_query=_no_driver)
    try:
        yield sps, agent, tray.Tray(agent, backend="dummy", opener=lambda p: True)
    finally:
        agent.stop(timeout=30)


def _menu_texts(tr) -> list[str]:
    return [i.text for i in tr.icon.menu]


def test_manage_from_the_tray_adds_the_target_and_applies_nothing(first_run_tray, tk_home, run_tk):
    sps, agent, tr = first_run_tray
    agentkit.wait_for(lambda: "Found, not managed" in _menu_texts(tr), 60, "the found installs in the menu")
    texts = _menu_texts(tr)
    assert "No targets yet" in texts
    assert "no targets yet - choose Manage" in tr.view.tooltip
    found = [i for i in tr.icon.menu if i.text.startswith("ComfyUI portable (")]
    assert [i.text for i in found] == ["ComfyUI portable (2.4.1+cu124, cuDNN 9.1.0.70)"]
    before = _snapshot(*sps.values())
    (manage,) = [i for i in found[0].submenu if i.text == "Manage"]
    manage(tr.icon)
    agentkit.wait_for(lambda: agentkit.events(tk_home, "managed"), 30, "Manage")
    agentkit.wait_idle(agent)
    st = run_tk("status", "--json").json()
    (t,) = st["targets"]
    assert t["site_packages"] == str(sps["comfy"]) and t["state"] == "stock" and t["bundle"] is None
    assert _snapshot(*sps.values()) == before                 # no bundle chosen: nothing applied
    agentkit.wait_for(lambda: not [x for x in _menu_texts(tr) if x.startswith("ComfyUI portable (")], 10,
                      "the managed install to leave the found list")
    assert any(x.startswith("AUTOMATIC1111 (") for x in _menu_texts(tr))  # the other stays offered
    assert [v.name for v in tr.view.targets] == [t["name"]]
    assert json.dumps([f.__dict__ for f in tr.view.found])


def test_found_view_label():
    assert V.FoundView("/x", "Forge (Stability Matrix)", "2.3.1+cu121", "8.8.1.3").label == \
        "Forge (Stability Matrix) (2.3.1+cu121, cuDNN 8.8.1.3)"
    assert V.FoundView("/x", "venv", None, None).label == "venv"
