"""Vocabulary shared by every layer: names, positions, publications.

Imports only the stdlib. These are small frozen slotted dataclasses: they are created once
per publication (never per recipient) and are cheap for the garbage collector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

__all__ = ["RoomName", "ConnectionId", "JSONValue", "StreamPosition", "Publication"]

RoomName: TypeAlias = str
ConnectionId: TypeAlias = str
JSONValue: TypeAlias = Any
"""Anything orjson can serialise; ``bytes`` inside marks a Socket.IO binary attachment."""


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
