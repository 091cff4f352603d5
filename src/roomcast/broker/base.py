"""The broker contract: how publications move between processes and where history lives.

Imports only L0. The hub talks to a broker only through these Protocols, so a Redis broker can
be written from this docstring alone and the hub never learns about Redis.

Invariants every implementation keeps:

* **Atomic history + publish per room.** A publication is appended to the room's history and
  delivered to subscribers as one step: no subscriber sees a publication that history does
  not hold, and no history entry is missing from the live stream.
* **Monotonic offsets per epoch.** Within one epoch a room's offsets are 1, 2, 3 ... without
  gaps, in delivery order.
* **A new epoch whenever history is lost.** If a broker cannot vouch for the history behind an
  offset (restart of an in-memory broker, flushed storage), the room's epoch changes, so a
  client holding the old epoch takes a fresh snapshot instead of a silent gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from roomcast.types import JSONValue, Publication, RoomName, StreamPosition

__all__ = ["Broker", "BrokerEvents", "HistoryResult"]


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What history holds after a position.

    Attributes:
        publications: every publication after the asked position, oldest first.
        position: the room's current position (the last offset published).
        complete: ``False`` when the asked position cannot be continued exactly (another
            epoch, or trimmed by the size/age limits); ``publications`` is then empty.
    """

    publications: tuple[Publication, ...]
    position: StreamPosition
    complete: bool


class BrokerEvents(Protocol):
    """What a broker calls back into (the hub)."""

    def on_publication(self, publication: Publication) -> None:
        """A publication for a room this node has members in; fan it out locally."""


class Broker(Protocol):
    """Moves publications between processes and keeps bounded history per room."""

    async def start(self, events: BrokerEvents) -> None:
        """Begin delivering publications to ``events``."""

    async def publish(
        self, room: RoomName, event: str, data: tuple[JSONValue, ...], *, ts: float
    ) -> Publication:
        """Append to history and deliver to every node with members in ``room`` (atomic)."""

    async def position(self, room: RoomName) -> StreamPosition:
        """The room's current position. Must not suspend in an in-process broker."""

    async def history(self, room: RoomName, *, since: StreamPosition) -> HistoryResult:
        """Publications after ``since``, or ``complete=False`` if they cannot all be given."""

    async def aclose(self) -> None:
        """Stop delivering and release resources."""
