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
    │   └── ShuttingDown              refused because the server is shutting down (the API: 503)
    ├── LimitExceeded                 a configured limit was reached (rooms per connection ...)
    ├── InvalidPublication            no transport could deliver it (also ValueError): refused
    ├── AuthError
    │   ├── Unauthorized              no or bad credentials
    │   └── PermissionDenied          good credentials, not allowed to do this
    ├── BrokerError
    │   └── BrokerUnavailable
    ├── TaskError                     a task operation got bad input or a forbidden change
    │   ├── InvalidTransition         the task's status forbids it (completing a cancelled task)
    │   ├── TaskNotFound              no task has this id
    │   └── InvalidProgress           progress outside 0–100, or not a finite number
    ├── ClientError                   raised by the client SDK (roomcast.client)
    │   ├── ConnectionClosed          the connection (or the client) is closed
    │   ├── AckTimeout                no ack in time (also TimeoutError)
    │   ├── ConnectRefused            the server answered CONNECT_ERROR (its message)
    │   ├── ConnectTimeout            no connection in time (also TimeoutError)
    │   ├── SubscribeRefused          the built-in subscribe answered {"error": ...}
    │   └── OfflineRefused            an emit while offline, refused at once
    │       └── OfflineBufferFull     ... or because the offline buffer is full
    ├── PublishError                  the backend API refused a publish, or could not be reached
    └── BlockingCallInLoop            a blocking call from a running event loop's thread (also RuntimeError)

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
    "ShuttingDown",
    "LimitExceeded",
    "InvalidPublication",
    "AuthError",
    "Unauthorized",
    "PermissionDenied",
    "BrokerError",
    "BrokerUnavailable",
    "TaskError",
    "InvalidTransition",
    "TaskNotFound",
    "TaskExists",
    "InvalidProgress",
    "ClientError",
    "ConnectionClosed",
    "AckTimeout",
    "ConnectRefused",
    "ConnectTimeout",
    "SubscribeRefused",
    "OfflineRefused",
    "OfflineBufferFull",
    "PublishError",
    "BlockingCallInLoop",
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


class ShuttingDown(InvalidState):
    """Refused because the server (or its task service) is shutting down: nothing was
    published, stored or changed.

    Why a class of its own: this refusal is temporary and not the caller's fault, so the
    API answers it with 503 (retry against the next process), where any other
    ``InvalidState`` is a bug in the caller. Raised instead of acknowledging work that could
    no longer reach a subscriber or the store.
    """


class LimitExceeded(RoomcastError):
    """A configured limit was reached; the message names it and is safe to send to the client."""


class AuthError(RoomcastError):
    """Authentication or authorisation failed."""


class Unauthorized(AuthError):
    """Missing or invalid credentials."""


class PermissionDenied(AuthError):
    """Valid credentials that do not grant this operation."""


class InvalidPublication(RoomcastError, ValueError):
    """A publication no transport could deliver: a reserved or malformed event name, or data
    that is not JSON or is nested too deep. Refused before anything is stored or acknowledged;
    the message is safe to send to the client that asked."""


class BrokerError(RoomcastError):
    """The broker failed to do what was asked."""


class BrokerUnavailable(BrokerError):
    """The broker cannot be reached right now; retry later."""


class TaskError(RoomcastError):
    """A task operation failed: bad input (malformed task JSON, a bad cursor) or a rule broken.

    Messages name the task id and the offending value kind, never the task's result or
    metadata, so the API can return them to the caller as they are.
    """


class InvalidTransition(TaskError):
    """The task's status does not allow this change (e.g. completing a cancelled task).

    ``current`` and ``target`` are status values as plain ``str`` (this module cannot import
    ``tasks.model``). ``target`` is ``None`` when the refused operation was not a status change
    (a progress report on a task that is not running). Why the fields: a caller can tell "it
    already ended that way" (``current == target``, an idempotent repeat it may ignore) from
    a real conflict without parsing the message.
    """

    def __init__(self, message: str, *, task_id: str, current: str, target: str | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.current = current
        self.target = target


class TaskNotFound(TaskError):
    """No task has this id (never created, or removed by retention)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"no task {task_id!r}")
        self.task_id = task_id


class TaskExists(TaskError):
    """A task with this id exists already: a caller that chose the id (a Celery task's own id)
    created it twice, or two processes raced to create it; the first one won."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id!r} already exists")
        self.task_id = task_id


class InvalidProgress(TaskError):
    """A progress value outside 0–100, or NaN/infinity (which JSON cannot even carry)."""


class ClientError(RoomcastError):
    """Raised by the client SDK."""


class ConnectionClosed(ClientError):
    """The connection is closed; the operation could not complete."""


class AckTimeout(ClientError, TimeoutError):
    """No acknowledgement arrived within the timeout."""


class ConnectRefused(ClientError):
    """The server refused the namespace connection (``CONNECT_ERROR``).

    ``message`` and ``data`` are the server's own. Why a client error of its own: with a
    static ``auth`` the client stops reconnecting on it (retrying the same credentials
    would be refused again); with an ``auth`` callable it retries with fresh ones.
    """

    def __init__(self, message: str, data: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class ConnectTimeout(ClientError, TimeoutError):
    """No connection within the connect timeout (also a ``TimeoutError``)."""


class SubscribeRefused(ClientError):
    """The server refused a room subscription (``{"error": ...}``); ``room`` and ``message``."""

    def __init__(self, room: str, message: str) -> None:
        super().__init__(f"subscribe {room!r} refused: {message}")
        self.room = room
        self.message = message


class OfflineRefused(ClientError):
    """An emit while not connected, refused (the client was told to refuse, not buffer)."""


class OfflineBufferFull(OfflineRefused):
    """An emit while not connected, refused because the offline buffer is full."""


class PublishError(RoomcastError):
    """A ``Publisher`` call to the backend API failed.

    With a status the server refused, and nothing was published. With status ``0`` after
    the request was sent (a timeout, a reset) the publication may or may not have landed.

    Why one type with fields rather than a subclass per status: a backend calling roomcast
    from a worker mostly decides between "retry later" and "fix the call", and ``status``
    says which (``0`` or 5xx: retry; 4xx: fix it); ``code`` and ``message`` are the server's
    own ``{"error": {"code", "message"}}`` so logs show what the server said.

    Args:
        status: the HTTP status, or ``0`` when no HTTP answer came (refused, timed out,
            reset, not HTTP at all).
        code: the server's error code (``unauthorized``, ``bad_request`` ...), or
            ``unreachable`` / ``bad_response`` for failures on this side of the wire.
        message: human-readable; names the URL when the server could not be reached.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"PublishError({self.status!r}, {self.code!r}, {self.message!r})"


class BlockingCallInLoop(RoomcastError, RuntimeError):
    """A blocking call was made from the thread of a running event loop (``Publisher.publish``
    inside a coroutine).

    Why refuse rather than run it: it would freeze every other task of that loop (a
    server's clients, heartbeats) for up to its timeout. ``str(exc)`` names the coroutine
    to await instead.
    """
