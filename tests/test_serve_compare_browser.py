"""The side-by-side comparison in a real browser (Playwright driving Debian's Chromium against uvicorn,
as tests/test_serve_browser.py does): a candidate clicked opens the prepared query beside its best
image, zoom and pan move both panes together, the strip puts another enrolled image on the right, and
Escape or Close returns to the list; nothing breaks the page's Content-Security-Policy.

Set HANDCLIP_SCREENSHOT_DIR to keep the screenshot (docs/images/serve_compare.png was made with
HANDCLIP_SCREENSHOT_DIR=docs/images).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from browser_helpers import chromium, open_examiner_page, wait_until
from test_serve_browser import server  # noqa: F401 - the fixture

from handclip.atomic import sha256_file

LOADED = "(() => {{ const i = document.querySelector('{}'); return i.complete && i.naturalWidth > 0; }})()"
TRANSFORMS = "[...document.querySelectorAll('#compare .viewport img')].map(i => getComputedStyle(i).transform)"


def _matrix(transform: str) -> list[float]:
    """(a, b, c, d, e, f) of a computed CSS transform: the scale is a, the translation (e, f)."""
    return [float(v) for v in re.fullmatch(r"matrix\((.*)\)", transform).group(1).split(",")]


def _same_transform(page) -> list[float]:
    query, candidate = page.evaluate(TRANSFORMS)
    assert query == candidate, "the two panes show different parts of their images"
    return _matrix(query) if query != "none" else [1, 0, 0, 1, 0, 0]


def test_the_comparison_zooms_and_pans_both_images_together_and_switches_the_right_one(server, tmp_path):  # noqa: F811
    query = server["assets"]["images"] / "0003" / "002.png"
    refused = []

    def note_csp_refusal(message):
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    with chromium() as browser:
        page = open_examiner_page(browser, server["url"], server["keys"]["both"], on_console=note_csp_refusal)
        page.set_input_files("#query-file", str(query))
        page.wait_for_selector("#prepare:not([hidden])")
        page.check("#mirror")  # a prepared query: the comparison shows what was searched
        page.click("#search-button")
        page.wait_for_selector("#candidates li.candidate", timeout=60_000)
        status = page.inner_text("#search-status")
        prepared_sha = re.search(r"mirrored\) SHA-256 ([0-9a-f]{16})", status).group(1)
        page.locator("#candidates li.candidate .identity").first.click()
        page.wait_for_selector("#compare:not([hidden])")
        wait_until(lambda: page.evaluate(LOADED.format("#compare-query"))
                    and page.evaluate(LOADED.format("#compare-candidate")))
        assert page.inner_text("#compare-title").endswith("rank 1, 0003")
        assert "Prepared query (what the model searched)" in page.inner_text("#caption-query")
        assert f"SHA-256 {prepared_sha}" in page.inner_text("#caption-query")
        caption = page.inner_text("#caption-candidate")
        best = re.search(r"SHA-256 ([0-9a-f]{64})", caption).group(1)
        assert caption.startswith("Rank 1, 0003, best-matching image: ")
        # full resolution: the enrolled 64 x 64 file itself, not a thumbnail
        assert page.evaluate("document.querySelector('#compare-candidate').naturalWidth") == 64
        assert "LR ≈ " in page.inner_text("#compare-figures")

        # zoom: the buttons and the wheel, both panes alike
        assert _same_transform(page)[0] == 1
        page.click("#zoom-in")
        box = page.locator("#viewport-query").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.4)
        page.mouse.wheel(0, -100)
        wait_until(lambda: _same_transform(page)[0] > 1.5)
        zoomed = _same_transform(page)
        assert abs(zoomed[0] - 1.5 * 1.25) < 1e-6 and page.inner_text("#zoom-level") == "188%"
        # pan: a drag on the right pane moves the left one as far
        right = page.locator("#viewport-candidate").bounding_box()
        page.mouse.move(right["x"] + 200, right["y"] + 200)
        page.mouse.down()
        page.mouse.move(right["x"] + 240, right["y"] + 225, steps=5)
        page.mouse.up()
        panned = _same_transform(page)
        assert abs(panned[4] - zoomed[4] - 40) < 0.5 and abs(panned[5] - zoomed[5] - 25) < 0.5
        assert panned[0] == zoomed[0]

        # the strip: the candidate's three enrolled images, the best one selected; another goes right
        wait_until(lambda: page.locator("#compare-strip button").count() == 3)
        selected = page.locator("#compare-strip button.selected")
        assert selected.count() == 1 and selected.get_attribute("data-sha256") == best
        other = page.locator("#compare-strip button:not(.selected)").first
        other_sha = other.get_attribute("data-sha256")
        enrolled = {sha256_file(f) for f in (server["assets"]["images"] / "0003").iterdir()}
        assert other_sha in enrolled and other_sha != best
        wait_until(lambda: page.evaluate("[...document.querySelectorAll('#compare-strip img')]"
                                          ".every(i => i.complete && i.naturalWidth > 0)"))
        other.click()
        wait_until(lambda: other_sha in page.inner_text("#caption-candidate")
                    and page.evaluate(LOADED.format("#compare-candidate")))
        assert page.locator("#compare-strip button.selected").get_attribute("data-sha256") == other_sha
        assert "another enrolled image (not the one scored)" in page.inner_text("#caption-candidate")
        assert _same_transform(page) == panned  # the view is kept for the new image

        shot = tmp_path / "serve_compare.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("HANDCLIP_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "serve_compare.png")

        # Escape returns to the list; the Compare button opens it again, Close returns too
        page.keyboard.press("Escape")
        assert page.locator("#compare").is_hidden() and page.locator("#candidates").is_visible()
        page.locator("#candidates li.candidate").nth(1).locator(".compare-button").click()
        page.wait_for_selector("#compare:not([hidden])")
        assert "rank 2, " in page.inner_text("#compare-title")
        assert _same_transform(page)[0] == 1  # a new comparison starts with the whole images
        page.click("#compare-close")
        assert page.locator("#compare").is_hidden()
        assert not refused, refused
