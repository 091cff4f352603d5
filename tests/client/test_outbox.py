"""The offline buffer: bounded, ordered, never sends what its caller gave up on."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.client.outbox import Outbox, Outgoing
from roomcast.errors import ConnectionClosed, OfflineBufferFull, OfflineRefused


async def test_buffers_in_order_up_to_the_limit_and_skips_emits_whose_caller_gave_up() -> None:
    loop = asyncio.get_running_loop()
    box = Outbox("buffer", limit=3)
    gave_up: asyncio.Future[list[object]] = loop.create_future()
    entries = [Outgoing("a", (), None), Outgoing("b", (), gave_up), Outgoing("c", (1,), None)]
    for entry in entries:
        box.add(entry, "reconnecting")
    with pytest.raises(OfflineBufferFull):
        box.add(Outgoing("d", (), None), "reconnecting")
    gave_up.cancel()  # its ack timed out while it waited
    assert [e.event for e in box.drain()] == ["a", "c"]
    assert len(box) == 0


async def test_refuse_policy_and_discard_and_fail_all() -> None:
    with pytest.raises(OfflineRefused, match="not connected \\(disconnected\\); emit of 'x' refused"):
        Outbox("refuse").add(Outgoing("x", (), None), "disconnected")
    box = Outbox()
    waiting: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
    kept, dropped = Outgoing("kept", (), waiting), Outgoing("dropped", (), None)
    box.add(kept, "connecting")
    box.add(dropped, "connecting")
    box.discard(dropped)
    box.discard(dropped)  # twice: nothing happens
    box.fail_all(ConnectionClosed("client closed"))
    with pytest.raises(ConnectionClosed):
        await waiting
    assert len(box) == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Outbox("queue")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Outbox("buffer", -1)
