"""Fixtures for hub tests: a started Hub, a shared counting encoder, a connection factory."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hub_doubles import ConnFactory, CountingEncoder, RecordingConnection

from roomcast.hub import Hub


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    h = Hub()
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
