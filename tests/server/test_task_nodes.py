"""Tasks across real ``roomcast serve --redis`` processes sharing one redis-server (issue 13).

The producer on a node is an upstream poller (``POST /api/tasks`` with ``"poll"``): the one
in-process producer a plain ``roomcast serve`` runs. Its upstream is a real ``aiohttp.web``
server on 127.0.0.1 that always says the job is running. Subscribers are SSE streams on the
task's own route, so they see what a browser would.

* A stop POSTed to node B reaches the poller on node A, which acknowledges it: the task ends
  ``cancelled`` long before the stop grace (30 s here) could have done it.
* A node SIGKILLed while it runs a task: a surviving node fails that task with "node lost"
  within the lease time plus one beat, a subscriber gets the failure and the stream ends
  (the room is terminal), while the task of an external worker that the dead node created
  carries on. A restarted node (a new process, a new node id) fails none of the live node's
  tasks: the bug where it marked them "failed: server restarted".
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from redisserver import fresh_url
from sseclient import open_sse
from test_task_restart import WAIT, serving

from roomcast import Publisher
from roomcast.tasks.service import NODE_LOST_REASON

GRACE = "30"  # a stop grace no test waits for: an end before it was the producer's doing


class Jobs:
    """An upstream whose every job is running at 10 %; counts the requests per job."""

    def __init__(self) -> None:
        self.base = ""
        self.hits: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        return web.json_response({"state": "running", "percent": 10})

    def spec(self, name: str) -> dict[str, Any]:
        """The ``poll`` spec that follows job ``name`` every 0.2 s."""
        return {
            "url": f"{self.base}/jobs/{name}",
            "interval": 0.2,
            "fields": {"progress": "percent", "status": "state"},
        }


@pytest.fixture
async def jobs() -> AsyncIterator[Jobs]:
    up = Jobs()
    app = web.Application()
    app.router.add_get("/jobs/{name}", up.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    up.base = f"http://{host}:{port}"
    try:
        yield up
    finally:
        await runner.cleanup()


LEASE_TTL = 3.0
"""Shorter than the default (``DEFAULT_LEASE_TTL``): a killed node's tasks lapse sooner, the
same rules apply."""


def node_args(url: str, jobs: Jobs) -> tuple[str, ...]:
    return (
        "--redis",
        url,
        "--task-stop-grace",
        GRACE,
        "--poll-allow",
        jobs.base + "/",
        "--task-lease-ttl",
        str(LEASE_TTL),
    )


async def test_a_stop_posted_to_node_b_reaches_the_producer_running_on_node_a(
    tmp_path: Path, redis_url: str, jobs: Jobs
) -> None:
    url = fresh_url(redis_url)
    async with (
        serving(tmp_path / "a.db", *node_args(url, jobs)) as (_, a),
        serving(tmp_path / "b.db", *node_args(url, jobs)) as (_, b),
    ):
        task = await Publisher(a).acreate_task("render", poll=jobs.spec("one"))  # followed on A
        assert task["status"] == "running"
        async with open_sse(b, [], path=f"/tasks/{task['id']}/events") as stream:
            assert (await stream.next(WAIT)).event == "snapshot"
            began = time.monotonic()
            stopping = await Publisher(b).astop_task(task["id"], by="ann")  # to the other node
            assert stopping["status"] == "stopping"
            events = await stream.until_end(WAIT)  # the room ends with the task
        took = time.monotonic() - began
        names = [e.event for e in events]
        assert "task:stopping" in names and names[-1] == "task:cancelled", names
        final = events[-1].json()
        assert final["message"] == "stop requested by ann"  # acknowledged, not forced by the grace
        assert took < 10, took
        assert (await Publisher(a).aget_task(task["id"]))["status"] == "cancelled"
        assert not (tmp_path / "a.db").exists()  # with --redis the --task-db file is not used


async def test_a_killed_node_s_task_fails_as_node_lost_and_a_restarted_node_fails_nothing_live(
    tmp_path: Path, redis_url: str, jobs: Jobs
) -> None:
    url = fresh_url(redis_url)
    async with contextlib.AsyncExitStack() as stack:
        proc_a, a = await stack.enter_async_context(serving(tmp_path / "a.db", *node_args(url, jobs)))
        proc_b, b = await stack.enter_async_context(serving(tmp_path / "b.db", *node_args(url, jobs)))
        on_a = await Publisher(a).acreate_task("render", poll=jobs.spec("on-a"))  # held by A
        on_b = await Publisher(b).acreate_task("render", poll=jobs.spec("on-b"))  # held by B
        worker = await Publisher(b).acreate_task("import")  # created on B, reported by a worker
        await Publisher(b).areport(worker["id"], progress=20)

        async with open_sse(a, [], path=f"/tasks/{on_b['id']}/events") as stream:
            assert (await stream.next(WAIT)).json()["snapshot"]["status"] == "running"
            proc_b.send_signal(signal.SIGKILL)  # B dies: no shutdown, no lease release
            await asyncio.wait_for(proc_b.wait(), WAIT)
            killed = time.monotonic()

            # B comes back as a new process, next to A: it fails nothing that A runs.
            _, b2 = await stack.enter_async_context(serving(tmp_path / "b2.db", *node_args(url, jobs)))
            assert (await Publisher(b2).aget_task(on_a["id"]))["status"] == "running"

            # B's own task fails once B's lease lapses: the subscriber on A gets it, then the end.
            limit = LEASE_TTL + LEASE_TTL / 3 + 5
            while (event := await stream.next(limit)).event != "task:failed":
                assert event.event == "task:progress", event.event
            lost = time.monotonic() - killed
            failed = event.json()
            assert failed["error"] == NODE_LOST_REASON and failed["progress"] == 10
            assert await stream.until_end(WAIT) == []  # the room is terminal: the stream ends
        assert lost <= limit, lost

        # What lives on is untouched: A's running task, and the worker's task B created.
        assert (await Publisher(b2).aget_task(on_a["id"]))["status"] == "running"
        assert (await Publisher(a).aget_task(worker["id"]))["status"] == "running"
        assert (await Publisher(b2).areport(worker["id"], progress=60))["status"] == "running"
        assert (await Publisher(b2).acomplete_task(worker["id"], {"rows": 9}))["status"] == "completed"
        assert proc_a.returncode is None
