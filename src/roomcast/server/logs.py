"""Logging for a running server: text or JSON lines, written off the event loop, a debug
limiter, and the start-up line of effective settings with its secrets masked.

Imports the stdlib, ``broker.redis_client.redact`` (when a Redis URL is shown), ``server.config`` and
``transports.ratelimit`` (the debug limiter's buckets). Used by
``roomcast serve`` (``cli``) and its workers (``server.runner``); an application that embeds
roomcast keeps its own logging configuration and never calls ``configure_logging``.

Why a queue: a ``StreamHandler`` writes to stderr on the thread that logs, and a pipe nobody
reads (a stalled log shipper, a full ``journald`` buffer, a terminal paused with Ctrl-S)
blocks that write, so logging from the event loop would stop every connection.
``configure_logging`` installs one ``DroppingQueueHandler`` on the root logger: the loop only
formats the record's message and puts it on a bounded queue; a ``QueueListener`` thread does
the writing. When the queue is full the record is **dropped and counted**, never waited for:
delivery matters more than a log line. The count is written as a ``WARNING`` ("N log records
dropped") as soon as the queue takes records again.

What is never logged: tokens, query strings (``?token=``), headers, bodies, payloads. The
request lines below name the method, the path and the status only; ``settings_line`` masks
``jwt_secret``, ``api_key``, ``metrics_key`` and ``dashboard_key`` and passes ``redis_url`` through ``redact``.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from roomcast.server.config import LOG_FORMATS
from roomcast.transports.ratelimit import AttemptLimit

if TYPE_CHECKING:
    from roomcast.server.config import Settings

__all__ = [
    "LOG_FORMATS",
    "DroppingQueueHandler",
    "JsonFormatter",
    "LogLimiter",
    "LogPipeline",
    "configure_logging",
    "log_refused",
    "log_request",
    "log_settings",
    "settings_line",
]

QUEUE_RECORDS = 10_000
"""Records waiting for the writer thread at most; past it they are dropped and counted."""

SECRET_SETTINGS = frozenset({"jwt_secret", "api_key", "metrics_key", "dashboard_key"})
"""Settings shown only as ``***`` (set) or ``None``; ``redis_url`` goes through ``redact``."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

requests_logger = logging.getLogger("roomcast.requests")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    the record's ``fields`` (``hub.connlog``, ``log_request``) as keys of their own, and
    ``exc`` for a traceback. ``static`` adds fixed keys (a worker's index)."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                line.setdefault(key, value)  # a field never replaces time, level or message
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` that never waits: a full queue drops the record and counts it.

    ``dropped`` is the total since start; the ones not yet reported are written as one
    warning record ahead of the next record the queue accepts. ``handle`` holds the handler's
    lock around ``emit``, so the count and its report do not race between threads.
    """

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        self.dropped = 0
        self._unreported = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        records: queue.Queue[logging.LogRecord | None] = self.queue  # type: ignore[assignment]
        if self._unreported and records.maxsize - records.qsize() >= 2:
            note = logging.LogRecord(
                "roomcast.logs",
                logging.WARNING,
                __file__,
                0,
                "%d log records dropped: the log output is not keeping up",
                (self._unreported,),
                None,
            )
            note.fields = {"event": "log_dropped", "dropped": self._unreported}
            records.put_nowait(self.prepare(note))
            self._unreported = 0
        try:
            records.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self._unreported += 1


class LogPipeline:
    """The installed queue, handler and writer thread; ``stop`` flushes and removes them."""

    def __init__(self, handler: DroppingQueueHandler, listener: logging.handlers.QueueListener) -> None:
        self.handler = handler
        self.listener = listener
        self._stopped = False

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full, since start."""
        return self.handler.dropped

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued, waiting ``timeout`` seconds at most: a stalled stderr must
        not hold the process's exit either (what is left then is lost). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        logging.getLogger().removeHandler(self.handler)
        thread = self.listener._thread  # QueueListener's writer
        if thread is None:
            return
        try:
            self.handler.queue.put_nowait(None)  # QueueListener's sentinel
        except queue.Full:
            return
        thread.join(timeout)
        if not thread.is_alive():
            self.listener._thread = None


def configure_logging(
    level: str,
    log_format: str = "text",
    *,
    stream: IO[str] | None = None,
    worker: int | None = None,
    queue_records: int = QUEUE_RECORDS,
) -> LogPipeline:
    """Send every ``roomcast`` (and other) record to ``stream`` (stderr) through a bounded
    queue and a writer thread, as ``log_format`` lines at ``level`` and above.

    Replaces the root logger's handlers (``logging.basicConfig`` would add to them). The
    writer thread is stopped at exit, bounded (``LogPipeline.stop``).

    Args:
        level: ``debug``, ``info``, ``warning`` or ``error``.
        log_format: ``text`` or ``json``.
        stream: where lines go; ``sys.stderr`` when ``None``.
        worker: the worker's index under ``--workers``, named on every line.
        queue_records: records waiting at most before new ones are dropped.

    Raises:
        ValueError: an unknown ``log_format``.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    out = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format == "json":
        out.setFormatter(JsonFormatter({"worker": worker} if worker is not None else None))
    else:
        prefix = f"[worker {worker}] " if worker is not None else ""
        out.setFormatter(logging.Formatter(TEXT_FORMAT.replace("%(name)s", prefix + "%(name)s")))
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=queue_records)
    handler = DroppingQueueHandler(records)
    listener = logging.handlers.QueueListener(records, out)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    listener.start()
    pipeline = LogPipeline(handler, listener)
    atexit.register(pipeline.stop)
    return pipeline


def settings_line(settings: Settings) -> str:
    """Every setting as ``name=value``, secrets masked: what ``log_settings`` writes."""
    shown = []
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if field.name in SECRET_SETTINGS and value is not None:
            value = "***"
        elif field.name == "redis_url" and value is not None:
            from roomcast.broker.redis_client import redact  # redis-py only when a URL is set

            value = redact(value)
        shown.append(f"{field.name}={value!r}")
    return " ".join(shown)


def log_settings(settings: Settings) -> None:
    """Log the effective settings once at start-up (``roomcast serve``), secrets masked."""
    logging.getLogger("roomcast.server").info("settings: %s", settings_line(settings))


class LogLimiter:
    """How many debug lines of one kind may be written: a token bucket per kind.

    ``take(kind)`` answers whether one more line of ``kind`` may be written now, and how
    many were suppressed since the last one that was, so the caller writes "N similar
    messages suppressed" first. The buckets are ``transports.ratelimit.AttemptLimit``'s (one
    refilling bucket per key, as for failed dashboard logins), not ``TokenBucket``'s: that
    bucket's refusal is final (the connection is cut), while a log kind refills and speaks
    again. Only touched under ``_limiter_lock``.

    Args:
        per_second: lines of one kind per second, on average.
        burst: lines of one kind at once.
        clock: seconds, monotonic (injected so the tests need no real time).
    """

    __slots__ = ("_lines", "_suppressed")

    def __init__(self, per_second: float = 20.0, burst: int = 50, clock: Callable[[], float] = time.monotonic) -> None:
        self._lines = AttemptLimit(per_second, burst, clock=clock)
        self._suppressed: dict[str, int] = {}

    def take(self, kind: str) -> tuple[bool, int]:
        """``(allowed, suppressed)``: suppressed is the count to report, reset when allowed."""
        if self._lines.wait(kind) > 0:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False, 0
        self._lines.charge(kind)
        return True, self._suppressed.pop(kind, 0)


_limiter = LogLimiter()
_limiter_lock = threading.Lock()  # workers' threads never log requests, but an embedder might


def _limited(kind: str, message: str, args: tuple[object, ...], fields: dict[str, object]) -> None:
    """Write one debug line of ``kind`` unless its bucket is dry; first, how many were not."""
    with _limiter_lock:
        allowed, suppressed = _limiter.take(kind)
    if not allowed:
        return
    if suppressed:
        requests_logger.debug(
            "%d similar %s messages suppressed",
            suppressed,
            kind,
            extra={"fields": {"event": "suppressed", "kind": kind, "suppressed": suppressed}},
        )
    requests_logger.debug(message, *args, extra={"fields": {"event": kind, **fields}})


def _shown(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def log_request(door: str, method: str, path: str, status: int) -> None:
    """At debug, one line per HTTP request (a WebSocket handshake too) and its status,
    rate-limited per kind: ``request`` (answered below 400) and ``refused`` (400 and up).

    Only the method, the path (never the query: it may carry ``?token=``) and the status.
    """
    if not requests_logger.isEnabledFor(logging.DEBUG):
        return
    kind = "refused" if status >= 400 else "request"
    path = _shown(path)
    fields = {"door": door, "method": method, "path": path, "status": status}
    _limited(kind, "%s %s %r -> %d", (kind, method, path, status), fields)


def log_refused(door: str, status: int, what: str, detail: str = "") -> None:
    """At debug, input refused before it became a request (a malformed or oversized head, a
    bad WebSocket handshake), rate-limited with ``log_request``'s ``refused`` kind.

    ``detail`` is the parser's own complaint; never a header value or the request target.
    """
    if not requests_logger.isEnabledFor(logging.DEBUG):
        return
    detail = _shown(detail)
    fields = {"door": door, "status": status, "what": what, "detail": detail}
    _limited("refused", "refused %s -> %d %s", (what, status, detail), fields)
