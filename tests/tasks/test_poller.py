"""Upstream pollers: a task follows an external job's status URL to its end.

The upstream is a real ``aiohttp.web`` server on 127.0.0.1 whose every answer the test hands
out from a queue, so a request waits in the handler until the test decides what it gets: no
sleeps to synchronise. The task side is a real ``TaskService`` over a real hub and SQLite
store; the test records what the hub publishes and waits on it with a timeout.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from aiohttp import web
from tapbroker import TapBroker

from roomcast.errors import InvalidTransition, TaskError, TaskNotFound
from roomcast.hub import Hub
from roomcast.tasks.model import TaskStatus
from roomcast.tasks.poller import CLOSED_REASON, PollFields, PollSpec, TaskPoller
from roomcast.tasks.service import TaskService
from roomcast.tasks.store_sqlite import SqliteTaskStore
from roomcast.types import Publication

WAIT = 5.0  # seconds any asynchronous outcome may take before the test fails
S = TaskStatus
FIELDS = {
    "progress": "data.percent",
    "step": "data.phase",
    "message": "note",
    "status": "state",
    "result": "data.output",
    "error": "data.error",
}


@dataclass
class Reply:
    status: int = 200
    json: Any = None
    raw: bytes | None = None  # sent as is instead of ``json``
    chunked: bool = False


def running(percent: float | str | None = None, **data: Any) -> Reply:
    return Reply(json={"state": "running", "data": {"percent": percent, **data}})


class Upstream:
    """A status URL whose answers the test hands out one at a time (``reply``)."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[Reply | None] = asyncio.Queue()
        self.requests: list[web.Request] = []
        self.waiting = 0
        self._hit = asyncio.Event()
        self.url = ""

    def reply(self, *replies: Reply) -> None:
        for r in replies:
            self.replies.put_nowait(r)

    async def until_requests(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while len(self.requests) < count:
                self._hit.clear()
                await self._hit.wait()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self._hit.set()
        self.waiting += 1
        try:
            reply = await self.replies.get()
        finally:
            self.waiting -= 1
        if reply is None:  # the test is over
            return web.Response(status=503)
        body = reply.raw if reply.raw is not None else orjson.dumps(reply.json)
        if not reply.chunked:
            return web.Response(status=reply.status, body=body, content_type="application/json")
        response = web.StreamResponse(status=reply.status)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(0, len(body), 7):
            await response.write(body[i : i + 7])
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream()
    app = web.Application()
    app.router.add_get("/job", up.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    up.url = f"http://{host}:{port}/job"
    yield up
    for _ in range(up.waiting):  # release handlers still waiting for an answer
        up.replies.put_nowait(None)
    await runner.cleanup()


class Published:
    """What the hub publishes to task rooms, as ``(task id, event, task json)``."""

    def __init__(self, hub: Hub) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        assert isinstance(hub.broker, TapBroker)
        hub.broker.taps.append(self._record)

    def _record(self, publication: Publication) -> None:
        if publication.room.startswith("task:") and publication.data:
            self.seen.append((publication.room[5:], publication.event, publication.data[0]))
            self._changed.set()

    def of(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [(event, data) for tid, event, data in self.seen if tid == task_id]

    async def until(self, task_id: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first publication for the task whose data satisfies ``predicate``."""
        async with asyncio.timeout(WAIT):
            while True:
                for _, data in self.of(task_id):
                    if predicate(data):
                        return data
                self._changed.clear()
                await self._changed.wait()

    async def until_status(self, task_id: str, status: TaskStatus) -> dict[str, Any]:
        return await self.until(task_id, lambda d: d["status"] == status.value)


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub(broker=TapBroker())
    await h.start()
    yield h
    await h.aclose()


@pytest.fixture
async def service(hub: Hub) -> AsyncIterator[TaskService]:
    store = SqliteTaskStore(":memory:")
    await store.open()
    svc = TaskService(hub, store, progress_interval=0, stop_grace=5.0)
    await svc.open()
    yield svc
    await svc.aclose()
    await store.aclose()


@pytest.fixture
async def pollers(service: TaskService, hub: Hub) -> AsyncIterator[TaskPoller]:
    p = TaskPoller(service)
    yield p
    await p.aclose()


@pytest.fixture
def published(hub: Hub) -> Published:
    return Published(hub)


def spec(url: str, **changes: Any) -> PollSpec:
    data: dict[str, Any] = {"url": url, "interval": 0.01, "timeout": 30, "request_timeout": 10, "fields": FIELDS}
    data.update(changes)
    return PollSpec.from_json(data)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# -- following to the end --------------------------------------------------------------------


async def test_progress_is_mapped_and_published_and_done_completes_with_the_mapped_result(
    upstream: Upstream, pollers: TaskPoller, published: Published, service: TaskService
) -> None:
    follow = spec(upstream.url, headers={"Authorization": "Bearer upstream-secret"})
    assert "upstream-secret" not in repr(follow)  # headers stay out of logs
    task = await pollers.create("render", follow, title="Render #42")
    assert task.status is S.RUNNING and task.id in pollers.following

    upstream.reply(running(25, phase="fetch"))
    await published.until(task.id, lambda d: d["progress"] == 25 and d["step"] == "fetch")
    upstream.reply(Reply(json={"state": "running", "data": {"percent": 50}, "note": "half way"}))
    await published.until(task.id, lambda d: d["progress"] == 50 and d["message"] == "half way")
    upstream.reply(Reply(json={"state": "succeeded", "data": {"percent": 99, "output": {"frames": 240}}}))
    done = await published.until_status(task.id, S.COMPLETED)

    assert done["result"] == {"frames": 240} and done["progress"] == 100
    assert done["step"] == "fetch" and done["message"] == "half way"
    events = [event for event, _ in published.of(task.id)]
    assert events[:2] == ["task:created", "task:updated"] and events[-1] == "task:completed"
    assert "task:progress" in events
    assert (await pollers.wait(task.id)).status is S.COMPLETED
    assert task.id not in pollers.following
    first = upstream.requests[0]
    assert first.headers["Authorization"] == "Bearer upstream-secret"
    assert first.headers["Accept"] == "application/json"
    assert len(upstream.requests) == 3  # nothing more is asked once the job is done


async def test_a_fraction_with_progress_scale_and_no_status_path_ends_at_one(
    upstream: Upstream, pollers: TaskPoller, published: Published
) -> None:
    follow = spec(upstream.url, fields={"progress": "done_fraction"}, progress_scale=1)
    task = await pollers.create("import", follow)
    upstream.reply(Reply(json={"done_fraction": 0.5}, chunked=True))
    await published.until(task.id, lambda d: d["progress"] == 50)
    upstream.reply(Reply(json={"done_fraction": 1, "rows": 1200}, chunked=True))
    done = await published.until_status(task.id, S.COMPLETED)
    assert done["result"] == {"done_fraction": 1, "rows": 1200}  # no result path: the whole answer


async def test_an_upstream_reported_failure_fails_the_task_with_the_mapped_error(
    upstream: Upstream, pollers: TaskPoller, published: Published
) -> None:
    with_error = await pollers.create("render", spec(upstream.url))
    upstream.reply(Reply(json={"state": "failed", "data": {"error": "disk full"}}))
    assert (await published.until_status(with_error.id, S.FAILED))["error"] == "disk full"

    without_error = await pollers.create("render", spec(upstream.url, failed=["ERR", 3]))
    upstream.reply(Reply(json={"state": 3}))
    assert (await published.until_status(without_error.id, S.FAILED))["error"] == "upstream reported 3"


async def test_an_upstream_that_does_not_finish_in_time_times_the_task_out(
    upstream: Upstream, pollers: TaskPoller, published: Published
) -> None:
    task = await pollers.create("render", spec(upstream.url, timeout=0.2))
    upstream.reply(running(10))  # then the next request is never answered
    timed_out = await published.until_status(task.id, S.TIMED_OUT)
    assert timed_out["error"] == "upstream did not finish within 0.2s"
    assert timed_out["progress"] == 10  # what was reported before stays


# -- upstream errors -------------------------------------------------------------------------


async def test_transient_server_errors_are_retried_and_the_task_recovers(
    upstream: Upstream, pollers: TaskPoller, published: Published
) -> None:
    task = await pollers.create("render", spec(upstream.url, retries=3))
    upstream.reply(Reply(500), Reply(503), Reply(429), running(30), Reply(502), Reply(json={"state": "done"}))
    done = await published.until_status(task.id, S.COMPLETED)
    assert done["error"] is None
    assert len(upstream.requests) == 6  # the count of failures in a row restarted after the 200


async def test_server_errors_beyond_the_retry_limit_fail_the_task_with_the_reason(
    upstream: Upstream, pollers: TaskPoller, published: Published
) -> None:
    task = await pollers.create("render", spec(upstream.url, retries=2))
    upstream.reply(Reply(500), Reply(500), Reply(503))
    failed = await published.until_status(task.id, S.FAILED)
    assert failed["error"] == "upstream answered 503 Service Unavailable (3 attempts in a row)"
    await pollers.wait(task.id)
    assert len(upstream.requests) == 3


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(404, {"detail": "no such job"}), "upstream answered 404 Not Found"),
        (Reply(401), "upstream answered 401 Unauthorized"),
        (Reply(302), "upstream answered 302 Found (redirects are not followed)"),
        (Reply(200, raw=b"<html>busy</html>"), "upstream answered 200 OK with a body that is not JSON"),
        (Reply(200, raw=b""), "upstream answered 200 OK with a body that is not JSON"),
    ],
    ids=["404", "401", "redirect", "html", "empty"],
)
async def test_a_permanent_upstream_error_fails_the_task_at_once(
    upstream: Upstream, pollers: TaskPoller, published: Published, reply: Reply, reason: str
) -> None:
    task = await pollers.create("render", spec(upstream.url, retries=5))
    upstream.reply(reply)
    assert (await published.until_status(task.id, S.FAILED))["error"] == reason
    await pollers.wait(task.id)
    assert len(upstream.requests) == 1  # not retried


async def test_a_refused_connection_fails_the_task_as_unreachable(pollers: TaskPoller, published: Published) -> None:
    task = await pollers.create("render", spec(f"http://127.0.0.1:{closed_port()}/job", retries=1))
    failed = await published.until_status(task.id, S.FAILED)
    assert failed["error"].startswith("upstream unreachable: ConnectionRefusedError")
    assert failed["error"].endswith("(2 attempts in a row)")


async def test_an_answer_that_is_not_http_fails_the_task_at_once(pollers: TaskPoller, published: Published) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        task = await pollers.create("render", spec(f"http://127.0.0.1:{port}/", retries=5))
        failed = await published.until_status(task.id, S.FAILED)
    assert failed["error"].startswith("upstream did not answer HTTP: not an HTTP/1.x status line")


async def test_progress_out_of_range_is_clamped_and_a_non_number_is_ignored(
    upstream: Upstream, pollers: TaskPoller, published: Published, service: TaskService
) -> None:
    task = await pollers.create("render", spec(upstream.url))
    upstream.reply(running(150.5))
    await published.until(task.id, lambda d: d["progress"] == 100)
    assert (await service.get(task.id)).status is S.RUNNING  # 100 % is not "done" while a status says otherwise
    upstream.reply(running(-1))
    await published.until(task.id, lambda d: d["progress"] == 0)
    upstream.reply(Reply(json={"state": "running", "data": {"percent": "half"}, "note": "counting"}))
    noted = await published.until(task.id, lambda d: d["message"] == "counting")
    assert noted["progress"] == 0  # unchanged, not corrupted
    upstream.reply(
        Reply(json={"state": "running", "data": {"percent": True, "phase": ["not", "text"]}}),
        Reply(json={"state": "done"}),
    )
    done = await published.until_status(task.id, S.COMPLETED)
    assert done["step"] is None and done["error"] is None


# -- stop, ending elsewhere, close -----------------------------------------------------------


async def test_a_stop_while_polling_cancels_the_task_and_asks_upstream_nothing_more(
    upstream: Upstream, pollers: TaskPoller, published: Published, service: TaskService
) -> None:
    task = await pollers.create("render", spec(upstream.url))
    upstream.reply(running(10))
    await upstream.until_requests(2)  # the second request now waits in the upstream's handler
    await service.request_stop(task.id, by="ann")
    cancelled = await published.until_status(task.id, S.CANCELLED)
    assert cancelled["message"] == "stop requested by ann" and cancelled["progress"] == 10
    events = [event for event, _ in published.of(task.id)]
    assert events[-2:] == ["task:stopping", "task:cancelled"]
    await pollers.wait(task.id)
    assert task.id not in pollers.following
    upstream.reply(running(20), running(30))  # answers that would be taken, were anyone still asking
    assert len(upstream.requests) == 2
    assert (await service.get(task.id)).status is S.CANCELLED


async def test_a_task_ended_elsewhere_ends_its_poller_and_keeps_its_end(
    upstream: Upstream, pollers: TaskPoller, published: Published, service: TaskService
) -> None:
    task = await pollers.create("render", spec(upstream.url))
    await upstream.until_requests(1)
    await service.fail(task.id, "the operator gave up")
    await pollers.wait(task.id)
    upstream.reply(Reply(json={"state": "done"}))
    final = await service.get(task.id)
    assert final.status is S.FAILED and final.error == "the operator gave up"
    assert [e for e, _ in published.of(task.id)][-1] == "task:failed"


async def test_aclose_fails_the_followed_tasks_and_refuses_new_ones(
    upstream: Upstream, pollers: TaskPoller, published: Published, service: TaskService
) -> None:
    task = await pollers.create("render", spec(upstream.url))
    await upstream.until_requests(1)
    await pollers.aclose()
    assert (await service.get(task.id)).error == CLOSED_REASON
    assert pollers.following == frozenset()
    with pytest.raises(RuntimeError, match="closed"):
        await pollers.create("render", spec(upstream.url))


async def test_follow_refuses_unknown_ended_and_already_followed_tasks(
    upstream: Upstream, pollers: TaskPoller, service: TaskService
) -> None:
    with pytest.raises(TaskNotFound):
        await pollers.follow("nope", spec(upstream.url))
    ended = await service.create("render")
    await service.cancel(ended.id)
    with pytest.raises(InvalidTransition, match="cannot follow"):
        await pollers.follow(ended.id, spec(upstream.url))
    followed = await pollers.create("render", spec(upstream.url))
    with pytest.raises(TaskError, match="already following"):
        await pollers.follow(followed.id, spec(upstream.url))
    assert pollers.following == {followed.id}


# -- the spec --------------------------------------------------------------------------------


def test_a_spec_has_defaults_and_takes_its_fields_from_python_or_json() -> None:
    made = PollSpec(url="https://ci.example/jobs/7", fields=PollFields(status="state"), done=("ok",))
    parsed = PollSpec.from_json({"url": "https://ci.example/jobs/7", "fields": {"status": "state"}, "done": ["ok"]})
    assert made == parsed
    assert (made.interval, made.timeout, made.retries, made.progress_scale) == (2.0, 3600.0, 3, 100.0)
    assert "failed" in made.failed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("http://x", "must be a JSON object"),
        ({"fields": {"status": "s"}}, "'url' is required"),
        ({"url": "http://x/", "fields": {"status": "s"}, "intervall": 1}, "unknown key(s) 'intervall'"),
        ({"url": "ftp://x/", "fields": {"status": "s"}}, "http:// or https://"),
        ({"url": "file:///etc/passwd", "fields": {"status": "s"}}, "http:// or https://"),
        ({"url": "http:///nohost", "fields": {"status": "s"}}, "with a host"),
        ({"url": "http://x:99999/", "fields": {"status": "s"}}, "not a valid URL"),
        ({"url": "http://u:p@x/", "fields": {"status": "s"}}, "credentials"),
        ({"url": "http://x/a b", "fields": {"status": "s"}}, "without spaces"),
        ({"url": "http://x/\r\nHost: evil", "fields": {"status": "s"}}, "control characters"),
        ({"url": "http://x/é", "fields": {"status": "s"}}, "ASCII"),
        ({"url": 42, "fields": {"status": "s"}}, "'url'"),
        ({"url": "http://x/", "fields": {"status": "s"}, "interval": 0}, "'interval' must be a positive number"),
        ({"url": "http://x/", "fields": {"status": "s"}, "interval": "2"}, "'interval' must be a positive number"),
        ({"url": "http://x/", "fields": {"status": "s"}, "timeout": -1}, "'timeout' must be a positive number"),
        ({"url": "http://x/", "fields": {"status": "s"}, "request_timeout": True}, "'request_timeout'"),
        ({"url": "http://x/", "fields": {"status": "s"}, "progress_scale": 0}, "'progress_scale'"),
        ({"url": "http://x/", "fields": {"status": "s"}, "retries": 1.5}, "'retries' must be an integer"),
        ({"url": "http://x/", "fields": {"status": "s"}, "retries": -1}, "'retries' must be an integer"),
        ({"url": "http://x/", "fields": {"status": "s"}, "headers": []}, "'headers' must be an object"),
        ({"url": "http://x/", "fields": {"status": "s"}, "headers": {"Bad Name": "v"}}, "not a header name"),
        ({"url": "http://x/", "fields": {"status": "s"}, "headers": {"Host": "evil"}}, "not a header name"),
        ({"url": "http://x/", "fields": {"status": "s"}, "headers": {"X-A": "v\r\nX-B: w"}}, "control characters"),
        ({"url": "http://x/", "fields": {"status": "s"}, "headers": {"X-A": 1}}, "ASCII string"),
        ({"url": "http://x/", "fields": "state"}, "'fields' must be an object"),
        ({"url": "http://x/", "fields": {"percent": "p"}}, "unknown field(s) 'percent'"),
        ({"url": "http://x/", "fields": {"status": "a..b"}}, "fields.status must be a dotted path"),
        ({"url": "http://x/", "fields": {"progress": 3}}, "fields.progress must be a dotted path"),
        ({"url": "http://x/", "fields": {"result": "out"}}, "must name a 'status' or a 'progress'"),
        ({"url": "http://x/"}, "must name a 'status' or a 'progress'"),
        ({"url": "http://x/", "fields": {"status": "s"}, "done": "ok"}, "'done' must be a list"),
        ({"url": "http://x/", "fields": {"status": "s"}, "failed": [{"a": 1}]}, "'failed' must be a list"),
        ({"url": "http://x/", "fields": {"status": "s"}, "done": ["x"], "failed": ["x"]}, "both 'done' and 'failed'"),
    ],
)
def test_a_bad_spec_is_refused_with_a_clear_message(data: Any, message: str) -> None:
    with pytest.raises(TaskError) as caught:
        PollSpec.from_json(data)
    assert message in str(caught.value)
    assert str(caught.value).startswith("poll spec: ")
