"""Two TaskServices on one Redis, in one process: the faults of issue 13 played for real.

Each node is what ``roomcast serve --redis`` builds: a ``Hub`` over a ``RedisBroker`` and a
``RedisCluster``, a ``RedisTaskStore`` and a ``TaskService``, on the session's real
redis-server. Subscribers are recorders joined on a node's hub, so an event one node
publishes is seen as a client of another node would see it. A node that died is played by
what it leaves in Redis (a task stored with its node id, a lease that lapses), written
through the store's own API. Waits are on events with a timeout; the one real process kill is
in ``tests/server/test_task_nodes.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
from keyspace import key_events
from redisserver import fresh_url
from taskrecorder import recorder
from taskstores import make

from roomcast.broker.redis import RedisBroker
from roomcast.cluster.redis import RedisCluster
from roomcast.errors import InvalidTransition
from roomcast.hub import Hub
from roomcast.tasks.model import Task, TaskStatus, task_room
from roomcast.tasks.service import NODE_LOST_REASON, TaskHandle, TaskService
from roomcast.tasks.store_redis import RedisTaskStore

S = TaskStatus
WAIT = 5.0


@dataclass
class Node:
    url: str
    hub: Hub
    store: RedisTaskStore
    tasks: TaskService


@asynccontextmanager
async def node(url: str, **options: float) -> AsyncIterator[Node]:
    """One node on ``url``: started, and closed at the end (gracefully: lease released)."""
    hub = Hub(broker=RedisBroker(url), cluster=RedisCluster(url))
    await hub.start()
    store = RedisTaskStore(url)
    service = TaskService(hub, store, **options)  # type: ignore[arg-type]
    try:
        await store.open()
        await service.open()
        yield Node(url, hub, store, service)
    finally:
        await service.aclose()
        await hub.aclose()
        await store.aclose()


@pytest.fixture
async def nodes(redis_url: str) -> AsyncIterator[Callable[..., Awaitable[Node]]]:
    """``await nodes(**options)``-style factory: every node made is closed at the end."""
    url = fresh_url(redis_url)
    async with AsyncExitStack() as stack:

        async def make_node(**options: float) -> Node:
            return await stack.enter_async_context(node(url, **options))

        yield make_node


# -- compare-and-set: no lost update, terminal stays final ----------------------------------------


async def test_a_worker_reporting_through_two_nodes_loses_no_update(nodes: Callable[..., Awaitable[Node]]) -> None:
    """B holds progress not yet written while A writes the task: B's write is refused, B
    re-applies its progress over A's version, and both survive into the final task."""
    a = await nodes(progress_interval=0.0)
    b = await nodes(progress_interval=60.0)  # B's second report stays pending until a change
    watch = await recorder(a.hub, task_room("t1"))
    await a.tasks.create("import", id="t1")
    await b.tasks.report("t1", progress=10)  # starts it; B's first progress is written at once
    await watch.until(
        lambda: any(d["progress"] == 10 for e, d in watch.events(task_room("t1")) if e == "task:progress")
    )
    await b.tasks.report("t1", progress=20, step="b-step")  # pending on B, version behind soon
    await a.tasks.report("t1", message="from A")  # A reads the task again and writes it
    await watch.until(lambda: any(d["message"] == "from A" for _, d in watch.events(task_room("t1"))))
    done = await b.tasks.complete("t1", {"rows": 3})  # B's pending write is refused, then merged
    assert done.status is S.COMPLETED and done.result == {"rows": 3}
    assert (done.step, done.message) == ("b-step", "from A")  # neither node's report was lost
    stored = await a.store.get("t1")
    assert stored == done
    await watch.until_event(task_room("t1"), "task:completed")
    names = [e for e, _ in watch.events(task_room("t1"))]
    assert names.count("task:completed") == 1 and names[-1] == "task:completed"
    with pytest.raises(InvalidTransition):  # and the end is final on the other node too
        await a.tasks.fail("t1", "late")
    with pytest.raises(InvalidTransition):
        await a.tasks.report("t1", progress=99)
    assert await a.tasks.get("t1") == done and await b.tasks.get("t1") == done


async def test_two_nodes_ending_one_task_at_once_let_exactly_one_win(nodes: Callable[..., Awaitable[Node]]) -> None:
    a, b = await nodes(), await nodes()
    ids = [f"t{i}" for i in range(20)]
    watch = await recorder(b.hub, *(task_room(i) for i in ids))
    for task_id in ids:
        await a.tasks.create("race", id=task_id)
        await b.tasks.begin(task_id)  # both nodes now hold a record of it
        await a.tasks.get(task_id)
    outcomes = await asyncio.gather(
        *(a.tasks.complete(i, "a") for i in ids), *(b.tasks.fail(i, "b") for i in ids), return_exceptions=True
    )
    for n, task_id in enumerate(ids):
        by_a, by_b = outcomes[n], outcomes[n + len(ids)]
        winners = [o for o in (by_a, by_b) if isinstance(o, Task)]
        losers = [o for o in (by_a, by_b) if isinstance(o, BaseException)]
        assert len(winners) == 1 and len(losers) == 1, (by_a, by_b)
        assert isinstance(losers[0], InvalidTransition)
        assert await a.store.get(task_id) == winners[0]  # stored: the winner, untouched since
    ended = {"task:completed", "task:failed"}
    await watch.until(lambda: all(any(e in ended for e, _ in watch.events(task_room(i))) for i in ids))
    for task_id in ids:  # one end published per task, never two
        assert sum(e in ended for e, _ in watch.events(task_room(task_id))) == 1


# -- a stop sent to one node reaches the producer on another -------------------------------------


async def test_a_stop_sent_to_node_b_cancels_the_producer_running_on_node_a(
    nodes: Callable[..., Awaitable[Node]],
) -> None:
    a = await nodes(stop_grace=30.0)  # the grace cannot be what ends it in this test
    b = await nodes(stop_grace=30.0)
    cancelled = asyncio.Event()

    async def crawl(task: TaskHandle) -> None:
        task.progress(5, step="fetching")
        try:
            await asyncio.Event().wait()  # works until stopped
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = await a.tasks.spawn("crawl", crawl, id="t1")
    assert (await a.store.read("t1")).node == a.tasks.node_id  # type: ignore[union-attr]
    watch = await recorder(b.hub, task_room("t1"))
    began = time.monotonic()
    stopping = await b.tasks.request_stop(started.id, by="ann")
    assert stopping.status is S.STOPPING
    async with asyncio.timeout(WAIT):
        await cancelled.wait()  # the producer on A was cancelled, as by a local stop
    final = await watch.until_event(task_room("t1"), "task:cancelled", timeout=WAIT)
    assert time.monotonic() - began < 5.0
    assert final["status"] == "cancelled" and final["message"] == "stop requested by ann"  # not the grace
    names = [e for e, _ in watch.events(task_room("t1"))]
    assert names.index("task:stopping") < names.index("task:cancelled")
    assert (await b.tasks.get("t1")).status is S.CANCELLED


async def test_a_stop_for_a_node_that_cannot_be_reached_ends_at_the_grace(
    nodes: Callable[..., Awaitable[Node]],
) -> None:
    b = await nodes(stop_grace=0.2)
    await b.store.hold("gone", ttl=60)  # alive by its lease, deaf on the bus: a hung node
    await b.store.swap(make("t1", S.RUNNING), version=0, node="gone")
    watch = await recorder(b.hub, task_room("t1"))
    assert (await b.tasks.request_stop("t1")).status is S.STOPPING
    final = await watch.until_event(task_room("t1"), "task:cancelled")
    assert final["message"] == "stop not acknowledged within 0.2s"


# -- leases: a dead node's tasks, a restarted node, an external worker ---------------------------


async def test_a_dead_nodes_task_is_failed_as_node_lost_and_its_room_ends(
    nodes: Callable[..., Awaitable[Node]], redis_url: str
) -> None:
    b = await nodes(lease_ttl=0.6)  # renews every 0.2 s, sweeps once 0.6 s healthy
    async with key_events(redis_url, "*:lease:gone") as events:
        await b.store.hold("gone", ttl=0.5)  # what node "gone" did while it lived
        await b.store.swap(make("t1", S.RUNNING), version=0, node="gone")
        watch = await recorder(b.hub, task_room("t1"))
        async with asyncio.timeout(WAIT):
            await events.until("{rc-tasks}:lease:gone", "expired")  # then it died: no renewal
        lapsed = time.monotonic()
        failed = await watch.until_event(task_room("t1"), "task:failed", timeout=WAIT)
    took = time.monotonic() - lapsed
    assert failed["error"] == NODE_LOST_REASON and failed["progress"] == 42.5  # what it reached is kept
    assert took < 0.6 / 3 + 1.0, took  # within one beat of the lapse, with margin
    assert await b.hub.is_terminal(task_room("t1"))
    assert (await b.store.get("t1")).status is S.FAILED  # type: ignore[union-attr]


async def test_a_restarted_node_fails_nothing_that_a_live_node_runs(nodes: Callable[..., Awaitable[Node]]) -> None:
    """The bug of issue 13: B started next to A and failed A's running task 'server restarted'."""
    a = await nodes(lease_ttl=0.6)
    release = asyncio.Event()

    async def work(task: TaskHandle) -> str:
        task.progress(30)
        await release.wait()
        return "done"

    await a.tasks.spawn("crawl", work, id="held")
    await a.tasks.create("import", id="worker")  # a worker's, reported over HTTP
    await a.tasks.report("worker", progress=10)
    for _ in range(2):  # B starts, stops, starts again: a restart, each with a new node id
        async with node(a.url, lease_ttl=0.6) as b:
            assert b.tasks.node_id != a.tasks.node_id
            assert await b.tasks.sweep() == 0
            assert (await b.tasks.get("held")).status is S.RUNNING
            assert (await b.tasks.get("worker")).status is S.RUNNING
    watch = await recorder(a.hub, task_room("held"))
    release.set()
    await watch.until_event(task_room("held"), "task:completed")
    assert (await a.tasks.get("held")).result == "done"


async def test_an_external_workers_task_outlives_the_node_that_created_it(
    nodes: Callable[..., Awaitable[Node]],
) -> None:
    b = await nodes()
    async with node(b.url) as a:
        await a.tasks.create("import", id="w1")
        await a.tasks.report("w1", progress=10)
        assert (await a.store.read("w1")).node is None  # type: ignore[union-attr]  # held by no node
    # A is gone (its lease released): its own producers would be lost, the worker's task is not.
    assert await b.tasks.sweep() == 0
    assert (await b.tasks.get("w1")).status is S.RUNNING
    await b.tasks.report("w1", progress=50)  # the worker carries on through B
    assert (await b.tasks.complete("w1", 1)).status is S.COMPLETED


async def test_a_node_that_shuts_down_hands_its_unfinished_tasks_over_at_once(
    nodes: Callable[..., Awaitable[Node]],
) -> None:
    b = await nodes()
    async with node(b.url) as a:
        live = await a.tasks.spawn("crawl", _forever, id="spawned")
        assert live.status is S.RUNNING
        # An application's own ``start`` block, left running when the service closes.
        entered = asyncio.Event()

        async def app_producer() -> None:
            async with a.tasks.start("crawl", id="left") as task:
                task.progress(10)
                entered.set()
                await asyncio.Event().wait()

        job = asyncio.create_task(app_producer())
        async with asyncio.timeout(WAIT):
            await entered.wait()
    # A's close cancelled what it spawned (failed, said why) and released its lease: what the
    # application left running is not waited for until a lease lapses.
    assert (await b.tasks.get("spawned")).error == "producer was cancelled"
    assert await b.tasks.sweep() == 1
    left = await b.tasks.get("left")
    assert left.status is S.FAILED and left.error == NODE_LOST_REASON
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)


async def test_an_overdue_task_no_live_node_watches_is_timed_out_by_any_node(
    nodes: Callable[..., Awaitable[Node]],
) -> None:
    b = await nodes()
    late = make("late", S.RUNNING, deadline=time.time() - 1)  # its creator died before its timer fired
    await b.store.swap(late, version=0, node=None)
    watch = await recorder(b.hub, task_room("late"))
    assert await b.tasks.sweep() == 1
    ended = await watch.until_event(task_room("late"), "task:timed_out")
    assert ended["error"] == "deadline exceeded"


async def test_a_poller_holds_the_task_it_follows_on_its_node(nodes: Callable[..., Awaitable[Node]]) -> None:
    a = await nodes()
    task = await a.tasks.create("render", id="p1")
    assert (await a.store.read("p1")).node is None  # type: ignore[union-attr]
    held = await a.tasks.hold(task.id)
    assert held.status is S.PENDING and (await a.store.read("p1")).node == a.tasks.node_id  # type: ignore[union-attr]
    await a.tasks.cancel("p1")
    with pytest.raises(InvalidTransition):
        await a.tasks.hold("p1")


async def _forever(task: TaskHandle) -> None:
    await asyncio.Event().wait()
