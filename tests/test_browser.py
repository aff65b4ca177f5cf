"""A real browser: JupyterLab on loopback, headless Debian Chromium driven by Playwright,
runs 01-quickstart and checks the progress panel rendered and reached 100%."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "artifacts"
pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    shutil.copy(ROOT / "notebooks" / "01-quickstart.ipynb", tmp_path)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", "--IdentityProvider.token=",
         "--ServerApp.password=", f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--ServerApp.allow_root=True"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    url = None
    assert proc.stderr is not None
    for _ in range(400):  # the server logs its URL once it listens
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"(http://127\.0\.0\.1:\d+)/lab", line)
        if found:
            url = found.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("JupyterLab did not start")
    # keep draining its log so the server never blocks on a full pipe
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield url, tmp_path
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_quickstart_panel_reaches_100_percent_in_chromium(jupyterlab):
    if CHROMIUM is None:
        if os.environ.get("BGDL_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (BGDL_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    url, root = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/lab/tree/01-quickstart.ipynb")
            page.locator(".jp-Notebook").wait_for(timeout=90_000)
            # Run All before the kernel is connected is dropped silently: wait for an idle kernel.
            expect(page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle"))).to_be_visible(timeout=120_000)
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
            header = page.locator(".widget-html-content", has_text="bgdl_nb").first
            expect(header).to_be_visible(timeout=120_000)
            expect(header).to_contain_text("2 done", timeout=180_000)
            panel = page.locator(".widget-vbox", has=header).first
            bar = panel.locator(".widget-hprogress .progress-bar").first  # the overall bar
            expect(bar).to_have_attribute("style", re.compile(r"width:\s*100%"), timeout=30_000)
            panel.scroll_into_view_if_needed()
            panel.screenshot(path=str(ARTIFACTS / "browser-panel.png"))
            page.screenshot(path=str(ARTIFACTS / "browser-page.png"), full_page=False)
        finally:
            browser.close()
    assert (root / "data" / "quickstart" / "measurements.parquet").stat().st_size == 40_000_000
