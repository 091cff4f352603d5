"""``TaskService``: tasks that live in a store and are published through the hub.

Imports L0, the hub's public API and ``tasks.*``. The model decides which changes are legal,
the store keeps them across restarts, ``tasks._live`` orders each task's writes and
publications and coalesces its progress; this module is the public face and decides *what*
changes: creating, producing, reporting from outside, stopping, retention and shutdown.

* **Stop is cooperative, then forced.** ``request_stop`` publishes ``stopping`` at once and
  cancels an in-process producer; one that does not end within ``stop_grace`` is marked
  ``cancelled`` anyway, so a stuck producer cannot keep a dashboard spinning for ever. The
  producer may run on another node: the task's stored node says which, and that node is
  asked to stop it (``tasks._nodes``), exactly as a stop it received itself.
* **Who ends a dead producer's task depends on the store.** A store this process has alone
  (SQLite) is swept at ``open``: every unfinished task was left by a process that is gone
  (``INTERRUPTED_REASON``). A store shared by live nodes (Redis) must not be: there a task is
  held by the node running its producer, under a lease, and only a lapsed lease fails it
  (``NODE_LOST_REASON``); a task reported by an outside worker is held by no node and is
  never failed for a node's death.
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
import secrets
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from roomcast.cluster.base import Cluster
from roomcast.errors import TaskNotFound
from roomcast.hub import Hub
from roomcast.tasks._live import Live, LiveTasks, PayloadMap, absorb_cancel
from roomcast.tasks._nodes import DEFAULT_LEASE_TTL, NODE_LOST_REASON, NodeDuties
from roomcast.tasks.model import Task, TaskEvents, TaskStatus, event_for, task_room
from roomcast.tasks.store import DEFAULT_PAGE_SIZE, StatusFilter, TaskStore
from roomcast.types import JSONValue, RoomName

__all__ = [
    "TaskService",
    "TaskHandle",
    "INTERRUPTED_REASON",
    "NODE_LOST_REASON",
    "DEFAULT_LEASE_TTL",
    "LIST_ROOM_KINDS",
    "PayloadMap",
]

logger = logging.getLogger("roomcast.tasks")

INTERRUPTED_REASON = "server restarted"
"""The ``error`` of tasks found unfinished at startup of a store this process has alone: their
producer died with the old process. (A shared store fails a dead node's with ``NODE_LOST_REASON``.)"""

LIST_ROOM_KINDS = frozenset({"kind", "owner"})
"""What ``list_rooms`` may name: extra summary rooms per kind and/or per owner."""

_R = TypeVar("_R")


class TaskHandle:
    """What ``TaskService.start`` yields to an in-process producer.

    ``progress`` is sync so that it can sit in a tight loop or a sync callback without an
    ``await`` per call; it only records the value, and the service publishes at its own pace.
    """

    __slots__ = ("_tasks", "_live")

    def __init__(self, tasks: LiveTasks, live: Live) -> None:
        self._tasks = tasks
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
        self._tasks.progress(self._live, progress, step, message)

    def progress_threadsafe(
        self, progress: float | None = None, step: str | None = None, message: str | None = None
    ) -> None:
        """Record progress from any thread (a worker in ``asyncio.to_thread``).

        The values are checked here, so a bad one raises in the caller's thread; the update
        itself is handed to the loop in call order.
        """
        self._tasks.progress_threadsafe(self._live, progress, step, message)

    async def complete(self, result: JSONValue = None) -> Task:
        """End the task now with ``result`` (leaving the ``async with`` then changes nothing)."""
        return await self._tasks.change(self._live, lambda t, now: t.complete(now, result))

    async def fail(self, error: str) -> Task:
        """End the task now as failed, without raising out of the ``async with``."""
        return await self._tasks.change(self._live, lambda t, now: t.fail(now, error))


class TaskService:
    """Creates, changes, stores and publishes tasks.

    Args:
        hub: publishes every change; must be started before ``start``.
        store: keeps tasks durable; the service is its only writer in this process (other
            processes may write a shared store: see ``TaskStore.leases``).
        progress_interval: seconds between two progress publications of one task.
        events: event names per task kind (aliases); other kinds use ``DEFAULT_EVENTS``.
        payloads: what clients receive per task kind, ``task -> JSON`` (see ``payload``);
            other kinds send ``Task.to_json``.
        stop_grace: seconds a producer has to end after ``request_stop`` before the task is
            marked ``cancelled`` anyway.
        list_rooms: extra summary rooms besides ``LIST_ROOM``: ``"kind"`` and/or ``"owner"``.
        keep_days: finished tasks older than this many days are deleted (``None``: kept).
        keep_count: at most this many finished tasks are kept, the newest (``None``: all).
        retention_interval: seconds between two retention passes; the first runs in ``open``.
        cluster: the node bus, to reach the node running a task's producer; the hub's
            (``hub.nodes.cluster``) by default. Its node id labels the tasks produced here.
        lease_ttl: with a shared store, seconds this node's tasks outlive its last lease
            renewal before another node fails them as lost.
    """

    def __init__(
        self,
        hub: Hub,
        store: TaskStore,
        *,
        progress_interval: float = 0.1,
        events: Mapping[str, TaskEvents] | None = None,
        payloads: Mapping[str, PayloadMap] | None = None,
        stop_grace: float = 5.0,
        list_rooms: Collection[str] = (),
        keep_days: float | None = None,
        keep_count: int | None = None,
        retention_interval: float = 3600.0,
        cluster: Cluster | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
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
        cluster = cluster if cluster is not None else hub.nodes.cluster
        self._tasks = LiveTasks(
            hub,
            store,
            progress_interval=progress_interval,
            events=events or {},
            payloads=payloads,
            stop_grace=stop_grace,
            list_rooms=frozenset(list_rooms),
            node_id=cluster.node_id,
        )
        self._nodes = NodeDuties(self._tasks, cluster, store.leases, lease_ttl=lease_ttl)
        self._spawned: set[asyncio.Task[Any]] = set()  # producers started by ``spawn``
        self.shutdown_reason = "producer was cancelled"
        """The error a task is failed with when ``aclose`` cancels its producer; a graceful
        drain (``server.drain``) sets ``"server shutting down"``, which tells a dashboard and
        the task's subscribers that the deploy, not the work, ended it."""
        self._opened = False
        self._closer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def node_id(self) -> str:
        """The id the tasks produced in this process are stored with."""
        return self._tasks.node_id

    async def open(self) -> None:
        """Serve snapshots of ``task:*`` rooms and end the tasks a previous process left.

        Idempotent. With a store this process has alone, interrupted tasks are published as
        failed and their rooms marked terminal, so subscribers still waiting on them get an
        end. With a shared store nothing is failed here: this node takes its lease, and dead
        nodes' tasks are failed as their leases lapse.
        """
        if self._opened:
            return
        self._opened = True
        tasks = self._tasks
        tasks.bind()
        self._hub.snapshot(task_room("*"))(tasks.snapshot)
        self._hub.snapshot(task_room("*"), canonical=True)(tasks.canonical_snapshot)
        if self._store.leases is None:
            for task in await self._store.mark_interrupted(INTERRUPTED_REASON, time.time()):
                await tasks.publish(task, event_for(TaskStatus.RUNNING, task.status, tasks.events_of(task)))
                await self._hub.mark_terminal(task_room(task.id))
        if self._keep_days is not None or self._keep_count is not None:
            await self.prune()
            tasks.helpers.add(asyncio.create_task(self._retention_loop()))
        await self._nodes.open()  # last: a failed open leaves no lease beating behind it

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

    async def sweep(self) -> int:
        """End now what lost nodes left, and overdue tasks no live node watches; how many.

        With a shared store the lease loop does this every third of ``lease_ttl`` by itself
        (once this node has renewed its own lease for a whole ``lease_ttl``); call it to act
        at once. A store this process has alone has nothing to sweep: 0.
        """
        if self._store.leases is None:
            return 0
        return await self._nodes.sweep()

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
        4. flushers and timer callbacks are cancelled, and with a shared store this node's
           lease is released: a task still held here (a ``start`` block the application
           left running) is then failed as lost by another node, at once.

        The store and the hub are left open: their owner closes them after this.
        """
        if self._closer is None:
            self._closer = asyncio.ensure_future(self._close())
        await self._closer

    async def _close(self) -> None:
        tasks = self._tasks
        tasks.closing = True
        await self._nodes.stop_beating()  # no sweep may start a write past the last pass
        for job in list(self._spawned):
            job.cancel()
        await asyncio.gather(*self._spawned, return_exceptions=True)
        tasks.cancel_timers()
        await tasks.settle()
        tasks.sealed = True  # synchronously before the pass: no progress can slip in behind it
        for live in list(tasks.live.values()):
            await tasks.flush_last(live)
        await tasks.settle()  # a change that got past the gates just before the seal
        await tasks.cancel_helpers()
        await self._nodes.aclose()

    def producers(self) -> set[asyncio.Task[Any]]:
        """The asyncio tasks running this process's producers now (``spawn``, ``start``
        blocks): what a graceful drain gives the grace to end before ``aclose`` cuts them."""
        running = {live.producer for live in self._tasks.live.values() if live.producer is not None}
        return running | {job for job in self._spawned if not job.done()}

    # -- reading -----------------------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        """The newest value of the task.

        Raises:
            TaskNotFound: no task has this id.
        """
        task = await self._tasks.peek(task_id)
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
        live = await self._create(kind, title, owner, deadline, metadata, id, held=False)
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
        tasks = self._tasks
        live = await self._create(kind, title, owner, deadline, metadata, id, held=True)
        await tasks.change(live, lambda t, now: t.start(now))
        live.producer = asyncio.current_task()
        try:
            yield TaskHandle(tasks, live)
        except asyncio.CancelledError:
            live.producer = None
            if not live.producer_cancelled:
                error = self.shutdown_reason if tasks.closing else "producer was cancelled"
                await tasks.end(live, lambda t, now: t.fail(now, error))
                raise
            absorb_cancel()
            await tasks.end(live, lambda t, now: t.cancel(now))
        except BaseException as exc:
            live.producer = None
            error = _error_text(exc)
            await tasks.end(live, lambda t, now: t.fail(now, error))
            raise
        else:
            live.producer = None
            await tasks.end(live, lambda t, now: t.complete(now, None))

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
        self._tasks.routes.append(fn)
        return fn

    def payload(self, kind: str) -> Callable[[PayloadMap], PayloadMap]:
        """Register ``fn(task) -> JSON``: the form clients receive for tasks of ``kind``.

        For a frontend written against another server's field names, beside renaming the
        events (``TaskEvents``)::

            @hub.tasks.payload("crawl")
            def crawl_wire(task: Task) -> dict:
                return {"progressId": task.id, "percentage": task.progress,
                        "status": "crawling" if task.status == "running" else task.status.value}

        It shapes what the task's room (``task:{id}``) and its routed rooms carry, events and
        snapshot alike, on every transport; it runs once per change, not per recipient, under
        the task's lock, so it must be quick and depend only on the task. The
        store, the API, the dashboard and the list rooms keep the canonical ``Task.to_json``.
        A map that raises or returns what is not JSON is logged, and that change goes out in
        the canonical form: nothing is lost.
        """

        def register(fn: PayloadMap) -> PayloadMap:
            self._tasks.payloads[kind] = fn
            return fn

        return register

    def client_form(self, task: Task) -> JSONValue:
        """The task as its kind's clients read it (``payload``), for an application snapshot
        that embeds a task (a project's latest crawl) in the form its events use."""
        return self._tasks.client_form(task)

    def add_listener(self, listener: Callable[[Task], None]) -> None:
        """Call ``listener(task)`` after every status change this service makes, once it is
        published, and when another node stops a task held here (a poller learns of a stop
        or an end here). It must be quick and not raise."""
        self._tasks.listeners.append(listener)

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
        ready: asyncio.Future[Task] = self._tasks.require_started().create_future()

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

    async def hold(self, task_id: str) -> Task:
        """Take the task's producer into this process (an upstream poller following it).

        Stored with this node's id from now on: a stop sent to any node reaches it here
        (through the listeners), and if this process dies the task is failed as lost.

        Raises:
            TaskNotFound, InvalidTransition: the task is unknown or has ended.
        """
        live = await self._tasks.load(task_id)
        await self._tasks.hold(live)
        return live.task

    # -- external updates --------------------------------------------------------------------

    async def begin(self, task_id: str) -> Task:
        """``pending`` → ``running``, for a producer outside this process picking the task up."""
        return await self._tasks.change(await self._tasks.load(task_id), lambda t, now: t.start(now))

    async def report(
        self,
        task_id: str,
        progress: float | None = None,
        step: str | None = None,
        message: str | None = None,
    ) -> Task:
        """Record progress (coalesced like a producer's); returns the task with it applied.

        A worker in another process reports on the task it was handed: its first valid report
        starts a ``pending`` task (a bad one leaves it pending). A report with no field only
        starts the task, or answers its status (how a worker polls for a stop): nothing is
        published for it.

        Raises:
            TaskNotFound, InvalidProgress, InvalidTransition: nothing changes then.
            ShuttingDown: ``aclose`` has begun; nothing is recorded or acknowledged.
        """
        tasks = self._tasks
        live = await tasks.load(task_id)
        if live.task.status is TaskStatus.PENDING:
            now = time.time()
            live.task.start(now).progress_to(now, progress, step, message)  # validate before starting
            await tasks.change(live, _start_if_pending)
        if progress is None and step is None and message is None:
            live.task.progress_to(time.time())  # nothing to publish; refused if it has ended
        else:
            tasks.progress(live, progress, step, message)
        return live.task

    async def complete(self, task_id: str, result: JSONValue = None) -> Task:
        """End as completed; a ``pending`` task a worker finished without reporting is started first."""
        tasks = self._tasks
        live = await tasks.load(task_id)
        if live.task.status is TaskStatus.PENDING:
            await tasks.change(live, _start_if_pending)
        return await tasks.change(live, lambda t, now: t.complete(now, result))

    async def fail(self, task_id: str, error: str) -> Task:
        return await self._tasks.change(await self._tasks.load(task_id), lambda t, now: t.fail(now, error))

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        """End as cancelled: a producer acknowledging a stop, or a pending task dropped."""
        return await self._tasks.change(await self._tasks.load(task_id), lambda t, now: t.cancel(now, reason))

    async def time_out(self, task_id: str, reason: str = "deadline exceeded") -> Task:
        """End as ``timed_out`` with ``reason``: an upstream job that did not finish in time.

        Raises:
            TaskNotFound, InvalidTransition: the task is unknown or has ended.
        """
        live = await self._tasks.load(task_id)
        task = await self._tasks.change(live, lambda t, now: t.time_out(now, reason))
        self._tasks.cancel_producer(live)
        return task

    async def request_stop(self, task_id: str, by: str | None = None) -> Task:
        """Ask the task to stop: ``stopping`` now, ``cancelled`` when it ends or the grace expires.

        A pending task has no producer to ask and is cancelled at once; asking a task that is
        already stopping changes nothing. A task whose producer runs on another node is
        written ``stopping`` here and that node is asked to stop it; this node's grace timer
        ends it if that node cannot be reached.

        Raises:
            TaskNotFound: no task has this id.
            InvalidTransition: the task has ended.
        """
        tasks = self._tasks
        live = await tasks.load(task_id)
        asked = False  # this call moved it to stopping (decided on the value actually written)

        def stop(task: Task, now: float) -> Task:
            nonlocal asked
            asked = task.status is TaskStatus.RUNNING
            if task.status is TaskStatus.PENDING:
                return task.cancel(now, _stop_text(by))
            if task.status is TaskStatus.STOPPING:
                return task
            stopping = task.request_stop(now)
            return stopping if by is None else stopping.progress_to(now, message=_stop_text(by))

        task = await tasks.change(live, stop)
        if not asked:
            return task
        if live.node is None or live.node == self.node_id:
            tasks.stop(live)
        else:
            await self._nodes.forward_stop(live.node, task_id)
            tasks.arm_grace(live)
        return task

    # -- plumbing ----------------------------------------------------------------------------

    async def _create(
        self,
        kind: str,
        title: str,
        owner: str | None,
        deadline: float | None,
        metadata: Mapping[str, JSONValue] | None,
        task_id: str | None,
        *,
        held: bool,
    ) -> Live:
        self._tasks.require_started()
        self._tasks.refuse_if_closing()
        task_id = new_task_id() if task_id is None else task_id
        task = Task.new(task_id, kind, now=time.time(), title=title, owner=owner, deadline=deadline, metadata=metadata)
        return await self._tasks.create(task, held=held)


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


def _start_if_pending(task: Task, now: float) -> Task:
    """Start a pending task; one another node started already stays as it is."""
    return task.start(now) if task.status is TaskStatus.PENDING else task


def _error_text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _stop_text(by: str | None) -> str | None:
    return None if by is None else f"stop requested by {by}"
