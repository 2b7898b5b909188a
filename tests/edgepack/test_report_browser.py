"""report.html in a real browser: Debian's headless Chromium (installed by .ci/run) opens it with no console error,
no request leaving the file, and every plot decoded to a non-empty image; a screenshot is taken of the whole page."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgepack.reports.report import write_reports

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="chromium is not installed (.ci/run installs it: apt-get install chromium)"
)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_report(browser, html: Path, screenshot: Path) -> dict:
    """Load the page and report what a reader's browser saw: console errors, requests, each image's natural size."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, requests = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(html.as_uri(), wait_until="load")
    images = page.eval_on_selector_all(
        "figure img", "images => images.map(i => ({alt: i.alt, width: i.naturalWidth, height: i.naturalHeight}))"
    )
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    return {"errors": errors, "requests": requests, "images": images}


def assert_renders_cleanly(seen: dict, plot_count: int, html: Path, screenshot: Path) -> None:
    assert seen["errors"] == []
    assert all(url == html.as_uri() or url.startswith("data:") for url in seen["requests"]), seen["requests"]
    assert len(seen["images"]) == plot_count
    for image in seen["images"]:
        assert image["width"] > 0 and image["height"] > 0, image
    assert screenshot.stat().st_size > 50_000  # a full page with plots, not a blank or error page


def test_the_full_report_renders_cleanly(browser, full_results, tmp_path):
    write_reports(tmp_path, full_results)
    html, screenshot = tmp_path / "report.html", tmp_path / "report.png"
    seen = open_report(browser, html, screenshot)
    assert_renders_cleanly(seen, 8, html, screenshot)
    assert {"Accuracy vs latency", "Layer sensitivity", "Robustness"} <= {i["alt"] for i in seen["images"]}


def test_a_real_runs_report_renders_cleanly(browser, digits_run, tmp_path):
    html, screenshot = digits_run.run_dir / "report.html", tmp_path / "real.png"
    assert_renders_cleanly(open_report(browser, html, screenshot), 4, html, screenshot)


def test_the_page_opens_with_a_summary_table_and_shows_no_host_path(browser, digits_run):
    """One row per artifact first on the page; no absolute path of this machine (run folder, weights) in the page
    or in manifest.json, whose paths are relative to the run folder."""
    html = digits_run.run_dir / "report.html"
    page = browser.new_page()
    page.goto(html.as_uri(), wait_until="load")
    first_table = page.eval_on_selector("table", "t => t.id")
    rows = page.eval_on_selector_all("#summary tr", "rows => rows.map(r => [...r.cells].map(c => c.innerText))")
    text = page.inner_text("body")
    page.close()
    assert first_table == "summary"
    assert rows[0][:6] == ["artifact", "format", "precision", "bytes", "top-1", "drop vs torch-fp32"]
    assert rows[0][6:] == ["p50 ms host x1"]
    assert [r[0] for r in rows[1:]] == [a["name"] for a in digits_run.artifacts]
    assert rows[2][1:3] == ["onnx", "fp32"] and rows[2][5] == "+0.00 pp" and float(rows[2][6]) > 0
    manifest = (digits_run.run_dir / "manifest.json").read_text()
    weights = digits_run.results["recipe"]["model"]["weights"]
    assert Path(weights).is_absolute()  # results.json keeps the host's path; what is handed on does not
    for handed_on in (text, manifest, (digits_run.run_dir / "report.md").read_text()):
        assert str(digits_run.run_dir) not in handed_on and weights not in handed_on
    assert json.loads(manifest)["recipe"]["model"]["weights"] == os.path.relpath(weights, digits_run.run_dir)
