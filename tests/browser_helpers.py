"""What the browser tests share: Debian's Chromium through Playwright, and the examiner service run by
uvicorn in a thread on a free port of 127.0.0.1 (nothing is downloaded; `make test` installs chromium)."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

CHROMIUM = "/usr/bin/chromium"
VIEWPORT_WIDTH = 1280


def skip_without_chromium() -> None:
    """Skip the calling module where chromium is missing, except under CI: `make test` installs it there,
    so a missing browser is a failure, not a skip."""
    if not Path(CHROMIUM).exists() and os.environ.get("CI") != "true":
        pytest.skip(f"{CHROMIUM} is not installed (`make test` installs Debian's chromium)",
                    allow_module_level=True)


def wait_until(condition: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_service(state) -> Iterator[str]:
    """The examiner service over ``state`` (a ``ServiceState``), served until the block ends; its URL."""
    import uvicorn

    from handclip.serve.app import create_app

    config = uvicorn.Config(create_app(state), host="127.0.0.1", port=_free_port(), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{config.port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def chromium():
    """A headless Chromium browser, closed when the block ends."""
    import playwright.sync_api as playwright_api

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def open_examiner_page(browser, url: str, key: str, height: int = 900, on_console=None):
    """A new page at ``url`` with the API key ``key`` entered, ``VIEWPORT_WIDTH`` x ``height`` pixels;
    ``on_console`` receives every console message from before the page loads."""
    page = browser.new_page(viewport={"width": VIEWPORT_WIDTH, "height": height})
    if on_console is not None:
        page.on("console", on_console)
    page.goto(url)
    page.fill("#api-key", key)
    page.dispatch_event("#api-key", "change")
    return page
