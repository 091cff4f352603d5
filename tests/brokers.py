"""The brokers every broker-parametrized suite runs over, built by name.

``memory`` is what users run in one process; ``async`` (``asyncbroker.AsyncBroker``) keeps the
contract and nothing more: it suspends in every call and delivers later, in a random order
across rooms; ``redis`` is ``RedisBroker`` on a real redis-server started for the session.
The hub and the transports must behave the same over all of them.

The ``broker_kind`` fixture (tests/conftest.py) runs a test once per kind; ``make_hub`` and
``make_app`` build what it runs against, and ``fanned_out`` waits for the fan-out that
``memory`` does inside ``publish`` and the others do later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from asyncbroker import AsyncBroker
from loopstep import yield_to_loop
from redisserver import fresh_url

from roomcast.broker.base import Broker
from roomcast.broker.memory import MemoryBroker
from roomcast.broker.redis import RedisBroker
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.types import RoomName, StreamPosition

__all__ = ["BROKERS", "make_app", "make_broker", "make_hub", "fanned_out"]

BROKERS = ["memory", "async", "redis"]

REDIS_URL: str | None = None
"""The session's redis-server, set by the ``redis_url`` fixture in tests/conftest.py."""

DELIVERY_WAIT = 5.0
"""Seconds a publication may take to reach the hub's fan-out before a test fails."""


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
        broker = RedisBroker(_fresh_redis(), history_size=history_size, history_ttl=history_ttl)
    else:
        raise ValueError(f"unknown broker {kind!r}")
    return broker


def make_hub(kind: str, *, history_size: int = 1000) -> Hub:
    """A ``Hub`` (not started) over a fresh broker of ``kind``."""
    return Hub(broker=make_broker(kind, history_size=history_size))


def make_app(kind: str, **settings: Any) -> App:
    """An ``App`` over a fresh broker of ``kind``, as a deployment of that kind builds it.

    ``redis`` is ``Settings(redis_url=...)``: the server makes its ``RedisBroker`` and its
    ``RedisCluster`` node bus itself, as ``roomcast serve --redis`` does, so the API's rooms
    listing and disconnects go through Redis too. Tasks are kept in memory unless given.
    """
    settings.setdefault("task_db", ":memory:")
    if kind == "redis":
        return App(None, Settings(redis_url=_fresh_redis(), **settings))
    if kind == "memory":
        return App(Hub(), Settings(**settings))
    return App(Hub(broker=make_broker(kind)), Settings(**settings))


async def fanned_out(hub: Hub, *rooms: RoomName) -> None:
    """Wait until ``hub`` has fanned out, in each of ``rooms`` it has members in, every
    publication the broker holds.

    ``memory`` delivers inside ``publish``, so there is nothing to wait for; ``async`` and
    ``redis`` deliver later. Awaited after the publications and before asserting what the
    members were written. A room without members here has nothing to wait for.
    """
    async with asyncio.timeout(DELIVERY_WAIT):
        for room in rooms:
            target = await hub.broker.position(room)
            while room in hub.rooms() and not _reached(hub.delivered_position(room), target):
                await yield_to_loop()  # a loop pass: the broker's delivery is a callback or a socket read


def _reached(at: StreamPosition | None, target: StreamPosition) -> bool:
    return at is not None and at.epoch == target.epoch and at.offset >= target.offset


def _fresh_redis() -> str:
    assert REDIS_URL is not None, "the redis_url fixture starts the server"
    return fresh_url(REDIS_URL)
