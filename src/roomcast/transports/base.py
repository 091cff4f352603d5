"""What both front doors hand to a transport, and what a transport hands back.

Imports only L0. A transport never imports ASGI, httptools or asyncio's protocol classes:
the native door and the ASGI door both build an ``HttpRequest``, and both offer an open
WebSocket as a ``WebSocketChannel``. So every transport runs unchanged behind either door.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol
from urllib.parse import parse_qs, parse_qsl, urlsplit

from roomcast import _json

__all__ = [
    "StreamAccept",
    "StreamChannel",
    "StreamHandler",
    "HttpRequest",
    "HttpResponse",
    "WebSocketChannel",
    "WebSocketHandler",
    "WebSocketAccept",
    "CorsPolicy",
    "json_error",
    "api_error",
    "build_request",
]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One HTTP request, already parsed.

    Attributes:
        method: upper case.
        path: the URL path, without the query.
        query: every query parameter; the first value of a repeated one is ``query[name]``,
            all of them are in ``query_all``.
        headers: lower-cased names; repeated headers joined with ", ".
        body: the whole body; empty when ``body_too_large``.
        client: the peer's address, ``(host, port)``.
        body_too_large: the body passed the door's size limit and was dropped; the route
            answers 413 (and Engine.IO also closes the session, as the official server does).
        scheme: ``"https"`` when the client used TLS, to the door or to a trusted proxy
            (``server.proxy``), else ``"http"``.
    """

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    client: tuple[str, int] = ("", 0)
    raw_query: str = ""
    body_too_large: bool = False
    scheme: str = "http"

    @property
    def query_all(self) -> dict[str, list[str]]:
        """Every value of every query parameter (``?room=a&room=b``), parsed on demand."""
        return parse_qs(self.raw_query, keep_blank_values=True) if self.raw_query else {}

    def keeping_headers(self, names: Iterable[str]) -> HttpRequest:
        """This request with only the headers ``names`` (lower case) and no body.

        For what outlives the request: a session holds its handshake for as long as the
        client stays, and a browser's headers (cookies, user agent, the accept-* family)
        run to a kilobyte or more that every idle connection would carry for nothing.
        """
        headers = self.headers
        kept = {name: headers[name] for name in names if name in headers}
        return replace(self, headers=kept or _NO_HEADERS, body=b"")


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})
"""The headers of a kept request that kept none: one shared empty mapping."""


def build_request(
    method: str,
    path: str,
    raw_query: bytes,
    raw_headers: Iterable[tuple[bytes, bytes]],
    *,
    body: bytes = b"",
    client: tuple[str, int] = ("", 0),
    body_too_large: bool = False,
    scheme: str = "http",
) -> HttpRequest:
    """Build an ``HttpRequest`` from wire values; both front doors call this one function."""
    query_text = raw_query.decode("latin-1")
    query: dict[str, str] = {}
    if query_text:
        for param, param_value in parse_qsl(query_text, keep_blank_values=True):
            query.setdefault(param, param_value)
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return HttpRequest(
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=body,
        client=client,
        raw_query=query_text,
        body_too_large=body_too_large,
        scheme=scheme,
    )


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "text/plain; charset=UTF-8"


def json_error(status: int, code: int, message: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """An error answer in the shape the official Engine.IO server uses: ``{code, message}``."""
    return HttpResponse(
        status,
        _json.dumps({"code": code, "message": message}),
        headers or [],
        "application/json",
    )


def api_error(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    """The JSON error of roomcast's own HTTP routes (``/api/``, ``/sse``): ``{"error": {code, message}}``.

    ``json_error`` keeps the Engine.IO shape for the Socket.IO endpoint, where the official
    clients and suites read it.
    """
    body = _json.dumps({"error": {"code": code, "message": message}})
    return HttpResponse(status, body, headers or [], "application/json")


class WebSocketChannel(Protocol):
    """An open WebSocket as a front door offers it to a transport.

    The door enforces the message size limit (``Settings.max_payload``) before a message
    reaches the handler, closing with 1009; transports do not check it again.

    ``native_frames`` is ``True`` when ``send_frames`` accepts ready RFC 6455 frame bytes
    (the native door); the ASGI door can only send whole messages.
    """

    native_frames: bool

    def send(self, data: str | bytes) -> bool:
        """Send one message (text if ``str``); ``False`` when over the outbound limit."""

    def send_frames(self, frames: bytes) -> bool:
        """Write pre-built frames (native door only); ``False`` when over the limit."""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; the handler's ``on_close`` follows."""


class WebSocketHandler(Protocol):
    """What a transport does with an open WebSocket."""

    def on_message(self, data: str | bytes) -> None:
        """A whole message arrived (text as ``str``)."""

    def on_close(self, code: int) -> None:
        """The WebSocket is gone (closing handshake done, or the connection lost)."""


@dataclass(frozen=True, slots=True)
class WebSocketAccept:
    """A transport's yes to a WebSocket handshake: the door completes it, then calls ``start``."""

    start: Callable[[WebSocketChannel], WebSocketHandler]
    subprotocol: str | None = None


class StreamChannel(Protocol):
    """An open streaming HTTP response (Server-Sent Events) as a front door offers it.

    The native door writes the bytes as they are (the response is delimited by the end of
    the connection, so there is no per-write chunk framing to build); the ASGI door hands
    them to the host as ``http.response.body`` messages with ``more_body``.
    """

    def write(self, data: bytes) -> bool:
        """Queue ``data``; ``False`` when the connection is over its outbound limit."""

    def close(self) -> None:
        """End the response after what is queued; the handler's ``on_close`` follows."""


class StreamHandler(Protocol):
    """What a transport does with an open streaming response."""

    def on_close(self) -> None:
        """The response ended: closed by the transport, or the client went away."""


@dataclass(frozen=True, slots=True)
class StreamAccept:
    """A route's yes to a streaming response: the door sends the head, then calls ``start``.

    ``start`` runs once the head is on its way; everything the transport writes from then on
    is body. ``headers`` should not include ``Content-Type`` (``content_type`` is it).
    """

    start: Callable[[StreamChannel], StreamHandler]
    content_type: str = "text/event-stream"
    headers: list[tuple[str, str]] = field(default_factory=list)
    status: int = 200


class CorsPolicy:
    """Which browser origins may talk to the server.

    Args:
        origins: allowed origins (``"https://app.example"``), or ``["*"]`` for any. Empty
            means same-origin only: the ``Origin`` must name the host the request was sent to.
            Requests without an ``Origin`` header (non-browser clients) are always allowed.
    """

    def __init__(self, origins: list[str] | tuple[str, ...] = ()) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.rstrip("/") for o in origins if o != "*")

    def allowed(self, request: HttpRequest) -> bool:
        origin = request.headers.get("origin")
        if origin is None or self.any:
            return True
        if origin in self.origins:
            return True
        if not self.origins:
            host = request.headers.get("host", "")
            return urlsplit(origin).netloc == host and host != ""
        return False

    def headers(self, request: HttpRequest) -> list[tuple[str, str]]:
        """Response headers for an allowed request (none without an ``Origin``)."""
        origin = request.headers.get("origin")
        if origin is None:
            return []
        return [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]

    def preflight(self, request: HttpRequest) -> HttpResponse:
        """Answer an ``OPTIONS`` preflight."""
        if not self.allowed(request):
            return json_error(403, 4, "Origin not allowed")
        headers = self.headers(request)
        headers.append(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
        requested = request.headers.get("access-control-request-headers")
        if requested:
            headers.append(("Access-Control-Allow-Headers", requested))
        headers.append(("Access-Control-Max-Age", "600"))
        return HttpResponse(204, b"", headers)
