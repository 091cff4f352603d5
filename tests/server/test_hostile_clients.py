"""Hostile clients against the native door, on real sockets: each is refused or cut with a
clear reason and counted, and a healthy client on every transport keeps getting its events.

The attacks: WebSocket clients that never answer the server's pings (a half-open socket, as
a vanished laptop or mobile link leaves behind), more connections than the server or one
address may hold, and clients that flood messages on ``/ws`` and Socket.IO (WebSocket and
polling). All on 127.0.0.1, bounded in count and time; every wait is on something the server
sends, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Literal

import aiohttp
import pytest
from click.testing import CliRunner
from healthy import WS_HEADERS, Healthy, server
from rawclient import RawWebSocket, open_websocket, socketio_connect
from servers import RunningServer

from roomcast import cli, disconnect
from roomcast.hub.hub import Hub
from roomcast.protocol import websocket as wsproto
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.transports import ratelimit

WAIT = 10.0


def masked(opcode: int, payload: bytes) -> bytes:
    return wsproto.serialize_frame(opcode, payload, mask=os.urandom(4))


# -- /ws keep-alive ---------------------------------------------------------------------
class WsPeer:
    """A raw ``/ws`` client that reads every frame and answers the server's pings with a
    pong, with a message, or not at all (``None``: the half-open socket)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Literal["pong", "message"] | None
    ) -> None:
        self.reader, self.writer, self.answer = reader, writer, answer
        self.parser = wsproto.WebSocketParser(max_message_bytes=1_000_000, require_mask=False)
        self.events: asyncio.Queue[str | wsproto.Close | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, srv: RunningServer, answer: Literal["pong", "message"] | None) -> WsPeer:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: roomcast.v1\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer, answer)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(65_536):
                for event in self.parser.feed(data):
                    if isinstance(event, wsproto.Ping):
                        if self.answer == "pong":
                            self.writer.write(masked(wsproto.OP_PONG, event.data))
                        elif self.answer == "message":
                            self.writer.write(masked(wsproto.OP_TEXT, b'{"type":"ping","id":1}'))
                        self.events.put_nowait("ping")
                    elif isinstance(event, wsproto.Close):
                        self.events.put_nowait(event)
        except ConnectionError:
            pass
        finally:
            self.events.put_nowait(None)

    async def next(self) -> str | wsproto.Close | None:
        """``"ping"``, the server's close frame, or ``None`` at the end of the connection."""
        return await asyncio.wait_for(self.events.get(), WAIT)

    def close(self) -> None:
        self.task.cancel()
        self.writer.transport.abort()


async def test_ws_clients_that_answer_no_ping_are_closed_with_3010_and_answering_ones_stay() -> None:
    async with server(ws_ping_interval=0.2, ws_ping_timeout=0.2) as srv, Healthy(srv) as healthy:
        silent = await WsPeer.open(srv, None)
        ponging = await WsPeer.open(srv, "pong")
        chatty = await WsPeer.open(srv, "message")  # answers with messages, never a pong
        try:
            assert await silent.next() == "ping"
            closed = await silent.next()
            assert isinstance(closed, wsproto.Close)
            assert (closed.code, closed.reason) == (3010, "ping timeout")
            assert disconnect.websocket_close_code(disconnect.PING_TIMEOUT) == 3010
            for peer in (ponging, chatty):  # three rounds each, well past the silent one's end
                assert [await peer.next() for _ in range(3)] == ["ping"] * 3
            assert srv.app.ws.ping_timeouts == 1
            await healthy.still_served()  # its RawWebSocket answered every ping meanwhile
        finally:
            for peer in (silent, ponging, chatty):
                peer.close()


async def test_ws_pings_are_off_with_interval_0() -> None:
    async with server(ws_ping_interval=0) as srv:
        client = await open_websocket(srv.host, srv.port, "/ws", headers=WS_HEADERS)
        try:
            client.send(json.dumps({"type": "ping", "id": 1}))
            assert json.loads(await client.recv())["type"] == "ack"
            [conn] = srv.app.ws.connections
            assert conn.ping_tick is None and conn.pinged_at is None  # nothing filed, nothing sent
        finally:
            client.close()


# -- connection limits ------------------------------------------------------------------
async def connect(srv: RunningServer, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(srv.host, srv.port, local_addr=(source, 0)), WAIT)


async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, close: bool = False) -> int:
    """One ``GET /healthz`` on a held connection; its status (the whole answer is read)."""
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)).decode("latin-1")
    length = int(next(line.split(":")[1] for line in head.split("\r\n") if line.lower().startswith("content-length")))
    await asyncio.wait_for(reader.readexactly(length), WAIT)
    return int(head.split()[1])


async def turned_away(srv: RunningServer, source: str = "127.0.0.1") -> tuple[int, dict[str, Any], str]:
    """Connect, send a request as any client does, and read the whole answer to the end."""
    reader, writer = await connect(srv, source)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), WAIT)  # to EOF: the server closed it
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body), head.decode("latin-1")
    finally:
        writer.transport.abort()


async def test_connections_past_max_connections_get_503_and_are_closed() -> None:
    async with server(max_connections=5) as srv, Healthy(srv) as healthy:  # Healthy holds 3
        held = [await connect(srv) for _ in range(2)]
        try:
            for reader, writer in held:
                assert await healthz(reader, writer) == 200
            status, error, head = await turned_away(srv)
            assert status == 503 and "Connection: close" in head
            assert error == {"code": 503, "message": "the server holds its most connections (5); try again later"}
            assert srv.counters.refused_connections == 1 and srv.counters.refused_per_address == 0
            await healthy.still_served()
            # one ends (the server closes it, and only then the client reads EOF): its slot is free
            reader, writer = held.pop()
            assert await healthz(reader, writer, close=True) == 200
            assert await asyncio.wait_for(reader.read(), WAIT) == b""
            writer.transport.abort()
            held.append(await connect(srv))
            assert await healthz(*held[-1]) == 200
            assert srv.counters.refused_connections == 1
            await healthy.still_served()
        finally:
            for _, writer in held:
                writer.transport.abort()


async def test_connections_past_max_connections_per_address_get_429_and_other_addresses_carry_on() -> None:
    # 127.0.0.1 holds Healthy's 3 connections (SSE, /ws, Socket.IO): its limit, exactly
    async with server(max_connections_per_address=3) as srv, Healthy(srv) as healthy:
        crowd = [await connect(srv, "127.0.0.2") for _ in range(3)]
        try:
            for reader, writer in crowd:
                assert await healthz(reader, writer) == 200
            status, error, _ = await turned_away(srv, "127.0.0.2")
            assert (status, error) == (429, {"code": 429, "message": "at most 3 connections per client address"})
            assert (await turned_away(srv, "127.0.0.1"))[0] == 429  # every transport's connections count
            assert srv.counters.refused_per_address == 2 and srv.counters.refused_connections == 0
            other = await connect(srv, "127.0.0.3")
            crowd.append(other)
            assert await healthz(*other) == 200
            await healthy.still_served()
        finally:
            for _, writer in crowd:
                writer.transport.abort()


# -- inbound message rate -----------------------------------------------------------------
def ws_pings(count: int) -> bytes:
    return b"".join(masked(wsproto.OP_TEXT, b'{"type":"ping","id":%d}' % i) for i in range(count))


async def closed_with(client: RawWebSocket) -> tuple[int | None, str]:
    await asyncio.wait_for(client.closed, WAIT)
    return client.close_code, client.close_reason


async def test_ws_clients_flooding_messages_are_cut_with_3013_and_a_burst_is_not() -> None:
    async with server(max_messages_per_second=50, message_burst=100) as srv, Healthy(srv) as healthy:
        bursty = await open_websocket(srv.host, srv.port, "/ws", headers=WS_HEADERS)
        flood = await open_websocket(srv.host, srv.port, "/ws", headers=WS_HEADERS)
        try:
            bursty.send_raw(ws_pings(100))  # the whole burst at once
            for i in range(100):
                assert json.loads(await bursty.recv()) == {"type": "ack", "id": i, "data": None}
            flood.send_raw(ws_pings(1000))
            assert await closed_with(flood) == (3013, "rate limited")
            assert disconnect.websocket_close_code(disconnect.RATE_LIMITED) == 3013
            assert flood.messages.qsize() <= 101  # answered what its bucket held, nothing after
            assert srv.app.ws.rate.cut == 1
            assert not bursty.closed.done()
            await healthy.still_served()
        finally:
            bursty.close()
            flood.close()


async def test_socketio_clients_flooding_packets_are_cut_on_websocket_and_polling() -> None:
    async with server(max_messages_per_second=50, message_burst=100) as srv, Healthy(srv) as healthy:
        flood = await socketio_connect(srv.host, srv.port)
        try:
            flood.send_raw(b"".join(masked(wsproto.OP_TEXT, b'42["noop",%d]' % i) for i in range(1000)))
            code = disconnect.websocket_close_code(disconnect.RATE_LIMITED)
            assert await closed_with(flood) == (code, "rate limited")
            assert srv.app.socketio.rate.cut == 1
        finally:
            flood.close()
        async with aiohttp.ClientSession() as http:
            base = f"{srv.url}/socket.io/?EIO=4&transport=polling"
            async with http.get(base) as r:
                sid = json.loads((await r.text())[1:])["sid"]
            polling = f"{base}&sid={sid}"
            async with http.post(polling, data="40") as r:
                assert r.status == 200
            async with http.get(polling) as r:
                assert (await r.text()).startswith("40{")
            async with http.post(polling, data="\x1e".join('42["noop",%d]' % i for i in range(500))) as r:
                assert r.status == 200
            async with http.get(polling) as r:  # the session is gone
                assert r.status == 400 and (await r.json())["message"] == "Session ID unknown"
            assert srv.app.socketio.rate.cut == 2
        await healthy.still_served()


def test_a_bucket_refills_at_its_rate_up_to_its_burst_and_a_refusal_is_final(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(ratelimit.time, "monotonic", lambda: now[0])
    rate = ratelimit.MessageRate(per_second=10, burst=3)
    bucket = rate.bucket()
    assert bucket is not None
    assert [bucket.take() for _ in range(3)] == [True, True, True]
    now[0] += 0.15  # one token and a half back
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 60.0  # cut for good, counted once
    assert (bucket.take(), bucket.take(), rate.cut) == (False, False, 1)
    other = rate.bucket()
    assert other is not None
    now[0] += 60.0  # never more than the burst
    assert [other.take() for _ in range(4)] == [True, True, True, False]
    assert rate.cut == 2
    assert ratelimit.MessageRate(per_second=0).bucket() is None


# -- settings -------------------------------------------------------------------------------
def test_the_flags_and_variables_set_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Settings] = []
    monkeypatch.setattr(cli, "App", lambda *, settings: built.append(settings))
    monkeypatch.setattr(cli, "run", lambda app, **_: None)
    monkeypatch.setattr(cli, "configure_logging", lambda *_, **__: None)  # the test runner's logging stays
    env = {name: None for name in os.environ if name.startswith("ROOMCAST_")}
    env.update({"ROOMCAST_MAX_CONNECTIONS_PER_ADDRESS": "8", "ROOMCAST_MESSAGE_BURST": "40"})
    result = CliRunner().invoke(
        cli.main,
        [
            "serve",
            "--max-connections",
            "900",
            "--ws-ping-interval",
            "5",
            "--ws-ping-timeout",
            "3",
            "--max-messages-per-second",
            "20",
        ],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    [s] = built
    assert (
        s.max_connections,
        s.max_connections_per_address,
        s.ws_ping_interval,
        s.ws_ping_timeout,
        s.max_messages_per_second,
        s.message_burst,
    ) == (900, 8, 5.0, 3.0, 20.0, 40)
    app = App(
        Hub(),
        Settings(
            ws_ping_interval=5, ws_ping_timeout=3, max_messages_per_second=20, message_burst=40, task_db=":memory:"
        ),
    )
    assert (app.ws.ping_interval, app.ws.ping_timeout) == (5, 3)
    assert (app.ws.rate.per_second, app.ws.rate.burst, app.socketio.rate.per_second) == (20, 40, 20)
