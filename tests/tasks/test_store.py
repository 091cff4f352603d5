"""The ``TaskStore`` contract, run over every store: CRUD, versions and compare-and-set,
filters, keyset pages, retention, write order.

``store`` is parametrized over ``taskstores.STORES`` (SQLite in memory and in a file, Redis on
a real redis-server), so "the stores behave the same" is one suite, not a hope. What only one
store has (SQLite's file lock and schema, Redis's leases) is in ``test_store_sqlite.py`` and
``test_store_redis.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from taskstores import STORES, make, opened_store

from roomcast.errors import TaskError
from roomcast.tasks.model import TERMINAL, Task, TaskStatus
from roomcast.tasks.store import MAX_PAGE_SIZE, TaskStore

S = TaskStatus


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> AsyncIterator[TaskStore]:
    async with opened_store(request.param, tmp_path, redis_url) as s:
        yield s


# -- CRUD -------------------------------------------------------------------------------------


async def test_put_then_get_returns_an_equal_task(store: TaskStore) -> None:
    for status in TaskStatus:
        task = make(f"t-{status.value}", status)
        assert await store.put(task) is True
        assert await store.get(task.id) == task


async def test_get_missing_is_none(store: TaskStore) -> None:
    assert await store.get("nope") is None


async def test_put_replaces_a_live_task(store: TaskStore) -> None:
    task = make("t1")
    await store.put(task)
    running = task.start(2.0).progress_to(3.0, 10, "a")
    assert await store.put(running) is True
    assert await store.get("t1") == running


async def test_put_never_replaces_a_terminal_task(store: TaskStore) -> None:
    running = make("t1", S.RUNNING)
    done = running.complete(5.0, {"r": 1})
    await store.put(done)
    # A late progress write and a second, different ending both lose to the stored end.
    assert await store.put(running) is False
    assert await store.put(running.fail(6.0, "late")) is False
    assert await store.get("t1") == done


async def test_put_refuses_values_json_cannot_carry(store: TaskStore) -> None:
    bad = Task(id="t1", kind="k", created_at=1.0, updated_at=1.0, metadata={"x": object()})
    with pytest.raises(TaskError, match="t1"):
        await store.put(bad)
    assert await store.get("t1") is None


# -- filters ----------------------------------------------------------------------------------


async def seed_mixed(store: TaskStore) -> None:
    await store.put(make("a", S.RUNNING, created=1, kind="crawl", owner="u1"))
    await store.put(make("b", S.COMPLETED, created=2, kind="crawl", owner="u2"))
    await store.put(make("c", S.PENDING, created=3, kind="export", owner="u1"))
    await store.put(make("d", S.FAILED, created=4, kind="export", owner=None))
    await store.put(make("e", S.STOPPING, created=5, kind="crawl", owner="u1"))


async def ids(store: TaskStore, **filters: object) -> list[str]:
    tasks, cursor = await store.list(**filters)  # type: ignore[arg-type]
    assert cursor is None
    return [t.id for t in tasks]


async def test_list_filters(store: TaskStore) -> None:
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


async def test_list_rejects_an_unknown_status(store: TaskStore) -> None:
    with pytest.raises(TaskError, match="status"):
        await store.list(status=["paused"])  # type: ignore[list-item]


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE_SIZE + 1, True, 2.5])
async def test_list_rejects_a_bad_limit(store: TaskStore, limit: object) -> None:
    with pytest.raises(TaskError, match="limit"):
        await store.list(limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("cursor", ["", "!!!", "bm90IGpzb24", "WzEsMl0", "eyJhIjoxfQ", "WyJ4IiwiYSJd"])
async def test_list_rejects_a_bad_cursor(store: TaskStore, cursor: str) -> None:
    # garbage, "not json", [1,2], {"a":1}, ["x","a"]
    with pytest.raises(TaskError, match="cursor"):
        await store.list(cursor=cursor)


# -- pagination -------------------------------------------------------------------------------


async def page_all(store: TaskStore, limit: int, **filters: object) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        tasks, cursor = await store.list(limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        pages.append([t.id for t in tasks])
        if cursor is None:
            return pages
        assert len(pages) < 1000, "pagination does not end"


async def test_pages_cover_everything_once_in_order(store: TaskStore) -> None:
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


async def test_exact_multiple_has_no_empty_last_page(store: TaskStore) -> None:
    for i in range(20):
        await store.put(make(f"t{i:02d}", created=float(i)))
    first, cursor = await store.list(limit=10)
    assert len(first) == 10 and cursor is not None
    second, cursor = await store.list(limit=10, cursor=cursor)
    assert len(second) == 10 and cursor is None


async def test_pages_are_stable_while_tasks_are_created_and_updated(store: TaskStore) -> None:
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


async def test_empty_store_lists_nothing(store: TaskStore) -> None:
    assert await store.list() == ([], None)


# -- retention --------------------------------------------------------------------------------


async def test_delete_older_than_removes_only_old_terminal_tasks(store: TaskStore) -> None:
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


async def test_keep_newest_counts_and_removes_only_terminal_tasks(store: TaskStore) -> None:
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


async def test_keep_newest_breaks_created_at_ties_by_id(store: TaskStore) -> None:
    for tid in ["a", "b", "c"]:
        await store.put(make(tid, S.COMPLETED, created=5))
    assert await store.keep_newest(1) == 2
    assert await ids(store) == ["c"]  # the same order as list: (created_at, id) descending


@pytest.mark.parametrize("count", [-1, True, 1.5])
async def test_keep_newest_rejects_a_bad_count(store: TaskStore, count: object) -> None:
    with pytest.raises(TaskError, match="count"):
        await store.keep_newest(count)  # type: ignore[arg-type]


# -- concurrency and lifecycle ----------------------------------------------------------------


async def test_concurrent_puts_from_many_tasks(store: TaskStore) -> None:
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


async def test_writes_land_in_call_order(store: TaskStore) -> None:
    # Started together and never awaited one by one: the last version started must win.
    base = make("t1", S.RUNNING)
    versions = [base.progress_to(2.0 + i, i % 101) for i in range(200)]
    await asyncio.gather(*(store.put(v) for v in versions))
    assert await store.get("t1") == versions[-1]


# -- versions and compare-and-set ---------------------------------------------------------------


async def test_versions_start_at_one_and_grow_by_one_per_write(store: TaskStore) -> None:
    task = make("t1")
    first = await store.swap(task, version=0, node=None)
    assert first.ok and first.stored == await store.read("t1")
    assert first.stored is not None and (first.stored.version, first.stored.node) == (1, None)
    running = task.start(2.0)
    second = await store.swap(running, version=1, node="n1")
    assert second.ok and second.stored is not None and second.stored.version == 2
    assert await store.read("t1") == second.stored
    assert await store.put(running.progress_to(3.0, 5)) is True  # put bumps the version too
    stored = await store.read("t1")
    assert stored is not None and stored.version == 3
    assert stored.node == "n1"  # and keeps the node
    assert await store.read("missing") is None


async def test_swap_over_an_older_version_is_refused_and_hands_back_the_newer(store: TaskStore) -> None:
    base = make("t1", S.RUNNING)
    await store.swap(base, version=0, node="a")
    # Two writers read version 1; the first wins, the second learns what it raced.
    mine = base.progress_to(5.0, 10)
    theirs = base.request_stop(5.0)
    won = await store.swap(theirs, version=1, node="a")
    lost = await store.swap(mine, version=1, node="a")
    assert won.ok and not lost.ok
    assert lost.stored == won.stored and lost.stored is not None and lost.stored.task == theirs
    # Re-applied to what is stored: both changes survive.
    merged = lost.stored.task.progress_to(6.0, 10)
    again = await store.swap(merged, version=lost.stored.version, node="a")
    assert again.ok
    assert await store.get("t1") == merged and merged.status is S.STOPPING and merged.progress == 10


async def test_creating_an_existing_id_is_refused(store: TaskStore) -> None:
    first = make("t1", owner="ann")
    await store.swap(first, version=0, node=None)
    clash = await store.swap(make("t1", owner="bob", created=9.0), version=0, node="n1")
    assert not clash.ok and clash.stored is not None and clash.stored.task == first
    assert await store.get("t1") == first


async def test_swap_of_a_missing_task_is_refused_with_nothing_stored(store: TaskStore) -> None:
    result = await store.swap(make("t1", S.RUNNING), version=3, node=None)
    assert not result.ok and result.stored is None
    assert await store.get("t1") is None


async def test_swap_never_replaces_a_terminal_task_even_at_its_version(store: TaskStore) -> None:
    running = make("t1", S.RUNNING)
    await store.swap(running, version=0, node="a")
    done = running.complete(5.0, {"r": 1})
    ended = await store.swap(done, version=1, node="a")
    assert ended.ok and ended.stored is not None
    late = await store.swap(running.fail(6.0, "late"), version=ended.stored.version, node="a")
    assert not late.ok and late.stored == ended.stored
    assert await store.get("t1") == done


async def test_a_swap_moves_the_task_between_the_lists_it_matches(store: TaskStore) -> None:
    task = make("t1", kind="crawl", owner="ann")
    await store.swap(task, version=0, node=None)
    running = task.start(2.0)
    await store.swap(running, version=1, node=None)
    assert await ids(store, status=S.PENDING) == []
    assert await ids(store, status=S.RUNNING, kind="crawl", owner="ann") == ["t1"]
    done = running.complete(3.0)
    await store.swap(done, version=2, node=None)
    assert await ids(store, status=S.RUNNING) == []
    assert await ids(store, status=sorted(TERMINAL), owner="ann") == ["t1"]
    assert await store.keep_newest(0) == 1  # and retention finds it once it is terminal
    assert await ids(store) == []


async def test_concurrent_swaps_from_one_version_let_exactly_one_win(store: TaskStore) -> None:
    base = make("t1", S.RUNNING)
    await store.swap(base, version=0, node=None)
    writers = [base.progress_to(2.0 + i, i) for i in range(20)]
    results = await asyncio.gather(*(store.swap(w, version=1, node=None) for w in writers))
    assert [r.ok for r in results].count(True) == 1
    winner = writers[[r.ok for r in results].index(True)]
    assert await store.get("t1") == winner
