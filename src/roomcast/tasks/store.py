"""The task store contract: where tasks survive restarts and where lists are read from.

Imports only L0 and ``tasks.model``. The service talks to storage only through ``TaskStore``,
so a Redis store can be written from this docstring alone and the service never learns SQL.

Invariants every implementation keeps:

* **Terminal is final, in storage too.** ``put`` never replaces a stored terminal task (it
  returns ``False`` instead). Why here as well as in the model: the model guards one value,
  but two writers (the server and an out-of-process ``Publisher``, or a late coalesced
  progress write racing ``complete``) each hold their own value; only the store sees both.
* **Newest first, keyset pages.** ``list`` orders by ``(created_at, id)`` descending and its
  cursor is a position in that order, not an offset: tasks created while a client pages do
  not shift later pages, so it sees no duplicates and no gaps.
* **Retention never drops live work.** ``delete_older_than`` and ``keep_newest`` remove only
  terminal tasks.
* **Writes apply in call order.** Two ``put`` calls of the same task, awaited or merely
  started in order from one event loop, land in that order.
"""

from __future__ import annotations

import builtins
from collections.abc import Collection
from typing import Protocol

from roomcast.tasks.model import Task, TaskStatus

__all__ = ["TaskStore", "StatusFilter", "DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE"]

StatusFilter = TaskStatus | Collection[TaskStatus] | None
"""One status, any of several (``{PENDING, RUNNING, STOPPING}`` = "active"), or all."""

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
"""``list`` refuses larger pages: one API call must not read the whole table into memory."""


class TaskStore(Protocol):
    """Durable storage of ``Task`` values, keyed by ``Task.id``."""

    async def put(self, task: Task) -> bool:
        """Insert or replace the task with this id.

        Returns:
            ``True`` if stored; ``False`` if the stored task is terminal and was kept (the
            caller should ``get`` it and treat that as the truth).
        """

    async def get(self, task_id: str) -> Task | None:
        """The stored task, or ``None`` if there is none with this id."""

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

        Call once at startup, before any producer runs: whatever was pending or running
        belonged to a process that is gone, and its subscribers are owed a terminal event.
        The caller publishes the returned tasks. So a store must not open while another
        live process writes to the same storage (``SqliteTaskStore`` locks its file): this
        would fail that process's running tasks behind its back.
        """

    async def aclose(self) -> None:
        """Release the storage. Idempotent; later calls other than ``aclose`` fail."""
