"""On Redis 7 a node follows rooms with sharded pub/sub, its heartbeat included.

Real parts: the session's redis-server (Debian bookworm's 7.0). Redis's own ``PUBSUB
SHARDNUMSUB`` says who listens; a publication and the node's heartbeat arrive through the
same sharded subscription, which the contract tests (delivery, the deaf subscription found
by its heartbeat) exercise further.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from brokerevents import Events
from loopstep import yield_to_loop
from redisserver import fresh_url

from roomcast.broker.redis import RedisBroker

WAIT = 10.0


async def _listeners(admin: aioredis.Redis, kind: str, *channels: str) -> list[int]:
    answer = await admin.execute_command("PUBSUB", kind, *channels)
    flat = answer if isinstance(answer, list) else [x for pair in answer.items() for x in pair]
    return [int(count) for count in flat[1::2]]


async def test_a_node_follows_its_rooms_and_hears_itself_on_sharded_channels(redis_url: str) -> None:
    url = fresh_url(redis_url)
    admin = aioredis.from_url(url)
    broker, events = RedisBroker(url, heartbeat_interval=0.05), Events()
    await broker.start(events)
    try:
        own = f"rc:node:{broker.node_id}"
        await broker.subscribe("room")
        assert await _listeners(admin, "SHARDNUMSUB", "rc:{room}", own) == [1, 1]
        assert await _listeners(admin, "NUMSUB", "rc:{room}", own) == [0, 0]  # nothing on classic channels

        sent = await broker.publish("room", "ev", (1,), ts=1.0)
        async with asyncio.timeout(WAIT):
            assert await events.publications.get() == sent

        heard = broker.deaf_events, broker.unhealthy
        await broker.unsubscribe("room")
        async with asyncio.timeout(WAIT):  # SUNSUBSCRIBE is on its way: wait for Redis to have it
            while await _listeners(admin, "SHARDNUMSUB", "rc:{room}") != [0]:
                await yield_to_loop()
        assert await _listeners(admin, "SHARDNUMSUB", own) == [1] and heard == (0, None)
    finally:
        await broker.aclose()
        await admin.aclose()


async def test_terminal_marks_travel_on_the_sharded_channel_too(redis_url: str) -> None:
    url = fresh_url(redis_url)
    terminal = asyncio.Event()
    events = Events()
    events.on_terminal = lambda room: terminal.set()  # type: ignore[method-assign]
    broker = RedisBroker(url)
    await broker.start(events)
    try:
        await broker.subscribe("task:1")
        await broker.mark_terminal("task:1")
        async with asyncio.timeout(WAIT):
            await terminal.wait()
    finally:
        await broker.aclose()
