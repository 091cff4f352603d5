"""Vocabulary shared by every layer: names, positions, publications.

Imports only the stdlib. These are small frozen slotted dataclasses: they are created once
per publication (never per recipient) and are cheap for the garbage collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeAlias

__all__ = [
    "MAX_NAME_LENGTH",
    "RoomName",
    "ConnectionId",
    "JSONValue",
    "StreamPosition",
    "Publication",
    "Presence",
    "Subscription",
]

RoomName: TypeAlias = str
ConnectionId: TypeAlias = str
JSONValue: TypeAlias = Any
"""Anything orjson can serialise; ``bytes`` inside marks a Socket.IO binary attachment."""

MAX_NAME_LENGTH: Final = 256
"""The longest room or event name, in characters, on every transport and the API."""

MAX_OFFSET: Final = 2**63 - 1
"""The largest offset a position may name: what a signed 64-bit integer (SQLite, Redis) holds."""


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """Where a room's stream stands.

    ``offset`` counts publications in the room (1, 2, 3 ...). ``epoch`` names one unbroken
    history: when history is lost (a restart of the memory broker, a flushed Redis) the epoch
    changes, so a client holding an old ``(epoch, offset)`` knows it cannot be recovered by
    replay and must take a fresh snapshot instead of silently missing messages.
    """

    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class Publication:
    """One event published to one room, at one position of that room's stream."""

    room: RoomName
    event: str
    data: tuple[JSONValue, ...]
    position: StreamPosition
    ts: float
    encoded: tuple[bytes, ...] | None = None
    """``data`` serialised once when it was published, one JSON text per argument, for every
    encoder to embed as it is (and a broker to send as it is); with ``binary``, in
    ``json_safe``'s form. ``None`` only for publications made outside ``Hub.publish``."""
    binary: bool = False
    """``data`` holds binary attachments (Socket.IO sends them from ``data``)."""
    skip: frozenset[ConnectionId] | None = None
    """Connections this publication is not for (python-socketio's ``skip_sid``: the sender).

    Kept with the publication, in history too, so one that comes back by offset does not
    get it either. The fan-out checks it with one set lookup per member, allocating nothing."""
    canonical: tuple[bytes, ...] | None = None
    """The data in the application's own form, serialised like ``encoded``, when clients are
    sent another one (a task kind's payload map: ``encoded`` is what clients read, this is
    ``Task.to_json``); ``None`` for every other publication.

    Kept with the publication, in history too, so a stream that asked for the canonical view
    (``roomcast tail``: SSE ``?view=canonical``) gets it live and on recovery alike."""

    @property
    def size(self) -> int:
        """Bytes the publication costs in history: its event name and serialised data."""
        encoded = self.encoded
        size = len(self.event) + (sum(map(len, encoded)) if encoded is not None else 64 * len(self.data))
        return size if self.canonical is None else size + sum(map(len, self.canonical))


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is in a room: how many connections, and the distinct users behind them (sorted).

    Anonymous connections count in ``connections`` and not in ``users``.
    """

    room: RoomName
    connections: int
    users: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Subscription:
    """What a new subscriber of a room needs to be exactly in sync (``Hub.subscribe``).

    Either ``recovered``: ``publications`` are exactly those after the position the
    subscriber came back with; or not: ``snapshot`` is the room's state (``None`` without a
    provider) and ``publications`` are those after the snapshot's position. Either way the
    subscriber holds everything up to ``position`` once it has them, and every later
    publication reaches it live, once.

    Attributes:
        room: the room.
        position: where the subscriber stands after ``publications``.
        recovered: whether the position it came back with was continued exactly.
        snapshot: the room's state when not ``recovered``.
        publications: what follows the snapshot (or the old position), oldest first.
        terminal: the room will publish nothing more (a finished task's room).
    """

    room: RoomName
    position: StreamPosition
    recovered: bool
    snapshot: Any = None
    publications: tuple[Publication, ...] = ()
    terminal: bool = False

    @property
    def base(self) -> StreamPosition:
        """Where the snapshot (or the old position) stands: just before ``publications``."""
        return StreamPosition(self.position.epoch, self.position.offset - len(self.publications))
