"""The review report in a real browser (headless Chromium through Playwright).

Marked ``browser``. Without Chromium or Playwright the test is skipped, unless ``CFX_REQUIRE_BROWSER=1`` (set by
``.ci/run``, which installs Chromium), where their absence fails it.
"""

import csv
import io
import os
import shutil
from pathlib import Path

import pytest
from test_explain import SCRIPT, XSS, _HostileReporter, _source

import cfx

pytestmark = pytest.mark.browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    path = os.environ.get("CFX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        import playwright  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        if os.environ.get("CFX_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium and Playwright are required (CFX_REQUIRE_BROWSER=1) but missing")
        pytest.skip("Chromium or Playwright is not installed")
    return path


def test_report_in_headless_chromium(shapes_models, tmp_path):
    from playwright.sync_api import sync_playwright

    from cfx.demo import demo_fitted

    executable = _chromium()
    source = _source(shapes_models, 24)
    source.sample_ids[3] = XSS + ".png"
    summary = cfx.explain(shapes_models.classifier, source, demo_fitted(shapes_models, progress=False), tmp_path,
                          reporter=_HostileReporter(), flag_percentile=50, progress=False)
    flagged = summary["counts"]["flagged"]
    assert 0 < flagged < 24
    report = tmp_path / "report.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        console, dialogs, requests = [], [], []
        page.on("console", lambda m: console.append((m.type, m.text)))
        page.on("pageerror", lambda e: console.append(("pageerror", str(e))))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:"))
                else None)
        page.goto(report.resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.locator("article.card").count() == flagged
        out = Path(os.environ.get("CFX_ARTIFACTS", tmp_path))
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / "report.png"), full_page=False)  # what a reviewer sees first
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
        assert widths and min(widths) > 0  # every image decoded
        assert page.evaluate("() => window.__xss") is None and not dialogs
        page.locator("article.card").nth(0).locator("input[value=agree]").check()
        page.locator("article.card").nth(0).locator("input.note").fill('looks right, "really" =1+1')
        with page.expect_download() as download:
            page.click("#export")
        rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
        assert rows[0] == ["id", "prediction", "cause", "verdict", "note"]
        assert len(rows) == flagged + 1
        assert rows[1][3] == "agree" and rows[1][4] == 'looks right, "really" =1+1'
        assert any(r[0] == XSS + ".png" for r in rows[1:]) or XSS + ".png" not in [s["id"] for s in summary["samples"]
                                                                                   if s["flagged"]]
        browser.close()
    assert not [c for c in console if c[0] in ("error", "pageerror")], console
    assert not requests, requests
    assert SCRIPT not in report.read_text()
