"""The one exception tree of roomcast.

Owns every exception the package raises on purpose; imports nothing but the stdlib.

::

    RoomcastError
    ├── ProtocolError                 bytes on the wire broke a protocol rule
    │   ├── LocalProtocolError        we were asked to send something invalid (a bug here)
    │   └── RemoteProtocolError       the peer sent something invalid; carries a disconnect hint
    │       └── PayloadTooBig         the peer sent more than the configured limit
    ├── ConnectionRefused             a connect handler refused the client (message sent to it)
    ├── InvalidState                  an operation that the current state forbids (also AssertionError)
    ├── LimitExceeded                 a configured limit was reached (rooms per connection ...)
    ├── AuthError
    │   ├── Unauthorized              no or bad credentials
    │   └── PermissionDenied          good credentials, not allowed to do this
    ├── BrokerError
    │   └── BrokerUnavailable
    └── ClientError
        ├── ConnectionClosed
        └── AckTimeout

A transport maps a ``RemoteProtocolError`` to its own wire answer in one place (a close code,
a Socket.IO disconnect, an HTTP 400) using the ``reason`` it carries; messages never include
payload bytes, which may be sensitive.
"""

from __future__ import annotations

__all__ = [
    "RoomcastError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "PayloadTooBig",
    "ConnectionRefused",
    "InvalidState",
    "LimitExceeded",
    "AuthError",
    "Unauthorized",
    "PermissionDenied",
    "BrokerError",
    "BrokerUnavailable",
    "ClientError",
    "ConnectionClosed",
    "AckTimeout",
]


class RoomcastError(Exception):
    """Base class of every error roomcast raises on purpose."""


class ProtocolError(RoomcastError):
    """A protocol rule was broken. Abstract: raise one of the two subclasses."""


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol forbids: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    Args:
        reason: short, human-readable, safe to send back to the peer (no payload bytes).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PayloadTooBig(RemoteProtocolError):
    """The peer sent a message, frame or body larger than the configured limit."""


class ConnectionRefused(RoomcastError):
    """Raise in a connect handler to refuse the client; ``message`` and ``data`` reach it.

    Socket.IO clients receive a ``connect_error`` with ``message`` (and ``data`` if given).
    """

    def __init__(self, message: str = "Not authorized", data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidState(RoomcastError, AssertionError):
    """The operation is not allowed in the current state (e.g. sending on a closed session)."""


class LimitExceeded(RoomcastError):
    """A configured limit was reached; the message names it and is safe to send to the client."""


class AuthError(RoomcastError):
    """Authentication or authorisation failed."""


class Unauthorized(AuthError):
    """Missing or invalid credentials."""


class PermissionDenied(AuthError):
    """Valid credentials that do not grant this operation."""


class BrokerError(RoomcastError):
    """The broker failed to do what was asked."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; retry later."""


class ClientError(RoomcastError):
    """Raised by the client SDK."""


class ConnectionClosed(ClientError):
    """The connection is closed; the operation could not complete."""


class AckTimeout(ClientError, TimeoutError):
    """No acknowledgement arrived within the timeout."""
