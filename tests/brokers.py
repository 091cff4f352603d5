"""The brokers every broker-parametrized suite runs over, built by name.

``memory`` is what users run in one process; ``async`` (``asyncbroker.AsyncBroker``) keeps the
contract and nothing more: it suspends in every call and delivers later, in a random order
across rooms; ``redis`` is ``RedisBroker`` on a real redis-server started for the session.
The hub and the transports must behave the same over all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asyncbroker import AsyncBroker
from redisserver import fresh_url

from roomcast.broker.base import Broker
from roomcast.broker.memory import MemoryBroker
from roomcast.broker.redis import RedisBroker

__all__ = ["BROKERS", "make_broker"]

BROKERS = ["memory", "async", "redis"]

REDIS_URL: str | None = None
"""The session's redis-server, set by the ``redis_url`` fixture in tests/conftest.py."""


def make_broker(
    kind: str,
    *,
    history_size: int = 1000,
    history_ttl: float = 300.0,
    clock: Callable[[], float] = time.time,
    seed: int = 0,
) -> Any:
    """A fresh broker of ``kind`` with the given history bounds."""
    if kind == "memory":
        broker: Broker = MemoryBroker(history_size=history_size, history_ttl=history_ttl, clock=clock)
    elif kind == "async":
        broker = AsyncBroker(seed=seed, history_size=history_size, history_ttl=history_ttl, clock=clock)
    elif kind == "redis":
        assert REDIS_URL is not None, "the redis_url fixture starts the server"
        broker = RedisBroker(fresh_url(REDIS_URL), history_size=history_size, history_ttl=history_ttl)
    else:
        raise ValueError(f"unknown broker {kind!r}")
    return broker
