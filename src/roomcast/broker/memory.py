"""``MemoryBroker``: one process, no other service; bounded per-room history in memory.

Imports L0 and ``broker.base``. The epoch is random per broker instance: a restart loses
history, so every room's epoch changes and clients recover with a fresh snapshot.
"""

from __future__ import annotations

import secrets
import time
from collections import deque

from roomcast.broker.base import BrokerEvents, HistoryResult
from roomcast.types import JSONValue, Publication, RoomName, StreamPosition

__all__ = ["MemoryBroker"]


class _RoomStream:
    __slots__ = ("offset", "history")

    def __init__(self) -> None:
        self.offset = 0
        self.history: deque[Publication] = deque()


class MemoryBroker:
    """An in-process broker.

    Args:
        history_size: publications kept per room for recovery.
        history_ttl: seconds a publication stays in history.
    """

    def __init__(self, *, history_size: int = 1000, history_ttl: float = 300.0) -> None:
        if history_size < 0 or history_ttl < 0:
            raise ValueError("history_size and history_ttl must be >= 0")
        self.epoch = secrets.token_urlsafe(6)
        self._history_size = history_size
        self._history_ttl = history_ttl
        self._streams: dict[RoomName, _RoomStream] = {}
        self._events: BrokerEvents | None = None

    async def start(self, events: BrokerEvents) -> None:
        self._events = events

    async def publish(
        self, room: RoomName, event: str, data: tuple[JSONValue, ...], *, ts: float
    ) -> Publication:
        stream = self._streams.get(room)
        if stream is None:
            stream = self._streams[room] = _RoomStream()
        stream.offset += 1
        pub = Publication(room, event, data, StreamPosition(self.epoch, stream.offset), ts)
        if self._history_size:
            history = stream.history
            history.append(pub)
            if len(history) > self._history_size:
                history.popleft()
        if self._events is not None:
            self._events.on_publication(pub)
        return pub

    async def position(self, room: RoomName) -> StreamPosition:
        stream = self._streams.get(room)
        return StreamPosition(self.epoch, stream.offset if stream else 0)

    async def history(self, room: RoomName, *, since: StreamPosition) -> HistoryResult:
        stream = self._streams.get(room)
        current = StreamPosition(self.epoch, stream.offset if stream else 0)
        if since.epoch != self.epoch or since.offset > current.offset or since.offset < 0:
            return HistoryResult((), current, complete=False)
        if stream is None or since.offset == current.offset:
            return HistoryResult((), current, complete=True)
        self._trim(stream)
        history = stream.history
        oldest = history[0].position.offset if history else current.offset + 1
        if since.offset + 1 < oldest:
            return HistoryResult((), current, complete=False)
        skip = since.offset + 1 - oldest
        pubs = tuple(history[i] for i in range(skip, len(history)))
        return HistoryResult(pubs, current, complete=True)

    async def aclose(self) -> None:
        self._events = None

    def _trim(self, stream: _RoomStream) -> None:
        cutoff = time.time() - self._history_ttl
        history = stream.history
        while history and history[0].ts < cutoff:
            history.popleft()
