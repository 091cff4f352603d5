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
"""

from __future__ import annotations

import math
import time

__all__ = ["MessageRate", "TokenBucket"]


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
