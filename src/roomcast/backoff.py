"""Reconnect delays: exponential growth, full jitter, and never a zero delay.

Owns ``Backoff``, the one reconnect schedule of the package: the client SDK, ``roomcast
tail``, the Redis broker and the node bus all use it. Pure: no clock, no asyncio, no
sockets; randomness comes from an injectable ``random.Random`` so tests get the same delays
every run. Imports only the stdlib.

Why these three properties:

- *Exponential*: a server that is down for a minute should see a client retry a handful of
  times, not hundreds.
- *Full jitter* (a uniform draw over the whole range rather than a small wobble around the
  exponential value): when a server restarts, every client it dropped reconnects at once;
  spreading each retry over the whole interval turns that thundering herd into a trickle.
- *Never zero*: the draw starts at ``initial / 4``, not at 0. A server that refuses at once
  (or an SSE endpoint that closes straight away) would otherwise be hit by back-to-back
  reconnects whenever the dice land near zero; centrifuge-js measured hundreds of
  reconnects per second from exactly that.

Usage by the reconnect loop::

    delay = backoff.next()      # before each attempt after the first failure
    ...
    backoff.reset()             # once a connection has stayed up for a while
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays for successive reconnect attempts.

    Attempt ``n`` (counting from 0 since the last ``reset``) waits a uniform random time
    in ``[initial / 4, min(cap, initial * factor ** n)]``.

    Args:
        initial: upper bound of the first delay, in seconds; must be > 0.
        cap: largest delay ever returned, in seconds; must be >= ``initial``.
        factor: growth of the upper bound per attempt; must be >= 1.
        rng: source of randomness; pass ``random.Random(seed)`` for repeatable delays.

    Raises:
        ValueError: on a non-positive ``initial``, ``cap < initial`` or ``factor < 1``.
    """

    __slots__ = ("initial", "cap", "factor", "_rng", "_floor", "_upper", "_attempts")

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 30.0,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not initial > 0:
            raise ValueError(f"initial must be > 0 seconds, got {initial!r}")
        if not cap >= initial:
            raise ValueError(f"cap ({cap!r}) must be >= initial ({initial!r})")
        if not factor >= 1:
            raise ValueError(f"factor must be >= 1, got {factor!r}")
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self._rng = rng if rng is not None else random.Random()
        self._floor = initial / 4
        self._upper = initial
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """How many delays ``next()`` has handed out since construction or the last ``reset``."""
        return self._attempts

    def next(self) -> float:
        """The delay in seconds before the next attempt; always >= ``initial / 4`` > 0."""
        delay = self._rng.uniform(self._floor, self._upper)
        self._attempts += 1
        # Grow the bound step by step rather than computing factor ** n: after a long
        # outage n is large and the power would overflow a float.
        self._upper = min(self.cap, self._upper * self.factor)
        return delay

    def reset(self) -> None:
        """Start again from ``initial``: call once a connection has proved stable.

        Not on every successful connect: a server that accepts and then drops at once would
        otherwise keep the client at the shortest delays forever.
        """
        self._upper = self.initial
        self._attempts = 0

    def __repr__(self) -> str:
        return f"Backoff(initial={self.initial!r}, cap={self.cap!r}, factor={self.factor!r}, attempts={self._attempts})"
