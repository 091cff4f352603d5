"""Redis keyspace notifications, so a test waits for a key to be written or to expire.

Why: what a server writes to Redis in the background (a saved Socket.IO session) and what
Redis expires on its own are both events Redis announces; a test that listens for them
needs neither sleeps nor polling. ``notify-keyspace-events`` is turned on for the block and
put back after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

__all__ = ["KeyEvents", "key_events"]


class KeyEvents:
    """Notifications for keys matching a pattern, in the order Redis sent them."""

    def __init__(self, pubsub: aioredis.client.PubSub, prefix: str) -> None:
        self._pubsub = pubsub
        self._prefix = prefix

    async def next(self) -> tuple[str, str]:
        """The next ``(key, event)``: ``set``, ``del``, ``expired`` ... (waits for it)."""
        while True:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None and message["type"] == "pmessage":
                return message["channel"].decode()[len(self._prefix) :], message["data"].decode()

    async def until(self, key: str, event: str) -> list[str]:
        """Wait for ``event`` on ``key``; returns the events of that key seen on the way."""
        seen = []
        while True:
            name, what = await self.next()
            if name == key:
                seen.append(what)
                if what == event:
                    return seen


@contextlib.asynccontextmanager
async def key_events(url: str, pattern: str) -> AsyncIterator[KeyEvents]:
    """Listen for writes, deletions and expiries of the keys matching ``pattern`` on ``url``'s
    database; subscribed (confirmed by Redis) before the block starts."""
    client = aioredis.from_url(url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    previous = str((await client.config_get("notify-keyspace-events"))["notify-keyspace-events"])
    await client.config_set("notify-keyspace-events", "K$gx")  # keyspace: strings, generic, expired
    pubsub = client.pubsub()
    prefix = f"__keyspace@{db}__:"
    try:
        await pubsub.psubscribe(prefix + pattern)
        confirmation = await pubsub.get_message(timeout=None)
        assert confirmation is not None and confirmation["type"] == "psubscribe", confirmation
        yield KeyEvents(pubsub, prefix)
    finally:
        await pubsub.aclose()
        await client.config_set("notify-keyspace-events", previous)
        await client.aclose()
