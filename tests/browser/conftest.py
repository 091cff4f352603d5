"""A real browser for the SSE tests: Debian's Chromium driven by Playwright's async API.

``make test-deps`` installs both: Chromium with apt-get, Playwright from the ``test`` extra.
Playwright's own browser download (``playwright install``) is never used. Everything runs on
the test's event loop: the roomcast server, the page's server and Playwright's driver.

The page (``eventsource_page.PAGE``) is served by a small aiohttp server on a port of its
own, so each ``EventSource`` is a cross-origin request that roomcast's CORS policy must allow.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest
from eventsource_page import PAGE, WAIT_MS
from pageserver import serve_page

CHROMIUM_ARGS = [
    "--no-sandbox",  # root, in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str:
    path = os.environ.get("ROOMCAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail(f"Chromium is not installed ({path}): `make test-deps` installs it with apt-get")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium; each launch gets a fresh temporary profile from Playwright."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: `make test-deps` (or pip install -e '.[test]')")
    executable = _chromium()
    pw = await async_playwright().start()
    try:
        chromium = await pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
    finally:
        await pw.stop()


@pytest.fixture
async def page_origin() -> AsyncIterator[str]:
    """Serves the page at ``/`` on 127.0.0.1 with an ephemeral port; yields its origin."""
    async with serve_page(lambda request: PAGE) as origin:
        yield origin


@pytest.fixture
async def page(browser: Any, page_origin: str) -> AsyncIterator[Any]:
    """A tab with the page loaded from ``page_origin``."""
    context = await browser.new_context()
    try:
        tab = await context.new_page()
        tab.set_default_timeout(WAIT_MS)
        await tab.goto(page_origin + "/")
        yield tab
    finally:
        await context.close()
