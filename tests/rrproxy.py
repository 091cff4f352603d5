"""A round-robin HTTP load balancer for tests: no sticky sessions, on purpose.

It stands between clients and several ``roomcast serve`` nodes as a plain load balancer
would, without session affinity. It reads each HTTP/1.1 request a client sends (client
connections may be kept alive) and sends it on a new connection to the next node in turn
(``Connection: close``: one request per upstream connection), so two consecutive requests of
one Engine.IO session land on different nodes. A WebSocket handshake goes to the node picked
the same way (or to ``upgrades_to`` if given, so a test can decide whether the upgrade
reaches the session's owner); once the node answers 101, the bytes are piped both ways
until either side closes. A node that refuses connections (a killed process) is skipped, as
a load balancer's health check would, and the next one is tried.

Every request is recorded (``log``): the node it went to, its method and target, the status
it got, so tests can count what each node saw. Anything the proxy could not handle is kept in
``errors``; tests assert it stays empty.

asyncio only, no third-party code; bodies are framed by ``Content-Length`` (what both the
official Socket.IO client and aiohttp send for polling), a chunked request is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

__all__ = ["RoundRobinProxy", "Routed"]

_HEAD_LIMIT = 64 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


@dataclass(frozen=True)
class Routed:
    """One request the proxy passed on, and what came back."""

    upstream: int
    """Index of the node it went to (in the order given to the proxy)."""
    method: str
    target: str
    """The request target: path and query."""
    status: int
    """The node's status; 502 when the node could not be reached or cut the answer."""
    websocket: bool
    """A WebSocket handshake (then piped, when the status is 101)."""

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}

    @property
    def sid(self) -> str | None:
        return self.query.get("sid")


@dataclass
class _Head:
    first: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)

    def tokens(self, name: str) -> set[str]:
        return {t.strip().lower() for k, v in self.headers if k.lower() == name for t in v.split(",")}


async def _read_head(reader: asyncio.StreamReader) -> _Head | None:
    """One message head; ``None`` on a clean end of stream before it."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    lines = raw[:-4].decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return _Head(lines[0], headers)


async def _read_body(reader: asyncio.StreamReader, head: _Head, *, to_eof: bool) -> bytes:
    if "chunked" in head.tokens("transfer-encoding"):
        raise ValueError("chunked bodies are not supported by this proxy")
    length = head.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read() if to_eof else b""


def _encode(first: str, headers: Sequence[tuple[str, str]]) -> bytes:
    return (first + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("latin-1")


class RoundRobinProxy:
    """Listens on 127.0.0.1 (a free port); ``url`` is its base URL once entered.

    Args:
        upstreams: the nodes' base URLs (``http://127.0.0.1:PORT``).
        upgrades_to: send every WebSocket handshake to this node (an index into
            ``upstreams``) instead of the next in turn.
    """

    def __init__(self, upstreams: Sequence[str], *, upgrades_to: int | None = None) -> None:
        self.upstreams = [(u.hostname or "127.0.0.1", u.port or 80) for u in map(urlsplit, upstreams)]
        self.upgrades_to = upgrades_to
        self.log: list[Routed] = []
        self.errors: list[str] = []
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.url = ""

    async def __aenter__(self) -> RoundRobinProxy:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    async def idle(self) -> None:
        """Wait until no plain HTTP request is in flight (every one so far is in ``log``)."""
        await self._idle.wait()

    def routed(self, upstream: int | None = None, *, websocket: bool = False) -> list[Routed]:
        """The logged requests (WebSocket handshakes or plain ones), to one node if given."""
        return [r for r in self.log if r.websocket == websocket and (upstream is None or r.upstream == upstream)]

    # -- one client connection --------------------------------------------------------
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await _read_head(reader)
                if head is None:
                    return
                if "websocket" in head.tokens("upgrade"):
                    await self._tunnel(head, reader, writer)
                    return
                if not await self._request(head, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # kept for the test to see
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _open(self, pinned: int | None) -> tuple[int, asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the next node in turn (or ``pinned``), skipping refusing ones."""
        count = len(self.upstreams)
        if pinned is not None:
            candidates = [pinned]
        else:
            first = next(self._turn) % count
            candidates = [(first + k) % count for k in range(count)]  # the next in turn, if refused
        for index in candidates:
            host, port = self.upstreams[index]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(host, port, limit=_HEAD_LIMIT)
            except ConnectionRefusedError:
                continue
            return index, upstream_reader, upstream_writer
        raise ConnectionRefusedError("no upstream accepts connections")

    async def _request(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Pass one plain request on and its answer back; whether the client connection stays open."""
        method, target, version = head.first.split(" ", 2)
        body = await _read_body(reader, head, to_eof=False)
        keep_alive = version == "HTTP/1.1" and "close" not in head.tokens("connection")
        self._in_flight += 1
        self._idle.clear()
        index, status, answer = -1, 502, b""
        answer_headers: list[tuple[str, str]] = []
        reason = "Bad Gateway"
        try:
            try:
                index, up_reader, up_writer = await self._open(None)
            except ConnectionRefusedError:
                pass
            else:
                try:
                    headers = [(k, v) for k, v in head.headers if k.lower() not in _HOP_BY_HOP]
                    up_writer.write(_encode(head.first, [*headers, ("Connection", "close")]) + body)
                    await up_writer.drain()
                    response = await _read_head(up_reader)
                    if response is not None:
                        answer = await _read_body(up_reader, response, to_eof=True)
                        _, code, reason = (response.first.split(" ", 2) + [""])[:3]
                        status = int(code)
                        answer_headers = [
                            (k, v)
                            for k, v in response.headers
                            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
                        ]
                except (ConnectionError, asyncio.IncompleteReadError):
                    status, answer, answer_headers, reason = 502, b"", [], "Bad Gateway"  # the node died mid-answer
                finally:
                    up_writer.close()
            self.log.append(Routed(index, method, target, status, websocket=False))
            connection = "keep-alive" if keep_alive else "close"
            extra = [("Content-Length", str(len(answer))), ("Connection", connection)]
            writer.write(_encode(f"HTTP/1.1 {status} {reason}", [*answer_headers, *extra]) + answer)
            await writer.drain()
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        return keep_alive

    async def _tunnel(self, head: _Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A WebSocket handshake: to the node picked, then bytes both ways until one side ends."""
        method, target, _ = head.first.split(" ", 2)
        try:
            index, up_reader, up_writer = await self._open(self.upgrades_to)
        except ConnectionRefusedError:
            self.log.append(Routed(-1, method, target, 502, websocket=True))
            writer.write(_encode("HTTP/1.1 502 Bad Gateway", [("Content-Length", "0"), ("Connection", "close")]))
            await writer.drain()
            return
        try:
            up_writer.write(_encode(head.first, head.headers))
            await up_writer.drain()
            response = await _read_head(up_reader)
            if response is None:
                raise ConnectionResetError("the node closed before answering the handshake")
            status = int(response.first.split(" ", 2)[1])
            self.log.append(Routed(index, method, target, status, websocket=True))
            writer.write(_encode(response.first, response.headers))
            if status != 101:  # refused: pass the answer's body on, then close
                writer.write(await _read_body(up_reader, response, to_eof=True))
                await writer.drain()
                return
            await writer.drain()
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            up_writer.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then end the other direction's write side too."""
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()
