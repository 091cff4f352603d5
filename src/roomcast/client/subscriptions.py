"""The rooms a client wants, and how far it has read each one.

Owns ``RoomState`` and ``Subscriptions``. Pure: no I/O, no clock, no asyncio; imports only
the stdlib and L0 (``roomcast.errors``, ``roomcast.types``).

Why it exists: after a reconnect the client subscribes again to every room, presenting the
``(epoch, offset)`` it last applied, so that the server can replay exactly what was missed
instead of sending a fresh snapshot (``docs/protocol.md``, "Recovery flow" and §3). That
only works if the position is the position of the last event the application actually
received, so the I/O layer asks ``advance()`` before delivering each room event, and drops
the event when the answer is ``False`` (a duplicate or an event of a room it left).

Positions follow the server's rules: ``offset`` counts the room's publications within one
``epoch``; a new epoch means history was lost and offsets start again, so a position of a
different epoch is never "older" or "newer", it replaces the old one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from roomcast.errors import RemoteProtocolError
from roomcast.types import JSONValue, RoomName

__all__ = ["RoomState", "Subscriptions"]


@dataclass(frozen=True, slots=True)
class RoomState:
    """What the client knows about one room it wants.

    A snapshot: ``Subscriptions`` replaces the value on every change, so one handed to
    application code never changes under it.

    Attributes:
        room: the room's name.
        epoch: the stream's epoch from the last subscribe reply or event; ``None`` until the
            first subscribe is acknowledged.
        offset: the position of the last publication applied (or of the reply, when no
            event came since); ``None`` until the first subscribe is acknowledged.
        recovered: whether the last subscribe reply recovered missed publications
            (``True``) or sent a snapshot (``False``); ``None`` before any reply.
    """

    room: RoomName
    epoch: str | None = None
    offset: int | None = None
    recovered: bool | None = None

    @property
    def positioned(self) -> bool:
        """Whether a position is known, so a resubscribe can ask for recovery."""
        return self.epoch is not None and self.offset is not None


class Subscriptions:
    """The rooms to subscribe (again after each reconnect) and their last positions.

    Iteration follows the order rooms were first added, so resubscribes after a reconnect
    happen in the order the application asked for them.
    """

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[RoomName, RoomState] = {}

    def add(self, room: RoomName) -> RoomState:
        """Want ``room``. Idempotent: a room already present keeps its position."""
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = RoomState(room)
        return state

    def remove(self, room: RoomName) -> None:
        """Stop wanting ``room`` and forget its position; unknown rooms are ignored.

        A later subscribe to it starts afresh (a snapshot), and its events are refused by
        ``advance()`` from now on, including ones already on the wire.
        """
        self._rooms.pop(room, None)

    def get(self, room: RoomName) -> RoomState | None:
        """The state of ``room``, or ``None`` if it is not wanted."""
        return self._rooms.get(room)

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def __iter__(self) -> Iterator[RoomState]:
        # A copy: callers resubscribe (and may remove rooms) while iterating.
        return iter(list(self._rooms.values()))

    def __len__(self) -> int:
        return len(self._rooms)

    def subscribe_payload(self, room: RoomName) -> dict[str, JSONValue]:
        """The argument of the built-in ``subscribe`` event for ``room``.

        ``{"room": room}`` while no position is known (the server answers with a snapshot);
        ``{"room": room, "epoch": e, "offset": o}`` once one is, so the server can replay
        what was missed.

        Raises:
            KeyError: ``room`` was never ``add``-ed (or was removed): subscribing to a room
                that is not tracked would lose its position.
        """
        state = self._rooms.get(room)
        if state is None:
            raise KeyError(f"room {room!r} is not tracked: call add() first")
        if state.epoch is None or state.offset is None:
            return {"room": room}
        return {"room": room, "epoch": state.epoch, "offset": state.offset}

    def on_subscribed(self, room: RoomName, reply: Mapping[str, Any]) -> RoomState:
        """Record the server's answer to ``subscribe``.

        ``reply`` is the ack of the built-in event: ``{room, epoch, offset, recovered,
        snapshot}``, or when recovering ``{room, epoch, offset, recovered: true,
        publications: [...]}``. Its ``offset`` is the room's position *after* any
        ``publications`` it carries, so the caller delivers those (they are not passed
        through ``advance()``) and live events continue after them.

        A refusal (``{"error": "..."}``) is not a reply this accepts: the caller checks for
        ``"error"`` first and keeps or removes the room as it sees fit.

        If ``room`` was removed while its subscribe was in flight, nothing is recorded: the
        returned state is detached and ``room in self`` stays false, so an unsubscribe
        racing a subscribe never resurrects the room.

        Raises:
            RemoteProtocolError: the reply is not a well-formed subscribe ack for ``room``
                (another room, a missing or mistyped ``epoch``/``offset``/``recovered``).
        """
        epoch, offset, recovered = _parse_reply(room, reply)
        state = RoomState(room, epoch, offset, recovered)
        if room in self._rooms:
            self._rooms[room] = state
        return state

    def advance(self, room: RoomName, epoch: str, offset: int) -> bool:
        """Account for a live event of ``room`` at ``(epoch, offset)``.

        Returns:
            ``True`` if the event is new and its position is now the room's; ``False`` if
            the caller must drop it:

            - the room is not tracked (left, or never joined by this client);
            - no subscribe reply has come yet: the server sends the ack before any event of
              the room, so such an event belongs to an earlier subscription whose state the
              coming reply replaces;
            - same epoch and ``offset`` at or below the known one: a duplicate or a stale
              replay.

            An event of another epoch is accepted and restarts the position there: the
            server lost history and its offsets started again, so "lower" means nothing.
            A gap (``offset`` more than one ahead) is accepted too; the server does not
            leave gaps within one connection.
        """
        state = self._rooms.get(room)
        if state is None or state.epoch is None or state.offset is None:
            return False
        if epoch == state.epoch and offset <= state.offset:
            return False
        self._rooms[room] = RoomState(room, epoch, offset, state.recovered)
        return True

    def __repr__(self) -> str:
        return f"<Subscriptions {len(self._rooms)} rooms>"


def _parse_reply(room: RoomName, reply: Mapping[str, Any]) -> tuple[str, int, bool]:
    """``(epoch, offset, recovered)`` from a subscribe ack, checked field by field."""
    if not isinstance(reply, Mapping):
        raise RemoteProtocolError(f"subscribe reply for {room!r} is not an object")
    if reply.get("room") != room:
        raise RemoteProtocolError(f"subscribe reply for {room!r} names another room")
    epoch = reply.get("epoch")
    offset = reply.get("offset")
    recovered = reply.get("recovered")
    if not isinstance(epoch, str):
        raise RemoteProtocolError(f"subscribe reply for {room!r}: epoch must be a string")
    # bool is an int: True must not read as offset 1.
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise RemoteProtocolError(f"subscribe reply for {room!r}: offset must be a non-negative integer")
    if not isinstance(recovered, bool):
        raise RemoteProtocolError(f"subscribe reply for {room!r}: recovered must be a boolean")
    return epoch, offset, recovered
