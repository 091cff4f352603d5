"""``RedisSessionStore``: values kept in Redis for a lifetime and taken at most once.

Imports L0, ``broker.redis_client`` and redis-py. With ``roomcast serve --redis``, Socket.IO
connection state recovery keeps each lost session here as ``rc:sio:<pid>``, so whichever node
its client reaches next can restore it. The store holds opaque bytes: what a session is and
how it is encoded belongs to ``transports.recovery``, which the import layers put above the
brokers.

Why these commands:

* ``SET ... PX``: Redis measures the recovery window, so the nodes' clocks need not agree, and
  a session nobody claims costs nothing once the window is over.
* ``PTTL`` and ``GETDEL`` in one ``MULTI``: a value is handed to one taker only, even when
  two nodes are asked for it at once (a client that retried, a copied pid); the other gets
  nothing and starts a new session. The remaining lifetime comes with it, so a session
  handed back (its comeback ended before it was accepted) keeps its original deadline.

Every Redis failure is raised as ``BrokerUnavailable``: recovery then gives up on the session
(the client is told it is a new one), which is never silently wrong.
"""

from __future__ import annotations

import math
from typing import Any, Final

from redis.exceptions import RedisError

from roomcast.broker import redis_client
from roomcast.errors import BrokerUnavailable

__all__ = ["RedisSessionStore", "SESSION_PREFIX"]

SESSION_PREFIX: Final = "rc:sio:"
"""Keys of saved Socket.IO sessions: ``rc:sio:<pid>``. No room key can take this form: those
all carry a hash tag, ``rc:{room}:...``."""


class RedisSessionStore:
    """Values by key in Redis, each with a lifetime, each taken at most once.

    Args:
        url: the ``--redis`` URL.
        prefix: what every key starts with.
    """

    def __init__(self, url: str, *, prefix: str = SESSION_PREFIX) -> None:
        self.prefix = prefix
        self._redis: Any = redis_client.connect(url)

    def __repr__(self) -> str:
        return "<RedisSessionStore>"  # never the URL: it may hold a password

    def key(self, name: str) -> str:
        """The Redis key that holds ``name``."""
        return self.prefix + name

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` under ``name`` for ``ttl`` seconds (rounded up to a millisecond),
        replacing what was there.

        Raises:
            BrokerUnavailable: Redis did not take it.
        """
        try:
            await self._redis.set(self.key(name), value, px=max(1, math.ceil(ttl * 1000)))
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"could not save to Redis: {exc}") from exc

    async def take(self, name: str) -> tuple[bytes, float] | None:
        """Remove and return the value under ``name`` and the seconds it had left, or None.

        Raises:
            BrokerUnavailable: Redis did not answer (the value, if any, is left there).
        """
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.pttl(self.key(name))
                pipe.getdel(self.key(name))
                ttl, value = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"could not read from Redis: {exc}") from exc
        if value is None:
            return None
        return bytes(value), max(0, ttl) / 1000  # ttl -1 (no lifetime) is never written here

    async def aclose(self) -> None:
        """Close the connections. Idempotent."""
        await self._redis.aclose()
