"""The Client against the official Node ``socket.io`` 4.8 server (``node/server.cjs``).

The server runs with ``connectionStateRecovery``, so these tests also check the trailing
offsets are stripped from handler arguments and ``{pid, offset}`` brings the session back.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from clientkit import NODE_MODULES, Recorder, Subprocess, node_argv

from roomcast.client import Client, ClientState

S = ClientState


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    if shutil.which("node") is None or not (NODE_MODULES / "socket.io").is_dir():
        pytest.fail("needs node and tests/interop/node/node_modules: `make test-deps` installs them")
    argv, env = node_argv("server.cjs")
    proc = Subprocess(argv, env)
    try:
        line = proc.wait_line_sync("listening on")
        proc.drain()
        yield f"http://127.0.0.1:{line.split()[-1]}"
    finally:
        proc.stop()


@pytest.fixture(params=[("websocket",), ("polling", "websocket")], ids=["websocket", "upgrade"])
def transports(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return tuple(request.param)


async def test_connect_emit_with_ack_both_ways_and_server_events(node_url: str, transports: tuple[str, ...]) -> None:
    client = Client(node_url, transports=transports, ack_timeout=5)
    rec = Recorder(client)
    client.on("welcome", rec.handler("welcome"))
    client.on("news", rec.handler("news"))

    async def answer(question: str, ack: Any) -> None:
        ack(f"{question}!")

    client.on("question", answer)
    try:
        await asyncio.wait_for(client.connect(), 10)
        assert client.pid is not None  # the server offers connection state recovery
        await rec.wait_for(lambda: len(rec.of("welcome")) == 1)
        assert rec.of("welcome")[0] == ({"recovered": False, "id": client.sid},)  # offset stripped
        assert await client.emit("echo", 1, "two", {"three": 3}, ack=True) == (1, "two", {"three": 3})
        assert await client.emit("echo", b"\x01\x02", ack=True) == b"\x01\x02"
        assert await client.emit("ask", "why", ack=True) == "why!"  # server -> client ack
        assert await client.emit("join", "room", ack=True) is True
        assert await client.emit("broadcast", "room", 7, ack=True) is True
        await rec.wait_for(lambda: rec.of("news") == [(7,)])
        if len(transports) == 2:
            await rec.wait_for(lambda: client.transport == "websocket")
    finally:
        await client.close()
    assert rec.states == [S.CONNECTING, S.CONNECTED, S.CLOSED]


async def test_connection_state_recovery_after_a_transport_cut(node_url: str, transports: tuple[str, ...]) -> None:
    client = Client(node_url, transports=transports, ack_timeout=5, backoff_initial=0.4, backoff_max=0.8)
    rec = Recorder(client)
    client.on("missed", rec.handler("missed"))
    client.on("welcome", rec.handler("welcome"))
    try:
        await asyncio.wait_for(client.connect(), 10)
        sid, pid = client.sid, client.pid
        assert await client.emit("join", "room", ack=True) is True
        await client.emit("cut", "room")
        await rec.wait_state(S.RECONNECTING)
        await rec.wait_state(S.CONNECTED, count=2)
        await rec.wait_for(lambda: len(rec.of("missed")) == 2)
        assert client.recovered is True and client.sid == sid and client.pid == pid
        assert rec.changes[-1].reason == "recovered"
        assert rec.of("missed") == [(1,), (2,)]  # missed while away, replayed, offsets stripped
        await rec.wait_for(lambda: len(rec.of("welcome")) == 2)
        assert rec.of("welcome")[1][0]["recovered"] is True
    finally:
        await client.close()
