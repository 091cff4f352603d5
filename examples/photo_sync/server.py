"""The photo library's server side: each user's library, its change events, its snapshot.

Run from the repository root::

    .venv/bin/python -m examples.photo_sync.server --data libraries --port 8000

A change reaches the server as the Socket.IO event ``library {user, event, data}`` (in a real
app: the upload endpoint, the edit worker, the trash job), ``event`` being one the devices
know (``sync_client.EVENT_CHANGES``). The server applies it to ``{data}/{user}.db``, commits,
and only then publishes ``event`` to ``user:{user}``; the ack is the publication's
``{epoch, offset}``. A device subscribing to ``user:{user}`` gets the whole library as the
room's snapshot: on its first subscribe, and after every reset.

Why commit before publishing: a snapshot is read from the file, so it holds every event
published before it, including those of a server process that was killed since, and an
event committed but never published (the process died in between) is in it too. A device
that gets a snapshot after a reset can therefore drop every change it had not applied yet.
Changes go in one at a time (a lock), so the order of the publications is the order of the
commits.

The library is kept in the devices' layout (``LocalLibrary``) and changed through the same
keyed changes, one event at a time, so what an event does is written once. No tokens: the
server runs open, for 127.0.0.1 and the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
from pathlib import Path
from typing import Any

from examples.photo_sync.sync_client import EVENT_CHANGES, LocalLibrary
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.runner import run
from roomcast.types import StreamPosition

__all__ = ["LibraryServer", "main"]

USER = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""A user name, which is also a file name."""


class LibraryServer:
    """The hub, its ``library`` event and its ``user:*`` snapshots, over ``{data}/{user}.db``.

    Args:
        data: the folder of the libraries (created when the first one is).
        settings: the server's settings; tasks are kept in memory (the example runs none), so
            the server writes nothing but the libraries.
    """

    def __init__(self, data: Path, settings: Settings | None = None) -> None:
        self.data = data
        self.hub = Hub()
        self.app = App(self.hub, settings if settings is not None else Settings(task_db=":memory:"))
        self._libraries: dict[str, LocalLibrary] = {}
        self._lock = asyncio.Lock()
        self.hub.snapshot("user:*")(self.snapshot)
        self.hub.on("library")(self._on_library)

    def library(self, user: str) -> LocalLibrary:
        """``user``'s library, opened (and created) on first use.

        Raises:
            ValueError: not a user name.
        """
        if not USER.fullmatch(user):
            raise ValueError(f"not a user name: {user!r}")
        library = self._libraries.get(user)
        if library is None:
            self.data.mkdir(parents=True, exist_ok=True)
            library = self._libraries[user] = LocalLibrary(self.data / f"{user}.db")
        return library

    def snapshot(self, room: str) -> dict[str, Any] | None:
        """The snapshot of ``user:{user}``: the whole library (``LocalLibrary.state()``)."""
        user = room.removeprefix("user:")
        return self.library(user).state() if USER.fullmatch(user) else None

    async def change(self, user: str, event: str, data: Any) -> StreamPosition:
        """Apply ``event`` to ``user``'s library, commit, then publish it to ``user:{user}``.

        Raises:
            ValueError: not a user name, not a library event, or data the event cannot carry.
        """
        changes_of = EVENT_CHANGES.get(event)
        if changes_of is None:
            raise ValueError(f"not a library event: {event!r}")
        try:
            changes = changes_of(data)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad data for {event!r}: {exc!r}") from None
        library = self.library(user)
        async with self._lock:
            library.apply(changes)  # committed before anyone hears of it
            return await self.hub.publish(f"user:{user}", event, data)

    async def _on_library(self, conn: Connection, request: Any = None, *_: Any) -> dict[str, Any]:
        """``library {user, event, data}`` → ``{epoch, offset}`` of the publication, or ``{error}``."""
        if not isinstance(request, dict) or not isinstance(request.get("user"), str):
            return {"error": "library expects {user: string, event: string, data: any}"}
        try:
            position = await self.change(request["user"], str(request.get("event")), request.get("data"))
        except ValueError as exc:
            return {"error": str(exc)}
        return {"epoch": position.epoch, "offset": position.offset}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("libraries"), help="folder of the libraries")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(host=args.host, port=args.port, log_level=args.log_level, task_db=":memory:")
    server = LibraryServer(args.data, settings)
    run(
        server.app,
        on_ready=lambda host, port: print(f"photo library server listening on http://{host}:{port}", flush=True),
    )


if __name__ == "__main__":
    main()
