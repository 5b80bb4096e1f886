"""The examiner page in a real browser: Playwright driving Debian's Chromium against a real uvicorn
server on 127.0.0.1 (nothing is downloaded; `make test` installs chromium).

Set HANDCLIP_SCREENSHOT_DIR to keep the screenshot (the README's docs/images/serve_search.png was
made with HANDCLIP_SCREENSHOT_DIR=docs/images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser_helpers import chromium, open_examiner_page, running_service, skip_without_chromium, wait_until

from serve_helpers import IDENTITY_CLLR, IMAGE_CLLR, add_keys, enrolled_gallery, make_assets

skip_without_chromium()

from handclip.serve.state import ServiceState  # noqa: E402


@pytest.fixture
def server(tmp_path):
    assets = make_assets(tmp_path / "assets", num_ids=5, images_per_id=3)
    index = enrolled_gallery(assets, tmp_path / "gallery")
    keys = add_keys(index)
    with running_service(ServiceState(index, calibration=str(assets["calibration"]), device="cpu")) as url:
        yield {"url": url, "keys": keys, "assets": assets, "index": index}


def test_the_page_searches_an_uploaded_photo_and_enrols_a_folder(server, tmp_path):
    query = server["assets"]["images"] / "0003" / "002.png"  # an enrolled image: its owner ranks first
    with chromium() as browser:
        page = open_examiner_page(browser, server["url"], server["keys"]["both"])
        page.set_input_files("#query-file", str(query))
        page.fill("#case-id", "2026/017")
        page.click("#search-button")
        page.wait_for_selector("#candidates li.candidate", timeout=60_000)
        items = page.locator("#candidates li.candidate")
        assert items.count() == 5
        assert items.first.get_attribute("data-identity") == "0003"
        first = items.first.inner_text()
        assert "0003" in first and "LR ≈ " in first and "(log10 " in first and "support" in first
        assert "log10 LR +" not in first and "images in top hits" not in first
        assert "enrolled image(s) among the 10 gallery images most similar to the query" in first
        # the open-set answer: the query's owner is enrolled, so some candidate exceeds LR 1
        answer = page.inner_text("#open-set")
        assert "reach the threshold (LR > 1" in answer and "No candidate" not in answer
        # thumbnails arrive through the API with the key header
        # (polled from here: the page's Content-Security-Policy forbids the eval wait_for_function uses)
        wait_until(lambda: page.evaluate("[...document.querySelectorAll('#candidates img')]"
                                          ".every(i => i.complete && i.naturalWidth > 0)"))
        assert page.locator("#report-link").is_visible()
        assert "Audit record" in page.inner_text("#record")
        # the calibration line of the kind searched (people: 'identity'), rounded as in the PDF
        statement = page.inner_text("#statement")
        assert "kde calibration of 'identity' scores: Cllr 0.050 (Cllr_min 0.041)" in statement
        assert str(IMAGE_CLLR) not in statement and str(IDENTITY_CLLR) not in statement
        assert "not a probability" in statement and "Cllr measures" in statement
        shot = tmp_path / "serve_search.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("HANDCLIP_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "serve_search.png")

        # enrol two photos for a new identity from the page
        from handclip.synthetic.render import render_hand

        photos = []
        for i in range(2):
            photos.append(tmp_path / f"new-{i}.png")
            render_hand(77, i).save(photos[-1])
        page.fill("#identity", "walk-in")
        page.set_input_files("#enrol-files", [str(p) for p in photos])
        page.click("#enrol-button")
        wait_until(lambda: "added" in page.inner_text("#enrol-status"), 60)
        assert "walk-in: 2 added" in page.inner_text("#enrol-status")
        assert "17 images of 6 people" in page.inner_text("#enrol-status")


def test_the_page_shows_bidirectional_controls_in_names_as_escapes(server, tmp_path):
    """An identity named with a right-to-left override would display "evil" as "live": the page shows the
    control characters as \\u escapes instead, as the command line and the PDF do."""
    from handclip.gallery.enrol import EnrolItem
    from handclip.gallery.session import ExaminerSession
    from handclip.synthetic.render import render_hand

    photo = tmp_path / "rlo.png"
    render_hand(91, 0).save(photo)
    session = ExaminerSession.open(server["index"], device="cpu")
    session.enrol([EnrolItem(str(photo), "\u202eevil\u202c RLO")])
    with chromium() as browser:
        page = open_examiner_page(browser, server["url"], server["keys"]["both"], height=720)
        page.set_input_files("#query-file", str(photo))
        page.click("#search-button")
        page.wait_for_selector("#candidates li.candidate", timeout=60_000)
        first = page.locator("#candidates li.candidate .identity").first.inner_text()
        assert first == "\\u202eevil\\u202c RLO"
        assert "\u202e" not in page.inner_text("#results")


def test_the_page_says_when_no_candidate_reaches_the_threshold(server, tmp_path):
    """A person not enrolled: every candidate's LR is below 1, and the page says so above the list, with
    each number worded as the service words it (the same texts as the JSON answer)."""
    from handclip.synthetic.render import render_hand

    photo = tmp_path / "stranger.png"
    render_hand(68, 1).save(photo)  # its best score lies well below the score LR 1 takes (test_serve_api)
    with chromium() as browser:
        page = open_examiner_page(browser, server["url"], server["keys"]["both"])
        page.set_input_files("#query-file", str(photo))
        page.fill("#top-k", "3")
        page.click("#search-button")
        page.wait_for_selector("#candidates li.candidate", timeout=60_000)
        answer = page.locator("#open-set")
        assert answer.is_visible() and "none-reached" in answer.get_attribute("class")
        assert answer.inner_text().startswith("No candidate reaches the threshold (LR > 1).")
        first = page.locator("#candidates li.candidate").first
        assert "LR ≈ 1/" in first.inner_text() and "different-person proposition" in first.inner_text()
        assert "calibration data cannot support a smaller LR" in first.inner_text()
        first.locator("details.suggested summary").click()
        statement = first.locator("details.suggested p").inner_text()
        assert statement.startswith("Query image stranger.png was compared with the enrolled images of ")
        assert "times more probable if Hd is true than if Hp is true" in statement
        wait_until(lambda: page.evaluate("[...document.querySelectorAll('#candidates img')]"
                                          ".every(i => i.complete && i.naturalWidth > 0)"))
        shot = tmp_path / "serve_open_set.png"
        page.screenshot(path=str(shot), full_page=True)
        keep = os.environ.get("HANDCLIP_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "serve_open_set.png")

        # a threshold the page sends: LR > 1/1000 is exceeded by every candidate (all at 1/130 or more)
        page.fill("#threshold-lr", "0.001")
        page.click("#search-button")
        wait_until(lambda: "reach the threshold (LR > 1/1,000" in page.inner_text("#open-set"), 60)
        assert "none-reached" not in page.locator("#open-set").get_attribute("class")


def test_the_page_lists_a_cases_searches_reopens_one_and_exports_a_bundle_that_verifies(server, tmp_path):
    """Three searches from the page (two of case 2026/017, one of another case): the case's list shows
    exactly the two, Reopen shows the first one's answer again, and the exported bundle's SHA256SUMS
    verifies with sha256sum -c."""
    import subprocess
    import zipfile

    images = server["assets"]["images"]
    with chromium() as browser:
        page = open_examiner_page(browser, server["url"], server["keys"]["both"], height=1000)
        page.fill("#top-k", "3")
        records = []
        for query, case in ((images / "0001" / "000.png", "2026/017"), (images / "0004" / "001.png", "2026/999"),
                            (images / "0002" / "002.png", "2026/017")):
            page.set_input_files("#query-file", str(query))
            page.fill("#case-id", case)
            before = page.inner_text("#record") if records else ""
            page.click("#search-button")
            wait_until(lambda: "Audit record" in page.inner_text("#record")
                        and page.inner_text("#record") != before, 60)
            records.append(page.inner_text("#record").split()[2])
        page.fill("#case-lookup", "2026/017")
        page.click("#case-list")
        page.wait_for_selector("#case-searches li")
        items = page.locator("#case-searches li")
        assert items.count() == 2
        assert f"record {records[0]}" in items.nth(0).inner_text() and "000.png" in items.nth(0).inner_text()
        assert f"record {records[2]}" in items.nth(1).inner_text() and "002.png" in items.nth(1).inner_text()
        items.nth(0).locator("button.reopen").click()
        wait_until(lambda: f"Audit record {records[0]} " in page.inner_text("#record"), 30)
        assert page.locator("#candidates li.candidate").first.get_attribute("data-identity") == "0001"
        assert "reopened record" in page.inner_text("#search-status")
        wait_until(lambda: page.evaluate("[...document.querySelectorAll('#candidates img')]"
                                          ".every(i => i.complete && i.naturalWidth > 0)"))
        shot = tmp_path / "serve_case.png"
        page.screenshot(path=str(shot), full_page=True)
        keep = os.environ.get("HANDCLIP_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "serve_case.png")
        with page.expect_download() as download:
            page.click("#case-export")
        bundle = tmp_path / download.value.suggested_filename
        download.value.save_as(bundle)
    assert bundle.name == "handclip-case-2026-017.zip"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(tmp_path / "bundle")
    checked = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "bundle", capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert len(list((tmp_path / "bundle" / "searches").iterdir())) == 2


def test_the_page_crops_and_mirrors_the_query_before_searching(server, tmp_path):
    """A box dragged on the original and the mirror box ticked: the preview shows the prepared query, the
    search sends that transform, and the audit record keeps it with the original's hash."""
    import hashlib

    from handclip.data.images import load_rgb
    from handclip.data.query_transform import QueryTransform, pixels_sha256
    from handclip.forensic.audit import AuditLog

    query = server["assets"]["images"] / "0002" / "001.png"  # 64 x 64, shown 5x on a 320-pixel canvas
    with chromium() as browser:
        page = open_examiner_page(browser, server["url"], server["keys"]["both"], height=1000)
        page.set_input_files("#query-file", str(query))
        page.wait_for_selector("#prepare:not([hidden])")
        assert page.inner_text("#transform-text") == "no crop"
        box = page.locator("#crop-canvas").bounding_box()
        assert round(box["width"]) == 322 and round(box["height"]) == 322  # 320 and a 1-pixel border
        x, y = box["x"] + 1, box["y"] + 1
        # drag from image pixel (6, 4) to (56, 60)
        page.mouse.move(x + 6 * 5 + 2, y + 4 * 5 + 2)
        page.mouse.down()
        page.mouse.move(x + 30 * 5, y + 30 * 5, steps=4)
        page.mouse.move(x + 56 * 5 - 2, y + 60 * 5 - 2, steps=4)
        page.mouse.up()
        page.check("#mirror")
        assert page.inner_text("#transform-text") == "crop 6,4,50,56 px; mirrored"
        preview = page.locator("#prepared-preview").bounding_box()
        assert abs(preview["width"] / preview["height"] - 50 / 56) < 0.02  # the preview is the crop
        page.click("#search-button")
        page.wait_for_selector("#candidates li.candidate", timeout=60_000)
        assert "prepared (crop 6,4,50,56 px; mirrored) SHA-256" in page.inner_text("#search-status")
        wait_until(lambda: page.evaluate("[...document.querySelectorAll('#candidates img')]"
                                          ".every(i => i.complete && i.naturalWidth > 0)"))
        shot = tmp_path / "serve_prepare_query.png"
        page.screenshot(path=str(shot), full_page=True)
        keep = os.environ.get("HANDCLIP_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "serve_prepare_query.png")
    result = AuditLog(server["index"]).records()[-1]["results"][0]
    assert result["name"] == "001.png" and result["sha256"] == hashlib.sha256(query.read_bytes()).hexdigest()
    assert result["transform"]["crop"] == [6, 4, 50, 56] and result["transform"]["mirror"] is True
    assert result["transform"]["rotate"] == 0.0
    prepared = QueryTransform.from_record(result["transform"]).apply(load_rgb(query))
    assert pixels_sha256(prepared) == result["prepared"]["pixels_sha256"]


def test_the_page_states_the_aspects_and_keeps_the_two_mirrors_apart(tmp_path):
    """The examiner's mirror (query preparation) and the model's cross-hand comparison are two controls and
    two fields: both ticked, the record keeps the transform's mirror and the aspects compared, and the
    answer drawn by showAnswer states the aspects."""
    from serve_helpers import make_checkpoint

    from handclip.forensic.audit import AuditLog
    from handclip.gallery.enrol import EnrolItem
    from handclip.gallery.session import ExaminerSession
    from handclip.synthetic.dataset import write_synthetic_dataset

    images = write_synthetic_dataset(tmp_path / "hands", 4, 2, size=64, aspects=("dorsal_r", "dorsal_l"))
    session = ExaminerSession.open(tmp_path / "gallery", make_checkpoint(tmp_path / "model.pt"), device="cpu",
                                   create=True, batch_size=8)
    session.enrol([EnrolItem(str(images / f"{i:04d}" / a / f"{n:03d}.png"), f"person{i}", a)
                   for i in range(4) for a in ("dorsal_r", "dorsal_l") for n in range(2)], examiner="setup")
    keys = add_keys(tmp_path / "gallery")
    with running_service(ServiceState(tmp_path / "gallery", device="cpu")) as url, chromium() as browser:
        page = open_examiner_page(browser, url, keys["both"], height=1000)
        page.set_input_files("#query-file", str(images / "0001" / "dorsal_l" / "001.png"))
        page.wait_for_selector("#prepare:not([hidden])")
        page.check("#mirror")
        page.select_option("#aspect", "dorsal_l")
        page.check("#mirror-aspect")
        page.click("#search-button")
        page.wait_for_selector("#candidates li.candidate", timeout=60_000)
        statement = page.inner_text("#statement")
        assert "Aspects: query dorsal_l (compared as the other hand) against gallery dorsal_r." in statement
        page.screenshot(path=str(tmp_path / "serve_aspects.png"), full_page=True)
    record = AuditLog(tmp_path / "gallery").records()[-1]
    assert record["results"][0]["transform"]["mirror"] is True
    assert record["aspects"]["compared"] == "dorsal_l(mirrored)->dorsal_r" and record["aspects"]["mirrored"] is True
    assert record["arguments"]["mirror"] is True and record["arguments"]["mirror_aspect"] is True
