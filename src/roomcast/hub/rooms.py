"""``Room``: one room's members on this node, grouped by encoder, and those on their way in.

Imports L0 and ``hub.connection``. Live members live in plain dicts used as ordered sets:
joining and leaving are O(1), and iteration during fan-out allocates nothing per member.

The subscribe-sync state lives here too (centrifuge's PubSubSync): a subscriber is *held*
from the moment it joins until the hub has read its snapshot or history. While it syncs,
the room's live publications are kept for it (``Pending.buffer``) and merged by offset when
the read completes. If the read saw further than this node has delivered (delivery is
asynchronous), the subscriber waits for the live stream to pass that point
(``Pending.after``) and becomes live with the next publication: nothing twice, nothing
skipped. Only held subscribers cost anything per publication; live members never do.
"""

from __future__ import annotations

import asyncio

from roomcast.hub.connection import Connection, Encoder
from roomcast.types import Publication, RoomName, StreamPosition

__all__ = ["Room", "Pending"]


class Pending:
    """A subscriber on its way in: syncing (``buffer``), then catching up (``after``)."""

    __slots__ = ("buffer", "after")

    def __init__(self) -> None:
        self.buffer: list[Publication] | None = []
        self.after: StreamPosition | None = None


class Room:
    """One room's local members.

    Attributes:
        groups: live members by encoder.
        pending: subscribers that are not live yet.
        size: live members.
        users: presence, connections per named user (live and pending).
        position: the last publication delivered here (the read right after the broker
            subscription sets it first); ``None`` until then.
        ready: the broker subscription; done once the broker delivers this room here.
        terminal: the broker said the room is finished.
        recovering: while the hub re-reads history after a lost stream, live publications
            wait here; ``None`` otherwise. The re-read is fanned out like live publications,
            so held subscribers get what the stream lost in their buffers too.
        relost: the stream was lost again during a re-read: read once more after it.
    """

    __slots__ = ("name", "groups", "size", "users", "pending", "position", "ready", "terminal", "recovering", "relost")

    def __init__(self, name: RoomName) -> None:
        self.name = name
        self.groups: dict[Encoder, dict[Connection, None]] = {}
        self.size = 0
        self.users: dict[str, int] = {}
        self.pending: dict[Connection, Pending] = {}
        self.position: StreamPosition | None = None
        self.ready: asyncio.Future[None] | None = None
        self.terminal = False
        self.recovering: list[Publication] | None = None
        self.relost = False

    @property
    def empty(self) -> bool:
        return self.size == 0 and not self.pending

    def has(self, conn: Connection) -> bool:
        group = self.groups.get(conn.encoder)
        return (group is not None and conn in group) or conn in self.pending

    def add(self, conn: Connection) -> bool:
        """Make ``conn`` a live member; ``False`` if it already was one."""
        group = self.groups.get(conn.encoder)
        if group is None:
            group = self.groups[conn.encoder] = {}
        elif conn in group:
            return False
        group[conn] = None
        self.size += 1
        if self.pending.pop(conn, None) is None:
            self._count(conn, 1)
        return True

    def hold(self, conn: Connection) -> Pending:
        """Start holding ``conn`` back while it syncs (it must not be a member)."""
        pending = self.pending[conn] = Pending()
        self._count(conn, 1)
        return pending

    def remove(self, conn: Connection) -> bool:
        """Remove ``conn``, live or pending; ``False`` if it was neither."""
        if self.pending.pop(conn, None) is None:
            group = self.groups.get(conn.encoder)
            if group is None or conn not in group:
                return False
            del group[conn]
            if not group:
                del self.groups[conn.encoder]
            self.size -= 1
        self._count(conn, -1)
        return True

    def feed(self, publication: Publication) -> list[Connection] | None:
        """Give ``publication`` to the held subscribers, before the live fan-out.

        A syncing one keeps it for the merge; a catching-up one becomes live when the
        publication is past its position (so the fan-out that follows reaches it). Returns
        the catching-up subscribers whose position belongs to an older epoch: the room's
        history was lost under them, and they must start again.
        """
        lost: list[Connection] | None = None
        position = publication.position
        for conn, pending in list(self.pending.items()):
            if pending.buffer is not None:
                pending.buffer.append(publication)
                continue
            after = pending.after
            assert after is not None
            if position.epoch != after.epoch:
                if lost is None:
                    lost = []
                lost.append(conn)
            elif position.offset > after.offset:
                self.add(conn)
        return lost

    def members(self) -> list[Connection]:
        """Live and pending members."""
        return [*(conn for group in self.groups.values() for conn in group), *self.pending]

    def _count(self, conn: Connection, delta: int) -> None:
        user = conn.user
        if user is None:
            return
        left = self.users.get(user, 0) + delta
        if left:
            self.users[user] = left
        else:
            del self.users[user]
