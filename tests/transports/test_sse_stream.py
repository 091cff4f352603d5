"""SSE at ``/sse``: snapshot + tail, recovery by cursor, reset, terminal rooms, bad input.

Real sockets on the native door; an aiohttp reader that parses and remembers ``id`` the way
``EventSource`` does (tests/sseclient.py). The browser itself is in tests/browser.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from loopstep import yield_to_loop
from servers import RunningServer, running, uvicorn_running
from sseclient import SseStream, open_sse

from roomcast.broker.memory import MemoryBroker
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.asgi import RoomcastApp
from roomcast.server.config import Settings


def _app(*, history_size: int = 100, **settings: Any) -> App:
    hub = Hub(broker=MemoryBroker(history_size=history_size))
    state: dict[str, list[int]] = {}

    @hub.snapshot("*")
    def snapshot(room: str) -> dict[str, Any]:
        return {"room": room, "items": state.get(room, [])}

    return App(hub, Settings(**settings))


async def _events(stream: SseStream, count: int) -> list[tuple[str, Any]]:
    return [(e.event, e.json()) for e in [await stream.next() for _ in range(count)]]


async def test_fresh_stream_gets_a_snapshot_per_room_then_live_events_with_a_cursor() -> None:
    async with running(_app()) as srv, open_sse(srv.url, ["a", "b"]) as stream:
        assert stream.status == 200
        assert stream.response.headers["Content-Type"].startswith("text/event-stream")
        first, second = await stream.next(), await stream.next()
        assert (first.event, first.json()["room"], first.json()["offset"]) == ("snapshot", "a", 0)
        assert (second.event, second.json()["room"]) == ("snapshot", "b")
        assert first.json()["snapshot"] == {"room": "a", "items": []}
        assert stream.retry == 2000
        await srv.hub.publish("a", "hello", {"n": 1})
        await srv.hub.publish("b", "multi", 1, 2)
        live = [await stream.next(), await stream.next()]
        assert [(e.event, e.json()) for e in live] == [("hello", {"n": 1}), ("multi", [1, 2])]
        assert all(e.id for e in live) and live[0].id != live[1].id


async def test_reconnect_with_last_event_id_replays_every_room_in_order_exactly_once() -> None:
    async with running(_app()) as srv:
        async with open_sse(srv.url, ["a", "b"]) as stream:
            await _events(stream, 2)  # the snapshots
            await srv.hub.publish("a", "e", 1)
            await srv.hub.publish("b", "e", 2)
            assert [e for _, e in await _events(stream, 2)] == [1, 2]
            cursor = stream.last_id
        assert cursor is not None
        # while away: publications to both rooms and to a room the stream does not follow
        for n in (3, 4):
            await srv.hub.publish("a", "e", n)
        await srv.hub.publish("c", "e", 99)
        await srv.hub.publish("b", "e", 5)
        async with open_sse(srv.url, ["a", "b"], last_event_id=cursor) as back:  # the header
            assert await _events(back, 3) == [("e", 3), ("e", 4), ("e", 5)]
            await srv.hub.publish("b", "e", 6)
            assert (await back.next()).json() == 6
            cursor = back.last_id  # the new stream's cursor resumes it in turn
        await srv.hub.publish("a", "e", 7)
        async with open_sse(srv.url, ["a", "b"], last_event_id=cursor, id_in_query=True) as again:  # the query
            assert await _events(again, 1) == [("e", 7)]  # only what it missed: nothing twice
            await srv.hub.publish("b", "e", 8)
            assert (await again.next()).json() == 8


async def test_history_that_no_longer_holds_the_gap_gives_an_explicit_reset() -> None:
    async with running(_app(history_size=2)) as srv:
        async with open_sse(srv.url, ["a"]) as stream:
            await stream.next()
            await srv.hub.publish("a", "e", 1)
            await stream.next()
            cursor = stream.last_id
        for n in range(2, 7):  # five more: history keeps two
            await srv.hub.publish("a", "e", n)
        async with open_sse(srv.url, ["a"], last_event_id=cursor) as back:
            reset = await back.next()
            assert reset.event == "reset"
            assert reset.json()["offset"] == 6 and reset.json()["snapshot"] == {"room": "a", "items": []}
            await srv.hub.publish("a", "e", 7)
            assert (await back.next()).json() == 7


async def test_publications_landing_while_a_stream_syncs_arrive_once_and_in_order() -> None:
    app = _app()
    gate = asyncio.Event()
    entered = asyncio.Event()

    @app.hub.snapshot("slow")
    async def slow(room: str) -> str:
        entered.set()
        await gate.wait()
        return "state"

    app.hub._snapshots.insert(0, app.hub._snapshots.pop())  # the slow provider first for "slow"
    async with running(app) as srv, open_sse(srv.url, ["fast", "slow"]) as stream:
        async with asyncio.timeout(5):
            await entered.wait()
        await srv.hub.publish("fast", "e", "during-sync")  # fast is joined: held back
        gate.set()
        events = await _events(stream, 3)  # every room's answer at once, the held event in its place
        assert events[0][0] == "snapshot" and events[0][1]["room"] == "fast"
        assert events[1] == ("e", "during-sync")
        assert events[2][0] == "snapshot" and events[2][1]["room"] == "slow"
        await srv.hub.publish("slow", "e", "after")
        assert (await stream.next()).json() == "after"


async def test_terminal_rooms_end_the_stream_and_a_reconnect_gets_204() -> None:
    async with running(_app()) as srv:
        async with open_sse(srv.url, ["task:1", "task:2"]) as stream:
            await _events(stream, 2)
            await srv.hub.publish("task:1", "done", {"result": 1})
            await stream.next()
            await srv.hub.mark_terminal("task:1")
            await srv.hub.publish("task:2", "done", {"result": 2})
            await stream.next()
            await srv.hub.mark_terminal("task:2")
            assert await stream.until_end() == []
            cursor = stream.last_id
        async with open_sse(srv.url, ["task:1", "task:2"], last_event_id=cursor) as back:
            assert back.status == 204
        async with open_sse(srv.url, ["task:1"]) as fresh:  # a first visit still gets the snapshot
            assert fresh.status == 200 and (await fresh.next()).event == "snapshot"


async def test_heartbeat_comments_keep_an_idle_stream_alive() -> None:
    async with running(_app(sse_heartbeat=0.05)) as srv, open_sse(srv.url, ["quiet"]) as stream:
        await stream.next()
        assert await stream.comment(timeout=5) == "ping"
        assert await stream.comment(timeout=5) == "ping"  # and again: one timer serves every stream


async def _json_error(srv: RunningServer, query: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(kwargs.pop("method", "GET"), f"{srv.url}/sse{query}", **kwargs) as response:
            return response.status, await response.json()


async def test_bad_requests_get_a_json_error_and_other_streams_carry_on() -> None:
    async with running(_app()) as srv, open_sse(srv.url, ["a"]) as healthy:
        await healthy.next()
        cases = [
            ("", {}, 400, "name at least one room"),
            ("?room=", {}, 400, "1 to 256"),
            ("?" + "&".join(f"room=r{i}" for i in range(101)), {}, 400, "at most 100 rooms"),
            ("?room=a", {"headers": {"Last-Event-ID": "not a cursor"}}, 400, "Last-Event-ID"),
            ("?room=a&last_event_id=%7B%7D", {}, 400, "Last-Event-ID"),
            ("?room=a", {"method": "POST"}, 405, "GET"),
        ]
        for query, kwargs, status, message in cases:
            got_status, body = await _json_error(srv, query, **kwargs)
            assert got_status == status, query
            assert message in body["error"]["message"], body
            assert body["error"]["code"] in ("bad_request", "method_not_allowed")
        await srv.hub.publish("a", "still", "here")
        assert (await healthy.next()).json() == "here"


async def test_slow_sse_consumer_is_disconnected_with_a_reason() -> None:
    app = _app(max_buffer_bytes=64 * 1024)
    async with running(app) as srv:
        async with open_sse(srv.url, ["flood"]) as stream:
            await stream.next()
            stream.response.connection.transport.pause_reading()  # type: ignore[union-attr]
            payload = "x" * 16 * 1024
            async with asyncio.timeout(20):
                while srv.hub.slow_disconnects == 0:
                    await srv.hub.publish("flood", "blob", payload)
                    await yield_to_loop()  # the coalescer flushes at the end of the iteration
            assert srv.hub.rooms().get("flood") is None  # out of the room at once
            stream.response.connection.transport.resume_reading()  # type: ignore[union-attr]
            rest = await stream.until_end()  # it reads its way to the documented goodbye
            assert rest and rest[-1].event == "error" and rest[-1].json()["message"] == "slow consumer"
            assert srv.counters.slow_goodbyes == 1 and srv.counters.slow_aborts == 0


async def test_the_asgi_door_serves_the_same_stream() -> None:
    app = _app()
    async with uvicorn_running(RoomcastApp(app)) as url:
        async with open_sse(url, ["a"]) as stream:
            assert (await stream.next()).event == "snapshot"
            await app.hub.publish("a", "e", 1)
            assert (await stream.next()).json() == 1
            cursor = stream.last_id
        await app.hub.publish("a", "e", 2)
        async with open_sse(url, ["a"], last_event_id=cursor) as back:
            assert (await back.next()).json() == 2
            cursor = back.last_id
        await app.hub.mark_terminal("a")
        async with open_sse(url, ["a"], last_event_id=cursor) as done:
            assert done.status == 204
        async with aiohttp.ClientSession() as http, http.get(f"{url}/sse?room=") as response:
            assert response.status == 400
            assert json.loads(await response.read())["error"]["code"] == "bad_request"


async def test_a_reconnect_behind_a_finished_room_gets_the_last_events_then_the_stream_ends() -> None:
    async with running(_app()) as srv:
        async with open_sse(srv.url, ["task:9"]) as stream:
            await stream.next()
            await srv.hub.publish("task:9", "progress", 50)
            await stream.next()
            cursor = stream.last_id
        await srv.hub.publish("task:9", "done", {"result": 1})  # the last word, while it is away
        await srv.hub.mark_terminal("task:9")
        async with open_sse(srv.url, ["task:9"], last_event_id=cursor) as back:
            assert back.status == 200  # its cursor is behind: not a 204
            assert [(e.event, e.json()) for e in await back.until_end()] == [("done", {"result": 1})]
            cursor = back.last_id
        async with open_sse(srv.url, ["task:9"], last_event_id=cursor) as done:
            assert done.status == 204  # now it has everything
        async with open_sse(srv.url, ["task:9"]) as late:  # a first visit after the end
            assert [e.event for e in await late.until_end()] == ["snapshot"]
