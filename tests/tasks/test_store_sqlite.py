"""SqliteTaskStore only: the file across restarts, its schema and migrations, interruption,
and its one worker thread. What every store does is in ``test_store.py``, which runs the
same suite over SQLite (in memory and in a file) and Redis.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from taskstores import make

from roomcast.errors import InvalidState, TaskError
from roomcast.tasks.model import TERMINAL, TaskStatus
from roomcast.tasks.store import TaskStore
from roomcast.tasks.store_sqlite import SCHEMA_VERSION, SqliteTaskStore

S = TaskStatus


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "tasks.db"
    s = SqliteTaskStore(path)
    await s.open()
    yield s
    await s.aclose()


def test_implements_the_protocol() -> None:
    store: TaskStore = SqliteTaskStore()  # mypy checks the structural match
    assert store is not None


async def test_unreadable_row_is_a_task_error(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    await store.put(make("t1"))
    await store.aclose()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE tasks SET metadata = '{not json' WHERE id = 't1'")
    db.close()
    store = SqliteTaskStore(path)
    try:
        with pytest.raises(TaskError, match="stored task 't1' is unreadable"):
            await store.get("t1")
    finally:
        await store.aclose()


# -- restarts ---------------------------------------------------------------------------------


async def test_a_file_store_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    written = [make(f"t-{status.value}", status, created=float(i)) for i, status in enumerate(TaskStatus)]
    first = SqliteTaskStore(path)
    for task in written:
        await first.put(task)
    await first.aclose()

    second = SqliteTaskStore(str(path))
    try:
        for task in written:
            assert await second.get(task.id) == task
        tasks, _ = await second.list()
        assert tasks == written[::-1]
    finally:
        await second.aclose()


async def test_file_uses_wal_and_records_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    store = SqliteTaskStore(path)
    await store.open()
    try:
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"tasks_by_created", "tasks_by_status", "tasks_by_kind", "tasks_by_owner"} <= indexes
        db.close()
    finally:
        await store.aclose()


async def test_a_file_from_a_newer_roomcast_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    store = SqliteTaskStore(path)
    try:
        with pytest.raises(TaskError, match="newer"):
            await store.open()
    finally:
        await store.aclose()


async def test_mark_interrupted_after_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tasks.db"
    before = {status: make(f"t-{status.value}", status, created=float(i)) for i, status in enumerate(TaskStatus)}
    first = SqliteTaskStore(path)
    for task in before.values():
        await first.put(task)
    await first.aclose()  # the process "exits" with work in flight

    second = SqliteTaskStore(path)
    failed = await second.mark_interrupted("server restarted", now=500.0)
    await second.aclose()

    live = [S.STOPPING, S.RUNNING, S.PENDING]  # newest first
    assert [t.id for t in failed] == [before[s].id for s in live]
    third = SqliteTaskStore(path)
    try:
        for status, old in before.items():
            now_stored = await third.get(old.id)
            if status in TERMINAL:
                assert now_stored == old  # finished work is left alone
                continue
            assert now_stored is not None and now_stored in failed
            assert now_stored.status is S.FAILED
            assert now_stored.error == "server restarted"
            assert (now_stored.finished_at, now_stored.updated_at) == (500.0, 500.0)
            # What the producer last said is kept for whoever reads the failure.
            assert (now_stored.progress, now_stored.step) == (old.progress, old.step)
        assert await third.mark_interrupted("again", now=600.0) == []
    finally:
        await third.aclose()


# -- the worker thread and lifecycle ----------------------------------------------------------


async def test_writes_queued_behind_a_busy_worker_land_in_call_order(store: SqliteTaskStore) -> None:
    # White-box: hold the worker on a gate so every put below is queued while it is busy. A
    # pool of several threads (or to_thread plus a lock) would start them on other threads,
    # out of order and on a connection those threads do not own.
    gate = threading.Event()
    blocker = asyncio.ensure_future(store._run(lambda conn: gate.wait(10)))
    base = make("t1", S.RUNNING)
    versions = [base.progress_to(2.0 + i, i % 101) for i in range(50)]
    puts = [asyncio.ensure_future(store.put(v)) for v in versions]
    # Runs after every task above took its first step, i.e. after all were submitted.
    asyncio.get_running_loop().call_soon(gate.set)
    assert await blocker is True
    assert await asyncio.gather(*puts) == [True] * 50
    assert await store.get("t1") == versions[-1]


async def test_closed_store_refuses_calls_and_closes_once() -> None:
    store = SqliteTaskStore()
    await store.put(make("t1"))
    await store.aclose()
    await store.aclose()
    with pytest.raises(InvalidState, match="closed"):
        await store.get("t1")
    with pytest.raises(InvalidState):
        await store.put(make("t2"))


async def test_aclose_without_use() -> None:
    await SqliteTaskStore().aclose()


async def test_a_file_from_schema_version_1_is_migrated_and_keeps_its_tasks(tmp_path: Path) -> None:
    """A task file written before versions existed: its rows start at version 1, unheld."""
    path = tmp_path / "tasks.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE tasks (id TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL, title TEXT NOT NULL,"
        " owner TEXT, status TEXT NOT NULL, progress REAL, step TEXT, message TEXT, result TEXT,"
        " error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL, started_at REAL,"
        " finished_at REAL, deadline REAL, metadata TEXT NOT NULL)"
    )
    db.execute(
        "INSERT INTO tasks VALUES ('t1', 'crawl', 'Old', 'ann', 'running', 40.0, 'fetch', NULL,"
        " NULL, NULL, 1.0, 2.0, 1.5, NULL, NULL, '{}')"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SqliteTaskStore(path)
    try:
        stored = await store.read("t1")
        assert stored is not None and (stored.version, stored.node) == (1, None)
        assert stored.task.status is S.RUNNING and stored.task.progress == 40.0
        assert (await store.swap(stored.task.progress_to(3.0, 50), version=1, node="n1")).ok
    finally:
        await store.aclose()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (2,)
    assert db.execute("SELECT version, node FROM tasks").fetchall() == [(2, "n1")]
    db.close()


async def test_a_sqlite_store_has_no_leases() -> None:
    """One process per file: ``mark_interrupted`` at startup, not leases, ends a dead one's work."""
    store = SqliteTaskStore()
    try:
        assert store.leases is None
    finally:
        await store.aclose()
