"""Tasks over the backend API: an external worker reports, subscribers see it, late ones too.

A real server on the native door; the worker is plain HTTP (aiohttp), the subscribers SSE,
Socket.IO and the plain WebSocket. Every test runs once per broker (``broker_kind``: memory,
async, redis; ``brokers.make_app``), with the task store a server pairs with it: a SQLite file
beside memory and async, and with redis ``Settings(redis_url=...)``, so the server builds its
``RedisBroker``, ``RedisCluster`` and ``RedisTaskStore`` on one Redis as ``--redis`` does.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import brokers
import redis.asyncio as aioredis
from redisserver import fresh_url
from servers import RunningServer, running
from sseclient import open_sse

from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.tasks.service import DEFAULT_LEASE_TTL
from roomcast.tasks.store_redis import RedisTaskStore


def _app(broker_kind: str, **settings: Any) -> App:
    """A server over ``broker_kind``; without Redis its tasks are in a SQLite file, as
    ``roomcast serve``'s are by default (in the test's own directory)."""
    settings.setdefault("task_db", Settings().task_db)
    return brokers.make_app(broker_kind, **settings)


async def _call(srv: RunningServer, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{srv.url}{path}", json=body) as response:
            return response.status, await response.json(content_type=None)


async def test_an_external_worker_drives_a_task_that_subscribers_follow_to_the_end(broker_kind: str) -> None:
    async with running(_app(broker_kind)) as srv:
        status, task = await _call(srv, "POST", "/api/tasks", {"kind": "crawl", "title": "example.com", "owner": "ann"})
        assert status == 201 and task["status"] == "pending" and task["kind"] == "crawl"
        room = f"task:{task['id']}"
        async with open_sse(srv.url, [room]) as stream:
            snapshot = await stream.next()
            assert snapshot.event == "snapshot" and snapshot.json()["snapshot"]["status"] == "pending"
            status, running_task = await _call(
                srv, "POST", f"/api/tasks/{task['id']}/progress", {"progress": 40, "step": "fetch"}
            )
            assert status == 200 and running_task["status"] == "running"
            status, done = await _call(srv, "POST", f"/api/tasks/{task['id']}/complete", {"result": {"pages": 3}})
            assert status == 200 and done["status"] == "completed"
            events = [(e.event, e.json()) for e in await stream.until_end()]
            assert events[-1][0] == "task:completed" and events[-1][1]["result"] == {"pages": 3}
            assert [e for e, _ in events][:1] == ["task:updated"]  # pending -> running
        # a subscriber arriving after the end gets the final state with the result, then the end
        async with open_sse(srv.url, [room]) as late:
            finals = await late.until_end()
            assert [e.event for e in finals] == ["snapshot"]
            assert finals[0].json()["snapshot"]["result"] == {"pages": 3}
        status, listed = await _call(srv, "GET", "/api/tasks?status=completed&kind=crawl")
        assert status == 200 and [t["id"] for t in listed["tasks"]] == [task["id"]]
        status, fetched = await _call(srv, "GET", f"/api/tasks/{task['id']}")
        assert status == 200 and fetched["progress"] == 100


async def test_bad_task_requests_are_refused_and_change_nothing(broker_kind: str) -> None:
    async with running(_app(broker_kind)) as srv:
        _, task = await _call(srv, "POST", "/api/tasks", {"kind": "import"})
        tid = task["id"]
        cases: list[tuple[str, str, Any, int, str]] = [
            ("GET", "/api/tasks/nope", None, 404, "no task 'nope'"),
            ("POST", "/api/tasks/nope/complete", {}, 404, "no task"),
            ("POST", "/api/tasks", {"title": "no kind"}, 400, "'kind'"),
            ("POST", f"/api/tasks/{tid}/progress", {"progress": 150}, 400, "progress"),
            ("POST", f"/api/tasks/{tid}/progress", {"progress": "half"}, 400, "'progress'"),
            ("POST", f"/api/tasks/{tid}/fail", {}, 400, "'error'"),
            ("GET", "/api/tasks?status=sleeping", None, 400, "'status'"),
        ]
        for method, path, body, status, message in cases:
            got, answer = await _call(srv, method, path, body)
            assert got == status, (path, answer)
            assert message in answer["error"]["message"], (path, answer)
        assert (await _call(srv, "GET", f"/api/tasks/{tid}"))[1]["status"] == "pending"  # bad reports start nothing
        assert (await _call(srv, "POST", f"/api/tasks/{tid}/complete", {"result": 1}))[0] == 200
        got, answer = await _call(srv, "POST", f"/api/tasks/{tid}/complete", {"result": 2})
        assert got == 409 and answer["error"]["code"] == "conflict"
        assert (await _call(srv, "GET", f"/api/tasks/{tid}"))[1]["result"] == 1  # nothing corrupted


async def test_a_stop_request_is_published_and_the_task_ends_cancelled(broker_kind: str) -> None:
    app = _app(broker_kind, task_stop_grace=0.05)  # an external worker that never acknowledges
    async with running(app) as srv:
        _, task = await _call(srv, "POST", "/api/tasks", {"kind": "crawl"})
        async with open_sse(srv.url, [f"task:{task['id']}"]) as stream:
            assert (await stream.next()).event == "snapshot"
            # reported once the page follows the task: with a broker that delivers late, a
            # report made just before the subscription may reach it after the snapshot too
            await _call(srv, "POST", f"/api/tasks/{task['id']}/progress", {"progress": 10})
            status, stopping = await _call(srv, "POST", f"/api/tasks/{task['id']}/stop", {"by": "ann"})
            assert status == 200 and stopping["status"] == "stopping"
            events = [e.event for e in await stream.until_end()]
            assert events == ["task:updated", "task:progress", "task:stopping", "task:cancelled"]


async def test_task_events_stream_a_task_to_its_end_and_204_after(broker_kind: str) -> None:
    app = _app(broker_kind)
    async with running(app) as srv:
        _, task = await _call(srv, "POST", "/api/tasks", {"kind": "gen"})
        path = f"/tasks/{task['id']}/events"
        async with open_sse(srv.url, [], path=path) as stream:
            assert (await stream.next()).event == "snapshot"
            await _call(srv, "POST", f"/api/tasks/{task['id']}/progress", {"progress": 50})
            await _call(srv, "POST", f"/api/tasks/{task['id']}/complete", {"result": "done"})
            events = [e.event for e in await stream.until_end()]
            assert events[-1] == "task:completed"
            cursor = stream.last_id
        async with open_sse(srv.url, [], path=path, last_event_id=cursor) as again:
            assert again.status == 204  # it has everything: EventSource stops
        async with aiohttp.ClientSession() as http, http.get(f"{srv.url}/tasks/nope/events") as missing:
            assert missing.status == 404


async def test_the_stop_button_over_socketio_and_websocket_is_for_the_owner_or_a_granted_kind(
    broker_kind: str,
) -> None:
    import json
    import time

    import jwt
    import socketio
    from rawclient import open_websocket

    secret = "task-test-secret-long-enough-for-hs256"

    def token(sub: str, **extra: Any) -> str:
        return jwt.encode({"sub": sub, "exp": time.time() + 60, **extra}, secret, algorithm="HS256")

    app = _app(broker_kind, jwt_secret=secret, api_key="k", task_stop_grace=0.05)
    async with running(app) as srv:
        mine = await app.tasks.create("crawl", owner="ann")
        theirs = await app.tasks.create("crawl", owner="bob")
        other_kind = await app.tasks.create("import", owner="bob")
        for t in (mine, theirs, other_kind):
            await app.tasks.begin(t.id)
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(srv.url, auth={"token": token("ann")}, transports=["websocket"])
        try:
            assert (await client.call("task:stop", {"id": mine.id}, timeout=5))["status"] == "stopping"
            assert await client.call("task:stop", {"id": theirs.id}, timeout=5) == {
                "error": f"no task {theirs.id!r} that this connection may stop"
            }
            # an unknown id gets the same answer: a refusal does not reveal which tasks exist
            assert await client.call("task:stop", {"id": "nope"}, timeout=5) == {
                "error": "no task 'nope' that this connection may stop"
            }
        finally:
            await client.disconnect()
        ws = await open_websocket(
            srv.host,
            srv.port,
            "/ws",
            headers={
                "Sec-WebSocket-Protocol": "roomcast.v1",
                "Authorization": f"Bearer {token('ops', tasks={'stop': ['crawl']})}",
            },
        )
        try:
            ws.send(json.dumps({"type": "emit", "id": 1, "event": "task:stop", "data": {"id": theirs.id}}))
            assert json.loads(await ws.recv())["data"]["status"] == "stopping"  # a granted kind
            ws.send(json.dumps({"type": "emit", "id": 2, "event": "task:stop", "data": {"id": other_kind.id}}))
            assert "may stop" in json.loads(await ws.recv())["data"]["error"]
        finally:
            ws.close()
        assert (await app.tasks.get(other_kind.id)).status.value == "running"  # refused: untouched


async def test_a_worker_acknowledges_a_stop_and_the_task_ends_cancelled_at_once(broker_kind: str) -> None:
    async with running(_app(broker_kind)) as srv:  # the default 5 s grace: no waiting on it
        _, task = await _call(srv, "POST", "/api/tasks", {"kind": "crawl"})
        _, reported = await _call(srv, "POST", f"/api/tasks/{task['id']}/progress", {"progress": 5})
        assert reported["status"] == "running"
        await _call(srv, "POST", f"/api/tasks/{task['id']}/stop", {})
        _, told = await _call(srv, "POST", f"/api/tasks/{task['id']}/progress", {"progress": 6})
        assert told["status"] == "stopping"  # how an out-of-process worker learns of the stop
        status, ended = await _call(srv, "POST", f"/api/tasks/{task['id']}/cancel", {"reason": "stopped at page 6"})
        assert status == 200 and ended["status"] == "cancelled" and ended["message"] == "stopped at page 6"


async def test_a_subscriber_arriving_after_the_end_gets_the_result_on_socketio_and_websocket(broker_kind: str) -> None:
    import json

    import socketio
    from rawclient import open_websocket

    async with running(_app(broker_kind)) as srv:
        _, task = await _call(srv, "POST", "/api/tasks", {"kind": "crawl", "title": "done before anyone looked"})
        await _call(srv, "POST", f"/api/tasks/{task['id']}/complete", {"result": {"pages": 7}})
        room = f"task:{task['id']}"

        client = socketio.AsyncClient(reconnection=False)
        await client.connect(srv.url, transports=["websocket"])
        try:
            reply = await client.call("subscribe", {"room": room}, timeout=5)
        finally:
            await client.disconnect()
        assert reply["snapshot"]["status"] == "completed" and reply["snapshot"]["result"] == {"pages": 7}

        ws = await open_websocket(srv.host, srv.port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
        try:
            ws.send(json.dumps({"type": "subscribe", "id": 1, "room": room}))
            answer = json.loads(await ws.recv())
        finally:
            ws.close()
        assert answer["type"] == "snapshot" and answer["room"] == room
        assert answer["snapshot"]["status"] == "completed" and answer["snapshot"]["result"] == {"pages": 7}


# Leases exist only beside a shared store: this one is about Redis alone.
async def test_a_node_holds_its_task_lease_for_the_configured_time(redis_url: str) -> None:
    assert Settings().task_lease_ttl == DEFAULT_LEASE_TTL  # `roomcast serve` without the flag
    url = fresh_url(redis_url)
    app = App(None, Settings(redis_url=url, task_lease_ttl=2.5))
    assert isinstance(app.task_store, RedisTaskStore)  # with --redis the tasks are shared
    client = aioredis.Redis.from_url(url)
    try:
        async with running(app):
            lease = f"{{rc-tasks}}:lease:{app.tasks.node_id}"  # RedisTaskStore's default namespace
            assert 0 < await client.pttl(lease) <= 2500  # the default would be 10,000 ms
        assert await client.exists(lease) == 0  # released at shutdown
    finally:
        await client.aclose()
