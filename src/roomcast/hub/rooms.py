"""``Room``: the members of one room, grouped by encoder so each publication encodes once.

Imports L0 and ``hub.connection``. Members live in plain dicts used as ordered sets: joining
and leaving are O(1), and iteration during fan-out allocates nothing per member.
"""

from __future__ import annotations

from roomcast.hub.connection import Connection, Encoder
from roomcast.types import RoomName

__all__ = ["Room"]


class Room:
    """One room's local members."""

    __slots__ = ("name", "groups", "size", "users")

    def __init__(self, name: RoomName) -> None:
        self.name = name
        self.groups: dict[Encoder, dict[Connection, None]] = {}
        self.size = 0
        self.users: dict[str, int] = {}  # presence: connections per user, for users with a name

    def add(self, conn: Connection) -> bool:
        """Add ``conn``; ``False`` if it was already a member."""
        group = self.groups.get(conn.encoder)
        if group is None:
            group = self.groups[conn.encoder] = {}
        elif conn in group:
            return False
        group[conn] = None
        self.size += 1
        if conn.user is not None:
            self.users[conn.user] = self.users.get(conn.user, 0) + 1
        return True

    def remove(self, conn: Connection) -> bool:
        """Remove ``conn``; ``False`` if it was not a member."""
        group = self.groups.get(conn.encoder)
        if group is None or conn not in group:
            return False
        del group[conn]
        if not group:
            del self.groups[conn.encoder]
        self.size -= 1
        user = conn.user
        if user is not None:
            left = self.users[user] - 1
            if left:
                self.users[user] = left
            else:
                del self.users[user]
        return True

    def members(self) -> list[Connection]:
        return [conn for group in self.groups.values() for conn in group]
