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

__all__ = ["Answer", "BadAnswer", "Unreachable", "get", "MAX_BODY"]

MAX_BODY: Final = 1024 * 1024
"""The largest answer body read: a status document, not a download."""

_MAX_HEADERS: Final = 100


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
    except (OSError, asyncio.IncompleteReadError) as exc:  # refused, reset, DNS, TLS, early EOF
        raise Unreachable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
    except ValueError as exc:  # a line over the reader's limit
        raise BadAnswer(str(exc)) from exc


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    status, reason, headers = await _read_head(reader)
    while 100 <= status < 200:  # interim answers
        status, reason, headers = await _read_head(reader)
    if status in (204, 304):
        return Answer(status, reason, b"")
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Answer(status, reason, await _read_chunked(reader))
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit() or int(length) > MAX_BODY:
            raise BadAnswer(f"bad or too large Content-Length {length[:20]!r}")
        return Answer(status, reason, await reader.readexactly(int(length)))
    body = b""  # delimited by the end of the connection
    while len(body) <= MAX_BODY and (chunk := await reader.read(65536)):
        body += chunk
    if len(body) > MAX_BODY:
        raise BadAnswer(f"the body is over {MAX_BODY} bytes")
    return Answer(status, reason, body)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise Unreachable("the connection closed before an answer")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadAnswer(f"not an HTTP/1.x status line: {line[:80]!r}")
    reason = parts[2].decode("latin-1").strip() if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n"):
        if not line:
            raise BadAnswer("the answer ended inside its headers")
        if len(headers) >= _MAX_HEADERS:
            raise BadAnswer("too many headers")
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), reason, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size_text = (await reader.readline()).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadAnswer(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return body
        if len(body) + size > MAX_BODY:
            raise BadAnswer(f"the body is over {MAX_BODY} bytes")
        body += await reader.readexactly(size)
        await reader.readline()  # the CRLF after each chunk
