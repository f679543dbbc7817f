"""The HTML report of a finished run, opened in a real headless Chromium: every figure loads and the
tables show the run's numbers."""

from __future__ import annotations

import json

import pytest

from sa2va_queue.producer.synth import generate
from sa2va_queue.report.summarize import fmt
from tests.e2e.browser import browser  # noqa: F401  (fixture)
from tests.e2e.conftest import cli

pytestmark = pytest.mark.slow

N_FRAMES = 4

# Every table of the page as rows of cell texts, as a person sees them (innerText).
TABLES_JS = """return Array.from(document.querySelectorAll('table')).map(t =>
    Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim())));"""
IMAGES_JS = """return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width}));"""


def _table(tables: list[list[list[str]]], first_header: str) -> dict[str, list[str]]:
    """The table whose first header cell is `first_header`, as {first cell: row}."""
    for rows in tables:
        if rows and rows[0][0] == first_header:
            return {row[0]: row for row in rows[1:]}
    raise AssertionError(f"no table headed {first_header!r} on the page: {[t[0] for t in tables if t]}")


def test_report_figures_load_and_tables_show_the_runs_numbers(browser, tmp_path):  # noqa: F811
    frames = tmp_path / "frames"
    generate(frames, n=N_FRAMES, seed=11)
    data = tmp_path / "work"
    done = cli("--data-dir", str(data), "run", str(frames), "--run-name", "browser", "--format", "html,json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((data / "reports" / "browser.json").read_text())

    browser.get((data / "reports" / "browser.html").as_uri())
    assert browser.title == "browser"
    images = browser.execute_script(IMAGES_JS)
    assert len(images) == len(report["figures"]) >= 2, (images, report["figures"])  # histogram + cases at least
    for image in images:
        assert image["complete"] and image["width"] > 0 and image["height"] > 0, f"figure did not load: {image}"
        assert image["shown"] > 100, f"figure not shown at a readable size: {image}"
    assert {i["alt"] for i in images} == set(report["figures"].values())

    tables = browser.execute_script(TABLES_JS)
    status = _table(tables, "status")
    assert status["done"][1] == str(N_FRAMES) and status["total"][1] == str(N_FRAMES)
    metrics = _table(tables, "metric")
    for name in ("dice", "iou", "cldice"):
        m = report["metrics"][name]
        assert metrics[name][1:4] == [str(m["n"]), str(m["n_undefined"]), fmt(m["mean"])], metrics[name]
        assert metrics[name][6] == f"[{fmt(m['ci_low'])}, {fmt(m['ci_high'])}]"
    assert report["metrics"]["dice"]["n"] == N_FRAMES
    per_frame = _table(tables, "frame")
    assert len(per_frame) == N_FRAMES
    for frame in report["frames"]:
        row = per_frame[frame["display_name"]]
        assert row[1] == "done" and row[2] == fmt(frame["dice"]), row
    browser.save_screenshot(str(tmp_path / "report.png"))
    browser.execute_script("document.images[document.images.length - 1].scrollIntoView();")  # a case figure
    browser.save_screenshot(str(tmp_path / "report-figure.png"))
    assert (tmp_path / "report-figure.png").stat().st_size > 10_000
