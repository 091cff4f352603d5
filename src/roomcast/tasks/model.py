"""The task value, its status machine, and the event and room names it is published under.

Owns ``Task``, ``TaskStatus``, the ``TRANSITIONS`` table, ``TaskEvents`` and the room names.
Pure: no I/O, no clock (every method takes ``now``), no asyncio. Imports only L0 (``errors``,
``types``, ``_json``) so that the service, the stores and the out-of-process ``Publisher``
share these rules instead of re-stating them.

The table is the spec::

    pending ──► running ──► stopping ──► cancelled | completed | failed | timed_out
       │           └──────────────────► cancelled | completed | failed | timed_out
       └──────────────────────────────► cancelled | failed | timed_out

A ``Task`` is an immutable value: every change returns a new ``Task``, so a snapshot handed
to a subscriber, a store or another thread can never change under it. Terminal states map
to nothing, so every method that would leave one raises ``InvalidTransition``, including a
second ``complete``. The model refuses the repeat rather than absorbing it so that a bug
completing a task twice with two results is visible; the caller makes a repeated terminal
event an explicit no-op by checking ``task.is_terminal`` (or ``err.current == err.target``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any

from roomcast import _json
from roomcast.errors import InvalidProgress, InvalidTransition, TaskError
from roomcast.types import MAX_NAME_LENGTH, JSONValue, RoomName

__all__ = [
    "TaskStatus",
    "TERMINAL",
    "TRANSITIONS",
    "can_transition",
    "check_progress",
    "check_task_id",
    "MAX_TASK_ID",
    "Task",
    "TaskEvents",
    "DEFAULT_EVENTS",
    "event_for",
    "parse_event_aliases",
    "task_room",
    "LIST_ROOM",
    "kind_room",
    "owner_room",
    "summary_rooms",
]


class TaskStatus(str, Enum):
    """Where a task is in its life. A ``str`` enum so that it is its own JSON form."""

    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"

    def __str__(self) -> str:
        # Messages read "task t1 is completed", not "task t1 is TaskStatus.COMPLETED".
        return self.value


TERMINAL: frozenset[TaskStatus] = frozenset(
    {TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT}
)
"""Final states: a task in one of them never changes again and may be removed by retention."""

TRANSITIONS: Mapping[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED, TaskStatus.TIMED_OUT}),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.STOPPING,
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.TIMED_OUT,
            TaskStatus.CANCELLED,
        }
    ),
    # A producer asked to stop may still finish its work or fail before it acknowledges.
    TaskStatus.STOPPING: frozenset(
        {TaskStatus.CANCELLED, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.TIMED_OUT}
    ),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.TIMED_OUT: frozenset(),
}
"""Legal next statuses of each status. A status never "transitions" to itself."""

# Statuses in which a producer is doing work and may report progress.
_ACTIVE: frozenset[TaskStatus] = frozenset({TaskStatus.RUNNING, TaskStatus.STOPPING})


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    """Whether the table allows ``current`` → ``target``."""
    return target in TRANSITIONS[current]


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One tracked unit of background work, as every subscriber and store sees it.

    Build one with ``Task.new`` (or ``Task.from_json``), then change it only through the
    methods below; each returns a new ``Task`` and leaves this one untouched.

    Attributes:
        id: unique, chosen by the caller (the service); the task's room is ``task:{id}``.
        kind: what sort of work (``"crawl"``); selects event aliases and the kind room.
        title: human-readable, for dashboards.
        owner: who started it (a user id), for the owner room and permission checks.
        status: see ``TRANSITIONS``.
        progress: percent done, 0–100, or ``None`` when the producer cannot tell. Not
            required to grow: a producer may re-estimate.
        step: the current phase (``"fetching"``).
        message: the latest human-readable line; the reason, when cancelled with one.
        result: the JSON outcome of a completed task.
        error: why it failed or timed out.
        created_at, updated_at, started_at, finished_at: UNIX times in seconds.
        deadline: UNIX time after which the task should become ``timed_out``.
        metadata: JSON object of the application's own fields. Treat it as read-only: it is
            shared between the versions of a task, not copied on each change.
    """

    id: str
    kind: str
    title: str = ""
    owner: str | None = None
    status: TaskStatus = TaskStatus.PENDING
    progress: float | None = None
    step: str | None = None
    message: str | None = None
    # JSON containers are unhashable; leaving them out of the hash keeps Task hashable.
    result: JSONValue = field(default=None, hash=False)
    error: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    deadline: float | None = None
    metadata: dict[str, JSONValue] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Checked on every new version, not only on input: NaN or infinity would reach JSON
        # as ``null`` (orjson's choice) and a store or subscriber would read back another task.
        if not self.id:
            raise TaskError("a task id must be a non-empty string")
        check_progress(self.progress)
        for name in ("created_at", "updated_at", "started_at", "finished_at", "deadline"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise TaskError(f"task {self.id}: {name} must be a finite UNIX time")

    @classmethod
    def new(
        cls,
        id: str,
        kind: str,
        *,
        now: float,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
    ) -> Task:
        """A ``pending`` task created at ``now``.

        Raises:
            TaskError: ``metadata`` cannot be encoded as JSON (checked here, once, so the
                error points at the caller rather than surfacing later in a store thread).
        """
        meta = dict(metadata or {})
        _check_json(id, "metadata", meta)
        return cls(
            id=id,
            kind=kind,
            title=title,
            owner=owner,
            created_at=now,
            updated_at=now,
            deadline=deadline,
            metadata=meta,
        )

    # -- queries -----------------------------------------------------------------------------

    @property
    def is_terminal(self) -> bool:
        """Whether the task has ended; a terminal task never changes again."""
        return self.status in TERMINAL

    def is_overdue(self, now: float) -> bool:
        """Whether the task has a passed deadline and has not ended: time to ``time_out``."""
        return self.deadline is not None and now >= self.deadline and not self.is_terminal

    # -- changes -----------------------------------------------------------------------------

    def start(self, now: float) -> Task:
        """``pending`` → ``running``."""
        self._check(TaskStatus.RUNNING)
        return replace(self, status=TaskStatus.RUNNING, started_at=now, updated_at=now)

    def progress_to(
        self,
        now: float,
        progress: float | None = None,
        step: str | None = None,
        message: str | None = None,
    ) -> Task:
        """Report progress while ``running`` or ``stopping``; the status does not change.

        An argument left ``None`` keeps its current value, so a producer can send only what
        changed (a new step without a percentage).

        Raises:
            InvalidProgress: ``progress`` is not a finite number from 0 to 100.
            InvalidTransition: the task is pending (start it first) or has ended.
        """
        if self.status not in _ACTIVE:
            raise InvalidTransition(
                f"task {self.id} is {self.status}; it cannot report progress",
                task_id=self.id,
                current=self.status.value,
                target=None,
            )
        if progress is not None:
            check_progress(progress)
            progress = float(progress)
        return replace(
            self,
            progress=self.progress if progress is None else progress,
            step=self.step if step is None else step,
            message=self.message if message is None else message,
            updated_at=now,
        )

    def complete(self, now: float, result: JSONValue = None) -> Task:
        """End successfully with ``result``; progress becomes 100.

        Raises:
            TaskError: ``result`` cannot be encoded as JSON.
            InvalidTransition: the task is pending or has ended.
        """
        self._check(TaskStatus.COMPLETED)
        _check_json(self.id, "result", result)
        return self._end(now, TaskStatus.COMPLETED, result=result, progress=100.0)

    def fail(self, now: float, error: str) -> Task:
        """End with ``error`` (allowed from every non-terminal status)."""
        self._check(TaskStatus.FAILED)
        return self._end(now, TaskStatus.FAILED, error=error)

    def request_stop(self, now: float) -> Task:
        """``running`` → ``stopping``: the producer has been asked to stop but has not yet.

        A pending task has no producer to ask: ``cancel`` it directly.
        """
        self._check(TaskStatus.STOPPING)
        return replace(self, status=TaskStatus.STOPPING, updated_at=now)

    def cancel(self, now: float, reason: str | None = None) -> Task:
        """End as stopped on request; ``reason``, if given, becomes ``message``."""
        self._check(TaskStatus.CANCELLED)
        message = self.message if reason is None else reason
        return self._end(now, TaskStatus.CANCELLED, message=message)

    def time_out(self, now: float, reason: str = "deadline exceeded") -> Task:
        """End because the deadline passed; ``reason`` becomes ``error``."""
        self._check(TaskStatus.TIMED_OUT)
        return self._end(now, TaskStatus.TIMED_OUT, error=reason)

    def _check(self, target: TaskStatus) -> None:
        if not can_transition(self.status, target):
            raise InvalidTransition(
                f"task {self.id} is {self.status}; it cannot become {target}",
                task_id=self.id,
                current=self.status.value,
                target=target.value,
            )

    def _end(self, now: float, status: TaskStatus, **changes: Any) -> Task:
        return replace(self, status=status, updated_at=now, finished_at=now, **changes)

    # -- JSON --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, JSONValue]:
        """The task as a JSON object: what subscribers receive and what stores keep."""
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "owner": self.owner,
            "status": self.status.value,
            "progress": self.progress,
            "step": self.step,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "deadline": self.deadline,
            "metadata": dict(self.metadata),
        }

    def summary(self) -> dict[str, JSONValue]:
        """The list-room form: ``to_json`` without ``result`` and ``metadata``, which may be large."""
        data = self.to_json()
        del data["result"], data["metadata"]
        return data

    def snapshot(self) -> dict[str, JSONValue]:
        """What a new subscriber of ``task:{id}`` receives first (the same as ``to_json``)."""
        return self.to_json()

    @classmethod
    def from_json(cls, data: object) -> Task:
        """Parse what ``to_json`` produced, from a store or another process.

        ``id``, ``kind``, ``status`` and ``created_at`` are required; a missing optional
        field takes its default (``updated_at`` defaults to ``created_at``). Unknown keys are
        ignored, so an older server can read a task written by a newer ``Publisher``.

        Raises:
            TaskError: a field is missing or has the wrong type (``InvalidProgress`` for a
                progress out of range).
        """
        if not isinstance(data, Mapping):
            raise TaskError(f"a task must be a JSON object, not {type(data).__name__}")
        task_id = _req_str(data, "id", "?")
        if not task_id:
            raise TaskError("a task id must be a non-empty string")
        raw_status = data.get("status")
        try:
            status = TaskStatus(raw_status)
        except ValueError:
            raise TaskError(f"task {task_id}: unknown status {raw_status!r}") from None
        created_at = _req_number(data, "created_at", task_id)
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict) or not all(isinstance(k, str) for k in metadata):
            raise TaskError(f"task {task_id}: metadata must be a JSON object")
        updated_at = _opt_number(data, "updated_at", task_id)
        return cls(
            id=task_id,
            kind=_req_str(data, "kind", task_id),
            title=_opt_str(data, "title", task_id) or "",
            owner=_opt_str(data, "owner", task_id),
            status=status,
            progress=_opt_number(data, "progress", task_id),
            step=_opt_str(data, "step", task_id),
            message=_opt_str(data, "message", task_id),
            result=data.get("result"),
            error=_opt_str(data, "error", task_id),
            created_at=created_at,
            updated_at=created_at if updated_at is None else updated_at,
            started_at=_opt_number(data, "started_at", task_id),
            finished_at=_opt_number(data, "finished_at", task_id),
            deadline=_opt_number(data, "deadline", task_id),
            metadata=metadata,
        )


MAX_TASK_ID = MAX_NAME_LENGTH - len("task:")
"""The longest task id a caller may choose: its room ``task:{id}`` must still be a room name."""


def check_task_fields(kind: object, *, title: object, owner: object, deadline: object, metadata: object) -> str:
    """Refuse what a new task cannot be made of, the same way whoever asks: a node's API and
    ``RedisPublisher.create_task`` (which writes tasks into Redis with no node between).
    Returns ``kind``, known to be a name.

    Raises:
        TaskError: saying which field is wrong and why (a 400 on the API).
    """
    if owner is not None:
        _check_name(owner, "owner")
    if deadline is not None and (not isinstance(deadline, (int, float)) or isinstance(deadline, bool)):
        raise TaskError("'deadline' must be a UNIX time in seconds")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TaskError("'metadata' must be an object")
    if not isinstance(title, str):
        raise TaskError("'title' must be a string")
    return _check_name(kind, "kind")


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise TaskError(f"'{what}' must be a string of 1 to {MAX_NAME_LENGTH} characters")
    return value


def check_task_id(task_id: object) -> str:
    """A task id chosen by a caller (a Celery task's own id), or ``TaskError`` saying why not.

    Printable ASCII without spaces or ``/`` (it is a URL path segment, part of a room name and
    a shell argument), not starting with ``-`` (an option to ``roomcast tasks stop``), at
    most ``MAX_TASK_ID`` characters.
    """
    if (
        not isinstance(task_id, str)
        or not 0 < len(task_id) <= MAX_TASK_ID
        or not all("!" <= c <= "~" and c != "/" for c in task_id)
        or task_id.startswith("-")
    ):
        raise TaskError(
            f"a task id must be 1 to {MAX_TASK_ID} printable ASCII characters without spaces or '/', "
            "not starting with '-'"
        )
    return task_id


def check_progress(progress: float | None) -> None:
    """Raise ``InvalidProgress`` unless ``progress`` is ``None`` or a finite number from 0 to 100.

    Public so that a worker in another process refuses a bad value in its own call, by the
    same rule the server applies.
    """
    if progress is None:
        return
    # bool is an int: True would silently mean 1 %.
    if (
        isinstance(progress, bool)
        or not isinstance(progress, (int, float))
        or not math.isfinite(progress)
        or not 0 <= progress <= 100
    ):
        raise InvalidProgress(f"progress must be a finite number from 0 to 100, got {progress!r}")


def _check_json(task_id: str, what: str, value: JSONValue) -> None:
    try:
        _json.dumps(value)
    except TypeError as exc:
        raise TaskError(f"task {task_id}: {what} is not JSON-serialisable ({exc})") from None


def _req_str(data: Mapping[str, Any], key: str, task_id: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise TaskError(f"task {task_id}: {key} must be a string")
    return value


def _opt_str(data: Mapping[str, Any], key: str, task_id: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise TaskError(f"task {task_id}: {key} must be a string or null")
    return value


def _req_number(data: Mapping[str, Any], key: str, task_id: str) -> float:
    value = _opt_number(data, key, task_id)
    if value is None:
        raise TaskError(f"task {task_id}: {key} is required")
    return value


def _opt_number(data: Mapping[str, Any], key: str, task_id: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TaskError(f"task {task_id}: {key} must be a number or null")
    return float(value)


# -- event names ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskEvents:
    """The event names one kind of task is published under.

    Aliasing is a different instance, not a code path: an application whose clients already
    listen for ``crawl_progress`` registers
    ``TaskEvents(progress="crawl_progress", stopping="crawl:stopping", cancelled="crawl:stopped")``
    for kind ``crawl`` and keeps the defaults for everything else.
    """

    created: str = "task:created"
    progress: str = "task:progress"
    stopping: str = "task:stopping"
    cancelled: str = "task:cancelled"
    completed: str = "task:completed"
    failed: str = "task:failed"
    timed_out: str = "task:timed_out"
    updated: str = "task:updated"


DEFAULT_EVENTS = TaskEvents()

_EVENT_FIELDS = tuple(f.name for f in fields(TaskEvents))


def parse_event_aliases(specs: Iterable[str]) -> dict[str, TaskEvents]:
    """Event-name aliases from ``KIND.EVENT=NAME`` strings, as the CLI and settings give them.

    ``crawl.progress=crawl_progress`` makes kind ``crawl`` publish its progress as
    ``crawl_progress``; every name not given keeps its default. ``EVENT`` is a field of
    ``TaskEvents`` (``created``, ``progress``, ``stopping``, ``cancelled``, ``completed``,
    ``failed``, ``timed_out``, ``updated``).

    Raises:
        TaskError: a spec without ``.`` and ``=``, an unknown ``EVENT``, an empty name.
    """
    names: dict[str, dict[str, str]] = {}
    for spec in specs:
        target, sep, name = spec.partition("=")
        kind, dot, event = target.strip().rpartition(".")
        name = name.strip()
        if not (sep and dot and kind and name):
            raise TaskError(f"task event alias {spec!r} must look like KIND.EVENT=NAME (crawl.progress=crawl_progress)")
        if event not in _EVENT_FIELDS:
            raise TaskError(f"task event alias {spec!r}: EVENT must be one of {', '.join(_EVENT_FIELDS)}")
        names.setdefault(kind, {})[event] = name
    return {kind: TaskEvents(**given) for kind, given in names.items()}


def event_for(
    old_status: TaskStatus | None,
    new_status: TaskStatus,
    events: TaskEvents = DEFAULT_EVENTS,
) -> str:
    """The event name announcing a change from ``old_status`` to ``new_status``.

    ``old_status`` is ``None`` for a task just created. The same status on both sides is a
    progress report while the task works (``running``/``stopping``) and ``updated`` otherwise;
    a change to ``stopping`` or to a terminal status has its own event; any other change
    (``pending`` → ``running``) is ``updated``. This only names; it does not check
    ``TRANSITIONS`` (the ``Task`` methods did).
    """
    if old_status is None:
        return events.created
    if old_status == new_status:
        working = new_status in (TaskStatus.RUNNING, TaskStatus.STOPPING)
        return events.progress if working else events.updated
    by_status = {
        TaskStatus.STOPPING: events.stopping,
        TaskStatus.CANCELLED: events.cancelled,
        TaskStatus.COMPLETED: events.completed,
        TaskStatus.FAILED: events.failed,
        TaskStatus.TIMED_OUT: events.timed_out,
    }
    return by_status.get(new_status, events.updated)


# -- room names ----------------------------------------------------------------------------

LIST_ROOM: RoomName = "tasks"
"""Receives a summary of every task change, for dashboards and task lists."""


def task_room(task_id: str) -> RoomName:
    """The room of one task: its snapshot first, then every change."""
    return f"task:{task_id}"


def kind_room(kind: str) -> RoomName:
    """The list room narrowed to one kind of task."""
    return f"tasks:kind:{kind}"


def owner_room(owner: str) -> RoomName:
    """The list room narrowed to one owner's tasks."""
    return f"tasks:owner:{owner}"


def summary_rooms(task: Task, list_rooms: Collection[str]) -> list[RoomName]:
    """The rooms that get ``task``'s summary: ``LIST_ROOM``, and its kind's and owner's rooms
    when ``list_rooms`` names ``"kind"`` / ``"owner"`` (``--task-list-rooms``)."""
    rooms = [LIST_ROOM]
    if "kind" in list_rooms:
        rooms.append(kind_room(task.kind))
    if "owner" in list_rooms and task.owner is not None:
        rooms.append(owner_room(task.owner))
    return rooms
