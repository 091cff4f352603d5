"""A minimal raw WebSocket + Engine.IO/Socket.IO test client on a real 127.0.0.1 socket.

Why not a full client library: the fan-out tests open a thousand connections in the test
process, and the bad-input tests must send bytes no polite client would. This speaks the
wire directly with roomcast's own sans-I/O frame codec (client side: masked frames out,
unmasked in), so every byte is under the test's control.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

from roomcast import _json
from roomcast.protocol import websocket as wsproto


class RawWebSocket(asyncio.Protocol):
    """One client WebSocket. Messages land in ``self.messages``; ``closed`` is set at EOF."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = wsproto.WebSocketParser(max_message_bytes=64 * 1024 * 1024, require_mask=False)
        self.messages: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = asyncio.get_running_loop().create_future()
        self._handshake = asyncio.get_running_loop().create_future()
        self._buffer = b""
        self.status: int | None = None
        self.auto_pong = False  # answer Engine.IO pings as they arrive, like a live client
        self.pings = 0
        self.pinged = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self._handshake.done():
            self._buffer += data
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.status = int(head.split(b" ", 2)[1])
            self.response_head = head.decode("latin-1")
            self._handshake.set_result(self.status)
            data = rest
            if self.status != 101:
                return
        for event in self.parser.feed(data):
            if isinstance(event, wsproto.Message):
                payload = event.data
                if self.auto_pong and payload == b"2" and event.opcode == wsproto.OP_TEXT:
                    self.pings += 1
                    self.pinged.set()
                    self.send("3")
                    continue
                self.messages.put_nowait(payload.decode() if event.opcode == wsproto.OP_TEXT else payload)
            elif isinstance(event, wsproto.Close):
                self.close_code = event.code
                self.close_reason = event.reason
                # answer like a browser does, then let the server end TCP
                echo = 1000 if event.code in (1005, 1006) else event.code
                self.send_raw(wsproto.close_frame(echo, mask=os.urandom(4)))
            elif isinstance(event, wsproto.Ping):
                self.send_raw(wsproto.serialize_frame(wsproto.OP_PONG, event.data, mask=os.urandom(4)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handshake.done():
            self._handshake.set_result(0)
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    # -- sending ------------------------------------------------------------------------
    def send_raw(self, data: bytes) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.write(data)

    def send(self, data: str | bytes) -> None:
        opcode = wsproto.OP_TEXT if isinstance(data, str) else wsproto.OP_BINARY
        payload = data.encode() if isinstance(data, str) else data
        self.send_raw(wsproto.serialize_frame(opcode, payload, mask=os.urandom(4)))

    async def recv(self, timeout: float = 5.0) -> str | bytes:
        """The next message that is not an Engine.IO ping (pings are answered)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                if message == "2":
                    self.send("3")
                    continue
                return message

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_websocket(
    host: str,
    port: int,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    rcvbuf: int | None = None,
    timeout: float = 5.0,
) -> RawWebSocket:
    """Open a WebSocket; ``client.status`` is 101 when accepted (else the HTTP status)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    async with asyncio.timeout(timeout):
        await loop.sock_connect(sock, (host, port))
        _, client = await loop.create_connection(RawWebSocket, sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        client.send_raw(("\r\n".join(lines) + "\r\n\r\n").encode())
        await client._handshake
    return client


async def socketio_connect(
    host: str, port: int, *, auth: Any = None, path: str = "/socket.io/", rcvbuf: int | None = None
) -> RawWebSocket:
    """A WebSocket-only Socket.IO connection to ``/``, past the CONNECT reply."""
    client = await open_websocket(host, port, f"{path}?EIO=4&transport=websocket", rcvbuf=rcvbuf)
    assert client.status == 101, client.status
    opened = await client.recv()
    assert isinstance(opened, str) and opened.startswith("0"), opened
    client.send("40" + (_json.dumps_str(auth) if auth is not None else ""))
    reply = await client.recv()
    assert isinstance(reply, str) and reply.startswith("40{"), reply
    return client


async def call(client: RawWebSocket, ack_id: int, event: str, *args: Any) -> list[Any]:
    """Emit ``event`` with an ack id and return the ack's arguments."""
    client.send(f"42{ack_id}" + _json.dumps_str([event, *args]))
    prefix = f"43{ack_id}"
    while True:
        message = await client.recv()
        if isinstance(message, str) and message.startswith(prefix):
            result: list[Any] = _json.loads(message[len(prefix) :])
            return result
