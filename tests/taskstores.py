"""The task stores every store-parametrized suite runs over, built by name, and task values.

``sqlite-memory`` and ``sqlite-file`` are ``SqliteTaskStore`` (WAL mode and the schema
migration only happen for a file); ``redis`` is ``RedisTaskStore`` on the session's real
redis-server (``redis_url`` in tests/conftest.py), emptied first. ``make`` builds a task in any
status by legal steps, so a store test never stores a value the model could not produce.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redisserver import fresh_url

from roomcast.tasks.model import Task, TaskStatus
from roomcast.tasks.store import TaskStore
from roomcast.tasks.store_redis import RedisTaskStore
from roomcast.tasks.store_sqlite import SqliteTaskStore

__all__ = ["STORES", "opened_store", "make"]

STORES = ["sqlite-memory", "sqlite-file", "redis"]

S = TaskStatus


@asynccontextmanager
async def opened_store(kind: str, tmp_path: Path, redis_url: str) -> AsyncIterator[TaskStore]:
    """An opened, empty store of ``kind``, closed at the end."""
    store: SqliteTaskStore | RedisTaskStore
    if kind == "redis":
        store = RedisTaskStore(fresh_url(redis_url))
    else:
        store = SqliteTaskStore(":memory:" if kind == "sqlite-memory" else tmp_path / "tasks.db")
    await store.open()
    try:
        yield store
    finally:
        await store.aclose()


def make(
    task_id: str,
    status: TaskStatus = S.PENDING,
    *,
    created: float = 1.0,
    kind: str = "crawl",
    owner: str | None = "u1",
    finished: float | None = None,
    deadline: float | None = None,
) -> Task:
    """A task in ``status`` reached by legal steps; terminal ones finish at ``finished``."""
    task = Task.new(
        task_id, kind, now=created, owner=owner, title=f"Task {task_id}", metadata={"n": 1}, deadline=deadline
    )
    if status is S.PENDING:
        return task
    end = created + 1 if finished is None else finished
    task = task.start(created + 0.5)
    if status is S.RUNNING:
        return task.progress_to(created + 0.6, 42.5, "fetch", "page 4")
    if status is S.STOPPING:
        return task.request_stop(created + 0.7)
    if status is S.COMPLETED:
        return task.complete(end, {"pages": [1, 2], "ok": True})
    if status is S.FAILED:
        return task.fail(end, "boom")
    if status is S.CANCELLED:
        return task.cancel(end, "by alice")
    return task.time_out(end)
