"""Upstream pollers: a task that follows an external job by polling its status URL.

Why: many long jobs run elsewhere (a render farm, a CI pipeline, a vendor's batch API) and only
offer a URL to poll. Rather than each application writing that loop, a task follows the URL:
roomcast GETs it every ``interval``, maps fields of the JSON answer to the task's progress, step
and message, and ends the task when the answer says done or failed. Subscribers see the
external job as they see any other task.

Use (the server builds one ``TaskPoller`` next to its ``TaskService``: ``App.pollers``)::

    spec = PollSpec.from_json({
        "url": "https://render.example/jobs/42", "interval": 5, "timeout": 1800,
        "fields": {"progress": "data.percent", "status": "state",
                   "result": "data.output", "error": "data.error"},
        "done": ["succeeded"], "failed": ["failed"],
    })
    task = await pollers.create("render", spec, title="Render #42")  # or pollers.follow(id, spec)
    final = await pollers.wait(task.id)

Over HTTP: ``POST /api/tasks`` with ``"poll": {...}`` (the same JSON); from another process,
``Publisher.create_task(kind, poll={...})``.

The policy, chosen so that an upstream can never corrupt a task nor leave it running for ever:

* **Mapping.** Fields are dotted paths into the answer (``data.items.0.state``: a digit
  indexes a list); a path missing from an answer changes nothing. ``progress`` is scaled by
  ``100 / progress_scale`` (100: a percentage, 1: a fraction) and **clamped** to 0–100:
  upstreams overshoot (100.4 from rounding) or send -1 for "unknown", and neither is worth
  failing a job for; a value that is not a number is ignored. ``step`` and ``message`` take
  strings or numbers. The job is done when its ``status`` equals one of ``done`` (the task
  completes with the ``result`` field, or the whole answer when no ``result`` path is given)
  and failed when it equals one of ``failed`` (the task fails with the ``error`` field's text,
  or ``upstream reported <status>``). Without a ``status`` path, 100 % progress means done.
* **Errors.** Transient ones are retried at the next interval: no answer (refused, reset,
  DNS, TLS, nothing within ``request_timeout``), 5xx, 408 and 429. ``retries + 1`` of them in a
  row fail the task with the last reason (``upstream unreachable: …``, ``upstream answered 503
  Service Unavailable (4 attempts in a row)``). Permanent ones fail it at once: any other
  non-2xx (4xx; a redirect, which is not followed), a 2xx whose body is not JSON, bytes that
  are not HTTP.
* **Time.** ``timeout`` bounds the whole follow from its first request; then the task becomes
  ``timed_out`` with ``upstream did not finish within Ns``. The task's ``deadline`` applies too.
* **Stop.** A stop request (``stopping`` published in the task's room, from any process)
  cancels the poller at once, even mid-request; it acknowledges, so the task ends
  ``cancelled`` and the upstream is asked nothing more. The upstream job itself is not told:
  there is no standard stop URL. A task ended another way (deadline, API) just ends its poller.
* **Close.** ``aclose`` fails every followed task with ``CLOSED_REASON``. Polling is not
  durable: a restart does not resume it (the service fails unfinished tasks at startup).
* **Nodes.** The poller is the task's producer, so following a task holds it on this node
  (``TaskService.hold``): a stop sent to any node of a ``--redis`` hub reaches this poller,
  and if this process dies another node fails the task as lost once its lease lapses.

The URL is fetched by the server, so whoever may create tasks may make it fetch any address
it can reach: the API key is for trusted backends. Headers (tokens for the upstream) are kept
out of ``repr`` so they do not reach logs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from roomcast import _json, httpclient
from roomcast.errors import InvalidTransition, RemoteProtocolError, TaskError, TaskNotFound
from roomcast.protocol import http1
from roomcast.tasks.model import Task, TaskStatus
from roomcast.tasks.service import TaskService
from roomcast.types import JSONValue

__all__ = ["PollSpec", "PollFields", "TaskPoller", "CLOSED_REASON", "DEFAULT_DONE", "DEFAULT_FAILED"]

logger = logging.getLogger("roomcast.tasks.poller")

CLOSED_REASON: Final = "stopped following upstream: the server is shutting down"
MAX_BODY: Final = 1024 * 1024
"""The largest upstream answer body read: a status document, not a download."""
DEFAULT_DONE: Final = ("done", "completed", "complete", "succeeded", "success", "finished")
DEFAULT_FAILED: Final = ("failed", "failure", "error", "errored", "cancelled", "canceled", "aborted")
MAX_TEXT: Final = 1000
"""The longest step, message or error taken from an upstream answer (longer ones are cut)."""

StatusValue = str | int | float | bool
"""What a ``done``/``failed`` entry may be: a JSON scalar."""

_FIELD_NAMES: Final = ("progress", "step", "message", "status", "result", "error")
_SPEC_KEYS: Final = frozenset(
    {
        "url",
        "interval",
        "timeout",
        "request_timeout",
        "retries",
        "headers",
        "fields",
        "progress_scale",
        "done",
        "failed",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_RESERVED_HEADERS: Final = frozenset({"host", "connection", "content-length", "transfer-encoding"})
_MAX_URL: Final = 2048


# -- the spec --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class PollFields:
    """Where each part of the task is in the upstream's JSON answer, as dotted paths."""

    progress: str | None = None
    step: str | None = None
    message: str | None = None
    status: str | None = None
    result: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        for name in _FIELD_NAMES:
            path = getattr(self, name)
            if path is None:
                continue
            if not isinstance(path, str) or not 0 < len(path) <= 256 or "" in path.split("."):
                raise TaskError(f"poll spec: fields.{name} must be a dotted path such as 'data.percent', got {path!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PollSpec:
    """How to follow one upstream job. Validated on construction (``TaskError`` says what is wrong).

    Attributes:
        url: the job's status URL, ``http`` or ``https``, ASCII (percent-encode the rest),
            without credentials (put them in ``headers``).
        interval: seconds between the end of one request and the next.
        timeout: seconds the whole follow may take before the task is ``timed_out``.
        request_timeout: seconds one request may take; past it, the try counts as transient.
        retries: transient errors tolerated in a row; one more fails the task.
        headers: sent with every request (``Authorization``…); not in ``repr``.
        fields: the dotted paths of progress, step, message, status, result and error.
        progress_scale: the upstream value meaning 100 % (1 for a 0–1 fraction).
        done, failed: status values meaning the job succeeded / failed.
    """

    url: str
    interval: float = 2.0
    timeout: float = 3600.0
    request_timeout: float = 10.0
    retries: int = 3
    headers: Mapping[str, str] = field(default_factory=dict, repr=False, hash=False)
    fields: PollFields = PollFields()
    progress_scale: float = 100.0
    done: tuple[StatusValue, ...] = DEFAULT_DONE
    failed: tuple[StatusValue, ...] = DEFAULT_FAILED

    def __post_init__(self) -> None:
        _check_url(self.url)
        for name in ("interval", "timeout", "request_timeout", "progress_scale"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise TaskError(f"poll spec: '{name}' must be a positive number, got {value!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or not 0 <= self.retries <= 1000:
            raise TaskError(f"poll spec: 'retries' must be an integer from 0 to 1000, got {self.retries!r}")
        object.__setattr__(self, "headers", _checked_headers(self.headers))
        if not isinstance(self.fields, PollFields):
            raise TaskError("poll spec: 'fields' must be a PollFields")
        if self.fields.status is None and self.fields.progress is None:
            raise TaskError(
                "poll spec: 'fields' must name a 'status' or a 'progress' path, or the job could never be seen to end"
            )
        for name in ("done", "failed"):
            object.__setattr__(self, name, _checked_values(name, getattr(self, name)))
        overlap = [v for v in self.done if _among(v, self.failed)]
        if overlap:
            raise TaskError(f"poll spec: {overlap!r} cannot be both 'done' and 'failed'")

    @classmethod
    def from_json(cls, data: object) -> PollSpec:
        """Parse the JSON form (the ``poll`` object of ``POST /api/tasks``).

        Keys: ``url`` (required), ``interval``, ``timeout``, ``request_timeout``, ``retries``,
        ``headers`` (object), ``fields`` (object with ``progress``, ``step``, ``message``,
        ``status``, ``result``, ``error``), ``progress_scale``, ``done`` and ``failed`` (lists).

        Raises:
            TaskError: not an object, an unknown key, or a bad value; the message names it.
        """
        if not isinstance(data, Mapping):
            raise TaskError(f"poll spec: must be a JSON object, not {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in _SPEC_KEYS)
        if unknown:
            raise TaskError(
                f"poll spec: unknown key(s) {', '.join(map(repr, unknown))}; "
                f"expected some of {', '.join(sorted(_SPEC_KEYS))}"
            )
        if "url" not in data:
            raise TaskError("poll spec: 'url' is required")
        kwargs: dict[str, Any] = dict(data)
        mapping = kwargs.pop("fields", {})
        if not isinstance(mapping, Mapping):
            raise TaskError("poll spec: 'fields' must be an object of dotted paths")
        bad = sorted(str(k) for k in mapping if k not in _FIELD_NAMES)
        if bad:
            raise TaskError(
                f"poll spec: unknown field(s) {', '.join(map(repr, bad))}; expected some of {', '.join(_FIELD_NAMES)}"
            )
        for name in ("done", "failed"):
            if name in kwargs:
                if not isinstance(kwargs[name], list):
                    raise TaskError(f"poll spec: '{name}' must be a list of status values")
                kwargs[name] = tuple(kwargs[name])
        return cls(fields=PollFields(**mapping), **kwargs)


def _check_url(url: object) -> None:
    if (
        not isinstance(url, str)
        or not url.isascii()
        or len(url) > _MAX_URL
        or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url)
    ):
        raise TaskError(
            f"poll spec: 'url' must be an ASCII URL of at most {_MAX_URL} characters "
            "without spaces or control characters"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise TaskError(f"poll spec: 'url' is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TaskError(f"poll spec: 'url' must be an http:// or https:// URL with a host, got {url[:100]!r}")
    if parts.username is not None or parts.password is not None:
        raise TaskError("poll spec: 'url' must not carry credentials; send them in 'headers'")


def _checked_headers(headers: object) -> dict[str, str]:
    if not isinstance(headers, Mapping):
        raise TaskError("poll spec: 'headers' must be an object of strings")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
            raise TaskError(f"poll spec: {name!r} is not a header name the poller may send")
        if (
            not isinstance(value, str)
            or not value.isascii()
            or any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in value)
        ):
            raise TaskError(f"poll spec: header {name!r} must be an ASCII string without control characters")
        checked[name] = value
    return checked


def _checked_values(name: str, values: object) -> tuple[StatusValue, ...]:
    if (
        not isinstance(values, (tuple, list))
        or len(values) > 100
        or not all(isinstance(v, (str, int, float)) for v in values)
    ):
        raise TaskError(f"poll spec: '{name}' must be a list of at most 100 strings, numbers or booleans")
    return tuple(values)


# -- following -------------------------------------------------------------------------------


class _UpstreamError(Exception):
    """One poll went wrong; ``str(exc)`` is the reason the task would fail with."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(reason)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class _Outcome:
    """How the followed task is to end."""

    status: TaskStatus
    reason: str = ""
    result: JSONValue = None


class _Watch:
    """One followed task. ``interrupted``: the stop or end status the room announced."""

    __slots__ = ("spec", "runner", "interrupted", "ending", "closing")

    def __init__(self, spec: PollSpec) -> None:
        self.spec = spec
        self.runner: asyncio.Task[None] | None = None
        self.interrupted: str | None = None
        self.ending = False  # the poller is ending the task itself: its own event is no stop
        self.closing = False


class TaskPoller:
    """Follows upstream jobs for tasks of ``service``.

    Args:
        service: the tasks to drive (``begin``, ``report``, ``complete``, ``fail``, ``time_out``,
            ``cancel``).
        ssl_context: for ``https`` URLs; the default verifies against the system's CAs.

    It listens to ``service``'s changes for as long as the service lives, so a stop request
    is seen at once; make one per service, not one per task.
    """

    def __init__(self, service: TaskService, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self._service = service
        self._ssl = ssl_context
        self._watches: dict[str, _Watch] = {}
        self._closed = False
        service.add_listener(self._on_change)

    @property
    def following(self) -> frozenset[str]:
        """The ids of the tasks being followed now."""
        return frozenset(self._watches)

    async def create(
        self,
        kind: str,
        spec: PollSpec,
        *,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> Task:
        """Create a task (``TaskService.create``) and follow ``spec`` for it; returns it running."""
        self._check_open()
        task = await self._service.create(kind, title=title, owner=owner, deadline=deadline, metadata=metadata, id=id)
        return await self.follow(task.id, spec)

    async def follow(self, task_id: str, spec: PollSpec) -> Task:
        """Start following ``spec`` for a pending or running task; returns it running.

        The polling goes on in the background until the task ends (``wait`` for that).

        Raises:
            TaskNotFound: no such task.
            InvalidTransition: the task is stopping or has ended.
            TaskError: the task is followed already.
            RuntimeError: the poller is closed.
        """
        self._check_open()
        if task_id in self._watches:
            raise TaskError(f"task {task_id!r} is already following an upstream job")
        watch = self._watches[task_id] = _Watch(spec)  # held from here: a second follow is refused
        try:
            task = await self._service.get(task_id)
            if task.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
                task = await self._service.hold(task_id)  # its producer runs here from now on
            if task.status is TaskStatus.PENDING:
                task = await self._service.begin(task_id)
            if task.status is not TaskStatus.RUNNING:
                raise InvalidTransition(
                    f"task {task_id} is {task.status}; it cannot follow an upstream job",
                    task_id=task_id,
                    current=task.status.value,
                    target=None,
                )
        except BaseException:
            del self._watches[task_id]
            raise
        watch.runner = asyncio.get_running_loop().create_task(self._run(task_id, watch), name=f"poll {task_id}")
        if watch.interrupted is not None:  # stopped while it was being started
            watch.runner.cancel()
        return task

    async def wait(self, task_id: str) -> Task:
        """Wait until the poller of ``task_id`` (if any) is done; returns the task as it is then."""
        watch = self._watches.get(task_id)
        if watch is not None and watch.runner is not None:
            await asyncio.wait([watch.runner])
        return await self._service.get(task_id)

    async def aclose(self) -> None:
        """Stop every poller; their tasks fail with ``CLOSED_REASON``. Idempotent."""
        self._closed = True
        runners = []
        for watch in self._watches.values():
            watch.closing = True
            if watch.runner is not None:
                watch.runner.cancel()
                runners.append(watch.runner)
        await asyncio.gather(*runners, return_exceptions=True)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the task poller is closed")

    # -- one followed task ---------------------------------------------------------------

    def _on_change(self, task: Task) -> None:
        """A service listener: cancel the poller of a task that is stopping or has ended."""
        watch = self._watches.get(task.id)
        if watch is None or watch.ending or watch.interrupted is not None:
            return
        if task.status is TaskStatus.STOPPING or task.is_terminal:
            watch.interrupted = task.status.value
            if watch.runner is not None:
                watch.runner.cancel()

    async def _run(self, task_id: str, watch: _Watch) -> None:
        try:
            outcome: _Outcome | None
            try:
                outcome = await self._follow(task_id, watch.spec)
            except asyncio.CancelledError:
                if watch.interrupted is None and not watch.closing:
                    raise  # not ours: let it end the runner
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                if watch.interrupted == TaskStatus.STOPPING.value:
                    outcome = _Outcome(TaskStatus.CANCELLED)  # acknowledge the stop
                elif watch.interrupted is None:
                    outcome = _Outcome(TaskStatus.FAILED, CLOSED_REASON)
                else:
                    outcome = None  # it ended another way: nothing to do
            if outcome is not None:
                watch.ending = True
                await self._end(task_id, outcome)
        except (InvalidTransition, TaskNotFound) as exc:
            logger.debug("task %s ended while following upstream: %s", task_id, exc)
        except Exception as exc:  # a bug here must not leave the task running for ever
            logger.exception("the upstream poller of task %s failed", task_id)
            try:
                await self._service.fail(task_id, f"upstream poller failed: {type(exc).__name__}: {exc}")
            except TaskError:
                pass
        finally:
            if self._watches.get(task_id) is watch:
                del self._watches[task_id]

    async def _follow(self, task_id: str, spec: PollSpec) -> _Outcome:
        try:
            async with asyncio.timeout(spec.timeout) as limit:
                return await self._poll(task_id, spec)
        except TimeoutError:
            if not limit.expired():
                raise
            return _Outcome(TaskStatus.TIMED_OUT, f"upstream did not finish within {spec.timeout:g}s")

    async def _poll(self, task_id: str, spec: PollSpec) -> _Outcome:
        failures = 0
        while True:
            try:
                answer = await self._fetch(spec)
            except _UpstreamError as exc:
                if not exc.transient:
                    return _Outcome(TaskStatus.FAILED, str(exc))
                failures += 1
                if failures > spec.retries:
                    tries = f" ({failures} attempts in a row)" if failures > 1 else ""
                    return _Outcome(TaskStatus.FAILED, f"{exc}{tries}")
                logger.info("task %s: %s; trying again (%d/%d)", task_id, exc, failures, spec.retries)
            else:
                failures = 0
                outcome = await self._apply(task_id, spec, answer)
                if outcome is not None:
                    return outcome
            await asyncio.sleep(spec.interval)

    async def _fetch(self, spec: PollSpec) -> Any:
        """The upstream's JSON answer; ``_UpstreamError`` for anything else.

        The request goes through ``roomcast.httpclient`` (kept alive between polls of one
        upstream). Which failures are worth retrying: no answer at all, or one cut inside
        its body, is the network (transient); bytes that are not HTTP, or over ``MAX_BODY``,
        will not get better (final).
        """
        if self._ssl is None and spec.url.startswith("https:"):
            self._ssl = ssl.create_default_context()  # once per poller: a pool is per context
        origin, _ = httpclient.parse_origin(spec.url, self._ssl)
        parts = urlsplit(spec.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"accept": ("Accept", "application/json"), "user-agent": ("User-Agent", "roomcast-poller")}
        sent.update((name.lower(), (name, value)) for name, value in spec.headers.items())
        try:
            async with asyncio.timeout(spec.request_timeout):
                answer = await httpclient.arequest(
                    origin, "GET", target, headers=dict(sent.values()), max_body=MAX_BODY
                )
        except TimeoutError:
            raise _UpstreamError(
                f"upstream unreachable: no answer within {spec.request_timeout:g}s", transient=True
            ) from None
        except OSError as exc:  # refused, reset, DNS, TLS
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise _UpstreamError(f"upstream unreachable: {reason}", transient=True) from None
        except http1.IncompleteResponse as exc:
            transient = isinstance(exc, http1.NoResponse) or exc.in_body
            if transient:
                raise _UpstreamError(f"upstream unreachable: {exc.reason}", transient=True) from None
            raise _UpstreamError(f"upstream did not answer HTTP: {exc.reason}", transient=False) from None
        except RemoteProtocolError as exc:
            raise _UpstreamError(f"upstream did not answer HTTP: {exc.reason}", transient=False) from None
        said = f"upstream answered {answer.status} {answer.reason[:100]}".rstrip()
        if answer.status >= 500 or answer.status in (408, 429):
            raise _UpstreamError(said, transient=True)
        if not 200 <= answer.status < 300:
            note = " (redirects are not followed)" if 300 <= answer.status < 400 else ""
            raise _UpstreamError(said + note, transient=False)
        try:
            return _json.loads(answer.body)
        except ValueError:
            raise _UpstreamError(f"{said} with a body that is not JSON", transient=False) from None

    async def _apply(self, task_id: str, spec: PollSpec, answer: Any) -> _Outcome | None:
        """Report what the answer maps to; the outcome when it says the job has ended."""
        paths = spec.fields
        progress = _percent(_lookup(answer, paths.progress), spec.progress_scale)
        step, message = _text(_lookup(answer, paths.step)), _text(_lookup(answer, paths.message))
        if progress is not None or step is not None or message is not None:
            await self._service.report(task_id, progress, step, message)
        if paths.status is not None:
            status = _lookup(answer, paths.status)
            if _among(status, spec.failed):
                error = _text(_lookup(answer, paths.error), any_json=True)
                return _Outcome(TaskStatus.FAILED, error or f"upstream reported {_text(status, any_json=True)}")
            done = _among(status, spec.done)
        else:
            done = progress is not None and progress >= 100
        if done:
            result = answer if paths.result is None else _lookup(answer, paths.result)
            return _Outcome(TaskStatus.COMPLETED, result=result)
        return None

    async def _end(self, task_id: str, outcome: _Outcome) -> None:
        service = self._service
        if outcome.status is TaskStatus.COMPLETED:
            await service.complete(task_id, outcome.result)
        elif outcome.status is TaskStatus.FAILED:
            await service.fail(task_id, outcome.reason)
        elif outcome.status is TaskStatus.TIMED_OUT:
            await service.time_out(task_id, outcome.reason)
        else:
            await service.cancel(task_id)


# -- mapping ---------------------------------------------------------------------------------


def _lookup(document: Any, path: str | None) -> Any:
    """The value at dotted ``path`` in ``document``; ``None`` when the path is absent."""
    if path is None:
        return None
    value = document
    for key in path.split("."):
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


def _percent(value: Any, scale: float) -> float | None:
    """``value`` as a percentage clamped to 0–100; ``None`` if it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return min(100.0, max(0.0, value * 100.0 / scale))


def _text(value: Any, *, any_json: bool = False) -> str | None:
    """A string or number as text (any JSON with ``any_json``), cut to ``MAX_TEXT``; else ``None``."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    elif any_json and value is not None:
        text = _json.dumps(value).decode()
    else:
        return None
    return text[:MAX_TEXT] or None


def _among(value: Any, values: tuple[StatusValue, ...]) -> bool:
    """Whether ``value`` is one of ``values``, where ``True`` is not ``1``."""
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in values)
