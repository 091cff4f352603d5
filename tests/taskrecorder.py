"""A subscriber double for task tests: records what the hub writes to it and waits for it.

Joined to rooms like a client, so a test sees what a client would: publications in order,
after the hub's fan-out (through the broker, whichever it is). Waits are on the recorded
events with a timeout, never on sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from roomcast.disconnect import Disconnect
from roomcast.hub import Connection, Hub
from roomcast.types import Publication

__all__ = ["Recorder", "recorder", "subscribed", "WAIT"]

WAIT = 2.0  # seconds any asynchronous outcome may take before the test fails


class _RoomEventEncoder:
    """Encodes a publication as ``(room, event, first argument)``: all a test looks at."""

    def encode(self, publication: Publication) -> tuple[str, str, Any]:
        data = publication.data[0] if publication.data else None
        return (publication.room, publication.event, data)


class Recorder(Connection):
    """A subscriber double that records what the hub writes and can wait for it."""

    def __init__(self, id: str, *, hub: Hub) -> None:
        super().__init__(id, hub=hub, encoder=_RoomEventEncoder())
        self.seen: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Event()

    def write(self, encoded: Any) -> bool:
        self.seen.append(encoded)
        self._changed.set()
        return True

    def emit(self, event: str, *args: Any) -> None:  # pragma: no cover - not used by the hub here
        pass

    def disconnect(self, reason: Disconnect) -> None:
        self.closed = True

    def events(self, room: str) -> list[tuple[str, Any]]:
        return [(event, data) for r, event, data in self.seen if r == room]

    async def until(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def until_event(self, room: str, event: str, timeout: float = WAIT) -> Any:
        await self.until(lambda: any(e == event for e, _ in self.events(room)), timeout)
        return next(d for e, d in self.events(room) if e == event)


def recorder(hub: Hub, *rooms: str, name: str = "rec") -> Recorder:
    conn = Recorder(name, hub=hub)
    hub.add_connection(conn)
    for room in rooms:
        hub.join(conn, room)
    return conn


async def subscribed(hub: Hub, *rooms: str, name: str = "rec") -> Recorder:
    """``recorder``, returned once the broker confirmed every room (Redis: subscribed), so a
    publication from another node right after cannot pass it by."""
    conn = recorder(hub, name=name)
    await asyncio.gather(*(hub.join(conn, room) for room in rooms))
    return conn
