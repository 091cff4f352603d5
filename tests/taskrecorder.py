"""A subscriber double for task tests: records what the hub writes to it and waits for it.

Joined to rooms like a client, so a test sees what a client would: publications in order,
after the hub's fan-out (through the broker, whichever it is). Waits are on the recorded
events with a timeout, never on sleeps.

Over a broker that delivers later (``async``, ``redis``: ``tests/brokers.py``) two things are
not immediate, and the helpers here wait for both: a join is in place only once the broker
confirmed it (``recorder`` awaits every join before it returns, so nothing published after
it can pass it by), and a publication reaches the recorder some loop passes after its
``publish`` returned (``Recorder.caught_up`` waits until every room it is in has been fanned
out up to the broker's position; ``until`` / ``until_event`` wait for one expected event).
A test asserts on ``events`` only after one of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from brokers import fanned_out

from roomcast.disconnect import Disconnect
from roomcast.hub import Connection, Hub
from roomcast.types import Publication

__all__ = ["Recorder", "recorder", "WAIT"]

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
        self._hub = hub
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

    async def caught_up(self) -> None:
        """Wait until every publication made so far in this recorder's rooms was written to
        it (at once on ``memory``, which fans out inside ``publish``); then ``events`` is
        complete up to now, and an event missing from it was never published."""
        await fanned_out(self._hub, *sorted(self.rooms))


async def recorder(hub: Hub, *rooms: str, name: str = "rec") -> Recorder:
    """A ``Recorder`` on ``hub``, returned once it is a member of every room in ``rooms`` and the
    broker confirmed each (Redis: subscribed), so no publication made after it can pass it by."""
    conn = Recorder(name, hub=hub)
    hub.add_connection(conn)
    await asyncio.gather(*(hub.join(conn, room) for room in rooms))
    return conn
