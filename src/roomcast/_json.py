"""The single JSON facade: every module that needs JSON imports it from here.

orjson is used for speed (the fan-out path encodes once per publication, the receive path
decodes every inbound event). ``dumps`` returns ``bytes``; ``dumps_str`` is for text frames.

One nesting limit, ``MAX_DEPTH``, holds in both directions: ``loads`` refuses deeper input
and ``dumps_checked`` (what a publication's data is serialised with, once, when it is
published) refuses deeper data. So nothing a client sends, and nothing a publication carries, is too
deep for an encoder: orjson's encoder stops at 254 levels, and the transports' envelopes
add at most two.
"""

from __future__ import annotations

import base64
from typing import Any, Final

import orjson

__all__ = [
    "MAX_DEPTH",
    "dumps",
    "dumps_str",
    "loads",
    "dumps_checked",
    "embed",
    "json_safe",
    "JSONDecodeError",
    "JSONEncodeError",
]

JSONDecodeError = orjson.JSONDecodeError
JSONEncodeError = orjson.JSONEncodeError

MAX_DEPTH: Final = 128
"""The deepest nesting of arrays and objects a JSON value may have, received or published."""

_ENCODER_DEPTH: Final = 254  # orjson serialises at most this many levels
_PAD: Final = _ENCODER_DEPTH - MAX_DEPTH


def dumps(value: Any) -> bytes:
    """Serialise ``value`` to compact UTF-8 JSON bytes. Raises ``TypeError`` if it can't."""
    return orjson.dumps(value)


def dumps_str(value: Any) -> str:
    """Serialise ``value`` to a compact JSON ``str``."""
    return orjson.dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON. Raises ``JSONDecodeError`` (a ``ValueError``) on bad input, including
    input nested deeper than ``MAX_DEPTH``.

    The depth is checked only when the input has more opening brackets than the limit (two
    C-speed counts), and then by serialising the value under padding: no Python walk.
    """
    value = orjson.loads(data)
    if len(data) > 2 * MAX_DEPTH and _brackets(data) > MAX_DEPTH:
        try:
            _padded(value)
        except JSONEncodeError:
            raise JSONDecodeError(f"nested deeper than {MAX_DEPTH} levels", "", 0) from None
    return value


def dumps_checked(value: Any) -> bytes:
    """Serialise ``value`` within ``MAX_DEPTH``: a publication's data, once, when it is published.

    Raises:
        JSONEncodeError: ``value`` is nested deeper than ``MAX_DEPTH``, or is not JSON
            (bytes, a str with lone surrogates, another type): see ``json_safe``.
    """
    return _padded(value)[_PAD:-_PAD]


def embed(encoded: tuple[bytes, ...]) -> tuple[orjson.Fragment, ...]:
    """Serialised values (``dumps_checked``) as ``orjson.Fragment``s, which ``dumps`` copies
    into its output as they are: each encoder builds its envelope without serialising the
    data again."""
    return tuple(orjson.Fragment(raw) for raw in encoded)


def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot carry made carriable, for the JSON transports.

    Socket.IO publications may hold binary attachments, which SSE and ``roomcast.v1`` carry as
    ``{"$binary": "<base64>"}``; text with lone surrogates (not UTF-8) has them replaced. The
    encoders call this only for publications whose data did not serialise as it is, so
    ordinary data pays nothing.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$binary": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k) if isinstance(k, str) else k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _padded(value: Any) -> bytes:
    """``value`` serialised inside ``_PAD`` arrays: orjson refuses it past ``MAX_DEPTH``."""
    for _ in range(_PAD):
        value = [value]
    return orjson.dumps(value)


def _brackets(data: bytes | bytearray | memoryview | str) -> int:
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    raw = bytes(data) if isinstance(data, memoryview) else data
    return raw.count(b"[") + raw.count(b"{")
