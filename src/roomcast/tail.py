"""``roomcast tail``: follow rooms' SSE stream from a terminal, resuming after every drop.

L6, beside ``roomcast.cli``. What it reuses rather than owns: the HTTP client
(``roomcast.httpclient.stream``), the event-stream parser (``protocol.sse_parser``) and the
reconnect delays (``roomcast.backoff``), the same ones the rest of the package uses.

``Tail`` is the loop a terminal user wants. It prints one line per event, keeps the last
``id`` (roomcast's cursor over every room) and, when the connection drops, reconnects with
``Last-Event-ID`` after an exponential backoff with full jitter, so the server replays
exactly what was missed and a fleet of tails does not reconnect in step after a server
restart. The server's ``retry:`` hint is read but not used for the delay: it is a fixed
delay meant for ``EventSource``, and a fixed delay against a server that is down is what
the backoff is here to avoid.

It follows the canonical view by default (``?view=canonical``): where the server sends
clients another form of a publication (a task kind's payload map), an operator sees the
application's own, as ``roomcast tasks show`` and the dashboard do. The server grants that
view to what its API would serve, so ``tail`` presents ``api_key`` (as ``X-API-Key``: a
token, when there is one, goes in ``?token=``).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import urlencode

from roomcast import httpclient
from roomcast.backoff import Backoff
from roomcast.errors import LocalProtocolError, RemoteProtocolError
from roomcast.protocol.sse import CANONICAL, VIEWS
from roomcast.protocol.sse_parser import MAX_LINE, SseEvent, SseParser

__all__ = ["Tail", "BACKOFF_START", "STABLE_AFTER", "MAX_LINE"]

BACKOFF_START: Final = 0.5
"""Seconds: the ceiling of the first reconnect delay; it doubles per failed attempt up to the cap."""

STABLE_AFTER: Final = 10.0
"""Seconds a stream must have stayed open for the backoff to start over from ``BACKOFF_START``.

Why not on the first byte: a server that accepts, says something and drops at once (a
failing subscribe) would otherwise be hammered at the shortest delay forever.
"""


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
        view: ``"canonical"`` (the application's own form of each event) or ``"client"``
            (what clients receive); ``protocol.sse.VIEWS``.
        api_key: the server's API key, which the canonical view needs unless the server
            has none and this is its machine.
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
        view: str = CANONICAL,
        api_key: str | None = None,
        retry_max: float = 30.0,
        idle_timeout: float = 60.0,
        out: Callable[[str], None],
        note: Callable[[str], None],
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        try:
            self.origin, prefix = httpclient.parse_origin(url)
        except ValueError:
            raise ValueError(f"the URL must be http:// or https:// with a host, not {url!r}") from None
        if not rooms:
            raise ValueError("name at least one room")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, not {view!r}")
        if not retry_max > 0 or not idle_timeout > 0:
            raise ValueError("retry_max and idle_timeout must be > 0 seconds")
        self.url = url.rstrip("/")
        # Named events whatever the server's default (``--sse-format message``): a line per
        # event says its name, and roomcast's own events are told apart by it.
        query = [("room", room) for room in rooms] + [("format", "events"), ("view", view)]
        query += [("token", token)] if token else []
        self.path = prefix.split("?", 1)[0] + "/sse?" + urlencode(query)
        self.rooms = list(rooms)
        self.api_key = api_key
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
    def _attempt(self) -> None:
        """One connection: returns never; raises ``_Exit`` or ``_Dropped``."""
        self.attempts += 1
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        try:
            response = httpclient.stream(self.origin, self.path, headers=headers, timeout=self.idle_timeout)
        except (OSError, RemoteProtocolError) as exc:
            raise _Dropped(f"cannot connect to {self.url}: {_reason(exc)}") from None
        except LocalProtocolError as exc:  # a Last-Event-ID the server sent that cannot go back
            raise _Exit(1, f"error: {exc}") from None
        with response:
            self._check(response)
            how = "resuming from the last event" if self.last_id else "following " + ", ".join(self.rooms)
            self.note(f"connected to {self.url}, {how}")
            self._follow(response)

    def _check(self, response: httpclient.Stream) -> None:
        status = response.status
        if status == 204:
            raise _Exit(0, "the rooms are finished (204): nothing more will come")
        if status == 200:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                raise _Exit(1, f"error: {self.url} did not answer with an event stream")
            return
        try:
            body = response.read(65536)
        except (OSError, RemoteProtocolError):
            body = b""
        message = _error_message(body, status)
        if 400 <= status < 500 and status not in (408, 429):  # the same request would fail again
            raise _Exit(1, f"error: {message}")
        raise _Dropped(f"the server answered {message}")

    def _follow(self, response: httpclient.Stream) -> None:
        parser = SseParser(self.last_id)
        try:
            for chunk in response.chunks():
                for event in parser.feed(chunk):
                    self._show(event)
                self.last_id = parser.last_id
        except TimeoutError:
            raise _Dropped(f"nothing from {self.url} for {self.idle_timeout:g} s") from None
        except OSError as exc:
            raise _Dropped(f"connection lost: {_reason(exc)}") from None
        except RemoteProtocolError as exc:
            raise _Dropped(exc.reason or str(exc)) from None
        raise _Dropped("the stream ended")

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
