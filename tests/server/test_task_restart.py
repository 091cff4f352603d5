"""A server *process* restarted in the middle of a task: the task store is what carries over.

Real ``roomcast serve`` processes on 127.0.0.1 sharing one SQLite file. A worker reports
through the API, then the server dies (SIGKILL: a crash; SIGTERM: a deploy). The next
process must still have every finished task with its result, must have failed the task that
was running with the reason (not forgotten it, not left it "running" for ever), and must
give a late subscriber that final state at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
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


@asynccontextmanager
async def _serve(db: Path, *extra: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """A ``roomcast serve`` process on a free port; yields it and its base URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomcast", "serve", "--port", "0", "--task-db", str(db), *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "ROOMCAST_TASK_DB": str(db)},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            while True:
                line = await proc.stdout.readline()
                assert line, "the server exited before it listened"
                found = LISTENING.search(line)
                if found:
                    break
        yield proc, found.group(1).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
        await asyncio.wait_for(proc.wait(), WAIT)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "graceful"])
async def test_a_task_running_when_the_server_dies_is_failed_with_the_reason_after_restart(
    tmp_path: Path, signum: signal.Signals
) -> None:
    db = tmp_path / "tasks.db"
    async with _serve(db) as (proc, url):
        publisher = Publisher(url)
        done = await publisher.acreate_task("import", title="finished before")
        await publisher.acomplete_task(done["id"], {"rows": 1200})
        running = await publisher.acreate_task("crawl", title="mid-way", owner="ann")
        # Wait until the progress is out (published after it was stored), not a fixed time.
        async with open_sse(url, [], path=f"/tasks/{running['id']}/events") as stream:
            assert (await stream.next(WAIT)).json()["snapshot"]["status"] == "pending"
            await publisher.areport(running["id"], progress=40, step="fetching", message="page 40 of 100")
            while (event := await stream.next(WAIT)).json().get("progress") != 40:
                pass
        proc.send_signal(signum)
        await asyncio.wait_for(proc.wait(), WAIT)

    async with _serve(db) as (_proc, url):
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
