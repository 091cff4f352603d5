"""The broker contract: how publications move between processes and where room state lives.

Imports only L0. The hub talks to a broker only through these Protocols, so a Redis broker can
be written from this docstring alone and the hub never learns about Redis. The model is
centrifuge's ``Broker``: delivery is asynchronous, and the hub, not the broker, makes a
subscriber's snapshot plus tail exact (``hub.rooms``).

Invariants every implementation keeps:

* **Atomic history + publish per room.** ``publish`` appends to the room's history and hands
  the publication to delivery as one step: no node is delivered a publication that history
  does not hold, and every publication history holds is delivered to every node that was
  subscribed to the room when ``publish`` appended it.
* **Per-room order.** A node receives one room's publications in offset order (other rooms'
  publications may come in any interleaving). ``on_terminal`` for a room is delivered after
  every publication of that room that was published before ``mark_terminal`` was called.
* **Monotonic offsets per epoch.** Within one epoch a room's offsets are 1, 2, 3 ... without
  gaps. Offsets are never reused under one epoch.
* **A new epoch whenever a room's history is lost.** Each room has its own epoch. When a
  broker cannot vouch for the history behind an offset (a restart of an in-memory broker, a
  room's stream freed after its lifetime, flushed storage), that room's epoch changes, so a
  client holding the old ``(epoch, offset)`` takes a fresh snapshot instead of a silent gap.
* **Subscribe before reading.** When ``subscribe(room)`` returns, every publication whose
  ``publish`` appends after that moment is delivered to this node. So a hub that subscribes,
  then reads history or the position, misses nothing between the two.
* **A broken live stream is reported, never hidden.** If a broker may have failed to deliver
  some publications of subscribed rooms (a reconnect, a lost or deaf subscription), it calls
  ``BrokerEvents.on_stream_lost`` once delivery flows again. The hub then reads history from
  its last delivered position and fans out what was missed, or resets the room's subscribers.

Nothing here promises that a call returns without suspending: the hub awaits every call and
holds live publications back while it does (``hub.rooms.Room``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition

__all__ = ["Broker", "BrokerEvents", "HistoryResult", "RoomState", "SupportsHealth"]


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
    """What a broker calls back into (the hub). Each call must be quick and must not raise."""

    def on_publication(self, publication: Publication) -> None:
        """A publication of a room this node is subscribed to; fan it out locally."""

    def on_terminal(self, room: RoomName) -> None:
        """``room`` was marked terminal (after its last publication was delivered)."""

    def on_stream_lost(self, rooms: Collection[RoomName] | None) -> None:
        """Publications of ``rooms`` (``None``: every subscribed room) may have been missed.

        Called once live delivery of those rooms flows again, so what the hub reads from
        history next and what it receives live from then on leave no gap between them.
        """


class RoomState(Protocol):
    """Room facts every node shares: which rooms are finished, and who is in a room.

    Terminal rooms (a finished task's room) let an SSE reconnect on any node learn that
    nothing more will come (204). Presence is counted per connection, so a node adds and
    removes its own connections and any node can ask who is in a room.
    """

    async def mark_terminal(self, room: RoomName) -> None:
        """Record that ``room`` will publish nothing more, and tell subscribed nodes
        (``BrokerEvents.on_terminal``)."""

    async def is_terminal(self, room: RoomName) -> bool:
        """Whether ``room`` was marked terminal."""

    async def add_presence(self, room: RoomName, client: ConnectionId, user: str | None) -> None:
        """Count ``client`` (of ``user``, ``None`` when anonymous) as in ``room``."""

    async def remove_presence(self, room: RoomName, client: ConnectionId) -> None:
        """Stop counting ``client`` in ``room`` (nothing happens if it was not counted)."""

    async def presence(self, room: RoomName) -> Presence:
        """Who is in ``room`` across every node."""


class Broker(RoomState, Protocol):
    """Moves publications between processes and keeps bounded history per room."""

    async def start(self, events: BrokerEvents) -> None:
        """Begin delivering the publications of subscribed rooms to ``events``."""

    async def publish(
        self,
        room: RoomName,
        event: str,
        data: tuple[JSONValue, ...],
        *,
        ts: float,
        encoded: tuple[bytes, ...] | None = None,
        binary: bool = False,
        skip: frozenset[ConnectionId] | None = None,
        canonical: tuple[bytes, ...] | None = None,
    ) -> Publication:
        """Append to history and deliver to every node subscribed to ``room`` (atomic).

        ``encoded`` and ``binary`` are ``data`` serialised once by the hub
        (``Publication.encoded``, ``Publication.binary``); a broker that moves publications
        between processes sends those bytes as they are. ``skip`` and ``canonical`` travel
        and are stored with the publication (``Publication.skip``, ``Publication.canonical``).
        """

    async def subscribe(self, room: RoomName) -> None:
        """Deliver ``room``'s publications to this node from now on (see "Subscribe before
        reading"). The hub calls it when a room gets its first local member."""

    async def unsubscribe(self, room: RoomName) -> None:
        """Stop delivering ``room`` here. The hub calls it when a room loses its last member;
        a publication already on its way may still arrive and is ignored."""

    async def position(self, room: RoomName) -> StreamPosition:
        """The room's current position (offset 0 under a fresh epoch for an unknown room)."""

    async def history(self, room: RoomName, *, since: StreamPosition) -> HistoryResult:
        """Publications after ``since``, or ``complete=False`` if they cannot all be given."""

    async def aclose(self) -> None:
        """Stop delivering and release resources."""


@runtime_checkable
class SupportsHealth(Protocol):
    """An optional capability: a broker that can tell when its live stream cannot be trusted.

    ``unhealthy`` is the reason (``/readyz`` answers 503 with it), or ``None``. A broker in
    one process (``MemoryBroker``) has nothing to tell and does not implement it.
    """

    unhealthy: str | None
