"""TaskService: lifecycle through ``run``, stop and grace, coalescing, threads, deadlines,
restart, snapshots and refused inputs — against a real Hub and a real store, once per broker
(``broker_kind``: memory, async, redis), each with the store a server pairs it with
(``taskstores.opened_node``): memory and async over a SQLite file, redis over a
``RedisTaskStore`` and a ``RedisCluster`` on the same Redis. A restart is SQLite's (no broker
over Redis runs beside a SQLite store), leases are ``test_service_nodes.py``.

Subscribers are ``Recorder`` connections joined to the rooms (the join awaited), so the tests
see what a client would: publications in order, after the hub's fan-out. Over async and redis
that fan-out comes after ``publish`` returns, so a test asserts on what was received only after
waiting for it (``rec.caught_up()``, or ``rec.until_event`` for one event). Waits are on
published events with a timeout, never on sleeps.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from taskrecorder import WAIT, recorder
from taskstores import opened_node

from roomcast.errors import InvalidProgress, InvalidTransition, TaskError, TaskNotFound
from roomcast.hub import Hub
from roomcast.tasks.model import LIST_ROOM, Task, TaskEvents, TaskStatus, kind_room, task_room
from roomcast.tasks.service import INTERRUPTED_REASON, TaskService
from roomcast.tasks.store import TaskStore
from roomcast.tasks.store_sqlite import SqliteTaskStore

S = TaskStatus


@pytest.fixture
async def node(broker_kind: str, tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[Hub, TaskStore]]:
    """The behaviour below is the same on each: one process alone (a SQLite file) with its
    broker in memory or behind a network, or one node of several sharing Redis."""
    async with opened_node(broker_kind, tmp_path, redis_url) as pair:
        yield pair


@pytest.fixture
def hub(node: tuple[Hub, TaskStore]) -> Hub:
    return node[0]


@pytest.fixture
def store(node: tuple[Hub, TaskStore]) -> TaskStore:
    return node[1]


@pytest.fixture
async def service(hub: Hub, store: TaskStore) -> AsyncIterator[TaskService]:
    svc = TaskService(hub, store, stop_grace=0.05)
    await svc.open()
    yield svc
    await svc.aclose()


def names(events: list[tuple[str, Any]]) -> list[str]:
    return [event for event, _ in events]


# -- lifecycle through run -------------------------------------------------------------------


async def test_run_completes_and_publishes_every_change(hub: Hub, service: TaskService, store: TaskStore) -> None:
    rec = await recorder(hub, task_room("t1"), LIST_ROOM)
    async with service.start("crawl", title="Crawl", id="t1", metadata={"site": "x"}) as task:
        task.progress(50, "fetch", "half")
        await task.complete({"pages": 3})
    await rec.caught_up()
    room = rec.events(task_room("t1"))
    assert names(room) == ["task:created", "task:updated", "task:progress", "task:completed"]
    final = room[-1][1]
    assert final["status"] == "completed" and final["result"] == {"pages": 3}
    assert final["progress"] == 100 and final["step"] == "fetch"
    # the list room gets the same events, as summaries without result and metadata
    listed = rec.events(LIST_ROOM)
    assert names(listed) == names(room)
    assert "result" not in listed[-1][1] and "metadata" not in listed[-1][1]
    assert listed[-1][1]["status"] == "completed"
    stored = await store.get("t1")
    assert stored is not None and stored.status is S.COMPLETED and stored.result == {"pages": 3}
    assert await hub.is_terminal(task_room("t1"))
    assert (await service.get("t1")).to_json() == final


async def test_leaving_run_without_complete_completes_with_none(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    async with service.start("crawl", id="t1"):
        pass
    await rec.caught_up()
    event, data = rec.events(task_room("t1"))[-1]
    assert event == "task:completed" and data["result"] is None


async def test_an_exception_fails_the_task_and_propagates(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    with pytest.raises(ValueError, match="boom"):
        async with service.start("crawl", id="t1"):
            raise ValueError("boom")
    await rec.caught_up()
    event, data = rec.events(task_room("t1"))[-1]
    assert event == "task:failed" and data["error"] == "boom"
    assert (await service.get("t1")).status is S.FAILED


async def test_request_stop_cancels_the_producer_and_ends_cancelled(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    entered = asyncio.Event()
    after_block: list[bool] = []

    async def producer() -> None:
        async with service.start("crawl", id="t1") as task:
            task.progress(10)
            entered.set()
            await asyncio.Event().wait()  # a producer blocked in I/O until the stop cancels it
        after_block.append(task.stop_requested)  # the stop's cancellation was absorbed

    job = asyncio.create_task(producer())
    async with asyncio.timeout(WAIT):
        await entered.wait()
    stopping = await service.request_stop("t1", by="alice")
    assert stopping.status is S.STOPPING and stopping.message == "stop requested by alice"
    await rec.until_event(task_room("t1"), "task:cancelled")
    await asyncio.wait_for(job, WAIT)
    assert not job.cancelled() and after_block == [True]
    events = names(rec.events(task_room("t1")))
    assert events.index("task:stopping") < events.index("task:cancelled") == len(events) - 1
    assert (await service.get("t1")).status is S.CANCELLED


async def test_stop_grace_cancels_a_producer_that_ignores_cancellation(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    entered, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        async with service.start("crawl", id="t1"):
            entered.set()
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # ignores the stop

    job = asyncio.create_task(stubborn())
    try:
        async with asyncio.timeout(WAIT):
            await entered.wait()
        await service.request_stop("t1")
        cancelled = await rec.until_event(task_room("t1"), "task:cancelled")
        assert "not acknowledged" in cancelled["message"]
        assert not job.done()  # still running: the task was ended without it
    finally:
        release.set()  # a failing run must not leave a task that never ends
    await asyncio.wait_for(job, WAIT)
    await rec.caught_up()
    # leaving the block afterwards does not change the ended task
    assert names(rec.events(task_room("t1")))[-1] == "task:cancelled"
    assert (await service.get("t1")).status is S.CANCELLED


async def test_request_stop_of_a_pending_task_cancels_it(hub: Hub, service: TaskService) -> None:
    await service.create("crawl", id="t1")
    task = await service.request_stop("t1")
    assert task.status is S.CANCELLED


# -- snapshots -------------------------------------------------------------------------------


async def test_a_late_subscriber_gets_the_final_snapshot(hub: Hub, service: TaskService) -> None:
    async with service.start("crawl", id="t1") as task:
        await task.complete({"answer": 42})
    late = await recorder(hub, name="late")
    sub = await hub.subscribe(late, task_room("t1"))
    assert sub.snapshot["status"] == "completed"
    assert sub.snapshot["result"] == {"answer": 42}
    assert sub.snapshot == (await service.get("t1")).to_json()
    assert sub.terminal  # nothing more will come
    assert (await hub.subscribe(late, task_room("nope"))).snapshot is None


# -- progress coalescing and threads -------------------------------------------------------


async def test_10000_progress_calls_are_coalesced_and_the_end_is_last(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    async with service.start("crawl", id="t1") as task:
        for i in range(10_000):
            task.progress(i / 100)
        await task.complete("done")
    await rec.caught_up()
    events = rec.events(task_room("t1"))
    progress = [data["progress"] for event, data in events if event == "task:progress"]
    assert 1 <= len(progress) <= 12
    assert progress == sorted(progress)
    assert progress[-1] == 99.99  # the latest value was flushed before the end
    assert events[-1][0] == "task:completed" and events[-1][1]["progress"] == 100


async def test_progress_spread_over_time_is_published_about_every_interval(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    loop = asyncio.get_running_loop()

    def published() -> list[float]:
        return [data["progress"] for event, data in rec.events(task_room("t1")) if event == "task:progress"]

    started = loop.time()
    async with service.start("crawl", id="t1") as task:
        reported = 0
        for wanted in range(1, 4):  # report in bursts, each time until one more publication shows up
            while len(published()) < wanted:
                for _ in range(500):
                    reported += 1
                    task.progress(reported / 100)
                async with asyncio.timeout(WAIT):
                    await rec.until(lambda: len(published()) >= wanted)  # noqa: B023 - awaited in the loop
    elapsed = loop.time() - started
    await rec.caught_up()
    progress = published()
    # Thousands of calls, yet publications at most one per 0.1 s interval (the first goes at once).
    assert reported >= 1500 and 3 <= len(progress) <= elapsed / 0.1 + 2, (reported, progress, elapsed)
    assert elapsed >= 0.2 - 0.01  # three publications need two intervals between them
    assert progress == sorted(progress)
    assert rec.events(task_room("t1"))[-1][0] == "task:completed"


async def test_progress_from_another_thread(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    threads: set[int] = set()

    async with service.start("crawl", id="t1") as task:

        def work() -> None:
            threads.add(threading.get_ident())
            for i in range(100):
                task.progress_threadsafe(i, step="thread")
            with pytest.raises(InvalidProgress):
                task.progress_threadsafe(150)
            with pytest.raises(RuntimeError):
                task.progress(1)  # the loop-only call refuses another thread

        await asyncio.to_thread(work)
    await rec.caught_up()
    assert threading.get_ident() not in threads
    events = rec.events(task_room("t1"))
    progress = [data for event, data in events if event == "task:progress"]
    assert progress and progress[-1]["progress"] == 99 and progress[-1]["step"] == "thread"
    assert events[-1][0] == "task:completed"


async def test_external_report_is_coalesced_too(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    await service.create("crawl", id="t1")
    await service.begin("t1")
    for i in range(1000):
        await service.report("t1", progress=i / 10)
    await service.complete("t1", [1, 2])
    await rec.caught_up()
    events = rec.events(task_room("t1"))
    assert len([e for e, _ in events if e == "task:progress"]) <= 12
    assert events[-1][0] == "task:completed" and events[-1][1]["result"] == [1, 2]


# -- deadlines and restarts --------------------------------------------------------------------


async def test_deadline_times_out_a_running_task(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"))
    finished = asyncio.Event()

    async def slow() -> None:
        async with service.start("crawl", id="t1", deadline=time.time() + 0.05):
            await asyncio.Event().wait()
        finished.set()

    job = asyncio.create_task(slow())
    data = await rec.until_event(task_room("t1"), "task:timed_out")
    assert data["status"] == "timed_out" and data["error"] == "deadline exceeded"
    await asyncio.wait_for(job, WAIT)  # the producer was cancelled; the block absorbed it
    assert finished.is_set()
    await rec.caught_up()
    assert names(rec.events(task_room("t1")))[-1] == "task:timed_out"


# SQLite's own: a file one process has alone is swept when it opens again (a shared Redis store
# never is, see test_service_nodes.py). Run over the brokers a server pairs with SQLite.
@pytest.mark.parametrize("broker_kind", ["memory", "async"])
async def test_restart_fails_tasks_left_running(hub: Hub, tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    first_store = SqliteTaskStore(path)
    first = TaskService(hub, first_store)
    await first.open()
    await first.create("crawl", id="running")
    await first.begin("running")
    await first.create("crawl", id="done")
    await first.cancel("done")
    await first.aclose()
    await first_store.aclose()  # the "process" ends with one task still running

    rec = await recorder(hub, task_room("running"), task_room("done"), LIST_ROOM)
    second_store = SqliteTaskStore(path)
    second = TaskService(hub, second_store)
    try:
        await second.open()
        await rec.caught_up()
        event, data = rec.events(task_room("running"))[-1]
        assert event == "task:failed" and data["error"] == INTERRUPTED_REASON
        assert names(rec.events(LIST_ROOM)) == ["task:failed"]
        assert rec.events(task_room("done")) == []
        assert await hub.is_terminal(task_room("running"))
        task = await second.get("running")
        assert task.status is S.FAILED and task.error == INTERRUPTED_REASON
        assert (await second.get("done")).status is S.CANCELLED
    finally:
        await second.aclose()
        await second_store.aclose()


# -- refused inputs ------------------------------------------------------------------------------


async def test_bad_inputs_raise_and_publish_nothing(hub: Hub, service: TaskService) -> None:
    rec = await recorder(hub, task_room("t1"), task_room("nope"), LIST_ROOM)
    async with service.start("crawl", id="t1") as task:
        await task.complete("first")
    await service.create("crawl", id="t2")
    await service.begin("t2")
    await hub.join(rec, task_room("t2"))
    await rec.caught_up()
    before = list(rec.seen)
    with pytest.raises(TaskNotFound):
        await service.report("nope", progress=1)
    with pytest.raises(TaskNotFound):
        await service.get("nope")
    with pytest.raises(TaskNotFound):
        await service.request_stop("nope")
    with pytest.raises(InvalidTransition):
        await service.complete("t1", "second")
    with pytest.raises(InvalidTransition):
        await service.request_stop("t1")
    with pytest.raises(TaskError, match="already exists"):
        await service.create("crawl", id="t1")
    with pytest.raises(InvalidProgress):
        await service.report("t2", progress=150)
    # a sentinel published after the refused calls is the only thing that arrives
    await hub.publish(task_room("t2"), "sentinel")
    await rec.until(lambda: rec.seen[-1][1] == "sentinel")
    await rec.caught_up()  # every room, not only t2's: across rooms delivery order is not kept
    assert rec.seen == [*before, (task_room("t2"), "sentinel", None)]
    assert (await service.get("t1")).result == "first"
    assert (await service.get("t2")).progress is None


async def test_invalid_progress_in_run_raises_at_the_call(hub: Hub, service: TaskService) -> None:
    with pytest.raises(InvalidProgress):
        async with service.start("crawl", id="t1") as task:
            task.progress(float("nan"))
    assert (await service.get("t1")).status is S.FAILED


# -- names and rooms ---------------------------------------------------------------------------


async def test_event_aliases_and_kind_rooms(hub: Hub, store: TaskStore) -> None:
    aliases = TaskEvents(progress="crawl_progress", cancelled="crawl:stopped")
    svc = TaskService(hub, store, events={"crawl": aliases}, list_rooms=("kind",), stop_grace=0.05)
    await svc.open()
    try:
        rec = await recorder(hub, task_room("t1"), kind_room("crawl"))
        await svc.create("crawl", id="t1")
        await svc.begin("t1")
        await svc.report("t1", progress=5)
        await svc.request_stop("t1")
        await svc.cancel("t1")
        await rec.caught_up()
        expected = ["task:created", "task:updated", "crawl_progress", "task:stopping", "crawl:stopped"]
        assert names(rec.events(task_room("t1"))) == expected
        assert names(rec.events(kind_room("crawl"))) == expected
    finally:
        await svc.aclose()


async def test_generated_ids_and_list(service: TaskService) -> None:
    a = await service.create("crawl", owner="u1")
    b = await service.create("index", owner="u2")
    assert a.id != b.id and len(a.id) == 12
    page, cursor = await service.list(kind="crawl")
    assert [t.id for t in page] == [a.id] and cursor is None
    assert isinstance(await service.get(b.id), Task)


@pytest.mark.parametrize("broker_kind", ["memory"])  # refused in the constructor: nothing is reached
async def test_constructor_refuses_unknown_list_rooms(hub: Hub, store: TaskStore) -> None:
    with pytest.raises(ValueError):
        TaskService(hub, store, list_rooms=("colour",))


# -- the decorator, time_out, retention ---------------------------------------------------------


async def test_decorated_function_runs_as_a_task_and_its_return_value_is_the_result(
    hub: Hub, service: TaskService
) -> None:
    rec = await recorder(hub, LIST_ROOM)

    @service.task("crawl", title="Crawl")
    async def crawl(task: Any, site: str) -> dict[str, Any]:
        task.progress(50, step=f"fetching {site}")
        return {"site": site, "pages": 3}

    assert await crawl("example.com") == {"site": "example.com", "pages": 3}
    done = await rec.until_event(LIST_ROOM, "task:completed")
    assert (await service.get(done["id"])).result == {"site": "example.com", "pages": 3}


async def test_decorated_function_that_raises_fails_the_task_and_the_caller_sees_the_error(
    hub: Hub, service: TaskService
) -> None:
    rec = await recorder(hub, LIST_ROOM)

    @service.task("import")
    async def broken(task: Any) -> None:
        raise ValueError("bad row 7")

    with pytest.raises(ValueError, match="bad row 7"):
        await broken()
    failed = await rec.until_event(LIST_ROOM, "task:failed")
    assert "bad row 7" in (await service.get(failed["id"])).error  # type: ignore[operator]


async def test_decorated_function_stopped_mid_way_ends_cancelled_and_returns_none(
    hub: Hub, service: TaskService
) -> None:
    rec = await recorder(hub, LIST_ROOM)
    started = asyncio.Event()

    @service.task("crawl")
    async def forever(task: Any) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    call = asyncio.create_task(forever())
    async with asyncio.timeout(WAIT):
        await started.wait()
    created = await rec.until_event(LIST_ROOM, "task:created")
    await service.request_stop(created["id"])
    async with asyncio.timeout(WAIT):
        assert await call is None
    assert (await service.get(created["id"])).status is S.CANCELLED


async def test_time_out_ends_a_followed_job_with_the_reason(hub: Hub, service: TaskService) -> None:
    task = await service.create("render", id="t1")
    await service.begin(task.id)
    rec = await recorder(hub, task_room("t1"))
    ended = await service.time_out("t1", "upstream did not finish within 60s")
    assert ended.status is S.TIMED_OUT and ended.error == "upstream did not finish within 60s"
    await rec.caught_up()
    assert names(rec.events(task_room("t1")))[-1] == "task:timed_out"
    with pytest.raises(InvalidTransition):
        await service.time_out("t1")
    with pytest.raises(TaskNotFound):
        await service.time_out("nope")


async def _finished(svc: TaskService, count: int, kind: str = "crawl") -> list[str]:
    ids = []
    for _ in range(count):
        task = await svc.create(kind)
        await svc.complete(task.id, None)
        ids.append(task.id)
    return ids


async def test_retention_keeps_the_newest_finished_tasks_and_never_a_running_one(hub: Hub, store: TaskStore) -> None:
    svc = TaskService(hub, store, keep_count=3)
    await svc.open()
    try:
        running = await svc.create("crawl")
        await svc.begin(running.id)
        old = await _finished(svc, 5)
        new = await _finished(svc, 3)
        assert await svc.prune() == 5
        left, _ = await svc.list(limit=100)
        assert {t.id for t in left} == set(new) | {running.id}
        assert (await svc.get(running.id)).status is S.RUNNING
        assert not {t.id for t in left} & set(old)
    finally:
        await svc.aclose()


async def test_retention_by_age_deletes_only_tasks_that_finished_long_ago(hub: Hub, store: TaskStore) -> None:
    svc = TaskService(hub, store)
    await svc.open()
    try:
        recent = await _finished(svc, 2)
        fresh = await svc.create("crawl")
        fresh_done = await svc.complete(fresh.id, None)
    finally:
        await svc.aclose()
    long_ago = time.time() - 40 * 86400
    ancient = Task.from_json(
        {
            **fresh_done.to_json(),
            "id": "ancient",
            "created_at": long_ago,
            "updated_at": long_ago,
            "started_at": long_ago,
            "finished_at": long_ago,
        }
    )
    assert await store.put(ancient)
    stale_but_running = Task.from_json({**ancient.to_json(), "id": "slow", "status": "running", "finished_at": None})
    assert await store.put(stale_but_running)

    pruning = TaskService(hub, store, keep_days=30)
    await pruning.open()
    try:
        assert await store.get("ancient") is None
        assert all([await store.get(i) for i in [*recent, fresh.id]])
        slow = await store.get("slow")  # not pruned: it was live
        assert slow is not None
        # Then the reopen of a SQLite file failed it (interrupted); a shared store did not.
        assert slow.status is (S.FAILED if store.leases is None else S.RUNNING)
        assert await pruning.prune() == 0  # nothing more is due
    finally:
        await pruning.aclose()


class _CountingStore(SqliteTaskStore):
    """Tells the test each time a retention pass trims the store."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.passes = 0
        self.trimmed = asyncio.Event()

    async def keep_newest(self, count: int) -> int:
        removed = await super().keep_newest(count)
        self.passes += 1
        self.trimmed.set()
        return removed


# The retention loop's timing, counted by a SQLite store subclass: the service and its store
# alone, no publication, so the broker plays no part.
@pytest.mark.parametrize("broker_kind", ["memory"])
async def test_retention_runs_again_on_its_interval(hub: Hub, tmp_path: Path) -> None:
    counting = _CountingStore(tmp_path / "counting.db")
    await counting.open()
    svc = TaskService(hub, counting, keep_count=1, retention_interval=0.01)
    try:
        await svc.open()
        assert counting.passes == 1  # the pass in open()
        ids = await _finished(svc, 3)
        async with asyncio.timeout(WAIT):
            while counting.passes < 2:
                counting.trimmed.clear()
                await counting.trimmed.wait()
            while [t.id for t in (await svc.list(limit=10))[0]] != ids[-1:]:
                counting.trimmed.clear()
                await counting.trimmed.wait()
    finally:
        await svc.aclose()
        await counting.aclose()


@pytest.mark.parametrize("broker_kind", ["memory"])  # refused in the constructor: nothing is reached
async def test_retention_settings_are_checked(hub: Hub, store: TaskStore) -> None:
    for bad in ({"keep_days": 0}, {"keep_count": -1}, {"retention_interval": 0}):
        with pytest.raises(ValueError):
            TaskService(hub, store, **bad)  # type: ignore[arg-type]


# -- routes and spawn ---------------------------------------------------------------------------


async def test_a_route_publishes_every_change_in_full_to_the_rooms_it_names(hub: Hub, service: TaskService) -> None:
    @service.route
    def project_room(task: Task) -> list[str]:
        project = task.metadata.get("project")
        return [f"project:{project}"] if task.kind == "crawl" and isinstance(project, str) else []

    @service.route
    def broken(task: Task) -> list[str]:
        raise KeyError("a bug in the application's route")

    rec = await recorder(hub, "project:p1", task_room("t1"))
    async with service.start("crawl", id="t1", metadata={"project": "p1"}) as task:
        task.progress(50)
        await task.complete({"pages": 2})
    other = await service.create("index", metadata={"project": "p1"})  # not routed: another kind
    await rec.caught_up()
    assert names(rec.events("project:p1")) == names(rec.events(task_room("t1")))
    assert names(rec.events("project:p1")) == ["task:created", "task:updated", "task:progress", "task:completed"]
    assert rec.events("project:p1")[-1][1]["result"] == {"pages": 2}  # in full, unlike the list rooms
    assert all(data["id"] != other.id for _, data in rec.events("project:p1"))


async def test_spawn_answers_with_the_running_task_while_the_work_goes_on(hub: Hub, service: TaskService) -> None:
    release = asyncio.Event()

    async def crawl(task: Any) -> dict[str, int]:
        task.progress(10)
        await release.wait()
        return {"pages": 3}

    task = await service.spawn("crawl", crawl, title="site")
    assert task.status is S.RUNNING
    rec = await recorder(hub, task_room(task.id))
    release.set()
    done = await rec.until_event(task_room(task.id), "task:completed")
    assert done["result"] == {"pages": 3}


async def test_spawn_refusal_reaches_the_caller_and_a_stop_cancels_the_work(hub: Hub, service: TaskService) -> None:
    async def forever(task: Any) -> None:
        await asyncio.Event().wait()

    first = await service.spawn("crawl", forever, id="same")
    with pytest.raises(TaskError):
        await service.spawn("crawl", forever, id="same")  # the id is taken: the caller hears it
    rec = await recorder(hub, task_room(first.id))
    await service.request_stop(first.id)
    await rec.until_event(task_room(first.id), "task:cancelled")


async def test_closing_the_service_ends_spawned_work_as_failed(hub: Hub, store: TaskStore) -> None:
    svc = TaskService(hub, store)
    await svc.open()

    async def forever(task: Any) -> None:
        await asyncio.Event().wait()

    task = await svc.spawn("crawl", forever)
    await svc.aclose()
    stored = await store.get(task.id)
    assert stored is not None and stored.status is S.FAILED and stored.error == "producer was cancelled"


def test_generated_ids_are_letters_and_digits_so_a_shell_never_reads_one_as_an_option() -> None:
    from roomcast.tasks.service import new_task_id

    ids = {new_task_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 12 and i.isascii() and i.isalnum() for i in ids)
