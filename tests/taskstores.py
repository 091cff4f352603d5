"""The task stores every store-parametrized suite runs over, built by name, and task values.

``sqlite-memory`` and ``sqlite-file`` are ``SqliteTaskStore`` (WAL mode and the schema
migration only happen for a file); ``redis`` is ``RedisTaskStore`` on the session's real
redis-server (``redis_url`` in tests/conftest.py), emptied first. ``make`` builds a task in any
status by legal steps, so a store test never stores a value the model could not produce.

``opened_node`` is what a task service runs beside, per broker (``broker_kind``): a started
``Hub`` and an opened store, paired as ``roomcast serve`` pairs them (``server/app.py``).
Without Redis (``memory``; ``async``, a broker over a network played in one process) the
tasks are in a SQLite file this process has alone; with ``--redis`` the hub is a
``RedisBroker`` and a ``RedisCluster`` under one node id, and the tasks are a
``RedisTaskStore``, all on one (emptied) Redis database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from brokers import make_hub
from redisserver import fresh_url

from roomcast.broker.redis import RedisBroker
from roomcast.cluster.redis import RedisCluster
from roomcast.hub import Hub
from roomcast.tasks.model import Task, TaskStatus
from roomcast.tasks.store import TaskStore
from roomcast.tasks.store_redis import RedisTaskStore
from roomcast.tasks.store_sqlite import SqliteTaskStore

__all__ = ["STORES", "STORE_OF_BROKER", "opened_store", "opened_node", "make"]

STORES = ["sqlite-memory", "sqlite-file", "redis"]

STORE_OF_BROKER = {"memory": "sqlite-file", "async": "sqlite-file", "redis": "redis"}
"""The store a server keeps its tasks in beside each broker (``brokers.BROKERS``)."""

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


@asynccontextmanager
async def opened_node(broker_kind: str, tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Hub, TaskStore]]:
    """A started hub over a fresh broker of ``broker_kind`` and an opened, empty store of the
    kind a server pairs with it (``STORE_OF_BROKER``); closed at the end (the hub, then the store, as ``App`` does)."""
    hub: Hub
    store: SqliteTaskStore | RedisTaskStore
    if broker_kind == "redis":  # as App does with Settings.redis_url: one node id for bus and broker
        url = fresh_url(redis_url)
        cluster = RedisCluster(url)
        hub = Hub(broker=RedisBroker(url, node_id=cluster.node_id), cluster=cluster)
        store = RedisTaskStore(url)
    else:
        hub = make_hub(broker_kind)
        store = SqliteTaskStore(tmp_path / "tasks.db")
    await hub.start()
    try:
        await store.open()
    except BaseException:
        await hub.aclose()
        raise
    try:
        yield hub, store
    finally:  # the order App.shutdown closes them in
        await hub.aclose()
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
