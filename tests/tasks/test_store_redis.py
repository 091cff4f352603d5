"""RedisTaskStore only: leases and orphans, overdue tasks, namespaces, and a Redis that is gone.

On the session's real redis-server (emptied per test) or, where the test kills it, one of its
own. What every store does is in ``test_store.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from keyspace import KeyEvents, key_events
from redisserver import fresh_url, running_redis
from taskstores import make

from roomcast.errors import BrokerUnavailable, InvalidState, TaskError
from roomcast.tasks.model import TaskStatus
from roomcast.tasks.store import Leases, TaskStore
from roomcast.tasks.store_redis import RedisTaskStore

S = TaskStatus
WAIT = 5.0


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisTaskStore]:
    s = RedisTaskStore(fresh_url(redis_url))
    await s.open()
    yield s
    await s.aclose()


def test_implements_the_protocols(redis_url: str) -> None:
    store: TaskStore = RedisTaskStore(redis_url)  # mypy checks the structural match
    leases: Leases | None = store.leases
    assert leases is store


async def test_a_running_task_of_a_node_whose_lease_lapsed_is_an_orphan(store: RedisTaskStore, redis_url: str) -> None:
    async with key_events(redis_url, "*:lease:a") as events:
        await store.hold("a", ttl=1.0)  # long enough to write the tasks below first
        await check_orphans_once_expired(store, events)


async def check_orphans_once_expired(store: RedisTaskStore, events: KeyEvents) -> None:
    await store.hold("b", ttl=60)
    await store.swap(make("on-a", S.RUNNING), version=0, node="a")
    await store.swap(make("on-b", S.RUNNING), version=0, node="b")
    await store.swap(make("worker", S.RUNNING), version=0, node=None)  # an external worker's
    await store.swap(make("done-on-a", S.COMPLETED), version=0, node="a")
    assert await store.orphans() == []  # every lease alive
    async with asyncio.timeout(WAIT):  # Redis expires the key by itself, unrenewed
        await events.until("{rc-tasks}:lease:a", "expired")
    orphans = await store.orphans()
    assert [(o.task.id, o.node, o.version) for o in orphans] == [("on-a", "a", 1)]


async def test_an_orphan_ends_once_failed_and_a_released_lease_frees_its_tasks_at_once(store: RedisTaskStore) -> None:
    await store.hold("a", ttl=60)
    running = make("t1", S.RUNNING)
    await store.swap(running, version=0, node="a")
    await store.release("a")  # a node shutting down hands its tasks over
    [orphan] = await store.orphans()
    failed = orphan.task.fail(time.time(), "node lost")
    assert (await store.swap(failed, version=orphan.version, node=orphan.node)).ok
    assert await store.orphans() == []
    # A second survivor that read the orphan before the first one failed it is refused.
    late = await store.swap(orphan.task.fail(time.time(), "node lost"), version=orphan.version, node="a")
    assert not late.ok and late.stored is not None and late.stored.task == failed


async def test_a_task_moved_to_another_node_follows_that_nodes_lease(store: RedisTaskStore) -> None:
    await store.hold("b", ttl=60)
    task = make("t1", S.RUNNING)
    await store.swap(task, version=0, node="a")  # "a" never held a lease: an orphan at once
    assert [o.task.id for o in await store.orphans()] == ["t1"]
    await store.swap(task.progress_to(3.0, 50), version=1, node="b")  # "b" picked it up
    assert await store.orphans() == []


async def test_overdue_lists_unfinished_tasks_past_their_deadline_that_no_live_node_holds(
    store: RedisTaskStore,
) -> None:
    await store.hold("live", ttl=60)
    await store.swap(make("worker-late", S.RUNNING, deadline=10.0), version=0, node=None)
    await store.swap(make("dead-late", S.RUNNING, deadline=10.0), version=0, node="gone")
    await store.swap(make("live-late", S.RUNNING, deadline=10.0), version=0, node="live")
    await store.swap(make("worker-early", S.RUNNING, deadline=99.0), version=0, node=None)
    await store.swap(make("done-late", S.COMPLETED, deadline=10.0), version=0, node=None)
    late = {o.task.id for o in await store.overdue(now=50.0, limit=10)}
    assert late == {"worker-late", "dead-late"}  # a live node times its own out on its timer
    assert len(await store.overdue(now=50.0, limit=1)) == 1
    assert {o.task.id for o in await store.overdue(now=100.0, limit=10)} == {"worker-late", "dead-late", "worker-early"}


async def test_mark_interrupted_is_refused_on_a_shared_store(store: RedisTaskStore) -> None:
    await store.swap(make("t1", S.RUNNING), version=0, node="a")
    with pytest.raises(TaskError, match="shared by live servers"):
        await store.mark_interrupted("server restarted", time.time())
    stored = await store.get("t1")
    assert stored is not None and stored.status is S.RUNNING


async def test_two_namespaces_on_one_redis_do_not_see_each_other(redis_url: str) -> None:
    url = fresh_url(redis_url)
    one, two = RedisTaskStore(url, namespace="hub-one"), RedisTaskStore(url, namespace="hub-two")
    try:
        await one.put(make("t1"))
        assert await two.get("t1") is None and await two.list() == ([], None)
        client = aioredis.from_url(url)
        try:
            keys = {key.decode() for key in await client.keys("*")}
        finally:
            await client.aclose()
        assert keys and all(key.startswith("{hub-one}:") for key in keys)  # one hash tag: one slot
    finally:
        await one.aclose()
        await two.aclose()


def test_a_namespace_with_braces_is_refused(redis_url: str) -> None:
    with pytest.raises(ValueError, match="braces"):
        RedisTaskStore(redis_url, namespace="a}b")


async def test_a_redis_that_is_gone_is_broker_unavailable_not_a_silent_success() -> None:
    with running_redis() as server:
        store = RedisTaskStore(server.url)
        try:
            await store.open()
            assert await store.put(make("t1")) is True
            server.kill()
            with pytest.raises(BrokerUnavailable, match="task store"):
                await store.put(make("t2"))
            with pytest.raises(BrokerUnavailable):
                await store.get("t1")
        finally:
            await store.aclose()


async def test_closed_store_refuses_calls_and_closes_once(redis_url: str) -> None:
    store = RedisTaskStore(redis_url)
    await store.aclose()
    await store.aclose()
    with pytest.raises(InvalidState, match="closed"):
        await store.get("t1")
    with pytest.raises(InvalidState):
        await store.put(make("t2"))
