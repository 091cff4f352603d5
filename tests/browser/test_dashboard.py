"""The operator's dashboard (``/dashboard``, ``server.dashboard``) in a real Chromium.

A real roomcast server on 127.0.0.1 and Debian's Chromium through Playwright (``conftest``).
What is proven is what an operator and an attacker would try: the login and its cookie, the
refusals without it, the Content-Security-Policy, that the page's figures follow the server
(a publication moves them), that Stop on a running worker's task ends it ``cancelled`` by the
real flow, and that a task title written as HTML stays text. Every wait is for a condition
on the page or the server, bounded; none is a sleep.

A screenshot of the page goes to ``$ROOMCAST_TEST_OUTPUT`` (default ``build/test-output/``,
ignored by git); ``docs/dashboard.png`` is one of those.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from servers import RunningServer, running

from roomcast.hub.hub import Hub
from roomcast.publisher import Publisher
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.dashboard import CSP, SESSION_COOKIE, STATS_ROOM

KEY = "dashboard-test-key-0123456789"
TEST_S = 60  # the bound on a whole test
WAIT_MS = 10_000  # the bound on each wait for the page
XSS_TITLE = '<img src=x onerror="window.__xss = 1">nightly <b>import</b>'
OUTPUT = Path(os.environ.get("ROOMCAST_TEST_OUTPUT") or Path(__file__).parents[2] / "build" / "test-output")


@asynccontextmanager
async def serving(api_key: str | None) -> AsyncIterator[RunningServer]:
    """A server whose Stop grace is short, so a stopped worker's task ends within the test."""
    settings = Settings(api_key=api_key, task_stop_grace=0.5, task_db=":memory:")
    async with asyncio.timeout(TEST_S), running(App(Hub(), settings)) as srv:
        yield srv


@asynccontextmanager
async def tab(browser: Any) -> AsyncIterator[tuple[Any, list[str]]]:
    """A fresh context and page, and the console errors it logs (a CSP violation is one)."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        yield page, errors
    finally:
        await context.close()


async def wait_text(page: Any, selector: str, predicate: str) -> None:
    """Wait until ``predicate`` (a JS expression over ``text``) holds for the element's text."""
    await page.wait_for_function(
        f"() => {{ const e = document.querySelector({selector!r}); if (!e) return false; const text = e.textContent; return {predicate}; }}",
        timeout=WAIT_MS,
    )


async def test_refused_without_a_session_when_a_key_is_set() -> None:
    async with serving(KEY) as srv, aiohttp.ClientSession() as http:
        async with http.get(f"{srv.url}/dashboard") as response:  # the login form, not the page
            assert response.status == 401
            assert response.headers["Content-Security-Policy"] == CSP
            body = await response.text()
            assert 'action="/dashboard/login"' in body and "dashboard.js" not in body
        stream = f"{srv.url}/dashboard/sse?room={STATS_ROOM}&room=tasks"
        async with http.get(stream) as response:
            assert response.status == 401
        async with http.post(f"{srv.url}/dashboard/api/tasks/x/stop", json={}) as response:
            assert response.status == 401
        forged = {"Cookie": f"{SESSION_COOKIE}=9999999999.nonce.{'0' * 64}"}
        async with http.get(f"{srv.url}/dashboard", headers=forged) as response:
            assert response.status == 401
        async with http.post(f"{srv.url}/dashboard/login", data={"key": "wrong"}, allow_redirects=False) as response:
            assert response.status == 401 and "set-cookie" not in response.headers
        # A page of another site cannot log a browser in (nor stop tasks): CSRF.
        evil = {"Origin": "http://evil.example"}
        async with http.post(
            f"{srv.url}/dashboard/login", data={"key": KEY}, headers=evil, allow_redirects=False
        ) as response:
            assert response.status == 403
        # The stats room is the server's: the ordinary /sse refuses it, with no JWT configured.
        async with http.get(f"{srv.url}/sse", params={"room": STATS_ROOM}) as response:
            assert response.status == 403
        async with http.ws_connect(f"{srv.url}/ws", protocols=("roomcast.v1",)) as ws:  # nor /ws, in or out
            await ws.send_json({"type": "subscribe", "id": 1, "room": STATS_ROOM})
            refused = await ws.receive_json(timeout=WAIT_MS / 1000)
            assert refused["type"] == "error" and refused["code"] == "forbidden", refused
            await ws.send_json({"type": "publish", "id": 2, "room": STATS_ROOM, "event": "stats", "data": {}})
            refused = await ws.receive_json(timeout=WAIT_MS / 1000)
            assert refused["type"] == "error" and refused["code"] == "forbidden", refused
        async with http.get(f"{srv.url}/", allow_redirects=False) as response:
            assert response.status == 302 and response.headers["Location"] == "/dashboard"


async def test_keyless_is_for_this_machine_only(browser: Any) -> None:
    async with serving(None) as srv, aiohttp.ClientSession() as http:
        async with http.get(f"{srv.url}/dashboard", headers={"X-Forwarded-For": "203.0.113.9"}) as response:
            assert response.status == 403  # through a proxy: not this machine
        async with tab(browser) as (page, errors):
            response = await page.goto(f"{srv.url}/")  # the root leads to the dashboard, no login
            assert response.status == 200 and page.url == f"{srv.url}/dashboard"
            assert response.headers["content-security-policy"] == CSP
            await wait_text(page, "#state", "text === 'connected'")
            await wait_text(page, "#connections-total", "text !== '–'")
            assert errors == []


async def test_live_dashboard_login_numbers_stop_and_text_only(browser: Any) -> None:
    async with serving(KEY) as srv, aiohttp.ClientSession() as http:
        publisher = Publisher(srv.url, api_key=KEY)
        async with tab(browser) as (page, errors):
            # Log in through the form; the page never sees the key, the cookie is HttpOnly.
            response = await page.goto(f"{srv.url}/dashboard")
            assert response.status == 401
            await page.fill("input[name=key]", KEY)
            async with page.expect_navigation():
                await page.click("button[type=submit]")
            errors.clear()  # Chromium logs the login form's own 401 as a failed load
            (cookie,) = await page.context.cookies()
            assert cookie["name"] == SESSION_COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] == "/dashboard" and 0 < cookie["expires"]
            assert KEY not in await page.content()
            await wait_text(page, "#state", "text === 'connected'")
            await wait_text(page, "#publications-total", "text === '0'")

            # Its numbers move: a subscriber on /sse and publications to its room.
            async with http.get(f"{srv.url}/sse", params={"room": "lobby"}) as stream:
                assert stream.status == 200
                async with asyncio.timeout(WAIT_MS / 1000):  # subscribed: what follows reaches it
                    while b"event: snapshot" not in await stream.content.readuntil(b"\n\n"):
                        pass
                for n in range(5):
                    await publisher.apublish("lobby", "chat", {"n": n})
                await wait_text(page, "#publications-total", "text === '5'")  # its own stats left out
                await wait_text(page, "#deliveries-total", "text === '5'")
                await wait_text(page, "#rooms tbody", "text.includes('lobby')")
                await wait_text(page, "#connections [data-transport=sse]", "text.endsWith('1')")

            # A worker's task, reported running; its title is HTML an attacker wrote.
            task = await publisher.acreate_task("import", title=XSS_TITLE)
            running_task = await publisher.areport(task["id"], progress=40, step="rows")
            assert running_task["status"] == "running"
            row = f"#tasks tr[data-task='{task['id']}']"
            await page.wait_for_selector(f"{row}[data-status=running]")
            assert await page.locator(f"{row} td >> nth=0").inner_text() == f"{XSS_TITLE}\nimport · {task['id']}"
            assert await page.locator("#tasks img, #tasks b").count() == 0  # text, never markup
            assert await page.evaluate("() => window.__xss") is None
            assert await page.locator(f"{row} progress").get_attribute("value") == "40"

            OUTPUT.mkdir(parents=True, exist_ok=True)
            await wait_text(page, "#disconnects", "!text.includes('none')")  # the /sse client's close
            await page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

            # Stop: the task is stopping at once; the worker learns it from its next report
            # and winds down without another report; the stop grace then ends it cancelled.
            await page.click(f"{row} button.stop")
            await page.wait_for_selector(f"{row}[data-status=stopping]")
            assert (await publisher.areport(task["id"], progress=45))["status"] == "stopping"
            await page.wait_for_selector(f"{row}[data-status=cancelled]")
            assert (await publisher.aget_task(task["id"]))["status"] == "cancelled"
            assert await page.locator(f"{row} button.stop").count() == 0
            assert errors == []  # nothing the CSP blocked, no script error
