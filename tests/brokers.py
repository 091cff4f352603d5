"""The brokers every broker-parametrized suite runs over, built by name.

``memory`` is what users run in one process; ``async`` (``asyncbroker.AsyncBroker``) keeps the
contract and nothing more: it suspends in every call and delivers later, in a random order
across rooms. The hub and the transports must behave the same over both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from asyncbroker import AsyncBroker

from roomcast.broker.base import Broker
from roomcast.broker.memory import MemoryBroker

__all__ = ["BROKERS", "make_broker"]

BROKERS = ["memory", "async"]


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
    else:
        raise ValueError(f"unknown broker {kind!r}")
    return broker
