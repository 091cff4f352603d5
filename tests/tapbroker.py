"""A MemoryBroker that also tells the test every publication it appends, room or no room.

The hub no longer hands every publication to global listeners (a node sees only the rooms
it serves), so tests that watch what a service publishes tap the broker they run on.
"""

from __future__ import annotations

from collections.abc import Callable

from roomcast.broker.memory import MemoryBroker
from roomcast.types import JSONValue, Publication, RoomName

__all__ = ["TapBroker"]


class TapBroker(MemoryBroker):
    """Calls every function in ``taps`` with each publication, after it is appended."""

    def __init__(self, **limits: float) -> None:
        super().__init__(**limits)  # type: ignore[arg-type]
        self.taps: list[Callable[[Publication], None]] = []

    async def publish(
        self,
        room: RoomName,
        event: str,
        data: tuple[JSONValue, ...],
        *,
        ts: float,
        encoded: tuple[bytes, ...] | None = None,
        binary: bool = False,
        skip: frozenset[str] | None = None,
        canonical: tuple[bytes, ...] | None = None,
    ) -> Publication:
        pub = await super().publish(
            room, event, data, ts=ts, encoded=encoded, binary=binary, skip=skip, canonical=canonical
        )
        for tap in self.taps:
            tap(pub)
        return pub
