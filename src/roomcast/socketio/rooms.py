"""Where a python-socketio room lives among the hub's rooms.

Rooms belong to a namespace in python-socketio, so ``emit(room="x", namespace="/a")``
never reaches ``/b``. The hub has one flat room space, shared by every transport; so:

* in the default namespace ``/`` a room is the hub room of the same name, which SSE and
  ``/ws`` clients subscribe to as well (what roomcast adds: one room, every transport);
* in another namespace it is ``"<namespace>#<room>"`` (``"/admin#ops"``);
* every connection of a namespace is also in ``"socket.io#<namespace>"``, the room an emit
  without ``to`` goes to. One room per namespace, never one per connection: ``to=sid``
  is a direct send.

Names starting with ``socket.io#`` are reserved for that; a room given by the application
in that form is refused with ``ValueError``.
"""

from __future__ import annotations

from typing import Final

from roomcast.types import MAX_NAME_LENGTH, RoomName

__all__ = ["RESERVED_PREFIX", "room_key", "namespace_key", "room_name", "RELAY_ROOM"]

RESERVED_PREFIX: Final = "socket.io#"

RELAY_ROOM: Final = "socket.io#relay"
"""The hub room every node running the facade listens to for what must reach a connection or
a room wherever it is: an emit to a sid on another node, ``close_room`` (``socketio.relay``)."""


def room_key(namespace: str, room: object) -> RoomName:
    """The hub room of python-socketio room ``room`` in ``namespace``.

    Raises:
        ValueError: ``room`` is not a non-empty string, uses the reserved prefix, or is too long.
    """
    if not isinstance(room, str) or not room:
        raise ValueError(f"room names are non-empty strings, not {room!r}")
    if room.startswith(RESERVED_PREFIX):
        raise ValueError(f"room names starting with {RESERVED_PREFIX!r} are reserved")
    key = room if namespace == "/" else f"{namespace}#{room}"
    if len(key) > MAX_NAME_LENGTH:
        raise ValueError(f"room {room!r} in {namespace}: longer than {MAX_NAME_LENGTH} characters")
    return key


def namespace_key(namespace: str) -> RoomName:
    """The hub room every connection of ``namespace`` is in (an emit to everyone)."""
    return RESERVED_PREFIX + namespace


def room_name(namespace: str, key: RoomName) -> str | None:
    """The python-socketio room behind hub room ``key`` for ``namespace``; ``None`` if it is
    not one of that namespace's rooms."""
    if key.startswith(RESERVED_PREFIX):
        return None
    if namespace == "/":
        return key
    prefix = namespace + "#"
    return key[len(prefix) :] if key.startswith(prefix) else None
