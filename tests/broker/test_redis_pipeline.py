"""Publications made while one is on its way go to Redis as one pipeline (``AutoPipeline``),
in the order they were made, each with its own answer; a lone one goes at once."""

from __future__ import annotations

import asyncio

import pytest
from redisserver import fresh_url, running_redis

from roomcast.broker.base import BrokerEvents
from roomcast.broker.redis import RedisBroker
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
