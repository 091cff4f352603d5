"""A hand-rolled frontend in Chromium keeps its wire format: ``EventSource.onmessage`` on
``/tasks/{id}/events?format=message`` and a plain ``WebSocket`` on ``/tasks/{id}/ws``, both
reading a task kind's mapped field names (``progressId``, ``percentage``, ``status: "crawling"``).

The page is what such a frontend writes by hand, with no roomcast code: one ``onmessage``
handler, one ``onmessage`` on a WebSocket. It comes from another port, so every request is a
CORS request too. Every wait is bounded; none is a sleep.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from eventsource_page import CLOSED, WAIT_MS, SseSpy
from pageserver import serve_page
from servers import RunningServer, running

from roomcast import disconnect
from roomcast.broker.memory import MemoryBroker
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.tasks.model import Task, TaskEvents, TaskStatus

RETRY_MS = 200

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>crawl progress, by hand</title></head>
<body>
<script>
window.got = [];     // every message, as the page's handlers read it
window.states = [];  // open / error / close transitions
window.followTask = function (url) {
  const es = (window.es = new EventSource(url));
  es.onmessage = (e) => {
    const {event, data} = JSON.parse(e.data);
    got.push({via: "sse", event, data, lastEventId: e.lastEventId});
  };
  es.onopen = () => states.push("open");
  es.onerror = () => states.push("error " + es.readyState);
};
window.taskSocket = function (url) {
  const ws = (window.ws = new WebSocket(url, "roomcast.v1"));
  ws.onmessage = (e) => got.push({via: "ws", ...JSON.parse(e.data)});
  ws.onclose = (e) => states.push("close " + e.code);
};
</script>
</body></html>
"""


def crawl_wire(task: Task) -> dict[str, Any]:
    return {
        "progressId": task.id,
        "percentage": task.progress or 0,
        "status": "crawling" if task.status is TaskStatus.RUNNING else task.status.value,
    }


@asynccontextmanager
async def serving(origin: str) -> AsyncIterator[tuple[RunningServer, SseSpy]]:
    settings = Settings(
        cors_origins=(origin,),
        sse_retry_ms=RETRY_MS,
        task_db=":memory:",
        task_events={"crawl": TaskEvents(progress="crawl_progress", completed="crawl:completed")},
        task_payloads={"crawl": crawl_wire},
    )
    app = App(Hub(broker=MemoryBroker(history_size=100)), settings)
    spy = SseSpy(app)
    async with running(app) as srv:
        try:
            yield srv, spy
        finally:
            if spy.gate is not None:
                spy.release()


@asynccontextmanager
async def hand_rolled_page(browser: Any) -> AsyncIterator[tuple[Any, str]]:
    async with serve_page(lambda request: PAGE) as origin:
        context = await browser.new_context()
        try:
            tab = await context.new_page()
            tab.set_default_timeout(WAIT_MS)
            await tab.goto(origin + "/")
            yield tab, origin
        finally:
            await context.close()


async def messages(tab: Any, count: int) -> list[dict[str, Any]]:
    """Wait until the page holds ``count`` messages; all of them."""
    await tab.wait_for_function("(n) => got.length >= n", arg=count, polling=20, timeout=WAIT_MS)
    got: list[dict[str, Any]] = await tab.evaluate("got")
    return got


async def test_onmessage_receives_mapped_task_events_and_recovers_after_a_drop(browser: Any) -> None:
    async with hand_rolled_page(browser) as (tab, origin), serving(origin) as (srv, spy):
        tasks = srv.app.tasks
        task = await tasks.create("crawl")
        await tasks.begin(task.id)
        await tab.evaluate("(url) => followTask(url)", f"{srv.url}/tasks/{task.id}/events?format=message")
        (snapshot,) = await messages(tab, 1)
        assert (snapshot["event"], snapshot["data"]["snapshot"]) == (
            "snapshot",
            {"progressId": task.id, "percentage": 0, "status": "crawling"},
        )
        await tasks.report(task.id, 30)
        live = (await messages(tab, 2))[1]
        assert (live["event"], live["data"]) == (
            "crawl_progress",
            {"progressId": task.id, "percentage": 30.0, "status": "crawling"},
        )

        # The server drops the stream; reconnects wait at the door while the crawl goes on
        # and ends, so the page surely misses it, then resumes from its Last-Event-ID.
        spy.hold()
        (conn,) = srv.app.sse.streams
        conn.disconnect(disconnect.TRANSPORT_CLOSE)
        await spy.until(lambda: not srv.app.sse.streams, "the dropped stream to end")
        await tasks.report(task.id, 60)
        await tasks.complete(task.id, {"pages": 3})  # stores and publishes the 60 % first
        await spy.until(lambda: len(spy.requests) == 2, "the browser to reconnect by itself")
        spy.release()

        got = await messages(tab, 5)
        assert [(m["event"], m["data"]) for m in got[2:]] == [
            ("error", {"code": "disconnect", "message": "transport close", "reconnect": True}),
            ("crawl_progress", {"progressId": task.id, "percentage": 60.0, "status": "crawling"}),
            ("crawl:completed", {"progressId": task.id, "percentage": 100.0, "status": "completed"}),
        ]
        assert spy.requests[1].last_event_id == live["lastEventId"]  # resumed, not restarted
        # The finished task's stream ends; the reconnect gets 204 and EventSource stops.
        await tab.wait_for_function("es.readyState === 2", polling=20, timeout=WAIT_MS)
        assert await tab.evaluate("es.readyState") == CLOSED
        assert [r.status for r in spy.requests] == [200, 200, 204]
        assert len(await tab.evaluate("got")) == 5


async def test_a_page_follows_a_task_on_its_own_websocket_url(browser: Any) -> None:
    async with hand_rolled_page(browser) as (tab, origin), serving(origin) as (srv, _):
        tasks = srv.app.tasks
        task = await tasks.create("crawl")
        ws_url = srv.url.replace("http://", "ws://") + f"/tasks/{task.id}/ws"
        await tab.evaluate("(url) => taskSocket(url)", ws_url)
        (snapshot,) = await messages(tab, 1)
        assert (snapshot["type"], snapshot["id"], snapshot["room"]) == ("snapshot", "stream", f"task:{task.id}")
        assert snapshot["snapshot"] == {"progressId": task.id, "percentage": 0, "status": "pending"}
        await tasks.report(task.id, 50)
        await tasks.complete(task.id)
        got = await messages(tab, 4)
        assert [(m["type"], m["event"], m["data"]) for m in got[1:]] == [
            ("event", "task:updated", {"progressId": task.id, "percentage": 0, "status": "crawling"}),
            ("event", "crawl_progress", {"progressId": task.id, "percentage": 50.0, "status": "crawling"}),
            ("event", "crawl:completed", {"progressId": task.id, "percentage": 100.0, "status": "completed"}),
        ]
        assert [m["offset"] for m in got[1:]] == [2, 3, 4]  # to resume with ?epoch=&offset=
        # The task ended: the socket closes normally, as /tasks/{id}/events ends.
        await tab.wait_for_function("states.includes('close 1000')", polling=20, timeout=WAIT_MS)
        assert await tab.evaluate("states") == ["close 1000"]
