"""The client's connection state: the transition table and who gets told about changes.

Owns ``ClientState``, ``TRANSITIONS``, ``StateChange``, ``InvalidStateChange`` and
``StateMachine``. Pure: no I/O, no clock, no asyncio; imports only the stdlib and
``roomcast.errors``. The I/O layer decides *when* to move; this module decides whether the
move is legal and tells listeners, so every rule about states lives in this one file.

The table is the spec::

    disconnected ──► connecting
    connecting   ──► connected | reconnecting | disconnected
    connected    ──► reconnecting | disconnected
    reconnecting ──► connecting | disconnected
    any state    ──► closed                      (final: closed ──► nothing)

``CONNECTING → RECONNECTING`` is a failed attempt inside the reconnect loop (the loop waits
its backoff delay in ``RECONNECTING``); ``→ DISCONNECTED`` is "stopped trying" (the server
refused, ``reconnect=False``, attempts exhausted); ``CLOSED`` is the user's ``close()``,
after which nothing changes again.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from roomcast.errors import ClientError, InvalidState

__all__ = [
    "ClientState",
    "TRANSITIONS",
    "can_transition",
    "StateChange",
    "StateListener",
    "InvalidStateChange",
    "StateMachine",
]

logger = logging.getLogger("roomcast.client")


class ClientState(str, Enum):
    """Where the client's connection stands. A ``str`` enum so it logs and serialises as-is."""

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"

    def __str__(self) -> str:
        # Messages read "client is connected", not "client is ClientState.CONNECTED".
        return self.value


_S = ClientState

TRANSITIONS: Mapping[ClientState, frozenset[ClientState]] = {
    _S.DISCONNECTED: frozenset({_S.CONNECTING, _S.CLOSED}),
    _S.CONNECTING: frozenset({_S.CONNECTED, _S.RECONNECTING, _S.DISCONNECTED, _S.CLOSED}),
    _S.CONNECTED: frozenset({_S.RECONNECTING, _S.DISCONNECTED, _S.CLOSED}),
    _S.RECONNECTING: frozenset({_S.CONNECTING, _S.DISCONNECTED, _S.CLOSED}),
    _S.CLOSED: frozenset(),
}
"""Legal next states of each state. A state never "transitions" to itself."""


def can_transition(current: ClientState, target: ClientState) -> bool:
    """Whether the table allows ``current`` → ``target``."""
    return target in TRANSITIONS[current]


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of state, as listeners receive it.

    ``reason`` is a short human-readable cause (``"ping timeout"``, ``"server refused:
    token expired"``) for logs and UIs, or ``None``.
    """

    old: ClientState
    new: ClientState
    reason: str | None = None


StateListener = Callable[[StateChange], None]
"""Called synchronously with each ``StateChange``; its return value is ignored."""


class InvalidStateChange(ClientError, InvalidState):
    """A move the table forbids: a bug in the code driving the client, not a network fault.

    Also an ``InvalidState`` (and so an ``AssertionError``), like every "called in the wrong
    state" error in roomcast. ``current`` and ``target`` let a caller see which move failed
    without parsing the message.
    """

    def __init__(self, current: ClientState, target: ClientState) -> None:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "nothing"
        super().__init__(f"client cannot move from {current} to {target} (allowed: {allowed})")
        self.current = current
        self.target = target


class StateMachine:
    """The current ``ClientState``, checked moves, and listeners told of each change.

    Starts ``DISCONNECTED``. Listeners run synchronously, in the order they were added,
    inside ``move()``. A listener that raises is logged with its traceback and the others
    still run: a bug in an application's status indicator must not break reconnecting.

    A listener may itself call ``move()``. The state changes at once, but the new change
    is announced only after every listener has seen the current one, so all listeners see
    the changes in the order they happened.
    """

    __slots__ = ("_state", "_listeners", "_next_id", "_queue", "_notifying")

    def __init__(self) -> None:
        self._state = ClientState.DISCONNECTED
        self._listeners: dict[int, StateListener] = {}
        self._next_id = 0
        self._queue: deque[StateChange] = deque()
        self._notifying = False

    @property
    def state(self) -> ClientState:
        """The current state."""
        return self._state

    def move(self, new: ClientState, reason: str | None = None) -> StateChange | None:
        """Go to ``new`` and tell the listeners.

        Returns:
            The ``StateChange``, or ``None`` when already in ``new`` (no listener is called:
            "connecting" announced twice would look like two attempts).

        Raises:
            InvalidStateChange: the table forbids the move; nothing changed. Every move out
                of ``CLOSED`` raises.
        """
        old = self._state
        if new is old:
            return None
        if new not in TRANSITIONS[old]:
            raise InvalidStateChange(old, new)
        self._state = new
        change = StateChange(old, new, reason)
        logger.debug("= client is %s (%s)", new, reason or "no reason given")
        self._queue.append(change)
        if not self._notifying:
            self._notify()
        return change

    def add_listener(self, fn: StateListener) -> Callable[[], None]:
        """Call ``fn`` with every later ``StateChange``.

        Returns:
            A function that removes this registration; calling it again does nothing.
            Adding the same ``fn`` twice registers it twice (and needs both removers).
        """
        key = self._next_id
        self._next_id += 1
        self._listeners[key] = fn

        def remove() -> None:
            self._listeners.pop(key, None)

        return remove

    def _notify(self) -> None:
        self._notifying = True
        try:
            while self._queue:
                change = self._queue.popleft()
                # A copy: a listener may add or remove listeners while we iterate.
                for key, fn in list(self._listeners.items()):
                    if key not in self._listeners:
                        continue  # removed by an earlier listener of this same change
                    try:
                        fn(change)
                    except Exception:
                        logger.exception("state listener %r failed on %s -> %s", fn, change.old, change.new)
        finally:
            self._notifying = False

    def __repr__(self) -> str:
        return f"<StateMachine {self._state}>"
