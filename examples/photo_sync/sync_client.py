"""A photo-library sync client: server change events, batched, applied to a local SQLite store.

Run against the example's library server (``server.py`` here), which publishes each user's
library events to ``user:{name}`` and gives the whole library as that room's snapshot::

    .venv/bin/python -m examples.photo_sync.server --data libraries &
    .venv/bin/python -m examples.photo_sync.sync_client http://127.0.0.1:8000 alice library.db

What roomcast's client does here that a mobile app otherwise hand-rolls:

* the connection survives network drops and server restarts (backoff with jitter), and the
  ``user:{name}`` room comes back from its last position: the events missed while away are
  replayed; when the server cannot replay them (it restarted, its history expired) the room
  is *reset* and the client hands over a fresh snapshot of the library. ``PhotoSync`` then
  drops the changes it had not applied yet (the snapshot already holds their effect) and
  replaces the store with the snapshot, so the device ends equal to the server;
* a burst of a thousand events (an album upload, a bulk trash) becomes one or two batches:
  the batcher waits for quiet (0.5 s), coalesces by key (the last change to a key wins) and
  hands over one batch at a time, applied in one transaction;
* the event vocabulary can change under a server upgrade: ``use("v1")`` switches from the
  legacy ``on_*`` events to ``AssetUploadReadyV1`` / ``AssetEditReadyV1`` atomically.

Keys, so that "the last change to a key wins" stays right when an id is deleted and uploaded
again (``EVENT_CHANGES``):

* ``asset:{id}``: the asset's existence. An upload (re)creates it, with no flags; a delete
  removes it and everything it had.
* ``asset:{id}:data``: an edit of its content; the flags stay.
* ``asset:{id}:trashed``, ``asset:{id}:hidden``, ``asset:{id}:stack``: one key per flag.

A batch is applied front to back, in the batcher's order: the order of each key's *last*
change. A flag or an edit that came before the asset's last upload or delete is applied
before it and wiped by it, as it was on the server; one that came after lands on the new
asset. (With one key for upload, edit and delete, an upload coalesced the delete before it
away, so a re-uploaded id kept the old asset's flags, and a trash of the old asset applied
to the new one.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from roomcast.client import Change, ChangeBatcher, Client, RoomState

__all__ = ["LocalLibrary", "PhotoSync", "EVENT_CHANGES", "LEGACY_EVENTS", "V1_EVENTS"]

logger = logging.getLogger("photo_sync")

LEGACY_EVENTS = (
    "on_upload_success",
    "on_asset_delete",
    "on_asset_trash",
    "on_asset_restore",
    "on_asset_update",
    "on_asset_stack_update",
    "on_asset_hidden",
    "on_config_update",
    "on_new_release",
)
V1_EVENTS = (
    "AssetUploadReadyV1",
    "AssetEditReadyV1",
    "on_asset_delete",
    "on_asset_trash",
    "on_asset_restore",
    "on_asset_hidden",
    "on_config_update",
    "on_new_release",
)


def _ids(value: Any) -> list[str]:
    """One asset id or a list of them."""
    return [value] if isinstance(value, str) else list(value)


EVENT_CHANGES: dict[str, Callable[[Any], list[Change]]] = {
    "on_upload_success": lambda asset: [Change(f"asset:{asset['id']}", "create", asset)],
    "AssetUploadReadyV1": lambda m: [Change(f"asset:{m['asset']['id']}", "create", m["asset"])],
    "on_asset_update": lambda asset: [Change(f"asset:{asset['id']}:data", "update", asset)],
    "AssetEditReadyV1": lambda m: [Change(f"asset:{m['asset']['id']}:data", "update", m["asset"])],
    "on_asset_delete": lambda asset_id: [Change(f"asset:{asset_id}", "delete")],
    "on_asset_trash": lambda ids: [Change(f"asset:{i}:trashed", "trash") for i in _ids(ids)],
    "on_asset_restore": lambda ids: [Change(f"asset:{i}:trashed", "restore") for i in _ids(ids)],
    "on_asset_hidden": lambda ids: [Change(f"asset:{i}:hidden", "hidden") for i in _ids(ids)],
    "on_asset_stack_update": lambda stack: [Change(f"asset:{i}:stack", "stack", stack["id"]) for i in stack["assets"]],
    "on_config_update": lambda config: [Change("config", "setting", config)],
    "on_new_release": lambda release: [Change("release", "setting", release)],
}
"""What each library event does, as keyed changes: the one place that says it, for the device
(through the batcher) and for the example's server (one event at a time)."""

_EXISTENCE = ("create", "delete")  # keyed ``asset:{id}``; every other asset kind has an aspect suffix

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY, data TEXT NOT NULL,
    trashed INTEGER NOT NULL DEFAULT 0, hidden INTEGER NOT NULL DEFAULT 0, stack TEXT
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LocalLibrary:
    """A photo library in SQLite: the device's copy (and the example server's truth, same layout).

    ``apply`` takes one batch, ``replace`` one snapshot, each in one transaction; ``state()``
    is the whole library as JSON, which is also the snapshot's shape. WAL journal: a commit
    survives the process being killed (not a power cut: ``synchronous`` stays as it is).
    """

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(_SCHEMA)
        self.batches = 0

    def apply(self, batch: list[Change]) -> None:
        """Apply ``batch`` front to back (see the module docstring for why that order)."""
        with self.db:  # all of the batch or none of it
            for change in batch:
                self._apply(change)
        self.batches += 1

    def _apply(self, change: Change) -> None:
        kind, data = change.kind, change.data
        if kind == "setting":
            self.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (change.key, json.dumps(data)))
            return
        asset_id = change.key.removeprefix("asset:")
        if kind not in _EXISTENCE:
            asset_id = asset_id.rsplit(":", 1)[0]  # ids may contain ':', aspects do not
        if kind == "create":  # a new asset: REPLACE drops the old row, flags and all
            self.db.execute("INSERT OR REPLACE INTO assets (id, data) VALUES (?, ?)", (asset_id, json.dumps(data)))
        elif kind == "delete":
            self.db.execute("DELETE FROM assets WHERE id = ?", (asset_id,))
        elif kind == "update":  # the content only: flags are keys of their own
            self.db.execute(
                "INSERT INTO assets (id, data) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET data = excluded.data",
                (asset_id, json.dumps(data)),
            )
        elif kind in ("trash", "restore"):
            self.db.execute("UPDATE assets SET trashed = ? WHERE id = ?", (kind == "trash", asset_id))
        elif kind == "hidden":
            self.db.execute("UPDATE assets SET hidden = 1 WHERE id = ?", (asset_id,))
        elif kind == "stack":
            self.db.execute("UPDATE assets SET stack = ? WHERE id = ?", (data, asset_id))
        else:
            logger.warning("unknown change %r of %r ignored", kind, change.key)

    def replace(self, state: Mapping[str, Any]) -> None:
        """Make the store exactly ``state`` (the shape of ``state()``), in one transaction.

        Raises:
            KeyError, TypeError, AttributeError: ``state`` is not a library; nothing changed.
        """
        assets = [
            (asset_id, json.dumps(a["data"]), bool(a["trashed"]), bool(a["hidden"]), a["stack"])
            for asset_id, a in state["assets"].items()
        ]
        settings = [(key, json.dumps(value)) for key, value in state["settings"].items()]
        with self.db:
            self.db.execute("DELETE FROM assets")
            self.db.execute("DELETE FROM settings")
            self.db.executemany("INSERT INTO assets VALUES (?, ?, ?, ?, ?)", assets)
            self.db.executemany("INSERT INTO settings VALUES (?, ?)", settings)

    def assets(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT id, data, trashed, hidden, stack FROM assets")
        return {i: {"data": json.loads(d), "trashed": bool(t), "hidden": bool(h), "stack": s} for i, d, t, h, s in rows}

    def settings(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM settings")}

    def state(self) -> dict[str, Any]:
        """``{"assets": {id: {data, trashed, hidden, stack}}, "settings": {key: value}}``."""
        return {"assets": self.assets(), "settings": self.settings()}


class PhotoSync:
    """Keeps ``library`` equal to the server's library of ``room``, through ``client``.

    Every event becomes keyed changes (``EVENT_CHANGES``) for one batcher owned by the
    client. A snapshot of the room (the first subscribe, and every reset) replaces the
    store; the changes still pending then are dropped, since they came from events the
    snapshot already holds.

    Attributes:
        snapshots: how many snapshots replaced the store.
        dropped: pending changes dropped because a snapshot superseded them.
    """

    def __init__(self, client: Client, library: LocalLibrary, room: str, **batching: Any) -> None:
        self.client = client
        self.library = library
        self.room = room
        self.changes: ChangeBatcher = client.batcher(library.apply, **batching)
        self.snapshots = 0
        self.dropped = 0
        for event, changes_of in EVENT_CHANGES.items():
            handler = self._handler(changes_of)
            if event in LEGACY_EVENTS:
                client.on(event, handler, set="legacy")
            if event in V1_EVENTS:
                client.on(event, handler, set="v1")
        client.use("legacy")
        client.on_snapshot(self._on_snapshot, room=room)

    def _handler(self, changes_of: Callable[[Any], list[Change]]) -> Callable[..., None]:
        add = self.changes.add

        def handle(payload: Any, *_: Any) -> None:
            for change in changes_of(payload):
                add(change.key, change.kind, change.data)

        return handle

    async def _on_snapshot(self, state: RoomState, snapshot: Any) -> None:
        """The room could not be recovered (or is new here): the snapshot is the truth now.

        Runs in event order: every change pending now came from an event before the
        snapshot, which the server's library, and so the snapshot, already holds. Applying
        them would redo or (for an id deleted and uploaded again since) undo what it says,
        so they are dropped, and the store replaced. ``flush()`` after ``clear()`` hands
        nothing over; it waits for a batch being applied, so that batch cannot land on
        top of the snapshot.
        """
        if not (
            isinstance(snapshot, dict)
            and isinstance(snapshot.get("assets"), dict)
            and isinstance(snapshot.get("settings"), dict)
        ):
            # Not the library server (a plain `roomcast serve`): nothing to re-sync from, so
            # the pending changes are the best there is; they go in, before what follows.
            logger.warning("room %r gave no library snapshot: missed events cannot be caught up", state.room)
            await self.changes.flush()
            return
        dropped = self.changes.clear()
        await self.changes.flush()
        self.library.replace(snapshot)
        self.snapshots += 1
        self.dropped += dropped
        logger.info(
            "room %r: library replaced by a snapshot of %d assets (%d pending changes dropped)",
            state.room,
            len(snapshot["assets"]),
            dropped,
        )

    def use_v1(self) -> None:
        """The server speaks the newer events from now on: switch, atomically."""
        self.client.use("v1")


async def main(url: str, user: str, db: str) -> None:
    logging.basicConfig(level=logging.INFO)
    client = Client(url)
    sync = PhotoSync(client, LocalLibrary(db), f"user:{user}")
    client.on_state(lambda change: logger.info("%s -> %s (%s)", change.old, change.new, change.reason))
    async with client:  # connects; reconnects by itself; closes on the way out
        await client.subscribe(sync.room)
        await asyncio.Event().wait()  # until Ctrl-C


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
