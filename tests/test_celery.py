"""``roomcast.celery`` with a real ``celery worker`` process and redis-server as its broker.

Per path, once per module: a roomcast server in this test's event loop (plain, the worker
reports through ``Publisher`` over HTTP; or on Redis, ``serve --redis`` as the test's
``brokers.make_app`` builds it, the worker writing through ``RedisPublisher``), and one
``celery worker`` (prefork, one child, ``celeryjobs``; ``celeryworker``) started once and
ended by its PID.
The test sends the jobs itself, from this coroutine, as a FastAPI ``async def`` would, and
follows them as a page does, over SSE, subscribed before the job is even sent.

Because the HTTP path's server runs in this very loop, a blocking roomcast call made while
sending could not be answered: the send would hang until the Publisher's timeout. The jobs
completing is the proof that sending never blocked the loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import brokers
import celeryjobs
import pytest
import pytest_asyncio
import redis
from celery.utils import uuid
from celeryworker import celery_worker
from servers import RunningServer, running
from sseclient import SseStream, open_sse

from roomcast import Publisher
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
WAIT = 20.0
CELERY_DB = 9
"""The Celery broker's database: apart from db 0, which the Redis-path server empties."""


@dataclass
class Rig:
    path: str
    srv: RunningServer
    worker: asyncio.subprocess.Process

    def stopper(self) -> Publisher:
        return Publisher(self.srv.url)


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=["http", "redis"])
async def rig(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Rig]:
    path: str = request.param
    broker = redis_url.rsplit("/", 1)[0] + f"/{CELERY_DB}"
    redis.Redis.from_url(broker).flushdb()
    app = App(Hub(), Settings(task_db=":memory:")) if path == "http" else brokers.make_app("redis")
    async with running(app) as srv:
        target = srv.url if path == "http" else str(app.settings.redis_url)
        celeryjobs.configure(broker, target)
        env = {
            "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "CELERYJOBS_BROKER": broker,
            "CELERYJOBS_ROOMCAST": target,
        }
        async with celery_worker("celeryjobs", cwd=TESTS, env=env) as worker:
            yield Rig(path, srv, worker)


async def _to_end(stream: SseStream) -> list[tuple[str, Any]]:
    """Every event of a task room until the server ends the stream (the task ended)."""
    return [(e.event, e.json()) for e in await stream.until_end(timeout=WAIT)]


async def _until(stream: SseStream, event: str) -> list[tuple[str, Any]]:
    """Events up to and including the first ``event``."""
    seen = []
    while True:
        e = await stream.next(timeout=WAIT)
        seen.append((e.event, e.json()))
        if e.event == event:
            return seen


async def test_a_page_follows_a_job_from_before_it_is_sent_to_its_result_and_a_late_page_gets_it(rig: Rig) -> None:
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        first = await page.next(timeout=WAIT)
        assert first.event == "snapshot" and first.json()["snapshot"] is None  # nothing sent yet
        began = time.monotonic()
        sent = celeryjobs.render.apply_async(  # in the loop, as an async view does
            (3,), task_id=tid, roomcast_owner="ann", roomcast_title="sketch 7"
        )
        assert time.monotonic() - began < 1.0 and sent.id == tid
        events = await _to_end(page)
    names = [name for name, _ in events]
    assert names[:2] == ["task:created", "task:updated"], names
    created, started = events[0][1], events[1][1]
    assert (created["status"], created["kind"], created["owner"], created["title"]) == (
        "pending",
        "celeryjobs.render",
        "ann",
        "sketch 7",
    )
    assert created["metadata"] == {"celery_task": "celeryjobs.render"}
    assert started["status"] == "running"
    progress = [data for name, data in events if name == "task:progress"]
    assert progress and all(p["status"] == "running" for p in progress)
    assert progress[-1]["step"] == "packing" and progress[-1]["progress"] == 90  # update_state(current 9 of 10)
    assert names[-1] == "task:completed"
    done = events[-1][1]
    assert (done["result"], done["progress"]) == ({"parts": 3}, 100)
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as late:
        finals = await _to_end(late)
    assert [name for name, _ in finals] == ["snapshot"]
    assert finals[0][1]["snapshot"]["status"] == "completed"
    assert finals[0][1]["snapshot"]["result"] == {"parts": 3}


async def test_a_job_sent_by_name_without_tracking_is_created_by_the_worker(rig: Rig) -> None:
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        await page.next(timeout=WAIT)
        celeryjobs.app.send_task("celeryjobs.render", (1,), task_id=tid)  # no RoomcastTask on this side
        events = await _to_end(page)
    assert [name for name, _ in events][:2] == ["task:created", "task:updated"]
    assert events[0][1]["metadata"] == {"celery_task": "celeryjobs.render"}
    assert events[-1][0] == "task:completed" and events[-1][1]["result"] == {"parts": 1}


async def test_a_stop_ends_a_job_that_checks_for_it_as_cancelled(rig: Rig) -> None:
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        await page.next(timeout=WAIT)
        celeryjobs.crawl.apply_async(task_id=tid)
        await _until(page, "task:progress")
        stopping = await rig.stopper().astop_task(tid, by="ann")
        assert stopping["status"] == "stopping"
        events = await _to_end(page)
    assert [name for name, _ in events][-1] == "task:cancelled"
    assert events[-1][1]["message"] == "stopped"  # the job's own end, not the server's grace


async def test_a_job_stopped_while_queued_never_runs(rig: Rig) -> None:
    busy, queued, after = uuid(), uuid(), uuid()
    stopper = rig.stopper()
    async with open_sse(rig.srv.url, [f"task:{busy}"]) as page:
        await page.next(timeout=WAIT)
        celeryjobs.crawl.apply_async(task_id=busy)  # takes the worker's only child
        await _until(page, "task:updated")
        celeryjobs.render.apply_async((1,), task_id=queued)
        async with open_sse(rig.srv.url, [f"task:{queued}"]) as queued_page:
            await queued_page.next(timeout=WAIT)
            cancelled = await stopper.astop_task(queued, by="ann")
            assert cancelled["status"] == "cancelled"  # a pending task has nobody to ask: at once
            await stopper.astop_task(busy)
            await _to_end(page)
            async with open_sse(rig.srv.url, [f"task:{after}"]) as after_page:
                await after_page.next(timeout=WAIT)
                celeryjobs.render.apply_async((1,), task_id=after)  # queued behind the stopped one
                assert [name for name, _ in await _to_end(after_page)][-1] == "task:completed"
            events = await _to_end(queued_page)
    # The worker took the stopped job before the later one, and skipped it: never running.
    assert all(data["status"] in ("pending", "cancelled") for _, data in events), events
    final = await stopper.aget_task(queued)
    assert final["status"] == "cancelled" and final["started_at"] is None
    state = await asyncio.to_thread(lambda: celeryjobs.app.AsyncResult(queued).state)
    assert state == "PENDING"  # never run: an ignored job stores no state (a run would be SUCCESS)
    assert await asyncio.to_thread(lambda: celeryjobs.app.AsyncResult(after).state) == "SUCCESS"


async def test_a_job_that_expired_before_a_worker_took_it_ends_cancelled(rig: Rig) -> None:
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        await page.next(timeout=WAIT)
        celeryjobs.render.apply_async((1,), task_id=tid, expires=datetime.now(UTC) - timedelta(seconds=1))
        events = await _to_end(page)
    assert [name for name, _ in events] == ["task:created", "task:cancelled"]
    assert events[-1][1]["message"] == "expired before it ran"


@pytest.mark.parametrize(
    ("job", "args", "error"),
    [
        ("explode", ("the sketch has no outline",), "ValueError: the sketch has no outline"),
        ("overshoot", (), "InvalidProgress: progress must be a finite number from 0 to 100, got 150"),
    ],
)
async def test_a_failure_ends_the_task_with_the_exception(
    rig: Rig, job: str, args: tuple[Any, ...], error: str
) -> None:
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        await page.next(timeout=WAIT)
        getattr(celeryjobs, job).apply_async(args, task_id=tid)
        events = await _to_end(page)
    assert events[-1][0] == "task:failed"
    assert events[-1][1]["error"] == error


async def test_a_tracked_task_of_an_app_without_a_publisher_is_refused_before_it_is_sent() -> None:
    from celery import Celery

    from roomcast.celery import RoomcastTask

    untracked = Celery("untracked", broker="redis://127.0.0.1:1/0")  # never reached

    @untracked.task(base=RoomcastTask)
    def orphan() -> None: ...

    with pytest.raises(RuntimeError, match=r"roomcast\.celery\.track\(app, Publisher"):
        orphan.delay()


async def test_retries_show_in_the_step_while_the_task_stays_running(rig: Rig) -> None:
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        await page.next(timeout=WAIT)
        celeryjobs.flaky.apply_async((2,), task_id=tid)
        events = await _to_end(page)
    statuses = [data["status"] for _, data in events]
    assert statuses[0] == "pending" and statuses[-1] == "completed"
    assert set(statuses[1:-1]) == {"running"}  # never back to pending
    retries = [data for _, data in events if (data["step"] or "").startswith("retry ")]
    assert retries, events
    assert retries[-1]["step"] in ("retry 1/3", "retry 2/3")
    assert retries[-1]["message"] == f"{retries[-1]['step']}: ConnectionError: upstream down"
    assert events[-1][1]["result"] == {"attempts": 3}


async def test_a_stop_revokes_a_job_that_never_checks(rig: Rig) -> None:
    # Last in the module: under prefork, Celery takes seconds to hand jobs to the child that
    # replaces a terminated one, and no test after this one should wait for that.
    tid = uuid()
    async with open_sse(rig.srv.url, [f"task:{tid}"]) as page:
        await page.next(timeout=WAIT)
        began = time.monotonic()
        celeryjobs.stuck.apply_async(task_id=tid)
        await _until(page, "task:updated")  # running: the worker's child is asleep in it
        await rig.stopper().astop_task(tid, by="ann")
        events = await _to_end(page)
    assert [name for name, _ in events][-1] == "task:cancelled"
    assert events[-1][1]["message"] == "revoked (terminated)"
    assert time.monotonic() - began < celeryjobs.LONGEST_JOB / 2  # ended by the revoke, not by waking up
