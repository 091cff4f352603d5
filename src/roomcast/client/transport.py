"""The client's two wires: a WebSocket and HTTP/1.1 requests, on asyncio streams.

Owns the bytes below Engine.IO and nothing above: the RFC 6455 client handshake (a random
``Sec-WebSocket-Key``, the ``Sec-WebSocket-Accept`` check), masked frames out and unmasked
frames in through the sans-I/O ``protocol.websocket``, and the long-polling requests.

HTTP is the package's one client, ``roomcast.httpclient``: its upgrade request
(``aupgrade``) for the WebSocket handshake, its keep-alive pool of the running loop for
long-polling. A waiting GET
and a POST each hold a connection of their own while in flight, so one never queues behind
the other; between requests the connections are reused.

Errors: a peer that breaks WebSocket or HTTP rules raises
:class:`~roomcast.errors.RemoteProtocolError` (``PayloadTooBig`` for the size limit); a
connection that ends raises :class:`~roomcast.errors.ConnectionClosed`; a refused TCP
connection is the ``OSError`` of ``asyncio.open_connection``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from roomcast import httpclient
from roomcast.errors import ConnectionClosed, LocalProtocolError, RemoteProtocolError
from roomcast.protocol import http1
from roomcast.protocol import websocket as wsproto

__all__ = ["Target", "parse_target", "HttpAnswer", "http_request", "WebSocket", "UpgradeRefused"]

_MAX_HEAD_LINE = 8192
_READ_CHUNK = 65536


class UpgradeRefused(ConnectionClosed):
    """The server answered the WebSocket handshake with HTTP, but not ``101``.

    Why a type of its own: the server is reachable and speaks HTTP, so falling back to
    long-polling may work; a refused TCP connection would fail the same way on polling.
    """

    def __init__(self, status: int) -> None:
        super().__init__(f"WebSocket handshake answered {status}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    """Where the server is: host, port, TLS, and the Engine.IO endpoint path.

    ``ssl_context`` is made once per client (the system's trust store): the keep-alive pool
    is per origin, context included, so a context per request would never reuse one.
    """

    host: str
    port: int
    tls: bool
    path: str
    ssl_context: ssl.SSLContext | None = None

    def resource(self, params: Mapping[str, str]) -> str:
        """The request target: the endpoint path with ``params`` as its query string."""
        return f"{self.path}?{urlencode(dict(params))}"

    @property
    def origin(self) -> httpclient.Origin:
        return httpclient.Origin(self.tls, self.host, self.port, self.ssl_context)


def parse_target(url: str, path: str) -> Target:
    """Read ``http(s)://`` or ``ws(s)://host[:port]`` and the Engine.IO ``path``.

    Raises:
        ValueError: another scheme, no host, or a path in the URL (the namespace belongs in
            ``namespace=`` and the endpoint in ``path=``; guessing would connect elsewhere).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss"):
        raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use http, https, ws or wss")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    if parts.path not in ("", "/"):
        raise ValueError("put the namespace in namespace= and the endpoint in path=, not in the URL")
    tls = parts.scheme in ("https", "wss")
    if not path.startswith("/"):
        path = "/" + path
    if not path.endswith("/"):
        path += "/"
    context = ssl.create_default_context() if tls else None
    return Target(parts.hostname, parts.port or (443 if tls else 80), tls, path, context)


def _close_writer(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """One HTTP answer: status, lower-cased headers, whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


async def http_request(
    target: Target,
    method: str,
    resource: str,
    *,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    limit: int = 10_000_000,
) -> HttpAnswer:
    """Send one request on a kept-alive connection of the running loop and read the whole answer.

    Raises:
        OSError: the connection could not be made or broke.
        ConnectionClosed: the server closed it before a whole answer.
        RemoteProtocolError: not HTTP; ``PayloadTooBig`` for a body over ``limit``.
    """
    sent = dict(headers or {})
    if method == "POST":
        sent["Content-Type"] = "text/plain; charset=UTF-8"
    try:
        answer = await httpclient.arequest(target.origin, method, resource, headers=sent, body=body, max_body=limit)
    except http1.IncompleteResponse as exc:  # to the SDK a cut answer is a lost connection
        raise ConnectionClosed(exc.reason) from None
    except LocalProtocolError as exc:
        raise ValueError(str(exc)) from None
    return HttpAnswer(answer.status, answer.headers, answer.body)


class WebSocket:
    """A client WebSocket: masked frames out, messages in; pings answered by itself.

    Messages are handed over in order by :meth:`recv`; control frames never reach the
    caller. Why ``send`` is synchronous: Engine.IO writes small packets, and a write that
    never awaits cannot interleave two frames; the kernel buffer absorbs bursts.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_message_bytes: int,
        received: bytes = b"",
    ) -> None:
        self._received = received  # bytes read with the handshake's head: the first frames
        self._reader = reader
        self._writer = writer
        self._parser = wsproto.WebSocketParser(max_message_bytes=max_message_bytes, require_mask=False)
        self._ready: deque[wsproto.Message] = deque()
        self._closed = False

    @classmethod
    async def connect(
        cls,
        target: Target,
        resource: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_message_bytes: int = 10_000_000,
    ) -> WebSocket:
        """Open the TCP connection and perform the opening handshake (RFC 6455 §4.1).

        Raises:
            OSError: no TCP connection.
            UpgradeRefused: an HTTP answer other than 101.
            RemoteProtocolError: a 101 without the right ``Sec-WebSocket-Accept``.
        """
        key = base64.b64encode(secrets.token_bytes(16)).decode("ascii")
        upgrade = {
            **(headers or {}),
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        try:
            upgraded = await httpclient.aupgrade(target.origin, resource, headers=upgrade, max_line=_MAX_HEAD_LINE)
        except LocalProtocolError as exc:
            raise ValueError(str(exc)) from None
        except http1.IncompleteResponse as exc:  # to the SDK a cut answer is a lost connection
            raise ConnectionClosed(exc.reason) from None
        try:
            response = upgraded.head
            if response.status != 101:
                raise UpgradeRefused(response.status)
            answer = response.headers
            if answer.get("sec-websocket-accept", "").strip() != wsproto.accept_key(key):
                raise RemoteProtocolError("wrong Sec-WebSocket-Accept")
            if "websocket" not in answer.get("upgrade", "").lower():
                raise RemoteProtocolError("101 without Upgrade: websocket")
        except BaseException:
            _close_writer(upgraded.writer)
            raise
        return cls(upgraded.reader, upgraded.writer, max_message_bytes=max_message_bytes, received=upgraded.rest)

    def send(self, data: str | bytes) -> None:
        """Send one message (text for ``str``, binary for ``bytes``), masked.

        Raises:
            ConnectionClosed: after the connection closed.
        """
        if self._closed or self._writer.is_closing():
            raise ConnectionClosed("WebSocket closed")
        if isinstance(data, str):
            frame = wsproto.serialize_frame(wsproto.OP_TEXT, data.encode("utf-8"), mask=secrets.token_bytes(4))
        else:
            frame = wsproto.serialize_frame(wsproto.OP_BINARY, data, mask=secrets.token_bytes(4))
        self._writer.write(frame)

    def _control(self, opcode: int, payload: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(wsproto.serialize_frame(opcode, payload, mask=secrets.token_bytes(4)))

    async def recv(self) -> str | bytes:
        """The next message: ``str`` for text, ``bytes`` for binary.

        Raises:
            ConnectionClosed: the peer closed (a close frame or EOF) or :meth:`close` ran.
            RemoteProtocolError: the peer broke RFC 6455 (``PayloadTooBig``: over the
                limit); a close frame with the matching code has been sent.
        """
        while not self._ready:
            if self._closed:
                raise ConnectionClosed("WebSocket closed")
            chunk, self._received = self._received, b""
            try:
                chunk = chunk or await self._reader.read(_READ_CHUNK)
            except OSError as exc:
                self.abort()
                raise ConnectionClosed(f"transport error: {exc}") from None
            if not chunk:
                self.abort()
                raise ConnectionClosed("the server closed the connection")
            try:
                events = self._parser.feed(chunk)
            except RemoteProtocolError as exc:
                with contextlib.suppress(Exception):
                    self._control(wsproto.OP_CLOSE, wsproto.close_payload(wsproto.close_code_for(exc)))
                self.abort()
                raise
            for event in events:
                if isinstance(event, wsproto.Message):
                    self._ready.append(event)
                elif isinstance(event, wsproto.Ping):
                    self._control(wsproto.OP_PONG, event.data)  # a pong echoes the ping (§5.5.3)
                elif isinstance(event, wsproto.Close):
                    with contextlib.suppress(Exception):
                        self._control(wsproto.OP_CLOSE, wsproto.close_payload(event.code))
                    if not self._ready:
                        self.abort()
                        raise ConnectionClosed(f"the server closed the WebSocket ({event.code})")
                    self._closed = True  # hand over what came before the close first
                    break
        message = self._ready.popleft()
        if message.opcode == wsproto.OP_TEXT:
            return message.data.decode("utf-8")
        return message.data

    async def close(self, code: int = 1000) -> None:
        """Send a close frame and close the TCP connection (without waiting for the echo).

        Why not wait: the session above has already said goodbye at its own level, and a
        dead peer must not hold up a reconnect.
        """
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._control(wsproto.OP_CLOSE, wsproto.close_payload(code))
        self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now."""
        self._closed = True
        _close_writer(self._writer)
