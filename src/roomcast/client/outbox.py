"""``Outbox``: emits made while offline, kept in order for the next connection, or refused.

Why bounded, and why the caller chooses: a client that buffers without limit through a long
outage replays a flood on reconnect and holds memory meanwhile; one that refuses everything
loses the "send when back" convenience a chat box wants. So ``buffer`` up to ``limit`` (then
``OfflineBufferFull``), or ``refuse`` at once (``OfflineRefused``). An emit whose caller gave
up waiting for its ack is never sent later.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from roomcast.errors import OfflineBufferFull, OfflineRefused

__all__ = ["Outbox", "Outgoing", "OfflinePolicy"]

OfflinePolicy = Literal["buffer", "refuse"]


@dataclass(eq=False, slots=True)
class Outgoing:
    """An emit waiting for a connection (its ack future, if it asked for one)."""

    event: str
    args: tuple[Any, ...]
    future: asyncio.Future[list[Any]] | None


class Outbox:
    """The offline buffer of one client."""

    __slots__ = ("policy", "limit", "_entries")

    def __init__(self, policy: OfflinePolicy = "buffer", limit: int = 1000) -> None:
        if policy not in ("buffer", "refuse"):
            raise ValueError("offline must be 'buffer' or 'refuse'")
        if limit < 0:
            raise ValueError("offline_limit must be >= 0")
        self.policy = policy
        self.limit = limit
        self._entries: deque[Outgoing] = deque()

    def add(self, entry: Outgoing, state: str) -> None:
        """Keep ``entry`` for the next connection.

        Raises:
            OfflineRefused: the policy is ``refuse``.
            OfflineBufferFull: ``limit`` emits are already waiting.
        """
        if self.policy == "refuse":
            raise OfflineRefused(f"not connected ({state}); emit of {entry.event!r} refused")
        if len(self._entries) >= self.limit:
            raise OfflineBufferFull(f"offline buffer full ({self.limit} emits)")
        self._entries.append(entry)

    def discard(self, entry: Outgoing) -> None:
        """Forget ``entry`` (its caller stopped waiting): it will not be sent."""
        if entry in self._entries:
            self._entries.remove(entry)

    def drain(self) -> Iterator[Outgoing]:
        """The waiting emits, oldest first, each removed as it is taken; timed-out ones skipped."""
        while self._entries:
            entry = self._entries.popleft()
            if entry.future is None or not entry.future.done():
                yield entry

    def fail_all(self, error: BaseException) -> None:
        """Drop every waiting emit; callers waiting for an ack get ``error``."""
        while self._entries:
            entry = self._entries.popleft()
            if entry.future is not None and not entry.future.done():
                entry.future.set_exception(error)

    def __len__(self) -> int:
        return len(self._entries)
