"""The native front door: an ``asyncio.Protocol`` over httptools, and our own WebSocket framing.

Imports L0–L4, httptools. Why its own server instead of ASGI: fan-out writes one pre-built
frame per recipient straight into ``transport.write`` (DESIGN §8), with no per-message
``await``, task or ASGI message dict. ``get_write_buffer_size()`` after each write is the
bounded outbound buffer: past ``max_buffer_bytes`` the connection is a slow consumer.

HTTP/1.1 keep-alive requests on one connection are answered in order. Each request becomes an
``HttpRequest`` for the router; a WebSocket upgrade is handed to the router's
``websocket()`` and, if accepted, the connection switches to frame parsing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

import httptools

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import websocket as wsproto
from roomcast.transports.base import (
    HttpRequest,
    HttpResponse,
    StreamAccept,
    StreamHandler,
    WebSocketAccept,
    WebSocketHandler,
    build_request,
    json_error,
)

__all__ = ["Router", "HttpProtocol", "NativeWebSocket", "NativeStream", "CoalescedOutput", "WriteCoalescer", "serve"]

logger = logging.getLogger("roomcast.native")

_STATUS = {
    101: "Switching Protocols",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    304: "Not Modified",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    426: "Upgrade Required",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Router(Protocol):
    """What the native door serves (``server.app.App``)."""

    async def http(self, request: HttpRequest) -> HttpResponse | StreamAccept: ...

    def websocket(self, request: HttpRequest) -> WebSocketAccept | HttpResponse: ...


def _render(response: HttpResponse, keep_alive: bool) -> bytes:
    head = [f"HTTP/1.1 {response.status} {_STATUS.get(response.status, 'Unknown')}"]
    if response.status not in (204, 304):  # no body, so no length (RFC 9110 §8.6)
        head.append(f"Content-Type: {response.content_type}")
        head.append(f"Content-Length: {len(response.body)}")
    for name, value in response.headers:
        head.append(f"{name}: {value}")
    if not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


class WriteCoalescer:
    """Writes each connection's outbound bytes once per event-loop iteration.

    Why: on a busy server the cost of fan-out is the ``send`` system call per recipient, not
    Python (py-spy: 78 % of a 1000-subscriber fan-out sat in ``transport.write``). When
    several publications are handled in one loop iteration — a burst of publish requests in
    one read, a batch from the broker — each recipient's frames are joined into one
    ``writelines`` (one ``writev``) at the end of the iteration instead of one ``send`` each.
    A lone publication costs one list append more than writing at once; no timer, no added
    latency beyond the current iteration.
    """

    __slots__ = ("_dirty", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[CoalescedOutput] = []
        self._scheduled = False

    def mark(self, output: CoalescedOutput) -> None:
        self._dirty.append(output)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for output in dirty:
            output.flush()


class CoalescedOutput:
    """Outbound bytes of one connection, written by the ``WriteCoalescer`` (a WebSocket's
    frames, a Server-Sent Events stream's events).

    ``write`` keeps a reference (or appends, when this connection already has bytes waiting
    in this loop iteration) and returns ``False`` once the last flush left the transport's
    buffer over ``high_water``: the hub then disconnects a slow consumer.
    """

    __slots__ = ("transport", "high_water", "coalescer", "closing", "_out", "_over", "_lost")

    def __init__(self, transport: asyncio.Transport, *, high_water: int, coalescer: WriteCoalescer | None) -> None:
        self.transport = transport
        self.high_water = high_water
        self.coalescer = coalescer if coalescer is not None else WriteCoalescer()
        self.closing = False
        self._out: bytes | list[bytes] | None = None
        self._over = False
        self._lost = False

    def write(self, data: bytes) -> bool:
        if self.closing:
            return True
        out = self._out
        if out is None:
            self._out = data  # the common case: a reference, no allocation
            self.coalescer.mark(self)
        elif isinstance(out, list):
            out.append(data)
        else:
            self._out = [out, data]
        return not self._over

    def flush(self) -> None:
        """Write what is queued (called by the coalescer, and before closing)."""
        out = self._out
        if out is None:
            return
        self._out = None
        transport = self.transport
        if self._lost or transport.is_closing():
            return
        if isinstance(out, list):
            transport.writelines(out)
        else:
            transport.write(out)
        self._over = transport.get_write_buffer_size() > self.high_water


class NativeStream(CoalescedOutput):
    """A streaming HTTP response (a ``StreamChannel``), delimited by closing the connection."""

    __slots__ = ("handler",)

    def __init__(self, transport: asyncio.Transport, *, high_water: int, coalescer: WriteCoalescer | None) -> None:
        super().__init__(transport, high_water=high_water, coalescer=coalescer)
        self.handler: StreamHandler | None = None

    def close(self) -> None:
        if self.closing:
            return
        if self._over:
            self.closing = True
            self.transport.abort()  # a slow consumer: do not wait behind what it never read
            return
        self.flush()
        self.closing = True
        self.transport.close()  # after the buffer drains: the end of the response

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = self.closing = True
        if self.handler is not None:
            self.handler.on_close()


class NativeWebSocket(CoalescedOutput):
    """A server-side WebSocket on an asyncio transport (a ``WebSocketChannel``).

    Outbound frames wait until the ``WriteCoalescer`` flushes them at the end of the loop
    iteration (in order; a close flushes first). The outbound limit is checked at each
    flush, so ``send``/``send_frames`` report a slow consumer from the last flush on.
    """

    native_frames = True
    __slots__ = ("parser", "handler", "_close_timer")

    def __init__(
        self,
        transport: asyncio.Transport,
        *,
        max_message_bytes: int,
        high_water: int,
        coalescer: WriteCoalescer | None = None,
    ) -> None:
        super().__init__(transport, high_water=high_water, coalescer=coalescer)
        self.parser = wsproto.WebSocketParser(max_message_bytes=max_message_bytes, require_mask=True)
        self.handler: WebSocketHandler | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    def send(self, data: str | bytes) -> bool:
        if isinstance(data, str):
            return self.write(wsproto.text_frame(data))
        return self.write(wsproto.binary_frame(data))

    def send_frames(self, frames: bytes) -> bool:
        return self.write(frames)

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closing:
            return
        transport = self.transport
        if transport.is_closing():
            self.closing = True
            return
        if self._over:
            # A slow consumer: a close frame would queue behind what it never read.
            self.closing = True
            transport.abort()
            return
        self.flush()
        self.closing = True
        transport.write(wsproto.close_frame(code, reason))
        # Wait briefly for the peer's close frame, then drop the TCP connection anyway.
        self._close_timer = asyncio.get_running_loop().call_later(2.0, self.transport.close)

    def feed(self, data: bytes) -> None:
        try:
            events = self.parser.feed(data)
        except RemoteProtocolError as exc:
            logger.debug("websocket protocol error: %s", exc)
            code = wsproto.close_code_for(exc)
            self.close(code, exc.reason[:100])
            self.transport.close()
            return
        handler = self.handler
        for event in events:
            if isinstance(event, wsproto.Message):
                if handler is not None and not self.closing:
                    payload = event.data
                    handler.on_message(payload.decode() if event.opcode == wsproto.OP_TEXT else payload)
            elif isinstance(event, wsproto.Ping):
                if not self.closing:
                    self.transport.write(wsproto.serialize_frame(wsproto.OP_PONG, event.data))
            elif isinstance(event, wsproto.Close):
                if not self.closing:
                    self.flush()
                    self.closing = True
                    echo = 1000 if event.code == 1005 else event.code
                    self.transport.write(wsproto.close_frame(echo))
                self.transport.close()
                return

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self.closing = True
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.handler is not None:
            self.handler.on_close(1006)


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 requests, possibly upgraded to a WebSocket.

    Slotted, with its keep-alive queue made on first use and its HTTP parser and header
    buffers dropped once upgraded: an idle WebSocket keeps only what it still needs
    (docs/performance.md, idle memory per connection).
    """

    __slots__ = (
        "router", "max_body_bytes", "max_buffer_bytes", "coalescer", "transport", "parser", "ws", "stream",
        "_url", "_headers", "_body", "_body_size", "_pending", "_upgrade", "_task", "_too_big",
    )

    def __init__(
        self,
        router: Router,
        *,
        max_body_bytes: int,
        max_buffer_bytes: int,
        coalescer: WriteCoalescer | None = None,
    ) -> None:
        self.router = router
        self.coalescer = coalescer if coalescer is not None else WriteCoalescer()
        self.max_body_bytes = max_body_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.ws: NativeWebSocket | None = None
        self.stream: NativeStream | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._pending: deque[tuple[HttpRequest, bool]] | None = None
        self._upgrade: HttpRequest | None = None
        self._task: asyncio.Task[None] | None = None
        self._too_big = False

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        if self.parser is None or self.stream is not None:
            return  # answered and closing, or streaming a response: nothing more to read
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._start_websocket(data[offset:])
        except httptools.HttpParserError as exc:
            logger.debug("bad HTTP request: %s", exc)
            self._reply_and_close(json_error(400, 3, "Bad request"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ws is not None:
            self.ws.connection_lost()
        if self.stream is not None:
            self.stream.connection_lost()
        if self._task is not None:
            self._task.cancel()
        self._pending = None

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._body = []
        self._body_size = 0
        self._too_big = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.max_body_bytes:
            self._too_big = True
        elif not self._too_big:
            self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self.parser
        assert parser is not None  # httptools calls back only from feed_data
        request = self._build(parser)
        if parser.should_upgrade():
            self._upgrade = request
            return
        keep_alive = parser.should_keep_alive() and not self._too_big
        if self._pending is None:
            self._pending = deque()
        self._pending.append((request, keep_alive))
        if self._task is None:
            self._task = asyncio.ensure_future(self._serve_pending())

    # -- requests ---------------------------------------------------------------------
    def _build(self, parser: httptools.HttpRequestParser) -> HttpRequest:
        url = httptools.parse_url(self._url)
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return build_request(
            parser.get_method().decode(),
            url.path.decode("latin-1"),
            url.query or b"",
            self._headers,
            body=b"".join(self._body),
            client=(peer[0], peer[1]) if peer else ("", 0),
            body_too_large=self._too_big,
        )

    async def _serve_pending(self) -> None:
        try:
            while self._pending:
                request, keep_alive = self._pending.popleft()
                try:
                    response: HttpResponse | StreamAccept = await self.router.http(request)
                except Exception:
                    logger.exception("request %s %s failed", request.method, request.path)
                    response = json_error(500, 500, "Internal server error")
                if self.transport is None or self.transport.is_closing():
                    return
                if isinstance(response, StreamAccept):
                    self._start_stream(response)
                    return
                self.transport.write(_render(response, keep_alive))
                if not keep_alive:
                    self.transport.close()
                    return
        finally:
            self._task = None

    def _start_stream(self, accept: StreamAccept) -> None:
        """Send the head of a streaming response; the body is whatever the transport writes."""
        transport = self.transport
        assert transport is not None
        self.parser = None
        self._pending = None
        head = [f"HTTP/1.1 {accept.status} {_STATUS.get(accept.status, 'Unknown')}",
                f"Content-Type: {accept.content_type}", "Cache-Control: no-cache", "Connection: close"]
        head.extend(f"{name}: {value}" for name, value in accept.headers)
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        stream = self.stream = NativeStream(transport, high_water=self.max_buffer_bytes, coalescer=self.coalescer)
        stream.handler = accept.start(stream)

    def _reply_and_close(self, response: HttpResponse) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_render(response, keep_alive=False))
            self.transport.close()

    def _start_websocket(self, rest: bytes) -> None:
        request, self._upgrade = self._upgrade, None
        # From here on this connection speaks frames: drop the HTTP parser and its buffers.
        self.parser = None
        self._url, self._headers, self._body = b"", [], []
        transport = self.transport
        if request is None or transport is None:
            self._reply_and_close(json_error(400, 3, "Bad request"))
            return
        if request.headers.get("upgrade", "").lower() != "websocket":
            self._reply_and_close(json_error(400, 3, "Unsupported upgrade"))
            return
        try:
            accept_key = wsproto.check_client_handshake(request.method, request.headers)
        except RemoteProtocolError as exc:
            logger.debug("bad websocket handshake: %s", exc)
            self._reply_and_close(json_error(400, 3, "Bad request"))
            return
        decision = self.router.websocket(request)
        if isinstance(decision, HttpResponse):
            self._reply_and_close(decision)
            return
        transport.write(wsproto.handshake_response(accept_key, subprotocol=decision.subprotocol))
        ws = self.ws = NativeWebSocket(
            transport,
            max_message_bytes=self.max_body_bytes,
            high_water=self.max_buffer_bytes,
            coalescer=self.coalescer,
        )
        ws.handler = decision.start(ws)
        if rest:
            ws.feed(rest)


async def serve(
    router: Router,
    host: str,
    port: int,
    *,
    max_body_bytes: int = 1_000_000,
    max_buffer_bytes: int = 4_000_000,
    backlog: int = 2048,
    **kwargs: Any,
) -> asyncio.Server:
    """Start listening; returns the ``asyncio.Server`` (``port=0`` picks a free port)."""
    loop = asyncio.get_running_loop()
    coalescer = WriteCoalescer()  # one per server: one flush per loop iteration for all its sockets
    return await loop.create_server(
        lambda: HttpProtocol(
            router, max_body_bytes=max_body_bytes, max_buffer_bytes=max_buffer_bytes, coalescer=coalescer
        ),
        host,
        port,
        backlog=backlog,
        **kwargs,
    )
