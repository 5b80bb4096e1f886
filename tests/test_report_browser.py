"""report.html in a real browser at 1280 pixels: no table runs off-screen (Playwright driving Debian's
Chromium on a file; nothing is downloaded). docs/images/report_quick_start.png is such a screenshot of the
README's quick start report."""

from __future__ import annotations

from browser_helpers import chromium, skip_without_chromium

skip_without_chromium()

from handclip.evaluate.forensic import ForensicResult  # noqa: E402
from handclip.evaluate.forensic_report import bands_table  # noqa: E402
from handclip.evaluate.report import html_report, markdown_table  # noqa: E402

WIDTH = 1280


def _overflow(page) -> list:
    """Every table whose right edge lies beyond the window, and the page's own width."""
    return page.evaluate("""() => [document.documentElement.scrollWidth,
        Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().right)
             .filter(right => right > window.innerWidth)]""")


def test_report_tables_fit_a_1280_pixel_window(tmp_path):
    rows = [{"run": k, "rank1": 0.5, "rank5": 0.75, "rank10": 0.875, "mAP": 0.6, "mINP": 0.6, "queries": 103,
             "gallery": 20} for k in range(3)]
    bands = bands_table(ForensicResult(per_run=[], aggregate={}, notes=[], score="cosine similarity",
                                       method="logit", folds=2))
    reasons = ("| figure (%) | mean ± std | runs |\n|---|---:|---:|\n"
               "| FNMR at FMR = 1e-4 | too few non-mated pairs (1,957; 10,000 needed) | 0 |\n")
    files = {"manifest": "/data/" + "a_very_long_folder_name/" * 6 + "mine.csv", "manifest_sha256": "ab" * 32,
             "checkpoint": "/runs/mine/best.pt", "checkpoint_sha256": "cd" * 32}
    out = html_report(tmp_path / "report.html", "Evaluation on folder my_hands_2026 (my_hands_2026.csv)",
                      markdown_table(rows), tables={"Verification": reasons, "LR bands": bands}, files=files)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(out.as_uri())
        width, beyond = _overflow(page)
        assert width <= WIDTH and beyond == []
        assert page.title() == "Evaluation on folder my_hands_2026 (my_hands_2026.csv)"
        verbal = page.locator("td.text").first.bounding_box()
        assert verbal["height"] > 20  # the ENFSI sentences wrap onto two lines rather than widen the table
        assert page.locator("text=" + "ab" * 32).count() == 1


def test_the_old_unwrapped_tables_would_have_run_off_screen(tmp_path):
    """The check above can fail: the same verbal-scale table kept on one line per row is wider than 1280 px."""
    bands = bands_table(ForensicResult(per_run=[], aggregate={}, notes=[], score="s", method="logit", folds=2))
    out = html_report(tmp_path / "report.html", "t", bands)
    html = out.read_text(encoding="utf-8").replace("white-space:normal", "white-space:nowrap")
    out.write_text(html, encoding="utf-8")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.goto(out.as_uri())
        width, beyond = _overflow(page)
        assert beyond or width > WIDTH
