"""The exceptions python-socketio applications import: ``socketio.exceptions.*``.

Same names and hierarchy as python-socketio's, so ``except socketio.exceptions.X`` keeps
working after the import changes. ``ConnectionRefusedError`` is also roomcast's
``ConnectionRefused``, so the Socket.IO transport refuses with it directly: its message and
data reach the client's ``connect_error``.
"""

from __future__ import annotations

from typing import Any

from roomcast.errors import ConnectionRefused

__all__ = [
    "SocketIOError",
    "ConnectionError",
    "ConnectionRefusedError",
    "TimeoutError",
    "BadNamespaceError",
    "DisconnectedError",
]


class SocketIOError(Exception):
    """The base of every exception here."""


class ConnectionError(SocketIOError):  # noqa: A001 - python-socketio's name
    """A connection could not be made or kept."""


class ConnectionRefusedError(ConnectionError, ConnectionRefused):  # noqa: A001 - python-socketio's name
    """Raise in a ``connect`` handler to refuse the client.

    No argument: ``{"message": "Connection rejected by server"}``; one: that message; two:
    message and ``data``; more: message and the rest as ``data``. ``error_args`` is what
    the client receives, as in python-socketio.
    """

    def __init__(self, *args: Any) -> None:
        message = str(args[0]) if args else "Connection rejected by server"
        data: Any = None
        if len(args) == 2:
            data = args[1]
        elif len(args) > 2:
            data = list(args[1:])
        ConnectionRefused.__init__(self, message, data)
        self.error_args: dict[str, Any] = {"message": message}
        if len(args) >= 2:
            self.error_args["data"] = data


class TimeoutError(SocketIOError):  # noqa: A001 - python-socketio's name
    """``call`` got no acknowledgement in time."""


class BadNamespaceError(SocketIOError):
    """The namespace is not connected."""


class DisconnectedError(SocketIOError):
    """The connection is gone (or not on this server)."""
