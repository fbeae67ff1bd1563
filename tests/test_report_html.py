"""The HTML report in a real browser (Debian's chromium, driven by Playwright): the shared tiny run's
data/report/index.html loads with no console error and no request outside the file, and its
figures are drawn (a screenshot that is not blank)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from fly64study.report import README_END, README_START, headline_markdown, read_plot_table

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# .ci/run installs chromium and sets this: there a missing browser fails the test instead of skipping it
REQUIRED = os.environ.get("FLY64STUDY_REQUIRE_BROWSER") == "1"


def _open(page_file: Path, screenshot: Path | None = None) -> tuple[list[str], list[str], dict]:
    """Console messages of type error or warning, every request the page made, and what it shows."""
    if not Path(CHROMIUM).is_file():
        if REQUIRED:
            pytest.fail(f"no chromium at {CHROMIUM}: .ci/run installs Debian's package chromium")
        pytest.skip("no chromium: `apt install chromium` (Debian) to run the browser test")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # make setup installs it (pyproject.toml's test extra)
        (pytest.fail if REQUIRED else pytest.skip)("no playwright: run `make setup`")
    url = page_file.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            console, requests = [], []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            # anything but the file itself is recorded above, then refused here: no test waits on a network
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else route.abort())
            page.goto(url, wait_until="load")
            shown = page.evaluate("""() => ({
                headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
                images: [...document.images].map(i => ({src: i.src.slice(0, 22), w: i.naturalWidth, h: i.naturalHeight})),
            })""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return console, requests, shown


@pytest.mark.pipeline
def test_the_html_report_loads_offline_with_every_figure_drawn(tiny_pipeline, tmp_path):
    page = tiny_pipeline.root / "data/report/index.html"
    shot = tmp_path / "report.png"
    console, requests, shown = _open(page, shot)
    assert console == []
    assert requests == [page.resolve().as_uri()]  # the file itself, nothing else
    # the Markdown report's sections, answer first
    md_sections = [line[3:] for line in (page.parent / "metrics_summary.md").read_text().splitlines()
                   if line.startswith("## ")]
    assert shown["headings"] == md_sections and md_sections[0] == "Findings"
    # the two report figures, and each compared job's side-by-side and FRC figure, all decoded
    n_jobs = len(json.loads((page.parent / "metrics_summary.json").read_text())["jobs"])
    assert len(shown["images"]) == 2 + 2 * n_jobs
    assert all(i["src"] == "data:image/png;base64," and i["w"] > 100 and i["h"] > 100 for i in shown["images"])
    # the first screen: the findings table and the first figure drawn, not a blank page
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.std() > 0.05 and (pixels.mean(axis=2) < 0.5).mean() > 0.01


def test_the_browser_test_sees_a_request_and_an_error(tmp_path):
    """The negative control: a page that reaches outside itself is caught, whether the policy blocks
    it (a console error) or not (a request)."""
    png = base64.b64encode((REPO / "docs" / "ms_ssim_vs_dose.png").read_bytes()).decode()
    (tmp_path / "bad.html").write_text(f'<!DOCTYPE html><html><body><img src="data:image/png;base64,{png}">'
                                       '<img src="http://example.invalid/x.png"></body></html>')
    console, requests, _ = _open(tmp_path / "bad.html")
    assert "http://example.invalid/x.png" in requests and any(c.startswith("error") for c in console)
    (tmp_path / "blocked.html").write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src \'none\'">'
        '</head><body><img src="http://example.invalid/x.png"></body></html>')
    console, _, _ = _open(tmp_path / "blocked.html")
    assert any("Content Security Policy" in c for c in console), console


def test_the_readme_headline_table_is_the_committed_results():
    """README.md's table between its headline markers is what the committed data/report/plots CSVs say
    (`make docs` writes it): it cannot drift from the numbers."""
    readme = (REPO / "README.md").read_text()
    start, end = README_START, README_END
    assert start in readme and end in readme
    table = readme.split(start)[1].split(end)[0].strip()
    tables = {v: read_plot_table(REPO / "data/report/plots" / f"ms_ssim_phase_{v}.csv") for v in ("dense", "sparse")}
    assert table == headline_markdown(tables)
    # and it is the numbers: every model's value of either CSV is in the table, to three places
    for rows in tables.values():
        for row in rows:
            assert all(f"{float(v):.3f}" in table for k, v in row.items() if v and not k.endswith("_sd")
                       and k not in ("nphotons", "photons_per_pixel"))
    assert np.isfinite([float(r["LSQML"]) for r in tables["dense"]]).all()


def test_the_docs_figure_is_the_committed_runs():
    """docs/ms_ssim_vs_dose.png (the README's figure) is the one the committed dvc.lock's report made."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]["report"]["outs"]
    md5 = next(o["md5"] for o in lock if o["path"] == "data/report/ms_ssim_vs_dose.png")
    assert hashlib.md5((REPO / "docs" / "ms_ssim_vs_dose.png").read_bytes()).hexdigest() == md5, "run `make docs`"
