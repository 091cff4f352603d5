"""The single JSON facade: every module that needs JSON imports it from here.

orjson is used for speed (the fan-out path encodes once per publication, the receive path
decodes every inbound event). ``dumps`` returns ``bytes``; ``dumps_str`` is for text frames.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps", "dumps_str", "loads", "JSONDecodeError"]

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """Serialise ``value`` to compact UTF-8 JSON bytes. Raises ``TypeError`` if it can't."""
    return orjson.dumps(value)


def dumps_str(value: Any) -> str:
    """Serialise ``value`` to a compact JSON ``str``."""
    return orjson.dumps(value).decode()


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON. Raises ``JSONDecodeError`` (a ``ValueError``) on bad input."""
    return orjson.loads(data)
