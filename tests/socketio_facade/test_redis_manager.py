"""Scaled out the python-socketio way: ``client_manager=AsyncRedisManager(url)`` runs the hub on
that Redis, and ``RedisManager(url, write_only=True)`` emits from a process that serves no
clients (a Celery worker). python-socketio's client sees what the docs promise."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import socketio as reference
from brokers import _fresh_redis
from servers import running

from roomcast.socketio import AsyncRedisManager, AsyncServer

WAIT_S = 15.0


def server(url: str) -> AsyncServer:
    sio = AsyncServer(client_manager=AsyncRedisManager(url))

    @sio.event
    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    @sio.event
    async def say(sid: str, text: str) -> None:
        await sio.emit("said", text, room="r", skip_sid=sid)

    @sio.event
    async def poke(sid: str, other: str) -> None:
        await sio.emit("poked", sid == other, to=other)  # a sid held by another node

    @sio.event
    async def close(sid: str, room: str, then_tell: str) -> None:
        await sio.close_room(room)
        await sio.emit("closed", room, to=then_tell)  # relayed after the close, in order

    @sio.event
    def my_rooms(sid: str) -> list[str]:
        return [r for r in sio.rooms(sid) if r != sid]

    return sio


class Inbox:
    def __init__(self, client: reference.AsyncClient) -> None:
        self.log: list[list[Any]] = []
        self.changed = asyncio.Event()
        client.on("*", self._record)

    def _record(self, event: str, *args: Any) -> None:
        self.log.append([event, *args])
        self.changed.set()

    async def until(self, event: str) -> None:
        async with asyncio.timeout(WAIT_S):
            while not any(e[0] == event for e in self.log):
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def client(url: str) -> AsyncIterator[tuple[reference.AsyncClient, Inbox]]:
    c = reference.AsyncClient(reconnection=False)
    inbox = Inbox(c)
    await c.connect(url, transports=["websocket"])
    try:
        yield c, inbox
    finally:
        await c.disconnect()


WORKER = """
import asyncio, sys
from roomcast.socketio import AsyncRedisManager, RedisManager
url, sid = sys.argv[1], sys.argv[2]
emitter = RedisManager(url, write_only=True)  # a Celery task's, blocking
emitter.emit("progress", 50, room="jobs")
emitter.emit("direct", "hi", to=sid)
emitter.emit("skipped", 1, room="jobs", skip_sid=sid)
emitter.emit("everyone", (1, "two"))
asyncio.run(AsyncRedisManager(url, write_only=True).emit("done", room="jobs"))  # from a coroutine
"""


async def test_a_worker_process_emits_to_rooms_sids_and_everyone_through_redis() -> None:
    url = _fresh_redis()
    async with running(server(url).app) as srv, client(srv.url) as (c, inbox):
        assert await c.call("join", "jobs") is True
        worker = await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, url, c.get_sid())
        async with asyncio.timeout(WAIT_S):
            assert await worker.wait() == 0
        await inbox.until("done")
        assert inbox.log == [["progress", 50], ["direct", "hi"], ["everyone", 1, "two"], ["done"]]


def test_a_write_only_manager_refuses_a_callback_and_a_reserved_room_clearly() -> None:
    from roomcast.socketio import RedisManager

    emitter = RedisManager("redis://127.0.0.1:1/0", write_only=True)  # refused before any I/O
    try:
        emitter.emit("x", 1, to="someone", callback=print)
    except ValueError as exc:
        assert "callback" in str(exc)
    else:
        raise AssertionError("a callback was accepted")
    try:
        emitter.emit("x", 1, room="socket.io#/")
    except ValueError as exc:
        assert "reserved" in str(exc)
    else:
        raise AssertionError("a reserved room was accepted")


def test_a_write_only_manager_refuses_a_misspelt_or_positional_option_instead_of_emitting_to_all() -> None:
    from roomcast.socketio import AsyncRedisManager, RedisManager

    emitter = RedisManager("redis://127.0.0.1:1/0", write_only=True)  # refused before any I/O
    with pytest.raises(TypeError, match="rooom"):
        emitter.emit("x", 1, rooom="jobs")  # type: ignore[call-arg]
    # python-socketio's managers take the namespace third: refused, never read as to=
    with pytest.raises(TypeError):
        emitter.emit("x", 1, "/chat")  # type: ignore[misc]
    with pytest.raises(TypeError, match="rooom"):
        asyncio.run(AsyncRedisManager("redis://127.0.0.1:1/0", write_only=True).send(1, rooom="jobs"))  # type: ignore[call-arg]


async def test_two_nodes_share_rooms_sids_and_close_room() -> None:
    url = _fresh_redis()
    async with AsyncExitStack() as stack:
        one = await stack.enter_async_context(running(server(url).app))
        two = await stack.enter_async_context(running(server(url).app))
        a, a_inbox = await stack.enter_async_context(client(one.url))
        b, b_inbox = await stack.enter_async_context(client(two.url))
        assert await a.call("join", "r") is True
        assert await b.call("join", "r") is True

        await a.emit("say", "across")  # node one publishes, skipping a; b is on node two
        await b_inbox.until("said")
        await a.emit("poke", b.get_sid())
        await b_inbox.until("poked")
        await a.emit("close", ("r", b.get_sid()))
        await b_inbox.until("closed")
        assert await b.call("my_rooms") == []
        assert await a.call("my_rooms") == []
        assert b_inbox.log == [["said", "across"], ["poked", False], ["closed", "r"]]
        assert a_inbox.log == []
