"""``Publisher`` reuses connections, keeps them per thread, loop and process, and refuses to
block a running event loop.

A real server on 127.0.0.1 in this test's loop; the connections it admitted are its own
count (``DoorCounters.accepted_connections``, the figure behind
``roomcast_door_accepted_connections_total``), so nothing on the client side is trusted
to count itself. The fork test forks a worker thread (the child gets that one thread, as a
Celery prefork child gets the parent's main thread) and checks the child publishes on a
connection of its own while the parent goes on using its pooled one.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from servers import RunningServer, running

from roomcast import Publisher, RedisPublisher
from roomcast.hub.hub import Hub
from roomcast.publisher import BlockingCallInLoop
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.types import StreamPosition

KEY = "k-0123456789abcdef"
EVENTS = 1000


@asynccontextmanager
async def _server() -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings(api_key=KEY, task_db=":memory:"))) as srv:
        yield srv


async def _offsets(srv: RunningServer, room: str, epoch: str) -> list[object]:
    history = await srv.hub.broker.history(room, since=StreamPosition(epoch, 0))
    return [p.data[0] for p in history.publications]


async def test_a_thousand_sync_publishes_open_one_tcp_connection() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        before = srv.counters.accepted_connections

        def burst() -> list[int]:
            return [publisher.publish("busy", "n", i).offset for i in range(EVENTS)]

        offsets = await asyncio.to_thread(burst)
        assert offsets == list(range(1, EVENTS + 1))
        assert srv.counters.accepted_connections - before == 1


async def test_a_thousand_async_publishes_open_one_tcp_connection() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        before = srv.counters.accepted_connections
        offsets = [(await publisher.apublish("busy", "n", i)).offset for i in range(EVENTS)]
        assert offsets == list(range(1, EVENTS + 1))
        assert srv.counters.accepted_connections - before == 1


async def test_threads_and_loops_never_share_a_connection() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        await publisher.apublish("r", "from-this-loop")
        before = srv.counters.accepted_connections

        def thread_with_its_own_loop() -> None:
            publisher.publish("r", "sync")  # this thread's pool: a new connection
            asyncio.run(publisher.apublish("r", "async"))  # that loop's pool: another one

        await asyncio.gather(*(asyncio.to_thread(thread_with_its_own_loop) for _ in range(2)))
        assert srv.counters.accepted_connections - before == 4
        await publisher.apublish("r", "again")  # this loop's connection is still there
        assert srv.counters.accepted_connections - before == 4


async def test_a_forked_child_publishes_on_its_own_connection_and_the_parent_keeps_its_own() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)  # made before the fork, as a prefork app does

        def parent_forks_a_child() -> tuple[int, list[int], list[int]]:
            first = publisher.publish("forked", "n", "parent-1")  # pools a connection in this thread
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: only this thread exists here
                status = 1
                try:
                    offsets = [publisher.publish("forked", "n", f"child-{i}").offset for i in range(5)]
                    os.write(write_end, json.dumps(offsets).encode())
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_end)
            with os.fdopen(read_end) as pipe:
                child = json.loads(pipe.read() or "[]")
            _, status = os.waitpid(pid, 0)
            last = publisher.publish("forked", "n", "parent-2")
            return os.waitstatus_to_exitcode(status), child, [first.offset, last.offset]

        before = srv.counters.accepted_connections
        code, child, parent = await asyncio.wait_for(asyncio.to_thread(parent_forks_a_child), 20)
        assert code == 0
        assert child == [2, 3, 4, 5, 6] and parent == [1, 7]
        # one connection for the parent (reused after the fork), one for the child
        assert srv.counters.accepted_connections - before == 2
        epoch = (await publisher.apublish("forked", "n", "check")).epoch
        assert (await _offsets(srv, "forked", epoch))[:7] == [
            "parent-1",
            *(f"child-{i}" for i in range(5)),
            "parent-2",
        ]


async def test_a_sync_call_from_a_running_loop_fails_at_once_naming_the_coroutine() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY, timeout=30)
        before = srv.counters.accepted_connections
        started = time.monotonic()
        with pytest.raises(BlockingCallInLoop, match=r"await publisher\.apublish"):
            publisher.publish("r", "e", 1)
        with pytest.raises(BlockingCallInLoop, match=r"await publisher\.areport"):
            publisher.report("some-task", progress=5)
        assert time.monotonic() - started < 1  # not the 30 s timeout: nothing was sent
        assert srv.counters.accepted_connections == before
        assert isinstance(BlockingCallInLoop("x"), RuntimeError)

    redis_worker = RedisPublisher("redis://127.0.0.1:1")  # never reached: refused before any I/O
    with pytest.raises(BlockingCallInLoop, match=r"await redis_publisher\.apublish"):
        redis_worker.publish("r", "e", 1)
    with pytest.raises(BlockingCallInLoop, match=r"await redis_publisher\.abroadcast"):
        redis_worker.broadcast(["r"], "e", 1)


async def test_a_kept_connection_the_server_closed_meanwhile_is_replaced_without_an_error() -> None:
    """The server answers the first request keeping the connection, then closes it on the
    next request without answering (its keep-alive timeout firing at that very moment):
    the publisher sends that request again on a new connection."""
    answer = json.dumps({"room": "r", "epoch": "e1", "offset": 1}).encode()
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
    requests: list[int] = []  # the connection number of each request seen
    connections = 0
    handlers: list[tuple[asyncio.StreamWriter, asyncio.Task[object]]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        handlers.append((writer, asyncio.current_task()))  # type: ignore[arg-type]
        connections += 1
        number, served = connections, 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        v
                        for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                        if k.lower() == b"content-length"
                    )
                )
                await reader.readexactly(length)
                requests.append(number)
                if number == 1 and served == 1:
                    return  # closed without a byte of an answer
                writer.write(ok)
                await writer.drain()
                served += 1
        except asyncio.IncompleteReadError:
            return
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        publisher = Publisher(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        await publisher.apublish("r", "e")
        assert (await publisher.apublish("r", "e")).offset == 1
        assert requests == [1, 1, 2]

        requests.clear()
        connections = 0

        def twice() -> int:  # in one thread: its pool holds the first connection for the second call
            publisher.publish("r", "e")
            return publisher.publish("r", "e").offset

        assert await asyncio.to_thread(twice) == 1
        assert requests == [1, 1, 2]
    finally:
        server.close()
        for writer, _ in handlers:
            writer.close()  # the publisher's kept connections end; each handler returns
        await asyncio.wait_for(asyncio.gather(*(task for _, task in handlers)), 10)


async def test_kept_connections_the_server_closed_while_idle_are_dropped_before_use() -> None:
    """A server that closes each connection after its answer (a keep-alive timeout that
    already fired): every later publish goes out on a new connection, and none fails."""
    answer = json.dumps({"room": "r", "epoch": "e1", "offset": 1}).encode()
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer)
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(len(seen) + 1)
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(ok)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        publisher = Publisher(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        for _ in range(3):
            assert (await publisher.apublish("r", "e")).offset == 1

        def three() -> list[int]:
            return [publisher.publish("r", "e").offset for _ in range(3)]

        assert await asyncio.to_thread(three) == [1, 1, 1]
        assert seen == [1, 2, 3, 4, 5, 6]
    finally:
        server.close()
        await server.wait_closed()


async def test_a_fork_from_a_running_loop_leaves_the_parents_kept_connection_working() -> None:
    """The child inherits the parent's loop, its selector (shared with the parent by the
    fork) and its pooled connections: it must not close them, or the parent's selector stops
    watching the parent's connection and its next answer is never read."""
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY, timeout=10)
        await publisher.apublish("r", "before")
        before = srv.counters.accepted_connections
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # the child's fork handler ran; whatever it closed is closed
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (await publisher.apublish("r", "after")).offset == 2
        assert srv.counters.accepted_connections == before  # the same kept connection
