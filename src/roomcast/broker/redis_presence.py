"""``PresenceWriter``: one node's presence entries and liveness key in Redis, written in batches.

Imports L0, ``broker.redis_client`` and redis-py. ``RedisBroker`` keeps its node's entries
here (``<node_id>|<user>`` under each room's ``rc:{room}:p``) and renews the node's liveness
key ``rc:alive:<node_id>`` through it, so there is one place that writes what this node
claims.

Why batches: a room's presence changes with every join and leave, and a thousand clients
joining one room (a page load for a whole audience, a node's clients coming back after a
restart) each made a round trip of their own, one after another. Those writes trailed the
joins by seconds, and their round trips woke Redis and the node a thousand times while it
was fanning out. Here every change made while a write is on its way goes in the next one:
one round trip for everything that arrived meanwhile (group commit), however many callers.
A caller still waits for the write that carries its change, so what it awaited is in Redis,
as every node reads it.

A write that fails (Redis down) fails its callers with ``BrokerUnavailable`` and keeps its
changes for the next write: a removal is not lost because Redis was away when the client
left, and the node's entries are written whole once Redis is back (``renew(rewrite=True)``)
or once the node finds its liveness key gone (other nodes may have dropped its entries).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from roomcast.broker import redis_client
from roomcast.errors import BrokerUnavailable
from roomcast.types import ConnectionId, RoomName

__all__ = ["PresenceWriter", "presence_key"]


def presence_key(room: RoomName) -> str:
    """The hash of ``room``'s presence entries (the room's hash tag, as its other keys)."""
    return f"rc:{{{room}}}:p"


class PresenceWriter:
    """This node's presence entries, mirrored into Redis a batch at a time.

    Args:
        redis: the node's command client.
        alive_key: this node's liveness key; renewed with every write.
        alive_ms: the key's lifetime, in milliseconds.
    """

    def __init__(self, redis: aioredis.Redis, alive_key: str, alive_ms: int) -> None:
        self._redis = redis
        self._alive_key = alive_key
        self._alive_ms = alive_ms
        self.entries: dict[RoomName, dict[ConnectionId, str]] = {}
        """What this node claims, by room: the truth its writes (and rewrites) bring Redis to."""
        self._changes: dict[RoomName, dict[ConnectionId, str | None]] = {}  # None: removed
        self._rewrite = False  # the next write puts every entry back
        self._waiting: list[asyncio.Future[None]] = []
        self._writing: asyncio.Task[None] | None = None

    async def add(self, room: RoomName, client: ConnectionId, value: str) -> None:
        self.entries.setdefault(room, {})[client] = value
        self._changes.setdefault(room, {})[client] = value
        await self._committed()

    async def remove(self, room: RoomName, client: ConnectionId) -> None:
        entries = self.entries.get(room)
        if entries is not None:
            entries.pop(client, None)
            if not entries:
                del self.entries[room]
        self._changes.setdefault(room, {})[client] = None
        await self._committed()

    async def renew(self, *, rewrite: bool = False) -> None:
        """Renew the liveness key (and write every entry back when asked, or when the key was
        gone), with whatever changes are waiting."""
        self._rewrite = self._rewrite or rewrite
        await self._committed()

    async def settled(self) -> None:
        """Wait until every change made so far has been written (or its write has failed):
        the write that takes them, not every write after it, so a reader is not held up by
        a room that keeps changing."""
        writing = self._writing
        if self._changes or (writing is not None and not writing.done()):
            with contextlib.suppress(BrokerUnavailable):  # the reader's own call will say so
                await self._committed()

    async def leave(self, timeout: float) -> None:
        """Remove this node's entries and liveness key: other nodes stop counting its
        connections at once instead of after the key's lifetime. Best effort, and bounded: a
        node shutting down while Redis is unreachable leaves that to the key's expiry."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writing
        for waiter in self._waiting:
            waiter.cancel()
        self._waiting = []
        entries, self.entries, self._changes = self.entries, {}, {}
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(timeout), self._redis.pipeline(transaction=False) as pipe:
                for room, clients in entries.items():
                    pipe.hdel(presence_key(room), *clients)
                pipe.delete(self._alive_key)
                await pipe.execute()

    # -- writing ------------------------------------------------------------------------
    async def _committed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        writing = self._writing
        if writing is None or writing.done():
            self._writing = asyncio.get_running_loop().create_task(self._write_while_asked())
        await waiter

    async def _write_while_asked(self) -> None:
        """Write until nobody waits: each pass takes every change made before it started."""
        while self._waiting:
            waiting, self._waiting = self._waiting, []
            changes, self._changes = self._changes, {}
            rewrite, self._rewrite = self._rewrite, False
            try:
                await self._write(changes, rewrite)
            except (RedisError, OSError) as exc:
                self._keep(changes, rewrite)
                error = BrokerUnavailable(redis_client.describe(exc))
                for waiter in waiting:
                    if not waiter.done():
                        waiter.set_exception(error)
            except BaseException:  # cancelled (the node leaving), or a bug: nobody may wait forever
                self._keep(changes, rewrite)
                for waiter in (*waiting, *self._waiting):
                    waiter.cancel()
                self._waiting = []
                raise
            else:
                for waiter in waiting:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _write(self, changes: dict[RoomName, dict[ConnectionId, str | None]], rewrite: bool) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.exists(self._alive_key)
            pipe.set(self._alive_key, b"1", px=self._alive_ms)
            if rewrite:
                self._queue_every_entry(pipe)
            for room, clients in changes.items():
                gone = [client for client, value in clients.items() if value is None]
                if gone:
                    pipe.hdel(presence_key(room), *gone)
                if not rewrite:
                    added = {client: value for client, value in clients.items() if value is not None}
                    if added:
                        pipe.hset(presence_key(room), mapping=added)  # type: ignore[arg-type]
            existed = (await pipe.execute())[0]
        if not existed and not rewrite and self.entries:
            # The key had expired: other nodes took this one for dead and may have dropped
            # its entries on their way through a room. Put them all back.
            async with self._redis.pipeline(transaction=False) as pipe:
                self._queue_every_entry(pipe)
                await pipe.execute()

    def _queue_every_entry(self, pipe: Any) -> None:
        for room, entries in self.entries.items():
            pipe.hset(presence_key(room), mapping=entries)

    def _keep(self, changes: dict[RoomName, dict[ConnectionId, str | None]], rewrite: bool) -> None:
        """Put a failed write's changes back for the next one (a change made since wins)."""
        for room, clients in changes.items():
            pending = self._changes.setdefault(room, {})
            for client, value in clients.items():
                pending.setdefault(client, value)
        self._rewrite = self._rewrite or rewrite
