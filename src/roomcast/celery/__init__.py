"""Celery tasks as roomcast tasks: a page follows a Celery job live, stops it, sees its result.

L5, beside ``roomcast.publisher``; the only module that imports Celery (``pip install
roomcast[celery]``), so roomcast itself never needs it. ::

    from celery import Celery
    from roomcast import Publisher            # or RedisPublisher("redis://...") with serve --redis
    from roomcast.celery import RoomcastTask, track

    app = Celery("jobs", broker="redis://127.0.0.1:6379/1")
    track(app, Publisher("http://127.0.0.1:8000", api_key="k-..."))

    @app.task(base=RoomcastTask, bind=True)
    def render(self, sketch_id):
        for i in range(10):
            if self.roomcast.stop_requested:       # optional: a stop ends it here, cancelled
                return None
            self.roomcast.progress(i * 10, step="mesh")   # or update_state(state="PROGRESS", meta=...)
            ...
        return {"url": "/models/7.glb"}           # the task's result

    render.delay(7).id                            # the roomcast task id: subscribe to task:<id>

What happens, and where:

* **Sent** (``apply_async`` / ``delay``, in the sending process): the roomcast task is
  created ``pending`` under the Celery id, kind = the task's name, before the message goes
  to the broker, so a page can subscribe before any worker has it. From a thread running an
  event loop the create is handed to a background thread: sending never blocks the loop.
  A message the broker refuses ends the task ``failed``.
* **Picked up** (``before_start``): ``running``. A task stopped while queued has ended
  ``cancelled`` already and is skipped (Celery's ``Ignore``: the job never runs).
* **Progress**: ``self.roomcast.progress(percent, step=, message=)``, and Celery's own
  ``self.update_state(state="PROGRESS", meta={...})`` with ``progress`` (0-100), or
  ``current`` and ``total``, and optional ``step`` and ``message`` in ``meta``.
* **Retry** (``self.retry``): the step and message say ``retry 2/5: <error>``; the task
  stays ``running`` (roomcast's statuses never go back to ``pending``).
* **End**: ``completed`` with the return value (its ``repr`` if it is not JSON), ``failed``
  with ``"<ExceptionType>: <message>"``, ``cancelled`` after a stop.
* **Stop** (the dashboard's button, ``POST /api/tasks/{id}/stop``, ``roomcast tasks stop``):
  the worker learns it from a report's answer or from its watcher thread (every
  ``stop_poll`` seconds). A job that reads ``self.roomcast.stop_requested`` is trusted to
  end itself; one that never does is revoked, ``app.control.revoke(id, terminate=True)``,
  which ends it at once under the prefork pool, and it is ended at its next ``progress``
  call under any pool (``solo`` and ``threads`` cannot terminate a running job).

Why a base class and not only signals: the least change to a task is one argument
(``base=RoomcastTask``), and a class can do what no signal offers: give the task ``self.roomcast``, catch ``update_state``, and
name the task it belongs to without a registry (a signal handler sees every task of every
app in the process and would need one to tell tracked tasks apart). The one signal used,
``task_revoked``, is how Celery reports a revoke done in the worker's main process, where
the task's own code never runs.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Final

from celery import Celery, Task, signals
from celery.exceptions import Ignore
from celery.utils import uuid

from roomcast.celery._jobs import Job, TaskPublisher, TaskStopped, Tracker
from roomcast.types import JSONValue

__all__ = ["RoomcastTask", "track", "TaskPublisher", "TaskStopped", "PROGRESS_STATE"]

logger = logging.getLogger("roomcast.celery")

PROGRESS_STATE: Final = "PROGRESS"
"""The ``update_state`` state whose ``meta`` is reported as progress (Celery's custom-state idiom)."""

_HEADER: Final = "roomcast_task"
"""The message header that carries the roomcast task's fields from the sender to the worker."""

_trackers: weakref.WeakKeyDictionary[Celery, Tracker] = weakref.WeakKeyDictionary()


def track(
    app: Celery,
    publisher: TaskPublisher,
    *,
    progress_interval: float = 0.2,
    stop_poll: float = 0.5,
    revoke: bool = True,
) -> None:
    """Send ``app``'s ``RoomcastTask`` tasks to roomcast through ``publisher``.

    Call it where the app is made (the module both the web process and the workers import).

    Args:
        publisher: ``roomcast.Publisher`` (the server's HTTP API) or ``roomcast.RedisPublisher``
            (straight into the Redis the servers share); one instance is safe to share.
        progress_interval: seconds between two progress reports of one job (the latest wins).
        stop_poll: seconds between two checks, in each worker process, of its running jobs'
            status, which is how a job that reports nothing learns of a stop.
        revoke: revoke (``terminate=True``) a stopped job that never reads ``stop_requested``;
            ``False`` leaves it running until its next ``progress`` call.
    """

    def revoke_job(task_id: str) -> None:
        app.control.revoke(task_id, terminate=True, signal="SIGTERM")

    _trackers[app] = Tracker(
        publisher,
        progress_interval=progress_interval,
        stop_poll=stop_poll,
        on_stop=revoke_job if revoke else None,
    )


def _tracker(app: Celery) -> Tracker:
    tracker = _trackers.get(app)
    if tracker is None:
        raise RuntimeError(
            f"Celery app {app.main!r} has RoomcastTask tasks but no roomcast publisher: "
            "call roomcast.celery.track(app, Publisher(...)) where the app is made"
        )
    return tracker


class RoomcastTask(Task):  # type: ignore[misc]  # Celery has no type hints
    """A Celery task that is also a roomcast task (``@app.task(base=RoomcastTask)``).

    Class attributes (also as ``@app.task(...)`` options): ``roomcast_kind`` (default: the
    task's name) and ``roomcast_title``. Per call, ``apply_async(..., roomcast_owner="ann",
    roomcast_title=..., roomcast_metadata={...})`` sets the roomcast task's owner, title and
    metadata.
    """

    roomcast_kind: str | None = None
    roomcast_title: str = ""

    @property
    def roomcast(self) -> Job:
        """This run's roomcast side: ``progress(...)`` and ``stop_requested``.

        Raises:
            RuntimeError: outside a tracked run (the task called directly, not by a worker).
        """
        job = _tracker(self.app).job(self.request.id)
        if job is None:
            raise RuntimeError(f"{self.name}: self.roomcast exists only while a worker runs the task")
        return job

    def _kind(self) -> str:
        return self.roomcast_kind or str(self.name)

    # -- sending -------------------------------------------------------------------------------

    def apply_async(self, args: Any = None, kwargs: Any = None, task_id: str | None = None, **options: Any) -> Any:
        fields = self._fields(
            options.pop("roomcast_title", None),
            options.pop("roomcast_owner", None),
            options.pop("roomcast_metadata", None),
        )
        # The same fields travel in the message: a worker that starts the job before the
        # create lands (sent from a loop a moment ago) creates the very same task.
        options["headers"] = {**(options.get("headers") or {}), _HEADER: fields}
        tracker = _tracker(self.app)
        task_id = task_id or uuid()
        if not options.get("retries"):  # a retry re-sends the running task under its own id
            tracker.created(task_id, self._kind(), **fields)
        try:
            return super().apply_async(args, kwargs, task_id=task_id, **options)
        except Exception as exc:
            tracker.not_sent(task_id, exc)
            raise

    # -- running -------------------------------------------------------------------------------

    def _fields(self, title: str | None, owner: str | None, metadata: dict[str, JSONValue] | None) -> dict[str, Any]:
        """The roomcast task's title, owner and metadata (which names the Celery task)."""
        return {
            "title": title or self.roomcast_title,
            "owner": owner,
            "metadata": {"celery_task": str(self.name), **(metadata or {})},
        }

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        sent = getattr(self.request, _HEADER, None)  # absent: sent by name, by an untracked sender
        fields = sent if isinstance(sent, dict) else self._fields(None, None, None)
        if _tracker(self.app).begin(task_id, self._kind(), **fields) is None:
            raise Ignore(f"roomcast task {task_id} ended before it started (stopped while queued)")

    def update_state(self, task_id: str | None = None, state: str | None = None, meta: Any = None, **kw: Any) -> None:
        job = _tracker(self.app).job(task_id or self.request.id)
        if job is not None and state == PROGRESS_STATE and isinstance(meta, dict):
            job.progress(*_progress_of(meta))
        super().update_state(task_id, state, meta, **kw)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        _tracker(self.app).succeeded(task_id, retval)

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _tracker(self.app).failed(task_id, exc)

    def on_retry(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        _tracker(self.app).retrying(task_id, self.request.retries + 1, self.max_retries, exc)


def _progress_of(meta: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    """``(progress, step, message)`` from an ``update_state`` meta: ``progress`` in percent,
    or ``current`` of ``total``; anything else in it is Celery's alone."""
    progress = meta.get("progress")
    current, total = _number(meta.get("current")), _number(meta.get("total"))
    if progress is None and current is not None and total is not None and total > 0:
        progress = min(100.0, max(0.0, 100.0 * current / total))
    step, message = meta.get("step"), meta.get("message")
    return progress, step if isinstance(step, str) else None, message if isinstance(message, str) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _on_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, expired: bool = False, **_: Any
) -> None:
    """A revoke done by the worker's main process (ours, an application's, or an ``expires``
    that passed): the job's own hooks never ran, so its task is ended here."""
    if not isinstance(sender, RoomcastTask) or request is None:
        return
    tracker = _trackers.get(sender.app)
    if tracker is not None:
        why = "expired before it ran" if expired else "revoked (terminated)" if terminated else "revoked"
        tracker.revoked(request.id, why)


signals.task_revoked.connect(_on_revoked, weak=False)
