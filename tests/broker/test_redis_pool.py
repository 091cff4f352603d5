"""A burst of calls larger than the connection pool waits for connections, and none fails."""

from __future__ import annotations

import asyncio

from redisserver import fresh_url

from roomcast.broker.redis import RedisBroker
from roomcast.broker.redis_client import POOL_SIZE


async def test_a_burst_past_the_pool_size_waits_for_connections_instead_of_failing(redis_url: str) -> None:
    broker = RedisBroker(fresh_url(redis_url))
    try:
        rooms = [f"room-{n}" for n in range(3 * POOL_SIZE)]
        positions = await asyncio.gather(*(broker.position(room) for room in rooms))
        assert [p.offset for p in positions] == [0] * len(rooms)
        assert len({p.epoch for p in positions}) == len(rooms)  # each room read its own epoch
    finally:
        await broker.aclose()
