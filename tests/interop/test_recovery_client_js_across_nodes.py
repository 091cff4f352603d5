"""Interop: the official socket.io-client recovers its session on another ``roomcast serve`` node.

Real parts only: a redis-server, two ``roomcast serve --redis --recovery-window`` processes,
and ``node/steered_client.mjs`` (socket.io-client 4, WebSocket). The client keeps one URL, a
TCP proxy in this test, whose upstream the test switches from node A to node B; so "the
client reaches another node" is what a load balancer does, not a client option.

* A transport cut (the proxy drops both TCP connections) is a transient loss: A saves the
  session in Redis, and the client, held at its reconnection until the publications it must
  miss are acknowledged, comes back through B with ``socket.recovered === true``, the same
  id and exactly the missed publications, in order.
* A crash (A SIGKILLed) saves nothing: the client gets a new session on B and recovers its
  room through the built-in ``subscribe {room, epoch, offset}``.

Waits are on what the client reports, on the servers' answers and on Redis's keyspace
notifications (the session written by A), never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from keyspace import key_events
from redisserver import fresh_url

from roomcast import Publisher
from roomcast.broker.sessions import SESSION_PREFIX

WAIT = 20.0
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


class ServeProcess:
    """``roomcast serve --redis URL --recovery-window 120`` on a free port, its output drained
    (so a chatty log never blocks it) and kept for the failure message."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> str:
        """Wait for the listening line; returns the base URL."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            while True:
                line = (await self.proc.stdout.readline()).decode()
                assert line, "roomcast serve exited before it listened:\n" + "".join(self.output)
                self.output.append(line)
                found = LISTENING.search(line)
                if found:
                    self._drain = asyncio.create_task(self._read_rest())
                    return found.group(1)

    async def _read_rest(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.output.append(line.decode())

    def kill(self) -> None:
        """SIGKILL by its pid: it saves nothing."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        self.kill()
        await asyncio.wait_for(self.proc.wait(), WAIT)
        if self._drain is not None:
            await asyncio.wait_for(self._drain, WAIT)


@contextlib.asynccontextmanager
async def node(redis_url: str) -> AsyncIterator[tuple[ServeProcess, str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        "--port",
        "0",
        "--task-db",
        ":memory:",
        "--redis",
        redis_url,
        "--recovery-window",
        "120",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "ROOMCAST_TASK_DB": ":memory:"},
    )
    server = ServeProcess(proc)
    try:
        yield server, await server.start()
    finally:
        await server.stop()


class SwitchingProxy:
    """A TCP proxy on 127.0.0.1: new connections go to ``upstream``, which the test switches;
    ``cut`` drops every open connection on both sides at once (RST), as a network would."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._open: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> SwitchingProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream.removeprefix("http://").split(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._open -= {writer, up_writer}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side ends; then end the other (a closed TCP connection, both ways)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.transport.abort()


class SteeredClient:
    """``node/steered_client.mjs``: commands on its stdin, observations from its stdout."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: list[dict[str, Any]] = []

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"do": command}).encode() + b"\n")

    async def expect(self, kind: str) -> dict[str, Any]:
        """The next observation, which must be of ``kind``."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            line = await self.proc.stdout.readline()
        if not line:
            stderr = await self.proc.stderr.read() if self.proc.stderr is not None else b""
            pytest.fail(f"the client ended early; it saw {self.seen}\n{stderr.decode()}")
        observation: dict[str, Any] = json.loads(line)
        self.seen.append(observation)
        assert observation["type"] == kind, (kind, self.seen)
        return observation

    async def received(self, *numbers: int) -> list[dict[str, Any]]:
        """The next publications, which must be ``numbers`` in this order."""
        got = [await self.expect("received") for _ in numbers]
        assert [r["data"]["n"] for r in got] == list(numbers), self.seen
        return got


@contextlib.asynccontextmanager
async def steered_client(node_peers: Path, url: str, room: str) -> AsyncIterator[SteeredClient]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(node_peers / "steered_client.mjs"),
        json.dumps({"url": url, "room": room, "timeoutMs": WAIT * 1000}),
        cwd=node_peers,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = SteeredClient(proc)
    try:
        yield client
        client.do("end")
        await client.expect("done")
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def url(redis_url: str) -> str:
    return fresh_url(redis_url)


@pytest.fixture
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(url)
    yield client
    await client.aclose()


async def publish(base: str, room: str, *numbers: int) -> None:
    for n in numbers:
        await Publisher(base).apublish(room, "news", {"n": n})  # acknowledged: in history


async def joined_through(client: SteeredClient, room: str) -> None:
    first = await client.expect("connected")
    assert first["recovered"] is False
    client.do("subscribe")
    reply = (await client.expect("subscribed"))["reply"]
    assert reply["room"] == room and "error" not in reply


async def test_a_cut_transport_is_recovered_on_another_node(node_peers: Path, url: str, raw: aioredis.Redis) -> None:
    room = "board"
    async with node(url) as (_, a), node(url) as (_, b), SwitchingProxy(a) as proxy:
        async with steered_client(node_peers, proxy.url, room) as client:
            await joined_through(client, room)
            first_id = client.seen[0]["id"]
            await publish(a, room, 1, 2)
            await client.received(1, 2)

            async with key_events(url, SESSION_PREFIX + "*") as events:
                proxy.upstream = b  # the next connection reaches node B
                proxy.cut()
                assert (await client.expect("disconnected"))["reason"] == "transport close"
                async with asyncio.timeout(WAIT):
                    key, event = await events.next()  # node A saved the session
            assert event == "set" and await raw.exists(key) == 1
            await publish(a, room, 3, 4)
            await publish(b, room, 5)
            client.do("reconnect")

            second = await client.expect("connected")
            assert second == {"type": "connected", "id": first_id, "recovered": True}
            missed = await client.received(3, 4, 5)
            assert all(isinstance(r["extra"][-1], str) for r in missed)  # offsets, now node B's
            await publish(b, room, 6)
            await client.received(6)
            assert await raw.exists(key) == 0  # restored once, then gone
        received = [o["data"]["n"] for o in client.seen if o["type"] == "received"]
        assert received == [1, 2, 3, 4, 5, 6]


async def test_a_node_that_crashes_saves_nothing_and_its_client_recovers_room_by_room(
    node_peers: Path, url: str, raw: aioredis.Redis
) -> None:
    room = "board"
    async with node(url) as (server_a, a), node(url) as (_, b), SwitchingProxy(a) as proxy:
        async with steered_client(node_peers, proxy.url, room) as client:
            await joined_through(client, room)
            first_id = client.seen[0]["id"]
            await publish(a, room, 1, 2)
            await client.received(1, 2)

            proxy.upstream = b
            server_a.kill()
            assert (await client.expect("disconnected"))["reason"] == "transport close"
            await publish(b, room, 3, 4)
            client.do("reconnect")

            second = await client.expect("connected")
            assert second["recovered"] is False and second["id"] != first_id  # a new session
            assert await raw.keys(SESSION_PREFIX + "*") == []  # A saved nothing
            client.do("resubscribe")  # from the last publication it got: room meta, n=2
            reply = (await client.expect("subscribed"))["reply"]
            assert reply["recovered"] is True
            assert [p["data"] for p in reply["publications"]] == [[{"n": 3}], [{"n": 4}]]
            await publish(b, room, 5)
            await client.received(5)
