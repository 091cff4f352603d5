"""Frontends keep their wire format: a task kind's payload map, SSE for ``onmessage``, and the
per-task streams of every transport.

A real server on the native door; the clients are the ones a frontend would be: SSE
(``tests/sseclient.py``, read as a browser reads it), the plain WebSocket (the raw client),
and python-socketio. The canonical form is checked where the issue says it stays: the API,
the store and the ``tasks`` list room the dashboard follows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import aiohttp
import brokers
import jwt
import pytest
import socketio
from rawclient import RawWebSocket, open_websocket
from servers import RunningServer, running, uvicorn_running
from sseclient import SseEvent, open_sse

from roomcast.broker.memory import MemoryBroker
from roomcast.hub.hub import Hub
from roomcast.protocol.sse import decode_cursor
from roomcast.server.app import App
from roomcast.server.asgi import RoomcastApp
from roomcast.server.config import Settings
from roomcast.tail import Tail
from roomcast.tasks.model import Task, TaskEvents, TaskStatus

PROTOCOL = {"Sec-WebSocket-Protocol": "roomcast.v1"}
CRAWL_EVENTS = TaskEvents(progress="crawl_progress", completed="crawl:completed")


def crawl_wire(task: Task) -> dict[str, Any]:
    """The field names a hand-rolled crawl frontend reads."""
    return {
        "progressId": task.id,
        "percentage": task.progress,
        "status": "crawling" if task.status is TaskStatus.RUNNING else task.status.value,
        "log": task.step,
    }


def _app(**settings: Any) -> App:
    hub = Hub(broker=MemoryBroker(history_size=100))

    @hub.snapshot("plain:*")
    def plain(room: str) -> dict[str, str]:
        return {"room": room}

    settings.setdefault("task_db", ":memory:")
    return App(hub, Settings(task_events={"crawl": CRAWL_EVENTS}, task_payloads={"crawl": crawl_wire}, **settings))


async def _json_reply(client: RawWebSocket) -> dict[str, Any]:
    raw = await client.recv(timeout=10)
    assert isinstance(raw, str)
    reply: dict[str, Any] = json.loads(raw)
    return reply


async def _api(srv: RunningServer, path: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(f"{srv.url}{path}") as response:
        assert response.status == 200
        return await response.json()


def _unnamed(event: SseEvent) -> tuple[str, Any]:
    """A ``?format=message`` event as ``onmessage`` reads it: unnamed, the name inside."""
    assert event.event == "message", event
    body = event.json()
    assert set(body) == {"event", "data"}, body
    return body["event"], body["data"]


async def test_a_kind_payload_map_is_what_every_transport_delivers_and_the_canonical_form_stays_elsewhere() -> None:
    async with running(_app()) as srv:
        service = srv.app.tasks
        task = await service.create("crawl", title="example.com")
        room = f"task:{task.id}"
        wire = crawl_wire(task)
        async with (
            open_sse(srv.url, [], path=f"/tasks/{task.id}/events") as sse_stream,
            open_sse(srv.url, ["tasks"]) as list_stream,
        ):
            assert (await sse_stream.next()).json()["snapshot"] == wire
            assert (await list_stream.next()).event == "snapshot"
            ws = await open_websocket(srv.host, srv.port, f"/tasks/{task.id}/ws", headers=PROTOCOL)
            sio = socketio.AsyncClient(reconnection=False)
            seen: list[tuple[str, Any]] = []
            all_seen = asyncio.Event()

            def record(event: str, data: Any) -> None:
                seen.append((event, data))
                if len(seen) == 3:
                    all_seen.set()

            sio.on("*", record)
            await sio.connect(srv.url, transports=["websocket"])
            try:
                assert ws.status == 101
                snapshot = await _json_reply(ws)
                assert snapshot["id"] == "stream" and snapshot["room"] == room and snapshot["snapshot"] == wire
                ack = await sio.call("subscribe", {"room": room}, timeout=10)
                assert ack["snapshot"] == wire

                await service.report(task.id, 40, step="page 4")
                await service.complete(task.id, {"pages": 10})

                expected = [
                    ("task:updated", {"progressId": task.id, "percentage": None, "status": "crawling", "log": None}),
                    (
                        "crawl_progress",
                        {"progressId": task.id, "percentage": 40.0, "status": "crawling", "log": "page 4"},
                    ),
                    (
                        "crawl:completed",
                        {"progressId": task.id, "percentage": 100.0, "status": "completed", "log": "page 4"},
                    ),
                ]
                assert [(e.event, e.json()) for e in await sse_stream.until_end(timeout=10)] == expected
                ws_events = [await _json_reply(ws) for _ in expected]
                assert [(m["event"], m["data"]) for m in ws_events] == expected
                assert await ws.closed == 1000  # the task ended: the per-task socket closes normally
                # Socket.IO: the same payloads (acked and live events arrive on one socket, in order)
                await asyncio.wait_for(all_seen.wait(), 10)
                assert seen == expected
            finally:
                ws.close()
                await sio.disconnect()

            # The dashboard's list room, the API and the store: canonical.
            summaries = [(await list_stream.next(timeout=10)).json() for _ in expected]
            assert [s["status"] for s in summaries] == ["running", "running", "completed"]
            assert all("progressId" not in s and s["id"] == task.id for s in summaries)
        api_task = await _api(srv, f"/api/tasks/{task.id}")
        assert (
            api_task["status"] == "completed" and api_task["progress"] == 100.0 and api_task["result"] == {"pages": 10}
        )
        assert "percentage" not in api_task
        assert (await service.get(task.id)).to_json() == api_task


async def test_a_map_that_raises_or_returns_non_json_is_logged_and_the_canonical_form_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fragile(task: Task) -> Any:
        if task.step == "raise":
            raise KeyError("percent")
        if task.step == "set":
            return {"percentage": {task.progress}}  # a set: not JSON
        return crawl_wire(task)

    app = _app()
    app.tasks.payload("crawl")(fragile)
    async with running(app) as srv:
        service = srv.app.tasks
        task = await service.create("crawl")
        await service.begin(task.id)
        async with open_sse(srv.url, [], path=f"/tasks/{task.id}/events") as stream:
            assert (await stream.next()).json()["snapshot"]["status"] == "crawling"
            with caplog.at_level(logging.ERROR, logger="roomcast.tasks"):
                await service.report(task.id, 10, step="raise")
                first = await stream.next(timeout=10)
                await service.report(task.id, 20, step="set")
                second = await stream.next(timeout=10)
                async with open_sse(srv.url, [], path=f"/tasks/{task.id}/events") as late:
                    late_snapshot = (await late.next(timeout=10)).json()["snapshot"]  # a subscriber's own: canonical
                await service.report(task.id, 30, step="fine")
                third = await stream.next(timeout=10)
            # Refused maps: the canonical event, nothing lost; the next change is mapped again.
            assert first.event == second.event == third.event == "crawl_progress"
            assert (
                first.json()["progress"] == 10.0 and first.json()["step"] == "raise" and first.json()["kind"] == "crawl"
            )
            assert second.json()["progress"] == 20.0 and second.json()["step"] == "set"
            assert third.json() == {"progressId": task.id, "percentage": 30.0, "status": "crawling", "log": "fine"}
            assert (late_snapshot["kind"], late_snapshot["progress"], late_snapshot["step"]) == ("crawl", 20.0, "set")
            failed = [r for r in caplog.records if "payload map" in r.getMessage()]
            assert len(failed) == 3 and "not JSON" in failed[2].getMessage()
            assert "'crawl' failed on task " + task.id in failed[0].getMessage()
            assert failed[0].exc_info is not None and isinstance(failed[0].exc_info[1], KeyError)
            assert "not JSON" in failed[1].getMessage() and task.id in failed[1].getMessage()
        assert (await service.get(task.id)).progress == 30.0  # every change stored


async def test_format_message_sends_every_event_unnamed_for_onmessage_and_recovers_the_same() -> None:
    async with running(_app()) as srv:
        rooms = ["plain:a", "plain:b"]
        async with (
            open_sse(srv.url, rooms, extra_query={"format": "message"}) as stream,
            open_sse(srv.url, rooms, extra_query={"format": "message"}) as twin,
            open_sse(srv.url, rooms) as named,
        ):
            snapshots = [_unnamed(await stream.next()) for _ in rooms]
            assert snapshots[0] == (
                "snapshot",
                {"room": "plain:a", "epoch": snapshots[0][1]["epoch"], "offset": 0, "snapshot": {"room": "plain:a"}},
            )
            await twin.next(), await twin.next(), await named.next(), await named.next()
            # One encoding per publication per format: the two message streams share a group.
            assert len(srv.app.sse.encoders) == 2
            await srv.hub.publish("plain:a", "chat", {"text": "hi"})
            await srv.hub.publish("plain:b", "score", 1, 2)
            live = [await stream.next() for _ in range(2)]
            assert [_unnamed(e) for e in live] == [("chat", {"text": "hi"}), ("score", [1, 2])]
            assert [_unnamed(await twin.next()) for _ in range(2)] == [("chat", {"text": "hi"}), ("score", [1, 2])]
            named_live = [await named.next() for _ in range(2)]
            assert [(e.event, e.json()) for e in named_live] == [("chat", {"text": "hi"}), ("score", [1, 2])]
            assert [e.id for e in named_live] == [e.id for e in live]  # the same cursor in both formats
            cursor = stream.last_id
            assert cursor is not None and {r: p.offset for r, p in decode_cursor(cursor).items()} == {
                "plain:a": 1,
                "plain:b": 1,
            }
        # Missed while away, then back with Last-Event-ID: exactly what was missed, unnamed.
        await srv.hub.publish("plain:a", "chat", {"text": "missed"})
        await srv.hub.publish("plain:b", "score", 3)
        async with open_sse(srv.url, rooms, last_event_id=cursor, extra_query={"format": "message"}) as again:
            replay = [await again.next() for _ in range(2)]
            assert [_unnamed(e) for e in replay] == [("chat", {"text": "missed"}), ("score", 3)]
            assert {r: p.offset for r, p in decode_cursor(again.last_id or "").items()} == {"plain:a": 2, "plain:b": 2}
        async with open_sse(srv.url, rooms, extra_query={"format": "html"}) as bad:
            assert bad.status == 400
            assert "format must be one of events, message" in (await bad.response.json())["error"]["message"]


async def test_the_server_setting_makes_message_the_default_and_tail_still_reads_named_events() -> None:
    async with running(_app(sse_format="message")) as srv:
        task = await srv.app.tasks.create("crawl")
        async with open_sse(srv.url, [], path=f"/tasks/{task.id}/events") as stream:
            assert _unnamed(await stream.next())[0] == "snapshot"
            await srv.app.tasks.report(task.id, 50)
            started = {"progressId": task.id, "percentage": None, "status": "crawling", "log": None}
            assert _unnamed(await stream.next()) == ("task:updated", started)
            assert _unnamed(await stream.next()) == ("crawl_progress", started | {"percentage": 50.0})
        async with open_sse(srv.url, ["plain:x"], extra_query={"format": "events"}) as named:
            assert (await named.next()).event == "snapshot"  # a stream may still ask for names
        # `roomcast tail` asks for named events: it prints each event's name whatever the default.
        await srv.app.tasks.complete(task.id, {"pages": 1})
        lines: list[str] = []
        tail = Tail(srv.url, [f"task:{task.id}"], out=lines.append, note=lambda _: None, sleep=lambda _: None)
        assert await asyncio.wait_for(asyncio.to_thread(tail.run), 10) == 0  # the finished room: 204
        assert len(lines) == 1 and lines[0].startswith("snapshot ")


async def test_the_per_task_websocket_resumes_from_its_offset_and_refuses_an_unknown_task() -> None:
    async with running(_app()) as srv:
        service = srv.app.tasks
        task = await service.create("crawl")
        ws = await open_websocket(srv.host, srv.port, f"/tasks/{task.id}/ws", headers=PROTOCOL)
        snapshot = await _json_reply(ws)
        assert snapshot["recovered"] is False and snapshot["offset"] == 1
        await service.report(task.id, 10)
        held = [await _json_reply(ws), await _json_reply(ws)]  # started, then 10 %
        assert [m["data"]["percentage"] for m in held] == [None, 10.0]
        ws.close()
        await ws.closed
        await service.report(task.id, 60)  # missed
        resumed = await open_websocket(
            srv.host,
            srv.port,
            f"/tasks/{task.id}/ws?epoch={snapshot['epoch']}&offset={held[-1]['offset']}",
            headers=PROTOCOL,
        )
        try:
            again = await _json_reply(resumed)
            assert again["id"] == "stream" and again["recovered"] is True and "snapshot" not in again
            missed = await _json_reply(resumed)
            assert (missed["event"], missed["data"]["percentage"]) == ("crawl_progress", 60.0)
            # The same protocol as /ws: the client may ping and subscribe to more.
            resumed.send(json.dumps({"type": "ping", "id": 7}))
            assert await _json_reply(resumed) == {"type": "ack", "id": 7, "data": None}
        finally:
            resumed.close()

        unknown = await open_websocket(srv.host, srv.port, "/tasks/nope/ws", headers=PROTOCOL)
        assert unknown.status == 101
        error = await _json_reply(unknown)
        assert error == {"type": "error", "id": "stream", "code": "not_found", "message": "no task 'nope'"}
        assert await unknown.closed == 3501
        bad = await open_websocket(srv.host, srv.port, f"/tasks/{task.id}/ws?offset=3", headers=PROTOCOL)
        assert bad.status == 400
        bad.close()


async def test_the_asgi_door_serves_the_per_task_websocket_and_format_message_alike() -> None:
    rt = RoomcastApp(_app())
    async with uvicorn_running(rt) as url:
        try:
            tasks = rt.app.tasks
            task = await tasks.create("crawl")
            wire = crawl_wire(task)
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(f"{url}/tasks/{task.id}/ws", protocols=["roomcast.v1"]) as ws,
                open_sse(url, [], path=f"/tasks/{task.id}/events", extra_query={"format": "message"}) as stream,
            ):
                snapshot = await ws.receive_json(timeout=10)
                assert (snapshot["id"], snapshot["snapshot"]) == ("stream", wire)
                assert _unnamed(await stream.next(timeout=10)) == (
                    "snapshot",
                    {"room": f"task:{task.id}", "epoch": snapshot["epoch"], "offset": 1, "snapshot": wire},
                )
                await tasks.complete(task.id, {"pages": 1})
                done = {**wire, "percentage": 100.0, "status": "completed"}
                assert [(e["event"], e["data"]) for e in [await ws.receive_json(timeout=10) for _ in range(2)]] == [
                    ("task:updated", {**wire, "status": "crawling"}),
                    ("crawl:completed", done),
                ]
                assert [_unnamed(e) for e in await stream.until_end(timeout=10)] == [
                    ("task:updated", {**wire, "status": "crawling"}),
                    ("crawl:completed", done),
                ]
                closing = await ws.receive(timeout=10)
                assert (closing.type, ws.close_code) == (aiohttp.WSMsgType.CLOSE, 1000)
        finally:
            await rt.shutdown()


async def test_every_broker_delivers_the_mapped_task_to_its_streams_and_ends_them(broker_kind: str) -> None:
    """Over a broker that delivers later (async, Redis) too: the mapped events arrive in order,
    then the per-task socket closes and the per-task stream ends, after the last one."""
    app = brokers.make_app(broker_kind, task_events={"crawl": CRAWL_EVENTS}, task_payloads={"crawl": crawl_wire})
    async with running(app) as srv:
        tasks = srv.app.tasks
        task = await tasks.create("crawl")
        ws = await open_websocket(srv.host, srv.port, f"/tasks/{task.id}/ws", headers=PROTOCOL)
        async with open_sse(srv.url, [], path=f"/tasks/{task.id}/events", extra_query={"format": "message"}) as stream:
            assert (await _json_reply(ws))["snapshot"] == crawl_wire(task)
            assert _unnamed(await stream.next(timeout=10))[1]["snapshot"] == crawl_wire(task)
            await tasks.report(task.id, 25)
            await tasks.complete(task.id, {"pages": 2})
            expected = [
                ("task:updated", {**crawl_wire(task), "status": "crawling"}),
                ("crawl_progress", {**crawl_wire(task), "status": "crawling", "percentage": 25.0}),
                ("crawl:completed", {**crawl_wire(task), "status": "completed", "percentage": 100.0}),
            ]
            assert [(m["event"], m["data"]) for m in [await _json_reply(ws) for _ in expected]] == expected
            assert await asyncio.wait_for(ws.closed, 10) == 1000
            assert [_unnamed(e) for e in await stream.until_end(timeout=10)] == expected


async def test_the_per_task_websocket_checks_the_right_to_the_tasks_room_at_the_handshake() -> None:
    secret = "wire-format-test-secret-long-enough-for-hs256"

    def token(*rooms: str) -> str:
        claims = {"sub": "ann", "exp": time.time() + 60, "rooms": {"subscribe": list(rooms)}}
        return jwt.encode(claims, secret, algorithm="HS256")

    async with running(_app(jwt_secret=secret)) as srv:
        mine, theirs = await srv.app.tasks.create("crawl"), await srv.app.tasks.create("crawl")
        granted = token(f"task:{mine.id}")
        ok = await open_websocket(srv.host, srv.port, f"/tasks/{mine.id}/ws?token={granted}", headers=PROTOCOL)
        try:
            assert ok.status == 101 and (await _json_reply(ok))["snapshot"] == crawl_wire(mine)
        finally:
            ok.close()
        refused = await open_websocket(srv.host, srv.port, f"/tasks/{theirs.id}/ws?token={granted}", headers=PROTOCOL)
        assert refused.status == 403
        refused.close()
        # A browser is told in a close frame it can read (it would hide a 403).
        browser = await open_websocket(
            srv.host, srv.port, f"/tasks/{theirs.id}/ws?token={granted}", headers={**PROTOCOL, "Origin": srv.url}
        )
        assert browser.status == 101 and await browser.closed == 1008
        assert f"task:{theirs.id}" in browser.close_reason
