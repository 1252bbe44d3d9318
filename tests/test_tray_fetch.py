"""The tray's "get it and apply", end to end: a real agent (in this process), pystray's dummy
backend, the real pip fetching from a local package index, the real engine applying."""

from __future__ import annotations

import contextlib

import pytest

from kit import agentkit
from kit import pkgindex
from kit import wayback
from torchkeeper.daemon import offers
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


@contextlib.contextmanager
def _agent_on_an_index(wheel_dir, tk_home, monkeypatch):
    """A local package index the agent's pip is pointed at, and the agent (in this process,
    suggestions asked at once)."""
    with pkgindex.PackageIndex(wheel_dir) as idx:
        for k, v in pkgindex.pip_env(PIP_INDEX_URL=idx.url).items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        monkeypatch.setattr(offers, "SUGGEST_DELAY_S", 0)
        agent = agentkit.start_agent(tk_home, watch=False, schedule=False, driver_query=_driver)
        try:
            yield idx, agent
        finally:
            agent.stop(timeout=30)


@pytest.fixture
def setup(build, tmp_path, run_tk, tk_home, wheel_dir, monkeypatch):
    t = wayback.make_target(build, tmp_path, run_tk, tk_home, "windows")
    with _agent_on_an_index(wheel_dir, tk_home, monkeypatch) as (idx, agent):
        yield t, idx, agent, tray.Tray(agent, backend="dummy", opener=lambda p: True)


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


# -- a found install, not managed yet: the same item after "Manage" ----------------------------

FOUND_HEAD = "cuDNN 8.9.7 + CUDA 12.4 fit — manage it, get them and apply"


@pytest.fixture
def found_setup(build, tmp_path, tk_home, wheel_dir, monkeypatch):
    """The first run (no config): discover finds an A1111 venv and a ComfyUI portable in HOME."""
    from kit.installs import installs

    home = tmp_path / "user"
    sps = installs(build, home)
    monkeypatch.setenv("HOME", str(home))
    with _agent_on_an_index(wheel_dir, tk_home, monkeypatch) as (idx, agent):
        agentkit.wait_for(lambda: agentkit.events(tk_home, "discovered"), 60, "the first discover")
        agentkit.wait_idle(agent)
        # no menu yet: nothing asked of the index
        assert not agentkit.events(tk_home, "suggested") and idx.downloads == {}
        yield home, sps, idx, agent, tray.Tray(agent, backend="dummy", opener=lambda p: True)


def _found(tr, app):
    return [i for i in tr.icon.menu if i.text.startswith(app + " (")]


def test_a_found_install_gets_the_suggestion_after_manage(found_setup, run_tk, tk_home):
    home, sps, idx, agent, tr = found_setup
    agentkit.wait_for(lambda: _found(tr, "AUTOMATIC1111") and FOUND_HEAD in
                      [i.text for i in _found(tr, "AUTOMATIC1111")[0].submenu], 60,
                      "the suggestion under the found install")
    assert [i.text for i in _found(tr, "AUTOMATIC1111")[0].submenu] == ["Manage", FOUND_HEAD, "Open folder"]
    comfy = [i.text for i in _found(tr, "ComfyUI portable")[0].submenu]   # cu124: its own suggestion
    assert comfy[0] == "Manage" and comfy[1].startswith("cuDNN 9.5.1 fits — manage it") and len(comfy) == 3
    assert idx.downloads == {}                                            # suggesting downloads nothing
    assert len(agentkit.events(tk_home, "suggested")) == 2
    sp = sps["a1111"]
    t = wayback.Target(home / "stable-diffusion-webui" / "venv", sp, tk_home, [], wayback.record_libs(sp))
    wayback.classify(t, {"stock": None})

    (it,) = [i for i in _found(tr, "AUTOMATIC1111")[0].submenu if i.text == FOUND_HEAD]
    it(tr.icon)
    (managed,) = agentkit.wait_for(lambda: agentkit.events(tk_home, "managed"), 30, "the install managed")
    name = managed["target"]
    agentkit.wait_for(lambda: agentkit.events(tk_home, "repaired", name), 120, "the apply")
    agentkit.wait_idle(agent)
    assert sum(idx.downloads.values()) == 3
    (b,) = run_tk("bundle", "list", "--json").json()
    t.bundles["fetched"] = {"id": b["id"], "files": {f["name"]: f["sha256"] for f in b["files"]}}
    wayback.classify(t, {"fetched": "fetched"})          # every file the bundle's, none mixed
    wayback.assert_clean(t)
    (st,) = [x for x in run_tk("status", "--json").json()["targets"] if x["name"] == name]
    assert st["state"] == "patched" and st["applied"]["bundle"] == b["id"], st
    assert not _found(tr, "AUTOMATIC1111") and _found(tr, "ComfyUI portable")  # the other stays offered
    assert [v.name for v in tr.view.targets] == [name]
    assert any("fetched and applied as asked" in x for x in agent.notifier.bodies())
    wayback.ok(run_tk("revert", name))
    wayback.classify(t, {"stock": None})
