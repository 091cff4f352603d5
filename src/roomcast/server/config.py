"""``Settings``: every knob of a roomcast server, with the embedded defaults.

Imports L0 and the task model (for event aliases). The CLI fills it from flags, a
``--config`` file and ``ROOMCAST_*`` variables; code that embeds roomcast builds it directly.

``Settings`` checks its own values when it is built (``SettingsError``), so a server embedded
with ``App(settings=Settings(...))`` is refused as ``roomcast serve`` is, before anything
listens, rather than failing at its first connection. The rules live here once: the CLI has
no range checks of its own and turns ``SettingsError`` into a usage error naming the flag.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from roomcast.protocol.sse import FORMATS as SSE_FORMATS
from roomcast.tasks.model import TaskEvents
from roomcast.tasks.service import LIST_ROOM_KINDS, PayloadMap

__all__ = ["Settings", "SettingsError", "LOG_LEVELS", "LOG_FORMATS", "SSE_FORMATS"]

LOG_LEVELS = ("debug", "info", "warning", "error")
"""The values of ``Settings.log_level`` (the CLI's ``--log-level`` choices)."""

LOG_FORMATS = ("text", "json")
"""The values of ``Settings.log_format`` (the CLI's ``--log-format`` choices, ``server.logs``)."""


class SettingsError(ValueError):
    """``Settings`` refused: every bad field at once, so one run shows all there is to fix.

    ``problems`` holds ``(field, reason)`` pairs; ``reason`` reads after the field's name
    (``"must be > 0, got -1"``), so the CLI can put a flag or a config-file key there instead.
    """

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{name} {reason}" for name, reason in self.problems))


# -- the rules ------------------------------------------------------------------------------
# Every field is checked against its annotation, and every number must be finite and >= 0
# (0 being "off" or "none" for limits, windows and graces): a field added later is covered
# without touching this. The tables list only the fields that need more.

_RANGES: dict[str, tuple[int, int]] = {"port": (0, 65535)}

_POSITIVE = frozenset(
    {
        # Timers: 0 would fire without pause, or give a client no time at all to answer.
        "ping_interval",
        "ping_timeout",
        "connect_timeout",
        "request_timeout",
        "keepalive_timeout",
        "ws_ping_timeout",
        "sse_heartbeat",
        "task_lease_ttl",
        # None keeps finished tasks; 0 days would delete each one as it ends.
        "task_keep_days",
    }
)

_AT_LEAST_ONE = frozenset(
    {
        # Sizes and counts where 0 would refuse every message, request or room.
        "max_payload",
        "max_buffer_bytes",
        "output_high_water",
        "max_request_line",
        "max_header_bytes",
        "max_headers",
        "message_burst",
        "max_rooms_per_connection",
    }
)

_CHOICES: dict[str, Sequence[str]] = {"log_level": LOG_LEVELS, "log_format": LOG_FORMATS, "sse_format": SSE_FORMATS}


@functools.cache
def _hints() -> dict[str, Any]:
    """The resolved annotations of ``Settings`` (strings under ``from __future__``)."""
    return typing.get_type_hints(Settings)


def _problems(settings: Settings) -> list[tuple[str, str]]:
    """``(field, reason)`` for every value of ``settings`` that breaks a rule, in field order."""
    hints = _hints()
    problems: list[tuple[str, str]] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        hint = hints.get(f.name, Any)
        if not _matches(hint, value):
            shown = f" {value!r}" if f.repr else ""  # secrets (repr=False) are never echoed
            problems.append((f.name, f"must be {_describe(hint)}, got {type(value).__name__}{shown}"))
            continue
        reason = _number_problem(f.name, value) or _choice_problem(f.name, value)
        if reason:
            problems.append((f.name, reason))
    bad = {name for name, _ in problems}
    unknown = sorted(set(settings.task_list_rooms) - LIST_ROOM_KINDS) if "task_list_rooms" not in bad else []
    if unknown:
        problems.append(("task_list_rooms", f"may only hold {sorted(LIST_ROOM_KINDS)}, got {unknown}"))
    if settings.redis_url is not None and "history_ttl" not in bad and settings.history_ttl == 0:
        # Redis expires a room's history by it; the memory broker reads 0 as "keep none".
        problems.append(("history_ttl", "must be > 0 with redis_url, got 0"))
    return problems


def _number_problem(name: str, value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    if name in _RANGES:
        low, high = _RANGES[name]
        return None if low <= value <= high else f"must be between {low} and {high}, got {value!r}"
    if name in _POSITIVE:
        return None if value > 0 else f"must be > 0, got {value!r}"
    if name in _AT_LEAST_ONE:
        return None if value >= 1 else f"must be >= 1, got {value!r}"
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def _choice_problem(name: str, value: object) -> str | None:
    choices = _CHOICES.get(name)
    if choices is None or value in choices:
        return None
    return f"must be one of {', '.join(choices)}, got {value!r}"


def _matches(hint: Any, value: object) -> bool:
    """Whether ``value`` fits the annotation ``hint``; a kind of annotation this does not know
    (a field added later with a new type) passes, so only the types below are enforced."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # an int is a float here, as for the type checker; True is not
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(args[0], item) for item in value)
        return len(args) == len(value) and all(_matches(a, item) for a, item in zip(args, value))
    if origin is Callable:
        return callable(value)
    if origin is Mapping:
        if not isinstance(value, Mapping):
            return False
        key_hint, value_hint = args or (Any, Any)
        return all(_matches(key_hint, k) and _matches(value_hint, v) for k, v in value.items())
    if origin is None and isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    """``hint`` in words, for a refusal."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return "a tuple of strings" if args == (str, Ellipsis) else "a tuple"
    if origin is Mapping:
        if args and typing.get_origin(args[1]) is Callable:
            return "a mapping of strings to functions"
        return f"a mapping of strings to {getattr(args[1], '__name__', 'values')}" if args else "a mapping"
    words = {type(None): "None", bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    if hint in words:
        return words[hint]
    return getattr(hint, "__name__", str(hint))


WRITE_HOLD_SECONDS = 0.002
"""``Settings.write_hold``'s default: the longest a node's writes wait for its own publications."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Server settings.

    Attributes:
        host: address to listen on.
        port: TCP port (0 picks a free one).
        cors_origins: browser origins allowed; empty means same-origin only, ``"*"`` any.
        ping_interval: seconds between Engine.IO pings.
        ping_timeout: seconds a client has to answer a ping.
        max_payload: largest message or POST body accepted, in bytes.
        connect_timeout: seconds a Socket.IO session may stay without a namespace.
        max_buffer_bytes: outbound bytes buffered per connection before it is a slow consumer
            (publications) or cut (anything else): the hard output limit.
        output_high_water: outbound bytes waiting past which the native door stops reading
            from that client until it reads (responses, pongs, polling payloads).
        max_request_line: longest request target in bytes (414 past it).
        max_header_bytes: most bytes of request head (431 past it).
        max_headers: most header lines in one request (431 past it).
        request_timeout: seconds a request's head and body may take to arrive (408).
        keepalive_timeout: seconds an idle keep-alive HTTP connection is kept open.
        max_connections: most connections the native door holds at once, on every route;
            one more is answered ``503`` with a JSON error and closed as it is accepted, so
            the process stays under its open-file limit (set that limit above this one) and
            memory (about 5 KiB per idle connection). 0: no limit.
        max_connections_per_address: most connections from one client IP address; one more
            is answered ``429`` and closed. 0, the default, is off: behind a reverse proxy or
            load balancer every client arrives from the proxy's address (roomcast does not
            trust forwarded headers), so this limit would then be one for all clients. Set it
            when clients connect directly.
        ws_ping_interval: seconds between the WebSocket pings the server sends on ``/ws``, so
            a client that vanished without closing (a half-open socket: a laptop lid, a
            dropped mobile link) is found and its resources freed. Browsers and WebSocket
            libraries answer pings by themselves. Native door only: behind the ASGI door the
            host pings (uvicorn's ``--ws-ping-interval``). 0 turns pings off.
        ws_ping_timeout: seconds a ``/ws`` client has to answer a ping, with a pong or any
            message, before it is closed with ``3010`` (ping timeout).
        max_messages_per_second: messages a client may send per second, on average, on
            ``/ws`` and Socket.IO (each WebSocket message, Socket.IO packet or binary
            attachment, whatever its size); past it and its burst the connection is closed
            with ``3013`` (rate limited). 0 turns the limit off.
        message_burst: messages a client may send at once before the rate applies; well
            above the 100 rooms a connection may hold, so a reconnect that subscribes again
            to all of them at once fits. The defaults (1,000/s, bursts of 2,000) let a backend
            publish through a Socket.IO connection at full speed and still cut a flood.
        max_rooms_per_connection: rooms a client may subscribe to on one connection.
        max_attachments: binary attachments one Socket.IO packet may carry, and placeholders
            naming them (their expanded bytes are bounded by ``max_payload``).
        redis_url: a Redis (``redis://``, ``rediss://`` for TLS, with an ACL user and
            password if needed) that every process and machine serving the same rooms
            shares (``RedisBroker``); ``None``: this process alone (``MemoryBroker``). Never
            logged: it may hold a password.
        history_size: publications kept per room for recovery.
        history_ttl: seconds a publication stays in history; a quiet room nobody follows is
            freed after it, and comes back under a new epoch.
        history_room_bytes: bytes of history kept per room (event names and data).
        history_bytes: bytes of history kept in all rooms together (the oldest go first).
        recovery_window: seconds a Socket.IO session lost to a transient failure (transport
            closed, ping timeout, slow consumer, shutdown) can be resumed by its client: the
            official server's ``connectionStateRecovery`` (its ``maxDisconnectionDuration``
            is 120 s, a good value). The client gets its ``socket.id``, rooms and ``data``
            back with the publications it missed, and ``socket.recovered === true``.
            0, the default, disables it, as the official server does, because it changes
            the wire for every client: each event gains a trailing offset argument, which
            the official JavaScript client expects but Python, Swift or Kotlin clients pass
            to handlers as an extra argument (a fixed-arity handler then breaks). Missed
            publications stay recoverable for every client without it through the built-in
            ``subscribe {room, epoch, offset}``; turn this on when the clients are the
            official JavaScript client.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        log_format: ``text`` (one line per record) or ``json`` (one object per line, with
            the connection and request fields as keys); ``roomcast serve`` only: an embedding
            application keeps its own logging.
        engineio_echo: also serve a bare Engine.IO echo endpoint at ``/engine.io/``
            (for the official Engine.IO test suite).
        sse_heartbeat: seconds between ``: ping`` comments on SSE streams.
        sse_retry_ms: the reconnection delay suggested to ``EventSource`` (``retry:``).
        sse_format: how ``/sse`` and ``/tasks/{id}/events`` frame events unless a stream asks
            with ``?format=``: ``"events"`` (each event named, for ``addEventListener``) or
            ``"message"`` (each unnamed, ``{"event": name, "data": ...}`` as its data, for
            ``EventSource.onmessage``). Ids, and so recovery, are the same in both.
        jwt_secret: HS256 secret; with it (or ``jwt_public_key_file``) every client needs a
            valid token. Neither: the server runs open and says so when it starts.
        jwt_public_key_file: PEM public key for RS256 / ES256 tokens.
        jwt_audience: required ``aud`` claim, if any.
        jwt_issuer: required ``iss`` claim, if any.
        jwt_leeway: seconds of clock skew allowed on ``exp``.
        api_key: the key backends present to ``/api/``; without one the API answers
            loopback clients only.
        metrics_key: a key that ``GET /metrics`` accepts besides ``api_key``, so a Prometheus
            server can scrape without holding the key that publishes. Without either key,
            ``/metrics`` answers loopback clients only, as the API does.
        dashboard_key: a key that logs in to ``/dashboard`` besides ``api_key``, so an
            operator can watch the server (and stop tasks) without holding the key that
            publishes. With either key the dashboard needs a login; without both it answers
            loopback clients only.
        poll_allow: URL prefixes (``https://api.example.com/jobs/``) or ``"*"`` that a task's
            ``"poll"`` spec may name, since the server fetches them; ``None``: any URL with an
            ``api_key``, none without one (any local program could make it fetch for them).
        task_db: the SQLite file tasks are kept in, relative to the working directory, as
            ``roomcast serve`` defaults to, so finished tasks survive a restart
            (``":memory:"``: gone with the process).
        task_stop_grace: seconds a task's producer has to acknowledge a stop before the task
            is marked ``cancelled`` anyway.
        task_events: event-name aliases per task kind (``roomcast.tasks.model.TaskEvents``),
            so clients that already listen for ``crawl_progress`` work unchanged.
        task_payloads: what clients receive per task kind, ``task -> JSON``
            (``TaskService.payload``), so clients that read other field names work unchanged.
        task_list_rooms: extra task summary rooms besides ``tasks``: ``"kind"``
            (``tasks:kind:{kind}``) and/or ``"owner"`` (``tasks:owner:{owner}``).
        task_keep_days: finished tasks older than this are deleted (``None`` keeps them).
        task_keep_count: at most this many finished tasks are kept, the newest (``None``: all).
        task_lease_ttl: with ``redis_url``, seconds this node's running tasks outlive its last
            lease renewal before another node fails them as lost (``TaskService(lease_ttl=)``,
            renewed every third of it); unused without Redis.
        ssl_certfile: a PEM certificate chain: the native door then serves HTTPS and WSS only
            (``roomcast.server.tls``). ``SIGHUP`` reads it again, for renewed certificates,
            without dropping a connection.
        ssl_keyfile: the PEM private key of ``ssl_certfile``; ``None`` when that file holds it.
        forwarded_allow_ips: addresses (or networks, ``"*"`` for any) of the reverse proxies
            whose ``Forwarded`` / ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` headers the
            native door believes (``roomcast.server.proxy``): loopback only by default, as
            uvicorn, for an nginx on the same host. The keyless API refuses forwarded
            requests whatever this holds: a proxy is never "this machine".
        shutdown_grace: seconds from SIGTERM to exit (``server.drain``): ``/readyz`` answers
            503 at once, clients are told to reconnect elsewhere in jittered batches over
            it, in-process tasks have it to finish (then fail with "server shutting
            down"). 0: stop at once, closing every connection together.
        drain_delay: seconds, at the start of the grace, that new connections are still
            accepted, so a load balancer's next readiness probe sees the 503 before
            connections are refused (at most a quarter of the grace is used).
        write_hold: with ``redis_url``, the longest (seconds) the native door's writes wait
            for this node's own publications on their way through Redis, so a burst goes
            out together (``server.native_output.WriteCoalescer``). 0: no wait.
    """

    def __post_init__(self) -> None:
        """Refuse bad values now (``SettingsError``, naming each field), not at the first
        connection; the rules are below the class (``_problems``)."""
        problems = _problems(self)
        if problems:
            raise SettingsError(problems)

    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    connect_timeout: float = 45.0
    max_buffer_bytes: int = 4_000_000
    output_high_water: int = 1_000_000
    max_request_line: int = 8192
    max_header_bytes: int = 65_536
    max_headers: int = 100
    request_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    max_connections: int = 25_000
    max_connections_per_address: int = 0
    ws_ping_interval: float = 25.0
    ws_ping_timeout: float = 20.0
    max_messages_per_second: float = 1000.0
    message_burst: int = 2000
    max_rooms_per_connection: int = 100
    max_attachments: int = 10
    redis_url: str | None = field(default=None, repr=False)
    history_size: int = 1000
    history_ttl: float = 300.0
    history_room_bytes: int = 10_000_000
    history_bytes: int = 256_000_000
    recovery_window: float = 0.0
    log_level: str = "info"
    log_format: str = "text"
    engineio_echo: bool = False
    sse_heartbeat: float = 15.0
    sse_retry_ms: int = 2000
    sse_format: str = "events"
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    api_key: str | None = field(default=None, repr=False)
    metrics_key: str | None = field(default=None, repr=False)
    dashboard_key: str | None = field(default=None, repr=False)
    poll_allow: tuple[str, ...] | None = None
    task_db: str = "roomcast-tasks.db"
    task_stop_grace: float = 5.0
    task_events: Mapping[str, TaskEvents] = field(default_factory=dict)
    task_payloads: Mapping[str, PayloadMap] = field(default_factory=dict)
    task_list_rooms: tuple[str, ...] = ()
    task_keep_days: float | None = 30.0
    task_keep_count: int | None = 10_000
    task_lease_ttl: float = 10.0  # roomcast.tasks.service.DEFAULT_LEASE_TTL
    shutdown_grace: float = 10.0
    drain_delay: float = 1.0
    write_hold: float = WRITE_HOLD_SECONDS
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
