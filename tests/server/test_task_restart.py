"""A server *process* restarted in the middle of a task: the task store is what carries over.

Real ``roomcast serve`` processes on 127.0.0.1 sharing one SQLite file. A worker reports
through the API, then the server dies (SIGKILL: a crash; SIGTERM: a deploy). The next
process must still have every finished task with its result, must have failed the task that
was running with the reason (not forgotten it, not left it "running" for ever), and must
give a late subscriber that final state at once. Whatever the API acknowledged as a status
change must be in the file even after a SIGKILL right after the answer, and one file has one
server: a second one is refused before it can fail the first one's tasks.

``start_server``, ``listening_url``, ``serving`` and ``stored_statuses`` are shared with
``test_shutdown.py``.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sseclient import open_sse

from roomcast import Publisher
from roomcast.errors import PublishError

WAIT = 20.0
LISTENING = re.compile(rb"listening on (http://127\.0\.0\.1:\d+)")


async def start_server(db: Path, *extra: str) -> asyncio.subprocess.Process:
    """Start ``roomcast serve`` on a free port with tasks in ``db``; stdout and stderr piped
    together. The caller ends it (``serving`` does)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        "--port",
        "0",
        "--task-db",
        str(db),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "ROOMCAST_TASK_DB": str(db)},
    )


async def listening_url(proc: asyncio.subprocess.Process) -> str:
    """Read the server's output until it says where it listens; returns that base URL."""
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT):
        while True:
            line = await proc.stdout.readline()
            assert line, "the server exited before it listened"
            found = LISTENING.search(line)
            if found:
                return found.group(1).decode()


@asynccontextmanager
async def serving(db: Path, *extra: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A ``roomcast serve`` process on a free port; yields it and its base URL, and kills it
    (by its pid) at the end unless the test ended it."""
    proc = await start_server(db, *extra)
    try:
        yield proc, await listening_url(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), WAIT)


def stored_statuses(db: Path) -> dict[str, str]:
    """Each task's status as the SQLite file has it: what a dead server left, read directly."""
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT id, status FROM tasks"))
    finally:
        conn.close()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "graceful"])
async def test_a_task_running_when_the_server_dies_is_failed_with_the_reason_after_restart(
    tmp_path: Path, signum: signal.Signals
) -> None:
    db = tmp_path / "tasks.db"
    async with serving(db) as (proc, url):
        publisher = Publisher(url)
        done = await publisher.acreate_task("import", title="finished before")
        await publisher.acomplete_task(done["id"], {"rows": 1200})
        running = await publisher.acreate_task("crawl", title="mid-way", owner="ann")
        # Wait until the progress is out (published after it was stored), not a fixed time.
        async with open_sse(url, [], path=f"/tasks/{running['id']}/events") as stream:
            assert (await stream.next(WAIT)).json()["snapshot"]["status"] == "pending"
            await publisher.areport(running["id"], progress=40, step="fetching", message="page 40 of 100")
            while (await stream.next(WAIT)).json().get("progress") != 40:
                pass
        proc.send_signal(signum)
        await asyncio.wait_for(proc.wait(), WAIT)

    async with serving(db) as (_proc, url):
        publisher = Publisher(url)
        failed = await publisher.aget_task(running["id"])
        assert failed["status"] == "failed"
        assert failed["error"] == "server restarted"
        assert failed["progress"] == 40 and failed["step"] == "fetching"  # what it had reached is kept

        kept = await publisher.aget_task(done["id"])
        assert kept["status"] == "completed" and kept["result"] == {"rows": 1200}

        # A late subscriber gets the final state at once, then the stream ends.
        async with open_sse(url, [], path=f"/tasks/{running['id']}/events") as stream:
            events = await stream.until_end(WAIT)
        assert [e.event for e in events] == ["snapshot"]
        assert events[0].json()["snapshot"]["status"] == "failed"

        # The worker that survived the server cannot resurrect the task: refused with a reason.
        with pytest.raises(PublishError) as refused:
            await publisher.areport(running["id"], progress=50)
        assert refused.value.status == 409

        listed = await publisher.alist_tasks(status="failed")
        assert [t["id"] for t in listed["tasks"]] == [running["id"]]


@pytest.mark.parametrize("last", ["completion", "stop"])
async def test_a_completion_and_a_stop_acknowledged_right_before_a_crash_are_stored(tmp_path: Path, last: str) -> None:
    """SIGKILL leaves no time to write anything: the answer must have waited for the store."""
    db = tmp_path / "tasks.db"
    async with serving(db) as (proc, url):
        publisher = Publisher(url)
        done = await publisher.acreate_task("import")
        stopped = await publisher.acreate_task("crawl")
        for task in (done, stopped):
            await publisher.areport(task["id"], progress=30)  # running
        acknowledge = {
            "completion": lambda: publisher.acomplete_task(done["id"], {"rows": 7}),
            "stop": lambda: publisher.astop_task(stopped["id"], by="ann"),
        }
        answers = {name: await acknowledge[name]() for name in sorted(acknowledge, key=lambda n: n == last)}
        assert answers["completion"]["status"] == "completed" and answers["stop"]["status"] == "stopping"
        proc.send_signal(signal.SIGKILL)  # right after the last answer, `last`
        await asyncio.wait_for(proc.wait(), WAIT)

    assert stored_statuses(db) == {done["id"]: "completed", stopped["id"]: "stopping"}

    async with serving(db) as (_proc, url):
        publisher = Publisher(url)
        kept = await publisher.aget_task(done["id"])
        assert kept["status"] == "completed" and kept["result"] == {"rows": 7}
        interrupted = await publisher.aget_task(stopped["id"])  # stopping, its producer gone: failed
        assert interrupted["status"] == "failed" and interrupted["error"] == "server restarted"


async def test_a_second_server_on_the_same_task_database_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "tasks.db"
    async with serving(db) as (first, url):
        publisher = Publisher(url)
        task = await publisher.acreate_task("crawl")
        await publisher.areport(task["id"], progress=40)

        second = await start_server(db)
        try:
            assert second.stdout is not None
            output = await asyncio.wait_for(second.stdout.read(), WAIT)  # all of it: it exits
            assert await asyncio.wait_for(second.wait(), WAIT) != 0
        finally:
            if second.returncode is None:
                second.kill()
                await asyncio.wait_for(second.wait(), WAIT)
        assert b"is in use by another roomcast server (pid %d)" % first.pid in output, output.decode()
        assert b"listening on" not in output

        # Neither in the first server's memory nor behind its back in the file.
        still = await publisher.aget_task(task["id"])
        assert still["status"] == "running" and still["progress"] == 40
        assert stored_statuses(db) == {task["id"]: "running"}
        await publisher.areport(task["id"], progress=50)  # and the first server carries on
