"""A small Server-Sent Events reader over aiohttp, for tests in any folder.

It parses the stream as the WHATWG spec says a browser does (``event``, ``data``, ``id``,
``retry`` fields; comments; a blank line dispatches) and keeps the last ``id`` the way
``EventSource`` does, so a test can reconnect with exactly what a browser would send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None

    def json(self) -> Any:
        return json.loads(self.data)


class SseStream:
    """An open ``text/event-stream`` response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.last_id: str | None = None
        self.retry: int | None = None
        self.comments: list[str] = []
        self.ended = False

    async def next(self, timeout: float = 5.0) -> SseEvent:
        """The next event (comments and ``retry`` are recorded, not returned)."""
        async with asyncio.timeout(timeout):
            event, data, event_id = "message", [], None
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    self.ended = True
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if data or event_id is not None:
                        if event_id is not None:
                            self.last_id = event_id
                        return SseEvent(event, "\n".join(data), event_id)
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value
                elif name == "retry" and value.isdigit():
                    self.retry = int(value)

    async def comment(self, timeout: float = 5.0) -> str:
        """Read until the next comment line (events on the way are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    raise EOFError("the stream ended")
                line = raw.decode().rstrip("\r\n")
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    return self.comments[-1]

    async def until_end(self, timeout: float = 5.0) -> list[SseEvent]:
        """Every event until the server ends the stream."""
        events = []
        with contextlib.suppress(EOFError):
            while True:
                events.append(await self.next(timeout))
        return events


@contextlib.asynccontextmanager
async def open_sse(
    base_url: str,
    rooms: list[str],
    *,
    last_event_id: str | None = None,
    id_in_query: bool = False,
    headers: dict[str, str] | None = None,
    extra_query: dict[str, str] | None = None,
    path: str = "/sse",
) -> AsyncIterator[SseStream]:
    """Open ``/sse?room=...``; the stream's ``status`` tells whether it was accepted."""
    query: list[tuple[str, str]] = [("room", r) for r in rooms]
    request_headers = {"Accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        if id_in_query:
            query.append(("last_event_id", last_event_id))
        else:
            request_headers["Last-Event-ID"] = last_event_id
    query.extend((extra_query or {}).items())
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as http:
        async with http.get(f"{base_url}{path}?{urlencode(query)}", headers=request_headers) as response:
            yield SseStream(response)
