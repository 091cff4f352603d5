"""``LiveTasks``: the tasks this process is changing now, and the order their changes land in.

Imports L0, the hub's public API and ``tasks.model`` / ``tasks.store``. Package-private: the
public face is ``tasks.service.TaskService``, which decides *what* changes (create, start,
report, stop, retention, shutdown); this module decides *how* a change reaches the store and
the subscribers. Why each piece is here:

* **One lock per task.** A change is validated, stored and published under it, so the
  subscribers of ``task:{id}`` see changes in the order they were made, and a store write of
  an older version can never land after a newer one.
* **Progress is coalesced.** A producer may call ``progress`` ten thousand times a second;
  subscribers need about ten. Each call only replaces the task's latest value (cheap, sync);
  one flusher per task publishes the latest value at most once per ``progress_interval``.
  A pending progress is flushed before any status change, so status and terminal events are
  never dropped and always come after the last progress.
* **Changes run shielded**, as a task of their own: a producer cancelled while it reports its
  end (a stop request arriving just then) must not lose the final state, since subscribers
  and the store are owed it.
* **Timers belong to a task.** The stop grace and the deadline are loop timers kept on the
  task's record, so a task that ends any other way cancels them, and ``aclose`` finds them all.
* **Every write is a compare-and-set** (``TaskStore.swap``) over the version this process last
  read or wrote. Another node (or a ``Publisher`` write) may have changed the task since; the
  store then refuses and hands back its newer value, which becomes ours (*rebase*): pending
  progress is re-applied on top of it and the change is computed again from it, so a stop
  written by node B and a progress flushed by node A both survive, and a change the newer
  status does not allow (completing what B cancelled) raises ``InvalidTransition`` instead of
  overwriting it. With one process per store the versions always match and nothing retries.
* **A shared store is read, not remembered.** With ``shared`` (several nodes write), a task
  this node does not hold may have moved on since it was loaded: an idle record is re-read
  before an update by id, ``peek`` compares versions, and records left idle are dropped
  (``drop_idle``) rather than kept for ever on every node that ever touched the task.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any

from roomcast import _json
from roomcast.errors import InvalidPublication, InvalidTransition, ShuttingDown, TaskError, TaskExists, TaskNotFound
from roomcast.hub import Hub
from roomcast.tasks.model import (
    DEFAULT_EVENTS,
    Task,
    TaskEvents,
    TaskStatus,
    event_for,
    summary_rooms,
    task_room,
)
from roomcast.tasks.store import Stored, Swap, TaskStore
from roomcast.types import JSONValue, RoomName

__all__ = ["LiveTasks", "Live", "Change", "PayloadMap", "shutting_down", "absorb_cancel"]

logger = logging.getLogger("roomcast.tasks")

_TASK_ROOM_PREFIX = task_room("")

Change = Callable[[Task, float], Task]
"""``(task, now) -> new task``: one of the model's methods, applied under the task's lock.

Computed again from the stored value when a write is refused, so it must depend only on the
task it is given (``t.start(now) if t.status is PENDING else t``), never on what the caller
saw before."""

PayloadMap = Callable[[Task], JSONValue]
"""``task -> JSON``: what one kind of task looks like to clients (``TaskService.payload``)."""

Progress = tuple[float | None, str | None, str | None]
"""``(progress, step, message)`` recorded since the last write; ``None`` keeps the stored one."""

_NO_PROGRESS: Progress = (None, None, None)

_ATTEMPTS = 100
"""Conflicting writes one change survives before it gives up: only a store that never settles
(or a bug) gets there, and an endless loop would hide it."""


class Live:
    """What this process holds for a task that has not ended.

    ``task`` is always the newest value this process knows, including progress not yet
    written (``dirty``, the fields in ``pending``); ``version`` is the stored version it is
    based on and ``node`` the node holding it (this one when its producer runs here).
    """

    __slots__ = (
        "task",
        "version",
        "node",
        "lock",
        "dirty",
        "pending",
        "busy",
        "last_progress",
        "flusher",
        "producer",
        "producer_cancelled",
        "stop_requested",
        "timers",
    )

    def __init__(self, task: Task, version: int = 0, node: str | None = None) -> None:
        self.task = task
        self.version = version
        self.node = node
        self.lock = asyncio.Lock()
        self.dirty = False
        self.pending: Progress = _NO_PROGRESS
        self.busy = 0  # changes started and not finished: the record is in use
        self.last_progress = -math.inf  # loop.time() of the last progress publication
        self.flusher: asyncio.Task[None] | None = None
        self.producer: asyncio.Task[Any] | None = None  # the asyncio task inside ``start``
        self.producer_cancelled = False  # we cancelled it: its CancelledError is ours
        self.stop_requested = False
        self.timers: list[asyncio.TimerHandle] = []


class LiveTasks:
    """The live tasks of one ``TaskService``: their locks, coalesced progress, timers and
    publications.

    Args:
        hub: publishes every change.
        store: where every change is written before it is published.
        progress_interval: seconds between two progress publications of one task.
        events: event names per task kind; other kinds use ``DEFAULT_EVENTS``.
        payloads: the client form per task kind (``PayloadMap``); other kinds send ``to_json``.
        stop_grace: seconds a producer has to end after a stop before it is cancelled anyway.
        list_rooms: ``"kind"`` and/or ``"owner"``: summary rooms besides ``LIST_ROOM``.
        node_id: this process's node id: the tasks whose producer runs here are stored with it.
    """

    def __init__(
        self,
        hub: Hub,
        store: TaskStore,
        *,
        progress_interval: float,
        events: Mapping[str, TaskEvents],
        stop_grace: float,
        list_rooms: frozenset[str],
        node_id: str,
        payloads: Mapping[str, PayloadMap] | None = None,
    ) -> None:
        self.hub = hub
        self.store = store
        self.node_id = node_id
        self.shared = store.leases is not None
        self.interval = progress_interval
        self.events: Mapping[str, TaskEvents] = dict(events)
        self.payloads: dict[str, PayloadMap] = dict(payloads or {})
        self.grace = stop_grace
        self.list_rooms = list_rooms
        self.live: dict[str, Live] = {}
        self.routes: builtins.list[Callable[[Task], Iterable[RoomName]]] = []
        self.listeners: builtins.list[Callable[[Task], None]] = []
        self.helpers: set[asyncio.Task[Any]] = set()  # flushers, timer callbacks: cancellable
        self.commits: set[asyncio.Task[Any]] = set()  # changes in flight: awaited, never cancelled
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: int | None = None
        # Shutdown in two steps: ``closing`` refuses new work (creating, loading a task),
        # ``sealed`` also refuses progress and changes, once the last write pass has begun:
        # anything accepted after it could be acknowledged and never stored.
        self.closing = False
        self.sealed = False

    def bind(self) -> None:
        """Remember the running loop and its thread: progress from elsewhere is handed here."""
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()

    # -- creating and loading ----------------------------------------------------------------

    async def create(self, task: Task, *, held: bool) -> Live:
        """Store and publish a new task; it is live from here on.

        Args:
            held: its producer runs in this process (``start``, ``spawn``): it is stored with
                this node's id, so a stop reaches it here and its end is owed if we die.

        Raises:
            TaskExists: a task with this id exists.
        """
        if task.id in self.live:
            raise TaskExists(task.id)
        live = self.live[task.id] = Live(task, node=self.node_id if held else None)
        try:
            async with live.lock:
                created = await self.store.swap(task, version=0, node=live.node)  # refused if the id is taken
                if not created.ok or created.stored is None:
                    raise TaskExists(task.id)
                live.version = created.stored.version
                await self.publish(task, event_for(None, task.status, self.events_of(task)))
        except BaseException:
            self.live.pop(task.id, None)
            raise
        self.schedule_deadline(live)
        return live

    async def load(self, task_id: str) -> Live:
        """The live record of a task, loading it from the store if this process has none.

        The gate of every update by id: refused with ``ShuttingDown`` once ``aclose`` began
        (checked again after the store read, which ``aclose`` may have overtaken). On a
        shared store an idle record of a task held elsewhere is read again first, so a worker
        reporting on a task another node ended is refused now, not after it was acknowledged.
        """
        self.refuse_if_closing(task_id)
        live = self.live.get(task_id)
        if live is not None:
            if self.shared and live.node != self.node_id and not (live.dirty or live.busy):
                await self.refresh(live)
            return live
        stored = await self.store.read(task_id)
        if stored is None:
            raise TaskNotFound(task_id)
        self.refuse_if_closing(task_id)
        return self.adopt(stored)

    def adopt(self, stored: Stored) -> Live:
        """The live record of a stored task: ours if we have one, else one made from it."""
        live = self.live.get(stored.task.id)  # another caller may have loaded it meanwhile
        if live is not None:
            return live
        live = Live(stored.task, stored.version, stored.node)
        if not stored.task.is_terminal:
            self.live[stored.task.id] = live
            self.schedule_deadline(live)
        return live

    async def refresh(self, live: Live) -> None:
        """Read the task again and make the stored value ours (see ``rebase``)."""
        async with live.lock:
            self.rebase(live, await self.store.read(live.task.id))

    async def peek(self, task_id: str) -> Task | None:
        """The newest value of the task without loading it: live if that is current, else stored."""
        live = self.live.get(task_id)
        if live is not None and not self.shared:
            return live.task  # the only writer: nothing stored is newer
        stored = await self.store.read(task_id)
        if live is not None and stored is not None and stored.version == live.version:
            return live.task  # what is stored, plus progress not yet written
        return None if stored is None else stored.task

    async def hold(self, live: Live) -> None:
        """Store the task as held by this node: its producer runs here from now on.

        Raises:
            InvalidTransition: the task has ended.
        """
        async with live.lock:
            for _ in range(_ATTEMPTS):
                if live.task.is_terminal:
                    raise InvalidTransition(
                        f"task {live.task.id} is {live.task.status}; no producer can take it",
                        task_id=live.task.id,
                        current=live.task.status.value,
                        target=None,
                    )
                if live.node == self.node_id:
                    return
                swap = await self.store.swap(live.task, version=live.version, node=self.node_id)
                if swap.ok and swap.stored is not None:
                    live.version, live.node = swap.stored.version, self.node_id
                    return
                self.rebase(live, swap.stored)
            raise _contended(live)

    # -- changes -----------------------------------------------------------------------------

    async def change(self, live: Live, change: Change) -> Task:
        """Apply ``change`` in a task of its own; a cancelled caller does not stop it.

        Raises:
            ShuttingDown: ``aclose`` has made its last write pass; nothing was changed.
            InvalidTransition: the task's status, as stored, does not allow the change.
        """
        if self.sealed:
            raise shutting_down(live.task.id)
        job = self.require_started().create_task(self._apply(live, change))
        live.busy += 1
        self.commits.add(job)
        job.add_done_callback(self._job_done)
        job.add_done_callback(lambda _: _unbusy(live))
        return await asyncio.shield(job)

    async def _apply(self, live: Live, change: Change) -> Task:
        async with live.lock:
            try:
                unchanged = change(live.task, time.time()) is live.task  # validate first
            except InvalidTransition:
                if not self.shared or live.task.is_terminal:
                    raise
                self.rebase(live, await self.store.read(live.task.id))  # we may be behind: ask
                unchanged = change(live.task, time.time()) is live.task
            if unchanged:  # a refused or empty change publishes nothing
                return live.task
            if live.dirty:
                try:
                    await self._flush_locked(live)
                except InvalidTransition:
                    if not live.task.is_terminal:
                        raise
                    # Ended elsewhere meanwhile: the change below decides whether that is an
                    # error (completing it) or nothing to do (a producer leaving its block).
            for _ in range(_ATTEMPTS):
                old = live.task  # progress may have arrived during the flush or the write
                new = live.task = change(old, time.time())
                if new is old:
                    return old  # the stored value already says it (another node stopped it)
                swap = await self._write(live, new)
                if swap.ok:
                    break
                self.rebase(live, swap.stored)  # then compute the change again from it
            else:
                raise _contended(live)
            await self.publish(new, event_for(old.status, new.status, self.events_of(new)))
            for listener in self.listeners:
                listener(new)
            if new.is_terminal:
                await self.hub.mark_terminal(task_room(new.id))
                self.retire(live)
            return new

    async def _write(self, live: Live, task: Task) -> Swap:
        """``swap`` over the version we hold; a terminal write is shielded from cancellation."""
        write = self.store.swap(task, version=live.version, node=live.node)
        swap = await (asyncio.shield(write) if task.is_terminal else write)
        if swap.ok and swap.stored is not None:
            live.version = swap.stored.version
        return swap

    def rebase(self, live: Live, stored: Stored | None) -> None:
        """Make the stored value ours, with the progress recorded here and not yet written.

        A terminal stored value retires the record; progress it cannot take (the task is
        pending again elsewhere, or ended) is dropped. A task whose producer runs here and
        that another node has meanwhile written ``stopping`` is stopped here at once, even if
        that node's request on the bus was lost.

        Raises:
            TaskNotFound: the task is no longer stored.
        """
        if stored is None:
            self.retire(live)
            raise TaskNotFound(live.task.id)
        live.version, live.node = stored.version, stored.node
        task = stored.task
        if live.dirty and not task.is_terminal:
            try:
                task = task.progress_to(time.time(), *live.pending)
            except TaskError:
                live.dirty, live.pending = False, _NO_PROGRESS
        live.task = task
        if task.is_terminal:
            self.retire(live)
        elif task.status is TaskStatus.STOPPING and live.node == self.node_id:
            self.stopped_elsewhere(live)

    async def end(self, live: Live, change: Change) -> None:
        """End the task as its producer leaves, unless something else ended it first."""
        try:
            await self.change(live, lambda t, now: t if t.is_terminal else change(t, now))
        except asyncio.CancelledError:
            # Our own stop/deadline cancellation arriving as the producer finished: the
            # change carries on shielded; the producer's task is not the one being stopped.
            if not live.producer_cancelled:
                raise
            absorb_cancel()

    # -- progress ----------------------------------------------------------------------------

    def progress(self, live: Live, progress: float | None, step: str | None, message: str | None) -> None:
        """Record progress from the loop's thread; a flusher publishes it coalesced."""
        if threading.get_ident() != self.thread:
            raise RuntimeError("progress() must run on the event loop's thread; use progress_threadsafe()")
        if self.sealed:  # the last write pass has begun: this value would never be stored
            raise shutting_down(live.task.id)
        live.task = live.task.progress_to(time.time(), progress, step, message)
        live.pending = _merge(live.pending, (progress, step, message))
        live.dirty = True
        if live.flusher is None:
            live.flusher = self.spawn(self._flusher(live))

    def progress_threadsafe(self, live: Live, progress: float | None, step: str | None, message: str | None) -> None:
        """Check the values in the caller's thread, then hand the update to the loop in order."""
        live.task.progress_to(time.time(), progress, step, message)  # raise here, in the caller
        self.require_started().call_soon_threadsafe(self._progress_late, live, progress, step, message)

    def _progress_late(self, live: Live, progress: float | None, step: str | None, message: str | None) -> None:
        try:
            self.progress(live, progress, step, message)
        except InvalidTransition:
            logger.debug("progress for task %s arrived after it ended", live.task.id)
        except ShuttingDown:
            logger.debug("progress for task %s arrived after the service closed", live.task.id)

    async def _flusher(self, live: Live) -> None:
        """Publish the task's latest progress once ``progress_interval`` has passed."""
        loop = self.require_started()
        delay = live.last_progress + self.interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        async with live.lock:
            if live.flusher is asyncio.current_task():
                live.flusher = None  # from here on a new progress needs a new flusher
            if live.dirty and not live.task.is_terminal:
                await self._flush_locked(live)

    async def _flush_locked(self, live: Live) -> None:
        for _ in range(_ATTEMPTS):
            task, pending = live.task, live.pending
            live.dirty, live.pending = False, _NO_PROGRESS
            live.last_progress = self.require_started().time()
            swap = await self._write(live, task)
            if swap.ok:
                break
            # Refused: what was pending is pending again, over the newer stored value.
            live.dirty, live.pending = True, _merge(pending, live.pending)
            self.rebase(live, swap.stored)
            if live.task.is_terminal:
                raise InvalidTransition(
                    f"task {live.task.id} was already ended elsewhere ({live.task.status})",
                    task_id=live.task.id,
                    current=live.task.status.value,
                    target=None,
                )
            if not live.dirty:
                return  # the newer value cannot take this progress: nothing to publish
        else:
            raise _contended(live)
        await self.publish(task, event_for(task.status, task.status, self.events_of(task)))

    async def flush_last(self, live: Live) -> None:
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

    # -- stop and deadline -------------------------------------------------------------------

    def stop(self, live: Live) -> None:
        """The task is ``stopping``: tell its producer and give it ``stop_grace`` to end."""
        live.stop_requested = True
        self.cancel_producer(live)
        self.arm_grace(live)

    def stopped_elsewhere(self, live: Live) -> None:
        """Another node wrote ``stopping`` for a task held here: act as if we had, and say so.

        The listeners hear it (a poller cancels its request), since this service did not
        make the change itself.
        """
        if live.stop_requested:
            return
        self.stop(live)
        for listener in self.listeners:
            listener(live.task)

    def arm_grace(self, live: Live) -> None:
        """Cancel the task ``stop_grace`` from now unless it has ended by then."""
        self.after(live, self.grace, self._grace_expired)

    def cancel_producer(self, live: Live) -> None:
        producer = live.producer
        if producer is not None and not live.producer_cancelled and not producer.done():
            live.producer_cancelled = True
            producer.cancel()

    async def _grace_expired(self, live: Live) -> None:
        reason = f"stop not acknowledged within {self.grace:g}s"
        await self.change(live, lambda t, now: t if t.is_terminal else t.cancel(now, reason))

    def schedule_deadline(self, live: Live) -> None:
        deadline = live.task.deadline
        if deadline is not None and not live.task.is_terminal:
            self.after(live, max(0.0, deadline - time.time()), self._deadline_passed)

    async def _deadline_passed(self, live: Live) -> None:
        # No is_overdue check: the loop's monotonic timer may fire a hair before wall time.
        await self.change(live, lambda t, now: t if t.is_terminal else t.time_out(now))
        self.cancel_producer(live)  # its work is no longer wanted

    # -- shutdown ----------------------------------------------------------------------------

    def cancel_timers(self) -> None:
        for live in list(self.live.values()):
            for timer in live.timers:
                timer.cancel()
            live.timers.clear()

    async def settle(self) -> None:
        """Wait for every change under way, including those that start while waiting."""
        while pending := [job for job in self.commits if not job.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    def drop_idle(self) -> int:
        """Forget the records of tasks held elsewhere that nothing here is using; how many.

        Only for a shared store: there the record of a task another node ends is never told
        of the end, and keeping it would grow every node's memory with every task it ever
        touched. A dropped task is read again by the next update that names it.
        """
        now = self.require_started().time()
        dropped = 0
        for live in list(self.live.values()):
            live.timers = [t for t in live.timers if not t.cancelled() and t.when() > now]
            busy = live.dirty or live.busy or live.lock.locked() or live.flusher is not None
            if live.node != self.node_id and not busy and not live.timers and live.producer is None:
                del self.live[live.task.id]
                dropped += 1
        return dropped

    async def cancel_helpers(self) -> None:
        for helper in list(self.helpers):
            helper.cancel()
        await asyncio.gather(*self.helpers, return_exceptions=True)

    # -- plumbing ----------------------------------------------------------------------------

    def retire(self, live: Live) -> None:
        for timer in live.timers:
            timer.cancel()
        live.timers.clear()
        flusher = live.flusher
        if flusher is not None and flusher is not asyncio.current_task():
            flusher.cancel()
        live.flusher = None
        live.dirty = False
        if self.live.get(live.task.id) is live:
            del self.live[live.task.id]

    def after(self, live: Live, delay: float, action: Callable[[Live], Awaitable[None]]) -> None:
        async def fire() -> None:
            try:
                await action(live)
            except (InvalidTransition, ShuttingDown):
                pass  # it ended another way first, or the service is closing

        timer = self.require_started().call_later(delay, lambda: self.spawn(fire()))
        live.timers.append(timer)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self.require_started().create_task(coro)
        self.helpers.add(task)
        task.add_done_callback(self._job_done)
        return task

    def _job_done(self, job: asyncio.Task[Any]) -> None:
        self.helpers.discard(job)
        self.commits.discard(job)
        if not job.cancelled() and job.exception() is not None:
            exc = job.exception()
            if not isinstance(exc, TaskError):  # TaskErrors were raised to a caller too
                logger.error("task service job failed", exc_info=exc)

    async def publish(self, task: Task, event: str) -> None:
        """Publish one change: the client form to the task's room and its routed rooms, the
        canonical summary to the list rooms (which the dashboard follows).

        The kind's payload map runs once per change, and its result is what every subscriber
        of those rooms gets, encoded once per transport. A map that raises or returns what is
        not JSON is logged and the canonical form is published instead: the change was stored
        before this, and its subscribers still get it.

        A mapped change also carries the canonical form (``Publication.canonical``), kept with
        it in history, for the streams that ask for it (``roomcast tail``); every other
        subscriber is sent the client form alone.
        """
        full = self.client_form(task)
        canonical: tuple[JSONValue, ...] | None = None
        if task.kind in self.payloads:
            own = task.to_json()
            canonical = (own,) if full != own else None  # a map that failed sent it already
        try:
            await self.hub.publish(task_room(task.id), event, full, canonical=canonical)
        except InvalidPublication:
            if task.kind not in self.payloads:
                raise  # the event name itself is refused: the canonical form would be too
            full, canonical = _not_json(task), None
            await self.hub.publish(task_room(task.id), event, full)
        for route in self.routes:
            try:
                rooms = list(route(task))
            except Exception:  # an application's routing bug must not lose the task's change
                logger.exception("task room route %r failed for task %s", route, task.id)
                continue
            for room in rooms:
                await self.hub.publish(room, event, full, canonical=canonical)
        summary = task.summary()
        for room in summary_rooms(task, self.list_rooms):
            await self.hub.publish(room, event, summary)

    def events_of(self, task: Task) -> TaskEvents:
        return self.events.get(task.kind, DEFAULT_EVENTS)

    def client_form(self, task: Task) -> JSONValue:
        """The task as its kind's clients read it: its payload map's result, else ``to_json``.

        A map that raises is logged (with the task) and the canonical form is returned, so a
        bug in the application's map costs its clients the field names, never the change.
        """
        payload = self.payloads.get(task.kind)
        if payload is None:
            return task.to_json()
        try:
            return payload(task)
        except Exception:
            logger.exception(
                "task payload map for kind %r failed on task %s; its canonical form is sent", task.kind, task.id
            )
            return task.to_json()

    async def snapshot(self, room: RoomName) -> JSONValue:
        """The snapshot provider of every ``task:*`` room: the client form, like its events."""
        task = await self.peek(room[len(_TASK_ROOM_PREFIX) :])
        if task is None:
            return None
        form = self.client_form(task)
        if task.kind in self.payloads:
            try:  # per subscriber, off the fan-out path: a transport must not fail on it later
                _json.dumps_checked(form)
            except _json.JSONEncodeError:
                return _not_json(task)
        return form

    async def canonical_snapshot(self, room: RoomName) -> JSONValue:
        """The canonical snapshot of every ``task:*`` room (``Task.to_json``), for the streams
        that asked for the canonical view (``Hub.snapshot(..., canonical=True)``)."""
        task = await self.peek(room[len(_TASK_ROOM_PREFIX) :])
        return None if task is None else task.to_json()

    def refuse_if_closing(self, task_id: str | None = None) -> None:
        if self.closing:
            raise shutting_down(task_id)

    def require_started(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            raise RuntimeError("the task service is not running; await start() first")
        return self.loop


def _merge(old: Progress, new: Progress) -> Progress:
    """Two progress reports as one: each field from the newer unless it left it ``None``."""
    return (
        old[0] if new[0] is None else new[0],
        old[1] if new[1] is None else new[1],
        old[2] if new[2] is None else new[2],
    )


def _unbusy(live: Live) -> None:
    live.busy -= 1


def _contended(live: Live) -> TaskError:
    return TaskError(f"task {live.task.id}: gave up after {_ATTEMPTS} writes refused by newer versions")


def absorb_cancel() -> None:
    """Undo one cancellation of the current task: it was ours and has been handled."""
    current = asyncio.current_task()
    if current is not None:
        current.uncancel()


def shutting_down(task_id: str | None) -> ShuttingDown:
    what = "nothing was changed" if task_id is None else f"task {task_id} was not changed"
    return ShuttingDown(f"the task service is shutting down; {what}")


def _not_json(task: Task) -> dict[str, JSONValue]:
    """Log that ``task``'s payload map returned what is not JSON; the canonical form to send."""
    logger.error(
        "task payload map for kind %r returned data that is not JSON; task %s is sent in its canonical form",
        task.kind,
        task.id,
    )
    return task.to_json()
