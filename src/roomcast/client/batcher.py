"""Turning a stream of fine-grained changes into a few coalesced batches.

Owns ``Change``, ``ChangeBuffer`` (pure: decides what to hand over and when, with the time
passed in) and ``ChangeBatcher`` (the asyncio driver that calls the application's handler).
Imports only the stdlib. Time reaches the driver only through the injected ``clock`` and
``sleep``, so tests move time by hand.

Why: a room publishing 50 updates a second would make a UI re-render 50 times a second and
a cache re-sync 50 times. The application wants "what changed, per key" every so often,
with three timing rules:

- **debounce** (0.5 s): a burst is handed over once it has been quiet for ``debounce``, so
  1,000 changes in a burst become one batch;
- **window** (5 s): a stream that never goes quiet is still handed over every ``window``
  seconds, counted from the first change of the pending batch;
- **max_wait** (10 s): the planned hand-over is never later than ``max_wait`` after the
  first pending change, whatever ``debounce`` and ``window`` are set to.

Coalescing is by key and **the last change to a key wins**: ``update`` then ``delete`` is
the delete; ``delete`` then ``create`` (or ``update``) is the later change, so the key is
re-created. Only ``"delete"`` has a meaning here; every other kind is the application's
own, and a handler should treat any non-delete as "the current value is ``data``" (an
upsert), since a ``create`` followed by an ``update`` in one batch arrives as the update.

**Batch order** is the order of each key's *last* change. It is the order in which the
final values were produced, so a handler applying a batch front to back never applies a
value before one it was derived from (``b`` created, then ``a`` updated to point at ``b``
arrives as ``[b, a]``, even if ``a`` was first touched before ``b`` existed).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["DELETE", "Change", "ChangeBuffer", "BatchHandler", "ChangeBatcher"]

logger = logging.getLogger("roomcast.client")

DELETE = "delete"
"""The one ``Change.kind`` the batcher interprets."""


@dataclass(frozen=True, slots=True)
class Change:
    """One change to one keyed item: ``kind`` is ``"delete"`` or any application kind."""

    key: str
    kind: str
    data: Any = None


class ChangeBuffer:
    """The pending batch and its deadlines. Pure: every method that needs the time takes it.

    Args:
        debounce: hand over once no change arrived for this many seconds (>= 0).
        window: hand over at the latest this many seconds after the first pending change,
            even if changes keep arriving (> 0).
        max_wait: hard cap on the planned hand-over, seconds after the first pending change
            (> 0). With the defaults the window comes first; it binds when ``window`` or
            ``debounce`` is configured larger.

    Raises:
        ValueError: a negative ``debounce`` or a non-positive ``window`` / ``max_wait``.
    """

    __slots__ = ("debounce", "window", "max_wait", "_pending", "_first_at", "_last_at")

    def __init__(self, debounce: float = 0.5, window: float = 5.0, max_wait: float = 10.0) -> None:
        if not debounce >= 0:
            raise ValueError(f"debounce must be >= 0 seconds, got {debounce!r}")
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if not max_wait > 0:
            raise ValueError(f"max_wait must be > 0 seconds, got {max_wait!r}")
        self.debounce = debounce
        self.window = window
        self.max_wait = max_wait
        self._pending: dict[str, Change] = {}
        self._first_at = 0.0
        self._last_at = 0.0

    def add(self, change: Change, now: float) -> None:
        """Add ``change`` at time ``now``; it replaces any pending change of the same key."""
        pending = self._pending
        if not pending:
            self._first_at = now
        # Pop first so the key moves to the end: batch order is the order of last changes.
        pending.pop(change.key, None)
        pending[change.key] = change
        self._last_at = now

    @property
    def first_at(self) -> float | None:
        """When the oldest pending change arrived, or ``None`` if nothing is pending."""
        return self._first_at if self._pending else None

    def due_at(self) -> float | None:
        """When the pending batch is to be handed over, or ``None`` if nothing is pending.

        ``min(last change + debounce, first change + window, first change + max_wait)``.
        Adding a change never makes this earlier, only later (up to the window and cap),
        so a driver that sleeps until it and then asks again never hands over too late.
        """
        if not self._pending:
            return None
        return min(
            self._last_at + self.debounce,
            self._first_at + self.window,
            self._first_at + self.max_wait,
        )

    def take(self, now: float) -> list[Change] | None:
        """The pending batch if it is due at ``now`` (and empty the buffer), else ``None``."""
        due = self.due_at()
        if due is None or now < due:
            return None
        return self.drain()

    def drain(self) -> list[Change]:
        """Everything pending, due or not (a flush), and empty the buffer."""
        batch = list(self._pending.values())
        self._pending.clear()
        return batch

    def clear(self) -> int:
        """Drop everything pending (a clear or a close); returns how many changes were dropped."""
        count = len(self._pending)
        self._pending.clear()
        return count

    def __len__(self) -> int:
        """How many keys have a pending change."""
        return len(self._pending)

    def __repr__(self) -> str:
        return f"<ChangeBuffer {len(self._pending)} pending, due at {self.due_at()}>"


BatchHandler = Callable[[list[Change]], Awaitable[None] | None]
"""Receives each batch; sync or ``async``. Never called with an empty list."""


class ChangeBatcher:
    """Calls ``handler`` with coalesced batches of the changes given to ``add()``.

    What it guarantees:

    - **One batch at a time.** The handler is never called again before its previous call
      returned (an ``async`` handler: before its coroutine finished). Changes arriving
      meanwhile are coalesced into the next batch.
    - **Timing.** With the handler idle and the batcher not held, a batch is handed over at
      ``ChangeBuffer.due_at()``: ``debounce`` after the last change, at most ``window``
      after the first pending change, and never later than ``max_wait`` after it. While
      a handler call runs, the next batch cannot start; if it became due meanwhile it is
      handed over the moment the call returns, without waiting for a new debounce. So,
      unless held, a batch is handed over at the *later* of its due time (at most
      ``max_wait`` after its first change) and the return of the handler call running then.
      ``max_wait`` is a hard cap on what the batcher plans, not on the handler: one slower
      than ``max_wait`` stretches it (running batches concurrently would break the rule
      above), and each batch it made late beyond ``max_wait`` is logged as a warning so the
      slow handler can be found.
    - **Isolation.** A handler that raises is logged with its traceback; the batch is not
      retried and batching carries on.
    - ``hold()`` keeps every change and hands nothing over until ``release()``;
      ``clear()`` drops what is pending and carries on; ``close()`` drops it and stops.

    Call ``add`` and the other methods from the event loop's thread; ``add`` needs a
    running loop (it starts the driver task when a batch begins).

    Args:
        handler: called with each batch (a non-empty ``list[Change]``, see the module
            docstring for the order).
        debounce, window, max_wait: see ``ChangeBuffer``.
        clock: monotonic seconds; inject a fake in tests.
        sleep: awaits the given seconds; inject one driven by the fake clock in tests.
    """

    def __init__(
        self,
        handler: BatchHandler,
        *,
        debounce: float = 0.5,
        window: float = 5.0,
        max_wait: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._handler = handler
        self._buffer = ChangeBuffer(debounce, window, max_wait)
        self._clock = clock
        self._sleep = sleep
        # Held by whoever is calling the handler (the driver or flush()): one batch at a time.
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._held = False
        self._closed = False
        self._driver_calling = False

    @property
    def held(self) -> bool:
        """Whether ``hold()`` is in effect."""
        return self._held

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    def __len__(self) -> int:
        """How many keys have a pending change (not yet handed to the handler)."""
        return len(self._buffer)

    def add(self, key: str, kind: str, data: Any = None) -> None:
        """Record a change; cheap and synchronous. Ignored (logged at debug) once closed."""
        if self._closed:
            logger.debug("batcher closed: dropping change of %r", key)
            return
        self._buffer.add(Change(key, kind, data), self._clock())
        self._ensure_driver()

    async def flush(self) -> None:
        """Hand over everything pending now, due or not, and wait until the handler is done.

        Waits first for a handler call in progress (one batch at a time). Works while
        held: ``hold()`` stops the timed hand-overs, an explicit flush is the caller asking.
        Does nothing once closed.
        """
        async with self._lock:
            if self._closed or not self._buffer:
                return
            await self._call(self._buffer.drain())

    def hold(self) -> None:
        """Keep changes but hand nothing over until ``release()`` (e.g. while paused)."""
        self._held = True

    def release(self) -> None:
        """End ``hold()``: a batch already due is handed over promptly, the rest on time."""
        self._held = False
        self._ensure_driver()

    def clear(self) -> int:
        """Drop everything pending but keep batching: later ``add`` calls work as before.

        For changes that went stale before they were handed over: the application has just
        replaced its whole state (a room was reset and came with a fresh snapshot, the app
        came back to the foreground and re-read everything), so applying them would only
        redo or undo what the new state already says. Unlike ``flush()`` nothing reaches
        the handler; unlike ``close()`` the batcher stays open.

        The hand-over planned for the dropped batch is cancelled with it, so the next
        change starts a batch of its own, with its own debounce, window and ``max_wait``.
        A handler call in progress is not cancelled (its batch was handed over before the
        clear); a change added meanwhile goes to the batch after it. ``hold()`` stays in
        effect. Call ``await flush()`` after ``clear()`` to also wait until a handler call
        in progress has returned (it then has nothing to hand over).

        Returns:
            How many pending changes (keys) were dropped.
        """
        dropped = self._buffer.clear()
        self._stop_waiting_driver()
        if dropped:
            logger.debug("batcher cleared: dropped %d pending changes", dropped)
        return dropped

    def close(self) -> int:
        """Drop everything pending and stop; later ``add`` calls are ignored.

        A handler call in progress is not cancelled (it finishes); nothing after it runs.

        Returns:
            How many pending changes (keys) were dropped.
        """
        self._closed = True
        dropped = self._buffer.clear()
        self._stop_waiting_driver()
        if dropped:
            logger.debug("batcher closed: dropped %d pending changes", dropped)
        return dropped

    def _stop_waiting_driver(self) -> None:
        """Cancel the driver if it sleeps or waits for the lock, after the buffer was emptied.

        Never one inside the handler: cancelling the application's code half-way would be
        worse than letting the call finish. That driver looks at the buffer (and ``closed``)
        again when the call returns, and goes on with what was added meanwhile, or ends;
        it stays ``_task`` until then, so an ``add`` meanwhile never starts a second one.
        """
        task = self._task
        if task is not None and not self._driver_calling:
            self._task = None
            task.cancel()

    def _ensure_driver(self) -> None:
        if self._task is None and not self._held and not self._closed and self._buffer:
            self._task = asyncio.get_running_loop().create_task(self._drive(), name="roomcast-change-batcher")

    async def _drive(self) -> None:
        """Sleep until the batch is due, hand it over, repeat; end when nothing is pending.

        The task exists only while a batch is pending, so an idle batcher holds no task
        and a forgotten one leaks nothing.
        """
        # Whether the batch about to be taken had to wait for a handler call (ours or a
        # flush's): only then is lateness the handler's doing rather than hold()'s.
        waited_for_handler = False
        slept_until: float | None = None
        try:
            while self._buffer and not self._held and not self._closed:
                due = self._buffer.due_at()
                assert due is not None  # the buffer is not empty
                now = self._clock()
                if due == slept_until:
                    # We slept until exactly this due time and no change moved it. A sleep
                    # may return a hair early (asyncio wakes up to one clock resolution
                    # before the deadline; float subtraction rounds): that counts as due,
                    # instead of spinning on ever tinier sleeps.
                    now = max(now, due)
                if now < due:
                    # Changes added meanwhile only move the due time later, so waking at
                    # the old one and asking again is never late.
                    slept_until = due
                    await self._sleep(due - now)
                    waited_for_handler = False
                    continue
                slept_until = None
                waited_for_handler = waited_for_handler or self._lock.locked()
                async with self._lock:
                    # A flush(), clear() or close() may have emptied or replaced the batch
                    # while we waited for the lock: then look again.
                    if self._closed or self._buffer.due_at() != due:
                        continue
                    now = max(self._clock(), due)
                    first = self._buffer.first_at
                    assert first is not None  # due_at() was not None: the batch is not empty
                    batch = self._buffer.drain()
                    if waited_for_handler and now - first > self._buffer.max_wait:
                        logger.warning(
                            "change batch handed over %.1fs after its first change, over"
                            " max_wait=%.1fs: the batch handler is slower than the cap",
                            now - first,
                            self._buffer.max_wait,
                        )
                    self._driver_calling = True
                    try:
                        await self._call(batch)
                    finally:
                        self._driver_calling = False
                    waited_for_handler = True
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _call(self, batch: list[Change]) -> None:
        try:
            result = self._handler(batch)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("change batch handler %r failed on %d changes", self._handler, len(batch))

    def __repr__(self) -> str:
        flags = "closed" if self._closed else "held" if self._held else "running"
        return f"<ChangeBatcher {flags}, {len(self._buffer)} pending>"
