"""The gate every publication passes before it is stored or acknowledged.

Imports L0 and L1 (each protocol's reserved names). Why a gate: a publication is appended to
history and acknowledged with an offset before any encoder sees it, so one that no
transport can encode would be acknowledged and then delivered to nobody, and would break
every recovery that replays it. Here its data is serialised once (``_json.dumps_checked``, within
the shared depth limit), which both proves it encodable and saves each encoder the work.
"""

from __future__ import annotations

from typing import Any, Final

from roomcast import _json
from roomcast.errors import InvalidPublication
from roomcast.protocol import socketio, sse
from roomcast.types import MAX_NAME_LENGTH, JSONValue

__all__ = ["RESERVED_EVENTS", "prepare"]

RESERVED_EVENTS: Final = socketio.RESERVED_EVENTS | sse.RESERVED_EVENTS
"""Names no publication may use: Socket.IO's own events, and those roomcast sends on SSE."""


def prepare(event: object, args: tuple[JSONValue, ...]) -> tuple[tuple[bytes, ...], bool]:
    """Check a publication and serialise its data once.

    Returns:
        Each argument serialised (``Publication.encoded``), and whether the data holds
        binary attachments (``Publication.binary``: then the bytes are ``json_safe``'s form,
        for the JSON transports, and Socket.IO sends the attachments from ``data``).

    Raises:
        InvalidPublication: a reserved or malformed event name, or data that is not JSON or
            is nested deeper than ``_json.MAX_DEPTH``.
    """
    if not isinstance(event, str) or not 0 < len(event) <= MAX_NAME_LENGTH or "\n" in event or "\r" in event:
        raise InvalidPublication(f"event names are 1 to {MAX_NAME_LENGTH} characters, without line breaks")
    if event in RESERVED_EVENTS:
        raise InvalidPublication(f"{event!r} is reserved; reserved names: {', '.join(sorted(RESERVED_EVENTS))}")
    if not event.isascii():
        try:
            event.encode()
        except UnicodeEncodeError:
            raise InvalidPublication("the event name is not valid UTF-8") from None
    try:
        return tuple(_json.dumps_checked(arg) for arg in args), False
    except _json.JSONEncodeError:
        pass
    try:  # binary attachments or lone surrogates: what json_safe makes of them must encode
        safe = tuple(_json.dumps_checked(_json.json_safe(arg)) for arg in args)
    except _json.JSONEncodeError:
        raise InvalidPublication(f"the data is not JSON, or is nested deeper than {_json.MAX_DEPTH} levels") from None
    # Socket.IO carries binary as attachments; text with lone surrogates is carried with
    # them replaced, by every transport alike.
    return safe, _has_binary(args)


def _has_binary(value: Any) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    if isinstance(value, dict):
        return any(_has_binary(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_binary(v) for v in value)
    return False
