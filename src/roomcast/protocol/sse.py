"""Server-Sent Events framing and the multi-room resume cursor.

Owns the bytes of an ``text/event-stream`` response body (WHATWG HTML, "Server-sent events",
§9.2.6 "Interpreting an event stream") and the format of the ``id`` roomcast puts on every
event: a *cursor* that names a position in every room of the stream at once, so that the
single ``Last-Event-ID`` a browser sends back on reconnect resumes all of them.

Sans-I/O: pure functions over ``str``/``bytes``; no sockets, clocks or event loops. Being
asked to frame something the format cannot carry raises
:class:`~roomcast.errors.LocalProtocolError`; a cursor from the peer that is not one we made
raises :class:`~roomcast.errors.RemoteProtocolError` and nothing else.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any, Final

from roomcast import _json
from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.types import StreamPosition

__all__ = [
    "CONTENT_TYPE",
    "FORMATS",
    "VIEWS",
    "CLIENT",
    "CANONICAL",
    "EVENTS",
    "MESSAGE",
    "RESERVED_EVENTS",
    "MAX_CURSOR_LENGTH",
    "event_frame",
    "id_line",
    "comment",
    "retry_frame",
    "encode_cursor",
    "decode_cursor",
]

CONTENT_TYPE: Final = "text/event-stream"
RESERVED_EVENTS: Final = frozenset({"snapshot", "reset", "error"})
"""Event names roomcast itself sends on an SSE stream (and ``/ws`` clients expect from it):
a publication may not use them, or ``EventSource`` pages would take it for roomcast's own."""

FORMATS: Final = ("events", "message")
"""How a stream frames its events (``?format=``, ``Settings.sse_format``).

``events``: each event has its name in an ``event:`` field, so a page listens with
``addEventListener(name)``. ``message``: no ``event:`` field, and the data is
``{"event": name, "data": ...}``, so the browser dispatches every event, roomcast's own
(``snapshot``, ``reset``, ``error``) included, to ``EventSource.onmessage``: the handler most
pages use, which receives nothing from named events. The ``id:`` is the same in both, so
``Last-Event-ID`` recovery is too."""
EVENTS, MESSAGE = FORMATS

VIEWS: Final = ("client", "canonical")
"""Which form of the data a stream is sent (``?view=``).

``client``: what every client receives (a task kind's payload map applied). ``canonical``:
the application's own form where a publication has one (``Publication.canonical``: a mapped
task's ``Task.to_json``), the same data elsewhere; for operators (``roomcast tail``), so the
server allows it only to a request the API would allow (docs/protocol.md)."""
CLIENT, CANONICAL = VIEWS

MAX_CURSOR_LENGTH: Final = 8192
"""The longest cursor :func:`decode_cursor` accepts, and so the longest one we may send."""

_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_BAD_CURSOR: Final = "bad Last-Event-ID"
_LONG_CURSOR: Final = "Last-Event-ID too long"


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:  # lone surrogates: not text any UTF-8 peer could read
        raise LocalProtocolError("SSE text is not encodable as UTF-8") from None


def _check_line(value: object, what: str) -> str:
    """Return ``value`` if it fits on one field line; a CR or LF would start a new field."""
    if not isinstance(value, str):
        raise LocalProtocolError(f"SSE {what} must be a str")
    if "\n" in value or "\r" in value:
        raise LocalProtocolError(f"SSE {what} must not contain CR or LF")
    return value


def _check_id(value: object) -> str:
    # A browser ignores an id field containing NUL (spec: "If the field value does not
    # contain U+0000 NULL"), so the client would silently resume from an older event.
    text = _check_line(value, "id")
    if "\x00" in text:
        raise LocalProtocolError("SSE id must not contain NUL")
    return text


def event_frame(data: str, *, event: str | None = None, id: str | None = None) -> bytes:
    """Frame one event: optional ``id:``, optional ``event:``, ``data:`` lines, blank line.

    Why: a line break inside ``data`` would end the field, so each line of ``data`` gets its
    own ``data:`` field (the client joins them back with LF). CRLF, CR and LF all count as
    line breaks on the client, so all three are split on; any other character, including
    U+2028 and NUL, is carried as is.

    The fan-out builds one body per publication with ``event_frame(data, event=...)`` and
    puts each stream's own :func:`id_line` in front of it.

    Args:
        data: the event data; ``""`` is one empty ``data:`` line (an event with empty
            data, still dispatched by the client).
        event: the event type; ``None`` means the default type, ``message``.
        id: the event id (see :func:`encode_cursor`); ``None`` sends no ``id:`` field.

    Returns:
        UTF-8 bytes, e.g. ``b"event: e\\ndata: 1\\n\\n"``.

    Raises:
        LocalProtocolError: ``event``/``id`` contain CR or LF, ``id`` contains NUL, or the
            text has lone surrogates (not UTF-8).
    """
    if not isinstance(data, str):
        raise LocalProtocolError("SSE data must be a str")
    head = ""
    if id is not None:
        head = "id: " + _check_id(id) + "\n"
    if event is not None:
        head += "event: " + _check_line(event, "event") + "\n"
    if "\n" in data or "\r" in data:
        data = data.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\ndata: ")
    return _utf8(head + "data: " + data + "\n\n")


def id_line(cursor: str) -> bytes:
    """Return the ``id:`` field line for ``cursor``, to put in front of a shared body.

    Why: the data and event type are the same for every subscriber of a publication but the
    cursor differs per stream (it holds the positions of all of that stream's rooms); with
    this the body is framed once and only this short line is built per stream.

    Returns:
        ``b"id: " + cursor + b"\\n"``; no blank line, the body that follows ends the event.

    Raises:
        LocalProtocolError: ``cursor`` contains CR, LF or NUL, or is not UTF-8 encodable.
    """
    return _utf8("id: " + _check_id(cursor) + "\n")


def comment(text: str = "") -> bytes:
    """Return a comment, e.g. ``b": ping\\n\\n"`` (``b":\\n\\n"`` for empty ``text``).

    Why: clients ignore comments, but the bytes keep proxies from closing an idle stream
    and let the server notice a dead peer when the write fails. The trailing blank line
    ends an (empty) event, which makes buffering proxies flush it.

    Raises:
        LocalProtocolError: ``text`` contains CR or LF.
    """
    text = _check_line(text, "comment")
    return _utf8(": " + text + "\n\n" if text else ":\n\n")


def retry_frame(milliseconds: int) -> bytes:
    """Return ``b"retry: N\\n\\n"``: the client's reconnection delay from now on.

    Why: the browser's default delay is its own choice; the server sets it to spread
    reconnects after a restart. Clients ignore a value that is not only ASCII digits, so
    only a non-negative ``int`` is accepted.

    Raises:
        LocalProtocolError: ``milliseconds`` is not a non-negative ``int`` (``bool`` is not).
    """
    if type(milliseconds) is not int or milliseconds < 0:
        raise LocalProtocolError("SSE retry must be a non-negative int")
    return b"retry: %d\n\n" % milliseconds


def encode_cursor(positions: Mapping[str, StreamPosition]) -> str:
    """Encode the positions of every room of one stream as one event id.

    Why: an SSE client sends back a single ``Last-Event-ID``, but one stream may follow
    several rooms; the id therefore holds all of their positions. The form is compact JSON
    ``{"room":["epoch",offset],...}`` with the rooms sorted (the same positions always give
    the same id), then base64url without padding, so that it is safe verbatim in an SSE
    ``id:`` line, an HTTP header and a URL query parameter.

    Args:
        positions: room name (non-empty) to its position; may be empty.

    Returns:
        The cursor, at most :data:`MAX_CURSOR_LENGTH` characters of ``[A-Za-z0-9_-]``.

    Raises:
        LocalProtocolError: an empty or non-str room name, a non-str epoch, an offset that
            is not a non-negative ``int`` below 2**64, text with lone surrogates, or a
            cursor longer than :data:`MAX_CURSOR_LENGTH` (one the client could not resume
            with: the transport must bound the rooms per stream).
    """
    if not all(isinstance(room, str) and room for room in positions):
        raise LocalProtocolError("cursor room names must be non-empty str")
    obj: dict[str, list[Any]] = {}
    for room in sorted(positions):
        position = positions[room]
        if not isinstance(position, StreamPosition) or not isinstance(position.epoch, str):
            raise LocalProtocolError("cursor positions must be StreamPosition with a str epoch")
        offset = position.offset
        if type(offset) is not int or offset < 0:
            raise LocalProtocolError("cursor offsets must be non-negative ints")
        obj[room] = [position.epoch, offset]
    try:
        raw = _json.dumps(obj)
    except TypeError:  # lone surrogates, or an offset past 64 bits
        raise LocalProtocolError("cursor is not JSON-serialisable") from None
    cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise LocalProtocolError("cursor too long: too many rooms in one stream")
    return cursor


def decode_cursor(text: str) -> dict[str, StreamPosition]:
    """Decode a ``Last-Event-ID`` made by :func:`encode_cursor`.

    Why: the value comes from the client (a header or a query parameter) and may be
    anything; every malformation becomes the same exception type so the transport answers
    all of them in one place (an HTTP 400), and the length is checked before any work.

    Args:
        text: the cursor; ``""`` is malformed (the transport treats an empty or absent
            ``Last-Event-ID`` as "no cursor" before calling this).

    Returns:
        Room name to position, for every room the cursor names (possibly none).

    Raises:
        RemoteProtocolError: too long, not unpadded base64url, not JSON, not an object, an
            empty room name, or a value that is not ``[str, non-negative int]``. Nothing
            else is raised for any input.
    """
    if not isinstance(text, str):
        raise RemoteProtocolError(_BAD_CURSOR)
    if len(text) > MAX_CURSOR_LENGTH:
        raise RemoteProtocolError(_LONG_CURSOR)
    if not _BASE64URL.fullmatch(text):
        raise RemoteProtocolError(_BAD_CURSOR)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        obj = _json.loads(raw)
    except ValueError:  # binascii.Error and JSONDecodeError are both ValueErrors
        raise RemoteProtocolError(_BAD_CURSOR) from None
    if type(obj) is not dict:
        raise RemoteProtocolError(_BAD_CURSOR)
    positions: dict[str, StreamPosition] = {}
    for room, value in obj.items():
        if (
            not room
            or type(value) is not list
            or len(value) != 2
            or type(value[0]) is not str
            or type(value[1]) is not int  # excludes bool and float
            or value[1] < 0
        ):
            raise RemoteProtocolError(_BAD_CURSOR)
        positions[room] = StreamPosition(value[0], value[1])
    return positions
