"""``DoorLimits`` and ``DoorCounters``: what a connection to the native door may cost, and what
the door refused or cut.

Imports ``server.config`` only. The numbers live in ``Settings`` (docs/limits.md is the
table); ``DoorLimits.from_settings`` is the native door's share of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from roomcast.server.config import Settings

__all__ = ["DoorLimits", "DoorCounters"]


@dataclass(frozen=True, slots=True)
class DoorLimits:
    """What one connection to the native door may cost; docs/limits.md is the table.

    Attributes:
        max_body_bytes: largest request body (413), and largest WebSocket message (1009).
        max_buffer_bytes: outbound bytes a connection may have waiting before it is cut (the
            hard limit; for publications, the slow-consumer limit).
        output_high_water: outbound bytes waiting past which the door stops reading from
            that client (and serving its pipelined requests) until it reads: the limit for
            responses, pongs and polling payloads, which the client itself asks for.
        max_request_line: longest request target, in bytes (414).
        max_header_bytes: most bytes of request head, request line included (431).
        max_headers: most header lines in one request (431).
        request_timeout: seconds a request's head and body may take to arrive (408).
        keepalive_timeout: seconds an idle keep-alive connection is kept open.
        max_connections: most connections held at once (503 past it); 0: no limit.
        max_connections_per_address: most connections from one client IP address (429 past
            it); 0: no limit (behind a proxy every client has the proxy's address).
    """

    max_body_bytes: int
    max_buffer_bytes: int
    output_high_water: int
    max_request_line: int
    max_header_bytes: int
    max_headers: int
    request_timeout: float
    keepalive_timeout: float
    max_connections: int
    max_connections_per_address: int

    @classmethod
    def from_settings(cls, settings: Settings) -> DoorLimits:
        """The native door's share of the settings: the one place the numbers live."""
        return cls(
            max_body_bytes=settings.max_payload,
            max_buffer_bytes=settings.max_buffer_bytes,
            output_high_water=settings.output_high_water,
            max_request_line=settings.max_request_line,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            request_timeout=settings.request_timeout,
            keepalive_timeout=settings.keepalive_timeout,
            max_connections=settings.max_connections,
            max_connections_per_address=settings.max_connections_per_address,
        )


@dataclass(slots=True)
class DoorCounters:
    """What the door refused or cut, for operators (one per server; ``App.door_counters`` is the
    one ``/metrics`` reads)."""

    refused_heads: int = 0
    bad_requests: int = 0  # requests httptools could not parse, bad WebSocket handshakes: 400
    timeouts: int = 0
    output_cut: int = 0
    slow_goodbyes: int = 0
    slow_aborts: int = 0
    refused_connections: int = 0  # past max_connections: 503
    refused_per_address: int = 0  # past max_connections_per_address: 429
    open_connections: int = 0  # TCP connections held now (a gauge, kept by the door's gate)
    accepted_connections: int = 0  # TCP connections admitted since start: churn shows here
