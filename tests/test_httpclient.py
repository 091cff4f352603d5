"""``roomcast.httpclient`` on its own: what the publisher, tail, the poller and the SDK rely on.

One-trick servers on 127.0.0.1 (asyncio, in the test's loop) send exactly the bytes each
case needs; the blocking calls run in a worker thread, as a web worker's would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from roomcast import httpclient
from roomcast.errors import LocalProtocolError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _serving(handle: Handler) -> AsyncIterator[httpclient.Origin]:
    writers: list[asyncio.StreamWriter] = []
    tasks: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)  # type: ignore[arg-type]
        try:
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield httpclient.Origin(False, "127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def test_a_stream_hands_each_chunk_over_as_it_comes() -> None:
    sent_first = asyncio.Event()
    read_first = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b"6\r\nfirst\n\r\n")
        await writer.drain()
        sent_first.set()
        await read_first.wait()  # the second chunk only once the client has the first
        writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await writer.drain()

    async with _serving(handle) as origin:

        def follow() -> list[bytes]:
            pieces = []
            with httpclient.stream(origin, "/sse", headers={}, timeout=10) as answer:
                assert (answer.status, answer.headers["content-type"]) == (200, "text/event-stream")
                for piece in answer.chunks():
                    pieces.append(piece)
                    loop.call_soon_threadsafe(read_first.set)
            return pieces

        assert await asyncio.to_thread(follow) == [b"first\n", b"second\n"]
        assert sent_first.is_set()


async def test_a_silent_stream_ends_with_a_timeout_after_the_time_it_was_given() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        await writer.drain()
        await reader.read()  # then nothing, until the client leaves

    async with _serving(handle) as origin:

        def follow() -> float:
            started = time.monotonic()
            with httpclient.stream(origin, "/sse", headers={}, timeout=0.3) as answer, pytest.raises(TimeoutError):
                list(answer.chunks())
            return time.monotonic() - started

        assert 0.25 < await asyncio.to_thread(follow) < 5


async def test_an_upgrade_hands_over_the_bytes_that_followed_the_101() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nFRAMES")
        await writer.drain()
        await reader.read()

    async with _serving(handle) as origin:
        upgraded = await httpclient.aupgrade(origin, "/ws", headers={"Upgrade": "websocket"})
        try:
            assert (upgraded.head.status, upgraded.rest) == (101, b"FRAMES")
        finally:
            upgraded.writer.close()


async def test_without_keep_alive_the_request_says_close_and_nothing_is_kept() -> None:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with _serving(handle) as origin:
        for _ in range(2):
            answer = await httpclient.arequest(origin, "GET", "/x", headers={}, max_body=10, keep_alive=False)
            assert answer.body == b"ok"
        assert len(heads) == 2 and all(b"\r\nConnection: close\r\n" in head for head in heads)


async def test_a_request_that_cannot_be_sent_is_refused_before_any_connection() -> None:
    accepted = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1

    async with _serving(handle) as origin:
        with pytest.raises(LocalProtocolError):
            await httpclient.arequest(origin, "GET", "/x", headers={"X": "a\r\nB: c"}, max_body=10)
        with pytest.raises(LocalProtocolError):
            await asyncio.to_thread(httpclient.request, origin, "GET", "/a b", headers={}, timeout=5, max_body=10)
    assert accepted == 0


def test_an_origin_names_its_host_as_a_host_header_does() -> None:
    assert httpclient.parse_origin("http://h:80/p/")[0].host_header == "h"
    assert httpclient.parse_origin("http://[::1]:8000")[0].host_header == "[::1]:8000"
    https, rest = httpclient.parse_origin("https://h/api?x=1")
    assert (https.port, https.host_header, https.ssl_context is not None, rest) == (443, "h", True, "/api?x=1")
    for bad in ("ftp://h", "http://", "http://h:99999"):
        with pytest.raises(ValueError):
            httpclient.parse_origin(bad)
