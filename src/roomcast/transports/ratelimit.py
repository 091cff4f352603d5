"""``MessageRate``: how many messages a client may send, as a token bucket per connection.

Imports only the stdlib. Why: every inbound message costs the server a decode and usually a
task (a subscribe, a publish, a handler); a client that sends as fast as its link allows
would take the loop from every other client. The ``/ws`` transport and Socket.IO check each
inbound message (not each byte: ``max_payload`` bounds bytes) against their connection's
bucket, and cut a connection that runs it dry with ``disconnect.RATE_LIMITED``.

A bucket holds at most ``burst`` tokens and gains ``per_second`` tokens a second; each message
takes one. So a client may send ``burst`` messages at once (a reconnect that subscribes again
to every room, up to the rooms-per-connection limit of 100, must fit) and ``per_second`` on
average for ever. Checked per inbound message only: nothing here is on the fan-out path.

``AttemptLimit`` is the same bucket keyed by client address (or any key) and refilling after a
refusal: the dashboard's limit on failed logins, and the debug log limiter's per kind.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["AttemptLimit", "MessageRate", "TokenBucket"]


class MessageRate:
    """The inbound message limit of one transport, and how many connections it cut.

    Args:
        per_second: messages a connection may send per second, on average; 0 turns the
            limit off.
        burst: messages a connection may send at once (at least 1).
    """

    __slots__ = ("per_second", "burst", "cut")

    def __init__(self, per_second: float = 100.0, burst: int = 200) -> None:
        if per_second < 0 or burst < 1:
            raise ValueError("per_second must be >= 0 and burst >= 1")
        self.per_second = per_second
        self.burst = burst
        self.cut = 0  # connections closed for sending too fast, for operators

    def bucket(self) -> TokenBucket | None:
        """A full bucket for a new connection, or ``None`` when the limit is off."""
        return TokenBucket(self) if self.per_second > 0 else None


class TokenBucket:
    """One connection's tokens (two floats and a reference: it lives as long as the connection)."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: MessageRate) -> None:
        self.rate = rate
        self.tokens = float(rate.burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Take a token for one message; ``False`` when there is none left.

        A refusal is final and counted once: the caller cuts the connection, and whatever it
        still sends before the close is done (a door may deliver what it already read) is
        refused too, without a second count.
        """
        now = time.monotonic()
        rate = self.rate
        tokens = self.tokens + (now - self.stamp) * rate.per_second
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = (tokens if tokens < rate.burst else rate.burst) - 1.0
            return True
        if tokens != _SPENT:
            rate.cut += 1
            self.tokens = _SPENT
        return False


_SPENT = -math.inf
"""A cut connection's tokens: refilling never brings them back."""


class AttemptLimit:
    """Refilling token buckets keyed by client address, for attempts a client may make again
    later: the dashboard's failed logins (``server.dashboard``); keyed by message kind, the
    debug log limiter's (``server.logs.LogLimiter``).

    Unlike ``TokenBucket`` (one connection's messages; a dry bucket cuts the connection for
    good) a dry bucket here refuses only until it refills, and the caller tells the client
    when (``Retry-After``). Memory is bounded: at most ``max_keys`` buckets; past it the one
    touched longest ago is forgotten (so a flood from many addresses costs ``max_keys``
    entries, and the worst it can do is give one of them a fresh burst). Not thread-safe: the
    dashboard touches it on the event loop's thread only, the log limiter under its lock.

    Args:
        per_second: attempts an address regains per second.
        burst: attempts an address may make at once (at least 1).
        max_keys: most addresses remembered at once.
        clock: seconds, monotonic (injectable for tests of the arithmetic).
    """

    __slots__ = ("per_second", "burst", "max_keys", "clock", "_buckets")

    def __init__(
        self, per_second: float, burst: int, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if per_second <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("per_second must be > 0, burst >= 1 and max_keys >= 1")
        self.per_second = per_second
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key: (tokens, stamp)

    def __len__(self) -> int:
        return len(self._buckets)

    def _tokens(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self.burst)
        tokens, stamp = held
        return min(float(self.burst), tokens + (now - stamp) * self.per_second)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may make an attempt; 0 when it may now (nothing is taken)."""
        tokens = self._tokens(key, self.clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.per_second

    def charge(self, key: str) -> None:
        """One attempt of ``key`` counted (a failed one: successes cost nothing)."""
        now = self.clock()
        tokens = max(0.0, self._tokens(key, now) - 1.0)
        buckets = self._buckets
        buckets[key] = (tokens, now)
        buckets.move_to_end(key)
        while len(buckets) > self.max_keys:
            buckets.popitem(last=False)
