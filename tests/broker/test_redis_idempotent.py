"""A publish is applied once, even when its answer is lost and redis-py retries it.

Real parts: a redis-server, and ``redisserver.RedisProxy`` between it and the client, which
lets Redis run a command and answer, then cuts the client's connection before the answer
arrives. redis-py's retry (``broker.redis_client``) sends the command again on a new
connection; the publish script finds the first run's answer under the call's idempotency key
and returns it instead of appending a second time.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redisserver import RedisProxy, fresh_url

from roomcast import RedisPublisher
from roomcast.broker import redis_client
from roomcast.broker.redis import IDEMPOTENCY_WINDOW, RedisBroker
from roomcast.types import StreamPosition


async def _stream(url: str, room: str) -> list[int]:
    """The offsets the room's history holds, read from Redis itself (not through the proxy)."""
    admin = aioredis.from_url(url)
    try:
        return [int(entry_id.split(b"-")[0]) for entry_id, _ in await admin.xrange(f"rc:{{{room}}}:s")]
    finally:
        await admin.aclose()


async def test_the_cut_really_runs_a_command_twice_when_nothing_makes_it_idempotent(redis_url: str) -> None:
    """The fault itself, on a command with no key: INCRBY, cut after Redis answered, is retried
    and counts twice. So the publish tests below see one entry because of the key, not
    because the cut came before Redis ran the command."""
    url = fresh_url(redis_url)
    async with RedisProxy(url) as proxy:
        client = redis_client.connect(proxy.url)
        try:
            await client.ping()
            proxy.cut_after_reply("INCRBY")
            assert await client.incrby("counter", 1) == 2  # the first INCRBY ran; its answer never came
            assert proxy.cut == 1 and proxy.commands["INCRBY"] == 2
        finally:
            await client.aclose()


async def test_a_publish_whose_answer_was_cut_off_is_retried_and_appended_once(redis_url: str) -> None:
    url = fresh_url(redis_url)
    async with RedisProxy(url) as proxy:
        broker = RedisBroker(proxy.url)
        try:
            first = await broker.publish("r", "ev", (1,), ts=1.0)  # loads the script: EVALSHA from here on
            ran = proxy.commands["EVALSHA"]
            proxy.cut_after_reply("EVALSHA")
            second = await broker.publish("r", "ev", (2,), ts=2.0)
            assert proxy.cut == 1 and proxy.commands["EVALSHA"] == ran + 2  # Redis ran it twice
            third = await broker.publish("r", "ev", (3,), ts=3.0)
            assert [p.position.offset for p in (first, second, third)] == [1, 2, 3]
            assert {p.position.epoch for p in (first, second, third)} == {first.position.epoch}
            assert await _stream(url, "r") == [1, 2, 3]
            history = await broker.history("r", since=StreamPosition(first.position.epoch, 0))
            assert history.complete and [p.data for p in history.publications] == [(1,), (2,), (3,)]
        finally:
            await broker.aclose()


async def test_a_workers_publish_whose_answer_was_cut_off_is_appended_once_sync_and_async(redis_url: str) -> None:
    """``RedisPublisher`` goes through the same ``publish_call``: the blocking client (from a
    thread) and the asyncio one both retry with the key they were given."""
    url = fresh_url(redis_url)
    async with RedisProxy(url) as proxy:
        worker = RedisPublisher(proxy.url)
        first = await asyncio.to_thread(worker.publish, "jobs", "done", 1)
        await worker.apublish("jobs", "done", 2)  # both clients have loaded the script
        proxy.cut_after_reply("EVALSHA")
        third = await asyncio.to_thread(worker.publish, "jobs", "done", 3)
        proxy.cut_after_reply("EVALSHA")
        fourth = await worker.apublish("jobs", "done", 4)
        assert proxy.cut == 2
        assert (first.offset, third.offset, fourth.offset) == (1, 3, 4) and third.epoch == first.epoch
        assert await _stream(url, "jobs") == [1, 2, 3, 4]


async def test_the_answer_is_kept_for_the_idempotency_window_under_the_rooms_hash_tag(redis_url: str) -> None:
    url = fresh_url(redis_url)
    broker = RedisBroker(url)
    admin = aioredis.from_url(url)
    try:
        pub = await broker.publish("room", "ev", (), ts=1.0)
        [key] = await admin.keys("rc:{room}:i:*")
        assert await admin.get(key) == f"{pub.position.epoch}:1".encode()
        assert IDEMPOTENCY_WINDOW - 5 < await admin.ttl(key) <= IDEMPOTENCY_WINDOW == 300
    finally:
        await admin.aclose()
        await broker.aclose()
