"""``POST /api/tasks`` with ``"poll"``: the server follows an upstream job for the task.

A real roomcast server (native door) and a real upstream (``aiohttp.web``) on 127.0.0.1, both
in the test's loop. The upstream answers from a queue the test fills, the test waits on the
task's SSE room: no sleeps. The server runs keyless, so it follows no URL unless told: it is
given the upstream's prefix (``poll_allow``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from servers import RunningServer, running
from sseclient import open_sse
from tapbroker import TapBroker

from roomcast import Publisher, PublishError
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.tasks.poller import CLOSED_REASON

FIELDS = {"progress": "percent", "status": "state", "result": "output", "error": "error"}


class Upstream:
    """A status URL answering, request by request, the ``(status, json)`` pairs it is given."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self.requests = 0
        self.hit = asyncio.Event()
        self.url = ""
        self.prefix = ""  # what --poll-allow names for this upstream

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.hit.set()
        status, body = await self.replies.get()
        return web.json_response(body, status=status)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_get("/job/{id}", up.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    up.prefix = f"http://{host}:{port}/job/"
    up.url = f"{up.prefix}7"
    yield up
    for _ in range(8):  # release handlers still waiting for an answer
        up.replies.put_nowait((503, None))
    await runner.cleanup()


@pytest.fixture
async def srv(upstream: Upstream) -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings(poll_allow=(upstream.prefix,)))) as s:
        yield s


async def _call(srv: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{srv.url}{path}", json=body) as response:
            return response.status, await response.json(content_type=None)


async def test_a_task_created_with_poll_follows_the_upstream_to_its_result(
    srv: RunningServer, upstream: Upstream
) -> None:
    poll = {"url": upstream.url, "interval": 0.01, "timeout": 30, "fields": FIELDS, "done": ["ok"]}
    status, task = await _call(srv, "POST", "/api/tasks", {"kind": "render", "title": "#7", "poll": poll})
    assert status == 201 and task["status"] == "running" and task["kind"] == "render"
    async with open_sse(srv.url, [f"task:{task['id']}"]) as stream:
        snapshot = await stream.next()
        assert snapshot.event == "snapshot" and snapshot.json()["snapshot"]["status"] == "running"
        upstream.replies.put_nowait((200, {"state": "rendering", "percent": 40}))
        upstream.replies.put_nowait((200, {"state": "ok", "percent": 100, "output": {"url": "/r/7.mp4"}}))
        events = [(e.event, e.json()) for e in await stream.until_end(timeout=10.0)]
    progress = [data["progress"] for event, data in events if event == "task:progress"]
    assert 40 in progress
    assert events[-1][0] == "task:completed" and events[-1][1]["result"] == {"url": "/r/7.mp4"}
    status, fetched = await _call(srv, "GET", f"/api/tasks/{task['id']}")
    assert status == 200 and fetched["status"] == "completed" and fetched["progress"] == 100
    assert upstream.requests == 2


@pytest.mark.parametrize(
    ("poll", "message"),
    [
        ("http://x/job", "poll spec: must be a JSON object"),
        ({"url": "ftp://x/job", "fields": FIELDS}, "http:// or https://"),
        ({"url": "http://x/job", "fields": FIELDS, "interval": 0}, "'interval' must be a positive number"),
        ({"url": "http://x/job", "fields": FIELDS, "every": 2}, "unknown key(s) 'every'"),
        ({"url": "http://x/job"}, "must name a 'status' or a 'progress'"),
    ],
    ids=["not-an-object", "scheme", "interval", "unknown-key", "no-end"],
)
async def test_a_bad_poll_spec_is_a_400_with_the_reason_and_creates_no_task(
    srv: RunningServer, poll: Any, message: str
) -> None:
    status, answer = await _call(srv, "POST", "/api/tasks", {"kind": "render", "poll": poll})
    assert status == 400 and answer["error"]["code"] == "bad_request"
    assert message in answer["error"]["message"]
    status, listed = await _call(srv, "GET", "/api/tasks")
    assert status == 200 and listed["tasks"] == []


async def test_the_publisher_creates_a_polled_task_and_an_upstream_404_fails_it(
    srv: RunningServer, upstream: Upstream
) -> None:
    publisher = Publisher(srv.url)
    poll = {"url": upstream.url, "interval": 0.01, "fields": FIELDS}
    upstream.replies.put_nowait((404, {"detail": "no job 7"}))
    task = await publisher.acreate_task("render", poll=poll)
    assert task["status"] == "running"
    async with open_sse(srv.url, [f"task:{task['id']}"]) as stream:
        events = await stream.until_end(timeout=10.0)
    final = events[-1].json()
    final = final.get("snapshot", final)  # it may have ended before the stream began
    assert final["status"] == "failed" and final["error"] == "upstream answered 404 Not Found"
    # the sync twin, from a worker thread, with a bad spec: refused, nothing created
    with pytest.raises(PublishError) as refused:
        await asyncio.to_thread(publisher.create_task, "render", poll={"url": "mailto:a@b", "fields": FIELDS})
    assert refused.value.status == 400 and "http:// or https://" in str(refused.value)
    assert [t["id"] for t in (await publisher.alist_tasks())["tasks"]] == [task["id"]]


async def test_shutdown_fails_a_followed_task_with_the_reason(upstream: Upstream) -> None:
    tap = TapBroker()
    app = App(Hub(broker=tap), Settings(poll_allow=(upstream.prefix,)))
    failed: list[Any] = []
    tap.taps.append(
        lambda p: failed.append(p.data[0]) if p.event == "task:failed" and p.room.startswith("task:") else None
    )
    async with running(app) as srv:
        poll = {"url": upstream.url, "interval": 0.01, "fields": FIELDS}
        _, task = await _call(srv, "POST", "/api/tasks", {"kind": "render", "poll": poll})
        async with asyncio.timeout(10):
            await upstream.hit.wait()  # the first request now waits in the upstream's handler
        assert task["id"] in app.pollers.following
    assert [(t["id"], t["error"]) for t in failed] == [(task["id"], CLOSED_REASON)]


async def test_the_openapi_document_describes_poll(srv: RunningServer) -> None:
    status, doc = await _call(srv, "GET", "/api/openapi.json")
    assert status == 200
    create = doc["paths"]["/api/tasks"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["properties"]["poll"] == {"$ref": "#/components/schemas/PollSpec"}
    spec = doc["components"]["schemas"]["PollSpec"]
    assert spec["required"] == ["url"] and set(spec["properties"]["fields"]["properties"]) == {
        "progress",
        "step",
        "message",
        "status",
        "result",
        "error",
    }
