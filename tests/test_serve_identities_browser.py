"""The identity browser on the examiner page, in Debian's Chromium through Playwright against a real uvicorn
server: the identities with image counts, one identity's photos, and redaction (enrol role only) after a
confirmation with a recorded reason.

Set HANDCLIP_SCREENSHOT_DIR to keep the screenshot (docs/images/serve_identities.png was made with
HANDCLIP_SCREENSHOT_DIR=docs/images).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser_helpers import chromium, open_examiner_page, running_service, skip_without_chromium

from serve_helpers import add_keys, enrolled_gallery, make_assets

skip_without_chromium()

from playwright.sync_api import expect  # noqa: E402

from handclip.forensic.audit import AuditLog  # noqa: E402
from handclip.gallery.audit_check import verify_gallery_audit  # noqa: E402
from handclip.serve.state import ServiceState  # noqa: E402


@pytest.fixture
def server(tmp_path):
    assets = make_assets(tmp_path / "assets", num_ids=5, images_per_id=3)
    index = enrolled_gallery(assets, tmp_path / "gallery")
    keys = add_keys(index)
    with running_service(ServiceState(index, device="cpu")) as url:
        yield {"url": url, "keys": keys, "index": index}


def _open(browser, server, key: str):
    page = open_examiner_page(browser, server["url"], server["keys"][key])
    page.click("#identities-load")
    page.wait_for_selector("#identity-list li", timeout=30_000)
    return page


def test_the_identity_browser_lists_shows_and_redacts_with_a_confirmed_reason(server, tmp_path):
    with chromium() as browser:
        # A key without the enrol role browses but is offered no Redact button.
        page = _open(browser, server, "search")
        page.click("#identity-list li[data-identity='0002']")
        page.wait_for_selector("#identity-thumbs img[src^='blob:']", timeout=30_000)
        assert page.is_hidden("#redact-button")
        page.close()

        page = _open(browser, server, "both")
        rows = page.locator("#identity-list li")
        assert rows.count() == 5
        assert [rows.nth(i).get_attribute("data-identity") for i in range(5)] == ["0000", "0001", "0002", "0003",
                                                                                    "0004"]
        assert "3 images" in rows.first.inner_text()
        page.click("#identity-list li[data-identity='0002']")
        # The page's policy forbids evaluated scripts, so waits go through selectors only.
        page.wait_for_selector("#identity-thumbs figure:nth-child(3) img[src^='blob:']", timeout=30_000)
        assert page.locator("#identity-thumbs figure").count() == 3
        page.wait_for_timeout(300)  # the blob images decode
        assert page.inner_text("#identity-name") == "0002" and page.is_visible("#redact-button")
        page.locator("#identities-section").scroll_into_view_if_needed()
        page.click("#redact-button")
        assert page.is_visible("#redact-dialog")
        page.fill("#redact-reason", "consent withdrawn (letter of 2026-12-01)")
        shot = tmp_path / "serve_identities.png"
        page.screenshot(path=str(shot))  # the viewport: the modal dialog over the identity browser
        assert shot.stat().st_size > 10_000
        keep = os.environ.get("HANDCLIP_SCREENSHOT_DIR")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, Path(keep) / "serve_identities.png")
        # Cancel first: nothing is redacted.
        page.click("#redact-cancel")
        assert not page.is_visible("#redact-dialog")
        assert not [r for r in AuditLog(server["index"]).records() if r["command"] == "redact"]
        page.click("#redact-button")
        page.fill("#redact-reason", "consent withdrawn (letter of 2026-12-01)")
        page.click("#redact-confirm")
        expect(page.locator("#identities-status")).to_contain_text("redacted 0002", timeout=30_000)
        status = page.inner_text("#identities-status")
        assert "4 identities remain" in status and "audit record" in status
        assert page.locator("#identity-list li").count() == 4
        assert page.locator("#identity-list li[data-identity='0002']").count() == 0
    record = AuditLog(server["index"]).records()[-1]
    assert record["command"] == "redact" and record["identity"] == "0002"
    assert record["reason"] == "consent withdrawn (letter of 2026-12-01)" and record["examiner"] == "A. Examiner"
    assert verify_gallery_audit(server["index"]).ok
