"""Publications made in one loop turn go to Redis together on the pipeline's own connection
(``AutoPipeline``), in the order they were made, each with its own answer; a lone one goes at
the end of its turn."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redisserver import fresh_url, running_redis

from roomcast.broker.base import BrokerEvents
from roomcast.broker.redis import RedisBroker
from roomcast.broker.redis_pipeline import AutoPipeline
from roomcast.errors import BrokerUnavailable
from roomcast.types import Publication, RoomName, StreamPosition


class _Heard(BrokerEvents):
    def __init__(self, expect: int = 0) -> None:
        self.offsets: list[int] = []
        self.expect = expect
        self.all_heard = asyncio.Event()

    def on_publication(self, publication: Publication) -> None:
        self.offsets.append(publication.position.offset)
        if len(self.offsets) == self.expect:
            self.all_heard.set()

    def on_terminal(self, room: RoomName) -> None:
        pass

    def on_stream_lost(self, rooms: object) -> None:
        pass


async def test_a_burst_goes_as_pipelines_in_order_with_one_answer_each(redis_url: str) -> None:
    broker = RedisBroker(fresh_url(redis_url))
    heard = _Heard(expect=200)
    await broker.start(heard)
    try:
        await broker.subscribe("burst")
        answers = await asyncio.gather(*(broker.publish("burst", "n", (i,), ts=0.0) for i in range(200)))
        assert [a.position.offset for a in answers] == list(range(1, 201))  # made in order, stored in order
        assert [a.data for a in answers] == [(i,) for i in range(200)]
        assert broker._publish.batches >= 1  # the burst did not go one by one
        assert broker._publish.batches < 200
        await asyncio.wait_for(heard.all_heard.wait(), 5)
        assert heard.offsets == list(range(1, 201))
        history = await broker.history("burst", since=StreamPosition(answers[0].position.epoch, 0))
        assert [p.data for p in history.publications] == [(i,) for i in range(200)]
    finally:
        await broker.aclose()


async def test_a_lone_publication_is_not_batched(redis_url: str) -> None:
    broker = RedisBroker(fresh_url(redis_url))
    await broker.start(_Heard())
    try:
        for n in range(3):
            assert (await broker.publish("calm", "n", (n,), ts=0.0)).position.offset == n + 1
        assert broker._publish.batches == 0
    finally:
        await broker.aclose()


async def test_every_caller_of_a_failed_batch_hears_it() -> None:
    with running_redis() as server:
        broker = RedisBroker(server.url)
        await broker.start(_Heard())
        try:
            await broker.publish("r", "n", (0,), ts=0.0)
            server.kill()
            results = await asyncio.gather(
                *(broker.publish("r", "n", (i,), ts=0.0) for i in range(20)), return_exceptions=True
            )
            assert all(isinstance(r, BrokerUnavailable) for r in results), results
            with pytest.raises(BrokerUnavailable):
                await broker.publish("r", "n", (99,), ts=0.0)  # and the next one is not stuck behind them
        finally:
            await broker.aclose()


async def test_calls_that_meet_a_flushed_script_cache_load_it_and_run_once(redis_url: str) -> None:
    """Redis restarted or ran ``SCRIPT FLUSH`` between two batches: each call is answered
    NOSCRIPT (it did not run), so the script is loaded again and the call sent again, every
    call answered once."""
    client = aioredis.from_url(fresh_url(redis_url))
    pipeline = AutoPipeline(client, client.register_script("return redis.call('INCR', KEYS[1])"))
    try:
        assert await pipeline.call(["n"], []) == 1  # the script is known to Redis now
        await client.script_flush()
        answers = await asyncio.wait_for(asyncio.gather(*(pipeline.call(["n"], []) for _ in range(10))), 5)
        assert sorted(answers) == list(range(2, 12))
        assert await client.get("n") == b"11"  # each ran exactly once
    finally:
        await pipeline.aclose()
        await client.aclose()


async def test_a_burst_made_in_one_turn_reaches_a_subscribing_node_in_one_read(redis_url: str) -> None:
    """What a fan-out costs is the writes per delivered message: publications that reach a
    node together are written to each of its clients once. Ten publications made in one
    loop turn go to Redis as one write, so the subscribed broker hears all ten in the same
    loop turn (none alone first, as when the first call went on its own)."""
    broker = RedisBroker(fresh_url(redis_url))
    loop = asyncio.get_running_loop()
    turns = 0

    def count_turns() -> None:
        nonlocal turns
        turns += 1
        loop.call_soon(count_turns)

    heard = _Heard(expect=10)
    heard_in: list[int] = []
    on_publication = heard.on_publication

    def note_turn(publication: Publication) -> None:
        heard_in.append(turns)
        on_publication(publication)

    heard.on_publication = note_turn  # type: ignore[method-assign]
    await broker.start(heard)
    count_turns()
    try:
        await broker.subscribe("together")
        for round_ in range(3):
            heard.offsets.clear()
            heard.all_heard.clear()
            heard_in.clear()
            await asyncio.gather(*(broker.publish("together", "n", (i,), ts=0.0) for i in range(10)))
            await asyncio.wait_for(heard.all_heard.wait(), 5)
            assert len(set(heard_in)) == 1, f"round {round_}: heard in turns {heard_in}"
        assert broker._publish.batches == 3
    finally:
        await broker.aclose()


async def test_calls_on_a_connection_redis_closed_go_again_on_a_new_one_each_run_once(redis_url: str) -> None:
    """The pipeline's own connection was closed by Redis while idle (``CLIENT KILL``: a
    restart, a proxy, a timeout): the next calls meet the dead socket, and are sent again, in
    order, on a new connection, each answered and each run exactly once."""
    client = aioredis.from_url(fresh_url(redis_url))
    pipeline = AutoPipeline(client, client.register_script("return redis.call('INCR', KEYS[1])"))
    try:
        assert await pipeline.call(["n"], []) == 1  # the pipeline's connection is open now
        killed = await client.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert killed >= 1
        answers = await asyncio.wait_for(asyncio.gather(*(pipeline.call(["n"], []) for _ in range(10))), 5)
        assert answers == list(range(2, 12))  # in order
        assert await client.get("n") == b"11"  # none ran twice, none was lost
    finally:
        await pipeline.aclose()
        await client.aclose()
