"""``MemoryBroker``: one process, no other service; bounded per-room history in memory.

Imports L0 and ``broker.base``. Delivery is synchronous (inside ``publish``), which the
contract allows but never promises: the hub works the same over a broker that suspends.
In one process a subscription costs nothing, so every publication is delivered, subscribed
or not (the hub ignores rooms without local members): an application's plain ``conn.join``
receives the next publication even if it never awaits the join. ``subscribe`` still
matters: a followed room's stream is never freed.

Every room's stream has its own random epoch, made when the stream is made. A stream is
freed once it holds no history, nobody here subscribes to it and it was quiet for
``history_ttl`` (``sweep``); a room that comes back gets a new stream and so a new epoch,
never reused offsets. A restart loses every stream, so every epoch changes.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from roomcast.broker.base import BrokerEvents, HistoryResult
from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition

__all__ = ["MemoryBroker"]


class _RoomStream:
    __slots__ = ("epoch", "offset", "history", "touched")

    def __init__(self, now: float) -> None:
        self.epoch = secrets.token_urlsafe(6)
        self.offset = 0
        self.history: deque[Publication] = deque()
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
        clock: wall-clock seconds (a parameter so expiry can be tested exactly).
    """

    def __init__(
        self, *, history_size: int = 1000, history_ttl: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        if history_size < 0 or history_ttl < 0:
            raise ValueError("history_size and history_ttl must be >= 0")
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._clock = clock
        self._streams: dict[RoomName, _RoomStream] = {}
        self._subscribed: set[RoomName] = set()
        self._terminal: set[RoomName] = set()
        self._presence: dict[RoomName, dict[ConnectionId, str | None]] = {}
        self._events: BrokerEvents | None = None

    @property
    def streams(self) -> int:
        """How many room streams are held (for tests and metrics)."""
        return len(self._streams)

    async def start(self, events: BrokerEvents) -> None:
        self._events = events

    async def aclose(self) -> None:
        self._events = None

    # -- publications -------------------------------------------------------------------
    async def publish(
        self, room: RoomName, event: str, data: tuple[JSONValue, ...], *, ts: float,
        encoded: tuple[Any, ...] | None = None,
    ) -> Publication:
        stream = self._stream(room)
        stream.offset += 1
        pub = Publication(room, event, data, StreamPosition(stream.epoch, stream.offset), ts, encoded)
        if self._history_size:
            history = stream.history
            history.append(pub)
            if len(history) > self._history_size:
                history.popleft()
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
        self._trim(stream)
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
        freed = [
            room for room, stream in self._streams.items()
            if room not in self._subscribed and not self._trim(stream) and stream.touched < horizon
        ]
        for room in freed:
            del self._streams[room]
        return len(freed)

    def _stream(self, room: RoomName) -> _RoomStream:
        now = self._clock()
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _RoomStream(now)
        stream.touched = now
        return stream

    def _trim(self, stream: _RoomStream) -> int:
        """Drop publications older than the history lifetime; returns how many are left."""
        cutoff = self._clock() - self._history_ttl
        history = stream.history
        while history and history[0].ts < cutoff:
            history.popleft()
        return len(history)

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
