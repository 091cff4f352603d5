"""``AsyncBroker``: a broker that keeps the contract and nothing more, for the contract suite.

Every call suspends before it answers, and a publication is delivered later, with
``call_soon`` or a few loop passes after it, in a seeded random order across rooms (within a
room the order is kept, as the contract says). Storage is a ``MemoryBroker``'s, so history,
epochs and bounds are the real ones. It plays what a network between publish and delivery
does to the hub (Redis will), and what a broken live stream does: ``break_stream`` drops the
deliveries of some rooms until ``mend_stream`` reports the loss.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Collection

from loopstep import yield_to_loop

from roomcast.broker.base import BrokerEvents, HistoryResult
from roomcast.broker.memory import MemoryBroker
from roomcast.types import ConnectionId, JSONValue, Presence, Publication, RoomName, StreamPosition

__all__ = ["AsyncBroker"]

_Item = Publication | RoomName  # a publication, or a room name meaning "now terminal"


class AsyncBroker:
    """A broker over the network, played in one process.

    Args:
        seed: the dice for suspension lengths and the delivery order across rooms.
        history_size, history_ttl, clock: the storage's bounds (``MemoryBroker``'s).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = MemoryBroker(history_size=history_size, history_ttl=history_ttl, clock=clock)
        self._rng = random.Random(seed)
        self._events: BrokerEvents | None = None
        self._subscribed: set[RoomName] = set()
        self._queues: dict[RoomName, deque[_Item]] = {}
        self._broken: set[RoomName] = set()
        self.dropped = 0

    async def _suspend(self) -> None:
        for _ in range(self._rng.randint(1, 3)):
            await yield_to_loop()

    def _enqueue(self, room: RoomName, item: _Item) -> None:
        if self._events is None or room not in self._subscribed:
            return
        if room in self._broken:
            self.dropped += 1
            return
        self._queues.setdefault(room, deque()).append(item)
        asyncio.get_running_loop().call_soon(self._hop, self._rng.randint(0, 3))

    def _hop(self, left: int) -> None:
        if left:
            asyncio.get_running_loop().call_soon(self._hop, left - 1)
            return
        ready = sorted(room for room, queue in self._queues.items() if queue)
        events = self._events
        if not ready or events is None:
            return
        room = self._rng.choice(ready)
        item = self._queues[room].popleft()
        if isinstance(item, Publication):
            events.on_publication(item)
        else:
            events.on_terminal(item)

    # -- the broken stream ------------------------------------------------------------------
    def break_stream(self, rooms: Collection[RoomName]) -> None:
        """Drop every delivery of ``rooms`` from now on (publishing still succeeds)."""
        self._broken.update(rooms)

    async def mend_stream(self, rooms: Collection[RoomName] | None = None) -> None:
        """Deliver ``rooms`` again (``None``: all), then report the loss as the contract says."""
        names = set(self._broken) if rooms is None else set(rooms)
        self._broken -= names
        await self._suspend()
        if self._events is not None:
            self._events.on_stream_lost(None if rooms is None else names)

    # -- the contract -----------------------------------------------------------------------
    async def start(self, events: BrokerEvents) -> None:
        await self._suspend()
        self._events = events

    async def aclose(self) -> None:
        self._events = None

    async def publish(
        self,
        room: RoomName,
        event: str,
        data: tuple[JSONValue, ...],
        *,
        ts: float,
        encoded: tuple[bytes, ...] | None = None,
        binary: bool = False,
        skip: frozenset[str] | None = None,
        canonical: tuple[bytes, ...] | None = None,
    ) -> Publication:
        await self._suspend()
        pub = await self.storage.publish(
            room, event, data, ts=ts, encoded=encoded, binary=binary, skip=skip, canonical=canonical
        )  # appends, does not suspend
        self._enqueue(room, pub)
        await self._suspend()  # the reply crosses the network too
        return pub

    async def subscribe(self, room: RoomName) -> None:
        await self._suspend()
        self._subscribed.add(room)
        await self.storage.subscribe(room)
        await self._suspend()

    async def unsubscribe(self, room: RoomName) -> None:
        await self._suspend()
        self._subscribed.discard(room)
        await self.storage.unsubscribe(room)

    async def position(self, room: RoomName) -> StreamPosition:
        await self._suspend()
        return await self.storage.position(room)

    async def history(self, room: RoomName, *, since: StreamPosition) -> HistoryResult:
        await self._suspend()
        return await self.storage.history(room, since=since)

    def sweep(self) -> int:
        return self.storage.sweep()

    async def mark_terminal(self, room: RoomName) -> None:
        await self._suspend()
        if not await self.storage.is_terminal(room):
            await self.storage.mark_terminal(room)
            self._enqueue(room, room)

    async def is_terminal(self, room: RoomName) -> bool:
        await self._suspend()
        return await self.storage.is_terminal(room)

    async def add_presence(self, room: RoomName, client: ConnectionId, user: str | None) -> None:
        await self._suspend()
        await self.storage.add_presence(room, client, user)

    async def remove_presence(self, room: RoomName, client: ConnectionId) -> None:
        await self._suspend()
        await self.storage.remove_presence(room, client)

    async def presence(self, room: RoomName) -> Presence:
        await self._suspend()
        return await self.storage.presence(room)
