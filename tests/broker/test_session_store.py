"""``RedisSessionStore`` against a real redis-server: take-once values with a lifetime.

Where lost Socket.IO sessions wait for a comeback on any node (``rc:sio:<pid>``): a value
lives for the recovery window, measured by Redis, and two nodes asked for it at once never
both get it. Waits are on Redis's own keyspace notifications, never on sleeps.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from keyspace import key_events
from redisserver import fresh_url

from roomcast.broker.sessions import SESSION_PREFIX, RedisSessionStore
from roomcast.errors import BrokerUnavailable

WAIT = 5.0


@pytest.fixture
async def url(redis_url: str) -> str:
    return fresh_url(redis_url)


@pytest.fixture
async def store(url: str) -> AsyncIterator[RedisSessionStore]:
    s = RedisSessionStore(url)
    yield s
    await s.aclose()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(url)
    yield client
    await client.aclose()


async def test_a_value_is_taken_once_with_the_time_it_had_left(store: RedisSessionStore, raw: aioredis.Redis) -> None:
    await store.put("p1", b"session", 60.0)
    assert 0 < await raw.pttl(SESSION_PREFIX + "p1") <= 60_000  # the window is Redis's to keep

    taken = await store.take("p1")
    assert taken is not None
    value, remaining = taken
    assert value == b"session" and 0 < remaining <= 60.0
    assert await raw.exists(SESSION_PREFIX + "p1") == 0
    assert await store.take("p1") is None
    assert await store.take("never-saved") is None


async def test_a_value_is_gone_once_its_lifetime_is_over(url: str, store: RedisSessionStore) -> None:
    async with key_events(url, SESSION_PREFIX + "*") as events:
        await store.put("short", b"session", 0.2)
        async with asyncio.timeout(WAIT):
            # written with its lifetime in one command, then ended by Redis itself
            assert await events.until(SESSION_PREFIX + "short", "expired") == ["set", "expire", "expired"]
    assert await store.take("short") is None


async def test_when_two_nodes_race_for_a_value_exactly_one_gets_it(url: str, store: RedisSessionStore) -> None:
    other = RedisSessionStore(url)  # another node: its own connections
    try:
        names = [f"pid-{n}" for n in range(50)]
        for name in names:
            await store.put(name, name.encode(), 60.0)
        answers = await asyncio.gather(*(node.take(name) for name in names for node in (store, other)))
        for n, name in enumerate(names):
            pair = answers[2 * n : 2 * n + 2]
            won = [answer for answer in pair if answer is not None]
            assert len(won) == 1 and won[0][0] == name.encode(), (name, pair)
    finally:
        await other.aclose()


async def test_a_later_put_replaces_the_value_and_its_lifetime(store: RedisSessionStore, raw: aioredis.Redis) -> None:
    await store.put("p", b"first", 60.0)
    await store.put("p", b"second", 5.0)
    assert await raw.pttl(SESSION_PREFIX + "p") <= 5_000
    taken = await store.take("p")
    assert taken is not None and taken[0] == b"second"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port  # nothing listens on it once the probe is closed


async def test_an_unreachable_redis_is_reported_as_unavailable() -> None:
    store = RedisSessionStore(f"redis://127.0.0.1:{_closed_port()}/0")
    try:
        with pytest.raises(BrokerUnavailable):
            await store.put("p", b"session", 60.0)
        with pytest.raises(BrokerUnavailable):
            await store.take("p")
    finally:
        await store.aclose()
