"""``TaskService``: tasks that live in a store and are published through the hub.

Imports L0, the hub's public API and ``tasks.*``. The model decides which changes are legal,
the store keeps them across restarts; this module adds what neither can: ordering, rate and
time. Why each piece is here:

* **One lock per task.** A change is validated, stored and published under it, so the
  subscribers of ``task:{id}`` see changes in the order they were made, and a store write of
  an older version can never land after a newer one.
* **Progress is coalesced.** A producer may call ``progress`` ten thousand times a second;
  subscribers need about ten. Each call only replaces the task's latest value (cheap, sync);
  one flusher per task publishes the latest value at most once per ``progress_interval``.
  A pending progress is flushed before any status change, so status and terminal events are
  never dropped and always come after the last progress.
* **Terminal changes run shielded**, as a task of their own: a producer cancelled while it
  reports its end (a stop request arriving just then) must not lose the final state, since
  subscribers and the store are owed it.
* **Stop is cooperative, then forced.** ``request_stop`` publishes ``stopping`` at once and
  cancels an in-process producer; one that does not end within ``stop_grace`` is marked
  ``cancelled`` anyway, so a stuck producer cannot keep a dashboard spinning for ever.
* **What is acknowledged is stored, or refused.** A status change is stored before its
  caller gets it back (so an acknowledged end survives a crash of the process). Progress is
  acknowledged when recorded and stored coalesced, so a crash may lose the last
  ``progress_interval`` of it; a graceful close (``aclose``) loses none: it refuses new work
  with ``ShuttingDown``, lets the changes under way finish, then writes and publishes every
  pending progress before it returns, and refuses whatever arrives after that last write.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import logging
import math
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from roomcast.errors import InvalidTransition, ShuttingDown, TaskError, TaskNotFound
from roomcast.hub import Hub
from roomcast.tasks.model import (
    DEFAULT_EVENTS,
    LIST_ROOM,
    Task,
    TaskEvents,
    TaskStatus,
    event_for,
    kind_room,
    owner_room,
    task_room,
)
from roomcast.tasks.store import DEFAULT_PAGE_SIZE, StatusFilter, TaskStore
from roomcast.types import JSONValue, RoomName

__all__ = ["TaskService", "TaskHandle", "INTERRUPTED_REASON", "LIST_ROOM_KINDS"]

logger = logging.getLogger("roomcast.tasks")

INTERRUPTED_REASON = "server restarted"
"""The ``error`` of tasks found unfinished at startup: their producer died with the old process."""

LIST_ROOM_KINDS = frozenset({"kind", "owner"})
"""What ``list_rooms`` may name: extra summary rooms per kind and/or per owner."""

_TASK_ROOM_PREFIX = task_room("")

_R = TypeVar("_R")

Change = Callable[[Task, float], Task]
"""``(task, now) -> new task``: one of the model's methods, applied under the task's lock."""


class _Live:
    """What the service holds for a task that has not ended.

    ``task`` is always the newest value, including progress not yet published (``dirty``).
    """

    __slots__ = (
        "task",
        "lock",
        "dirty",
        "last_progress",
        "flusher",
        "producer",
        "producer_cancelled",
        "stop_requested",
        "timers",
    )

    def __init__(self, task: Task) -> None:
        self.task = task
        self.lock = asyncio.Lock()
        self.dirty = False
        self.last_progress = -math.inf  # loop.time() of the last progress publication
        self.flusher: asyncio.Task[None] | None = None
        self.producer: asyncio.Task[Any] | None = None  # the asyncio task inside ``run``
        self.producer_cancelled = False  # we cancelled it: its CancelledError is ours
        self.stop_requested = False
        self.timers: list[asyncio.TimerHandle] = []


class TaskHandle:
    """What ``TaskService.run`` yields to an in-process producer.

    ``progress`` is sync so that it can sit in a tight loop or a sync callback without an
    ``await`` per call; it only records the value, and the service publishes at its own pace.
    """

    __slots__ = ("_service", "_live")

    def __init__(self, service: TaskService, live: _Live) -> None:
        self._service = service
        self._live = live

    @property
    def id(self) -> str:
        return self._live.task.id

    @property
    def task(self) -> Task:
        """The newest value of the task (including progress not yet published)."""
        return self._live.task

    @property
    def stop_requested(self) -> bool:
        """Whether a stop was asked for: a producer that shields itself should poll this."""
        return self._live.stop_requested

    def progress(self, progress: float | None = None, step: str | None = None, message: str | None = None) -> None:
        """Record progress from the event loop's thread; published coalesced.

        Raises:
            InvalidProgress: ``progress`` is not a finite number from 0 to 100.
            InvalidTransition: the task has ended (stopped by grace, timed out, completed).
            ShuttingDown: the service has made its last write (``aclose``); not recorded.
            RuntimeError: called from another thread (use ``progress_threadsafe``).
        """
        self._service._progress(self._live, progress, step, message)

    def progress_threadsafe(
        self, progress: float | None = None, step: str | None = None, message: str | None = None
    ) -> None:
        """Record progress from any thread (a worker in ``asyncio.to_thread``).

        The values are checked here, so a bad one raises in the caller's thread; the update
        itself is handed to the loop in call order.
        """
        self._service._progress_threadsafe(self._live, progress, step, message)

    async def complete(self, result: JSONValue = None) -> Task:
        """End the task now with ``result`` (leaving the ``async with`` then changes nothing)."""
        return await self._service._change(self._live, lambda t, now: t.complete(now, result))

    async def fail(self, error: str) -> Task:
        """End the task now as failed, without raising out of the ``async with``."""
        return await self._service._change(self._live, lambda t, now: t.fail(now, error))


class TaskService:
    """Creates, changes, stores and publishes tasks.

    Args:
        hub: publishes every change; must be started before ``start``.
        store: keeps tasks durable; the service is its only writer in this process.
        progress_interval: seconds between two progress publications of one task.
        events: event names per task kind (aliases); other kinds use ``DEFAULT_EVENTS``.
        stop_grace: seconds a producer has to end after ``request_stop`` before the task is
            marked ``cancelled`` anyway.
        list_rooms: extra summary rooms besides ``LIST_ROOM``: ``"kind"`` and/or ``"owner"``.
        keep_days: finished tasks older than this many days are deleted (``None``: kept).
        keep_count: at most this many finished tasks are kept, the newest (``None``: all).
        retention_interval: seconds between two retention passes; the first runs in ``open``.
    """

    def __init__(
        self,
        hub: Hub,
        store: TaskStore,
        *,
        progress_interval: float = 0.1,
        events: Mapping[str, TaskEvents] | None = None,
        stop_grace: float = 5.0,
        list_rooms: Collection[str] = (),
        keep_days: float | None = None,
        keep_count: int | None = None,
        retention_interval: float = 3600.0,
    ) -> None:
        unknown = set(list_rooms) - LIST_ROOM_KINDS
        if unknown:
            raise ValueError(f"list_rooms may only name {sorted(LIST_ROOM_KINDS)}, not {sorted(unknown)}")
        if not (progress_interval >= 0 and stop_grace >= 0):
            raise ValueError("progress_interval and stop_grace must be >= 0")
        if (keep_days is not None and not keep_days > 0) or (keep_count is not None and keep_count < 0):
            raise ValueError("keep_days must be > 0 and keep_count >= 0 (None keeps everything)")
        if not retention_interval > 0:
            raise ValueError("retention_interval must be > 0")
        self._keep_days = keep_days
        self._keep_count = keep_count
        self._retention_interval = retention_interval
        self._hub = hub
        self._store = store
        self._interval = progress_interval
        self._events: Mapping[str, TaskEvents] = dict(events or {})
        self._grace = stop_grace
        self._list_rooms = frozenset(list_rooms)
        self._live: dict[str, _Live] = {}
        self._routes: builtins.list[Callable[[Task], Iterable[RoomName]]] = []
        self._listeners: builtins.list[Callable[[Task], None]] = []
        self._spawned: set[asyncio.Task[Any]] = set()  # producers started by ``spawn``
        self._helpers: set[asyncio.Task[Any]] = set()  # flushers, timer callbacks: cancellable
        self._commits: set[asyncio.Task[Any]] = set()  # changes in flight: awaited, never cancelled
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        # ``aclose`` in two steps: ``_closing`` refuses new work (creating, loading a task),
        # ``_sealed`` also refuses progress and changes, once the last write pass has begun:
        # anything accepted after it could be acknowledged and never stored.
        self._closing = False
        self._sealed = False
        self._closer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Serve snapshots of ``task:*`` rooms and end the tasks a previous process left.

        Idempotent. Interrupted tasks are published as failed and their rooms marked
        terminal, so subscribers still waiting on them get an end.
        """
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._hub.snapshot(task_room("*"))(self._snapshot)
        for task in await self._store.mark_interrupted(INTERRUPTED_REASON, time.time()):
            await self._publish(task, event_for(TaskStatus.RUNNING, task.status, self._events_of(task)))
            await self._hub.mark_terminal(task_room(task.id))
        if self._keep_days is not None or self._keep_count is not None:
            await self.prune()
            self._helpers.add(asyncio.create_task(self._retention_loop()))

    async def prune(self) -> int:
        """Delete finished tasks beyond the retention settings now; returns how many.

        Only terminal tasks go: a running task is never pruned however old it is.
        """
        removed = 0
        if self._keep_days is not None:
            removed += await self._store.delete_older_than(time.time() - self._keep_days * 86400)
        if self._keep_count is not None:
            removed += await self._store.keep_newest(self._keep_count)
        if removed:
            logger.info("task retention: deleted %d finished tasks", removed)
        return removed

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retention_interval)
            try:
                await self.prune()
            except Exception:  # a failed pass must not end retention for good
                logger.exception("task retention pass failed")

    async def aclose(self) -> None:
        """Stop accepting, finish what was accepted, then write the last progress. Idempotent.

        In this order, so that nothing acknowledged is lost and nothing is acknowledged late:

        1. new work is refused with ``ShuttingDown`` (``create``, ``start``, ``spawn``, and
           every update by id: ``report``, ``complete``, ``request_stop`` ...);
        2. spawned producers are cancelled (their tasks end failed, stored and published) and
           timers are cancelled; changes under way are awaited;
        3. every pending coalesced progress is stored and published (its subscribers are
           still connected if the hub is still open), after which progress and changes are
           refused too;
        4. flushers and timer callbacks are cancelled.

        The store and the hub are left open: their owner closes them after this.
        """
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close())
        await self._closer

    async def _close(self) -> None:
        self._closing = True
        for job in list(self._spawned):
            job.cancel()
        await asyncio.gather(*self._spawned, return_exceptions=True)
        for live in list(self._live.values()):
            for timer in live.timers:
                timer.cancel()
            live.timers.clear()
        await self._settle()
        self._sealed = True  # synchronously before the pass: no progress can slip in behind it
        for live in list(self._live.values()):
            await self._flush_last(live)
        await self._settle()  # a change that got past the gates just before the seal
        for helper in list(self._helpers):
            helper.cancel()
        await asyncio.gather(*self._helpers, return_exceptions=True)

    async def _settle(self) -> None:
        """Wait for every change under way, including those that start while waiting."""
        while pending := [job for job in self._commits if not job.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _flush_last(self, live: _Live) -> None:
        """Store and publish the task's pending progress, if any, as ``aclose`` ends.

        Under the task's lock, so a flusher that is writing right now finishes first. One
        task's failure is logged and does not keep the others' progress from being written.
        """
        async with live.lock:
            if not live.dirty or live.task.is_terminal:
                return
            try:
                await self._flush_locked(live)
            except InvalidTransition:
                pass  # ended elsewhere (another writer): the stored end is the truth
            except Exception:
                logger.exception("could not store the last progress of task %s", live.task.id)

    # -- reading -----------------------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        """The newest value of the task.

        Raises:
            TaskNotFound: no task has this id.
        """
        live = self._live.get(task_id)
        if live is not None:
            return live.task
        task = await self._store.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def list(
        self,
        *,
        status: StatusFilter = None,
        kind: str | None = None,
        owner: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> tuple[builtins.list[Task], str | None]:
        """One page from the store (``TaskStore.list``); coalesced progress may lag there."""
        return await self._store.list(status=status, kind=kind, owner=owner, limit=limit, cursor=cursor)

    # -- creating ----------------------------------------------------------------------------

    async def create(
        self,
        kind: str,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> Task:
        """Create a ``pending`` task and publish ``created``.

        Raises:
            TaskError: ``id`` is taken, or ``metadata`` is not JSON.
        """
        live = await self._create(kind, title, owner, deadline, metadata, id)
        return live.task

    @asynccontextmanager
    async def start(
        self,
        kind: str,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> AsyncIterator[TaskHandle]:
        """Create and start a task for the code in the ``async with`` block.

        Leaving the block ends the task unless it has ended already: normally → completed
        (result ``None``), by an exception → failed with its text (re-raised), by the
        cancellation a stop request or the deadline caused → cancelled / timed out, and that
        cancellation is absorbed so the producer's own task carries on after the block.
        """
        live = await self._create(kind, title, owner, deadline, metadata, id)
        await self._change(live, lambda t, now: t.start(now))
        live.producer = asyncio.current_task()
        try:
            yield TaskHandle(self, live)
        except asyncio.CancelledError:
            live.producer = None
            if not live.producer_cancelled:
                await self._end(live, lambda t, now: t.fail(now, "producer was cancelled"))
                raise
            self._absorb_cancel()
            await self._end(live, lambda t, now: t.cancel(now))
        except BaseException as exc:
            live.producer = None
            error = _error_text(exc)
            await self._end(live, lambda t, now: t.fail(now, error))
            raise
        else:
            live.producer = None
            await self._end(live, lambda t, now: t.complete(now, None))

    def task(
        self,
        kind: str,
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
    ) -> Callable[[Callable[..., Awaitable[_R]]], Callable[..., Awaitable[_R]]]:
        """Decorate a coroutine function so that each call runs as a task of ``kind``.

        The function receives the ``TaskHandle`` as its first argument, then the caller's; its
        return value becomes the task's result::

            @hub.tasks.task("crawl", title="Crawl")
            async def crawl(task: TaskHandle, site: str) -> int:
                task.progress(50, step="fetching")
                return 42

        Ending follows ``start``: an exception fails the task (and is re-raised), a stop request
        cancels it (the call then returns ``None``).
        """

        def decorate(fn: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                async with self.start(kind, title=title, owner=owner, deadline=deadline) as handle:
                    result = await fn(handle, *args, **kwargs)
                    if not handle.stop_requested:
                        await handle.complete(_jsonable(result))
                    return result
                return None  # stopped: the block absorbed the cancellation

            return wrapper

        return decorate

    def route(self, fn: Callable[[Task], Iterable[RoomName]]) -> Callable[[Task], Iterable[RoomName]]:
        """Register ``fn(task) -> rooms``: more rooms that get every change of the task in full.

        For an application whose clients follow a project, not a task: ::

            @hub.tasks.route
            def project_rooms(task):
                project = task.metadata.get("project")
                return [f"project:{project}"] if task.kind == "crawl" and project else []

        The rooms are computed from the task itself, so every process publishing it agrees
        and a restart changes nothing. A route that raises is logged and skipped.
        """
        self._routes.append(fn)
        return fn

    def add_listener(self, listener: Callable[[Task], None]) -> None:
        """Call ``listener(task)`` after every status change this service makes, once it is
        published (a poller learns of a stop or an end here). It must be quick and not raise."""
        self._listeners.append(listener)

    async def spawn(
        self,
        kind: str,
        producer: Callable[[TaskHandle], Awaitable[JSONValue]],
        title: str = "",
        owner: str | None = None,
        deadline: float | None = None,
        metadata: Mapping[str, JSONValue] | None = None,
        id: str | None = None,
    ) -> Task:
        """Start ``producer(handle)`` in the background as a task; returns the running task.

        What a request handler wants: the task's id to answer with, at once, while the work
        goes on. Ending follows ``start``; the producer's return value is the result. The
        service keeps the asyncio task, so it is not garbage collected mid-way, and
        ``aclose`` cancels what is still running (those tasks end failed).
        """
        ready: asyncio.Future[Task] = self._require_started().create_future()

        async def run() -> None:
            try:
                async with self.start(kind, title, owner, deadline, metadata, id) as handle:
                    ready.set_result(handle.task)
                    result = await producer(handle)
                    if not handle.stop_requested and not handle.task.is_terminal:
                        await handle.complete(_jsonable(result))
            except Exception as exc:  # recorded and published by ``start``; only the caller is owed it
                if not ready.done():
                    ready.set_exception(exc)
                else:
                    logger.debug("spawned task %s ended with %r", kind, exc)
            finally:
                if not ready.done():  # cancelled before it began: the caller must not wait for ever
                    ready.cancel()

        job = asyncio.create_task(run())
        self._spawned.add(job)
        job.add_done_callback(self._spawned.discard)
        return await ready

    # -- external updates --------------------------------------------------------------------

    async def begin(self, task_id: str) -> Task:
        """``pending`` → ``running``, for a producer outside this process picking the task up."""
        return await self._change(await self._load(task_id), lambda t, now: t.start(now))

    async def report(
        self,
        task_id: str,
        progress: float | None = None,
        step: str | None = None,
        message: str | None = None,
    ) -> Task:
        """Record progress (coalesced like a producer's); returns the task with it applied.

        A worker in another process reports on the task it was handed: its first valid report
        starts a ``pending`` task (a bad one leaves it pending).

        Raises:
            TaskNotFound, InvalidProgress, InvalidTransition: nothing changes then.
            ShuttingDown: ``aclose`` has begun; nothing is recorded or acknowledged.
        """
        live = await self._load(task_id)
        if live.task.status is TaskStatus.PENDING:
            now = time.time()
            live.task.start(now).progress_to(now, progress, step, message)  # validate before starting
            await self._change(live, lambda t, now: t.start(now))
        self._progress(live, progress, step, message)
        return live.task

    async def complete(self, task_id: str, result: JSONValue = None) -> Task:
        """End as completed; a ``pending`` task a worker finished without reporting is started first."""
        live = await self._load(task_id)
        if live.task.status is TaskStatus.PENDING:
            await self._change(live, lambda t, now: t.start(now))
        return await self._change(live, lambda t, now: t.complete(now, result))

    async def fail(self, task_id: str, error: str) -> Task:
        return await self._change(await self._load(task_id), lambda t, now: t.fail(now, error))

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        """End as cancelled: a producer acknowledging a stop, or a pending task dropped."""
        return await self._change(await self._load(task_id), lambda t, now: t.cancel(now, reason))

    async def time_out(self, task_id: str, reason: str = "deadline exceeded") -> Task:
        """End as ``timed_out`` with ``reason``: an upstream job that did not finish in time.

        Raises:
            TaskNotFound, InvalidTransition: the task is unknown or has ended.
        """
        live = await self._load(task_id)
        task = await self._change(live, lambda t, now: t.time_out(now, reason))
        self._cancel_producer(live)
        return task

    async def request_stop(self, task_id: str, by: str | None = None) -> Task:
        """Ask the task to stop: ``stopping`` now, ``cancelled`` when it ends or the grace expires.

        A pending task has no producer to ask and is cancelled at once; asking a task that is
        already stopping changes nothing.

        Raises:
            TaskNotFound: no task has this id.
            InvalidTransition: the task has ended.
        """
        live = await self._load(task_id)
        if live.task.status is TaskStatus.STOPPING:
            return live.task
        if live.task.status is TaskStatus.PENDING:
            return await self._change(live, lambda t, now: t.cancel(now, _stop_text(by)))

        def stop(task: Task, now: float) -> Task:
            stopping = task.request_stop(now)
            return stopping if by is None else stopping.progress_to(now, message=_stop_text(by))

        task = await self._change(live, stop)
        live.stop_requested = True
        self._cancel_producer(live)
        self._after(live, self._grace, self._grace_expired)
        return task

    # -- changes -----------------------------------------------------------------------------

    async def _create(
        self,
        kind: str,
        title: str,
        owner: str | None,
        deadline: float | None,
        metadata: Mapping[str, JSONValue] | None,
        task_id: str | None,
    ) -> _Live:
        self._require_started()
        self._refuse_if_closing()
        task_id = new_task_id() if task_id is None else task_id
        task = Task.new(task_id, kind, now=time.time(), title=title, owner=owner, deadline=deadline, metadata=metadata)
        if await self._store.get(task_id) is not None or task_id in self._live:
            raise TaskError(f"task {task_id!r} already exists")
        live = self._live[task_id] = _Live(task)
        try:
            async with live.lock:
                await self._store.put(task)
                await self._publish(task, event_for(None, task.status, self._events_of(task)))
        except BaseException:
            self._live.pop(task_id, None)
            raise
        self._schedule_deadline(live)
        return live

    async def _change(self, live: _Live, change: Change) -> Task:
        """Apply ``change`` in a task of its own; a cancelled caller does not stop it.

        Raises:
            ShuttingDown: ``aclose`` has made its last write pass; nothing was changed.
        """
        if self._sealed:
            raise _shutting_down(live.task.id)
        job = self._require_started().create_task(self._apply(live, change))
        self._commits.add(job)
        job.add_done_callback(self._job_done)
        return await asyncio.shield(job)

    async def _apply(self, live: _Live, change: Change) -> Task:
        async with live.lock:
            old = live.task
            if change(old, time.time()) is old:  # validate first: a refused change publishes nothing
                return old
            if live.dirty:
                await self._flush_locked(live)
            old = live.task  # progress may have arrived during the flush
            new = live.task = change(old, time.time())
            if new.is_terminal:
                stored = await asyncio.shield(self._store.put(new))
            else:
                stored = await self._store.put(new)
            if not stored:
                await self._adopt_stored(live)
            await self._publish(new, event_for(old.status, new.status, self._events_of(new)))
            for listener in self._listeners:
                listener(new)
            if new.is_terminal:
                await self._hub.mark_terminal(task_room(new.id))
                self._retire(live)
            return new

    async def _end(self, live: _Live, change: Change) -> None:
        """End the task as ``run`` leaves, unless something else ended it first."""
        try:
            await self._change(live, lambda t, now: t if t.is_terminal else change(t, now))
        except asyncio.CancelledError:
            # Our own stop/deadline cancellation arriving as the producer finished: the
            # change carries on shielded; the producer's task is not the one being stopped.
            if not live.producer_cancelled:
                raise
            self._absorb_cancel()

    async def _adopt_stored(self, live: _Live) -> None:
        """The store kept a terminal version written elsewhere: it is the truth, not ours."""
        stored = await self._store.get(live.task.id)
        if stored is not None:
            live.task = stored
        self._retire(live)
        raise InvalidTransition(
            f"task {live.task.id} was already ended elsewhere ({live.task.status})",
            task_id=live.task.id,
            current=live.task.status.value,
            target=None,
        )

    # -- progress ----------------------------------------------------------------------------

    def _progress(self, live: _Live, progress: float | None, step: str | None, message: str | None) -> None:
        if threading.get_ident() != self._thread:
            raise RuntimeError("progress() must run on the event loop's thread; use progress_threadsafe()")
        if self._sealed:  # the last write pass has begun: this value would never be stored
            raise _shutting_down(live.task.id)
        live.task = live.task.progress_to(time.time(), progress, step, message)
        live.dirty = True
        if live.flusher is None:
            live.flusher = self._spawn(self._flusher(live))

    def _progress_threadsafe(self, live: _Live, progress: float | None, step: str | None, message: str | None) -> None:
        live.task.progress_to(time.time(), progress, step, message)  # raise here, in the caller
        self._require_started().call_soon_threadsafe(self._progress_late, live, progress, step, message)

    def _progress_late(self, live: _Live, progress: float | None, step: str | None, message: str | None) -> None:
        try:
            self._progress(live, progress, step, message)
        except InvalidTransition:
            logger.debug("progress for task %s arrived after it ended", live.task.id)
        except ShuttingDown:
            logger.debug("progress for task %s arrived after the service closed", live.task.id)

    async def _flusher(self, live: _Live) -> None:
        """Publish the task's latest progress once ``progress_interval`` has passed."""
        loop = self._require_started()
        delay = live.last_progress + self._interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async with live.lock:
            if live.flusher is asyncio.current_task():
                live.flusher = None  # from here on a new progress needs a new flusher
            if live.dirty and not live.task.is_terminal:
                await self._flush_locked(live)

    async def _flush_locked(self, live: _Live) -> None:
        task = live.task
        live.dirty = False
        live.last_progress = self._require_started().time()
        if not await self._store.put(task):
            await self._adopt_stored(live)
        await self._publish(task, event_for(task.status, task.status, self._events_of(task)))

    # -- stop and deadline -------------------------------------------------------------------

    def _cancel_producer(self, live: _Live) -> None:
        producer = live.producer
        if producer is not None and not live.producer_cancelled and not producer.done():
            live.producer_cancelled = True
            producer.cancel()

    async def _grace_expired(self, live: _Live) -> None:
        reason = f"stop not acknowledged within {self._grace:g}s"
        await self._change(live, lambda t, now: t if t.is_terminal else t.cancel(now, reason))

    def _schedule_deadline(self, live: _Live) -> None:
        deadline = live.task.deadline
        if deadline is not None and not live.task.is_terminal:
            self._after(live, max(0.0, deadline - time.time()), self._deadline_passed)

    async def _deadline_passed(self, live: _Live) -> None:
        # No is_overdue check: the loop's monotonic timer may fire a hair before wall time.
        await self._change(live, lambda t, now: t if t.is_terminal else t.time_out(now))
        self._cancel_producer(live)  # its work is no longer wanted

    # -- plumbing ----------------------------------------------------------------------------

    async def _load(self, task_id: str) -> _Live:
        """The live record of a task, loading it from the store if this process has none.

        The gate of every update by id: refused with ``ShuttingDown`` once ``aclose`` began
        (checked again after the store read, which ``aclose`` may have overtaken).
        """
        self._refuse_if_closing(task_id)
        live = self._live.get(task_id)
        if live is not None:
            return live
        task = await self._store.get(task_id)
        if task is None:
            raise TaskNotFound(task_id)
        self._refuse_if_closing(task_id)
        live = self._live.get(task_id)  # another caller may have loaded it meanwhile
        if live is not None:
            return live
        live = _Live(task)
        if not task.is_terminal:
            self._live[task_id] = live
            self._schedule_deadline(live)
        return live

    def _retire(self, live: _Live) -> None:
        for timer in live.timers:
            timer.cancel()
        live.timers.clear()
        flusher = live.flusher
        if flusher is not None and flusher is not asyncio.current_task():
            flusher.cancel()
        live.flusher = None
        live.dirty = False
        if self._live.get(live.task.id) is live:
            del self._live[live.task.id]

    def _after(self, live: _Live, delay: float, action: Callable[[_Live], Awaitable[None]]) -> None:
        async def fire() -> None:
            try:
                await action(live)
            except (InvalidTransition, ShuttingDown):
                pass  # it ended another way first, or the service is closing

        timer = self._require_started().call_later(delay, lambda: self._spawn(fire()))
        live.timers.append(timer)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._require_started().create_task(coro)
        self._helpers.add(task)
        task.add_done_callback(self._job_done)
        return task

    def _job_done(self, job: asyncio.Task[Any]) -> None:
        self._helpers.discard(job)
        self._commits.discard(job)
        if not job.cancelled() and job.exception() is not None:
            exc = job.exception()
            if not isinstance(exc, TaskError):  # TaskErrors were raised to a caller too
                logger.error("task service job failed", exc_info=exc)

    async def _publish(self, task: Task, event: str) -> None:
        full = task.to_json()
        await self._hub.publish(task_room(task.id), event, full)
        for route in self._routes:
            try:
                rooms = list(route(task))
            except Exception:  # an application's routing bug must not lose the task's change
                logger.exception("task room route %r failed for task %s", route, task.id)
                continue
            for room in rooms:
                await self._hub.publish(room, event, full)
        summary = _summary(task)
        for room in self._summary_rooms(task):
            await self._hub.publish(room, event, summary)

    def _summary_rooms(self, task: Task) -> builtins.list[RoomName]:
        rooms = [LIST_ROOM]
        if "kind" in self._list_rooms:
            rooms.append(kind_room(task.kind))
        if "owner" in self._list_rooms and task.owner is not None:
            rooms.append(owner_room(task.owner))
        return rooms

    def _events_of(self, task: Task) -> TaskEvents:
        return self._events.get(task.kind, DEFAULT_EVENTS)

    async def _snapshot(self, room: RoomName) -> dict[str, JSONValue] | None:
        task_id = room[len(_TASK_ROOM_PREFIX) :]
        live = self._live.get(task_id)
        if live is not None:
            return live.task.to_json()
        task = await self._store.get(task_id)
        return None if task is None else task.to_json()

    def _refuse_if_closing(self, task_id: str | None = None) -> None:
        if self._closing:
            raise _shutting_down(task_id)

    def _require_started(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the task service is not running; await start() first")
        return self._loop

    @staticmethod
    def _absorb_cancel() -> None:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()


def _shutting_down(task_id: str | None) -> ShuttingDown:
    what = "nothing was changed" if task_id is None else f"task {task_id} was not changed"
    return ShuttingDown(f"the task service is shutting down; {what}")


def _summary(task: Task) -> dict[str, JSONValue]:
    """The list-room form: without ``result`` and ``metadata``, which may be large."""
    data = task.to_json()
    del data["result"], data["metadata"]
    return data


_ID_ALPHABET = string.ascii_letters + string.digits


def new_task_id() -> str:
    """12 random letters and digits (71 bits).

    Not ``token_urlsafe``: its ``-`` and ``_`` let one id in 64 start with ``-``, which a
    shell command (``roomcast tasks stop -x3…``) reads as an option.
    """
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))


def _jsonable(value: object) -> JSONValue:
    """``value`` if it is JSON (``None``, numbers, strings, lists, dicts), else its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value  # nested values are checked by the model
    return repr(value)


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _stop_text(by: str | None) -> str | None:
    return None if by is None else f"stop requested by {by}"
