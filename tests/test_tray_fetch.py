"""The tray's "get it and apply", end to end: a real agent (in this process), pystray's dummy
backend, the real pip fetching from a local package index, the real engine applying."""

from __future__ import annotations

import pytest

import agentkit
import pkgindex
import wayback
from torchkeeper.daemon import worker
from torchkeeper.desktop import tray
from torchkeeper.engine.driver import DriverStatus

HEAD = "cuDNN 8.9.7 + CUDA 12.4 fit — get them and apply"


@pytest.fixture(scope="module")
def wheel_dir(build, tmp_path_factory):
    return pkgindex.fill(build, tmp_path_factory.mktemp("index"))


def _driver():
    return DriverStatus("ok", version="551.86", cuda="12.4",
                        gpus=[{"index": 0, "name": "NVIDIA GeForce RTX 4070", "uuid": "GPU-1",
                               "compute_capability": "8.9"}])


@pytest.fixture
def setup(build, tmp_path, run_tk, tk_home, wheel_dir, monkeypatch):
    t = wayback.make_target(build, tmp_path, run_tk, tk_home, "windows")
    with pkgindex.PackageIndex(wheel_dir) as idx:
        for k, v in pkgindex.pip_env(PIP_INDEX_URL=idx.url).items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        monkeypatch.setattr(worker.Agent, "suggest_delay", 0)
        agent = agentkit.start_agent(tk_home, watch=False, schedule=False, driver_query=_driver)
        try:
            yield t, idx, agent, tray.Tray(agent, backend="dummy", opener=lambda p: True)
        finally:
            agent.stop(timeout=30)


def _submenu(tr):
    lines = [i for i in tr.icon.menu if i.text.startswith(wayback.NAME + " — ")]
    return lines[0].submenu if lines else []


def _texts(tr):
    return [i.text for i in _submenu(tr)]


def test_get_it_and_apply_from_the_tray(setup, run_tk, tk_home):
    t, idx, agent, tr = setup
    agentkit.wait_for(lambda: HEAD in _texts(tr), 60, "the suggestion in the target's submenu")
    assert idx.downloads == {}   # suggesting downloads nothing
    (it,) = [i for i in _submenu(tr) if i.text == HEAD]
    it(tr.icon)
    agentkit.wait_for(lambda: agentkit.events(tk_home, "repaired", wayback.NAME), 120, "the apply")
    agentkit.wait_idle(agent)
    assert sum(idx.downloads.values()) == 3
    bodies = agent.notifier.bodies()
    assert any("fetched and applied as asked" in b for b in bodies), bodies
    m = run_tk("bundle", "list", "--json").json()
    (b,) = m
    t.bundles["fetched"] = {"id": b["id"], "files": {f["name"]: f["sha256"] for f in b["files"]}}
    wayback.assert_patched(t, run_tk, "fetched")
    assert HEAD not in _texts(tr)             # applied: nothing left to suggest
    assert "patched" == tr.view.targets[0].state
    wayback.ok(run_tk("revert"))
    wayback.assert_stock(t, run_tk)


def test_a_failed_download_is_a_toast_and_the_target_stays_stock(setup, run_tk, tk_home):
    t, idx, agent, tr = setup
    agentkit.wait_for(lambda: HEAD in _texts(tr), 60, "the suggestion")
    idx.truncate.update(p.name for p in idx.folder.glob("nvidia_cudnn*.whl"))
    (it,) = [i for i in _submenu(tr) if i.text == HEAD]
    it(tr.icon)
    agentkit.wait_for(lambda: agentkit.events(tk_home, "fetch failed", wayback.NAME), 120, "the failure")
    agentkit.wait_idle(agent)
    (toast,) = [x for x in agent.notifier.toasts if x.key == f"fetch:{wayback.NAME}"]
    assert "nvidia-cudnn-cu12 8.9.7.29" in toast.body and "PIP_INDEX_URL" in toast.body
    assert run_tk("bundle", "list", "--json").json() == []
    wayback.assert_stock(t, run_tk)
