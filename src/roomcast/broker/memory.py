"""``MemoryBroker``: one process, no other service; bounded per-room history in memory.

Imports L0 and ``broker.base``. Delivery is synchronous (inside ``publish``), which the
contract allows but never promises: the hub works the same over a broker that suspends.
In one process a subscription costs nothing, so every publication is delivered, subscribed
or not (the hub ignores rooms without local members): an application's plain ``conn.join``
receives the next publication even if it never awaits the join. ``subscribe`` still
matters: a followed room's stream is never freed.

History is bounded four ways, trimmed as publications arrive and by a sweep every
``sweep_interval`` seconds: per room by count (``history_size``), age (``history_ttl``) and
bytes (``history_room_bytes``), and in all by bytes (``history_bytes``: past it the oldest
publications of any room go first). Every room's stream has its own random epoch, made when
the stream is made. A stream is freed once it holds no history, nobody here follows it and
it was quiet for ``history_ttl``; its terminal mark goes with it. A room that comes back gets
a new stream and so a new epoch, never reused offsets. A restart loses every stream, so
every epoch changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable

from roomcast.broker.base import BrokerEvents, HistoryResult
from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition

__all__ = ["MemoryBroker"]

logger = logging.getLogger("roomcast.broker")


class _RoomStream:
    __slots__ = ("room", "epoch", "offset", "history", "bytes", "touched")

    def __init__(self, room: RoomName, now: float) -> None:
        self.room = room
        self.epoch = secrets.token_urlsafe(6)
        self.offset = 0
        self.history: deque[Publication] = deque()
        self.bytes = 0
        self.touched = now

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)


class MemoryBroker:
    """An in-process broker.

    Args:
        history_size: publications kept per room for recovery.
        history_ttl: seconds a publication stays in history, and a quiet, empty stream
            nobody follows is kept before it is freed.
        history_room_bytes: bytes of history kept per room (event names and data).
        history_bytes: bytes of history kept in all rooms together.
        sweep_interval: seconds between sweeps (``None``: as often as the lifetime allows,
            at most every 60 s).
        clock: wall-clock seconds (a parameter so expiry can be tested exactly).
    """

    def __init__(
        self,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        history_room_bytes: int = 10_000_000,
        history_bytes: int = 256_000_000,
        sweep_interval: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if history_size < 0 or history_ttl < 0 or history_room_bytes < 0 or history_bytes < 0:
            raise ValueError("history_size, history_ttl, history_room_bytes and history_bytes must be >= 0")
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._room_bytes = history_room_bytes
        self._total_cap = history_bytes
        self._sweep_interval = sweep_interval if sweep_interval is not None else min(60.0, max(history_ttl, 1.0))
        self._clock = clock
        self._streams: dict[RoomName, _RoomStream] = {}
        self._order: deque[tuple[_RoomStream, Publication]] = deque()  # every kept publication, oldest first
        self._kept = 0  # publications in histories (``_order`` also holds trimmed ones until compacted)
        self._total = 0  # bytes in histories
        self._subscribed: set[RoomName] = set()
        self._terminal: set[RoomName] = set()
        self._presence: dict[RoomName, dict[ConnectionId, str | None]] = {}
        self._events: BrokerEvents | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        """How many room streams are held (for tests and metrics)."""
        return len(self._streams)

    @property
    def history_bytes(self) -> int:
        """Bytes of history held in all rooms."""
        return self._total

    def held(self) -> dict[str, int]:
        """Every structure's size, for tests that show nothing is left behind."""
        return {
            "streams": len(self._streams),
            "publications": self._kept,
            "order": len(self._order),
            "bytes": self._total,
            "terminal": len(self._terminal),
            "presence": len(self._presence),
        }

    async def start(self, events: BrokerEvents) -> None:
        self._events = events
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def aclose(self) -> None:
        self._events = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            try:
                self.sweep()
            except Exception:  # a sweep must never stop the next one
                logger.exception("history sweep failed")

    # -- publications -------------------------------------------------------------------
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
        stream = self._stream(room)
        stream.offset += 1
        position = StreamPosition(stream.epoch, stream.offset)
        pub = Publication(room, event, data, position, ts, encoded, binary, skip, canonical)
        if self._history_size:
            self._keep(stream, pub)
        events = self._events
        if events is not None:
            events.on_publication(pub)
        return pub

    async def subscribe(self, room: RoomName) -> None:
        self._subscribed.add(room)

    async def unsubscribe(self, room: RoomName) -> None:
        self._subscribed.discard(room)

    async def position(self, room: RoomName) -> StreamPosition:
        return self._stream(room).position

    async def history(self, room: RoomName, *, since: StreamPosition) -> HistoryResult:
        stream = self._stream(room)
        current = stream.position
        if since.epoch != stream.epoch or since.offset > current.offset or since.offset < 0:
            return HistoryResult((), current, complete=False)
        if since.offset == current.offset:
            return HistoryResult((), current, complete=True)
        self._trim_age(stream, self._clock() - self._history_ttl)
        history = stream.history
        oldest = history[0].position.offset if history else current.offset + 1
        if since.offset + 1 < oldest:
            return HistoryResult((), current, complete=False)
        skip = since.offset + 1 - oldest
        pubs = tuple(history[i] for i in range(skip, len(history)))
        return HistoryResult(pubs, current, complete=True)

    def sweep(self) -> int:
        """Trim every stream by age and free the quiet, empty ones nobody follows.

        Returns:
            How many streams were freed.
        """
        horizon = self._clock() - self._history_ttl
        freed = []
        for room, stream in self._streams.items():
            self._trim_age(stream, horizon)
            if not stream.history and stream.touched < horizon and room not in self._subscribed:
                freed.append(room)
        for room in freed:
            del self._streams[room]
            self._terminal.discard(room)  # finished and forgotten: a new stream starts fresh
        self._compact()
        return len(freed)

    def _stream(self, room: RoomName) -> _RoomStream:
        now = self._clock()
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _RoomStream(room, now)
        stream.touched = now
        return stream

    def _keep(self, stream: _RoomStream, pub: Publication) -> None:
        """Append to history, then trim this room by count and bytes, and all rooms by bytes."""
        size = pub.size
        stream.history.append(pub)
        stream.bytes += size
        self._order.append((stream, pub))
        self._kept += 1
        self._total += size
        while stream.history and (len(stream.history) > self._history_size or stream.bytes > self._room_bytes):
            self._drop_oldest(stream)
        order = self._order
        while self._total > self._total_cap and order:
            other, oldest = order.popleft()
            if other.history and other.history[0] is oldest:
                self._drop_oldest(other)
        if len(order) > 2 * self._kept + 1024:
            self._compact()

    def _drop_oldest(self, stream: _RoomStream) -> None:
        pub = stream.history.popleft()
        size = pub.size
        stream.bytes -= size
        self._total -= size
        self._kept -= 1

    def _trim_age(self, stream: _RoomStream, horizon: float) -> None:
        history = stream.history
        while history and history[0].ts < horizon:
            self._drop_oldest(stream)

    def _compact(self) -> None:
        """Drop the global order's entries for publications a room already trimmed."""
        streams = self._streams
        self._order = deque(
            (stream, pub)
            for stream, pub in self._order
            if streams.get(stream.room) is stream
            and stream.history
            and stream.history[0].position.offset <= pub.position.offset
        )

    # -- room state ---------------------------------------------------------------------
    async def mark_terminal(self, room: RoomName) -> None:
        if room in self._terminal:
            return
        self._terminal.add(room)
        events = self._events
        if events is not None:
            events.on_terminal(room)

    async def is_terminal(self, room: RoomName) -> bool:
        return room in self._terminal

    async def add_presence(self, room: RoomName, client: ConnectionId, user: str | None) -> None:
        self._presence.setdefault(room, {})[client] = user

    async def remove_presence(self, room: RoomName, client: ConnectionId) -> None:
        clients = self._presence.get(room)
        if clients is not None:
            clients.pop(client, None)
            if not clients:
                del self._presence[room]

    async def presence(self, room: RoomName) -> Presence:
        clients = self._presence.get(room, {})
        users = sorted({user for user in clients.values() if user is not None})
        return Presence(room, len(clients), tuple(users))
