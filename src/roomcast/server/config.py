"""``Settings``: every knob of a roomcast server, with the embedded defaults.

Imports only L0. The CLI fills it from flags and ``ROOMCAST_*`` variables; code that embeds
roomcast builds it directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        max_buffer_bytes: outbound bytes buffered per connection before it is a slow consumer.
        log_level: ``debug``, ``info``, ``warning`` or ``error``.
        engineio_echo: also serve a bare Engine.IO echo endpoint at ``/engine.io/``
            (for the official Engine.IO test suite).
        sse_heartbeat: seconds between ``: ping`` comments on SSE streams.
        sse_retry_ms: the reconnection delay suggested to ``EventSource`` (``retry:``).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    connect_timeout: float = 45.0
    max_buffer_bytes: int = 4_000_000
    log_level: str = "info"
    engineio_echo: bool = False
    sse_heartbeat: float = 15.0
    sse_retry_ms: int = 2000
