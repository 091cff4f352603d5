"""Fan-out on the native door: many real WebSocket subscribers, order, and slow consumers."""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any

from rawclient import RawWebSocket, call, socketio_connect
from servers import running

from roomcast.hub.connection import Connection
from roomcast.server.app import App


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def _subscribers(host: str, port: int, count: int, room: str) -> list[RawWebSocket]:
    clients: list[RawWebSocket] = []
    for start in range(0, count, 100):  # in batches, within the listen backlog
        batch = await asyncio.gather(*(socketio_connect(host, port) for _ in range(start, min(count, start + 100))))
        clients.extend(batch)
    joined = await asyncio.gather(*(call(c, 1, "join", {"room": room}) for c in clients))
    assert all(result == [True] for result in joined)
    return clients


async def test_thousand_subscribers_each_receive_every_publication_in_order(
    make_app: Callable[..., App],
) -> None:
    _raise_fd_limit(4096)
    async with running(make_app()) as srv:
        clients = await _subscribers(srv.host, srv.port, 1000, "news")
        outsider = await socketio_connect(srv.host, srv.port)
        try:
            assert srv.hub.rooms() == {"news": 1000}
            for i in range(100):
                await srv.hub.publish("news", "tick", i)

            async def drain(client: RawWebSocket) -> list[Any]:
                return [await client.recv(timeout=20) for _ in range(100)]

            async with asyncio.timeout(60):
                received = await asyncio.gather(*(drain(c) for c in clients))
            expected = [f'42["tick",{i}]' for i in range(100)]
            assert all(r == expected for r in received)
            assert srv.hub.delivered == 100 * 1000
            # the connection that did not join got nothing: its next message is its own ack
            assert await call(outsider, 7, "echo", "still here") == ["still here"]
        finally:
            for c in [*clients, outsider]:
                c.close()


async def test_slow_consumer_is_disconnected_and_the_others_receive_everything(
    make_app: Callable[..., App],
) -> None:
    app = make_app(max_buffer_bytes=256 * 1024)
    reasons: dict[str, str] = {}

    @app.hub.on_disconnect()
    def gone(conn: Connection, reason: str) -> None:
        reasons[conn.id] = reason

    async with running(app) as srv:
        fast = await _subscribers(srv.host, srv.port, 3, "feed")
        slow = await socketio_connect(srv.host, srv.port, rcvbuf=4096)
        assert await call(slow, 1, "join", {"room": "feed"}) == [True]
        slow_conn = next(c for c in srv.hub.members("feed") if c.id not in {m.id for m in srv.hub.members("feed")[:3]})
        assert slow.transport is not None
        slow.transport.pause_reading()  # it stops reading
        payload = "x" * 32 * 1024
        sent = 0
        try:
            async with asyncio.timeout(30):
                while srv.hub.slow_disconnects == 0:
                    assert sent < 2000, "the slow consumer was never disconnected"
                    await srv.hub.publish("feed", "blob", sent, payload)
                    sent += 1
                    # let the fast readers keep up, so only the paused one falls behind
                    for c in fast:
                        message = await c.recv(timeout=10)
                        assert message == f'42["blob",{sent - 1},"{payload}"]'
            assert srv.hub.slow_disconnects == 1
            assert reasons.get(slow_conn.id) == "slow consumer"
            assert srv.hub.members("feed") and len(srv.hub.members("feed")) == 3
            slow.transport.resume_reading()
            async with asyncio.timeout(10):
                code = await slow.closed
            assert code == 3008  # it read its way to the documented goodbye: a close frame, not a reset
            assert srv.counters.slow_goodbyes == 1 and srv.counters.slow_aborts == 0
            # the others still get what comes next
            await srv.hub.publish("feed", "after", 1)
            for c in fast:
                assert await c.recv() == '42["after",1]'
        finally:
            for c in [*fast, slow]:
                c.close()
