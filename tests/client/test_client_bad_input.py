"""Bad input from a server: a tiny hand-written misbehaving server on 127.0.0.1.

It speaks just enough WebSocket, Engine.IO and Socket.IO to get a client connected, then
sends what each test scripts. Each bad input is either logged and dropped (the connection
stays up) or resets the connection with a reason (the client reconnects); the client's
loops never die.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from clientkit import Recorder

from roomcast.client import Client, ClientState
from roomcast.protocol import websocket as wsproto

S = ClientState


@dataclass
class FakeConnection:
    """One client connection to the fake server: send raw frames, read the client's texts."""

    index: int
    writer: asyncio.StreamWriter
    received: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def send(self, text: str) -> None:
        self.writer.write(wsproto.text_frame(text))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def expect(self, prefix: str) -> str:
        async with asyncio.timeout(5):
            while True:
                text = await self.received.get()
                if text.startswith(prefix):
                    return text


Script = Callable[[FakeConnection], Awaitable[None]]


class FakeServer:
    """Accepts WebSocket connections at any path and runs ``script`` on each."""

    def __init__(self, script: Script, *, ping_interval_ms: int = 25000, ping_timeout_ms: int = 20000) -> None:
        self.script = script
        self.handshake = '0{"sid":"fake","upgrades":[],"pingInterval":%d,"pingTimeout":%d,"maxPayload":1000000}' % (
            ping_interval_ms,
            ping_timeout_ms,
        )
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = FakeConnection(self.connections, writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            writer.write(wsproto.handshake_response(wsproto.accept_key(key)))
            conn.send(self.handshake)
            parser = wsproto.WebSocketParser(require_mask=True)
            reading = asyncio.ensure_future(self._read(reader, parser, conn))
            await conn.expect("40")
            conn.send('40{"sid":"sock%d"}' % conn.index)
            await self.script(conn)
            await reading
        except (OSError, asyncio.IncompleteReadError, wsproto.RemoteProtocolError, TimeoutError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader, parser: wsproto.WebSocketParser, conn: FakeConnection) -> None:
        while data := await reader.read(65536):
            for event in parser.feed(data):
                if isinstance(event, wsproto.Message):
                    conn.received.put_nowait(event.data.decode())
                elif isinstance(event, wsproto.Close):
                    return


@contextlib.asynccontextmanager
async def connected(script: Script, **client_kw: object) -> AsyncIterator[tuple[Client, Recorder, FakeServer]]:
    async with FakeServer(script) as server:
        client = Client(server.url, transports=("websocket",), backoff_initial=0.1, backoff_max=0.2, **client_kw)  # type: ignore[arg-type]
        rec = Recorder(client)
        client.on("after", rec.handler("after"))
        client.on("ev", rec.handler("ev"))
        try:
            await asyncio.wait_for(client.connect(), 5)
            yield client, rec, server
        finally:
            await client.close()


def _bad_first(bad: Callable[[FakeConnection], None]) -> Script:
    """The first connection gets the bad input; later ones behave and send ``after``."""

    async def script(conn: FakeConnection) -> None:
        if conn.index == 1:
            conn.send("2")  # a ping round trip: the CONNECT reply has been read, not lost with the bad bytes
            await conn.expect("3")
            bad(conn)
        else:
            conn.send('42["after","ok"]')

    return script


async def _resets(bad: Callable[[FakeConnection], None], reason: str, **client_kw: object) -> None:
    async with connected(_bad_first(bad), **client_kw) as (client, rec, server):
        await rec.wait_for(lambda: rec.of("after") == [("ok",)])
        assert rec.states == [S.CONNECTING, S.CONNECTED, S.RECONNECTING, S.CONNECTING, S.CONNECTED]
        assert rec.changes[2].reason == reason
        assert server.connections == 2


async def test_a_malformed_engineio_packet_resets_the_connection() -> None:
    await _resets(lambda conn: conn.send("9not-a-type"), "parse error")


async def test_a_malformed_socketio_packet_resets_the_connection() -> None:
    await _resets(lambda conn: conn.send('42["ev", not json'), "parse error")


async def test_a_broken_websocket_frame_resets_the_connection() -> None:
    await _resets(lambda conn: conn.send_raw(b"\xf1\x00"), "parse error")  # reserved bits set


async def test_an_oversize_message_resets_the_connection() -> None:
    big = '42["ev","' + "x" * 5000 + '"]'
    await _resets(lambda conn: conn.send(big), "message too big", max_message_bytes=1000)


async def _dropped(bad: str, caplog: pytest.LogCaptureFixture, logged: str) -> None:
    async def script(conn: FakeConnection) -> None:
        conn.send(bad)
        conn.send('42["after","ok"]')

    with caplog.at_level(logging.WARNING, logger="roomcast.client"):
        async with connected(script) as (client, rec, _):
            await rec.wait_for(lambda: rec.of("after") == [("ok",)])
            assert rec.states == [S.CONNECTING, S.CONNECTED] and rec.of("ev") == []
    assert any(logged in r.getMessage() for r in caplog.records)


async def test_an_ack_for_an_unknown_id_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    await _dropped("43999[1]", caplog, "ack for unknown id 999")


async def test_an_event_for_a_room_never_subscribed_is_logged_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _dropped('42["ev",1,{"$room":"nope","$epoch":"e","$offset":1}]', caplog, "never subscribed")


async def test_unexpected_packets_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    await _dropped('44{"message":"late connect_error"}', caplog, "unexpected CONNECT_ERROR")


async def test_pings_are_answered_and_a_silent_server_is_noticed_within_interval_plus_timeout() -> None:
    async def script(conn: FakeConnection) -> None:
        if conn.index == 1:
            conn.send("2")
            assert await conn.expect("3") == "3"  # the client answered the ping
            # then nothing: no more pings, the TCP connection stays open

    async with FakeServer(script, ping_interval_ms=150, ping_timeout_ms=100) as server:
        client = Client(server.url, transports=("websocket",), backoff_initial=5, backoff_max=5)
        rec = Recorder(client)
        try:
            await asyncio.wait_for(client.connect(), 5)
            started = time.monotonic()
            await rec.wait_state(S.RECONNECTING, timeout=5)
            noticed = time.monotonic() - started
            assert rec.changes[-1].reason == "ping timeout"
            assert noticed < 0.25 + 0.2  # pingInterval + pingTimeout after the last ping, plus slack
        finally:
            await client.close()


@pytest.mark.parametrize(
    "headers",
    [{"Cookie": "a=1\r\nX-Injected: 1"}, {"Bad Name": "1"}, {"X-Euro": "€"}],
)
def test_headers_http_cannot_carry_are_refused_when_the_client_is_made(headers: dict[str, str]) -> None:
    """Found only at connect, they would look like a network failure and be retried for ever."""
    with pytest.raises(ValueError, match="header"):
        Client("http://127.0.0.1:1", headers=headers)
