"""Publish to rooms from other processes: web workers, Celery tasks, cron scripts.

L5, beside ``roomcast.server`` and never importing it: only roomcast's bottom layers
(``types``, ``errors``, ``_json``, ``httpclient``) and the stdlib. A process that only
publishes needs no hub, no broker and no third-party HTTP client; it calls the backend API
of a running server (``POST /api/publish``, ``POST /api/broadcast``, the ``/api/tasks`` routes, see
``roomcast.server.api``). ``RedisPublisher`` publishes straight into the Redis of a
scaled-out deployment instead; it loads redis-py, the Redis broker's script and the
publication gate when it is made (and the task model and its Redis writer at its first task
call), so ``Publisher`` alone still loads none of them.

Tasks from another process: a worker creates a task (``create_task``), reports progress
(``report``) and ends it (``complete_task`` / ``fail_task``). The worker is told of a stop
request in the answer to its next report: the returned task's ``status`` is ``"stopping"``.
Tasks are returned as the server's JSON (plain ``dict``), not ``roomcast.tasks.Task``, so
this module stays on the bottom layer.

Connections: kept alive and reused, from pools that ``roomcast.httpclient`` keeps per
process, per thread (``publish``) and per event loop (``apublish``): a worker publishing
1,000 events opens one TCP connection, not 1,000, and publishes about twice as many per
second (``bench/publisher_keepalive.py``, ``docs/performance.md``).
Until issue 15 every call opened its own connection, because a ``Publisher`` that holds
no socket is trivially safe to share between threads, to use from any loop and to create
before a worker process forks (Celery prefork, gunicorn), where an inherited socket would
be written by two processes at once. The pools keep those promises without the cost: a
``Publisher`` still holds no socket itself, no socket is shared between threads or loops,
and a forked child starts with empty pools (``os.register_at_fork``).

A blocking method called from the thread of a running event loop raises
``BlockingCallInLoop`` at once, naming the coroutine to await: run, it would freeze that
loop for up to ``timeout``.
"""

from __future__ import annotations

import asyncio
import enum
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from roomcast import _json, httpclient
from roomcast.errors import (
    BlockingCallInLoop,
    InvalidPublication,
    LocalProtocolError,
    PayloadTooBig,
    PublishError,
    RemoteProtocolError,
)
from roomcast.protocol import http1
from roomcast.types import MAX_NAME_LENGTH, JSONValue, RoomName, StreamPosition

__all__ = ["Publisher", "RedisPublisher", "PublishResult", "PublishError", "BlockingCallInLoop"]

MAX_ANSWER: Final = 8 * 1024 * 1024
"""The largest answer body read (a broadcast to 1000 rooms answers about 60 KiB)."""

_T = TypeVar("_T")


class _Absent(enum.Enum):
    """The type of "no ``data`` argument", which differs from ``data=None`` (a JSON null)."""

    ABSENT = enum.auto()


_ABSENT: Final = _Absent.ABSENT


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where one publication landed: its room and its position in that room's stream.

    Why not a bare ``StreamPosition``: a broadcast answers one position per room, and a
    position without its room cannot be told apart; ``position`` gives the pair a
    subscriber's ``epoch``/``offset`` (or an SSE cursor) can be compared with.
    """

    room: RoomName
    epoch: str
    offset: int

    @property
    def position(self) -> StreamPosition:
        return StreamPosition(self.epoch, self.offset)


class _BadAnswer(ValueError):
    """The peer's bytes are not the HTTP answer expected; ``str(exc)`` says how."""


def _target(url: str, ssl_context: ssl.SSLContext | None) -> tuple[httpclient.Origin, str]:
    """The server's origin and the path prefix it is mounted under."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the roomcast URL must start with http:// or https://, not {url!r}")
    if parts.username is not None or parts.query or parts.fragment:
        raise ValueError(f"the roomcast URL must be a base URL without credentials, query or fragment: {url!r}")
    try:
        return httpclient.parse_origin(url, ssl_context)
    except ValueError as exc:
        raise ValueError(f"bad roomcast URL: {exc}") from None


def _publish_body(room: RoomName, event: str, data: JSONValue | _Absent) -> bytes:
    body: dict[str, Any] = {"room": room, "event": event}
    if data is not _ABSENT:
        body["data"] = data
    return _json.dumps(body)


def _broadcast_body(rooms: Iterable[RoomName], event: str, data: JSONValue | _Absent) -> bytes:
    if isinstance(rooms, str):  # a str is an iterable of one-letter rooms: surely a mistake
        raise TypeError("rooms must be a list of room names, not a str")
    body: dict[str, Any] = {"rooms": list(rooms), "event": event}
    if data is not _ABSENT:
        body["data"] = data
    return _json.dumps(body)


def _result(value: Any) -> PublishResult:
    if not isinstance(value, dict):
        raise _BadAnswer("the answer is not a JSON object")
    room, epoch, offset = value.get("room"), value.get("epoch"), value.get("offset")
    if not isinstance(room, str) or not isinstance(epoch, str) or type(offset) is not int:
        raise _BadAnswer("the answer lacks room, epoch or offset")
    return PublishResult(room, epoch, offset)


def _results(value: Any) -> list[PublishResult]:
    results = value.get("results") if isinstance(value, dict) else None
    if not isinstance(results, list):
        raise _BadAnswer("the answer lacks results")
    return [_result(item) for item in results]


def _task(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("id"), str) or not isinstance(value.get("status"), str):
        raise _BadAnswer("the answer is not a task (a JSON object with id and status)")
    return value


def _task_list(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("tasks"), list):
        raise _BadAnswer("the answer lacks tasks")
    for item in value["tasks"]:
        _task(item)
    cursor = value.get("next_cursor")
    if cursor is not None and not isinstance(cursor, str):
        raise _BadAnswer("next_cursor is not a string or null")
    return {"tasks": value["tasks"], "next_cursor": cursor}


def _task_path(task_id: str, action: str = "") -> str:
    """``/api/tasks/{id}[/action]``; an empty id would name the list route, so it is refused."""
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("task_id must be a non-empty string")
    path = "/api/tasks/" + quote(task_id, safe="")
    return f"{path}/{action}" if action else path


def _create_body(
    kind: str,
    title: str,
    owner: str | None,
    deadline: float | None,
    metadata: Mapping[str, JSONValue] | None,
    poll: Mapping[str, JSONValue] | None = None,
    task_id: str | None = None,
) -> bytes:
    body: dict[str, Any] = {"kind": kind, "title": title}
    if task_id is not None:
        body["id"] = task_id
    if owner is not None:
        body["owner"] = owner
    if deadline is not None:
        body["deadline"] = deadline
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if poll is not None:
        body["poll"] = dict(poll)
    return _json.dumps(body)


def _report_body(progress: float | None, step: str | None, message: str | None) -> bytes:
    fields = {"progress": progress, "step": step, "message": message}
    return _json.dumps({name: value for name, value in fields.items() if value is not None})


def _list_query(
    status: str | Iterable[str] | None, kind: str | None, owner: str | None, limit: int, cursor: str | None
) -> str:
    params: dict[str, str] = {"limit": str(limit)}
    if status is not None:
        statuses = [status] if isinstance(status, str) else list(status)
        if statuses:
            params["status"] = ",".join(statuses)
    for name, value in (("kind", kind), ("owner", owner), ("cursor", cursor)):
        if value is not None:
            params[name] = value
    return "/api/tasks?" + urlencode(params)


def _answer(url: str, status: int, payload: bytes) -> Any:
    """The JSON body of a 2xx answer; any other answer raises the server's ``PublishError``."""
    try:
        body = _json.loads(payload) if payload else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        if body is None:
            raise PublishError(status, "bad_response", f"roomcast at {url} answered {status} without a JSON body")
        return body
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str):
        raise PublishError(status, error["code"], error["message"])
    # Not roomcast's own error shape: a proxy or load balancer in between answered.
    excerpt = payload[:200].decode("utf-8", "replace").strip()
    raise PublishError(status, "http_error", f"{url} answered HTTP {status}" + (f": {excerpt}" if excerpt else ""))


class Publisher:
    """Publishes to a running roomcast server through its backend API, sync or async.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000`` (a path is kept as a
            prefix, for a server mounted under one).
        api_key: the server's ``--api-key``, sent as ``Authorization: Bearer``; ``None``
            for a server without one, which answers loopback clients only.
        timeout: seconds to wait for the connection and the answer (sync: each network
            wait; async: the whole exchange).
        ssl_context: for ``https://`` URLs signed by a private CA; the system's default
            verification otherwise (made once: loading the CA store costs milliseconds).

    Raises:
        ValueError: ``url`` is not an ``http(s)://`` base URL, ``timeout`` is not > 0, or
            ``api_key`` cannot go in a header.

    Every method raises :class:`~roomcast.errors.PublishError` when the server refuses
    (``status``, ``code`` and ``message`` are the server's) or cannot be reached
    (``status`` 0, code ``unreachable``), and ``TypeError`` when ``data`` is not JSON
    serialisable. ``data`` left out publishes the event with no arguments (Socket.IO
    handlers get none; SSE and WebSocket clients see ``null``); ``data=None`` publishes one
    ``null`` argument.
    """

    __slots__ = ("url", "api_key", "timeout", "ssl_context", "_origin", "_prefix")

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        self._origin, self._prefix = _target(url, ssl_context)
        self.url = url.rstrip("/")
        self.api_key = api_key or None
        if self.api_key is not None:
            try:
                http1.check_headers({"Authorization": f"Bearer {self.api_key}"})
            except LocalProtocolError:
                raise ValueError("api_key cannot be sent in a header (CR, LF, NUL or not Latin-1)") from None
        self.timeout = timeout
        self.ssl_context = self._origin.ssl_context

    def __repr__(self) -> str:  # never the key: reprs end up in logs and tracebacks
        return f"Publisher({self.url!r})"

    # -- the API ------------------------------------------------------------------------
    def publish(self, room: RoomName, event: str, data: JSONValue | _Absent = _ABSENT) -> PublishResult:
        """Publish ``event`` to ``room``; blocks until the server answers where it landed."""
        return self._parsed(
            _result, *self._request("publish", "POST", "/api/publish", _publish_body(room, event, data))
        )

    async def apublish(self, room: RoomName, event: str, data: JSONValue | _Absent = _ABSENT) -> PublishResult:
        """``publish`` for coroutines: the same request on the running loop's own sockets."""
        return self._parsed(_result, *await self._arequest("POST", "/api/publish", _publish_body(room, event, data)))

    def broadcast(
        self, rooms: Iterable[RoomName], event: str, data: JSONValue | _Absent = _ABSENT
    ) -> list[PublishResult]:
        """Publish one event to several rooms in one request; one result per distinct room, in order."""
        return self._parsed(
            _results, *self._request("broadcast", "POST", "/api/broadcast", _broadcast_body(rooms, event, data))
        )

    async def abroadcast(
        self, rooms: Iterable[RoomName], event: str, data: JSONValue | _Absent = _ABSENT
    ) -> list[PublishResult]:
        """``broadcast`` for coroutines."""
        body = _broadcast_body(rooms, event, data)
        return self._parsed(_results, *await self._arequest("POST", "/api/broadcast", body))

    # -- tasks --------------------------------------------------------------------------
    # Each returns the task as the server's JSON (a ``dict`` with ``id``, ``status``,
    # ``progress`` ... see ``Task.to_json``). A refusal raises ``PublishError``: 404
    # ``not_found`` for an unknown id, 409 ``conflict`` for a change the task's status does
    # not allow (reporting on an ended task, completing it twice), 400 ``bad_request`` for a
    # bad value (progress outside 0-100). An empty ``task_id`` raises ``ValueError``.
    def create_task(
        self,
        kind: str,
        *,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        poll: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> dict[str, Any]:
        """Create a ``pending`` task of ``kind``; the answer's ``id`` names it from now on.

        ``deadline`` is a UNIX time after which the server times the task out; ``owner`` and
        ``metadata`` are the application's own. The task starts with the first ``report``.

        With ``poll`` (a ``roomcast.tasks.poller.PollSpec`` as JSON: ``{"url", "interval",
        "fields": {"progress", "status", ...}, ...}``) the server itself follows the upstream
        job at that URL and the task is returned ``running``; a bad spec raises
        ``PublishError`` 400 and no task is created.

        ``id`` chooses the task's id (a Celery task's own id, so that a page can subscribe to
        ``task:{id}`` before this call lands): printable ASCII without spaces or ``/``. An id
        already taken raises ``PublishError`` 409 ``conflict`` and changes nothing.
        """
        body = _create_body(kind, title, owner, deadline, metadata, poll, id)
        return self._parsed(_task, *self._request("create_task", "POST", "/api/tasks", body))

    async def acreate_task(
        self,
        kind: str,
        *,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        poll: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> dict[str, Any]:
        """``create_task`` for coroutines."""
        body = _create_body(kind, title, owner, deadline, metadata, poll, id)
        return self._parsed(_task, *await self._arequest("POST", "/api/tasks", body))

    def report(
        self, task_id: str, *, progress: float | None = None, step: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        """Report progress (percent, 0-100), the current step and/or a message; returns the task.

        The first report starts a ``pending`` task. A field left ``None`` keeps its value.

        This is how an out-of-process worker learns that someone asked it to stop: the
        returned task's ``status`` is then ``"stopping"``. The worker should wind down and
        stop reporting (or end the task with ``complete_task`` / ``fail_task``); the server
        marks a stopping task ``cancelled`` once its stop grace (``Settings.task_stop_grace``)
        has passed. Reports are still accepted while stopping; after the task has ended they
        raise ``PublishError`` 409.
        """
        body = _report_body(progress, step, message)
        return self._parsed(_task, *self._request("report", "POST", _task_path(task_id, "progress"), body))

    async def areport(
        self, task_id: str, *, progress: float | None = None, step: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        """``report`` for coroutines; ``status == "stopping"`` in the answer is a stop request."""
        body = _report_body(progress, step, message)
        return self._parsed(_task, *await self._arequest("POST", _task_path(task_id, "progress"), body))

    def complete_task(self, task_id: str, result: JSONValue = None) -> dict[str, Any]:
        """End the task successfully with the JSON ``result``; its progress becomes 100."""
        path = _task_path(task_id, "complete")
        return self._parsed(_task, *self._request("complete_task", "POST", path, _json.dumps({"result": result})))

    async def acomplete_task(self, task_id: str, result: JSONValue = None) -> dict[str, Any]:
        """``complete_task`` for coroutines."""
        path = _task_path(task_id, "complete")
        return self._parsed(_task, *await self._arequest("POST", path, _json.dumps({"result": result})))

    def fail_task(self, task_id: str, error: str) -> dict[str, Any]:
        """End the task as ``failed`` with the non-empty ``error`` text."""
        path = _task_path(task_id, "fail")
        return self._parsed(_task, *self._request("fail_task", "POST", path, _json.dumps({"error": error})))

    async def afail_task(self, task_id: str, error: str) -> dict[str, Any]:
        """``fail_task`` for coroutines."""
        path = _task_path(task_id, "fail")
        return self._parsed(_task, *await self._arequest("POST", path, _json.dumps({"error": error})))

    def cancel_task(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """End the task as ``cancelled`` now: a worker acknowledging a stop, or giving up.

        ``reason``, if given, becomes its message. Unlike ``stop_task`` this does not ask a
        worker: it is the worker's own word that the work has ended.
        """
        body = _json.dumps({"reason": reason} if reason is not None else {})
        return self._parsed(_task, *self._request("cancel_task", "POST", _task_path(task_id, "cancel"), body))

    async def acancel_task(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """``cancel_task`` for coroutines."""
        body = _json.dumps({"reason": reason} if reason is not None else {})
        return self._parsed(_task, *await self._arequest("POST", _task_path(task_id, "cancel"), body))

    def stop_task(self, task_id: str, by: str | None = None) -> dict[str, Any]:
        """Ask the task to stop; ``by`` (who asked) goes into its message.

        A running task becomes ``stopping`` (its worker sees that in its next ``report``
        answer) and ``cancelled`` when the grace passes; a pending one is cancelled at once;
        one already stopping is left as it is. An ended task raises ``PublishError`` 409.
        """
        body = _json.dumps({"by": by} if by is not None else {})
        return self._parsed(_task, *self._request("stop_task", "POST", _task_path(task_id, "stop"), body))

    async def astop_task(self, task_id: str, by: str | None = None) -> dict[str, Any]:
        """``stop_task`` for coroutines."""
        body = _json.dumps({"by": by} if by is not None else {})
        return self._parsed(_task, *await self._arequest("POST", _task_path(task_id, "stop"), body))

    def get_task(self, task_id: str) -> dict[str, Any]:
        """The task as it is now."""
        return self._parsed(_task, *self._request("get_task", "GET", _task_path(task_id)))

    async def aget_task(self, task_id: str) -> dict[str, Any]:
        """``get_task`` for coroutines."""
        return self._parsed(_task, *await self._arequest("GET", _task_path(task_id)))

    def list_tasks(
        self,
        *,
        status: str | Iterable[str] | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of tasks, newest first: ``{"tasks": [...], "next_cursor": str | None}``.

        ``status`` is one status or several (any of them matches); pass ``next_cursor`` back
        as ``cursor`` for the next page (``None``: this was the last).
        """
        path = _list_query(status, kind, owner, limit, cursor)
        return self._parsed(_task_list, *self._request("list_tasks", "GET", path))

    async def alist_tasks(
        self,
        *,
        status: str | Iterable[str] | None = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """``list_tasks`` for coroutines."""
        path = _list_query(status, kind, owner, limit, cursor)
        return self._parsed(_task_list, *await self._arequest("GET", path))

    # -- one request --------------------------------------------------------------------
    def _parsed(self, parse: Callable[[Any], _T], status: int, body: Any) -> _T:
        try:
            return parse(body)
        except _BadAnswer as exc:
            raise PublishError(
                status, "bad_response", f"roomcast at {self.url} gave an unexpected answer: {exc}"
            ) from None

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "roomcast-publisher"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _unreachable(self, exc: BaseException) -> PublishError:
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {self.timeout:g} s"
        else:
            reason = str(exc) or type(exc).__name__
        return PublishError(0, "unreachable", f"cannot reach roomcast at {self.url}: {reason}")

    def _not_http(self, exc: RemoteProtocolError) -> PublishError:
        if isinstance(exc, PayloadTooBig):
            return PublishError(0, "bad_response", f"the answer from {self.url} is too large")
        return PublishError(0, "bad_response", f"roomcast at {self.url} did not answer HTTP: {exc.reason}")

    def _request(self, name: str, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """One request on this thread's pooled connection; ``timeout`` bounds each network wait.

        ``name`` is the public method, for the error that names its coroutine twin.
        """
        httpclient.ensure_no_running_loop(f"Publisher.{name}()", f"publisher.a{name}(...)")
        try:
            answer = httpclient.request(
                self._origin,
                method,
                self._prefix + path,
                headers=self._headers(body),
                body=body or b"",
                timeout=self.timeout,
                max_body=MAX_ANSWER,
            )
        except OSError as exc:  # refused, reset, timed out, DNS, TLS: no answer came
            raise self._unreachable(exc) from exc
        except RemoteProtocolError as exc:  # not HTTP, over a limit, or cut short
            raise self._not_http(exc) from exc
        return answer.status, _answer(self.url, answer.status, answer.body)

    async def _arequest(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        """The same request on the running loop's pool, within one ``timeout`` for the whole exchange."""
        try:
            async with asyncio.timeout(self.timeout):
                answer = await httpclient.arequest(
                    self._origin,
                    method,
                    self._prefix + path,
                    headers=self._headers(body),
                    body=body or b"",
                    max_body=MAX_ANSWER,
                )
        except OSError as exc:  # TimeoutError is one, from asyncio.timeout or the socket
            raise self._unreachable(exc) from exc
        except RemoteProtocolError as exc:
            raise self._not_http(exc) from exc
        return answer.status, _answer(self.url, answer.status, answer.body)


class RedisPublisher:
    """Publish into the Redis that ``roomcast serve --redis URL`` nodes share: for workers
    (Celery, RQ, cron) that should need no web server.

    The same ``publish`` / ``broadcast`` calls and answers as ``Publisher``, sync and async.
    It runs the nodes' own publish script (``broker.redis``), so a worker's publication is
    stored, numbered and delivered exactly as a node's, after the same gate (reserved names,
    JSON depth: ``hub.publication``). Its task calls apply the nodes' task rules in this
    process (``tasks.redis_writer``): no node is needed to drive a task either.

    Args:
        url: the nodes' ``--redis`` URL. It is never shown in a ``repr``: it may hold a password.
        history_size, history_ttl: the nodes' ``--history-size`` and ``--history-ttl``.
        task_events: the nodes' ``--task-event`` aliases (``parse_event_aliases``), for the
            task calls; the default names otherwise.
        task_list_rooms: the nodes' ``--task-list-rooms`` (``"kind"``, ``"owner"``).

    Safe to share between threads; the async methods keep one connection pool per loop.

    The task calls (``create_task``, ``report``, ``complete_task``, ``fail_task``,
    ``cancel_task``, ``get_task``: blocking only) answer and refuse as ``Publisher``'s do
    (404 ``not_found``, 409 ``conflict``, 400 ``bad_request``), by the same rules
    (``tasks.redis_writer``): a worker needs no node to drive a task.
    """

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        task_events: Mapping[str, Any] | None = None,
        task_list_rooms: Iterable[str] = (),
    ) -> None:
        from roomcast.broker.redis import PUBLISH_SCRIPT
        from roomcast.broker.redis_client import connect_sync

        self._url = url
        self._history_size = history_size
        self._ttl = max(1, round(history_ttl))
        self._script_text = PUBLISH_SCRIPT
        self._sync = connect_sync(url)
        self._sync_script = self._sync.register_script(PUBLISH_SCRIPT)
        self._async: dict[asyncio.AbstractEventLoop, Any] = {}
        self._task_events = dict(task_events or {})
        self._task_list_rooms = tuple(task_list_rooms)
        self._writer: Any = None  # made at the first task call: a publisher of events loads no task code

    def __repr__(self) -> str:
        return "<RedisPublisher>"

    def publish(self, room: RoomName, event: str, data: JSONValue | _Absent = _ABSENT) -> PublishResult:
        """Publish ``event`` to ``room``; answers where it landed.

        Raises:
            PublishError: refused (a reserved name, data too deep), or Redis unreachable.
            BlockingCallInLoop: called from a running event loop's thread (use ``apublish``).
        """
        httpclient.ensure_no_running_loop("RedisPublisher.publish()", "redis_publisher.apublish(...)")
        return self.publish_args(room, event, () if data is _ABSENT else (data,))

    def publish_args(
        self, room: RoomName, event: str, args: tuple[JSONValue, ...], *, skip: Iterable[str] | None = None
    ) -> PublishResult:
        """``publish`` with any number of arguments (a python-socketio emit of a tuple), and
        ``skip``: connection ids the publication is not for (``Publication.skip``).

        Raises:
            PublishError: as ``publish``.
            BlockingCallInLoop: called from a running event loop's thread (use ``apublish_args``).
        """
        httpclient.ensure_no_running_loop("RedisPublisher.publish_args()", "redis_publisher.apublish_args(...)")
        from redis.exceptions import RedisError

        from roomcast.broker import redis_client

        keys, call_args = self._call(room, event, args, skip)
        try:
            epoch, offset = self._sync_script(keys=keys, args=call_args)
        except (RedisError, OSError) as exc:
            raise PublishError(0, "unreachable", redis_client.describe(exc)) from None
        return _redis_answer(room, epoch, offset)

    async def apublish(self, room: RoomName, event: str, data: JSONValue | _Absent = _ABSENT) -> PublishResult:
        """``publish`` for coroutines."""
        return await self.apublish_args(room, event, () if data is _ABSENT else (data,))

    async def apublish_args(
        self, room: RoomName, event: str, args: tuple[JSONValue, ...], *, skip: Iterable[str] | None = None
    ) -> PublishResult:
        """``publish_args`` for coroutines."""
        from redis.exceptions import RedisError

        from roomcast.broker import redis_client

        keys, call_args = self._call(room, event, args, skip)
        try:
            epoch, offset = await self._pipeline().call(keys, call_args)
        except (RedisError, OSError) as exc:
            raise PublishError(0, "unreachable", redis_client.describe(exc)) from None
        return _redis_answer(room, epoch, offset)

    def broadcast(
        self, rooms: Iterable[RoomName], event: str, data: JSONValue | _Absent = _ABSENT
    ) -> list[PublishResult]:
        """The same event to several rooms; one answer per room, in order."""
        httpclient.ensure_no_running_loop("RedisPublisher.broadcast()", "redis_publisher.abroadcast(...)")
        return [self.publish(room, event, data) for room in dict.fromkeys(rooms)]

    async def abroadcast(
        self, rooms: Iterable[RoomName], event: str, data: JSONValue | _Absent = _ABSENT
    ) -> list[PublishResult]:
        """``broadcast`` for coroutines."""
        return [await self.apublish(room, event, data) for room in dict.fromkeys(rooms)]

    # -- tasks ----------------------------------------------------------------------------
    def create_task(
        self,
        kind: str,
        *,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> dict[str, Any]:
        """``Publisher.create_task``, written into Redis (no ``poll``: that needs a node)."""
        from roomcast.tasks.model import Task, check_task_fields, check_task_id
        from roomcast.tasks.service import new_task_id

        def create(writer: Any) -> Any:
            check_task_fields(kind, title=title, owner=owner, deadline=deadline, metadata=metadata)
            task = Task.new(
                new_task_id() if id is None else check_task_id(id),
                kind,
                now=time.time(),
                title=title,
                owner=owner,
                deadline=deadline,
                metadata=metadata,
            )
            return writer.create(task)

        return self._task_call(create)

    def report(
        self, task_id: str, *, progress: float | None = None, step: str | None = None, message: str | None = None
    ) -> dict[str, Any]:
        """``Publisher.report``: the first report starts a ``pending`` task; the answer's
        ``status`` is ``"stopping"`` once a stop was asked for."""
        from roomcast.tasks.model import TaskStatus

        def report(writer: Any) -> Any:
            task = writer.get(_checked_id(task_id))
            if task.status is TaskStatus.PENDING:
                task.start(time.time()).progress_to(time.time(), progress, step, message)  # refuse before starting
                task = writer.change(task_id, lambda t, now: t.start(now) if t.status is TaskStatus.PENDING else t)
            if progress is None and step is None and message is None:
                task.progress_to(time.time())  # refused (409) once it has ended, as a node refuses it
                return task
            return writer.change(task_id, lambda t, now: t.progress_to(now, progress, step, message))

        return self._task_call(report)

    def complete_task(self, task_id: str, result: JSONValue = None) -> dict[str, Any]:
        """``Publisher.complete_task``: a ``pending`` task is started first."""
        from roomcast.tasks.model import TaskStatus

        def complete(writer: Any) -> Any:
            writer.change(_checked_id(task_id), lambda t, now: t.start(now) if t.status is TaskStatus.PENDING else t)
            return writer.change(task_id, lambda t, now: t.complete(now, result))

        return self._task_call(complete)

    def fail_task(self, task_id: str, error: str) -> dict[str, Any]:
        """``Publisher.fail_task``."""
        if not isinstance(error, str) or not error:
            raise PublishError(400, "bad_request", "'error' must be a non-empty string")
        return self._task_call(lambda w: w.change(_checked_id(task_id), lambda t, now: t.fail(now, error)))

    def cancel_task(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        """``Publisher.cancel_task``."""
        return self._task_call(lambda w: w.change(_checked_id(task_id), lambda t, now: t.cancel(now, reason)))

    def get_task(self, task_id: str) -> dict[str, Any]:
        """``Publisher.get_task``."""
        return self._task_call(lambda w: w.get(_checked_id(task_id)))

    def _task_call(self, call: Callable[[Any], Any]) -> dict[str, Any]:
        """Run ``call(writer)``; the task's errors become the API's answers (``PublishError``)."""
        from redis.exceptions import RedisError

        from roomcast.broker import redis_client
        from roomcast.errors import InvalidTransition, TaskError, TaskExists, TaskNotFound

        if self._writer is None:
            from roomcast.tasks.redis_writer import RedisTaskWriter

            self._writer = RedisTaskWriter(
                self._sync,
                self.publish,
                history_ttl=self._ttl,
                events=self._task_events,
                list_rooms=self._task_list_rooms,
            )
        try:
            task = call(self._writer)
        except (RedisError, OSError) as exc:
            raise PublishError(0, "unreachable", redis_client.describe(exc)) from None
        except TaskNotFound as exc:
            raise PublishError(404, "not_found", str(exc)) from None
        except (InvalidTransition, TaskExists) as exc:
            raise PublishError(409, "conflict", str(exc)) from None
        except TaskError as exc:
            raise PublishError(400, "bad_request", str(exc)) from None
        result: dict[str, Any] = task.to_json()
        return result

    def _call(
        self, room: RoomName, event: str, args: tuple[JSONValue, ...], skip: Iterable[str] | None
    ) -> tuple[list[str], list[Any]]:
        if not isinstance(room, str) or not 0 < len(room) <= MAX_NAME_LENGTH:
            raise PublishError(400, "bad_request", f"room names are 1 to {MAX_NAME_LENGTH} characters")
        from roomcast.broker.redis import publish_call
        from roomcast.hub.publication import prepare

        try:
            encoded, binary = prepare(event, args)
        except InvalidPublication as exc:
            raise PublishError(400, "bad_request", str(exc)) from None
        skipped = frozenset(skip) if skip else None
        return publish_call(room, event, time.time(), args, encoded, binary, self._history_size, self._ttl, skipped)

    def _pipeline(self) -> Any:
        """This loop's ``AutoPipeline``: the publications of a turn go in one write, and those
        of the next follow on the same connection without waiting for the answers."""
        loop = asyncio.get_running_loop()
        pipeline = self._async.get(loop)
        if pipeline is None:
            from roomcast.broker.redis_client import connect
            from roomcast.broker.redis_pipeline import AutoPipeline

            client = connect(self._url)
            pipeline = self._async[loop] = AutoPipeline(client, client.register_script(self._script_text))
        return pipeline


def _checked_id(task_id: str) -> str:
    if not isinstance(task_id, str) or not task_id:
        raise ValueError("task_id must be a non-empty string")
    return task_id


def _redis_answer(room: RoomName, epoch: Any, offset: Any) -> PublishResult:
    return PublishResult(room, epoch.decode() if isinstance(epoch, bytes) else str(epoch), int(offset))
