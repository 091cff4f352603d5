"""The task store contract: where tasks survive restarts and where lists are read from.

Imports only L0 and ``tasks.model``. The service talks to storage only through ``TaskStore``,
so a store can be written from this docstring alone and the service never learns SQL or Lua.

Invariants every implementation keeps:

* **Terminal is final, in storage too.** ``put`` and ``swap`` never replace a stored terminal
  task. Why here as well as in the model: the model guards one value, but two writers (two
  nodes, the server and an out-of-process ``Publisher``, or a late coalesced progress write
  racing ``complete``) each hold their own value; only the store sees both.
* **Every stored task has a version**, 1 when created and one more at every write. ``swap``
  writes only over the version its caller read (compare-and-set) and otherwise hands back
  what is stored, so a writer that read an older version re-applies its change to the newer
  one instead of overwriting it: no lost update, whichever process writes.
* **Newest first, keyset pages.** ``list`` orders by ``(created_at, id)`` descending and its
  cursor is a position in that order, not an offset: tasks created while a client pages do
  not shift later pages, so it sees no duplicates and no gaps.
* **Retention never drops live work.** ``delete_older_than`` and ``keep_newest`` remove only
  terminal tasks.
* **Writes apply in call order.** Two writes of the same task, awaited or merely started in
  order from one event loop, land in that order.

Who else writes decides how a dead producer is found (``TaskStore.leases``):

* A store that one process opens alone (``SqliteTaskStore`` locks its file) has ``leases``
  ``None``: at startup every unfinished task it holds was left by a process that is gone,
  and ``mark_interrupted`` fails them all.
* A store many live processes share (``RedisTaskStore``) must never do that: the other
  processes' tasks are running. It has ``Leases`` instead: a task whose producer runs inside
  a process (a *node*) is stored with that node's id, the node renews a lease while it
  lives, and a task whose node's lease has lapsed is an orphan that any surviving node fails.
"""

from __future__ import annotations

import base64
import binascii
import builtins
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from roomcast import _json
from roomcast.errors import TaskError
from roomcast.tasks.model import Task, TaskStatus

__all__ = [
    "TaskStore",
    "Leases",
    "Stored",
    "Swap",
    "StatusFilter",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "check_limit",
    "check_count",
    "status_values",
    "encode_cursor",
    "decode_cursor",
]

StatusFilter = TaskStatus | Collection[TaskStatus] | None
"""One status, any of several (``{PENDING, RUNNING, STOPPING}`` = "active"), or all."""

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
"""``list`` refuses larger pages: one API call must not read the whole table into memory."""


@dataclass(frozen=True, slots=True)
class Stored:
    """A task as storage holds it.

    Attributes:
        task: the value.
        version: 1 when created, one more at every write: what ``swap`` compares.
        node: the id of the node (process) running the task's producer, whose lease keeps
            it alive; ``None`` when no process holds it (a worker reporting over HTTP).
    """

    task: Task
    version: int
    node: str | None = None


@dataclass(frozen=True, slots=True)
class Swap:
    """What ``swap`` did.

    Attributes:
        ok: the task was written.
        stored: what storage holds now: the new version when ``ok``; else the version that
            refused the write (``None`` if there is no task with this id), so the caller can
            re-apply its change without reading again.
    """

    ok: bool
    stored: Stored | None


class Leases(Protocol):
    """How a shared store tells a task whose node died from one whose node is busy.

    A lease is a key per node that expires ``ttl`` seconds after its last renewal, so only
    the node's own silence ends it: a node that crashes, is SIGKILLed or is cut off from the
    store stops renewing, and its tasks become orphans. A node that restarts comes back with
    a new id and a new lease; it never inherits nor ends another node's lease.
    """

    async def hold(self, node: str, ttl: float) -> None:
        """Create or renew ``node``'s lease for ``ttl`` seconds from now."""

    async def release(self, node: str) -> None:
        """End ``node``'s lease now: a node that shuts down hands its unfinished tasks over."""

    async def orphans(self) -> builtins.list[Stored]:
        """Unfinished tasks held by nodes whose lease has lapsed, for a live node to fail."""

    async def overdue(self, now: float, limit: int) -> builtins.list[Stored]:
        """Up to ``limit`` unfinished tasks past their deadline that no live node holds.

        A live node times its own tasks out on its own timer; these are the ones nobody
        else will (a worker's task whose creating node has gone).
        """


class TaskStore(Protocol):
    """Durable storage of ``Task`` values, keyed by ``Task.id``."""

    @property
    def leases(self) -> Leases | None:
        """``None`` when this process is the only writer (see the module); else the leases."""

    async def put(self, task: Task) -> bool:
        """Insert or replace the task with this id, whatever version is stored.

        The node stays what it was (``None`` for a new task).

        Returns:
            ``True`` if stored; ``False`` if the stored task is terminal and was kept (the
            caller should ``get`` it and treat that as the truth).
        """

    async def swap(self, task: Task, *, version: int, node: str | None) -> Swap:
        """Write ``task`` held by ``node`` if storage holds ``version`` of it (compare-and-set).

        ``version`` 0 creates: it succeeds only if no task has this id. Refused when the
        stored version differs, and always when the stored task is terminal.
        """

    async def get(self, task_id: str) -> Task | None:
        """The stored task, or ``None`` if there is none with this id."""

    async def read(self, task_id: str) -> Stored | None:
        """The stored task with its version and node, or ``None``."""

    async def list(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> tuple[list[Task], str | None]:
        """One page of tasks matching every given filter, newest first.

        Args:
            limit: 1 to ``MAX_PAGE_SIZE``.
            cursor: ``None`` for the first page, else the ``next_cursor`` of the previous
                page, with the same filters. Opaque: clients must not build or parse it.

        Returns:
            ``(tasks, next_cursor)``; ``next_cursor`` is ``None`` on the last page (a page is
            never empty unless nothing matches).

        Raises:
            TaskError: a bad ``limit`` or ``cursor``.
        """

    async def delete_older_than(self, ts: float) -> int:
        """Remove terminal tasks that finished before ``ts``; returns how many."""

    async def keep_newest(self, count: int) -> int:
        """Remove all but the ``count`` newest terminal tasks (by creation); returns how many.

        Non-terminal tasks are neither removed nor counted.
        """

    async def mark_interrupted(self, reason: str, now: float) -> builtins.list[Task]:
        """Fail every non-terminal task with ``error=reason``, atomically; returns them.

        Only for a store with ``leases`` ``None``. Call once at startup, before any producer
        runs: whatever was pending or running belonged to a process that is gone, and its
        subscribers are owed a terminal event. The caller publishes the returned tasks. So a
        store must not open while another live process writes to the same storage
        (``SqliteTaskStore`` locks its file): this would fail that process's running tasks
        behind its back. A shared store refuses it with ``TaskError``.
        """

    async def aclose(self) -> None:
        """Release the storage. Idempotent; later calls other than ``aclose`` fail."""


# -- what every store checks and encodes the same way ------------------------------------------


def check_limit(limit: object) -> int:
    """``limit`` if it is a page size ``list`` accepts; else ``TaskError``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE_SIZE:
        raise TaskError(f"limit must be an integer from 1 to {MAX_PAGE_SIZE}, got {limit!r}")
    return limit


def check_count(count: object) -> int:
    """``count`` if ``keep_newest`` accepts it; else ``TaskError``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise TaskError(f"count must be a non-negative integer, got {count!r}")
    return count


def status_values(status: StatusFilter) -> builtins.list[str]:
    """The filter's statuses as their stored strings (``[]`` matches nothing)."""
    given = [status] if isinstance(status, (str, TaskStatus)) else builtins.list(status or ())
    try:
        return [TaskStatus(s).value for s in given]
    except ValueError:
        raise TaskError(f"unknown task status in {status!r}") from None


def encode_cursor(last: Task) -> str:
    """The cursor after ``last``: its place in the ``(created_at, id)`` order, base64url JSON."""
    raw = _json.dumps([last.created_at, last.id])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """``(created_at, id)`` from a cursor ``encode_cursor`` made; ``TaskError`` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, task_id = _json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise TaskError("invalid cursor") from None
    if isinstance(created_at, bool) or not isinstance(created_at, (int, float)):
        raise TaskError("invalid cursor")
    if not isinstance(task_id, str):
        raise TaskError("invalid cursor")
    return float(created_at), task_id
