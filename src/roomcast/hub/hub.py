"""The ``Hub``: rooms, publish and fan-out, subscribe with snapshot or recovery, handlers.

Imports L0, ``broker.base`` and ``hub.*``. The hub is transport-agnostic: a Socket.IO socket,
an SSE stream and a plain WebSocket are all ``Connection`` objects to it.

Fan-out (DESIGN §8): a publication is encoded once per encoder present in the room, then
written to each member synchronously with no task, future or object per recipient. Members
whose buffers are full are collected and disconnected as slow consumers after the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from roomcast import disconnect
from roomcast.broker.base import Broker
from roomcast.broker.memory import MemoryBroker
from roomcast.errors import ConnectionClosed, LimitExceeded
from roomcast.hub.connection import Connection
from roomcast.hub.handlers import ConnectHandler, Handler, HandlerRegistry
from roomcast.hub.rooms import Room
from roomcast.types import ConnectionId, JSONValue, Publication, RoomName, StreamPosition

__all__ = ["Hub", "SnapshotProvider"]

logger = logging.getLogger("roomcast.hub")

SnapshotProvider = Callable[[RoomName], Any]
"""``(room) -> state`` — sync or ``async``; the room's current state for a new subscriber."""

F = TypeVar("F", bound=Callable[..., Any])

_SNAPSHOT_ATTEMPTS = 3


class Hub:
    """The one object an application talks to.

    Args:
        broker: moves publications and keeps history; a ``MemoryBroker`` by default.
        max_rooms_per_connection: rooms a client may subscribe to on one connection
            (``subscribe`` refuses past it with ``LimitExceeded``; the application's own
            ``join`` calls are not limited).
    """

    def __init__(self, *, broker: Broker | None = None, max_rooms_per_connection: int = 100) -> None:
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.max_rooms_per_connection = max_rooms_per_connection
        self.tasks: Any = None  # the TaskService, when the server runs one (``roomcast.tasks``)
        self.handlers = HandlerRegistry()
        self.connections: dict[ConnectionId, Connection] = {}
        self._rooms: dict[RoomName, Room] = {}
        self._snapshots: list[tuple[str, SnapshotProvider]] = []
        self._publication_listeners: list[Callable[[Publication], None]] = []
        self._terminal: set[RoomName] = set()
        self._presence_patterns: list[str] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0
        self.delivered = 0
        self.slow_disconnects = 0

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Bind to the running loop and start the broker. Idempotent."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            await self.broker.start(self)

    async def aclose(self) -> None:
        """Disconnect every connection and stop the broker."""
        for conn in list(self.connections.values()):
            conn.disconnect(disconnect.SHUTDOWN)
        await self.broker.aclose()
        self._loop = None

    # -- registration -----------------------------------------------------------------
    def on(self, event: str, *, namespace: str = "/") -> Callable[[F], F]:
        """Register a handler for a client event: ``handler(conn, *args) -> ack``."""

        def register(handler: F) -> F:
            self.handlers.add(namespace, event, handler)
            return handler

        return register

    def on_connect(self, *, namespace: str = "/") -> Callable[[F], F]:
        """Register ``handler(conn, auth)``; raise ``ConnectionRefused`` to refuse."""

        def register(handler: F) -> F:
            self.handlers.add_connect(namespace, handler)
            return handler

        return register

    def on_disconnect(self, *, namespace: str = "/") -> Callable[[F], F]:
        """Register ``handler(conn, reason)``, called once when a connection ends."""

        def register(handler: F) -> F:
            self.handlers.add_disconnect(namespace, handler)
            return handler

        return register

    def add_namespace(self, namespace: str) -> None:
        """Accept Socket.IO connections to ``namespace`` even without handlers."""
        self.handlers.namespaces.add(namespace)

    def snapshot(self, pattern: str) -> Callable[[F], F]:
        """Register a snapshot provider for rooms matching the glob ``pattern``.

        The first registered pattern that matches wins.
        """

        def register(provider: F) -> F:
            self._snapshots.append((pattern, provider))
            return provider

        return register

    # -- connections and rooms ----------------------------------------------------------
    def add_connection(self, conn: Connection) -> None:
        self.connections[conn.id] = conn

    def remove_connection(self, conn: Connection) -> None:
        """Forget ``conn`` and its memberships. Transports call this once when it ends."""
        self.connections.pop(conn.id, None)
        for room in list(conn.rooms):
            self.leave(conn, room)

    def join(self, conn: Connection, room: RoomName) -> None:
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = Room(room)
        if r.add(conn):
            conn.rooms.add(room)
            user = conn.user
            if user is not None and r.users[user] == 1 and self._presence_patterns:
                self._announce(room, "presence:join", user)

    def leave(self, conn: Connection, room: RoomName) -> None:
        r = self._rooms.get(room)
        if r is not None and r.remove(conn):
            conn.rooms.discard(room)
            user = conn.user
            if user is not None and user not in r.users and self._presence_patterns:
                self._announce(room, "presence:leave", user)
            if r.size == 0:
                del self._rooms[room]

    # -- presence -----------------------------------------------------------------------
    def track_presence(self, pattern: str) -> None:
        """Publish ``presence:join`` / ``presence:leave`` ``{"room", "user"}`` to matching rooms.

        Sent when a user's first connection joins a room and when its last one leaves, so a
        user with three tabs open is one arrival, not three.
        """
        self._presence_patterns.append(pattern)

    def presence(self, room: RoomName) -> dict[str, Any]:
        """Who is in ``room`` here: ``{"room", "connections", "users"}`` (users sorted)."""
        r = self._rooms.get(room)
        if r is None:
            return {"room": room, "connections": 0, "users": []}
        return {"room": room, "connections": r.size, "users": sorted(r.users)}

    def _announce(self, room: RoomName, event: str, user: str) -> None:
        if not any(fnmatch.fnmatchcase(room, p) for p in self._presence_patterns):
            return
        if self._loop is None:
            return
        task = self._loop.create_task(self.publish(room, event, {"room": room, "user": user}))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def mark_terminal(self, room: RoomName) -> None:
        """Record that ``room`` will publish nothing more (a finished task's room).

        Its members are told (``Connection.room_terminal``): an SSE stream whose rooms are
        all terminal ends, and answers a reconnect with 204 so ``EventSource`` stops.
        """
        if room in self._terminal:
            return
        self._terminal.add(room)
        for conn in self.members(room):
            conn.room_terminal(room)

    def is_terminal(self, room: RoomName) -> bool:
        return room in self._terminal

    def rooms(self) -> dict[RoomName, int]:
        """Every room with local members, and how many."""
        return {name: room.size for name, room in self._rooms.items()}

    def users(self, room: RoomName) -> list[str]:
        """The distinct users with a connection in ``room`` (anonymous ones are not counted)."""
        r = self._rooms.get(room)
        return sorted(r.users) if r is not None else []

    def members(self, room: RoomName) -> list[Connection]:
        r = self._rooms.get(room)
        return r.members() if r is not None else []

    # -- publishing ---------------------------------------------------------------------
    async def publish(self, room: RoomName, event: str, *args: JSONValue) -> StreamPosition:
        """Publish ``event`` with ``args`` to every member of ``room``, in every process.

        Returns:
            The publication's position in the room's stream.
        """
        pub = await self.broker.publish(room, event, args, ts=time.time())
        return pub.position

    def publish_threadsafe(
        self, room: RoomName, event: str, *args: JSONValue
    ) -> concurrent.futures.Future[StreamPosition]:
        """Publish from sync code or another thread; safe to call from the loop's own thread.

        A sync callback that calls ``publish()`` makes a coroutine nobody awaits, and the
        message silently never leaves; this schedules the publish on the hub's loop instead.

        Raises:
            RuntimeError: the hub has not been started.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("the hub is not running; call publish_threadsafe after start()")
        return asyncio.run_coroutine_threadsafe(self.publish(room, event, *args), loop)

    def add_publication_listener(self, listener: Callable[[Publication], None]) -> None:
        """Call ``listener(publication)`` for every publication, before its fan-out.

        Once per publication, whether or not the room has local members: for transports
        that keep their own record of recent publications (Socket.IO connection state
        recovery replays to a returning session what it missed while it had no socket).
        A listener must be quick and must not raise.
        """
        self._publication_listeners.append(listener)

    def on_publication(self, publication: Publication) -> None:
        """Fan a publication out to local members (called by the broker)."""
        self.published += 1
        for listener in self._publication_listeners:
            listener(publication)
        r = self._rooms.get(publication.room)
        if r is None:
            return
        slow: list[Connection] | None = None
        for encoder, members in r.groups.items():
            try:
                encoded = encoder.encode(publication)
            except Exception:  # one transport's bug must not stop the others' delivery
                logger.exception("could not encode a publication to %r for %r", publication.room, encoder)
                continue
            for conn in members:
                if not conn.write(encoded):
                    if slow is None:
                        slow = []
                    slow.append(conn)
        self.delivered += r.size
        if slow is not None:
            for conn in slow:
                self.slow_disconnects += 1
                logger.info("disconnecting slow consumer %s", conn.id)
                conn.disconnect(disconnect.SLOW)

    # -- subscribe with snapshot or recovery ----------------------------------------------
    async def subscribe(
        self,
        conn: Connection,
        room: RoomName,
        *,
        epoch: str | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """Join ``room`` and return what the subscriber needs to be exactly in sync.

        With ``epoch`` and ``offset`` from an earlier subscription, the missed publications
        are returned if history still holds all of them (``recovered: True``); otherwise the
        room's snapshot (``recovered: False``). Membership starts in the same loop step as
        the position is read, so the subscriber then gets every publication after
        ``offset``: nothing twice, nothing skipped.

        Returns:
            ``{"room", "epoch", "offset", "recovered", "snapshot" | "publications"}``.

        Raises:
            LimitExceeded: ``conn`` already has ``max_rooms_per_connection`` other rooms.
            ConnectionClosed: ``conn`` ended while the snapshot or history was awaited (it is
                not joined: a closed connection left in a room would never be removed).
        """
        if room not in conn.rooms and len(conn.rooms) >= self.max_rooms_per_connection:
            raise LimitExceeded(f"at most {self.max_rooms_per_connection} rooms per connection")
        if epoch is not None and offset is not None:
            result = await self.broker.history(room, since=StreamPosition(epoch, offset))
            if result.complete:
                self._join_open(conn, room)
                return {
                    "room": room,
                    "epoch": result.position.epoch,
                    "offset": result.position.offset,
                    "recovered": True,
                    "publications": [
                        {"event": p.event, "data": list(p.data), "offset": p.position.offset}
                        for p in result.publications
                    ],
                }
        # A publication landing while an async provider is suspended may be missing from
        # its state; take the snapshot again until the position held still around it.
        for _ in range(_SNAPSHOT_ATTEMPTS):
            before = await self.broker.position(room)
            state = await self._snapshot(room)
            position = await self.broker.position(room)
            if position == before:
                self._join_open(conn, room)
                return {
                    "room": room,
                    "epoch": position.epoch,
                    "offset": position.offset,
                    "recovered": False,
                    "snapshot": state,
                }
        # Still moving: hand over the snapshot with what was published since it started,
        # so the subscriber may see an update twice but never misses one.
        result = await self.broker.history(room, since=before)
        self._join_open(conn, room)
        return {
            "room": room,
            "epoch": result.position.epoch,
            "offset": result.position.offset,
            "recovered": False,
            "snapshot": state,
            "publications": [
                {"event": p.event, "data": list(p.data), "offset": p.position.offset}
                for p in result.publications
            ],
        }

    def _join_open(self, conn: Connection, room: RoomName) -> None:
        if conn.closed:
            raise ConnectionClosed(f"connection {conn.id} closed while subscribing to {room!r}")
        self.join(conn, room)

    async def _snapshot(self, room: RoomName) -> Any:
        for pattern, provider in self._snapshots:
            if fnmatch.fnmatchcase(room, pattern):
                state = provider(room)
                if inspect.isawaitable(state):
                    state = await state
                return state
        return None

    # -- handler plumbing used by transports --------------------------------------------
    def handler(self, namespace: str, event: str) -> Handler | None:
        return self.handlers.get(namespace, event)

    def connect_handler(self, namespace: str) -> ConnectHandler | None:
        return self.handlers.connect_handler(namespace)
