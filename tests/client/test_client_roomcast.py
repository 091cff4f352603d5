"""The Client against an in-process roomcast server on 127.0.0.1, over every transport.

Covers connect, emit with ack both ways, AckTimeout, rooms with positions, recovery of
missed events after the server drops the connection, auth (callable refresh, static
refusal), offline buffering, pause/resume/close and handlers that raise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from clientkit import Recorder, proxy_to
from servers import RunningServer, running

from roomcast.client import (
    AckTimeout,
    Client,
    ClientState,
    ConnectionClosed,
    ConnectRefused,
    OfflineBufferFull,
    OfflineRefused,
    SubscribeRefused,
)
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.conformance import register_demo_events

S = ClientState
SECRET = "test-secret-that-is-long-enough-for-hs256"
TRANSPORTS = {
    "websocket": ("websocket",),
    "polling": ("polling",),
    "upgrade": ("polling", "websocket"),
}


def _hub(max_rooms: int = 100) -> Hub:
    hub = Hub(max_rooms_per_connection=max_rooms)
    register_demo_events(hub)

    @hub.on("ask")
    async def ask(conn: Connection, question: Any = None, *_: Any) -> Any:
        return await conn.call("question", question, timeout=5)

    return hub


@pytest.fixture(params=sorted(TRANSPORTS))
def transports(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return TRANSPORTS[request.param]


@pytest.fixture
async def srv() -> AsyncIterator[RunningServer]:
    async with running(App(_hub(), Settings())) as server:
        yield server


def _client(srv: RunningServer, transports: tuple[str, ...] = ("websocket",), **kw: Any) -> Client:
    kw.setdefault("backoff_initial", 0.2)
    kw.setdefault("backoff_max", 0.4)
    kw.setdefault("ack_timeout", 5.0)
    return Client(srv.url, transports=transports, **kw)


async def test_connect_emit_with_ack_and_server_events(srv: RunningServer, transports: tuple[str, ...]) -> None:
    client = _client(srv, transports)
    rec = Recorder(client)
    client.on("question", lambda q, ack: ack(f"answer to {q}"))
    try:
        async with asyncio.timeout(10):
            await client.connect()
            assert client.state is S.CONNECTED and client.sid
            assert await client.emit("echo", {"x": [1, 2]}, ack=True) == {"x": [1, 2]}
            assert await client.emit("echo", b"\x00\x01binary", ack=True) == b"\x00\x01binary"
            # the server asks the client (an ack in the other direction) and returns its answer
            assert await client.emit("ask", "life", ack=True) == "answer to life"
            assert await client.emit("echo", 1) is None  # no ack asked: nothing to wait for
            if transports[0] == "polling" and len(transports) == 2:
                await rec.wait_for(lambda: client.transport == "websocket")
    finally:
        await client.close()
    assert rec.states == [S.CONNECTING, S.CONNECTED, S.CLOSED]
    assert rec.changes[-1].reason == "closed"


async def test_ack_timeout(srv: RunningServer, transports: tuple[str, ...]) -> None:
    client = _client(srv, transports)
    try:
        await asyncio.wait_for(client.connect(), 10)
        with pytest.raises(AckTimeout):
            await client.emit("unhandled", ack=True, timeout=0.2)  # no handler: never answered
        assert await client.emit("echo", "after", ack=True) == "after"
    finally:
        await client.close()


async def test_subscribe_delivers_events_with_positions_and_drops_nothing(
    srv: RunningServer, transports: tuple[str, ...]
) -> None:
    client = _client(srv, transports)
    rec = Recorder(client)
    client.on("news", rec.handler("news"))
    snapshots: list[tuple[str, Any]] = []
    client.on_snapshot(lambda state, snap: snapshots.append((state.room, snap)))
    srv.hub.snapshot("doc:*")(lambda room: {"doc": room})
    try:
        await asyncio.wait_for(client.connect(), 10)
        state = await client.subscribe("doc:1")
        assert state.recovered is False and state.offset == 0 and state.epoch
        for i in range(5):
            await srv.hub.publish("doc:1", "news", i)
        await srv.hub.publish("elsewhere", "news", "not for us")
        await rec.wait_for(lambda: len(rec.of("news")) == 5)
        assert rec.of("news") == [(i,) for i in range(5)]  # the room meta is stripped
        assert client.room("doc:1") is not None and client.room("doc:1").offset == 5  # type: ignore[union-attr]
        assert snapshots == [("doc:1", {"doc": "doc:1"})]
        await client.unsubscribe("doc:1")
        assert client.room("doc:1") is None
    finally:
        await client.close()


async def test_reconnect_after_the_server_drops_recovers_missed_events(
    srv: RunningServer, transports: tuple[str, ...]
) -> None:
    client = _client(srv, transports, backoff_initial=0.4)
    rec = Recorder(client)
    client.on("news", rec.handler("news"))
    try:
        await asyncio.wait_for(client.connect(), 10)
        await client.subscribe("r")
        await srv.hub.publish("r", "news", 0)
        await rec.wait_for(lambda: len(rec.of("news")) == 1)
        await client.emit("drop")  # the demo handler closes the transport
        await rec.wait_state(S.RECONNECTING)
        for i in range(1, 6):  # published while the client is away (its delay is >= 0.1 s)
            await srv.hub.publish("r", "news", i)
        answer = asyncio.ensure_future(client.emit("echo", "buffered", ack=True))
        await rec.wait_state(S.CONNECTED, count=2)
        await rec.wait_for(lambda: len(rec.of("news")) == 6)
        assert await asyncio.wait_for(answer, 5) == "buffered"  # the offline emit went out after
        await srv.hub.publish("r", "news", 6)
        await rec.wait_for(lambda: len(rec.of("news")) == 7)
        assert rec.of("news") == [(i,) for i in range(7)]  # in order, none lost, none twice
        room = client.room("r")
        assert room is not None and room.recovered is True and room.offset == 7
        assert rec.states[:5] == [S.CONNECTING, S.CONNECTED, S.RECONNECTING, S.CONNECTING, S.CONNECTED]
        assert rec.changes[2].reason == "transport close"
    finally:
        await client.close()


async def test_socketio_connection_state_recovery_on_roomcast() -> None:
    async with running(App(_hub(), Settings(recovery_window=30))) as srv:
        client = _client(srv, ("websocket",), backoff_initial=0.4)
        rec = Recorder(client)
        client.on("news", rec.handler("news"))
        try:
            await asyncio.wait_for(client.connect(), 10)
            assert client.pid is not None and client.recovered is False
            await client.subscribe("r")
            await srv.hub.publish("r", "news", 0)
            await rec.wait_for(lambda: len(rec.of("news")) == 1)
            sid = client.sid
            await client.emit("drop")
            await rec.wait_state(S.RECONNECTING)
            await srv.hub.publish("r", "news", 1)
            await rec.wait_state(S.CONNECTED, count=2)
            await rec.wait_for(lambda: len(rec.of("news")) == 2)
            assert client.recovered is True and client.sid == sid
            assert rec.changes[-1].reason == "recovered"
            assert rec.of("news") == [(0,), (1,)]  # the offset string is stripped, no duplicate
        finally:
            await client.close()


def _token(sub: str = "u1", exp_in: float = 60.0) -> str:
    claims = {"sub": sub, "rooms": {"subscribe": ["*"], "publish": []}, "exp": time.time() + exp_in}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def test_auth_callable_is_called_before_every_connect_and_refreshes_the_token() -> None:
    async with running(App(_hub(), Settings(jwt_secret=SECRET))) as srv:
        tokens = iter(["garbage", _token(exp_in=1.0), _token()])
        calls: list[str] = []

        async def auth() -> dict[str, str]:
            calls.append(next(tokens))
            return {"token": calls[-1]}

        client = _client(srv, auth=auth)
        rec = Recorder(client)
        try:
            await asyncio.wait_for(client.connect(), 10)  # refused once, then in with a good token
            assert rec.changes[1].new is S.RECONNECTING and rec.changes[1].reason == "refused: malformed token"
            await client.subscribe("room")
            # the short token expires: the server closes, the client comes back with a fresh one
            await rec.wait_state(S.CONNECTED, count=2, timeout=10)
            assert len(calls) == 3
            assert await client.emit("echo", "still here", ack=True) == "still here"
            assert client.room("room") is not None
        finally:
            await client.close()


async def test_a_refusal_stops_reconnecting_with_static_auth() -> None:
    async with running(App(_hub(), Settings(jwt_secret=SECRET))) as srv:
        client = _client(srv, auth={"token": "garbage"})
        rec = Recorder(client)
        with pytest.raises(ConnectRefused) as refused:
            await asyncio.wait_for(client.connect(), 10)
        assert refused.value.message == "malformed token"
        assert rec.states == [S.CONNECTING, S.DISCONNECTED]
        assert rec.changes[-1].reason == "refused: malformed token"
        await client.close()


async def test_namespace_refusal_and_subscribe_refusal() -> None:
    async with running(App(_hub(max_rooms=2), Settings())) as srv:
        nowhere = _client(srv, namespace="/nowhere", reconnect=False)
        with pytest.raises(ConnectRefused, match="Invalid namespace"):
            await asyncio.wait_for(nowhere.connect(), 10)
        assert nowhere.state is S.DISCONNECTED
        client = _client(srv)
        try:
            await asyncio.wait_for(client.connect(), 10)
            with pytest.raises(ValueError):
                await client.subscribe("x" * 257)  # the client checks names itself
            await client.subscribe("a")
            await client.subscribe("b")
            with pytest.raises(SubscribeRefused, match="at most 2 rooms"):
                await client.subscribe("c")
            assert [r.room for r in client.rooms] == ["a", "b"]  # the refused room is dropped
        finally:
            await client.close()


async def test_offline_emits_buffer_up_to_the_limit_or_are_refused(srv: RunningServer) -> None:
    buffered = _client(srv, offline_limit=2)
    refusing = _client(srv, offline="refuse")
    try:
        with pytest.raises(OfflineRefused):
            await refusing.emit("echo", 1)
        with pytest.raises(AckTimeout):  # a buffered emit's timeout runs while it waits ...
            await buffered.emit("echo", "given up", ack=True, timeout=0.05)
        await buffered.emit("echo", "two")  # ... and it left the buffer; no ack: returns once buffered
        # Tasks start in the order they were created: "one" is buffered (and waits for its
        # ack) before "three" finds the buffer full.
        first = asyncio.ensure_future(buffered.emit("echo", "one", ack=True))
        third = asyncio.ensure_future(buffered.emit("echo", "three"))
        with pytest.raises(OfflineBufferFull):
            await third
        assert not first.done()
        await asyncio.wait_for(buffered.connect(), 10)
        assert await asyncio.wait_for(first, 5) == "one"
    finally:
        await buffered.close()
        await refusing.close()
    with pytest.raises(ConnectionClosed):
        await buffered.emit("echo", 1)


async def test_pause_keeps_the_connection_for_the_grace_then_resume_recovers(srv: RunningServer) -> None:
    client = _client(srv)
    rec = Recorder(client)
    client.on("news", rec.handler("news"))
    batches: list[list[Any]] = []
    batcher = client.batcher(batches.append, debounce=0.01, window=0.05, max_wait=0.1)
    try:
        await asyncio.wait_for(client.connect(), 10)
        await client.subscribe("r")
        await client.pause(0.2)
        assert client.state is S.CONNECTED  # still connected during the grace
        await rec.wait_state(S.DISCONNECTED, timeout=5)
        assert rec.changes[-1].reason == "paused"
        batcher.add("k", "update", 1)  # held while paused: kept, not handed over
        await srv.hub.publish("r", "news", "while paused")
        assert batcher.held and len(batcher) == 1 and batches == []
        await client.resume()
        await client.wait_connected(10)
        await rec.wait_for(lambda: rec.of("news") == [("while paused",)])
        assert client.room("r").recovered is True  # type: ignore[union-attr]
        await batcher.flush()  # released on resume: handed over by now or by this flush
        assert [c.key for c in batches[0]] == ["k"] and len(batches) == 1
        # pause then resume within the grace: the connection is never dropped
        await client.pause(5)
        await client.resume()
        assert client.state is S.CONNECTED
    finally:
        await client.close()
    assert rec.states.count(S.DISCONNECTED) == 1


async def test_close_drops_pending_changes_and_fails_waiting_acks(srv: RunningServer) -> None:
    client = _client(srv)
    batches: list[Any] = []
    batcher = client.batcher(batches.append, debounce=10, window=20, max_wait=30)
    await asyncio.wait_for(client.connect(), 10)
    batcher.add("a", "update")
    waiting = asyncio.ensure_future(client.emit("unhandled", ack=True, timeout=10))
    await asyncio.ensure_future(client.close())  # a task started after the emit's: it is sent and waiting
    assert client.state is S.CLOSED and batcher.closed and len(batcher) == 0 and batches == []
    with pytest.raises(ConnectionClosed):
        await waiting
    await client.close()  # idempotent


async def test_a_handler_that_raises_is_logged_and_the_rest_carry_on(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = _client(srv)
    rec = Recorder(client)

    def broken(*_: Any) -> None:
        raise RuntimeError("boom")

    client.on("news", broken)
    client.on("news", rec.handler("news"))
    try:
        await asyncio.wait_for(client.connect(), 10)
        await client.subscribe("r")
        with caplog.at_level(logging.ERROR, logger="roomcast.client"):
            await srv.hub.publish("r", "news", 1)
            await srv.hub.publish("r", "news", 2)
            await rec.wait_for(lambda: len(rec.of("news")) == 2)
        failures = [r for r in caplog.records if "'news'" in r.getMessage()]
        assert len(failures) == 2 and failures[0].exc_info is not None
        assert client.state is S.CONNECTED
    finally:
        await client.close()


async def test_room_meta_is_opt_in_and_plain_clients_see_events_as_before(srv: RunningServer) -> None:
    import socketio  # python-socketio: a client that does not ask for meta

    plain = socketio.AsyncClient()
    got: list[Any] = []
    seen = asyncio.Event()

    @plain.on("news")
    async def news(*args: Any) -> None:
        got.append(args)
        seen.set()

    client = _client(srv)
    rec = Recorder(client)
    client.on("news", rec.handler("news"))
    try:
        await plain.connect(srv.url, transports=["websocket"])
        await plain.call("subscribe", {"room": "r"})
        await asyncio.wait_for(client.connect(), 10)
        await client.subscribe("r")
        await srv.hub.publish("r", "news", {"n": 1})
        await asyncio.wait_for(seen.wait(), 5)
        await rec.wait_for(lambda: len(rec.of("news")) == 1)
        assert got == [({"n": 1},)]  # exactly the old wire: no meta argument
        assert rec.of("news") == [({"n": 1},)]
        assert client.room("r").offset == 1  # type: ignore[union-attr]
    finally:
        await plain.disconnect()
        await client.close()


async def test_the_room_meta_wire_format_with_and_without_recovery() -> None:
    """``?roomcast=1``: ``["event", ...data, {"$room","$epoch","$offset"}]``; the recovery
    offset, when on, stays last. Without the parameter the frame is exactly as before."""
    from rawclient import call, open_websocket

    from roomcast import _json

    for window in (0.0, 30.0):
        async with running(App(_hub(), Settings(recovery_window=window))) as srv:
            frames: dict[str, str] = {}
            for query in ("", "&roomcast=1"):
                ws = await open_websocket(srv.host, srv.port, f"/socket.io/?EIO=4&transport=websocket{query}")
                try:
                    await ws.recv()
                    ws.send("40")
                    await ws.recv()
                    reply = (await call(ws, 1, "subscribe", {"room": "r"}))[0]
                    position = await srv.hub.publish("r", "news", {"n": 1})
                    frame = await ws.recv()
                    assert isinstance(frame, str)
                    frames[query] = frame
                    assert position.epoch == reply["epoch"]
                finally:
                    ws.close()
            plain, meta = _json.loads(frames[""][2:]), _json.loads(frames["&roomcast=1"][2:])
            meta_arg = {"$room": "r", "$epoch": position.epoch, "$offset": position.offset}
            if window == 0.0:
                assert plain == ["news", {"n": 1}]
                assert meta == ["news", {"n": 1}, meta_arg]
            else:
                assert plain[:2] == ["news", {"n": 1}] and len(plain) == 3 and isinstance(plain[2], str)
                assert meta[:3] == ["news", {"n": 1}, meta_arg] and isinstance(meta[3], str)


async def test_default_transports_fall_back_to_polling_when_websocket_is_refused(srv: RunningServer) -> None:
    async with proxy_to(srv.port, refuse_websocket=True) as proxy:
        client = Client(f"http://127.0.0.1:{proxy.port}", ack_timeout=5)  # websocket first, then polling
        try:
            await asyncio.wait_for(client.connect(), 10)
            assert client.transport == "polling"
            assert await client.emit("echo", "over polling", ack=True) == "over polling"
            assert client.transport == "polling"  # the upgrade was refused too: it stays
        finally:
            await client.close()


async def test_a_refusal_stops_reconnecting_when_the_auth_callable_has_nothing_new() -> None:
    async with running(App(_hub(), Settings(jwt_secret=SECRET))) as srv:
        calls = 0

        def auth() -> dict[str, str]:
            nonlocal calls
            calls += 1
            return {"token": "still-garbage"}

        client = _client(srv, auth=auth)
        rec = Recorder(client)
        with pytest.raises(ConnectRefused) as refused:
            await asyncio.wait_for(client.connect(), 10)
        assert "returned the same credentials" in refused.value.message
        assert calls == 2  # asked once more after the refusal, then stopped: no endless retries
        assert rec.states == [S.CONNECTING, S.RECONNECTING, S.CONNECTING, S.DISCONNECTED]
        await client.close()
