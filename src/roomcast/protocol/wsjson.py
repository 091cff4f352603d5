"""The ``roomcast.v1`` plain-WebSocket protocol: one JSON object per text message.

Owns the wire format of this protocol and nothing else: decoding what a client sends into
small frozen messages (:func:`decode`), and encoding what the server sends (the ``*_message``
functions). What the server *does* with a message (subscribing, authorising, calling
handlers) lives in the transport and the hub. ``docs/protocol.md`` is the spec for client
authors; keep it and this module in step.

A bad client message is not a reason to drop the connection: :func:`decode` raises
:class:`WsJsonError`, which carries an error ``code`` and the request ``id`` (when it could be
read) so that the transport answers with :func:`error_message` for that request and carries
on. Unknown fields are ignored, so that newer clients can talk to older servers.

Sans-I/O: pure functions over ``str``/``bytes``; no sockets, clocks or event loops. Being
asked to encode something invalid raises :class:`~roomcast.errors.LocalProtocolError`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from roomcast import _json
from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.types import MAX_NAME_LENGTH, JSONValue

__all__ = [
    "SUBPROTOCOL",
    "RequestId",
    "MAX_ID",
    "MAX_ID_LENGTH",
    "BAD_REQUEST",
    "UNKNOWN_TYPE",
    "UNAUTHORIZED",
    "FORBIDDEN",
    "NOT_FOUND",
    "LIMIT",
    "INTERNAL",
    "ERROR_CODES",
    "WsJsonError",
    "Subscribe",
    "Unsubscribe",
    "Emit",
    "Publish",
    "Ping",
    "Refresh",
    "ClientMessage",
    "decode",
    "event_message",
    "snapshot_message",
    "ack_message",
    "error_message",
    "publication_data",
]

SUBPROTOCOL: Final = "roomcast.v1"

RequestId: TypeAlias = int | str
"""A client's request id, echoed in the answer so the client can match it to the request."""

MAX_ID: Final = 2**53 - 1
"""Integer ids must lie in ``[-MAX_ID, MAX_ID]``: a JavaScript client reads them back exactly."""
MAX_ID_LENGTH: Final = 64
"""The longest string id, in characters."""

BAD_REQUEST: Final = "bad_request"
UNKNOWN_TYPE: Final = "unknown_type"
UNAUTHORIZED: Final = "unauthorized"
FORBIDDEN: Final = "forbidden"
NOT_FOUND: Final = "not_found"
LIMIT: Final = "limit"
INTERNAL: Final = "internal"
ERROR_CODES: Final = (
    BAD_REQUEST,
    UNKNOWN_TYPE,
    UNAUTHORIZED,
    FORBIDDEN,
    NOT_FOUND,
    LIMIT,
    INTERNAL,
)


class WsJsonError(RemoteProtocolError):
    """A client message that breaks the protocol; answer it, the connection may go on.

    Attributes:
        code: one of :data:`ERROR_CODES` (``bad_request`` or ``unknown_type`` from
            :func:`decode`).
        reason: short, safe to send back (never echoes the payload).
        id: the request id if it could be read from the message, else ``None``.
    """

    def __init__(self, code: str, reason: str, id: RequestId | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.id = id


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Join ``room``; with ``epoch`` and ``offset`` (always both or neither), recover from there."""

    id: RequestId
    room: str
    epoch: str | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Leave ``room``."""

    id: RequestId
    room: str


@dataclass(frozen=True, slots=True)
class Emit:
    """An application event for the server's handlers; acknowledged only if ``id`` is set."""

    id: RequestId | None
    event: str
    data: JSONValue = None


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``event`` with ``data`` to ``room`` (if the client's token allows it)."""

    id: RequestId
    room: str
    event: str
    data: JSONValue = None


@dataclass(frozen=True, slots=True)
class Ping:
    """An application-level liveness check, answered with an ``ack``."""

    id: RequestId


@dataclass(frozen=True, slots=True)
class Refresh:
    """A new token for a long-lived connection, replacing the one it connected with."""

    id: RequestId
    token: str


ClientMessage: TypeAlias = Subscribe | Unsubscribe | Emit | Publish | Ping | Refresh

_BINARY: Final = (bytes, bytearray, memoryview)


def _read_id(obj: dict[str, Any]) -> RequestId | None:
    """The request id, ``None`` if absent or ``null``; raise if present but invalid."""
    value = obj.get("id")
    if value is None:
        return None
    if type(value) is int:  # JSON gives exact types: this rules out bool and float
        if -MAX_ID <= value <= MAX_ID:
            return value
    elif type(value) is str and len(value) <= MAX_ID_LENGTH:
        return value
    raise WsJsonError(BAD_REQUEST, "invalid id")


def _require_id(msg_id: RequestId | None) -> RequestId:
    if msg_id is None:
        raise WsJsonError(BAD_REQUEST, "id required")
    return msg_id


def _name(obj: dict[str, Any], key: str, msg_id: RequestId | None) -> str:
    value = obj.get(key)
    if type(value) is str and 0 < len(value) <= MAX_NAME_LENGTH:
        return value
    raise WsJsonError(BAD_REQUEST, f"invalid {key}", msg_id)


def _subscribe(obj: dict[str, Any], msg_id: RequestId | None) -> Subscribe:
    msg_id = _require_id(msg_id)
    room = _name(obj, "room", msg_id)
    epoch = obj.get("epoch")
    offset = obj.get("offset")
    if epoch is None and offset is None:
        return Subscribe(msg_id, room)
    if epoch is None or offset is None:
        raise WsJsonError(BAD_REQUEST, "epoch and offset go together", msg_id)
    if type(epoch) is not str or len(epoch) > MAX_NAME_LENGTH:
        raise WsJsonError(BAD_REQUEST, "invalid epoch", msg_id)
    if type(offset) is not int or offset < 0:
        raise WsJsonError(BAD_REQUEST, "invalid offset", msg_id)
    return Subscribe(msg_id, room, epoch, offset)


def _unsubscribe(obj: dict[str, Any], msg_id: RequestId | None) -> Unsubscribe:
    msg_id = _require_id(msg_id)
    return Unsubscribe(msg_id, _name(obj, "room", msg_id))


def _emit(obj: dict[str, Any], msg_id: RequestId | None) -> Emit:
    return Emit(msg_id, _name(obj, "event", msg_id), obj.get("data"))


def _publish(obj: dict[str, Any], msg_id: RequestId | None) -> Publish:
    msg_id = _require_id(msg_id)
    room = _name(obj, "room", msg_id)
    return Publish(msg_id, room, _name(obj, "event", msg_id), obj.get("data"))


def _ping(obj: dict[str, Any], msg_id: RequestId | None) -> Ping:
    return Ping(_require_id(msg_id))


def _refresh(obj: dict[str, Any], msg_id: RequestId | None) -> Refresh:
    msg_id = _require_id(msg_id)
    token = obj.get("token")
    if type(token) is not str or not token:
        raise WsJsonError(BAD_REQUEST, "invalid token", msg_id)
    return Refresh(msg_id, token)


_PARSERS: Final[dict[str, Callable[[dict[str, Any], RequestId | None], ClientMessage]]] = {
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "emit": _emit,
    "publish": _publish,
    "ping": _ping,
    "refresh": _refresh,
}


def decode(message: str | bytes) -> ClientMessage:
    """Decode one WebSocket message received from a client.

    Why: every field is checked here, with its type, so the transport and the hub only ever
    see well-formed requests; and the request id is read first, so that even a bad request
    can be answered with an error the client matches to it.

    Args:
        message: a text message (``str``), or a binary message (``bytes``), which is
            accepted only if it is UTF-8 JSON.

    Returns:
        One of :class:`Subscribe`, :class:`Unsubscribe`, :class:`Emit`, :class:`Publish`,
        :class:`Ping`, :class:`Refresh`.

    Raises:
        WsJsonError: ``unknown_type`` for an unknown ``type`` string, ``bad_request`` for
            anything else wrong (not UTF-8, not JSON, not an object, missing or non-string
            ``type``, a bad or missing field). ``.id`` is set whenever a valid id was read.
            Nothing else is raised for any input.
    """
    if isinstance(message, _BINARY):
        try:
            message = bytes(message).decode()
        except UnicodeDecodeError:
            raise WsJsonError(BAD_REQUEST, "message is not UTF-8 text") from None
    try:
        obj = _json.loads(message)
    except ValueError:  # JSONDecodeError; also lone surrogates in a str
        raise WsJsonError(BAD_REQUEST, "message is not JSON") from None
    if type(obj) is not dict:
        raise WsJsonError(BAD_REQUEST, "message must be a JSON object")
    msg_id = _read_id(obj)
    kind = obj.get("type")
    if type(kind) is not str:
        raise WsJsonError(BAD_REQUEST, "missing type", msg_id)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise WsJsonError(UNKNOWN_TYPE, "unknown message type", msg_id)
    return parser(obj, msg_id)


def _dumps(value: dict[str, Any]) -> str:
    try:
        return _json.dumps_str(value)
    except TypeError:  # e.g. bytes, a set, lone surrogates, an int past 64 bits
        raise LocalProtocolError("message is not JSON-serialisable") from None


def _check_id(id: object) -> None:
    if type(id) is not int and type(id) is not str:
        raise LocalProtocolError("a request id is an int or a str")


def event_message(event: str, data: JSONValue, *, room: str | None = None, offset: int | None = None) -> str:
    """Encode an ``event`` message: a publication to a room, or a direct emit to this client.

    Why: this is the fan-out path (built once per publication, sent to every subscriber
    using this protocol), so it does no more than build the dict; ``room`` and ``offset``
    are left out for a direct emit, which belongs to no room's stream.

    Args:
        event: the event name.
        data: the JSON data; for a publication, see :func:`publication_data`.
        room: the room of a publication.
        offset: the publication's offset in the room's stream; the client keeps the last
            one it applied, to recover from it.

    Returns:
        e.g. ``{"type":"event","room":"a","event":"e","data":1,"offset":7}``.

    Raises:
        LocalProtocolError: ``data`` is not JSON-serialisable (``bytes`` included: this
            protocol has no binary attachments).
    """
    if room is None:
        message: dict[str, Any] = {"type": "event", "event": event, "data": data}
    else:
        message = {"type": "event", "room": room, "event": event, "data": data}
    if offset is not None:
        message["offset"] = offset
    return _dumps(message)


def snapshot_message(
    id: RequestId,
    *,
    room: str,
    epoch: str,
    offset: int,
    recovered: bool,
    snapshot: JSONValue = None,
) -> str:
    """Encode the answer to a ``subscribe``: where the room stands and how to get in sync.

    Why: the client must know whether its own state is still good. ``recovered: true``
    means it is, and the publications it missed follow as ordinary ``event`` messages, so
    there is no ``snapshot`` key at all (a ``null`` snapshot would read as "the state is
    now null"). ``recovered: false`` means it must replace its state with ``snapshot``.

    Args:
        id: the ``subscribe`` request's id.
        room: the room.
        epoch: the room's epoch; store it with the offset.
        offset: the room's offset once the ``event`` messages that follow are applied.
        recovered: whether the requested position could be recovered by replay.
        snapshot: the room's state (only sent when ``recovered`` is false).

    Raises:
        LocalProtocolError: a bad id, a negative or non-int offset, or data that is not
            JSON-serialisable.
    """
    _check_id(id)
    if type(offset) is not int or offset < 0:
        raise LocalProtocolError("offset must be a non-negative int")
    message: dict[str, Any] = {
        "type": "snapshot",
        "id": id,
        "room": room,
        "epoch": epoch,
        "offset": offset,
        "recovered": bool(recovered),
    }
    if not recovered:
        message["snapshot"] = snapshot
    return _dumps(message)


def ack_message(id: RequestId, data: JSONValue = None) -> str:
    """Encode a successful answer to request ``id``: ``{"type":"ack","id":3,"data":...}``.

    Why: ``data`` is always present (``null`` when there is nothing to return) so clients
    need not tell "no key" from "null".

    Raises:
        LocalProtocolError: a bad id, or data that is not JSON-serialisable.
    """
    _check_id(id)
    return _dumps({"type": "ack", "id": id, "data": data})


def error_message(code: str, message: str, id: RequestId | None = None) -> str:
    """Encode a failed answer: ``{"type":"error","id":3,"code":"forbidden","message":"..."}``.

    Why: ``code`` is what clients branch on, so only the documented codes are allowed;
    ``message`` is for humans. Without ``id`` (the request had none, or it was unreadable)
    the key is left out and the error is about the connection's last message.

    Raises:
        LocalProtocolError: ``code`` is not one of :data:`ERROR_CODES`, a bad id, or a
            message that is not a str.
    """
    if code not in ERROR_CODES:
        raise LocalProtocolError("unknown error code")
    if not isinstance(message, str):
        raise LocalProtocolError("error message must be a str")
    if id is None:
        return _dumps({"type": "error", "code": code, "message": message})
    _check_id(id)
    return _dumps({"type": "error", "id": id, "code": code, "message": message})


def publication_data(args: tuple[JSONValue, ...]) -> JSONValue:
    """The JSON ``data`` of a publication, from its Socket.IO-style argument tuple.

    Why: Socket.IO events carry any number of arguments, but a plain JSON message (and an
    SSE event) carries one value. The common cases read naturally: no argument is ``null``
    and one argument is that value; several become a list. A single list argument and
    several arguments therefore look the same, by design.

    Returns:
        ``None`` for ``()``, ``args[0]`` for a 1-tuple, ``list(args)`` otherwise.
    """
    if not args:
        return None
    if len(args) == 1:
        return args[0]
    return list(args)
