"""``Dispatcher``: the client's handlers, run one job at a time, in arrival order.

Why a queue and one task rather than a task per event: events must reach handlers in the
order the server sent them (a ``delete`` after its ``update``), and a handler may await an
ack of its own, which the read loop can only deliver if reading never waits for handlers.
So the read loop only enqueues; this runs the jobs, and nothing a job does ends the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Dispatcher"]

logger = logging.getLogger("roomcast.client")

Job = Coroutine[Any, Any, Any]


class Dispatcher:
    """A serial runner of coroutines; started on first use, stopped by ``aclose``."""

    __slots__ = ("_jobs", "_task")

    def __init__(self) -> None:
        self._jobs: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the runner (idempotent; needs a running loop)."""
        if self._task is None:
            self._jobs = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="roomcast-client-dispatch")

    def put(self, job: Job) -> None:
        """Run ``job`` after the ones before it; dropped (never started) once closed."""
        if self._jobs is None:
            job.close()  # no "never awaited" warning
            return
        self._jobs.put_nowait(job)

    async def aclose(self) -> None:
        """Stop: the running job is cancelled, queued ones are dropped.

        Called from a job itself (``close()`` inside a handler), the loop ends after that job.
        """
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif task is not None:
            task.cancel()
        jobs, self._jobs = self._jobs, None
        while jobs is not None and not jobs.empty():
            jobs.get_nowait().close()

    async def _run(self) -> None:
        jobs = self._jobs
        assert jobs is not None
        while True:
            job = await jobs.get()
            try:
                await job
            except Exception:
                logger.exception("event dispatch failed")
