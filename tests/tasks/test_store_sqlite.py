"""SqliteTaskStore: CRUD, filters, keyset pages, retention, restarts, interruption, concurrency.

The behaviour tests run against both ``:memory:`` and a real file, since WAL mode and the
schema migration only happen for a file.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.errors import InvalidState, TaskError
from roomcast.tasks.model import TERMINAL, Task, TaskStatus
from roomcast.tasks.store import MAX_PAGE_SIZE, TaskStore
from roomcast.tasks.store_sqlite import SCHEMA_VERSION, SqliteTaskStore

S = TaskStatus


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteTaskStore]:
    path = ":memory:" if request.param == "memory" else tmp_path / "tasks.db"
    s = SqliteTaskStore(path)
    await s.open()
    yield s
    await s.aclose()


def make(
    task_id: str,
    status: TaskStatus = S.PENDING,
    *,
    created: float = 1.0,
    kind: str = "crawl",
    owner: str | None = "u1",
    finished: float | None = None,
) -> Task:
    """A task in ``status`` reached by legal steps; terminal ones finish at ``finished``."""
    task = Task.new(task_id, kind, now=created, owner=owner, title=f"Task {task_id}", metadata={"n": 1})
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


def test_implements_the_protocol() -> None:
    store: TaskStore = SqliteTaskStore()  # mypy checks the structural match
    assert store is not None


# -- CRUD -------------------------------------------------------------------------------------


async def test_put_then_get_returns_an_equal_task(store: SqliteTaskStore) -> None:
    for status in TaskStatus:
        task = make(f"t-{status.value}", status)
        assert await store.put(task) is True
        assert await store.get(task.id) == task


async def test_get_missing_is_none(store: SqliteTaskStore) -> None:
    assert await store.get("nope") is None


async def test_put_replaces_a_live_task(store: SqliteTaskStore) -> None:
    task = make("t1")
    await store.put(task)
    running = task.start(2.0).progress_to(3.0, 10, "a")
    assert await store.put(running) is True
    assert await store.get("t1") == running


async def test_put_never_replaces_a_terminal_task(store: SqliteTaskStore) -> None:
    running = make("t1", S.RUNNING)
    done = running.complete(5.0, {"r": 1})
    await store.put(done)
    # A late progress write and a second, different ending both lose to the stored end.
    assert await store.put(running) is False
    assert await store.put(running.fail(6.0, "late")) is False
    assert await store.get("t1") == done


async def test_put_refuses_values_json_cannot_carry(store: SqliteTaskStore) -> None:
    bad = Task(id="t1", kind="k", created_at=1.0, updated_at=1.0, metadata={"x": object()})
    with pytest.raises(TaskError, match="t1"):
        await store.put(bad)
    assert await store.get("t1") is None


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


# -- filters ----------------------------------------------------------------------------------


async def seed_mixed(store: SqliteTaskStore) -> None:
    await store.put(make("a", S.RUNNING, created=1, kind="crawl", owner="u1"))
    await store.put(make("b", S.COMPLETED, created=2, kind="crawl", owner="u2"))
    await store.put(make("c", S.PENDING, created=3, kind="export", owner="u1"))
    await store.put(make("d", S.FAILED, created=4, kind="export", owner=None))
    await store.put(make("e", S.STOPPING, created=5, kind="crawl", owner="u1"))


async def ids(store: SqliteTaskStore, **filters: object) -> list[str]:
    tasks, cursor = await store.list(**filters)  # type: ignore[arg-type]
    assert cursor is None
    return [t.id for t in tasks]


async def test_list_filters(store: SqliteTaskStore) -> None:
    await seed_mixed(store)
    assert await ids(store) == ["e", "d", "c", "b", "a"]  # newest first
    assert await ids(store, status=S.RUNNING) == ["a"]
    assert await ids(store, status={S.PENDING, S.RUNNING, S.STOPPING}) == ["e", "c", "a"]
    assert await ids(store, status=sorted(TERMINAL)) == ["d", "b"]
    assert await ids(store, status=[]) == []
    assert await ids(store, kind="crawl") == ["e", "b", "a"]
    assert await ids(store, owner="u1") == ["e", "c", "a"]
    assert await ids(store, owner="nobody") == []
    assert await ids(store, kind="crawl", owner="u1", status=S.STOPPING) == ["e"]
    assert await ids(store, kind="export", status=S.RUNNING) == []


async def test_list_rejects_an_unknown_status(store: SqliteTaskStore) -> None:
    with pytest.raises(TaskError, match="status"):
        await store.list(status=["paused"])  # type: ignore[list-item]


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, True, 2.5])
async def test_list_rejects_a_bad_limit(store: SqliteTaskStore, limit: object) -> None:
    with pytest.raises(TaskError, match="limit"):
        await store.list(limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", "WzEsMl0", "eyJhIjoxfQ", "WyJ4IiwiYSJd"])
async def test_list_rejects_a_bad_cursor(store: SqliteTaskStore, cursor: str) -> None:
    # garbage, "not json", [1,2], {"a":1}, ["x","a"]
    with pytest.raises(TaskError, match="cursor"):
        await store.list(cursor=cursor)


# -- pagination -------------------------------------------------------------------------------


async def page_all(store: SqliteTaskStore, limit: int, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        tasks, cursor = await store.list(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([t.id for t in tasks])
        if cursor is None:
            return pages
        assert len(pages) < 1000, "pagination does not end"


async def test_pages_cover_everything_once_in_order(store: SqliteTaskStore) -> None:
    # 137 tasks, many sharing a created_at, so the id tie-break matters.
    expected: list[tuple[float, str]] = []
    for i in range(137):
        created = float(i // 4)
        status = [S.RUNNING, S.COMPLETED, S.PENDING][i % 3]
        await store.put(make(f"t{i:03d}", status, created=created, kind=["crawl", "export"][i % 2]))
        expected.append((created, f"t{i:03d}"))
    newest_first = [tid for _, tid in sorted(expected, reverse=True)]

    pages = await page_all(store, limit=10)
    assert [len(p) for p in pages] == [10] * 13 + [7]
    flat = [tid for page in pages for tid in page]
    assert flat == newest_first  # no duplicates, no gaps, newest first

    crawl = await page_all(store, limit=7, kind="crawl", status=S.RUNNING)
    crawl_expected = [tid for tid in newest_first if int(tid[1:]) % 2 == 0 and int(tid[1:]) % 3 == 0]
    assert [tid for page in crawl for tid in page] == crawl_expected


async def test_exact_multiple_has_no_empty_last_page(store: SqliteTaskStore) -> None:
    for i in range(20):
        await store.put(make(f"t{i:02d}", created=float(i)))
    first, cursor = await store.list(limit=10)
    assert len(first) == 10 and cursor is not None
    second, cursor = await store.list(limit=10, cursor=cursor)
    assert len(second) == 10 and cursor is None


async def test_pages_are_stable_while_tasks_are_created_and_updated(store: SqliteTaskStore) -> None:
    for i in range(30):
        await store.put(make(f"t{i:02d}", S.RUNNING, created=float(i)))
    first, cursor = await store.list(limit=10)
    assert [t.id for t in first] == [f"t{i:02d}" for i in range(29, 19, -1)]
    # Between pages: newer tasks arrive and an already-listed one changes.
    for i in range(30, 40):
        await store.put(make(f"t{i:02d}", created=float(i)))
    await store.put(first[0].complete(100.0))
    rest: list[str] = []
    while cursor is not None:
        page, cursor = await store.list(limit=10, cursor=cursor)
        rest += [t.id for t in page]
    assert rest == [f"t{i:02d}" for i in range(19, -1, -1)]


async def test_empty_store_lists_nothing(store: SqliteTaskStore) -> None:
    assert await store.list() == ([], None)


# -- retention --------------------------------------------------------------------------------


async def test_delete_older_than_removes_only_old_terminal_tasks(store: SqliteTaskStore) -> None:
    await store.put(make("old-done", S.COMPLETED, created=1, finished=10))
    await store.put(make("old-failed", S.FAILED, created=1, finished=20))
    await store.put(make("new-done", S.COMPLETED, created=1, finished=100))
    await store.put(make("old-running", S.RUNNING, created=1))
    await store.put(make("old-pending", S.PENDING, created=1))
    await store.put(make("old-stopping", S.STOPPING, created=1))

    assert await store.delete_older_than(50.0) == 2
    assert sorted(await ids(store)) == ["new-done", "old-pending", "old-running", "old-stopping"]
    assert await store.delete_older_than(100.0) == 0  # strictly older
    assert await store.delete_older_than(1e12) == 1
    assert sorted(await ids(store)) == ["old-pending", "old-running", "old-stopping"]


async def test_keep_newest_counts_and_removes_only_terminal_tasks(store: SqliteTaskStore) -> None:
    terminal = [S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.COMPLETED]
    for i, status in enumerate(terminal):
        await store.put(make(f"done{i}", status, created=float(10 + i)))
    await store.put(make("run-old", S.RUNNING, created=0))
    await store.put(make("run-new", S.RUNNING, created=99))
    await store.put(make("pending-old", S.PENDING, created=0))

    assert await store.keep_newest(10) == 0
    assert await store.keep_newest(2) == 3
    assert sorted(await ids(store)) == ["done3", "done4", "pending-old", "run-new", "run-old"]
    assert await store.keep_newest(2) == 0
    assert await store.keep_newest(0) == 2
    assert sorted(await ids(store)) == ["pending-old", "run-new", "run-old"]


async def test_keep_newest_breaks_created_at_ties_by_id(store: SqliteTaskStore) -> None:
    for tid in ["a", "b", "c"]:
        await store.put(make(tid, S.COMPLETED, created=5))
    assert await store.keep_newest(1) == 2
    assert await ids(store) == ["c"]  # the same order as list: (created_at, id) descending


@pytest.mark.parametrize("count", [-1, True, 1.5])
async def test_keep_newest_rejects_a_bad_count(store: SqliteTaskStore, count: object) -> None:
    with pytest.raises(TaskError, match="count"):
        await store.keep_newest(count)  # type: ignore[arg-type]


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


# -- concurrency and lifecycle ----------------------------------------------------------------


async def test_concurrent_puts_from_many_tasks(store: SqliteTaskStore) -> None:
    async def producer(n: int) -> None:
        for i in range(40):
            task = make(f"p{n}-{i:02d}", created=float(i), owner=f"u{n}").start(float(i) + 1)
            await store.put(task)
            await store.put(task.progress_to(float(i) + 2, 50))

    await asyncio.gather(*(producer(n) for n in range(8)))
    tasks, cursor = await store.list(limit=MAX_PAGE_SIZE)
    assert cursor is None
    assert len(tasks) == len({t.id for t in tasks}) == 320
    assert all(t.status is S.RUNNING and t.progress == 50.0 for t in tasks)
    for n in range(8):
        mine, _ = await store.list(owner=f"u{n}", limit=MAX_PAGE_SIZE)
        assert len(mine) == 40


async def test_writes_land_in_call_order(store: SqliteTaskStore) -> None:
    # Started together and never awaited one by one: the last version started must win.
    base = make("t1", S.RUNNING)
    versions = [base.progress_to(2.0 + i, i % 101) for i in range(200)]
    await asyncio.gather(*(store.put(v) for v in versions))
    assert await store.get("t1") == versions[-1]


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
