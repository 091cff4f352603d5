"""Opening Redis connections: the one place that reads a ``--redis`` URL.

Imports redis-py only. Every part of roomcast that talks to Redis (the broker, the node
bus, the task store, the Socket.IO session store, ``RedisPublisher``) gets its client here,
so the URL forms, the retry policy and the rule that a password never reaches a log are
written once.

Why a retry policy on every client: a connection the pool kept from before a Redis restart
fails once; the command is retried on a new connection (3 times, 50 ms backoff doubling to
0.5 s) before the caller hears of it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["connect", "connect_sync", "redact"]


def _retry_options() -> dict[str, Any]:
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }


def connect(url: str) -> Any:
    """An asyncio client (``redis.asyncio.Redis``) for ``url``.

    ``redis://`` and ``rediss://`` (TLS), with ``user:password@`` for ACLs.
    """
    import redis.asyncio as aioredis

    return aioredis.from_url(url, **_retry_options())


def connect_sync(url: str) -> Any:
    """A blocking client (``redis.Redis``) for ``url``: for worker processes without a loop."""
    import redis

    return redis.Redis.from_url(url, **_retry_options())


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``: the only form that may be logged or shown."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query, parts.fragment))
