"""examples/project_board under a real uvicorn, driven by the official Socket.IO client.

``board_scenario.mjs`` (socket.io-client 4 from tests/interop/node, plus Node's fetch) plays
a page and a user: it subscribes, edits cards, runs a crawl, stops another one, opens a late
page and sends bad input, printing what it saw as JSON lines; the tests assert on those. The
example's own page is also run in headless Chromium (Debian's, through Playwright).
Each test loads the example afresh (its module holds the board's state and its roomcast app,
which starts once), serves it on 127.0.0.1:0 and runs Node as a subprocess of that loop.
Everything waits on events or replies under timeouts; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from nodescenario import Observations, run_node_scenario
from servers import uvicorn_running

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples" / "project_board" / "app.py"
SCENARIO = Path(__file__).parent / "board_scenario.mjs"
CLIENT = ROOT / "tests" / "interop" / "node" / "node_modules" / "socket.io-client" / "package.json"
SCENARIO_TIMEOUT_MS = 15_000
SUBPROCESS_TIMEOUT_S = 25.0
TEST_TIMEOUT_S = 30.0
BROWSER_WAIT_MS = 5_000


def load_example() -> ModuleType:
    """A fresh copy of the example module: empty board, roomcast not yet started."""
    name = f"project_board_{id(object())}"
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pydantic look their module up by name
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


@pytest.fixture
async def board() -> AsyncIterator[str]:
    """The example served by uvicorn (FastAPI lifespan starting roomcast); its base URL."""
    async with uvicorn_running(load_example().app) as url:  # bounded: 10 s to start, 10 to stop
        yield url


async def run_scenario(url: str) -> Observations:
    if shutil.which("node") is None or not CLIENT.is_file():
        pytest.fail("needs node and tests/interop/node/node_modules (run `make test-deps`)")
    return await run_node_scenario(
        SCENARIO, {"url": url, "timeoutMs": SCENARIO_TIMEOUT_MS}, timeout=SUBPROCESS_TIMEOUT_S
    )


def section(observations: Observations, name: str) -> Observations:
    """The observations between mark ``name`` and the next mark."""
    start = observations.index(mark(observations, name))
    end = next((i for i in range(start + 1, len(observations)) if observations[i]["type"] == "mark"), None)
    return observations[start + 1 : end]


def mark(observations: Observations, name: str) -> dict[str, Any]:
    return next(o for o in observations if o["type"] == "mark" and o["name"] == name)


def events(observations: Observations, socket: str = "board") -> list[tuple[str, Any]]:
    return [(o["event"], o["data"]) for o in observations if o["type"] == "event" and o["socket"] == socket]


def acks(observations: Observations, socket: str) -> list[dict[str, Any]]:
    return [o["reply"] for o in observations if o["type"] == "ack" and o["socket"] == socket]


def answers(observations: Observations) -> list[tuple[str, str, int, Any]]:
    return [(o["method"], o["path"], o["status"], o["body"]) for o in observations if o["type"] == "http"]


async def test_the_official_client_drives_the_board(board: str) -> None:
    obs = await run_scenario(board)
    project, first = answers(obs)[0][3], answers(obs)[1][3]
    pid = project["id"]

    # Joining: the current state first, in the subscribe acks, before any event.
    joined = acks(obs, "board")[:2]
    assert joined[0]["snapshot"] == [{"id": pid, "name": "Website"}]
    assert joined[1]["snapshot"] == {"id": pid, "name": "Website", "cards": [first], "crawl": None}
    assert events(obs[: obs.index(mark(obs, "projects"))]) == []

    # The list room: created and renamed.
    blog = answers(section(obs, "projects"))[0][3]
    assert events(section(obs, "projects")) == [
        ("project:created", blog),
        ("project:renamed", {"id": pid, "name": "Website 2"}),
    ]

    # The project room: card created, updated, deleted, as the HTTP calls made them.
    card = answers(section(obs, "cards"))[0][3]
    assert events(section(obs, "cards")) == [
        ("card:created", card),
        ("card:updated", {**card, "done": True}),
        ("card:deleted", {"id": first["id"], "project": pid}),
    ]

    # A crawl: started, running, progress (coalesced, rising), completed with the result.
    crawl = answers(section(obs, "crawl"))[0][3]
    assert crawl["room"] == f"task:{crawl['id']}"
    crawl_events = events(section(obs, "crawl"))
    names = [name for name, _ in crawl_events]
    assert names[:2] == ["crawl:started", "task:updated"] and names[-1] == "crawl:completed"
    assert set(names[2:-1]) == {"crawl_progress"} and 1 <= len(names[2:-1]) <= 5
    progress = [data["percentage"] for name, data in crawl_events if name == "crawl_progress"]
    assert progress == sorted(progress) and all(0 < p <= 100 for p in progress)
    done = crawl_events[-1][1]
    # In the hand-rolled board's field names (the example's payload map), with nothing else.
    assert done == {
        "progressId": crawl["id"],
        "project": pid,
        "status": "completed",
        "percentage": 100.0,
        "log": "page 5 of 5",
        "result": {"pages": 5, "links": 35},
        "error": None,
    }
    assert {data["status"] for name, data in crawl_events[1:-1]} == {"crawling"}
    # roomcast's own API keeps the canonical task (so do its store and dashboard).
    async with aiohttp.ClientSession(board) as http, http.get(f"/api/tasks/{crawl['id']}") as response:
        canonical = await response.json()
    assert (canonical["id"], canonical["status"], canonical["progress"]) == (crawl["id"], "completed", 100.0)
    assert canonical["metadata"] == {"project": pid} and "percentage" not in canonical

    # The stop button: the ack says stopping, then crawl:stopping, crawl:stopped last. (A
    # page that was fetched as the stop arrived may still report its progress in between.)
    stop = section(obs, "stop")
    long_id = mark(obs, "late")["stopped"]
    stop_ack = acks(stop, "board")[0]
    assert (stop_ack["progressId"], stop_ack["status"]) == (long_id, "stopping")
    stop_names = [name for name, data in events(stop) if data["progressId"] == long_id]
    assert len(stop_names) == len(events(stop))
    assert stop_names[:3] == ["crawl:started", "task:updated", "crawl_progress"]
    assert stop_names.count("crawl:stopping") == 1 and stop_names[-1] == "crawl:stopped"
    assert set(stop_names[2 : stop_names.index("crawl:stopping")]) == {"crawl_progress"}
    assert set(stop_names[stop_names.index("crawl:stopping") + 1 : -1]) <= {"crawl_progress"}
    stopped = events(stop)[-1][1]
    assert stopped["status"] == "cancelled" and stopped["result"] is None and stopped["percentage"] < 100

    # Late joiners: a finished crawl's room answers with its final state and result; the
    # project's state names its latest crawl.
    late_done, late_stopped, late_project = (a["snapshot"] for a in acks(obs, "late"))
    assert (late_done["status"], late_done["result"]) == ("completed", {"pages": 5, "links": 35})
    assert late_done == done
    assert late_stopped["status"] == "cancelled" and late_stopped["progressId"] == long_id
    assert late_project["name"] == "Website 2" and late_project["cards"] == [{**card, "done": True}]
    assert late_project["crawl"] == late_stopped
    assert events(section(obs, "late"), "late") == []

    # Bad input: clear errors, nothing published.
    bad = section(obs, "bad")
    assert "no-such-task" in acks(bad, "board")[0]["error"]
    assert [(method, path, status) for method, path, status, _ in answers(bad)] == [
        ("POST", "/projects/nope/cards", 404),
        ("POST", "/projects/nope/crawl", 404),
        ("POST", f"/projects/{pid}/crawl/no-such-task/stop", 404),
        ("POST", f"/projects/{pid}/crawl/{crawl['id']}/stop", 409),
    ]
    details = [body["detail"] for *_, body in answers(bad)]
    assert details[:3] == ["no project 'nope'", "no project 'nope'", f"no crawl 'no-such-task' in project {pid!r}"]
    assert "completed" in details[3]
    assert events(bad) == []


async def test_http_bad_input_and_the_page(board: str) -> None:
    """Unknown ids and invalid bodies are refused; the page and the client script are served."""
    async with asyncio.timeout(TEST_TIMEOUT_S), aiohttp.ClientSession(board) as http:
        pid = (await (await http.post("/projects", json={"name": "P"})).json())["id"]
        cases = [
            ("PATCH", "/projects/nope", {"name": "x"}, 404),
            ("PATCH", f"/projects/{pid}/cards/c999", {"done": True}, 404),
            ("DELETE", f"/projects/{pid}/cards/c999", None, 404),
            ("POST", f"/projects/{pid}/cards", {}, 422),
            ("POST", f"/projects/{pid}/crawl?pages=0", None, 422),
            ("POST", f"/projects/{pid}/crawl?delay=-1", None, 422),
        ]
        for method, path, body, status in cases:
            async with http.request(method, path, json=body) as response:
                assert (method, path, response.status) == (method, path, status)
        async with http.get("/projects") as response:
            assert await response.json() == [{"id": pid, "name": "P"}]
        async with http.get("/") as response:
            assert response.status == 200 and "/client/socket.io.min.js" in await response.text()
        async with http.get("/client/socket.io.min.js", allow_redirects=False) as response:
            assert response.status == 200 if CLIENT.is_file() else response.status == 307


async def test_the_page_in_a_browser(board: str) -> None:
    """The example's page in headless Chromium, with the official browser client it serves.

    One page creates a project, adds and ticks a card, starts a crawl and presses stop; a
    second page opened afterwards shows the same state at once, then follows a deletion.
    """
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: `make test-deps` (or pip install -e '.[test]')")
    chromium = os.environ.get("ROOMCAST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail(f"Chromium is not installed ({chromium}): `make test-deps` installs it")
    errors: list[str] = []
    async with asyncio.timeout(TEST_TIMEOUT_S), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            context = await browser.new_context()
            context.set_default_timeout(BROWSER_WAIT_MS)
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{board}/")
            await page.fill("#new-project input", "Site <b>")
            await page.click("#new-project button")
            await page.click("#projects a")  # waits for project:created to list it
            await page.wait_for_selector("#board:not([hidden])")
            await page.fill("#new-card input", "first card")
            await page.click("#new-card button")
            await page.click("#cards input[type=checkbox]")
            await page.wait_for_selector("#cards li.done")
            await page.click("#crawl")
            await page.wait_for_function("document.getElementById('bar').value > 0")  # crawl_progress
            await page.click("#stop")
            await page.wait_for_function("document.getElementById('status').textContent.startsWith('cancelled')")
            assert await page.text_content("#title") == "Site <b>"

            late = await context.new_page()
            await late.goto(f"{board}/#p1")
            await late.wait_for_selector("#cards li.done")  # the state, from the subscribe ack
            assert (await late.text_content("#status") or "").startswith("cancelled")
            assert await late.is_hidden("#stop")
            await page.click("#cards button")
            await late.wait_for_function("document.querySelectorAll('#cards li').length === 0")
        finally:
            await browser.close()
    assert errors == []
