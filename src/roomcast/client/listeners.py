"""Named sets of event handlers, one of them active, and isolated dispatch to it.

Owns ``ListenerSets``. Imports only the stdlib; dispatch awaits ``async`` handlers but
starts no tasks and keeps no clock.

Why sets: an application often needs the same events handled differently depending on a
mode (a document editor "following" another user vs "editing"; a dashboard live vs frozen).
Registering and unregistering handlers one by one to change mode leaves a moment where an
event finds half the old handlers and half the new, or none. Here each mode is a named set,
``use(name)`` switches in one assignment, and every event is handled by exactly one set:
the set active at the moment ``dispatch()`` is *called* (not when its coroutine first
runs), so events queued as tasks before a switch still go to the old set.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar, overload

__all__ = ["Handler", "ListenerSets"]

logger = logging.getLogger("roomcast.client")

Handler = Callable[..., Awaitable[None] | None]
"""Called with the event's arguments; sync or ``async``; the return value is ignored."""

H = TypeVar("H", bound=Handler)

# A handler set: event name -> handlers in registration order; a tuple so that a dispatch
# in progress keeps the list it started with whatever on()/off() do meanwhile.
_Set = dict[str, tuple[Handler, ...]]


class ListenerSets:
    """Handlers by set name and event name; events go to the active set only.

    Args:
        default: the name of the set that is active at first, and the one ``on``, ``off``
            and ``any`` use when given no ``set``.
    """

    __slots__ = ("default", "_sets", "_any", "_active")

    def __init__(self, default: str = "default") -> None:
        self.default = default
        self._sets: dict[str, _Set] = {default: {}}
        self._any: dict[str, Handler] = {}
        self._active = default

    @property
    def active(self) -> str:
        """The name of the set that events dispatched now go to."""
        return self._active

    @property
    def names(self) -> frozenset[str]:
        """Every set name that has had a handler or was switched to."""
        return frozenset(self._sets)

    @overload
    def on(self, event: str, handler: None = None, *, set: str | None = None) -> Callable[[H], H]: ...
    @overload
    def on(self, event: str, handler: H, *, set: str | None = None) -> H: ...

    def on(self, event: str, handler: Handler | None = None, *, set: str | None = None) -> Handler | Callable[[H], H]:
        """Add ``handler`` for ``event`` to set ``set`` (default: the ``default`` set).

        Handlers of one event run in the order they were added; adding one twice makes it
        run twice. Without ``handler``, returns a decorator::

            @listeners.on("message", set="editing")
            async def show(msg): ...

        Returns:
            ``handler`` itself (or the decorator), so it can be kept for ``off``.
        """
        name = self.default if set is None else set
        if handler is None:

            def decorator(fn: H) -> H:
                self._add(name, event, fn)
                return fn

            return decorator
        self._add(name, event, handler)
        return handler

    def off(self, event: str, handler: Handler | None = None, *, set: str | None = None) -> int:
        """Remove every registration of ``handler``, or without one every handler of ``event``.

        A dispatch already in progress still runs the handlers it started with.

        Returns:
            How many registrations were removed (0 if there was nothing to remove).
        """
        handlers = self._sets.get(self.default if set is None else set)
        if handlers is None or event not in handlers:
            return 0
        current = handlers[event]
        kept = () if handler is None else tuple(h for h in current if h != handler)
        if kept:
            handlers[event] = kept
        else:
            del handlers[event]
        return len(current) - len(kept)

    @overload
    def any(self, handler: None = None, *, set: str | None = None) -> Callable[[H], H]: ...
    @overload
    def any(self, handler: H, *, set: str | None = None) -> H: ...

    def any(self, handler: Handler | None = None, *, set: str | None = None) -> Handler | Callable[[H], H]:
        """Set the catch-all of set ``set``: called as ``handler(event, *args)`` for events
        that set has no handler for. One per set; a new one replaces the old. Also a
        decorator, like ``on``. Per set, so that switching sets switches it too.
        """
        name = self.default if set is None else set
        if handler is None:

            def decorator(fn: H) -> H:
                self._sets.setdefault(name, {})
                self._any[name] = fn
                return fn

            return decorator
        self._sets.setdefault(name, {})
        self._any[name] = handler
        return handler

    def off_any(self, *, set: str | None = None) -> bool:
        """Remove the catch-all of set ``set``; returns whether there was one."""
        return self._any.pop(self.default if set is None else set, None) is not None

    def use(self, name: str) -> None:
        """Make ``name`` the active set, atomically.

        Every ``dispatch()`` called before this returns goes to the old set only (even if
        its handlers are still running), every one called after to ``name`` only; never
        both, never neither. A name never used before is an empty set that handlers can be
        added to later (switching to it mutes everything except its catch-all).
        """
        self._sets.setdefault(name, {})
        if name != self._active:
            logger.debug("listener set %r -> %r", self._active, name)
        self._active = name

    def handlers(self, event: str, *, set: str | None = None) -> tuple[Handler, ...]:
        """The handlers ``event`` has in set ``set`` (default: the active set), in order."""
        name = self._active if set is None else set
        return self._sets.get(name, {}).get(event, ())

    def dispatch(self, event: str, args: Sequence[Any]) -> Coroutine[Any, Any, int]:
        """Run the active set's handlers of ``event`` with ``args``; await the result.

        The set and its handlers are chosen *now*, when ``dispatch`` is called, not when the
        returned coroutine first runs: ``asyncio.create_task(sets.dispatch(...))`` followed
        by ``use("other")`` still goes to the set that was active at the call.

        Handlers run one after another in registration order; an ``async`` one is awaited
        before the next starts, so a handler sees the effects of the ones before it. One
        that raises is logged with the event name and its traceback (logger
        ``roomcast.client``) and the others still run. With no handler for ``event`` in
        the set, its catch-all (if any) is called as ``catch_all(event, *args)``.

        Returns:
            An awaitable of how many handlers were called (the catch-all counts as one;
            0 means nobody handled the event).
        """
        name = self._active
        handlers = self._sets[name].get(event, ())
        if not handlers:
            catch_all = self._any.get(name)
            return _run(event, (catch_all,) if catch_all else (), (event, *args), name)
        return _run(event, handlers, tuple(args), name)

    def _add(self, name: str, event: str, handler: Handler) -> None:
        if not callable(handler):
            raise TypeError(f"handler for {event!r} must be callable, got {handler!r}")
        handlers = self._sets.setdefault(name, {})
        handlers[event] = (*handlers.get(event, ()), handler)

    def __repr__(self) -> str:
        return f"<ListenerSets active={self._active!r} sets={sorted(self._sets)}>"


async def _run(event: str, handlers: tuple[Handler, ...], args: tuple[Any, ...], name: str) -> int:
    for handler in handlers:
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except Exception:
            # Exception, not BaseException: cancelling the dispatch must still cancel it.
            logger.exception("handler %r for event %r (set %r) failed", handler, event, name)
    return len(handlers)
