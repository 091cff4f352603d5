"""A broker's events as a queue of the publications it delivered, for the broker tests that
read them one by one (``await events.next()``); terminal and lost-stream events are ignored."""

from __future__ import annotations

import asyncio
from typing import Any

from roomcast.types import Publication

__all__ = ["Events"]


class Events:
    """What a broker delivers (``BrokerEvents``), queued in order."""

    def __init__(self, wait: float = 10.0) -> None:
        self.publications: asyncio.Queue[Publication] = asyncio.Queue()
        self.wait = wait

    def on_publication(self, publication: Publication) -> None:
        self.publications.put_nowait(publication)

    def on_terminal(self, room: Any) -> None:
        pass

    def on_stream_lost(self, rooms: Any) -> None:
        pass

    async def next(self) -> Publication:
        """The next publication delivered, within ``wait`` seconds."""
        async with asyncio.timeout(self.wait):
            return await self.publications.get()
