"""Socket.IO connection state recovery across nodes: two in-process Apps on one real Redis.

Each App is a node as ``roomcast serve --redis`` builds it (``RedisBroker``, lost sessions
in ``rc:sio:<pid>``), served on its own real socket; the client is the raw wire client of
``test_recovery``, so every byte it presents (``pid``, ``offset``) is under the test's
control. A socket lost on one node comes back on the other with its id, rooms, data and
exactly what it missed, including what was in flight; a session Redis cannot hold, or one two
nodes are asked for at once, never comes back twice or in part. The end-to-end run with the
official client and real processes is ``tests/interop/test_recovery_client_js_across_nodes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from keyspace import key_events
from rawclient import RawWebSocket, call, open_websocket
from redisserver import fresh_url
from servers import RunningServer, running
from test_recovery import connect, connect_body, event

from roomcast import _json
from roomcast.broker.redis import RedisBroker
from roomcast.broker.sessions import SESSION_PREFIX
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.conformance import register_demo_events
from roomcast.transports.recovery import SharedSessions
from roomcast.transports.socketio import SioSocket

WINDOW = 120.0
WAIT = 5.0


class Node:
    """One App on the shared Redis, and what its handlers saw."""

    def __init__(self, url: str) -> None:
        hub = Hub(broker=RedisBroker(url))
        register_demo_events(hub)
        self.app = App(hub, Settings(redis_url=url, recovery_window=WINDOW, task_db=":memory:"))
        self.connects: list[dict[str, Any]] = []
        self.ended: asyncio.Queue[str] = asyncio.Queue()
        hub.on_connect()(self._connect)
        hub.on_disconnect()(lambda conn, reason: self.ended.put_nowait(conn.id))
        self.srv: RunningServer | None = None

    def _connect(self, conn: Connection, auth: Any) -> None:
        recovered = isinstance(conn, SioSocket) and conn.recovered
        self.connects.append({"id": conn.id, "recovered": recovered, "data": dict(conn.data)})
        if not recovered:
            conn.data["user"] = auth.get("token")
            if auth.get("token") == "unjsonable":
                conn.data["handle"] = object()  # application state JSON cannot carry

    @property
    def server(self) -> RunningServer:
        assert self.srv is not None
        return self.srv

    @property
    def hub(self) -> Hub:
        return self.app.hub

    @property
    def sessions(self) -> SharedSessions:
        recovery = self.app.socketio.recovery
        assert recovery is not None and isinstance(recovery.store, SharedSessions)
        return recovery.store

    async def lose(self, client: RawWebSocket, sid: str) -> None:
        """Drop the client's TCP connection; return once this node saved its session to Redis."""
        client.close()
        async with asyncio.timeout(WAIT):
            assert await self.ended.get() == sid
        await self.sessions.flush()


@contextlib.asynccontextmanager
async def serving(node: Node) -> AsyncIterator[Node]:
    async with running(node.app) as srv:
        node.srv = srv
        yield node


@pytest.fixture
def url(redis_url: str) -> str:
    return fresh_url(redis_url)


@pytest.fixture
async def nodes(url: str) -> AsyncIterator[tuple[Node, Node]]:
    async with serving(Node(url)) as a, serving(Node(url)) as b:
        yield a, b


@pytest.fixture
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(url)
    yield client
    await client.aclose()


async def fresh(node: Node, *rooms: str, token: str = "ann") -> tuple[RawWebSocket, dict[str, Any]]:
    """A client of ``node`` subscribed (built-in ``subscribe``: answered once the room is
    synced, so its position is known) to ``rooms``."""
    client, reply = await connect(node.server, {"token": token})
    for ack_id, room in enumerate(rooms, start=100):
        (answer,) = await call(client, ack_id, "subscribe", {"room": room})
        assert answer["room"] == room and "error" not in answer, answer
    return client, connect_body(reply)


async def test_a_socket_lost_on_one_node_comes_back_on_another_with_what_it_missed(
    nodes: tuple[Node, Node], raw: aioredis.Redis
) -> None:
    a, b = nodes
    client, body = await fresh(a, "a", "b")
    sid, pid = body["sid"], body["pid"]
    await a.hub.publish("a", "news", {"n": 1})
    seen = await event(client)
    assert seen[:2] == ["news", {"n": 1}]
    for n, room in ((2, "b"), (3, "a")):  # written to the socket, never read by the client
        await a.hub.publish(room, "news", {"n": n})
    await a.lose(client, sid)
    assert await raw.exists(SESSION_PREFIX + pid) == 1
    await b.hub.publish("a", "news", {"n": 4})  # while it is away, on the other node
    await a.hub.publish("elsewhere", "news", {"n": "not its room"})

    back, reply = await connect(b.server, {"token": "ann", "pid": pid, "offset": seen[2]})
    try:
        assert connect_body(reply) == {"sid": sid, "pid": pid}
        assert [(await event(back))[1]["n"] for _ in range(3)] == [2, 3, 4]  # in order, once
        assert b.connects[-1] == {"id": sid, "recovered": True, "data": {"user": "ann"}}
        assert b.hub.rooms() == {"a": 1, "b": 1} and a.hub.rooms() == {}
        assert await raw.exists(SESSION_PREFIX + pid) == 0  # taken: nobody else restores it
        await a.hub.publish("b", "news", {"n": 5})
        assert (await event(back))[1] == {"n": 5}  # then live, through Redis
    finally:
        back.close()


async def test_lost_again_before_the_second_node_sent_anything_it_comes_back_to_the_first(
    nodes: tuple[Node, Node],
) -> None:
    """The client still holds the first node's offset; the session remembers it presented it."""
    a, b = nodes
    client, body = await fresh(a, "r")
    sid, pid = body["sid"], body["pid"]
    await a.hub.publish("r", "news", {"n": 1})
    held = (await event(client))[2]
    await a.lose(client, sid)

    on_b, reply = await connect(b.server, {"token": "ann", "pid": pid, "offset": held})
    assert connect_body(reply) == {"sid": sid, "pid": pid}
    await b.lose(on_b, sid)  # nothing was sent to it on b
    await b.hub.publish("r", "news", {"n": 2})

    back, reply = await connect(a.server, {"token": "ann", "pid": pid, "offset": held})
    try:
        assert connect_body(reply) == {"sid": sid, "pid": pid}
        assert (await event(back))[1] == {"n": 2}
        assert a.connects[-1]["recovered"] is True
    finally:
        back.close()


async def test_a_session_whose_data_json_cannot_carry_is_not_saved_and_the_client_starts_afresh(
    nodes: tuple[Node, Node], raw: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = nodes
    client, body = await fresh(a, "r", token="unjsonable")
    with caplog.at_level(logging.WARNING, logger="roomcast.socketio"):
        await a.lose(client, body["sid"])
    assert any("its data is not JSON" in r.getMessage() for r in caplog.records)
    assert await raw.exists(SESSION_PREFIX + body["pid"]) == 0

    back, reply = await connect(b.server, {"token": "t", "pid": body["pid"]})
    try:
        again = connect_body(reply)
        assert again["sid"] != body["sid"] and again["pid"] != body["pid"]  # `recovered` is false
        assert b.connects[-1]["recovered"] is False and b.hub.rooms() == {}
    finally:
        back.close()


async def test_two_nodes_asked_for_one_session_at_once_restore_it_once(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    client, body = await fresh(a, "r")
    await a.lose(client, body["sid"])
    auth = {"token": "ann", "pid": body["pid"]}
    (on_a, reply_a), (on_b, reply_b) = await asyncio.gather(connect(a.server, auth), connect(b.server, auth))
    try:
        sids = [connect_body(reply_a)["sid"], connect_body(reply_b)["sid"]]
        assert sorted(sid == body["sid"] for sid in sids) == [False, True]
        assert sorted(c["recovered"] for c in (a.connects[-1], b.connects[-1])) == [False, True]
    finally:
        on_a.close()
        on_b.close()


async def test_a_graceful_shutdown_leaves_its_sessions_for_another_node(url: str, raw: aioredis.Redis) -> None:
    async with serving(Node(url)) as b:
        async with serving(Node(url)) as a:
            client, body = await fresh(a, "r")
            await a.hub.publish("r", "news", {"n": 1})
            held = (await event(client))[2]
        # a has shut down: it closed the socket as "server shutting down", and its last saves
        # reached Redis before it closed its connections (``SocketIOServer.aclose``)
        client.close()
        assert await raw.exists(SESSION_PREFIX + body["pid"]) == 1
        await b.hub.publish("r", "news", {"n": 2})
        back, reply = await connect(b.server, {"token": "ann", "pid": body["pid"], "offset": held})
        try:
            assert connect_body(reply) == {"sid": body["sid"], "pid": body["pid"]}
            assert (await event(back))[1] == {"n": 2}
        finally:
            back.close()


@contextlib.asynccontextmanager
async def redis_paused(raw: aioredis.Redis) -> AsyncIterator[None]:
    """Redis holds every write command (the claim's ``GETDEL`` among them) until the block ends."""
    await raw.client_pause(10_000, all=False)  # CLIENT PAUSE 10000 WRITE
    try:
        yield
    finally:
        await raw.client_unpause()


async def test_packets_sent_while_the_comeback_is_looked_up_follow_it_in_order(
    nodes: tuple[Node, Node], raw: aioredis.Redis
) -> None:
    """A client that does not wait for the CONNECT reply: its events are held, not refused."""
    a, b = nodes
    client, body = await fresh(a, "r")
    await a.lose(client, body["sid"])
    back = await open_websocket(b.server.host, b.server.port, "/socket.io/?EIO=4&transport=websocket")
    try:
        await back.recv()
        async with redis_paused(raw):
            back.send("40" + _json.dumps_str({"token": "ann", "pid": body["pid"]}))
            back.send('421["echo","one"]')
            back.send('422["echo","two"]')
            back.send("40/nowhere,")  # answered at once: everything before it has been read
            assert await back.recv() == '44/nowhere,{"message":"Invalid namespace"}'
        assert connect_body(str(await back.recv()))["sid"] == body["sid"]
        assert [await back.recv(), await back.recv()] == ['431["one"]', '432["two"]']
    finally:
        back.close()


async def test_a_second_connect_while_the_comeback_is_looked_up_is_refused(
    url: str, nodes: tuple[Node, Node], raw: aioredis.Redis
) -> None:
    a, b = nodes
    client, body = await fresh(a, "r")
    await a.lose(client, body["sid"])
    back = await open_websocket(b.server.host, b.server.port, "/socket.io/?EIO=4&transport=websocket")
    key = SESSION_PREFIX + body["pid"]
    try:
        await back.recv()
        async with key_events(url, key) as events:
            async with redis_paused(raw):
                for _ in range(2):
                    back.send("40" + _json.dumps_str({"token": "ann", "pid": body["pid"]}))
                async with asyncio.timeout(WAIT):
                    await back.closed  # a protocol error: the session is closed
            async with asyncio.timeout(WAIT):  # the claim it started found it closed: handed back
                assert await events.until(key, "set") == ["del", "set"]
        again, reply = await connect(b.server, {"token": "ann", "pid": body["pid"]})
        try:
            assert connect_body(reply)["sid"] == body["sid"]
        finally:
            again.close()
    finally:
        back.close()
