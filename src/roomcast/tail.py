"""``roomcast tail``: follow rooms' SSE stream from a terminal, resuming after every drop.

L6, beside ``roomcast.cli``; imports only the stdlib (``http.client`` streaming). Two parts:

- ``SseParser``: the event-stream format as the WHATWG HTML standard tells a browser to read
  it (§9.2.6): fields, comments, a blank line dispatches, multi-line ``data``, CR / LF /
  CRLF line ends, and the last event id that persists from event to event. Pure: bytes in,
  events out, so it is tested without a socket.
- ``Tail``: the loop a terminal user wants. It prints one line per event, keeps the last
  ``id`` (roomcast's cursor over every room) and, when the connection drops, reconnects
  with ``Last-Event-ID`` after an exponential backoff with full jitter, so the server
  replays exactly what was missed and a fleet of tails does not reconnect in step after a
  server restart. The server's ``retry:`` hint is read but not used for the delay: it is a
  fixed delay meant for ``EventSource``, and a fixed delay against a server that is down is
  what the backoff is here to avoid.
"""

from __future__ import annotations

import codecs
import http.client
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlencode, urlsplit

from roomcast.backoff import Backoff

__all__ = ["SseEvent", "SseParser", "Tail", "BACKOFF_START", "STABLE_AFTER", "MAX_LINE"]

BACKOFF_START: Final = 0.5
"""Seconds: the ceiling of the first reconnect delay; it doubles per failed attempt up to the cap."""

STABLE_AFTER: Final = 10.0
"""Seconds a stream must have stayed open for the backoff to start over from ``BACKOFF_START``.

Why not on the first byte: a server that accepts, says something and drops at once (a
failing subscribe) would otherwise be hammered at the shortest delay forever.
"""

MAX_LINE: Final = 16 * 1024 * 1024
"""The longest line (or event data) the parser holds before giving up on the stream."""

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

    A line longer than ``MAX_LINE`` raises ``ValueError`` (a stream that never ends a line
    would otherwise grow without bound). An event left unfinished when the stream ends is
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
    )

    def __init__(self, last_id: str = "") -> None:
        self.last_id = last_id
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
        """The events that ``chunk`` completes, in order."""
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
        if len(self._pending) > MAX_LINE:
            raise ValueError("an event-stream line is over the size limit")
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
            if self._data_size > MAX_LINE:
                raise ValueError("an event's data is over the size limit")
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


class _Exit(Exception):
    """The stream said to stop; ``code`` is the exit status and ``str(exc)`` why."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Dropped(Exception):
    """The connection ended or failed; ``str(exc)`` says how. Reconnect after a backoff."""


def _one_line(data: str) -> str:
    """Event data on one output line: roomcast's data is JSON, where a line break between
    tokens is whitespace (and one inside a string is already escaped), so a space keeps it
    the same JSON."""
    return data.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error_message(body: bytes, status: int) -> str:
    """The server's ``{"error": {"message"}}``, or the status when the body is not that."""
    try:
        error = json.loads(body)["error"]
        return f"{error['message']} ({error['code']}, HTTP {status})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}"


class Tail:
    """Follows ``rooms`` at ``url`` until the rooms finish, the server refuses, or interrupted.

    Args:
        url: the server's base URL (a path is kept as a prefix).
        rooms: the rooms of the one stream.
        token: a JWT for a server that checks tokens, sent as ``?token=``.
        retry_max: the largest reconnect delay ceiling, in seconds.
        idle_timeout: seconds without a byte (not even a heartbeat) after which the
            connection counts as dead; a server's heartbeat comes every 15 s by default.
        out: writes one output line (one event).
        note: writes one diagnostic line (connects, drops, why it stopped).
        rng: the jitter's source.
        sleep: waits between attempts.
    """

    def __init__(
        self,
        url: str,
        rooms: Sequence[str],
        *,
        token: str | None = None,
        retry_max: float = 30.0,
        idle_timeout: float = 60.0,
        out: Callable[[str], None],
        note: Callable[[str], None],
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the URL must be http:// or https:// with a host, not {url!r}")
        if not rooms:
            raise ValueError("name at least one room")
        if not retry_max > 0 or not idle_timeout > 0:
            raise ValueError("retry_max and idle_timeout must be > 0 seconds")
        self.url = url.rstrip("/")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        # Named events whatever the server's default (``--sse-format message``): a line per
        # event says its name, and roomcast's own events are told apart by it.
        query = [("room", room) for room in rooms] + [("format", "events")] + ([("token", token)] if token else [])
        self.path = parts.path.rstrip("/") + "/sse?" + urlencode(query)
        self.rooms = list(rooms)
        self.retry_max = retry_max
        self.idle_timeout = idle_timeout
        self.out = out
        self.note = note
        self.rng = rng if rng is not None else random.Random()
        self.sleep = sleep
        self.last_id = ""
        self.backoff = Backoff(min(BACKOFF_START, retry_max), retry_max, rng=self.rng)
        self.failures = 0
        self.attempts = 0

    def run(self) -> int:
        """Follow until told to stop; the exit status (0: finished rooms, 1: refused or failed)."""
        while True:
            opened = time.monotonic()
            try:
                self._attempt()
            except _Exit as stop:
                self.note(str(stop))
                return stop.code
            except _Dropped as drop:
                if time.monotonic() - opened >= STABLE_AFTER:
                    self.failures = 0
                    self.backoff.reset()
                delay = self.backoff.next()
                self.failures += 1
                self.note(f"{drop}; reconnecting in {delay:.2f} s (attempt {self.failures})")
                self.sleep(delay)

    # -- one connection -----------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.idle_timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.idle_timeout)

    def _attempt(self) -> None:
        """One connection: returns never; raises ``_Exit`` or ``_Dropped``."""
        self.attempts += 1
        conn = self._connection()
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        try:
            try:
                conn.request("GET", self.path, headers=headers)
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise _Dropped(f"cannot connect to {self.url}: {_reason(exc)}") from None
            self._check(response)
            how = "resuming from the last event" if self.last_id else "following " + ", ".join(self.rooms)
            self.note(f"connected to {self.url}, {how}")
            self._follow(response)
        finally:
            conn.close()

    def _check(self, response: http.client.HTTPResponse) -> None:
        status = response.status
        if status == 204:
            raise _Exit(0, "the rooms are finished (204): nothing more will come")
        if status == 200:
            if "text/event-stream" not in response.getheader("Content-Type", ""):
                raise _Exit(1, f"error: {self.url} did not answer with an event stream")
            return
        try:
            body = response.read(65536)
        except (OSError, http.client.HTTPException):
            body = b""
        message = _error_message(body, status)
        if 400 <= status < 500 and status not in (408, 429):  # the same request would fail again
            raise _Exit(1, f"error: {message}")
        raise _Dropped(f"the server answered {message}")

    def _follow(self, response: http.client.HTTPResponse) -> None:
        parser = SseParser(self.last_id)
        while True:
            try:
                chunk = response.read1(65536)
            except TimeoutError:
                raise _Dropped(f"nothing from {self.url} for {self.idle_timeout:g} s") from None
            except (OSError, http.client.HTTPException) as exc:
                raise _Dropped(f"connection lost: {_reason(exc)}") from None
            if not chunk:
                raise _Dropped("the stream ended")
            try:
                events = parser.feed(chunk)
            except ValueError as exc:
                raise _Dropped(str(exc)) from None
            for event in events:
                self._show(event)
            self.last_id = parser.last_id

    def _show(self, event: SseEvent) -> None:
        self.out(f"{event.event} {_one_line(event.data)}")
        if event.event == "error":
            self._stream_error(event.data)

    def _stream_error(self, data: str) -> None:
        """roomcast's ``event: error`` ends the stream; ``reconnect: false`` means for good."""
        try:
            body = json.loads(data)
        except ValueError:
            return  # an application event named "error": nothing to act on
        if isinstance(body, dict) and body.get("reconnect") is False:
            raise _Exit(1, f"error: {body.get('message')} ({body.get('code')}); the server says not to reconnect")
