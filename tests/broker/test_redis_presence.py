"""Presence entries live as long as the node that wrote them (``RedisBroker``).

Real parts: redis-servers started for the test, and a second node that is a real process,
SIGKILLed so it says nothing on its way out. Waits are on events (Redis's own keyspace
notification that a key expired, a broker's report of a reconnect), bounded by timeouts.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from hub_doubles import CountingEncoder, RecordingConnection
from loopstep import yield_to_loop
from redisserver import RedisProcess, running_redis

from roomcast.broker.redis import RedisBroker
from roomcast.errors import BrokerUnavailable
from roomcast.hub import Hub

WAIT = 10.0

NODE = """
import asyncio, sys
from roomcast.broker.redis import RedisBroker


class Quiet:
    def on_publication(self, publication): pass
    def on_terminal(self, room): pass
    def on_stream_lost(self, rooms): pass


async def main():
    broker = RedisBroker(sys.argv[1], node_id=sys.argv[2], heartbeat_interval=float(sys.argv[3]))
    await broker.start(Quiet())
    await broker.add_presence("lobby", "b1", "bob")
    await broker.add_presence("lobby", "b2", None)
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
"""


class Events:
    """Stands in for the hub; ``lost`` is set when the broker reports a broken stream."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def on_publication(self, publication: Any) -> None:
        pass

    def on_terminal(self, room: Any) -> None:
        pass

    def on_stream_lost(self, rooms: Any) -> None:
        self.lost.set()


@pytest.fixture
def server() -> AsyncIterator[RedisProcess]:
    with running_redis() as process:
        yield process


async def _node_in_a_process(url: str, node_id: str, interval: float) -> asyncio.subprocess.Process:
    node = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NODE, url, node_id, str(interval), stdout=asyncio.subprocess.PIPE
    )
    assert node.stdout is not None
    async with asyncio.timeout(WAIT):
        assert await node.stdout.readline() == b"ready\n"
    return node


async def test_a_node_killed_without_a_word_stops_counting_once_its_liveness_expires(server: RedisProcess) -> None:
    admin = aioredis.from_url(server.url)
    await admin.config_set("notify-keyspace-events", "Ex")
    expired = admin.pubsub()
    await expired.subscribe("__keyevent@0__:expired")
    here = RedisBroker(server.url)
    interval = 0.2  # the other node's liveness key lives 3 intervals: 0.6 s
    node = await _node_in_a_process(server.url, "node-b", interval)
    try:
        await here.start(Events())
        await here.add_presence("lobby", "a1", "ann")
        before = await here.presence("lobby")
        assert (before.connections, before.users) == (3, ("ann", "bob"))
        assert await admin.hget("rc:{lobby}:p", "b1") == b"node-b|bob"
        assert 0 < await admin.pttl("rc:alive:node-b") <= 600

        node.kill()  # SIGKILL: no aclose, nothing removed
        await node.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        async with asyncio.timeout(WAIT):  # Redis tells when the key expires
            while True:
                message = await expired.get_message(ignore_subscribe_messages=True, timeout=WAIT)
                if message is not None and message["data"] == b"rc:alive:node-b":
                    break
        assert loop.time() - killed < 3 * interval + 2.0  # its lifetime, plus a margin for the expiry cycle

        after = await here.presence("lobby")
        assert (after.connections, after.users) == (1, ("ann",))
        assert await admin.hkeys("rc:{lobby}:p") == [b"a1"]  # the dead node's entries were dropped
    finally:
        if node.returncode is None:
            node.kill()
            await node.wait()
        await here.aclose()
        await expired.aclose()
        await admin.aclose()


async def test_a_node_that_closes_takes_its_presence_with_it_at_once(server: RedisProcess) -> None:
    one, two = RedisBroker(server.url), RedisBroker(server.url, node_id="two")
    assert two.node_id == "two" and one.node_id != "two"
    await one.start(Events())
    await two.start(Events())
    try:
        await one.add_presence("room", "c1", "ann")
        await two.add_presence("room", "c2", "bob")
        assert (await one.presence("room")).connections == 2
        await two.aclose()
        gone = await one.presence("room")
        assert (gone.connections, gone.users) == (1, ("ann",))
    finally:
        await one.aclose()


async def test_a_node_writes_its_presence_back_after_redis_restarts_empty() -> None:
    """Without persistence a restarted Redis holds no presence; each node writes its own
    entries back once its subscription is back, before it reports the broken stream. Even
    when its liveness key is already back (``RedisCluster`` renews the same key for the same
    node id): the reconnect, not the key, is what tells."""
    with running_redis() as server:
        events = Events()
        broker = RedisBroker(server.url, heartbeat_interval=0.1, heartbeat_timeout=0.5, node_id="n1")
        await broker.start(events)
        try:
            await broker.add_presence("room", "c1", "ann")
            await broker.add_presence("room", "c2", None)
            await broker.remove_presence("room", "c2")
            server.kill()
            server.start()  # blocks the loop: the broker has not reconnected yet
            cluster = redis.Redis.from_url(server.url)
            cluster.set("rc:alive:n1", b"1", px=60_000)  # as RedisCluster renews it for node n1
            cluster.close()
            async with asyncio.timeout(WAIT):
                await events.lost.wait()
            back = await broker.presence("room")
            assert (back.connections, back.users) == (1, ("ann",))
        finally:
            await broker.aclose()


async def _calls(admin: aioredis.Redis, command: str) -> int:
    """How many times Redis ran ``command`` (its own count, ``INFO commandstats``)."""
    stats = await admin.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_a_thousand_clients_joining_one_room_reach_redis_in_a_few_writes(server: RedisProcess) -> None:
    """An audience arriving at once (a page load, a node's clients coming back): every join
    made while a presence write is on its way goes in the next one. Each took a round trip
    of its own, one after another, before; the entries trailed the joins by seconds."""
    admin = aioredis.from_url(server.url)
    hub, other = Hub(broker=RedisBroker(server.url)), RedisBroker(server.url)
    await hub.start()
    await other.start(Events())
    try:
        encoder = CountingEncoder()
        conns = [RecordingConnection(f"c{n}", hub=hub, encoder=encoder) for n in range(1000)]
        before = await _calls(admin, "hset")
        for conn in conns:
            hub.add_connection(conn)
            hub.join(conn, "stage")
        assert (await hub.presence("stage")).connections == 1000
        assert (await other.presence("stage")).connections == 1000  # in Redis, for every node
        writes = await _calls(admin, "hset") - before
        assert writes <= 5, f"{writes} presence writes for 1000 joins"

        for conn in conns[:600]:
            hub.remove_connection(conn)
        assert (await hub.presence("stage")).connections == 400
        assert await admin.hlen("rc:{stage}:p") == 400
    finally:
        await hub.aclose()
        await other.aclose()
        await admin.aclose()


async def test_a_leave_made_while_redis_is_down_is_written_once_it_is_back() -> None:
    """A persistent Redis comes back with the entries it had: a client that left while it
    was down must not stay counted forever. The failed write tells its caller, and its
    change goes with the node's next write (here the one after the reconnect)."""
    with running_redis(aof=True) as server:
        events = Events()
        broker = RedisBroker(server.url, heartbeat_interval=0.1, heartbeat_timeout=0.5)
        await broker.start(events)
        try:
            await broker.add_presence("room", "c1", "ann")
            await broker.add_presence("room", "c2", "bob")
            server.kill()
            with pytest.raises(BrokerUnavailable):
                await broker.remove_presence("room", "c2")
            server.start()  # from its append-only file: c1 and c2 both there
            admin = aioredis.from_url(server.url)
            try:
                async with asyncio.timeout(WAIT):
                    await events.lost.wait()
                back = await broker.presence("room")
                assert (back.connections, back.users) == (1, ("ann",))
                assert await admin.hkeys("rc:{room}:p") == [b"c1"]
            finally:
                await admin.aclose()
        finally:
            await broker.aclose()


async def test_a_node_closing_while_a_presence_write_waits_on_redis_leaves_nobody_waiting(
    server: RedisProcess,
) -> None:
    """Redis holds the write (``CLIENT PAUSE``) and the node closes meanwhile: the join that
    waits for that write ends with the node, instead of hanging whoever awaits it (the hub's
    shutdown, a presence read)."""
    admin = aioredis.from_url(server.url)
    broker = RedisBroker(server.url)
    await broker.start(Events())
    try:
        await admin.execute_command("CLIENT", "PAUSE", "5000", "ALL")
        joining = asyncio.ensure_future(broker.add_presence("room", "c1", "ann"))
        for _ in range(3):  # the join's write under way: sent, Redis holding it
            await yield_to_loop()
        await broker.aclose()
        await asyncio.wait((joining,), timeout=WAIT)  # (a timeout here would not cancel it)
        assert joining.cancelled()
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


def test_a_node_id_may_not_hold_the_separator() -> None:
    with pytest.raises(ValueError, match="node id"):
        RedisBroker("redis://127.0.0.1:1/0", node_id="a|b")
