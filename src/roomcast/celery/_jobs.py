"""The roomcast side of tracked Celery tasks: what is sent, when, and from which thread.

Celery-free on purpose (``roomcast.celery`` is the glue), so the rules below read without
Celery's hooks in the way:

* **Never a blocking call on an event loop's thread.** A task sent from a coroutine
  (``task.delay()`` in a FastAPI ``async def``) must not wait for roomcast, and a sync
  ``Publisher`` call there is refused outright. Every call made on a thread that runs a loop
  is handed to one background thread instead (in call order, so a create always lands
  before the failure that follows it); elsewhere (a worker's thread, a sync view) it is
  made inline, so its answer can be used.
* **Roomcast being down never fails a job.** A refused or unreachable call is logged and
  the work goes on; the server times out or cancels what it cannot hear about.
* **Progress is throttled here**, once per ``progress_interval``: a tight loop calling
  ``progress`` would otherwise make an HTTP request (or a Redis script) per call. What is
  held back is sent before the task's next status change, so the end always follows the
  last progress.
* **The stop is learned without the task asking.** Each report's answer carries the task's
  status; besides, one watcher thread per process asks for the status of its running jobs
  every ``stop_poll`` seconds, so ``stop_requested`` is a plain attribute read, and a job
  that never checks it can be revoked (``on_stop``) even while it reports nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from roomcast import _json
from roomcast.errors import PublishError
from roomcast.tasks.model import check_progress
from roomcast.types import JSONValue

__all__ = ["TaskPublisher", "Tracker", "Job", "TaskStopped"]

logger = logging.getLogger("roomcast.celery")

_STOPPED = frozenset({"stopping", "cancelled", "completed", "failed", "timed_out"})
"""Statuses that mean "the work is no longer wanted" to a running job."""


class TaskPublisher(Protocol):
    """The sync task calls both ``Publisher`` (HTTP) and ``RedisPublisher`` (straight into
    Redis) make; each answers the task as the server's JSON."""

    def create_task(
        self,
        kind: str,
        *,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> dict[str, Any]: ...

    def report(
        self, task_id: str, *, progress: float | None = None, step: str | None = None, message: str | None = None
    ) -> dict[str, Any]: ...

    def complete_task(self, task_id: str, result: JSONValue = None) -> dict[str, Any]: ...

    def fail_task(self, task_id: str, error: str) -> dict[str, Any]: ...

    def cancel_task(self, task_id: str, reason: str | None = None) -> dict[str, Any]: ...

    def get_task(self, task_id: str) -> dict[str, Any]: ...


class TaskStopped(Exception):
    """Raised by ``progress`` in a job that never read ``stop_requested`` once a stop was
    asked for: the job ends there, as ``cancelled``. A job that reads the flag ends itself."""


class Job:
    """One run of a tracked task in this process: its throttled progress and its stop flag."""

    def __init__(self, tracker: Tracker, task_id: str) -> None:
        self.id = task_id
        self._tracker = tracker
        self._lock = threading.Lock()  # one report of this job in flight at a time, in order
        self._pending: tuple[float | None, str | None, str | None] | None = None
        self._last_sent = -float("inf")
        self._stop_seen = False
        self.cooperative = False  # read ``stop_requested``: trusted to end itself
        self.revoked = False

    @property
    def stop_requested(self) -> bool:
        """Whether someone asked roomcast to stop this task (or it ended elsewhere).

        Reading it makes the job cooperative: from then on a stop is left to the job (return
        early; the task ends ``cancelled``) instead of being enforced by a revoke.
        """
        self.cooperative = True
        return self._stop_seen

    def progress(self, progress: float | None = None, step: str | None = None, message: str | None = None) -> None:
        """Report percent done (0-100), the current step and/or a message; ``None`` keeps a field.

        Sent at most once per ``progress_interval`` (the latest values win); the rest is sent
        before the task ends.

        Raises:
            InvalidProgress: ``progress`` is not a finite number from 0 to 100 (nothing sent).
            TaskStopped: a stop was asked for and the job has never read ``stop_requested``.
        """
        check_progress(progress)
        with self._lock:
            old = self._pending or (None, None, None)
            self._pending = (
                old[0] if progress is None else progress,
                old[1] if step is None else step,
                old[2] if message is None else message,
            )
            if time.monotonic() - self._last_sent >= self._tracker.progress_interval:
                self._flush_locked()
        if self._stop_seen and not self.cooperative:
            raise TaskStopped(f"task {self.id}: a stop was requested")

    def flush(self) -> None:
        """Send the progress held back, if any (before the task's status changes)."""
        with self._lock:
            self._flush_locked()

    def poll(self) -> None:
        """Learn the task's status: by sending held-back progress, else by asking for it."""
        with self._lock:
            if self._pending is not None:
                self._flush_locked()
            else:
                self._note(self._tracker.call(lambda p: p.get_task(self.id), self.id))

    def _flush_locked(self) -> None:
        if self._pending is None:
            return
        progress, step, message = self._pending
        self._pending = None
        self._last_sent = time.monotonic()
        answer = self._tracker.call(lambda p: p.report(self.id, progress=progress, step=step, message=message), self.id)
        self._note(answer)

    def _note(self, answer: object) -> None:
        if answer is _ENDED or (isinstance(answer, dict) and answer.get("status") in _STOPPED):
            self._stop_seen = True


class Tracker:
    """Sends one process's tracked tasks to roomcast.

    Args:
        publisher: ``Publisher`` or ``RedisPublisher`` (anything with their sync task calls).
        progress_interval: seconds between two progress reports of one job.
        stop_poll: seconds between two status checks of each running job.
        on_stop: called once (from the watcher thread) with the id of a running job that a stop
            reached and that never read ``stop_requested``: Celery's revoke.
    """

    def __init__(
        self,
        publisher: TaskPublisher,
        *,
        progress_interval: float = 0.2,
        stop_poll: float = 0.5,
        on_stop: Callable[[str], None] | None = None,
    ) -> None:
        if not (progress_interval >= 0 and stop_poll > 0):
            raise ValueError("progress_interval must be >= 0 and stop_poll > 0")
        self.publisher = publisher
        self.progress_interval = progress_interval
        self.stop_poll = stop_poll
        self.on_stop = on_stop
        self._jobs: dict[str, Job] = {}
        self._guard = threading.Lock()
        self._pid = -1  # the process the threads below belong to (they do not survive a fork)
        self._background: ThreadPoolExecutor | None = None
        self._watcher: threading.Thread | None = None

    # -- the sending side --------------------------------------------------------------------

    def created(
        self, task_id: str, kind: str, *, title: str, owner: str | None, metadata: Mapping[str, JSONValue]
    ) -> None:
        """Create the ``pending`` task as the Celery task is sent (ids are the Celery ids)."""
        self.soon(lambda p: p.create_task(kind, title=title, owner=owner, metadata=metadata, id=task_id), task_id)

    def not_sent(self, task_id: str, exc: BaseException) -> None:
        """The broker refused the message: the task will never run, so it ends ``failed``."""
        error = f"could not be sent to the Celery broker: {_error_text(exc)}"
        self.soon(lambda p: p.fail_task(task_id, error), task_id)

    # -- the worker side ---------------------------------------------------------------------

    def begin(
        self, task_id: str, kind: str, *, title: str, owner: str | None, metadata: Mapping[str, JSONValue]
    ) -> Job | None:
        """The worker picked the task up: ``running`` now; ``None`` if it ended already (a
        stop while it was queued cancelled it), so the run must be skipped.

        A task whose create has not landed (sent from a loop a moment ago, or by a sender
        without tracking) is created here first, with the fields the sender gave; the create
        that lands later is refused as a duplicate and changes nothing.
        """
        answer = self.call(lambda p: p.report(task_id), task_id, missing=True)
        if answer is _MISSING:

            def create(p: TaskPublisher) -> object:
                return p.create_task(kind, title=title, owner=owner, metadata=metadata, id=task_id)

            self.call(create, task_id, exists=True)
            answer = self.call(lambda p: p.report(task_id), task_id)
        if answer is _ENDED or (isinstance(answer, dict) and answer.get("status") in _STOPPED - {"stopping"}):
            return None
        job = Job(self, task_id)
        job._note(answer)
        with self._guard:
            self._jobs[task_id] = job
            self._start_watcher()
        return job

    def job(self, task_id: str | None) -> Job | None:
        return None if task_id is None else self._jobs.get(task_id)

    def retrying(self, task_id: str, attempt: int, limit: int | None, exc: BaseException) -> None:
        """Celery will run the task again: shown in its step and message, still ``running``."""
        of = "" if limit is None else f"/{limit}"
        step = f"retry {attempt}{of}"
        self._end_job(task_id)
        self.soon(lambda p: p.report(task_id, step=step, message=f"{step}: {_error_text(exc)}"), task_id)

    def succeeded(self, task_id: str, result: object) -> None:
        """``completed`` with the return value; ``cancelled`` if it returned after a stop."""
        job = self._end_job(task_id)
        if job is not None and job._stop_seen:
            self.soon(lambda p: p.cancel_task(task_id, "stopped"), task_id)
        else:
            value = _jsonable(result)
            self.soon(lambda p: p.complete_task(task_id, value), task_id)

    def failed(self, task_id: str, exc: BaseException) -> None:
        """``failed`` with the exception; ``cancelled`` if it was ended by a stop."""
        job = self._end_job(task_id)
        if isinstance(exc, TaskStopped) or (job is not None and job._stop_seen):
            self.soon(lambda p: p.cancel_task(task_id, "stopped"), task_id)
        else:
            error = _error_text(exc)
            self.soon(lambda p: p.fail_task(task_id, error), task_id)

    def revoked(self, task_id: str, why: str) -> None:
        """Celery revoked the task (before it ran, or terminated it): ``cancelled``."""
        self._end_job(task_id)
        self.soon(lambda p: p.cancel_task(task_id, why), task_id)

    def _end_job(self, task_id: str) -> Job | None:
        with self._guard:
            job = self._jobs.pop(task_id, None)
        if job is not None:
            job.flush()
        return job

    # -- calls -------------------------------------------------------------------------------

    def soon(self, fn: Callable[[TaskPublisher], object], task_id: str) -> None:
        """Make the call inline, or in the background thread when this thread runs a loop."""
        if _loop_running():
            self._executor().submit(self.call, fn, task_id)
        else:
            self.call(fn, task_id)

    def call(
        self, fn: Callable[[TaskPublisher], Any], task_id: str, *, missing: bool = False, exists: bool = False
    ) -> Any:
        """``fn(publisher)``; a refusal is logged and answers ``None``, but ``_MISSING`` for a
        404 when ``missing``, and ``_ENDED`` for a 409 (the task ended meanwhile: a stop's
        grace, a deadline, a stop while it was queued), expected and not logged when ``exists``.

        On a thread that runs a loop it answers ``None`` at once and makes the call in the
        background: a report's answer is not worth blocking a loop for.
        """
        if _loop_running():
            self._executor().submit(self.call, fn, task_id)
            return None
        try:
            return fn(self.publisher)
        except PublishError as exc:
            if missing and exc.status == 404:
                return _MISSING
            if exc.status == 409:
                if not exists:
                    logger.debug("roomcast task %s: %s", task_id, exc.message)
                return _ENDED
            logger.warning("roomcast task %s: %s (%s)", task_id, exc.message, exc.code)
        except Exception:
            logger.exception("roomcast task %s: the call failed", task_id)
        return None

    def _executor(self) -> ThreadPoolExecutor:
        with self._guard:
            self._after_fork()
            if self._background is None:
                self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roomcast-celery")
            return self._background

    def _start_watcher(self) -> None:
        self._after_fork()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="roomcast-celery-stops", daemon=True)
            self._watcher.start()

    def _after_fork(self) -> None:
        if self._pid != os.getpid():  # threads are not inherited: start our own on demand
            self._pid = os.getpid()
            self._background, self._watcher = None, None

    def _watch(self) -> None:
        while True:
            time.sleep(self.stop_poll)
            for job in list(self._jobs.values()):
                job.poll()
                if job._stop_seen and not job.cooperative and not job.revoked and self.on_stop is not None:
                    job.revoked = True
                    try:
                        self.on_stop(job.id)
                    except Exception:
                        logger.exception("roomcast task %s: could not revoke the Celery task", job.id)


_MISSING: Any = object()
_ENDED: Any = object()


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _jsonable(value: Any) -> JSONValue:
    """``value`` if it is JSON all the way down, else its ``repr``: a result roomcast can store."""
    try:
        _json.dumps(value)
    except TypeError:
        return repr(value)
    return value
