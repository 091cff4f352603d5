"""Opening Redis connections: the one place that reads a ``--redis`` URL.

Imports L0 (``errors``) and redis-py. Every part of roomcast that talks to Redis (the broker,
the node bus, the task store, the Socket.IO session store, ``RedisPublisher``) gets its
client here, so the URL forms, the retry policy and the rule that a password never reaches a
log are written once.

The URL forms:

* ``redis://[user[:password]@]host[:port][/db][?option=value&...]``; ``:password@`` alone
  authenticates as the default user (``requirepass``), ``user:password@`` as an ACL user.
* ``rediss://...``: the same over TLS. Options of redis-py's TLS connection pass through
  as query options: ``ssl_ca_certs=/path/ca.pem``, ``ssl_cert_reqs=required|optional|none``,
  ``ssl_certfile``, ``ssl_keyfile``, ``ssl_check_hostname=false``.
* ``unix://[user[:password]@]/path/to/redis.sock[?db=n]``.
* ``redis+sentinel://[user[:password]@]host:port[,host:port...]/<master-name>[/<db>][?...]``:
  the master that Redis Sentinel names, found again after a failover. The sentinels are
  listed by address (port 26379 when left out); the user and password are the master's,
  as in ``redis://``, and so are the query options, except ``sentinel_username`` and
  ``sentinel_password``, which authenticate to the sentinels themselves. Not over TLS yet.

Every other redis-py query option (``socket_timeout``, ``health_check_interval``...) passes
through unchanged. A password must be percent-encoded where it holds ``/ ? # @ :``.

Why a retry policy on every client: a connection the pool kept from before a Redis restart
fails once; the command is retried on a new connection (3 times, 50 ms backoff doubling to
0.5 s) before the caller hears of it. Commands that must not run twice carry their own
idempotency key (``broker.redis.publish_call``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel

__all__ = ["SENTINEL_SCHEME", "connect", "connect_sync", "describe", "redact"]

SENTINEL_SCHEME = "redis+sentinel://"
_SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
_URL_HELP = (
    "expected redis://, rediss:// or unix:// (redis-py's forms), or "
    "redis+sentinel://[user:password@]host:port[,host:port...]/<master-name>[/<db>]; "
    "percent-encode / ? # @ : in a user name or password"
)


def _worth_retrying(error: Exception) -> bool:
    """A refused password stays refused: retrying it (redis-py retries the handshake inside
    each retried command) would only fill the server's log with failed logins."""
    return not isinstance(error, AuthenticationError)


class _AsyncRetry(AsyncRetry):
    async def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
        return await super().call_with_retry(do, fail, is_retryable or _worth_retrying, with_failure_count)


class _Retry(Retry):
    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        return super().call_with_retry(do, fail, is_retryable or _worth_retrying, with_failure_count)


POOL_SIZE = 100
"""Connections one asyncio client opens at most (``?max_connections=`` in the URL overrides
it). A burst asks for more at once (hundreds of subscribers reading their rooms after a
node restart): past the size a call waits for a connection to come free, up to
``POOL_WAIT`` seconds, where redis-py's default pool would fail it at once
(``MaxConnectionsError``: 51 of 150 SSE streams opened together were refused)."""

POOL_WAIT = 10.0
"""Seconds a call waits for a free connection before it fails (``BrokerUnavailable``)."""


def _retry_options(*, for_asyncio: bool) -> dict[str, Any]:
    """A fresh retry policy. An asyncio client needs ``redis.asyncio.retry.Retry``: given the
    blocking one, its ``call_with_retry`` hands back the coroutine unawaited and a failure
    escapes every retry."""
    backoff = ExponentialBackoff(cap=0.5, base=0.05)
    retry: Any = _AsyncRetry(backoff, 3) if for_asyncio else _Retry(backoff, 3)
    return {"retry": retry, "retry_on_error": [RedisConnectionError, RedisTimeoutError]}


def connect(url: str, *, retry: bool = True) -> aioredis.Redis:
    """An asyncio client for ``url`` (any form of this module's docstring).

    ``retry=False`` is for a subscription connection: redis-py would otherwise reconnect it
    and subscribe again by itself, and publications sent meanwhile would be lost without
    anyone hearing of it. Without retries the break reaches the caller, which reconnects
    and reports it.

    Raises:
        ValueError: the URL cannot be read; the message never holds its password.
    """
    options = _retry_options(for_asyncio=True) if retry else {"retry": _AsyncRetry(NoBackoff(), 0)}
    try:
        if url.startswith(SENTINEL_SCHEME):
            sentinels, master, to_master, to_sentinels = _sentinel_parts(url)
            to_sentinels["retry"] = AsyncRetry(NoBackoff(), 0)
            manager: Any = _untyped(AsyncSentinel)(sentinels, sentinel_kwargs=to_sentinels, **to_master, **options)
            client: aioredis.Redis = manager.master_for(master, redis_class=_AsyncSentinelMaster)
            return client
        if not retry:  # a subscription holds one connection of its own: redis-py's plain pool
            return aioredis.from_url(url, **options)
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **options)
        return aioredis.Redis.from_pool(pool)
    except ValueError:
        raise ValueError(f"cannot read the Redis URL {redact(url)}: {_URL_HELP}") from None


def connect_sync(url: str) -> redis.Redis:
    """A blocking client for ``url``: for worker processes without a loop.

    Raises:
        ValueError: the URL cannot be read; the message never holds its password.
    """
    options = _retry_options(for_asyncio=False)
    try:
        if url.startswith(SENTINEL_SCHEME):
            sentinels, master, to_master, to_sentinels = _sentinel_parts(url)
            to_sentinels["retry"] = Retry(NoBackoff(), 0)
            manager: Any = _untyped(Sentinel)(sentinels, sentinel_kwargs=to_sentinels, **to_master, **options)
            client: redis.Redis = manager.master_for(master, redis_class=_SentinelMaster)
            return client
        return redis.Redis.from_url(url, **options)
    except ValueError:
        raise ValueError(f"cannot read the Redis URL {redact(url)}: {_URL_HELP}") from None


class _AsyncSentinelMaster(aioredis.Redis):
    """The master's client; closing it also closes the connections to the sentinels, which
    the redis-py ``Sentinel`` that found the master keeps open otherwise."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


class _SentinelMaster(redis.Redis):
    """``_AsyncSentinelMaster`` for the blocking client."""

    def close(self) -> None:
        super().close()
        self.connection_pool.sentinel_manager.close()  # type: ignore[attr-defined]


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, dict[str, Any], dict[str, Any]]:
    """The sentinels' addresses, the master's name, and the keyword arguments of the
    connections to the master and to the sentinels, from a ``redis+sentinel://`` URL.

    The master's options are read by redis-py's own URL parser (from the same URL written
    as ``redis://``), so they mean what they mean in ``redis://``. A sentinel that does not
    answer within a second (unless the URL's ``socket_*`` options say otherwise) is passed
    over for the next one, not retried: asking the next sentinel is the retry. The caller
    sets that no-retry policy (an asyncio or a blocking one).
    """
    rest, _, query = url[len(SENTINEL_SCHEME) :].partition("?")
    userinfo, at, location = rest.rpartition("@")
    hosts, _, path = location.partition("/")
    master, _, db = path.partition("/")
    if not hosts or not master or not (db == "" or db.isdigit()):
        raise ValueError("a sentinel URL names its sentinels and its master")
    options = parse_qsl(query, keep_blank_values=True)
    to_sentinels: dict[str, Any] = {
        name.removeprefix("sentinel_"): value for name, value in options if name in _SENTINEL_OPTIONS
    }
    master_query = urlencode([(name, value) for name, value in options if name not in _SENTINEL_OPTIONS])
    parse_url = _untyped(redis.connection.parse_url)
    to_master: dict[str, Any] = dict(parse_url(f"redis://{userinfo}{at}sentinel/{db or 0}?{master_query}"))
    to_master.pop("host", None)
    to_sentinels.update({name: value for name, value in to_master.items() if name.startswith("socket_")})
    to_sentinels.setdefault("socket_connect_timeout", 1.0)
    to_sentinels.setdefault("socket_timeout", 1.0)
    return [_address(host) for host in hosts.split(",")], unquote(master), to_master, to_sentinels


def _untyped(function: Any) -> Any:
    """``function`` as mypy sees an untyped callable: the parts of redis-py without hints."""
    return function


def _address(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a host alone (the sentinels' port)."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or not (port == "" or port.isdigit()):
        raise ValueError("a sentinel is host:port")
    return host, int(port) if port else _SENTINEL_PORT


def redact(url: str) -> str:
    """``url`` with every password replaced by ``***``: the only form that may be logged or
    shown. Any form (``redis+sentinel`` with its list of hosts included), and passwords given
    as query options (``password``, ``sentinel_password``, ``ssl_password``).

    Cautious by design: the user information is taken to end at the URL's last ``@``, so a
    password with an ``@``, ``/`` or ``?`` left unencoded is hidden all the same (a URL with
    an ``@`` further on, in a file path, loses a little more than its password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, location = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    head, question, query = location.partition("?")
    if question:
        query = "&".join(_redact_option(option) for option in query.split("&"))
    return f"{scheme}{sep}{userinfo}{at}{head}{question}{query}"


def _redact_option(option: str) -> str:
    name, equals, _ = option.partition("=")
    return f"{name}=***" if equals and "password" in unquote(name).lower() else option


def describe(exc: BaseException, url: str | None = None) -> str:
    """Why a Redis call failed, in words roomcast may raise and log: refused credentials or
    permissions said as such (Redis's own reason; it never repeats a password), anything else
    by its kind. With ``url``, which Redis, redacted (for operators, at startup); without, no
    address at all (for answers that reach API clients)."""
    where = f" at {redact(url)}" if url is not None else ""
    if isinstance(exc, AuthenticationError):
        return f"redis{where} refused the credentials: {exc}"
    if isinstance(exc, NoPermissionError):
        return f"redis{where} denied this user a command: {exc}"
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
        return f"redis is unreachable{where}: {type(exc).__name__}"
    return f"redis{where} failed: {type(exc).__name__}"
