"""``Settings``: every knob of a roomcast server, with the embedded defaults.

Imports L0 and the task model (for event aliases). The CLI fills it from flags and
``ROOMCAST_*`` variables; code that embeds roomcast builds it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from roomcast.tasks.model import TaskEvents

__all__ = ["Settings"]


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
        engineio_echo: also serve a bare Engine.IO echo endpoint at ``/engine.io/``
            (for the official Engine.IO test suite).
        sse_heartbeat: seconds between ``: ping`` comments on SSE streams.
        sse_retry_ms: the reconnection delay suggested to ``EventSource`` (``retry:``).
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
        task_list_rooms: extra task summary rooms besides ``tasks``: ``"kind"``
            (``tasks:kind:{kind}``) and/or ``"owner"`` (``tasks:owner:{owner}``).
        task_keep_days: finished tasks older than this are deleted (``None`` keeps them).
        task_keep_count: at most this many finished tasks are kept, the newest (``None``: all).
    """

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
    engineio_echo: bool = False
    sse_heartbeat: float = 15.0
    sse_retry_ms: int = 2000
    jwt_secret: str | None = field(default=None, repr=False)
    jwt_public_key_file: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = 0.0
    api_key: str | None = field(default=None, repr=False)
    metrics_key: str | None = field(default=None, repr=False)
    poll_allow: tuple[str, ...] | None = None
    task_db: str = "roomcast-tasks.db"
    task_stop_grace: float = 5.0
    task_events: Mapping[str, TaskEvents] = field(default_factory=dict)
    task_list_rooms: tuple[str, ...] = ()
    task_keep_days: float | None = 30.0
    task_keep_count: int | None = 10_000
