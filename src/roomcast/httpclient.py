"""roomcast's one HTTP/1.1 client: sync and async, with keep-alive pools safe across forks.

Every caller in the package goes through here: ``Publisher`` (sync and async), the task
poller's ``GET``, the client SDK's long-polling and WebSocket handshake, and ``roomcast
tail``'s event stream. The bytes are ``protocol.http1``'s (sans-I/O: the request, the
response parser, whether a connection may be reused); this module only moves them over a
blocking socket (:func:`request`, :func:`stream`) or asyncio streams (:func:`arequest`,
:func:`aupgrade` for a WebSocket handshake).

Why our own and not httpx, measured (``bench/publisher_keepalive.py``, 1,000 sequential
publishes to a roomcast server on 127.0.0.1, both keeping the connection alive, same run):
httpx 0.29 made 1,170-1,680 publishes/s sync and 650-800 async, this module 4,060-4,910 and
3,400-4,440 (``docs/performance.md``). httpx also takes ~75 ms to import and would add
httpcore, h11, anyio, sniffio, idna and certifi to a client that needs none of them. And
it would not be the only client: the SDK's WebSocket handshake needs the raw stream after
the ``101`` and the bytes read past its head (the server's first frames), which httpx does
not hand over. The hand-written part stays small because the parser is shared and tested
byte by byte without a socket (``protocol.http1``). httptools' response parser, the other
candidate, reads a publish answer in 2 µs where ``protocol.http1`` takes 19 µs; against a
round trip of 200-250 µs that is under 8 %, and it would make a compiled server dependency
a need of every client, which today needs Python and orjson alone.

Keep-alive: a connection that ends its answer cleanly (``ResponseParser.reusable``) goes
back to a pool, so a worker that publishes 1,000 events opens one TCP connection, not
1,000. The pools are:

- per process: ``os.register_at_fork`` gives a forked child empty pools (it closes its
  copies of the parent's blocking sockets without a ``shutdown``, which would end the
  parent's connections too, and leaves its copies of async ones untouched: see
  ``_forget_in_child``), so an object made before a fork (Celery prefork, gunicorn,
  ``multiprocessing``) is safe to use on both sides: no socket is written by two processes;
- per thread for the blocking calls (a thread holds at most ``MAX_IDLE`` idle connections
  per origin) and per event loop for the async ones, so no socket is shared between
  threads or loops and no lock is needed.

A pooled connection may have been closed by the server while it sat idle (its keep-alive
timeout). It is dropped before use when the socket shows an end of stream or has been idle
over ``MAX_IDLE_SECONDS``; if the server closed it in the very instant the request was sent
(no byte of an answer came), the request is sent once more on a new connection, as browsers
do: the server cannot have acted on a request it never answered a byte of, short of a crash.

Errors: ``OSError`` (``TimeoutError`` among them) when no answer came; a
:class:`~roomcast.errors.RemoteProtocolError` (``PayloadTooBig``, ``http1.NoResponse``,
``http1.IncompleteResponse``) when the bytes are not an acceptable answer. Callers map them
to their own (``PublishError``, the poller's retry policy, the SDK's reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from roomcast.errors import BlockingCallInLoop
from roomcast.protocol import http1

__all__ = [
    "Origin",
    "parse_origin",
    "request",
    "stream",
    "Stream",
    "arequest",
    "aconnect",
    "aupgrade",
    "Upgraded",
    "ensure_no_running_loop",
    "MAX_IDLE",
    "MAX_IDLE_SECONDS",
]

MAX_IDLE: Final = 4
"""Idle connections kept per origin, per thread or per event loop."""

MAX_IDLE_SECONDS: Final = 30.0
"""A pooled connection idle longer than this is closed rather than reused (servers time
idle keep-alive connections out: roomcast after 60 s, nginx 75 s; uvicorn's 5 s is caught
by the end-of-stream check and the one retry)."""

_READ_CHUNK: Final = 65536


def ensure_no_running_loop(what: str, instead: str) -> None:
    """Raise :class:`BlockingCallInLoop` if this thread runs an event loop right now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BlockingCallInLoop(
        f"{what} blocks, and this thread is running an event loop: use `await {instead}` "
        "(or run it in a worker thread with asyncio.to_thread)"
    )


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host, port and the TLS context (one pool per origin).

    ``ssl_context`` is compared by identity, so two clients with different CAs never share
    a connection.
    """

    tls: bool
    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"


def parse_origin(url: str, ssl_context: ssl.SSLContext | None = None) -> tuple[Origin, str]:
    """The origin of an ``http(s)://`` URL and the rest of it (path and query, no trailing ``/``).

    Raises:
        ValueError: another scheme, no host, or a bad port.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the URL must start with http:// or https://, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"the URL names no host: {url!r}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:  # a port that is not a number or out of range
        raise ValueError(f"the URL has a bad port: {url!r}") from None
    if tls and ssl_context is None:
        # One per caller, made here (loading the CA store costs milliseconds, so callers
        # keep their origin); made now, it reads SSL_CERT_FILE as it is when the caller is.
        ssl_context = ssl.create_default_context()
    rest = parts.path.rstrip("/") + (f"?{parts.query}" if parts.query else "")
    return Origin(tls, parts.hostname, port, ssl_context if tls else None), rest


# -- the pools ------------------------------------------------------------------------------
class _SyncConn:
    __slots__ = ("sock", "idle_since", "__weakref__")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.idle_since = 0.0

    def usable(self) -> bool:
        """Not idle too long, and nothing to read: a readable idle socket is an EOF or garbage."""
        if time.monotonic() - self.idle_since > MAX_IDLE_SECONDS:
            return False
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable


class _AsyncConn:
    __slots__ = ("reader", "writer", "idle_since")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self) -> bool:
        if time.monotonic() - self.idle_since > MAX_IDLE_SECONDS:
            return False
        return not (self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _Pools:
    """This process's idle connections: per thread (blocking) and per event loop (async)."""

    def __init__(self) -> None:
        self.local = threading.local()
        # Every blocking connection of every thread, so a forked child can close its copies.
        self.every_sync: weakref.WeakSet[_SyncConn] = weakref.WeakSet()
        self.by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Origin, list[_AsyncConn]]] = (
            weakref.WeakKeyDictionary()
        )

    def sync_idle(self, origin: Origin) -> list[_SyncConn]:
        idle: dict[Origin, list[_SyncConn]] | None = getattr(self.local, "idle", None)
        if idle is None:
            idle = self.local.idle = {}
        return idle.setdefault(origin, [])

    def async_idle(self, origin: Origin) -> list[_AsyncConn]:
        loop = asyncio.get_running_loop()
        by_origin = self.by_loop.get(loop)
        if by_origin is None:
            by_origin = self.by_loop[loop] = {}
        return by_origin.setdefault(origin, [])


_pools = _Pools()
_inherited: list[_Pools] = []
"""In a forked child, the parent's pools: kept referenced, never used, never closed."""


def _forget_in_child() -> None:
    """After ``fork``, in the child: start with empty pools; the parent's stay the parent's.

    The child's copies of blocking sockets are closed (a close without ``shutdown`` only
    drops the child's file descriptor; the parent's connection goes on). The async ones are
    kept referenced and left alone: closing one unregisters it from its event loop's
    selector, and after a fork that epoll instance is the parent's too, so the parent's
    loop would stop reading that connection (``test_publisher_keepalive`` shows it).
    """
    global _pools
    old, _pools = _pools, _Pools()
    for conn in list(old.every_sync):
        with contextlib.suppress(OSError):
            conn.sock.close()
    old.every_sync = weakref.WeakSet()
    _inherited.append(old)


os.register_at_fork(after_in_child=_forget_in_child)


# -- blocking --------------------------------------------------------------------------------
class _Stale(Exception):
    """A reused connection ended before a byte of the answer: send again on a new one."""


# How a kept connection the server closed while it sat idle fails the next request.
_CLOSED_WHILE_IDLE: Final = (http1.NoResponse, ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _connect(origin: Origin, timeout: float) -> _SyncConn:
    sock = socket.create_connection((origin.host, origin.port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if origin.tls:
            assert origin.ssl_context is not None
            sock = origin.ssl_context.wrap_socket(sock, server_hostname=origin.host)
    except BaseException:
        sock.close()
        raise
    conn = _SyncConn(sock)
    _pools.every_sync.add(conn)
    return conn


def _exchange(conn: _SyncConn, data: bytes, parser: http1.ResponseParser, reused: bool) -> http1.Response:
    """Send ``data`` and read until ``parser`` has a head (streaming) or a whole answer."""
    sock = conn.sock
    try:
        sock.sendall(data)
        while (parser.head if parser.streaming else parser.response) is None:
            chunk = sock.recv(_READ_CHUNK)
            if chunk:
                parser.feed(chunk)
            else:
                parser.feed_eof()
    except _CLOSED_WHILE_IDLE as exc:
        if reused and not parser.seen:
            raise _Stale() from exc
        raise
    answer = parser.head if parser.streaming else parser.response
    assert answer is not None
    return answer


def _checkout(origin: Origin, timeout: float) -> tuple[_SyncConn, bool]:
    idle = _pools.sync_idle(origin)
    while idle:
        conn = idle.pop()
        if conn.usable():
            conn.sock.settimeout(timeout)
            return conn, True
        conn.sock.close()
    return _connect(origin, timeout), False


def request(
    origin: Origin,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str],
    body: bytes = b"",
    timeout: float,
    max_body: int,
    keep_alive: bool = True,
) -> http1.Response:
    """One request on a blocking socket of this thread's pool; the whole answer.

    ``timeout`` bounds each network wait (connect, each send, each read). With
    ``keep_alive=False`` the request says ``Connection: close`` and nothing is pooled.

    Raises:
        OSError: no connection, or it broke or timed out (``TimeoutError``) before an answer.
        RemoteProtocolError: not an acceptable HTTP/1.x answer (see ``protocol.http1``).
    """
    sent = dict(headers)
    if not keep_alive:
        sent["Connection"] = "close"
    data = http1.request(method, target, origin.host_header, sent, body)
    for retry in (False, True):  # the retry, after a stale kept connection, is on a new one
        conn, reused = _checkout(origin, timeout) if keep_alive and not retry else (_connect(origin, timeout), False)
        parser = http1.ResponseParser(max_body=max_body)
        try:
            answer = _exchange(conn, data, parser, reused)
        except _Stale:
            conn.sock.close()
            continue
        except BaseException:
            conn.sock.close()
            raise
        if keep_alive and parser.reusable:
            idle = _pools.sync_idle(origin)
            if len(idle) < MAX_IDLE:
                conn.idle_since = time.monotonic()
                idle.append(conn)
                return answer
        conn.sock.close()
        return answer
    raise AssertionError("unreachable: a fresh connection is never stale")  # pragma: no cover


class Stream:
    """An answer whose body is read as it comes (an event stream); close it when done.

    Attributes:
        status, reason, headers: the answer's head (header names lower-cased).
    """

    def __init__(self, conn: _SyncConn, parser: http1.ResponseParser, head: http1.Response) -> None:
        self._conn = conn
        self._parser = parser
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers

    def chunks(self) -> Iterator[bytes]:
        """Body bytes as they arrive (dechunked), until the body or the connection ends.

        Raises:
            OSError: the connection broke; ``TimeoutError`` after ``timeout`` without a byte.
            RemoteProtocolError: the body breaks HTTP framing.
        """
        parser, sock = self._parser, self._conn.sock
        pending = parser.take_body()
        if pending:
            yield pending
        while parser.response is None:
            data = sock.recv(_READ_CHUNK)
            if not data:
                with contextlib.suppress(http1.IncompleteResponse):
                    parser.feed_eof()
                rest = parser.take_body()
                if rest:
                    yield rest
                return
            parser.feed(data)
            piece = parser.take_body()
            if piece:
                yield piece

    def read(self, limit: int) -> bytes:
        """The rest of a short body (an error answer), at most ``limit`` bytes."""
        body = bytearray()
        for piece in self.chunks():
            body += piece
            if len(body) >= limit:
                break
        return bytes(body[:limit])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.sock.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(
    origin: Origin, target: str, *, headers: Mapping[str, str], timeout: float, max_chunk: int = 16 * 1024 * 1024
) -> Stream:
    """``GET`` on a connection of its own (never pooled), returned once the head is read.

    ``timeout`` bounds each network wait, so it is also the longest silence the stream
    allows. ``max_chunk`` bounds the body held between two reads.

    Raises:
        OSError, RemoteProtocolError: as :func:`request`.
    """
    data = http1.request("GET", target, origin.host_header, {**headers, "Connection": "close"})
    conn = _connect(origin, timeout)
    parser = http1.ResponseParser(max_body=max_chunk, streaming=True)
    try:
        head = _exchange(conn, data, parser, reused=False)
    except BaseException:
        conn.sock.close()
        raise
    return Stream(conn, parser, head)


# -- asyncio ---------------------------------------------------------------------------------
async def aconnect(origin: Origin) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A new TCP (and TLS) connection on the running loop; the caller bounds the time."""
    if origin.tls:
        return await asyncio.open_connection(
            origin.host, origin.port, ssl=origin.ssl_context, server_hostname=origin.host
        )
    return await asyncio.open_connection(origin.host, origin.port)


async def _aexchange(conn: _AsyncConn, data: bytes, parser: http1.ResponseParser, reused: bool) -> http1.Response:
    try:
        conn.writer.write(data)
        await conn.writer.drain()
        response = None
        while response is None:
            chunk = await conn.reader.read(_READ_CHUNK)
            response = parser.feed(chunk) if chunk else parser.feed_eof()
    except _CLOSED_WHILE_IDLE as exc:
        if reused and not parser.seen:
            raise _Stale() from exc
        raise
    return response


async def arequest(
    origin: Origin,
    method: str,
    target: str,
    *,
    headers: Mapping[str, str],
    body: bytes = b"",
    max_body: int,
    keep_alive: bool = True,
) -> http1.Response:
    """One request on a connection of the running loop's pool; the whole answer.

    The caller bounds the time (``asyncio.timeout``); a cancelled request closes its
    connection (its state is unknown). ``keep_alive=False``: ``Connection: close``, no pool.

    Raises:
        OSError: no connection, or it broke before an answer.
        RemoteProtocolError: not an acceptable HTTP/1.x answer.
    """
    sent = dict(headers)
    if not keep_alive:
        sent["Connection"] = "close"
    data = http1.request(method, target, origin.host_header, sent, body)
    idle = _pools.async_idle(origin) if keep_alive else []
    for retry in (False, True):  # the retry, after a stale kept connection, is on a new one
        conn: _AsyncConn | None = None
        while idle and not retry:
            candidate = idle.pop()
            if candidate.usable():
                conn = candidate
                break
            candidate.close()
        reused = conn is not None
        if conn is None:
            conn = _AsyncConn(*await aconnect(origin))
        parser = http1.ResponseParser(max_body=max_body)
        try:
            answer = await _aexchange(conn, data, parser, reused)
        except _Stale:
            conn.close()
            continue
        except BaseException:
            conn.close()
            raise
        if keep_alive and parser.reusable and len(idle) < MAX_IDLE:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()
        return answer
    raise AssertionError("unreachable: a fresh connection is never stale")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class Upgraded:
    """A handshake's answer and its connection, which now belongs to the caller.

    Attributes:
        head: the answer's status and headers (no body is read, whatever the status).
        rest: the bytes that came after the head: after a ``101``, the peer's first frames.
    """

    head: http1.Response
    rest: bytes
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def aupgrade(origin: Origin, target: str, *, headers: Mapping[str, str], max_line: int = 8192) -> Upgraded:
    """Send a ``GET`` with ``headers`` (an upgrade request) on a new connection; read the head.

    Never pooled: after a ``101`` the connection speaks another protocol. The caller checks
    the status and the headers, and closes ``writer`` if it does not keep the connection.
    The caller bounds the time (``asyncio.timeout``).

    Raises:
        OSError: no connection, or it broke.
        RemoteProtocolError: not an HTTP/1.x head (``http1.IncompleteResponse`` when cut).
        LocalProtocolError: ``headers`` or ``target`` cannot be sent.
    """
    data = http1.request("GET", target, origin.host_header, headers)
    reader, writer = await aconnect(origin)
    try:
        writer.write(data)
        await writer.drain()
        # head_only: whatever the status, its body is not ours to wait for.
        parser = http1.ResponseParser(max_body=0, max_line=max_line, head_only=True)
        response = None
        while response is None:
            chunk = await reader.read(_READ_CHUNK)
            response = parser.feed(chunk) if chunk else parser.feed_eof()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        raise
    return Upgraded(response, parser.rest, reader, writer)
