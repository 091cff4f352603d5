"""One HTTP/1.1 ``GET`` over asyncio streams: what the upstream pollers need, and no more.

Why not ``roomcast.publisher``'s client: the layers (``tasks`` is below ``publisher``). Why not
``aiohttp`` or ``urllib``: the server takes no HTTP client dependency, and ``urllib`` would block
the loop. Why this small: a poller asks one URL for a small JSON document, so there is no
keep-alive (``Connection: close``), no redirects, no compression and no request body.

The caller learns one of three things: an ``Answer`` (any status), ``Unreachable`` (no answer
came: refused, reset, DNS, TLS, or nothing within ``timeout``) or ``BadAnswer`` (bytes came,
but not an HTTP/1.x answer this reader accepts). The poller's retry policy rests on that split.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from roomcast.errors import RemoteProtocolError
from roomcast.protocol import http1

__all__ = ["Answer", "BadAnswer", "Unreachable", "get", "MAX_BODY"]

MAX_BODY: Final = 1024 * 1024
"""The largest answer body read: a status document, not a download."""


class Unreachable(Exception):
    """No answer came; ``str(exc)`` says why (it may be worth trying again)."""


class BadAnswer(Exception):
    """The peer answered with something that is not a readable HTTP/1.x answer."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    body: bytes


async def get(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """``GET url`` within ``timeout`` seconds for the whole exchange.

    ``url`` must be an absolute ``http``/``https`` URL (the caller validates it); ``headers``
    are sent after ``Host`` and ``Connection: close`` and may replace the default ``Accept:
    application/json`` and ``User-Agent``.

    Raises:
        Unreachable: connecting, sending or reading failed, or took over ``timeout``.
        BadAnswer: the answer is malformed or its body is over ``MAX_BODY``.
    """
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if tls else 80)
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        host_header += f":{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sent = {"accept": ("Accept", "application/json"), "user-agent": ("User-Agent", "roomcast-poller")}
    sent.update((name.lower(), (name, value)) for name, value in (headers or {}).items())
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
    lines.extend(f"{name}: {value}" for name, value in sent.values())
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    context = (ssl_context or ssl.create_default_context()) if tls else None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=context)
            try:
                writer.write(request)
                await writer.drain()
                return await _read_answer(reader)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout:g}s") from None
    except OSError as exc:  # refused, reset, DNS, TLS
        raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    """Feed the sans-I/O parser until the answer is whole; its errors become ours.

    Why the split: no byte at all, or a cut inside the body, is the network (``Unreachable``,
    worth retrying); anything else wrong is an upstream that does not answer HTTP properly.
    """
    parser = http1.ResponseParser(max_body=MAX_BODY)
    try:
        response = None
        while response is None:
            data = await reader.read(65536)
            response = parser.feed(data) if data else parser.feed_eof()
    except http1.IncompleteResponse as exc:
        if isinstance(exc, http1.NoResponse) or exc.in_body:
            raise Unreachable(exc.reason) from None
        raise BadAnswer(exc.reason) from None
    except RemoteProtocolError as exc:
        raise BadAnswer(exc.reason) from None
    return Answer(response.status, response.reason, response.body)
