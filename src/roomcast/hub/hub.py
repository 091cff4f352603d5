"""The ``Hub``: rooms, publish and fan-out, subscribe with snapshot or recovery, handlers.

Imports L0, ``broker.base`` and ``hub.*``. The hub is transport-agnostic: a Socket.IO socket,
an SSE stream and a plain WebSocket are all ``Connection`` objects to it.

Fan-out (DESIGN §8): a publication is encoded once per encoder present in the room, then
written to each member synchronously with no task, future or object per recipient. Members
whose buffers are full are collected and disconnected as slow consumers after the loop.

Subscribe (DESIGN §6, centrifuge's PubSubSync): join held → broker subscription ready →
read history or the position and snapshot → merge what arrived live meanwhile by offset →
release, in one loop step with the caller writing the ``Subscription``. It makes no
assumption about when the broker delivers, so it is exact over a broker that suspends in
every call and delivers later (``tests/broker/test_contract.py`` shows it).

The broker's subscription follows local membership: a room's first member (held or live)
subscribes the node to it, its last one leaving unsubscribes. Those calls, and presence
updates, run in order per room in the background (``_chain``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from roomcast import disconnect
from roomcast.broker.base import Broker
from roomcast.broker.memory import MemoryBroker
from roomcast.cluster.base import Cluster, LocalCluster
from roomcast.disconnect import Disconnect
from roomcast.errors import BrokerError, ConnectionClosed, LimitExceeded, ShuttingDown
from roomcast.hub.connection import Connection
from roomcast.hub.connlog import ConnectionLog
from roomcast.hub.handlers import ConnectHandler, Handler, HandlerRegistry
from roomcast.hub.nodes import NodeOps, RoomListing
from roomcast.hub.publication import prepare
from roomcast.hub.rooms import Pending, Room
from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition, Subscription

__all__ = ["Hub", "SnapshotProvider", "WriteHold"]

logger = logging.getLogger("roomcast.hub")

SnapshotProvider = Callable[[RoomName], Any]
"""``(room) -> state`` — sync or ``async``; the room's current state for a new subscriber."""

F = TypeVar("F", bound=Callable[..., Any])

_SYNC_ATTEMPTS = 3
"""Reads of one subscription before giving up: a retry follows only an epoch that changed
during the read, so a third one means the broker is failing."""


class _Read:
    """What one sync read of a room found, before the held publications are merged in."""

    __slots__ = ("base", "recovered", "snapshot", "publications", "terminal")

    def __init__(
        self, base: StreamPosition, recovered: bool, snapshot: Any, publications: Sequence[Publication], terminal: bool
    ) -> None:
        self.base = base
        self.recovered = recovered
        self.snapshot = snapshot
        self.publications = publications
        self.terminal = terminal


class Hub:
    """The one object an application talks to.

    Args:
        broker: moves publications and keeps history; a ``MemoryBroker`` by default.
        max_rooms_per_connection: rooms a client may subscribe to on one connection
            (``subscribe`` refuses past it with ``LimitExceeded``; the application's own
            ``join`` calls are not limited).
        cluster: the node bus to the other processes serving these rooms (``nodes``: a
            disconnect, a message to a connection, the room listing, on every node); this
            process alone by default.
    """

    def __init__(
        self, *, broker: Broker | None = None, max_rooms_per_connection: int = 100, cluster: Cluster | None = None
    ) -> None:
        self.broker: Broker = broker if broker is not None else MemoryBroker()
        self.max_rooms_per_connection = max_rooms_per_connection
        self.tasks: Any = None  # the TaskService, when the server runs one (``roomcast.tasks``)
        self.handlers = HandlerRegistry()
        self.connections: dict[ConnectionId, Connection] = {}
        self._rooms: dict[RoomName, Room] = {}
        self.nodes = NodeOps(cluster if cluster is not None else LocalCluster(), self.connections, self._listing)
        """Calls answered by every node: ``disconnect``, ``emit_to``, ``rooms``."""
        self._snapshots: list[tuple[str, SnapshotProvider]] = []
        self._canonical_snapshots: list[tuple[str, SnapshotProvider]] = []
        self._presence_patterns: list[str] = []
        self._chains: dict[RoomName, asyncio.Task[None]] = {}
        # presence changes not yet handed to the broker, by room: client -> joined (its user) or left
        self._presence_changes: dict[RoomName, dict[ConnectionId, _Joined | None]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._held: dict[RoomName, list[_Held]] = {}  # holds kept until their publication is fanned out
        self.write_hold: WriteHold | None = None
        """Where this node's connections' writes are gathered (the native door sets it): held
        while a publication of this node to a room with members here is on its way through
        the broker, so what comes back together is written together."""
        self._loop: asyncio.AbstractEventLoop | None = None
        # Counted for operators (``server.metrics`` reads them when scraped), never per recipient:
        self.accepted = 0  # publications accepted by ``publish`` here (given a position)
        self.published = 0  # publications fanned out to this node's members
        self.delivered = 0  # writes of a publication to a member
        self.slow_disconnects = 0
        self.stream_losses = 0
        self.disconnects: dict[Disconnect | None, int] = {}  # ended connections by reason
        self.connection_log = ConnectionLog()  # one info line per connection open and close
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        """Bind to the running loop and start the broker. Idempotent."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._closing = False
            await self.broker.start(self)
            await self.nodes.cluster.start()

    async def aclose(self) -> None:
        """Refuse publications from now on, disconnect every connection and stop the broker."""
        self._closing = True
        for conn in list(self.connections.values()):
            conn.disconnect(disconnect.SHUTDOWN)
        pending = [*self._chains.values(), *self._background]
        if pending:
            await asyncio.wait(pending, timeout=5)
        await self.nodes.cluster.aclose()
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

    def snapshot(self, pattern: str, *, canonical: bool = False) -> Callable[[F], F]:
        """Register a snapshot provider for rooms matching the glob ``pattern``.

        The first registered pattern that matches wins. ``canonical``: the provider of the
        canonical view (``Publication.canonical``), for the rooms whose clients are sent
        another form; a subscriber asking for that view gets it, and the ordinary provider
        where none matches.
        """

        def register(provider: F) -> F:
            (self._canonical_snapshots if canonical else self._snapshots).append((pattern, provider))
            return provider

        return register

    # -- connections and rooms ----------------------------------------------------------
    def add_connection(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        self.connection_log.opened(conn)

    def remove_connection(self, conn: Connection, reason: Disconnect | None = None) -> None:
        """Forget ``conn`` and its memberships. Transports call this when it ends, with why:
        the first call for a connection counts it in ``disconnects`` under ``reason`` and
        logs its close line (with its rooms, so before they are left)."""
        if self.connections.pop(conn.id, None) is not None:
            self.disconnects[reason] = self.disconnects.get(reason, 0) + 1
            self.connection_log.closed(conn, reason)
        for room in list(conn.rooms):
            self.leave(conn, room)

    def join(self, conn: Connection, room: RoomName) -> asyncio.Future[None]:
        """Make ``conn`` a live member of ``room`` now, with no snapshot or recovery.

        Publications delivered to this node from now on reach it. Await the result to know
        when the broker delivers the room here: a handler that joins, awaits, then sends
        the room's state leaves no gap. Without the await, publications made before the
        broker subscription is in place may not arrive; code that cares uses ``subscribe``.
        """
        r = self._room(room)
        if conn in r.pending:
            return self._ready(r)
        if r.add(conn):
            conn.joined(room)
            self._entered(conn, r)
            self._arrived(conn, r)
        return self._ready(r)

    def leave(self, conn: Connection, room: RoomName) -> None:
        r = self._rooms.get(room)
        if r is None or not r.remove(conn):
            return
        conn.left(room)
        user = conn.user
        if user is not None and user not in r.users and self._presence_patterns:
            self._announce(room, "presence:leave", user)
        if r.empty:
            del self._rooms[room]
            self._release_held(room, None)
        if self._loop is None:
            return  # closed: the broker forgets this node's rooms and presence itself
        self._presence_changed(room, conn.id, None)
        if r.empty:
            self._chain(room, lambda: self.broker.unsubscribe(room))

    def position_of(self, conn: Connection, room: RoomName) -> StreamPosition | None:
        """Where ``conn`` stands in ``room``'s stream: everything up to it was written to it.

        ``None`` when it is not a member, or while it syncs (nothing of the room was written).
        """
        r = self._rooms.get(room)
        if r is None:
            return None
        pending = r.pending.get(conn)
        if pending is not None:
            return pending.after
        return r.position if r.has(conn) else None

    def delivered_position(self, room: RoomName) -> StreamPosition | None:
        """The last position of ``room`` this node has fanned out (``None``: no local members)."""
        r = self._rooms.get(room)
        return r.position if r is not None else None

    def _room(self, room: RoomName) -> Room:
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = Room(room)
        return r

    def _entered(self, conn: Connection, r: Room) -> None:
        self._presence_changed(r.name, conn.id, _Joined(conn.user))

    def _arrived(self, conn: Connection, r: Room) -> None:
        """Announce a user's first connection in ``r`` once it receives the room (after its
        subscription, so the announcement reaches the newcomer too)."""
        user = conn.user
        if user is not None and r.users.get(user) == 1 and self._presence_patterns:
            self._announce(r.name, "presence:join", user)

    def _ready(self, r: Room) -> asyncio.Future[None]:
        """The room's broker subscription, made (again, after a failure) when needed."""
        ready = r.ready
        if ready is None or (ready.done() and (ready.cancelled() or ready.exception() is not None)):
            ready = r.ready = self._chain(r.name, lambda: self._subscribe_broker(r))
        return ready

    async def _subscribe_broker(self, r: Room) -> None:
        await self.broker.subscribe(r.name)
        position = await self.broker.position(r.name)
        if r.position is None:
            r.position = position  # the baseline: later publications are compared to it

    def _chain(self, room: RoomName, call: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run ``call`` after every earlier broker call about ``room`` (subscribe before
        unsubscribe before subscribe, presence add before remove)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the hub is not running; call start() first")
        task = loop.create_task(_after(self._chains.get(room), call))
        self._chains[room] = task
        task.add_done_callback(lambda done: self._chain_done(room, done))
        return task

    def _presence_changed(self, room: RoomName, client: ConnectionId, change: _Joined | None) -> None:
        """Hand a join or leave to the broker with the others made meanwhile.

        The changes of a room wait in one batch, which takes its turn in the room's chain
        and then makes its broker calls together: a broker over the network (Redis) writes
        them in one round trip, where a thousand clients joining one room took a thousand
        round trips, one after another. A client appears once in a batch, with its latest
        change, and the room's batches go in order, so a leave never overtakes its join.
        """
        changes = self._presence_changes.get(room)
        if changes is None:
            changes = self._presence_changes[room] = {}
            self._chain(room, lambda: self._hand_presence(room))
        changes[client] = change

    async def _hand_presence(self, room: RoomName) -> None:
        changes = self._presence_changes.pop(room, {})
        calls = [self._presence_call(room, client, change) for client, change in changes.items()]
        if len(calls) == 1:  # the usual case: one call, nothing to gather
            await calls[0]
            return
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failed:
            raise BrokerError(f"{len(failed)} of {len(outcomes)} presence changes failed: {failed[0]}") from failed[0]

    def _presence_call(self, room: RoomName, client: ConnectionId, change: _Joined | None) -> Awaitable[None]:
        if change is None:
            return self.broker.remove_presence(room, client)
        return self.broker.add_presence(room, client, change.user)

    def _chain_done(self, room: RoomName, task: asyncio.Task[None]) -> None:
        if self._chains.get(room) is task:
            del self._chains[room]
        if not task.cancelled() and task.exception() is not None:
            logger.error("broker call for room %r failed", room, exc_info=task.exception())

    # -- presence -----------------------------------------------------------------------
    def track_presence(self, pattern: str) -> None:
        """Publish ``presence:join`` / ``presence:leave`` ``{"room", "user"}`` to matching rooms.

        Sent when a user's first connection on this node joins a room and when its last one
        leaves, so a user with three tabs open is one arrival, not three.
        """
        self._presence_patterns.append(pattern)

    async def presence(self, room: RoomName) -> Presence:
        """Who is in ``room``, on every node (this node's own changes are counted)."""
        chain = self._chains.get(room)
        if chain is not None:
            await asyncio.wait((chain,))
        return await self.broker.presence(room)

    def _announce(self, room: RoomName, event: str, user: str) -> None:
        if self._closing:
            return  # everyone is leaving: nobody is left to tell
        if not any(fnmatch.fnmatchcase(room, p) for p in self._presence_patterns):
            return
        self._spawn(self.publish(room, event, {"room": room, "user": user}))

    def _spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        if self._loop is None:
            job.close()  # closed hub: the job never runs, and says nothing about it
            return
        task = self._loop.create_task(_logged(job))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- terminal rooms -----------------------------------------------------------------
    async def mark_terminal(self, room: RoomName) -> None:
        """Record that ``room`` will publish nothing more (a finished task's room).

        Its members are told (``Connection.room_terminal``) once its last publication
        reached them: an SSE stream whose rooms are all terminal ends, and answers a
        reconnect with 204 so ``EventSource`` stops.
        """
        await self.broker.mark_terminal(room)

    async def is_terminal(self, room: RoomName) -> bool:
        return await self.broker.is_terminal(room)

    def on_terminal(self, room: RoomName) -> None:
        """The broker says ``room`` is finished (called after its last publication)."""
        r = self._rooms.get(room)
        if r is None or r.terminal:
            return
        r.terminal = True
        for group in list(r.groups.values()):
            for conn in list(group):
                conn.room_terminal(room)

    # -- local views ----------------------------------------------------------------------
    def rooms(self) -> dict[RoomName, int]:
        """Every room with local members, and how many (syncing ones included)."""
        return {name: room.size + len(room.pending) for name, room in self._rooms.items()}

    def _listing(self) -> RoomListing:
        return {name: (room.size + len(room.pending), sorted(room.users)) for name, room in self._rooms.items()}

    def users(self, room: RoomName) -> list[str]:
        """The distinct users with a connection in ``room`` here (anonymous ones are not counted)."""
        r = self._rooms.get(room)
        return sorted(r.users) if r is not None else []

    def members(self, room: RoomName) -> list[Connection]:
        r = self._rooms.get(room)
        return r.members() if r is not None else []

    # -- publishing ---------------------------------------------------------------------
    async def publish(
        self,
        room: RoomName,
        event: str,
        *args: JSONValue,
        skip: Collection[ConnectionId] | None = None,
        canonical: tuple[JSONValue, ...] | None = None,
    ) -> StreamPosition:
        """Publish ``event`` with ``args`` to every member of ``room``, in every process.

        ``skip``: connections (by id) the publication is not for, such as its sender. It is
        kept with the publication, so history replays skip them too (``Publication.skip``).

        ``canonical``: the arguments in the application's own form when ``args`` are what
        clients are sent instead (a task kind's payload map). Serialised once and kept with
        the publication (``Publication.canonical``) for the streams that ask for that view.

        Returns:
            The publication's position in the room's stream.

        Raises:
            InvalidPublication: no transport could deliver it (``hub.publication``): a
                reserved event name, or data that is not JSON or is nested too deep.
            ShuttingDown: the hub is closing; its subscribers are gone, so nothing is
                published rather than acknowledged for nobody.
        """
        if self._closing:
            raise ShuttingDown(f"the hub is closing: {event!r} to {room!r} was not published")
        encoded, binary = prepare(event, args)
        skipped = frozenset(skip) if skip else None
        kept = prepare(event, canonical)[0] if canonical is not None else None  # JSON transports' form
        hold = self.write_hold if room in self._rooms else None
        if hold is not None:  # it comes back here to be fanned out: the door's writes wait for it
            hold.hold()
        try:
            pub = await self.broker.publish(
                room, event, args, ts=time.time(), encoded=encoded, binary=binary, skip=skipped, canonical=kept
            )
        except BaseException:
            if hold is not None:
                hold.release()
            raise
        if hold is not None:
            self._hold_until_fanned_out(room, pub.position, hold)
        self.accepted += 1
        return pub.position

    def _hold_until_fanned_out(self, room: RoomName, position: StreamPosition, hold: WriteHold) -> None:
        """Keep ``hold`` until the publication at ``position`` is fanned out here: its answer
        and the publication itself travel on two connections, and the answer may come first.
        Released at the latest after ``hold.limit`` seconds, or when the room goes."""
        r = self._rooms.get(room)
        last = r.position if r is not None else None
        if self._loop is None or last is None or last.epoch != position.epoch or last.offset >= position.offset:
            hold.release()  # fanned out already, or not coming here as such
            return
        held = _Held(position.offset, hold)
        held.timer = self._loop.call_later(hold.limit, self._hold_expired, room, held)
        self._held.setdefault(room, []).append(held)

    def _hold_expired(self, room: RoomName, held: _Held) -> None:
        waiting = self._held.get(room)
        if waiting is not None and held in waiting:
            waiting.remove(held)
            if not waiting:
                del self._held[room]
        held.release()

    def _release_held(self, room: RoomName, up_to: int | None) -> None:
        """Release the holds of ``room``'s publications fanned out (all, for ``None``)."""
        waiting = self._held.pop(room, None)
        if waiting is None:
            return
        kept = []
        for held in waiting:
            if up_to is None or held.offset <= up_to:
                held.release()
            else:
                kept.append(held)
        if kept:
            self._held[room] = kept

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

    def on_publication(self, publication: Publication) -> None:
        """Fan a publication out to local members (called by the broker)."""
        r = self._rooms.get(publication.room)
        if r is None:
            return  # on its way when the room's last member left
        if r.recovering is not None:
            r.recovering.append(publication)  # the stream is being re-read: in order, after it
            return
        position, last = publication.position, r.position
        if last is not None and position.epoch != last.epoch:
            self._reset(r, f"room {r.name!r} lost its history (new epoch)")
            return
        if last is not None and position.offset > last.offset + 1:
            logger.warning("room %r: offset %d after %d, re-reading history", r.name, position.offset, last.offset)
            self._recover(r, last, [publication])
            return
        if r.pending:
            lost = r.feed(publication)
            if lost is not None:
                for conn in lost:
                    self._drop(conn, r)
        if last is not None and position.offset <= last.offset:
            return  # delivered here before (a replay after a lost stream, or twice by the broker)
        r.position = position
        self.published += 1
        if self._held:
            self._release_held(r.name, position.offset)
        slow: list[Connection] | None = None
        skip = publication.skip
        skipped = 0
        for encoder, members in r.groups.items():
            try:
                encoded = encoder.encode(publication)
            except Exception:  # one transport's bug must not stop the others' delivery
                logger.exception("could not encode a publication to %r for %r", publication.room, encoder)
                continue
            if skip is None:
                for conn in members:
                    if not conn.write(encoded):
                        if slow is None:
                            slow = []
                        slow.append(conn)
                continue
            for conn in members:  # one set lookup per member: nothing allocated per recipient
                if conn.id in skip:
                    skipped += 1
                elif not conn.write(encoded):
                    if slow is None:
                        slow = []
                    slow.append(conn)
        self.delivered += r.size - skipped
        if slow is not None:
            for conn in slow:
                self.slow_disconnects += 1
                logger.info("disconnecting slow consumer %s", conn.id)
                conn.disconnect(disconnect.SLOW)

    # -- a broken live stream -------------------------------------------------------------
    def on_stream_lost(self, rooms: Collection[RoomName] | None) -> None:
        """The broker may have missed publications of ``rooms`` (``None``: all of them).

        Each local room re-reads its history from the last position delivered here and
        fans out what it missed; if history no longer holds it, the room's subscribers are
        disconnected with ``INSUFFICIENT_STATE`` and recover (or reset) when they return.
        """
        self.stream_losses += 1
        names: Iterable[RoomName] = list(self._rooms) if rooms is None else rooms
        for name in names:
            r = self._rooms.get(name)
            if r is None:
                continue
            if r.recovering is not None:
                r.relost = True  # a re-read is under way: read once more after it
                continue
            if r.position is not None:  # else the broker subscription is still being made
                self._recover(r, r.position, [])

    def _recover(self, r: Room, base: StreamPosition, held: list[Publication]) -> None:
        """Hold ``r``'s live publications (``held`` first) and re-read history after ``base``."""
        r.recovering = held
        self._spawn(self._reread(r, base))

    async def _reread(self, r: Room, base: StreamPosition) -> None:
        r.relost = False
        try:
            result = await self.broker.history(r.name, since=base)
        except Exception:
            logger.exception("room %r: could not re-read history after a lost stream", r.name)
            result = None
        if self._rooms.get(r.name) is not r:
            return
        held, r.recovering = r.recovering or [], None
        if result is None or not result.complete:
            self._reset(r, f"room {r.name!r}: history no longer holds what the stream lost")
            return
        for pub in (*result.publications, *held):
            self.on_publication(pub)
        if r.relost and r.position is not None and r.recovering is None:
            self._recover(r, r.position, [])  # lost again while reading

    def _reset(self, r: Room, why: str) -> None:
        """Nobody in ``r`` can be continued exactly: disconnect them to recover or reset."""
        logger.warning("%s; disconnecting its %d subscribers", why, r.size + len(r.pending))
        for conn in r.members():
            self._drop(conn, r)

    def _drop(self, conn: Connection, r: Room) -> None:
        self.leave(conn, r.name)
        conn.disconnect(disconnect.INSUFFICIENT_STATE)

    # -- subscribe with snapshot or recovery ----------------------------------------------
    async def subscribe(self, conn: Connection, room: RoomName, *, since: StreamPosition | None = None) -> Subscription:
        """Join ``room`` and return what the subscriber needs to be exactly in sync.

        With ``since`` (a position from an earlier subscription) the missed publications
        are returned if history still holds all of them (``recovered``); otherwise the
        room's snapshot. The caller writes the ``Subscription`` before it next awaits:
        live publications after ``Subscription.position`` reach ``conn`` through ``write``
        from then on, nothing twice and nothing skipped.

        Raises:
            LimitExceeded: ``conn`` would have more than ``max_rooms_per_connection`` rooms
                (counted before anything is awaited, so concurrent subscribes cannot pass it).
            ConnectionClosed: ``conn`` ended, or left the room, while it was being synced.
            BrokerError: the broker kept changing under the read.
        """
        (sub,) = await self.subscribe_many(conn, ((room, since),))
        return sub

    async def subscribe_many(
        self,
        conn: Connection,
        requests: Iterable[tuple[RoomName, StreamPosition | None]],
        *,
        canonical: bool = False,
    ) -> list[Subscription]:
        """``subscribe`` to several rooms at once, released together in one loop step.

        For a transport whose one cursor resumes every room (SSE): no room's live
        publications reach ``conn`` before every room's ``Subscription`` is written.
        ``canonical``: a snapshot comes from the canonical view's provider where one
        matches (``snapshot(..., canonical=True)``).
        """
        wanted = list(dict(requests).items())
        new = sum(1 for room, _ in wanted if room not in conn.rooms)
        if len(conn.rooms) + new > self.max_rooms_per_connection:
            raise LimitExceeded(f"at most {self.max_rooms_per_connection} rooms per connection")
        holds = []
        for room, _ in wanted:  # held from here: live publications are kept from now on
            if self._has(conn, room):
                self.leave(conn, room)  # subscribing again: the new sync covers the gap
            r = self._room(room)
            holds.append(r.hold(conn))
            conn.joined(room)
            self._entered(conn, r)
        try:
            reads = [await self._read(conn, room, since, canonical) for room, since in wanted]
            for attempt in range(1, _SYNC_ATTEMPTS + 1):
                merged = [self._merge(conn, room, hold, read) for (room, _), hold, read in zip(wanted, holds, reads)]
                subs = [sub for sub in merged if sub is not None]
                if len(subs) == len(merged):
                    break
                if attempt == _SYNC_ATTEMPTS:
                    raise BrokerError(f"the broker kept changing while subscribing to {wanted[0][0]!r}")
                for i, sub in enumerate(merged):  # the room's epoch changed under the read
                    if sub is None:
                        room, since = wanted[i]
                        holds[i].buffer = []
                        reads[i] = await self._read(conn, room, since, canonical)
        except BaseException:
            for room, _ in wanted:
                self.leave(conn, room)
            raise
        for sub, hold in zip(subs, holds):
            r = self._rooms[sub.room]
            self._release(conn, r, hold, sub.position)
            self._arrived(conn, r)
        return subs

    def _has(self, conn: Connection, room: RoomName) -> bool:
        r = self._rooms.get(room)
        return r is not None and r.has(conn)

    async def _read(
        self, conn: Connection, room: RoomName, since: StreamPosition | None, canonical: bool = False
    ) -> _Read:
        r = self._rooms.get(room)
        if r is None or conn not in r.pending:
            raise ConnectionClosed(f"connection {conn.id} left {room!r} while subscribing")
        await asyncio.shield(self._ready(r))
        broker = self.broker
        read: _Read | None = None
        if since is not None:
            result = await broker.history(room, since=since)
            if result.complete:
                read = _Read(since, True, None, result.publications, False)
        if read is None:
            base = await broker.position(room)
            read = _Read(base, False, await self._snapshot(room, canonical), (), False)
        read.terminal = await broker.is_terminal(room)
        if conn.closed or self._rooms.get(room) is not r or conn not in r.pending:
            raise ConnectionClosed(f"connection {conn.id} closed while subscribing to {room!r}")
        return read

    def _merge(self, conn: Connection, room: RoomName, hold: Pending, read: _Read) -> Subscription | None:
        """The read plus what was held meanwhile, by offset; ``None`` if it must be read again."""
        r = self._rooms.get(room)
        if r is None or r.pending.get(conn) is not hold or conn.closed:
            raise ConnectionClosed(f"connection {conn.id} closed while subscribing to {room!r}")
        pubs = list(read.publications)
        epoch, last = read.base.epoch, read.base.offset + len(pubs)
        for pub in hold.buffer or ():
            position = pub.position
            if position.epoch != epoch or position.offset > last + 1:
                return None
            if position.offset == last + 1:
                pubs.append(pub)
                last += 1
        cid = conn.id  # what was published with this connection skipped is not replayed to it
        return Subscription(
            room,
            StreamPosition(epoch, last),
            read.recovered,
            read.snapshot,
            tuple(pub for pub in pubs if pub.skip is None or cid not in pub.skip),
            read.terminal or r.terminal,
        )

    def _release(self, conn: Connection, r: Room, hold: Pending, position: StreamPosition) -> None:
        """Live now if this node has delivered up to ``position``; else after it does."""
        current = r.position
        if current == position:
            r.add(conn)
            return
        hold.buffer, hold.after = None, position
        if current is not None and current.epoch == position.epoch and current.offset > position.offset:
            logger.error("room %r delivered past a subscriber's merged position", r.name)
            self._drop(conn, r)

    async def _snapshot(self, room: RoomName, canonical: bool = False) -> Any:
        providers = self._canonical_snapshots + self._snapshots if canonical else self._snapshots
        for pattern, provider in providers:
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


class WriteHold(Protocol):
    """A door's writes, held while this node's publications are on their way (``Hub.write_hold``)."""

    limit: float
    """The longest the writes wait: a hold not released by then is released anyway."""

    def hold(self) -> None: ...

    def release(self) -> None: ...


class _Held:
    """A hold kept until the publication at ``offset`` is fanned out here (released once)."""

    __slots__ = ("offset", "hold", "timer")

    def __init__(self, offset: int, hold: WriteHold) -> None:
        self.offset = offset
        self.hold: WriteHold | None = hold
        self.timer: asyncio.TimerHandle | None = None

    def release(self) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            hold.release()
        if self.timer is not None:
            self.timer.cancel()


class _Joined:
    """A client's presence in a room, as handed to the broker: it joined as ``user``."""

    __slots__ = ("user",)

    def __init__(self, user: str | None) -> None:
        self.user = user


async def _after(previous: asyncio.Task[None] | None, call: Callable[[], Awaitable[None]]) -> None:
    if previous is not None and not previous.done():
        await asyncio.wait((previous,))
    await call()


async def _logged(job: Coroutine[Any, Any, Any]) -> None:
    """Run a background job; its failure is logged once here, never left unretrieved."""
    try:
        await job
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("background job failed")
