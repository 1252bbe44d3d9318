"""The dashboard in a real browser (issue 19): Debian's chromium, headless, driven by Selenium
through Debian's chromedriver (both installed by tests/setup-system.sh), against the dashboard a
real agent serves. The one-time URL signs in; the targets page shows the target's state; Revert
from the page puts the stock files back and Reapply from the page repairs it (the files are
checked); the gain chart and the repair-time chart render with data; a screenshot of each page
is saved (at 1280x800, and the targets page at phone width too) under
.tk-test-cache/screenshots/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kit.agentkit import end_process, patched_target, spawn_agent, wait_for, write_config

pytestmark = pytest.mark.timeout(600)

SHOTS = Path(__file__).resolve().parents[1] / ".tk-test-cache" / "screenshots"


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    assert chromium and driver, "chromium / chromedriver missing: tests/setup-system.sh installs them"
    opts = Options()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,800", "--no-first-run", "--disable-extensions"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _fake_bench(name: str, bundle: str) -> None:
    """A bench result kept with the target as `torchkeeper bench` keeps it, from a workload
    that answers as a GPU would (synthetic figures: this checks the chart, not a speed)."""
    from torchkeeper.engine import bench
    from torchkeeper.engine.core import Engine

    def runner(python, args, timeout):
        if args == ["--probe"]:
            return {"cuda": True, "gpu": "NVIDIA GeForce RTX 4070 (synthetic)", "torch": "2.3.1+cu121"}
        runner.n += 1
        rate = 10.0 if runner.n == 1 else 13.0
        part = {"it_s": rate, "min": rate * 0.97, "max": rate * 1.02, "spread": 0.05, "reps": 7, "iters": 10}
        return {"cudnn": 8801, "parts": {"conv fp16": part, "attention fp16": part}}
    runner.n = 0
    bench.bench(Engine(), name, bundle, runner=runner)


def _state(run_tk) -> str:
    return run_tk("status", "--json").json()["targets"][0]["state"]


def test_the_dashboard_in_chromium(tmp_path, build, run_tk, tk_home):
    from selenium.webdriver.common.by import By

    venv, w, m = patched_target(tmp_path, build, run_tk)
    _fake_bench("a1111", m["name"])
    write_config(tk_home, '[notifications]\nbackend = "log"\n')
    SHOTS.mkdir(parents=True, exist_ok=True)
    agent = spawn_agent(tk_home)
    drv = None
    try:
        wait_for(lambda: "running" in run_tk("status").out, 30, "the agent")
        r = run_tk("dashboard", "--json", "--no-browser")
        assert r.rc == 0, r
        drv = _browser()
        drv.get(r.json()["url"])
        base = "/".join(drv.current_url.split("/")[:3])
        row = drv.find_element(By.CSS_SELECTOR, "tr.state-patched")
        assert "a1111" in row.text and "overlay in place" in row.text, row.text

        # Revert from the page: stock files back
        row.find_element(By.XPATH, ".//button[text()='Revert to stock']").click()
        wait_for(lambda: _state(run_tk) == "stock", 60, "the revert")
        assert run_tk("verify", "--full").rc in (0, 1)
        # Reapply from the page: the overlay back, every file checked
        drv.get(base + "/")
        drv.find_element(By.CSS_SELECTOR, "tr.state-stock").find_element(
            By.XPATH, ".//button[text()='Reapply']").click()
        wait_for(lambda: _state(run_tk) == "patched", 60, "the reapply")
        full = run_tk("verify", "--full", "--json")
        assert full.rc == 0 and full.json()[0]["in_desired_state"] is True, full

        drv.get(base + "/")
        wait_for(lambda: drv.find_elements(By.CSS_SELECTOR, "svg.chart rect"), 20, "the repair-time chart")
        drv.save_screenshot(str(SHOTS / "targets-1280x800.png"))
        drv.get(base + "/targets/a1111")
        assert "Plan: bundle" in drv.page_source and "Events" in drv.page_source
        # the way back: each replaced file's backup, there on disk
        assert drv.page_source.count("<td>kept</td>") == 7 and "missing" not in drv.page_source
        # the bench: two workloads, stock and the bundle each, with their spread
        assert len(drv.find_elements(By.CSS_SELECTOR, "svg.chart rect")) == 4
        assert len(drv.find_elements(By.CSS_SELECTOR, "svg.chart line.spread")) == 4
        assert "Measured gain: x1.30" in drv.page_source and "conv fp16" in drv.page_source
        drv.save_screenshot(str(SHOTS / "target-1280x800.png"))
        for page in ("bundles", "settings", "found"):
            drv.get(f"{base}/{page}")
            assert "torchkeeper" in drv.title
            drv.save_screenshot(str(SHOTS / f"{page}-1280x800.png"))
        # notifications off from the settings page: written to config.toml, read again by the agent
        drv.get(f"{base}/settings")
        drv.find_element(By.XPATH, "//tr[td[text()='Notifications']]//button").click()
        cfg = tk_home / "config" / "config.toml"
        wait_for(lambda: "enabled = false" in cfg.read_text(), 20, "notifications off in config.toml")
        assert 'backend = "log"' in cfg.read_text()   # the user's other settings kept
        drv.set_window_size(390, 844)
        drv.get(base + "/")
        drv.save_screenshot(str(SHOTS / "targets-phone.png"))
    finally:
        if drv is not None:
            drv.quit()
        end_process(agent)
