"""Hostile HTTP clients against the native door, on real sockets: each is refused or cut,
memory stays bounded, and a healthy client on every transport keeps getting its events.

Each attack is what a broken or malicious client does: endless or numerous headers, a head
that never finishes (slowloris), requests pipelined and never read, pings whose pongs are
never read. All on 127.0.0.1, bounded in bytes and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator

import pytest
from healthy import Healthy, server
from servers import RunningServer
from sseclient import open_sse

from roomcast.protocol import websocket as wsproto

WAIT = 10.0
MB = 1_000_000


def rss() -> int:
    """This process's resident memory in bytes (the server runs in it)."""
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readline(), WAIT)
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


@contextlib.asynccontextmanager
async def raw(srv: RunningServer) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(10_000)) + b"\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"v" * MB + b"\r\n\r\n", 431),
        (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 900) for i in range(90)) + b"\r\n", 431),
    ],
    ids=["long-target", "10000-headers", "1MB-header", "80KB-of-headers"],
)
async def test_oversized_heads_are_refused_and_others_carry_on(head: bytes, status: int) -> None:
    async with server() as srv, Healthy(srv) as healthy, raw(srv) as (reader, writer):
        writer.write(head)
        assert await status_of(reader) == status
        assert srv.counters.refused_heads == 1
        await healthy.still_served()


async def test_an_endless_header_is_cut_after_the_limit_not_read_for_ever() -> None:
    """128 MB offered in 64 KB pieces: the door answers 431 and closes long before."""
    async with server() as srv, Healthy(srv) as healthy, raw(srv) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nX-Endless: ")
        sent = 0
        with contextlib.suppress(ConnectionError):
            while sent < 128 * MB and not reader.at_eof():
                writer.write(b"v" * 65_536)
                sent += 65_536
                await asyncio.wait_for(writer.drain(), WAIT)
                if reader._buffer:  # type: ignore[attr-defined]  # the answer has come
                    break
        assert await status_of(reader) == 431
        assert sent < 8 * MB  # refused after tens of KB, not after the whole header
        await healthy.still_served()


async def test_slowloris_heads_time_out_and_idle_keepalive_connections_close() -> None:
    async with server(request_timeout=0.3, keepalive_timeout=0.3) as srv, Healthy(srv) as healthy:
        async with raw(srv) as (slow, slow_writer), raw(srv) as (idle, idle_writer):
            slow_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A")  # and never the rest
            idle_writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert await status_of(idle) == 200
            assert await status_of(slow) == 408
            assert await asyncio.wait_for(idle.read(), WAIT)  # the rest of the answer, then EOF
            assert idle.at_eof()
            assert srv.counters.timeouts == 2
        await healthy.still_served()


async def test_expect_100_continue_is_answered_before_the_body_or_refused_at_once() -> None:
    async with server(max_payload=1000) as srv:
        async with raw(srv) as (reader, writer):
            body = json.dumps({"room": "a", "event": "e", "data": 1}).encode()
            writer.write(
                b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
            )
            assert await status_of(reader) == 100
            assert await asyncio.wait_for(reader.readline(), WAIT) == b"\r\n"
            writer.write(body)
            assert await status_of(reader) == 200
        async with raw(srv) as (reader, writer):
            writer.write(
                b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
            )
            assert await status_of(reader) == 413  # without sending a byte of it


async def test_pipelined_requests_never_read_stop_being_served_and_memory_stays_bounded() -> None:
    """10,000 requests for the browser module in one go, and not one answer read."""
    async with server() as srv, Healthy(srv) as healthy, raw(srv) as (reader, writer):
        before = rss()
        request = b"GET /roomcast.js HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.transport.pause_reading()  # like a client that never reads
        for _ in range(100):
            writer.write(request * 100)
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            await asyncio.wait_for(writer.drain(), 1.0)  # the server stops reading us: this stalls
        await healthy.still_served()
        grown = rss() - before
        assert grown < 60 * MB, f"RSS grew {grown / MB:.0f} MB"  # unbounded, it was 267 MB


async def test_pings_whose_pongs_are_never_read_stop_being_read() -> None:
    async with server() as srv, Healthy(srv) as healthy:
        reader, writer = await asyncio.open_connection(srv.host, srv.port)
        try:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert await status_of(reader) == 101
            writer.transport.pause_reading()
            before = rss()
            ping = wsproto.serialize_frame(wsproto.OP_PING, b"p" * 125, mask=b"abcd")
            sent = 0
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                while sent < 200 * MB:
                    writer.write(ping * 512)
                    sent += len(ping) * 512
                    await asyncio.wait_for(writer.drain(), 1.0)
            assert sent < 200 * MB  # it stopped reading us
            await healthy.still_served()
            grown = rss() - before
            assert grown < 60 * MB, f"RSS grew {grown / MB:.0f} MB"  # unbounded: 100 MB per 200 MB
        finally:
            writer.transport.abort()


async def test_a_slow_consumer_that_never_reads_its_goodbye_is_aborted_within_a_bounded_time() -> None:
    async with server(max_buffer_bytes=64 * 1024) as srv, Healthy(srv) as healthy:
        async with open_sse(srv.url, ["flood"]) as stream:
            await stream.next()
            stream.response.connection.transport.pause_reading()  # type: ignore[union-attr]
            async with asyncio.timeout(20):
                while srv.hub.slow_disconnects == 0:
                    await srv.hub.publish("flood", "blob", "x" * 16_384)
                    await healthy.still_served()
            async with asyncio.timeout(5):  # never reads: aborted after the goodbye's 2 s
                while srv.counters.slow_aborts == 0:
                    await healthy.still_served()
            assert srv.counters.slow_goodbyes == 0
