"""The node bus contract, for one process alone and for nodes sharing a real redis-server.

Each fault is played for real: a node process SIGKILLed (it says nothing on its way out),
and a node's subscription connection killed by Redis (``CLIENT KILL TYPE pubsub``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from keyspace import key_events
from redisserver import fresh_url

from roomcast.cluster.base import LocalCluster, NodeUnreachable
from roomcast.cluster.redis import RedisCluster, alive_key
from roomcast.types import JSONValue


async def _echo(payload: JSONValue) -> JSONValue:
    return {"echo": payload}


async def _fail(payload: JSONValue) -> JSONValue:
    raise ValueError("no such thing")


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisCluster, RedisCluster]]:
    url = fresh_url(redis_url)
    a, b = RedisCluster(url, beat=0.2, alive_ttl=1.0), RedisCluster(url, beat=0.2, alive_ttl=1.0)
    for node in (a, b):
        node.on("echo", _echo)
        node.on("fail", _fail)
        await node.start()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def test_local_cluster_answers_itself_and_nobody_else() -> None:
    local = LocalCluster()
    local.on("echo", _echo)
    assert await local.ask(local.node_id, "echo", 1) == {"echo": 1}
    assert await local.ask_all("echo", 2) == [{"echo": 2}]
    assert await local.alive() == {local.node_id}
    with pytest.raises(NodeUnreachable, match="not alive"):
        await local.ask("elsewhere", "echo", 1)
    with pytest.raises(NodeUnreachable, match="no handler"):
        await local.ask(local.node_id, "other", 1)


async def test_a_node_asks_another_and_every_node(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    assert await a.ask(b.node_id, "echo", {"x": [1, "y"]}) == {"echo": {"x": [1, "y"]}}
    assert await a.alive() == {a.node_id, b.node_id}
    assert sorted(map(str, await a.ask_all("echo", 3))) == [str({"echo": 3})] * 2


async def test_a_failing_handler_or_an_unknown_kind_is_the_askers_error(
    pair: tuple[RedisCluster, RedisCluster],
) -> None:
    a, b = pair
    with pytest.raises(NodeUnreachable, match="ValueError: no such thing"):
        await a.ask(b.node_id, "fail", None)
    with pytest.raises(NodeUnreachable, match="no handler for 'nothing'"):
        await a.ask(b.node_id, "nothing", None)


async def test_a_slow_answer_holds_up_no_other(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    release = asyncio.Event()

    async def slow(payload: JSONValue) -> JSONValue:
        await release.wait()
        return "slow"

    b.on("slow", slow)
    waiting = asyncio.create_task(a.ask(b.node_id, "slow", None))
    assert await a.ask(b.node_id, "echo", 1) == {"echo": 1}
    assert not waiting.done()
    release.set()
    assert await waiting == "slow"


async def test_a_node_that_left_fails_fast_and_leaves_the_list(pair: tuple[RedisCluster, RedisCluster]) -> None:
    a, b = pair
    gone = b.node_id
    await b.aclose()
    assert await a.alive() == {a.node_id}
    started = time.monotonic()
    with pytest.raises(NodeUnreachable, match="not alive"):
        await a.ask(gone, "echo", 1, timeout=5)
    assert time.monotonic() - started < 1  # told by PUBLISH at once, not by the timeout
    assert await a.ask_all("echo", 1) == [{"echo": 1}]


_NODE = """
import asyncio, sys
from roomcast.cluster.redis import RedisCluster, alive_key

async def main():
    node = RedisCluster(sys.argv[1], beat=0.2, alive_ttl=1.0)
    await node.start()
    print(node.node_id, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_node_leaves_the_list_once_its_liveness_expires(redis_url: str) -> None:
    url = fresh_url(redis_url)
    a = RedisCluster(url, beat=0.2, alive_ttl=1.0)
    await a.start()
    proc = subprocess.Popen([sys.executable, "-c", _NODE, url], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        other = (await asyncio.to_thread(proc.stdout.readline)).decode().strip()
        assert other in await a.alive()
        async with key_events(url, alive_key(other)) as events:
            proc.kill()
            proc.wait(timeout=10)
            killed = time.monotonic()
            await asyncio.wait_for(events.until(alive_key(other), "expired"), 5)  # Redis says so
        assert time.monotonic() - killed < 1.0 + 0.5  # its key's lifetime, and no more than a beat past it
        assert other not in await a.alive()
        with pytest.raises(NodeUnreachable):
            await a.ask(other, "echo", 1, timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        await a.aclose()


async def test_a_node_whose_subscription_is_killed_listens_again(
    pair: tuple[RedisCluster, RedisCluster], redis_url: str
) -> None:
    a, b = pair
    await asyncio.wait_for(asyncio.gather(a.listened(1), b.listened(1)), 10)
    listens = a.listens, b.listens
    admin = aioredis.Redis.from_url(redis_url)
    try:
        killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert killed >= 2  # both nodes' subscriptions were cut
    finally:
        await admin.aclose()
    # each subscribes again by itself, and Redis confirms it: then requests reach it again
    await asyncio.wait_for(asyncio.gather(a.listened(listens[0] + 1), b.listened(listens[1] + 1)), 10)
    assert await a.ask(b.node_id, "echo", 1, timeout=5) == {"echo": 1}
    assert await b.ask(a.node_id, "echo", 2, timeout=5) == {"echo": 2}
