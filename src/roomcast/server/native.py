"""The native front door: an ``asyncio.Protocol`` over httptools, and our own WebSocket framing.

Imports L0–L4, httptools. Why its own server instead of ASGI: fan-out writes one pre-built
frame per recipient straight into ``transport.write`` (DESIGN §8), with no per-message
``await``, task or ASGI message dict. ``get_write_buffer_size()`` after each write is the
bounded outbound buffer: past ``max_buffer_bytes`` the connection is a slow consumer.

Its parts: ``server.door_limits`` (what a connection may cost), ``server.native_output`` (the
outbound side: coalesced writes, streams, WebSockets, slow consumers) and this module (the
HTTP side and the connection gate).

HTTP/1.1 keep-alive requests on one connection are answered in order. Each request becomes an
``HttpRequest`` for the router; a WebSocket upgrade is handed to the router's
``websocket()`` and, if accepted, the connection switches to frame parsing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from ssl import SSLContext
from typing import Any, Final, Protocol

import httptools

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import websocket as wsproto
from roomcast.server.config import Settings
from roomcast.server.door_limits import DoorCounters, DoorLimits
from roomcast.server.logs import log_refused, log_request
from roomcast.server.native_output import (
    SLOW_GOODBYE_SECONDS,
    CoalescedOutput,
    NativeStream,
    NativeWebSocket,
    WriteCoalescer,
)
from roomcast.server.proxy import ProxyTrust
from roomcast.transports.base import (
    HttpRequest,
    HttpResponse,
    StreamAccept,
    WebSocketAccept,
    build_request,
    json_error,
)

__all__ = [
    "Router",
    "DoorLimits",
    "DoorCounters",
    "ConnectionGate",
    "HttpProtocol",
    "NativeWebSocket",
    "NativeStream",
    "CoalescedOutput",
    "WriteCoalescer",
    "serve",
    "SLOW_GOODBYE_SECONDS",
]

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
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    414: "URI Too Long",
    415: "Unsupported Media Type",
    426: "Upgrade Required",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Router(Protocol):
    """What the native door serves (``server.app.App``)."""

    async def http(self, request: HttpRequest) -> HttpResponse | StreamAccept: ...

    def websocket(self, request: HttpRequest) -> WebSocketAccept | HttpResponse: ...


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the door will not take."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status)
        self.response = response


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


class ConnectionGate:
    """The door's connections, counted in all and per client address (one per server).

    Why at TCP accept: a connection costs a file descriptor and memory from the moment it is
    accepted, whatever it then does (idles, sends a slowloris head, opens a WebSocket that
    never speaks), so counting it there bounds them all before a byte is parsed. Past
    ``DoorLimits.max_connections`` a new connection is answered ``503``, past
    ``max_connections_per_address`` ``429`` (each a JSON error, rendered once here), and
    closed; ``DoorCounters`` counts both. Per address only while that limit is on: the map
    then holds one entry per address with a connection open.
    """

    __slots__ = ("max_total", "max_per_address", "counters", "open", "per_address", "_full", "_crowded")

    def __init__(self, limits: DoorLimits, counters: DoorCounters) -> None:
        self.max_total = limits.max_connections
        self.max_per_address = limits.max_connections_per_address
        self.counters = counters
        self.open = 0
        self.per_address: dict[str, int] = {}
        self._full = _render(
            json_error(503, 503, f"the server holds its most connections ({self.max_total}); try again later"),
            keep_alive=False,
        )
        self._crowded = _render(
            json_error(429, 429, f"at most {self.max_per_address} connections per client address"), keep_alive=False
        )

    def admit(self, address: str) -> bytes | None:
        """Count a new connection from ``address``, or return the answer that turns it away."""
        per_address, held = self.max_per_address, 0
        if per_address:
            held = self.per_address.get(address, 0)
            if held >= per_address:
                self.counters.refused_per_address += 1
                return self._crowded
        if self.max_total and self.open >= self.max_total:
            self.counters.refused_connections += 1
            return self._full
        if per_address:
            self.per_address[address] = held + 1
        self.open += 1
        self.counters.open_connections += 1
        self.counters.accepted_connections += 1
        return None

    def release(self, address: str) -> None:
        """A connection ``admit`` counted has ended."""
        self.open -= 1
        self.counters.open_connections -= 1
        if self.max_per_address:
            held = self.per_address.pop(address) - 1
            if held:
                self.per_address[address] = held


TURN_AWAY_SECONDS = 1.0
"""How long a connection turned away at the gate is still read (and what it sends dropped)
after its answer, unless it closes first: closing a socket with unread input resets it, and a
reset can destroy the answer before the client reads it."""


_NO_PARTS: Final[list[Any]] = []
"""What an upgraded connection keeps of its request's parts: one shared list, never
appended to (the parser that fills the parts is gone), instead of three empty lists each."""


class HttpProtocol(asyncio.Protocol):
    """One TCP connection: HTTP/1.1 requests, possibly upgraded to a WebSocket.

    Slotted, with its keep-alive queue made on first use and its HTTP parser and header
    buffers dropped once upgraded: an idle WebSocket keeps only what it still needs
    (docs/performance.md, idle memory per connection).

    Every limit of ``DoorLimits`` is held here, before the request reaches the router: the
    head is counted as it arrives (httptools would otherwise gather an endless header in
    quadratic time), a request must arrive within ``request_timeout``, an idle keep-alive
    connection is closed after ``keepalive_timeout``, and past ``output_high_water`` of
    unread output the door stops reading from the client and serving its pipelined requests
    (asyncio's ``pause_writing``), cutting it past ``max_buffer_bytes``.
    """

    __slots__ = (
        "router",
        "limits",
        "coalescer",
        "gate",
        "proxies",
        "scheme",
        "_address",
        "transport",
        "parser",
        "ws",
        "stream",
        "_url",
        "_url_size",
        "_headers",
        "_head_size",
        "_in_head",
        "_stall",
        "_progress",
        "_body",
        "_body_size",
        "_pending",
        "_upgrade",
        "_task",
        "_too_big",
        "_timer",
        "_paused",
        "_drained",
    )

    def __init__(
        self,
        router: Router,
        *,
        limits: DoorLimits,
        coalescer: WriteCoalescer | None = None,
        gate: ConnectionGate | None = None,
        proxies: ProxyTrust | None = None,
        tls: bool = False,
    ) -> None:
        self.router = router
        self.proxies = proxies  # whose forwarding headers count (server.proxy); None: nobody's
        self.scheme = "https" if tls else "http"
        self.limits = limits
        self.coalescer = coalescer if coalescer is not None else WriteCoalescer()
        self.gate = gate if gate is not None else ConnectionGate(limits, self.coalescer.counters)
        self._address: str | None = None  # set while the gate counts this connection
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.ws: NativeWebSocket | None = None
        self.stream: NativeStream | None = None
        self._url: list[bytes] = []
        self._url_size = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._in_head = True
        self._stall = 0
        self._progress = False
        self._body: list[bytes] = []
        self._body_size = 0
        self._pending: deque[tuple[HttpRequest, bool]] | None = None
        self._upgrade: HttpRequest | None = None
        self._task: asyncio.Task[None] | None = None
        self._too_big = False
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""  # a Unix socket: ""
        refusal = self.gate.admit(address)
        if refusal is not None:
            self._turn_away(refusal)
            return
        self._address = address
        transport.set_write_buffer_limits(high=self.limits.output_high_water)  # type: ignore[attr-defined]
        self._arm(self.limits.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        if self.parser is None or self.stream is not None:
            return  # answered and closing, or streaming a response: nothing more to read
        self._progress = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._start_websocket(data[offset:])
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse_with(refused.response)
            else:
                logger.exception("HTTP parser callback failed")
                self._reply_and_close(json_error(500, 500, "Internal server error"))
        except httptools.HttpParserError as exc:
            log_refused("native", 400, "bad HTTP request", str(exc))
            self.coalescer.counters.bad_requests += 1
            self._reply_and_close(json_error(400, 3, "Bad request"))
        else:
            # httptools gathers a header line in one growing string, so a line that never ends
            # would cost quadratic time: bytes fed with no parser progress count, and end it.
            if self._in_head and self.parser is not None:
                self._stall = 0 if self._progress else self._stall + len(data)
                if self._stall > self.limits.max_header_bytes:
                    self._refuse(431, f"a request head line is longer than {self.limits.max_header_bytes} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            self.gate.release(self._address)
            self._address = None
        if self.ws is not None:
            self.ws.connection_lost()
        if self.stream is not None:
            self.stream.connection_lost()
        if self._task is not None:
            self._task.cancel()
        self._pending = None
        if self._drained is not None and not self._drained.done():
            self._drained.cancel()

    def pause_writing(self) -> None:
        """Past ``output_high_water`` of unread output: stop reading from this client."""
        self._paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._progress = True
        self._url, self._url_size = [], 0
        self._headers = []
        self._head_size = 0
        self._in_head = True
        self._body = []
        self._body_size = 0
        self._too_big = False
        self._arm(self.limits.request_timeout)

    def on_url(self, url: bytes) -> None:
        self._progress = True
        self._url_size += len(url)
        if self._url_size > self.limits.max_request_line:
            raise _Refused(
                json_error(414, 3, f"the request target is longer than {self.limits.max_request_line} bytes")
            )
        self._url.append(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progress = True
        headers = self._headers
        if len(headers) >= self.limits.max_headers:
            raise _Refused(json_error(431, 3, f"more than {self.limits.max_headers} header lines"))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.limits.max_header_bytes:
            raise _Refused(json_error(431, 3, f"the headers are larger than {self.limits.max_header_bytes} bytes"))
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stall = 0
        for name, value in self._headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue":
                self._continue()
                return

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.limits.max_body_bytes:
            self._too_big = True
        elif not self._too_big:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._disarm()
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

    # -- limits -------------------------------------------------------------------------
    def _continue(self) -> None:
        """``Expect: 100-continue``: go ahead if the announced body is acceptable, 413 if not."""
        transport = self.transport
        if transport is None or self.parser is None:
            return
        length = next((v for n, v in self._headers if n.lower() == b"content-length"), b"")
        if length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise _Refused(json_error(413, 3, f"the body may be at most {self.limits.max_body_bytes} bytes"))
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _turn_away(self, answer: bytes) -> None:
        """Answer a connection the gate refused and close it, parsing nothing it sends.

        The answer and a FIN go out at once; what the client sends meanwhile (its request
        was probably on its way) is read and dropped until it closes, or for at most
        ``TURN_AWAY_SECONDS`` (``connection_lost`` cancels that timer).
        """
        transport = self.transport
        assert transport is not None
        self.parser = None  # data_received then drops everything
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(TURN_AWAY_SECONDS, transport.abort)
        else:  # TLS: no half-close
            transport.close()

    def _refuse(self, status: int, message: str) -> None:
        self._refuse_with(json_error(status, 3, message))

    def _refuse_with(self, response: HttpResponse) -> None:
        self.coalescer.counters.refused_heads += 1
        log_refused("native", response.status, "request head")
        self._reply_and_close(response)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or self.ws is not None or self.stream is not None:
            return
        if self._task is not None:
            return  # a request is being answered: the timer starts again after it
        self.coalescer.counters.timeouts += 1
        if self._in_head and self._head_size or not self._in_head:
            self._reply_and_close(json_error(408, 3, "the request did not arrive in time"))
        else:
            transport.close()  # an idle keep-alive connection (or one that never spoke)

    # -- requests ---------------------------------------------------------------------
    def _build(self, parser: httptools.HttpRequestParser) -> HttpRequest:
        url = httptools.parse_url(b"".join(self._url))
        peer = self.transport.get_extra_info("peername") if self.transport else None
        request = build_request(
            parser.get_method().decode(),
            url.path.decode("latin-1"),
            url.query or b"",
            self._headers,
            body=b"".join(self._body),
            client=(peer[0], peer[1]) if peer else ("", 0),
            body_too_large=self._too_big,
            scheme=self.scheme,
        )
        proxies = self.proxies
        if proxies is not None and proxies.trusts(request.client[0]):
            return proxies.apply(request)
        return request

    async def _serve_pending(self) -> None:
        try:
            while self._pending:
                request, keep_alive = self._pending.popleft()
                try:
                    response: HttpResponse | StreamAccept = await self.router.http(request)
                except Exception:
                    logger.exception("request %s %s failed", request.method, request.path)
                    response = json_error(500, 500, "Internal server error")
                log_request("native", request.method, request.path, getattr(response, "status", 200))
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                if isinstance(response, StreamAccept):
                    self._start_stream(response)
                    return
                transport.write(_render(response, keep_alive))
                if not keep_alive:
                    transport.close()
                    return
                if transport.get_write_buffer_size() > self.limits.max_buffer_bytes:
                    self.coalescer.counters.output_cut += 1
                    transport.abort()  # it asks and never reads: past the hard limit
                    return
                if self._paused:  # serve the next pipelined request once it reads this
                    self._drained = asyncio.get_running_loop().create_future()
                    await self._drained
        finally:
            self._task = None
            if self.ws is None and self.stream is None and self.parser is not None and not self._pending:
                # the next request has begun arriving: it has the request timeout; else idle
                self._arm(
                    self.limits.request_timeout if self._in_head and self._url_size else self.limits.keepalive_timeout
                )

    def _start_stream(self, accept: StreamAccept) -> None:
        """Send the head of a streaming response; the body is whatever the transport writes."""
        transport = self.transport
        assert transport is not None
        self.parser = None
        self._pending = None
        head = [
            f"HTTP/1.1 {accept.status} {_STATUS.get(accept.status, 'Unknown')}",
            f"Content-Type: {accept.content_type}",
            "Cache-Control: no-cache",
            "Connection: close",
        ]
        head.extend(f"{name}: {value}" for name, value in accept.headers)
        transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        self._disarm()
        stream = self.stream = NativeStream(
            transport, high_water=self.limits.max_buffer_bytes, coalescer=self.coalescer
        )
        stream.handler = accept.start(stream)

    def _reply_and_close(self, response: HttpResponse) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_render(response, keep_alive=False))
            self.transport.close()

    def _start_websocket(self, rest: bytes) -> None:
        request, self._upgrade = self._upgrade, None
        # From here on this connection speaks frames: drop the HTTP parser and its buffers.
        self.parser = None
        self._url = self._headers = self._body = _NO_PARTS
        self._disarm()
        transport = self.transport
        if request is None or transport is None:
            self._reply_and_close(json_error(400, 3, "Bad request"))
            return
        if request.headers.get("upgrade", "").lower() != "websocket":
            self.coalescer.counters.bad_requests += 1
            self._reply_and_close(json_error(400, 3, "Unsupported upgrade"))
            return
        try:
            accept_key = wsproto.check_client_handshake(request.method, request.headers)
        except RemoteProtocolError as exc:
            log_refused("native", 400, "websocket handshake", str(exc))
            self.coalescer.counters.bad_requests += 1
            self._reply_and_close(json_error(400, 3, "Bad request"))
            return
        decision = self.router.websocket(request)
        log_request("native", request.method, request.path, getattr(decision, "status", 101))
        if isinstance(decision, HttpResponse):
            self._reply_and_close(decision)
            return
        transport.write(wsproto.handshake_response(accept_key, subprotocol=decision.subprotocol))
        ws = self.ws = NativeWebSocket(
            transport,
            max_message_bytes=self.limits.max_body_bytes,
            high_water=self.limits.max_buffer_bytes,
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
    limits: DoorLimits | None = None,
    counters: DoorCounters | None = None,
    backlog: int = 2048,
    proxies: ProxyTrust | None = None,
    ssl: SSLContext | None = None,
    coalescer: WriteCoalescer | None = None,
    **kwargs: Any,
) -> asyncio.Server:
    """Start listening; returns the ``asyncio.Server`` (``port=0`` picks a free port).

    ``counters``, when given, is where the door counts what it refused or cut. ``proxies``:
    the reverse proxies whose forwarding headers count (``server.proxy``). ``ssl``: serve
    HTTPS and WSS with this context (``server.tls``); the door keeps no reference of its
    own, so ``load_cert_chain`` on it later changes what new handshakes present.
    ``coalescer``: the door's writes are gathered there (a new one, counting in ``counters``,
    by default); ``server.runner`` gives the one the hub holds (``Hub.write_hold``).
    """
    loop = asyncio.get_running_loop()
    door = limits if limits is not None else DoorLimits.from_settings(Settings())
    if coalescer is None:  # one per server: one flush per loop iteration for all its sockets
        coalescer = WriteCoalescer(counters)
    gate = ConnectionGate(door, coalescer.counters)  # one per server: its connection limits
    return await loop.create_server(
        lambda: HttpProtocol(router, limits=door, coalescer=coalescer, gate=gate, proxies=proxies, tls=ssl is not None),
        host,
        port,
        backlog=backlog,
        ssl=ssl,
        **kwargs,
    )
