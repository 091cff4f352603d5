"""``/sse`` in a real browser: Chromium's own ``EventSource`` against a running roomcast.

What the aiohttp reader in tests/transports/test_sse_stream.py imitates, checked against the
real thing: the browser parses the stream, keeps the ``id`` as its cursor, waits ``retry`` ms
and reconnects by itself with ``Last-Event-ID``, and stops for good on a 204. The page comes
from another port (tests/browser/conftest.py), so every stream is a CORS request too.
Loopback only; every wait is bounded.
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
        yield srv, spy


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
