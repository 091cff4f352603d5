"""Fixtures for hub tests: a started Hub per broker, a shared counting encoder, a connection factory.

Every test that takes ``hub`` runs once per broker (``broker_kind``: memory, async, redis):
the hub must keep its rooms, fan-out, subscribe and recovery the same over each. A test about
the hub alone (the handler registry never reaches the broker) pins ``broker_kind`` to
``memory`` and says so.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from brokers import make_hub
from hub_doubles import ConnFactory, CountingEncoder, RecordingConnection

from roomcast.hub import Hub


@pytest.fixture
async def hub(broker_kind: str) -> AsyncIterator[Hub]:
    h = make_hub(broker_kind)
    await h.start()
    try:
        yield h
    finally:
        await h.aclose()


@pytest.fixture
def encoder() -> CountingEncoder:
    return CountingEncoder()


@pytest.fixture
def make_conn(hub: Hub, encoder: CountingEncoder) -> ConnFactory:
    """Build a RecordingConnection registered with ``hub`` (shared encoder unless given)."""
    ids = itertools.count(1)

    def build(enc: Any = None, **kwargs: Any) -> RecordingConnection:
        conn = RecordingConnection(f"c{next(ids)}", hub=hub, encoder=encoder if enc is None else enc, **kwargs)
        hub.add_connection(conn)
        return conn

    return build
