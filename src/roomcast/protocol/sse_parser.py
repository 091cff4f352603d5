"""Reading a ``text/event-stream``, sans-I/O: bytes in, events out.

Owns the client side of Server-Sent Events as the WHATWG HTML standard tells a browser to
read a stream (§9.2.6 "Interpreting an event stream"): fields, comments, a blank line
dispatches, multi-line ``data``, CR / LF / CRLF line ends cut anywhere between chunks, one
leading BOM, and the last event id that persists from event to event (and across
reconnects). ``protocol.sse`` beside it owns the other direction (framing, the cursor).

Pure: no sockets, no clock, so it is tested byte by byte. Every reader of an event stream
in the package uses it (``roomcast tail``; any later SSE consumer must too): one parser,
one set of rules. The server's ``retry:`` hint is kept in :attr:`SseParser.retry` for the
caller to weigh; the reconnect delay itself is ``roomcast.backoff``'s.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

from roomcast.errors import PayloadTooBig

__all__ = ["SseEvent", "SseParser", "MAX_LINE"]

MAX_LINE: Final = 16 * 1024 * 1024
"""The default longest line (or event data) the parser holds before giving up on the stream."""

_EOL: Final = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event: its type, its data lines joined by LF, and the last event id.

    ``id`` is the stream's last event id when the event was dispatched, as a browser's
    ``MessageEvent.lastEventId``: an event without an ``id:`` field carries the previous one.
    """

    event: str
    data: str
    id: str


class SseParser:
    """Turns ``text/event-stream`` bytes, in chunks cut anywhere, into ``SseEvent`` objects.

    Args:
        last_id: the last event id from an earlier connection; it persists (the spec keeps
            it across reconnects), so a resumed stream reports it until a new ``id:`` comes.

    A line (or an event's data) longer than ``max_line`` raises ``PayloadTooBig`` (a stream
    that never ends a line would otherwise grow without bound). An event left unfinished when the stream ends is
    never dispatched, as in a browser.
    """

    __slots__ = (
        "last_id",
        "retry",
        "_id",
        "_event",
        "_data",
        "_data_size",
        "_pending",
        "_decoder",
        "_started",
        "_skip_lf",
        "max_line",
    )

    def __init__(self, last_id: str = "", *, max_line: int = MAX_LINE) -> None:
        self.last_id = last_id
        self.max_line = max_line
        self.retry: int | None = None
        self._id = last_id  # the spec's "last event ID buffer"
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._started = False
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes, in order.

        Raises:
            PayloadTooBig: a line or an event's data over ``max_line``; the parser is spent.
        """
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:  # one leading BOM is not part of the stream
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf:  # the CR that ended the last chunk was the first half of a CRLF
            self._skip_lf = False
            text = text.removeprefix("\n")
        buffer, start, events = self._pending + text, 0, []
        for end in _EOL.finditer(buffer):
            event = self._line(buffer[start : end.start()])
            start = end.end()
            if event is not None:
                events.append(event)
        self._pending = buffer[start:]
        self._skip_lf = buffer.endswith("\r") and not self._pending
        if len(self._pending) > self.max_line:
            raise PayloadTooBig("an event-stream line is over the size limit")
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment: heartbeats, nothing to the application
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_line:
                raise PayloadTooBig("an event's data is over the size limit")
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:  # the spec ignores such an id rather than resume from it
                self._id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        return None  # unknown fields are ignored

    def _dispatch(self) -> SseEvent | None:
        self.last_id = self._id
        data, event = self._data, self._event or "message"
        self._data, self._data_size, self._event = [], 0, ""
        if not data:  # a block with no data field dispatches nothing (but its id counts)
            return None
        return SseEvent(event, "\n".join(data), self.last_id)
