"""The documentation: every public name has a docstring, the Sphinx site builds with
warnings as errors (broken internal links included), its API reference has an entry for
every name of ``bgdl_nb.__all__`` and its CLI reference every subcommand, the README's
links lead somewhere, and a real Chromium renders the built index and an API page."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import bgdl_nb as bg

ROOT = Path(__file__).parent.parent
ARTIFACTS = ROOT / "artifacts"
PUBLIC = [*bg.__all__, "open"]  # bg.open is public, but kept out of __all__ (a star import would shadow open)


def _members(cls: type) -> list[tuple[str, object]]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        if isinstance(value, property) or inspect.isfunction(fn):
            out.append((name, fn))
    return out


def test_every_public_callable_and_class_has_a_docstring():
    missing = []
    for name in PUBLIC:
        obj = getattr(bg, name)
        if not (obj.__doc__ or "").strip():
            missing.append(name)
        if inspect.isclass(obj) and not issubclass(obj, BaseException):
            missing += [f"{name}.{attr}" for attr, fn in _members(obj) if not (fn.__doc__ or "").strip()]
    assert not missing, f"public names without a docstring: {missing}"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    build = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                            str(ROOT / "docs"), str(out)], capture_output=True, text=True, timeout=600)
    warnings = [line for line in build.stderr.splitlines() if not line.startswith(("myst v", "myst-nb v"))]
    assert build.returncode == 0 and not warnings, "\n".join(warnings)
    return out


def _inventory(site: Path) -> set[str]:
    raw = (site / "objects.inv").read_bytes()
    body = zlib.decompress(raw.split(b"\n", 4)[4]).decode()
    return {line.split(" ", 1)[0] for line in body.splitlines()}


def test_the_site_builds_and_documents_every_public_name_and_subcommand(site):
    names = _inventory(site)
    assert not [n for n in PUBLIC if f"bgdl_nb.{n}" not in names], "names missing from the API reference"
    from bgdl_nb.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert len(commands) >= 9
    for command in commands:  # a page of its own, with its options
        page = site / "reference" / "cli" / f"{command}.html"
        assert page.exists() and f"bgdl {command}" in page.read_text(), f"no page for bgdl {command}"
    for page in ("getting-started", "concepts", "performance", "design", "notebooks", "how-to/scheduling",
                 "how-to/networks", "how-to/shared-machines", "how-to/clusters", "how-to/doorways"):
        assert (site / f"{page}.html").exists(), page
    executed = sorted((site / "notebooks").glob("*.html"))
    assert len(executed) == len(list((ROOT / "notebooks").glob("*.ipynb"))), executed


def test_every_link_of_the_readme_leads_to_a_file_and_heading_that_exist(site):
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|notebooks|benchmarks)/[^)#\s]+)(?:#([^)\s]+))?\)", readme)
    assert links
    for target, anchor in links:
        assert (ROOT / target).exists(), target
        if anchor and target.endswith(".md"):
            html = site / Path(target).relative_to("docs").with_suffix(".html")
            assert f'id="{anchor}"' in html.read_text(), f"{target}#{anchor}: no such heading"


def test_a_real_browser_renders_the_index_and_an_api_page(site):
    from conftest import require_tool
    chromium = require_tool("chromium", "/usr/bin/chromium-browser", flag="BGDL_REQUIRE_BROWSER", package="chromium")
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto((site / "index.html").as_uri())
            expect(page.locator("h1").first).to_contain_text("bgdl_nb")
            expect(page.get_by_role("link", name="Getting started").first).to_be_visible()
            assert page.evaluate("getComputedStyle(document.body).fontFamily") != "", "no theme stylesheet"
            page.screenshot(path=str(ARTIFACTS / "docs-index.png"))
            page.goto((site / "reference" / "api.html").as_uri())
            entry = page.locator('dt[id="bgdl_nb.fetch"]')
            expect(entry).to_be_visible()
            expect(page.locator('dt[id="bgdl_nb.Session"]')).to_be_visible()
            page.locator('dt[id="bgdl_nb.fetch"]').scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / "docs-api.png"))
        finally:
            browser.close()
