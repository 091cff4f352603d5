"""A real ``celery worker`` process for a test: started, awaited until ready, ended by its PID.

One helper for every test that runs Celery jobs (``test_celery.py``, the example's test):
the worker runs under coreutils ``timeout``, so it has a bounded life whatever happens to
the test; it is ready when its main process logs ``celery@<host> ready.`` (awaited, with a
timeout); at the end it gets SIGTERM (Celery's warm shutdown: the job in hand finishes) and
is awaited. Its log goes on to this process's stderr, where pytest shows it on a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

__all__ = ["celery_worker"]

LIFETIME = 120
"""Seconds a worker may live at most: far more than any test module that starts one needs."""

_READY = " ready."


async def _watch(stream: asyncio.StreamReader, ready: asyncio.Event) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace")
        sys.stderr.write(text)
        if "MainProcess" in text and text.rstrip().endswith(_READY):
            ready.set()


@asynccontextmanager
async def celery_worker(
    app: str, *, cwd: Path, env: Mapping[str, str], pool: str = "prefork", wait: float = 20.0
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``celery -A app worker`` with one process of ``pool``, ready for jobs, for the block."""
    timeout = shutil.which("timeout")
    assert timeout is not None, "coreutils timeout is missing"
    worker = await asyncio.create_subprocess_exec(
        *(timeout, "--kill-after=5", str(LIFETIME)),
        *(sys.executable, "-m", "celery", "-A", app, "worker", f"--pool={pool}", "--concurrency=1"),
        *("--loglevel=info", "--without-gossip", "--without-mingle", "--without-heartbeat"),
        cwd=cwd,
        env={**os.environ, **env},
        stderr=asyncio.subprocess.PIPE,
    )
    assert worker.stderr is not None
    ready = asyncio.Event()
    watch = asyncio.create_task(_watch(worker.stderr, ready))
    try:
        async with asyncio.timeout(wait):
            done = asyncio.create_task(worker.wait())
            await asyncio.wait((asyncio.create_task(ready.wait()), done), return_when=asyncio.FIRST_COMPLETED)
        assert ready.is_set(), f"the Celery worker for {app} exited before it was ready"
        yield worker
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)  # `timeout` passes it on to Celery
        async with asyncio.timeout(wait):
            await worker.wait()
            await watch
