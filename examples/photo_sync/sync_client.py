"""A photo-library sync client: server change events, batched, applied to a local SQLite store.

Run against a roomcast server that publishes a user's library events to ``user:{name}``::

    .venv/bin/python -m examples.photo_sync.sync_client http://127.0.0.1:8000 alice library.db

What roomcast's client does here that a mobile app otherwise hand-rolls:

* the connection survives network drops and server restarts (backoff with jitter), and the
  ``user:{name}`` room comes back from its last position, so events missed while away are
  replayed, or the room says it was reset and the app re-syncs;
* a burst of a thousand events (an album upload, a bulk trash) becomes one or two batches:
  the batcher waits for quiet (0.5 s), coalesces by key (the last change to an asset wins, a
  delete beats an update) and hands over one batch at a time, applied in one transaction;
* the event vocabulary can change under a server upgrade: ``use("v1")`` switches from the
  legacy ``on_*`` events to ``AssetUploadReadyV1`` / ``AssetEditReadyV1`` atomically.

Changes are keyed so that "last wins" is right: an asset's content (upload, update, edit,
delete) is one key; whether it is trashed, hidden, and its stack are keys of their own, so a
trash that follows an upload in the same batch does not erase the upload.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from roomcast.client import Change, ChangeBatcher, Client

__all__ = ["LocalLibrary", "PhotoSync", "LEGACY_EVENTS", "V1_EVENTS"]

logger = logging.getLogger("photo_sync")

LEGACY_EVENTS = ("on_upload_success", "on_asset_delete", "on_asset_trash", "on_asset_restore",
                 "on_asset_update", "on_asset_stack_update", "on_asset_hidden", "on_config_update",
                 "on_new_release")
V1_EVENTS = ("AssetUploadReadyV1", "AssetEditReadyV1", "on_asset_delete", "on_asset_trash",
             "on_asset_restore", "on_asset_hidden", "on_config_update", "on_new_release")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY, data TEXT NOT NULL,
    trashed INTEGER NOT NULL DEFAULT 0, hidden INTEGER NOT NULL DEFAULT 0, stack TEXT
);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LocalLibrary:
    """The device's copy of the library. ``apply`` takes one batch, in one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path)
        self.db.executescript(_SCHEMA)
        self.batches = 0

    def apply(self, batch: list[Change]) -> None:
        # Content first (uploads, updates, deletes), then flags and stacks: a batch may hold an
        # asset's upload and its trashing as two keys, and the flag needs the row to exist.
        content = [c for c in batch if c.kind in ("upsert", "delete")]
        with self.db:  # all of the batch or none of it
            for change in content + [c for c in batch if c.kind not in ("upsert", "delete")]:
                self._apply(change)
        self.batches += 1

    def _apply(self, change: Change) -> None:
        kind, data = change.kind, change.data
        asset_id = change.key.split(":")[1] if change.key.startswith("asset:") else ""
        if kind == "upsert":  # keeps the trashed/hidden/stack columns: they are keys of their own
            self.db.execute("INSERT INTO assets (id, data) VALUES (?, ?)"
                            " ON CONFLICT (id) DO UPDATE SET data = excluded.data", (asset_id, json.dumps(data)))
        elif kind == "delete":
            self.db.execute("DELETE FROM assets WHERE id = ?", (asset_id,))
        elif kind in ("trash", "restore"):
            self.db.execute("UPDATE assets SET trashed = ? WHERE id = ?", (kind == "trash", asset_id))
        elif kind == "hidden":
            self.db.execute("UPDATE assets SET hidden = 1 WHERE id = ?", (asset_id,))
        elif kind == "stack":
            self.db.execute("UPDATE assets SET stack = ? WHERE id = ?", (data, asset_id))
        elif kind == "setting":
            self.db.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", (change.key, json.dumps(data)))

    def assets(self) -> dict[str, dict[str, Any]]:
        rows = self.db.execute("SELECT id, data, trashed, hidden, stack FROM assets")
        return {i: {"data": json.loads(d), "trashed": bool(t), "hidden": bool(h), "stack": s}
                for i, d, t, h, s in rows}

    def settings(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.db.execute("SELECT key, value FROM settings")}


class PhotoSync:
    """Listens for library events on ``client`` and feeds them, keyed, to one batcher."""

    def __init__(self, client: Client, library: LocalLibrary, **batching: Any) -> None:
        self.client = client
        self.library = library
        self.changes: ChangeBatcher = client.batcher(library.apply, **batching)
        add = self.changes.add

        def each(asset_ids: Any, aspect: str, kind: str, data: Any = None) -> None:
            for asset_id in [asset_ids] if isinstance(asset_ids, str) else asset_ids:
                add(f"asset:{asset_id}:{aspect}", kind, data)

        handlers: dict[str, Callable[[Any], None]] = {
            "on_upload_success": lambda asset: add(f"asset:{asset['id']}", "upsert", asset),
            "on_asset_update": lambda asset: add(f"asset:{asset['id']}", "upsert", asset),
            "on_asset_delete": lambda asset_id: add(f"asset:{asset_id}", "delete"),
            "on_asset_trash": lambda asset_ids: each(asset_ids, "trashed", "trash"),
            "on_asset_restore": lambda asset_ids: each(asset_ids, "trashed", "restore"),
            "on_asset_hidden": lambda asset_id: each(asset_id, "hidden", "hidden"),
            "on_asset_stack_update": lambda stack: each(stack["assets"], "stack", "stack", stack["id"]),
            "on_config_update": lambda config: add("config", "setting", config),
            "on_new_release": lambda release: add("release", "setting", release),
        }
        for event, handler in handlers.items():
            client.on(event, handler, set="legacy")
            if event in V1_EVENTS:
                client.on(event, handler, set="v1")
        client.on("AssetUploadReadyV1", lambda m: add(f"asset:{m['asset']['id']}", "upsert", m["asset"]), set="v1")
        client.on("AssetEditReadyV1", lambda m: add(f"asset:{m['asset']['id']}", "upsert", m["asset"]), set="v1")
        client.use("legacy")

    def use_v1(self) -> None:
        """The server speaks the newer events from now on: switch, atomically."""
        self.client.use("v1")


async def main(url: str, user: str, db: str) -> None:
    logging.basicConfig(level=logging.INFO)
    client = Client(url)
    PhotoSync(client, LocalLibrary(db))
    client.on_state(lambda change: logger.info("%s -> %s (%s)", change.old, change.new, change.reason))
    async with client:  # connects; reconnects by itself; closes on the way out
        await client.subscribe(f"user:{user}")
        await asyncio.Event().wait()  # until Ctrl-C


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
