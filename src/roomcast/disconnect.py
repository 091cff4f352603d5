"""Why a connection was closed, as values, with the code ranges every transport maps.

Imports only the stdlib. A ``Disconnect`` travels from where the decision is made (the hub,
a transport, a limit) to the transport, which puts it on its own wire: a WebSocket close code
on the plain WebSocket, a disconnect reason on Socket.IO, a final ``event: error`` on SSE.

========  ===========================  =========================================
code      meaning                      client should
========  ===========================  =========================================
1000      normal closure               not reconnect unless it wants to
3000-3499 transient server condition   reconnect with backoff, recover by offset
3500-3999 terminal condition           not reconnect with the same credentials
4000-4999 application-defined          as the application documents
========  ===========================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Disconnect",
    "NORMAL",
    "SHUTDOWN",
    "SLOW",
    "INSUFFICIENT_STATE",
    "PING_TIMEOUT",
    "TRANSPORT_CLOSE",
    "SERVER_DISCONNECT",
    "RATE_LIMITED",
    "BAD_REQUEST",
    "TOO_BIG",
    "POLICY",
    "CONNECT_TIMEOUT",
    "TOKEN_EXPIRED",
    "ALL",
    "websocket_close_code",
]


@dataclass(frozen=True, slots=True)
class Disconnect:
    """A reason to close one connection.

    Attributes:
        code: numeric code from the table in this module's docstring.
        reason: short text safe to send to the client.
        reconnect: whether the client is expected to come back.
    """

    code: int
    reason: str
    reconnect: bool


NORMAL = Disconnect(1000, "normal closure", reconnect=False)
SHUTDOWN = Disconnect(3001, "server shutting down", reconnect=True)
SLOW = Disconnect(3008, "slow consumer", reconnect=True)
INSUFFICIENT_STATE = Disconnect(3009, "insufficient state", reconnect=True)
"""The server cannot continue this connection's position exactly (a room's live stream broke and
history no longer holds the gap); reconnecting recovers what history holds, or resets."""
PING_TIMEOUT = Disconnect(3010, "ping timeout", reconnect=True)
TRANSPORT_CLOSE = Disconnect(3011, "transport close", reconnect=True)
SERVER_DISCONNECT = Disconnect(3012, "server namespace disconnect", reconnect=False)
RATE_LIMITED = Disconnect(3013, "rate limited", reconnect=True)
"""The client sent messages faster than ``Settings.max_messages_per_second`` (past its burst);
it may come back, with backoff, and send slower. Transient, so a client with one bad burst
recovers by offset like after any cut; a flood is bounded by the connection limits anyway."""
BAD_REQUEST = Disconnect(3501, "bad request", reconnect=False)
TOO_BIG = Disconnect(3502, "message too big", reconnect=False)
POLICY = Disconnect(3503, "policy violation", reconnect=False)
CONNECT_TIMEOUT = Disconnect(3504, "connect timeout", reconnect=True)
TOKEN_EXPIRED = Disconnect(3505, "token expired", reconnect=False)
"""The connection's token expired and no fresh one came in time; come back with a new one."""

ALL: tuple[Disconnect, ...] = (
    NORMAL,
    SHUTDOWN,
    SLOW,
    INSUFFICIENT_STATE,
    PING_TIMEOUT,
    TRANSPORT_CLOSE,
    SERVER_DISCONNECT,
    RATE_LIMITED,
    BAD_REQUEST,
    TOO_BIG,
    POLICY,
    CONNECT_TIMEOUT,
    TOKEN_EXPIRED,
)


_WEBSOCKET_STANDARD: dict[Disconnect, int] = {
    NORMAL: 1000,
    SHUTDOWN: 1001,
    POLICY: 1008,
    TOKEN_EXPIRED: 1008,
    TOO_BIG: 1009,
}


def websocket_close_code(reason: Disconnect) -> int:
    """The WebSocket close code for ``reason``, on every WebSocket the server closes (``/ws``
    and Socket.IO's): the RFC 6455 code where the RFC has one (normal 1000, going away 1001,
    policy 1008, too big 1009), else the reason's own code from the table above, whose range
    tells the client whether to reconnect. docs/protocol.md has the table."""
    return _WEBSOCKET_STANDARD.get(reason, reason.code)
