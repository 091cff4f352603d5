"""``/sse`` in a real browser: Chromium's own ``EventSource`` against a running roomcast.

What the aiohttp reader in tests/transports/test_sse_stream.py imitates, checked against the
real thing: the browser parses the stream, keeps the ``id`` as its cursor, waits ``retry`` ms
and reconnects by itself with ``Last-Event-ID``, and stops for good on a 204. The page comes
from another port (tests/browser/conftest.py), so every stream is a CORS request too.
Loopback only; every wait is bounded.

The last two tests pin down bugs this suite found: a finished room's last events, published
while the browser was away, were dropped by the 204 (only a cursor that holds them may get
it); and a first visit to a finished room got its snapshot, then a stream that never ended.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

from eventsource_page import CLOSED, CONNECTING, OPEN, BrowserStream, SseSpy
from servers import RunningServer, running

from roomcast import disconnect
from roomcast.broker.memory import MemoryBroker
from roomcast.hub.hub import Hub
from roomcast.protocol.sse import decode_cursor
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.types import StreamPosition

RETRY_MS = 200  # EventSource's reconnection delay, from the server's `retry:`


@asynccontextmanager
async def serving(page_origin: str) -> AsyncIterator[tuple[RunningServer, SseSpy]]:
    """A roomcast server that lets the page's origin in, with a snapshot for every room."""
    hub = Hub(broker=MemoryBroker(history_size=100))

    @hub.snapshot("*")
    def snapshot(room: str) -> dict[str, Any]:
        return {"room": room, "items": []}

    app = App(hub, Settings(cors_origins=(page_origin,), sse_retry_ms=RETRY_MS))
    spy = SseSpy(app)
    async with running(app) as srv:
        try:
            yield srv, spy
        finally:
            if spy.gate is not None:  # a test that failed while holding requests at the door
                spy.release()


def sse_url(srv: RunningServer, rooms: list[str]) -> str:
    return f"{srv.url}/sse?{urlencode([('room', r) for r in rooms])}"


def parsed(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(e["type"], json.loads(e["data"])) for e in events]


def cursor_offsets(event: dict[str, Any]) -> dict[str, int]:
    """What the browser would send back after this event: each room's offset in its cursor."""
    return {room: pos.offset for room, pos in decode_cursor(event["lastEventId"]).items()}


async def test_snapshots_for_every_room_then_live_events(page: Any, page_origin: str) -> None:
    async with serving(page_origin) as (srv, spy):
        stream = await BrowserStream.open(page, "ab", sse_url(srv, ["a", "b"]), ["chat", "score"])
        snapshots = await stream.wait_events(2)
        assert [(e["type"], json.loads(e["data"])["room"]) for e in snapshots] == [("snapshot", "a"), ("snapshot", "b")]
        assert json.loads(snapshots[0]["data"])["snapshot"] == {"room": "a", "items": []}
        assert cursor_offsets(snapshots[1]) == {"a": 0, "b": 0}
        assert await stream.states() == [{"type": "open", "readyState": OPEN}]
        assert spy.requests[0].origin == page_origin and spy.requests[0].last_event_id is None

        positions: list[StreamPosition] = [
            await srv.hub.publish("a", "chat", {"text": "héllo ✓"}),
            await srv.hub.publish("b", "score", 1, 2),
            await srv.hub.publish("a", "message", "plain onmessage"),
        ]
        events = (await stream.wait_events(5))[2:]
        assert parsed(events) == [
            ("chat", {"text": "héllo ✓"}),
            ("score", [1, 2]),
            ("message", "plain onmessage"),
        ]
        assert [cursor_offsets(e) for e in events] == [
            {"a": positions[0].offset, "b": 0},
            {"a": positions[0].offset, "b": positions[1].offset},
            {"a": positions[2].offset, "b": positions[1].offset},
        ]
        assert all(e["readyState"] == OPEN for e in events)
        assert len(spy.requests) == 1 and len(srv.app.sse.streams) == 1  # one connection throughout
        await stream.close()
        await spy.until(lambda: not srv.app.sse.streams, "the server to see the stream closed")


async def test_a_dropped_stream_reconnects_by_itself_and_gets_what_it_missed_once_in_order(
    page: Any, page_origin: str
) -> None:
    async with serving(page_origin) as (srv, spy):
        stream = await BrowserStream.open(page, "ab", sse_url(srv, ["a", "b"]), ["e"])
        await stream.wait_events(2)  # the snapshots
        await srv.hub.publish("a", "e", "a1")
        await srv.hub.publish("b", "e", "b1")
        before = await stream.wait_events(4)
        assert parsed(before[2:]) == [("e", "a1"), ("e", "b1")]
        held_cursor = before[-1]["lastEventId"]

        # The server drops the stream; the page stays open. Reconnects wait at the door
        # until released, so what is published meanwhile is certainly missed.
        spy.hold()
        (conn,) = srv.app.sse.streams
        conn.disconnect(disconnect.TRANSPORT_CLOSE)
        await spy.until(lambda: not srv.app.sse.streams, "the dropped stream to end")
        missed = [("a", "a2"), ("b", "b2"), ("a", "a3"), ("b", "b3")]
        for room, value in missed:
            await srv.hub.publish(room, "e", value)
        await spy.until(lambda: len(spy.requests) == 2, "the browser to reconnect by itself")
        assert await stream.ready_state() == CONNECTING
        assert len(await stream.events()) == 5  # the drop's `event: error`, nothing missed yet
        spy.release()

        # Exactly the missed ones, each once; per room oldest first (rooms replay in URL order).
        replayed = (await stream.wait_events(9))[5:]
        assert parsed(replayed) == [("e", "a2"), ("e", "a3"), ("e", "b2"), ("e", "b3")]
        await srv.hub.publish("b", "e", "b4")
        await srv.hub.publish("a", "e", "a4")
        events = await stream.wait_events(11)
        assert parsed(events[9:]) == [("e", "b4"), ("e", "a4")]

        # The browser saw: snapshots, live, the server's reason, the replay, live again.
        assert [e["type"] for e in events[:2]] == ["snapshot", "snapshot"]
        assert events[4]["type"] == "error"
        assert json.loads(events[4]["data"]) == {"code": "disconnect", "message": "transport close", "reconnect": True}
        assert events[4]["lastEventId"] == held_cursor  # an event without id leaves the cursor alone
        assert not {"snapshot", "reset"} & {e["type"] for e in events[5:]}  # resumed, not restarted
        assert cursor_offsets(events[-1]) == {"a": 4, "b": 4}
        assert await stream.states() == [
            {"type": "open", "readyState": OPEN},
            {"type": "error", "readyState": CONNECTING},  # the stream ended: retry in RETRY_MS
            {"type": "open", "readyState": OPEN},
        ]

        # The server's view: the second request came back with the cursor the page held.
        first, second = spy.requests
        assert first.last_event_id is None and first.status == 200
        assert second.last_event_id == held_cursor and second.status == 200
        assert second.origin == page_origin and second.rooms == ["a", "b"]
        assert len(srv.app.sse.streams) == 1


async def test_terminal_rooms_end_the_stream_and_the_browser_stops_on_204(page: Any, page_origin: str) -> None:
    async with serving(page_origin) as (srv, spy):
        tasks = ["task:1", "task:2"]
        stream = await BrowserStream.open(page, "tasks", sse_url(srv, tasks), ["done"])
        await stream.wait_events(2)  # the snapshots
        await srv.hub.publish("task:1", "done", {"result": 1})
        await srv.hub.mark_terminal("task:1")
        await srv.hub.publish("task:2", "done", {"result": 2})
        await stream.wait_events(4)
        assert len(srv.app.sse.streams) == 1  # one room still open: the stream goes on
        await srv.hub.mark_terminal("task:2")

        # The stream ends; the browser comes back after RETRY_MS with its cursor, gets 204,
        # and gives up: readyState CLOSED, without a word from the page's script.
        await stream.wait_ready_state(CLOSED)
        events = await stream.events()
        assert parsed(events[2:]) == [("done", {"result": 1}), ("done", {"result": 2})]
        assert len(events) == 4  # no `event: error`: the end of a finished stream is no failure
        assert await stream.states() == [
            {"type": "open", "readyState": OPEN},
            {"type": "error", "readyState": CONNECTING},  # the stream ended: it tries again
            {"type": "error", "readyState": CLOSED},  # 204: it stops
        ]
        first, second = spy.requests
        assert first.last_event_id is None and first.status == 200
        assert second.last_event_id == events[-1]["lastEventId"] and second.status == 204
        assert not srv.app.sse.streams

        # It stays closed. The clock for "long enough" is the browser's own: a probe stream,
        # dropped after the task stream closed and told the same `retry:`, must have come
        # back before a reconnect of the task stream could be due.
        probe = await BrowserStream.open(page, "probe", sse_url(srv, ["probe"]), [])
        await probe.wait_events(1)
        (conn,) = srv.app.sse.streams
        conn.disconnect(disconnect.TRANSPORT_CLOSE)
        await probe.wait_states(3)  # open, error (reconnecting), open again
        assert [r.rooms for r in spy.requests[2:]] == [["probe"], ["probe"]]
        assert spy.requests[3].last_event_id is not None
        assert await stream.ready_state() == CLOSED
        assert len(await stream.states()) == 3 and len(await stream.events()) == 4


async def test_what_a_finished_room_published_while_the_browser_was_away_still_arrives(
    page: Any, page_origin: str
) -> None:
    async with serving(page_origin) as (srv, spy):
        stream = await BrowserStream.open(page, "task", sse_url(srv, ["task:1"]), ["progress", "done"])
        await stream.wait_events(1)  # the snapshot
        await srv.hub.publish("task:1", "progress", 50)
        await stream.wait_events(2)
        spy.hold()
        (conn,) = srv.app.sse.streams
        conn.disconnect(disconnect.TRANSPORT_CLOSE)
        await spy.until(lambda: not srv.app.sse.streams, "the dropped stream to end")
        await srv.hub.publish("task:1", "done", {"result": 1})  # the last word, while it is away
        await srv.hub.mark_terminal("task:1")
        await spy.until(lambda: len(spy.requests) == 2, "the browser to reconnect by itself")
        spy.release()

        # Its cursor is behind: the reconnect must replay `done` (and end); only a reconnect
        # whose cursor has everything may get the 204 that makes EventSource stop.
        await stream.wait_ready_state(CLOSED)
        assert parsed((await stream.events())[3:]) == [("done", {"result": 1})]
        assert [r.status for r in spy.requests] == [200, 200, 204]


async def test_a_first_visit_to_a_finished_room_gets_its_snapshot_and_the_browser_stops(
    page: Any, page_origin: str
) -> None:
    async with serving(page_origin) as (srv, spy):
        await srv.hub.publish("task:9", "done", {"result": 9})
        await srv.hub.mark_terminal("task:9")
        stream = await BrowserStream.open(page, "late", sse_url(srv, ["task:9"]), ["done"])
        await stream.wait_ready_state(CLOSED)
        (snapshot,) = await stream.events()  # the state, then the end: nothing more will come
        assert snapshot["type"] == "snapshot" and json.loads(snapshot["data"])["offset"] == 1
        assert [(r.last_event_id, r.status) for r in spy.requests] == [(None, 200), (snapshot["lastEventId"], 204)]
        assert await stream.states() == [
            {"type": "open", "readyState": OPEN},
            {"type": "error", "readyState": CONNECTING},
            {"type": "error", "readyState": CLOSED},
        ]
        assert not srv.app.sse.streams
