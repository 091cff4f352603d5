"""A graceful shutdown (SIGTERM, a deploy) must lose nothing it acknowledged and acknowledge
nothing it cannot deliver: stop accepting, then flush, then close.

Two failures this plays for real, each once found on a real server:

* progress a worker reported inside the coalescing window was answered 200 and then never
  written, since closing the task service cancelled the flusher that held it;
* a publication or a report answered 200 after the subscribers had been disconnected
  reached nobody: only connections opened before the signal can still reach the server
  then (it stops listening first), which is what a backend's HTTP client pool keeps.

Real ``roomcast serve`` processes (``test_task_restart``'s helpers), and one in-process
``App`` on the native door where a test must hold the shutdown at a chosen step.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from servers import running
from sseclient import SseStream, open_sse
from test_task_restart import WAIT, serving

from roomcast import Publisher
from roomcast.errors import ShuttingDown
from roomcast.server.app import App
from roomcast.tasks.service import TaskHandle

TASKS = 5


async def _until_progress(stream: SseStream, progress: float) -> None:
    """Read the task's stream until it shows ``progress`` (published after it was stored), in
    an update or in the snapshot a subscriber gets first."""
    while True:
        data = (await stream.next(WAIT)).json()
        if data.get("snapshot", data).get("progress") == progress:
            return


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(url, json=body) as response:
        return response.status, await response.json()


async def _until_not_ready(http: aiohttp.ClientSession, url: str) -> None:
    """Ask ``/readyz`` until it answers 503: the server has begun its shutdown."""
    async with asyncio.timeout(WAIT):
        while True:
            async with http.get(f"{url}/readyz") as response:
                await response.read()
                if response.status == 503:
                    return


async def test_progress_acknowledged_right_before_sigterm_is_stored(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with serving(db) as (proc, url):
        publisher = Publisher(url)
        ids = [(await publisher.acreate_task("crawl", title=f"crawl {i}"))["id"] for i in range(TASKS)]
        for task_id in ids:
            await publisher.areport(task_id, progress=10)  # the first report is written at once
        for task_id in ids:  # inside the coalescing window: acknowledged, not written yet
            assert (await publisher.areport(task_id, progress=57))["progress"] == 57
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0

    async with serving(db) as (_proc, url):
        publisher = Publisher(url)
        for task_id in ids:
            task = await publisher.aget_task(task_id)
            assert (task["status"], task["error"], task["progress"]) == ("failed", "server restarted", 57)


async def test_after_sigterm_publications_and_reports_are_refused_and_pending_progress_goes_out(
    tmp_path: Path,
) -> None:
    """The test holds SQLite's write lock, so the server's shutdown waits in its last progress
    write (for up to its 5 s busy timeout) while the test sends what arrives too late."""
    db = tmp_path / "tasks.db"
    connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection, opened before the signal
    # Grace 0: the shutdown's own steps at once. A drain (test_drain) would keep serving the
    # API and move the subscriber away first; this is about what comes after it.
    async with (
        serving(db, "--shutdown-grace", "0") as (proc, url),
        aiohttp.ClientSession(connector=connector) as http,
    ):
        publisher = Publisher(url)
        task_id = (await publisher.acreate_task("crawl"))["id"]
        async with open_sse(url, [], path=f"/tasks/{task_id}/events") as stream:
            assert (await stream.next(WAIT)).json()["snapshot"]["status"] == "pending"
            status, _ = await _post(http, f"{url}/api/tasks/{task_id}/progress", {"progress": 10})
            assert status == 200
            await _until_progress(stream, 10)

            blocker = sqlite3.connect(db, isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                status, task = await _post(http, f"{url}/api/tasks/{task_id}/progress", {"progress": 57})
                assert (status, task["progress"]) == (200, 57)
                proc.send_signal(signal.SIGTERM)
                await _until_not_ready(http, url)

                for path, body in [
                    ("/api/publish", {"room": f"task:{task_id}", "event": "late", "data": 1}),
                    (f"/api/tasks/{task_id}/progress", {"progress": 60}),
                    (f"/api/tasks/{task_id}/complete", {"result": "late"}),
                    ("/api/tasks", {"kind": "crawl"}),
                ]:
                    status, answer = await _post(http, url + path, body)
                    assert (status, answer["error"]["code"]) == (503, "shutting_down"), (path, answer)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()

            # The subscriber was still connected for the last write: 57 reaches it, then the end.
            events = await stream.until_end(WAIT)
            assert [e.json().get("progress") for e in events if e.event == "task:progress"] == [57]
            assert all(e.event != "late" for e in events)
        assert await asyncio.wait_for(proc.wait(), WAIT) == 0

    async with serving(db) as (_proc, url):
        task = await Publisher(url).aget_task(task_id)
        assert (task["status"], task["progress"]) == ("failed", 57)


async def test_shutdown_refuses_new_work_before_it_flushes_and_disconnects_last(
    make_app: Callable[..., App],
) -> None:
    """In process, held at a known step: a producer that is slow to wind down keeps the task
    service closing while the test checks what is refused and who still listens."""
    app = make_app()
    winding_down, release = asyncio.Event(), asyncio.Event()

    async def producer(task: TaskHandle) -> None:
        task.progress(10)
        try:
            await asyncio.Event().wait()  # until the shutdown cancels it
        except asyncio.CancelledError:
            winding_down.set()
            await asyncio.wait_for(release.wait(), WAIT)  # bounded: a failing test must not hang
            raise

    connector = aiohttp.TCPConnector(limit=1)
    async with running(app) as srv, aiohttp.ClientSession(connector=connector) as http:
        task = await app.tasks.spawn("crawl", producer)
        async with open_sse(srv.url, [], path=f"/tasks/{task.id}/events") as stream:
            await _until_progress(stream, 10)
            async with http.get(f"{srv.url}/readyz") as response:  # opens the keep-alive connection
                assert response.status == 200
            shutdown = asyncio.create_task(app.shutdown())
            await asyncio.wait_for(winding_down.wait(), WAIT)

            with pytest.raises(ShuttingDown):
                await app.tasks.report(task.id, progress=20)
            with pytest.raises(ShuttingDown):
                await app.tasks.create("crawl")
            status, answer = await _post(http, f"{srv.url}/api/publish", {"room": "news", "event": "late"})
            assert (status, answer["error"]["code"]) == (503, "shutting_down")

            release.set()
            events = await stream.until_end(WAIT)  # the end is published before the stream closes
            assert events and events[-1].event == "task:failed"  # after, maybe, the flush of the 10
            assert events[-1].json()["error"] == "producer was cancelled"
            await asyncio.wait_for(shutdown, WAIT)
        assert not srv.app.hub.connections
