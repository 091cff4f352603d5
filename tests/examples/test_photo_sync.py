"""The photo-library sync example: a burst of 1,000 events from roomcast, a few calm batches,
and a local store that ends exactly as applying the events one by one would leave it.

A real roomcast server on 127.0.0.1 publishes; the example's ``PhotoSync`` runs on the real
``roomcast.client.Client`` over a WebSocket, with the batcher's default timing.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from servers import running

from examples.photo_sync.sync_client import LocalLibrary, PhotoSync
from roomcast.client import Change, Client
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

ROOM = "user:alice"
WAIT = 20.0


def burst(count: int, seed: int = 7) -> list[tuple[str, Any]]:
    """``count`` plausible library events: uploads, edits, trash and restore, hides, stacks,
    deletes (final: ids are never reused), config changes and a release."""
    rng = random.Random(seed)
    alive: list[str] = []
    events: list[tuple[str, Any]] = []
    serial = 0
    while len(events) < count:
        roll = rng.random()
        if roll < 0.3 or len(alive) < 5:
            serial += 1
            asset = {"id": f"a{serial}", "name": f"IMG_{serial:04}.jpg", "rev": 0}
            alive.append(asset["id"])
            events.append(("on_upload_success", asset))
        elif roll < 0.5:
            events.append(("on_asset_update", {"id": rng.choice(alive), "name": "edited", "rev": len(events)}))
        elif roll < 0.6:
            events.append(("on_asset_trash", rng.sample(alive, 3)))
        elif roll < 0.68:
            events.append(("on_asset_restore", rng.sample(alive, 2)))
        elif roll < 0.74:
            events.append(("on_asset_hidden", rng.choice(alive)))
        elif roll < 0.8:
            events.append(("on_asset_stack_update", {"id": f"s{len(events)}", "assets": rng.sample(alive, 2)}))
        elif roll < 0.92:
            gone = alive.pop(rng.randrange(len(alive)))
            events.append(("on_asset_delete", gone))
        elif roll < 0.97:
            events.append(("on_config_update", {"trash_days": rng.randint(1, 60)}))
        else:
            events.append(("on_new_release", {"version": f"v1.{len(events)}"}))
    return events


def expected(events: list[tuple[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """The reference: each event applied on its own, in order."""
    assets: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for event, data in events:
        if event in ("on_upload_success", "on_asset_update"):
            entry = assets.setdefault(data["id"], {"trashed": False, "hidden": False, "stack": None})
            entry["data"] = data
        elif event == "on_asset_delete":
            assets.pop(data, None)
        elif event in ("on_asset_trash", "on_asset_restore"):
            for asset_id in data:
                assets[asset_id]["trashed"] = event == "on_asset_trash"
        elif event == "on_asset_hidden":
            assets[data]["hidden"] = True
        elif event == "on_asset_stack_update":
            for asset_id in data["assets"]:
                assets[asset_id]["stack"] = data["id"]
        else:
            settings["config" if event == "on_config_update" else "release"] = data
    return assets, settings


class Watched(LocalLibrary):
    """The example's store, telling the test when a batch has landed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sizes: list[int] = []
        self.landed = asyncio.Event()

    def apply(self, batch: list[Change]) -> None:
        super().apply(batch)
        self.sizes.append(len(batch))
        self.landed.set()


async def test_a_burst_of_1000_events_lands_exactly_right_in_a_handful_of_batches(tmp_path: Path) -> None:
    events = burst(1000)
    want_assets, want_settings = expected(events)
    async with running(App(Hub(), Settings())) as srv:
        library = Watched(tmp_path / "library.db")
        client = Client(srv.url, transports=("websocket",))
        sync = PhotoSync(client, library)  # the batcher's defaults: 0.5 s debounce, 5 s window
        async with client:
            await client.subscribe(ROOM)
            last = None
            for event, data in events:
                last = await srv.hub.publish(ROOM, event, data)
            assert last is not None
            async with asyncio.timeout(WAIT):
                while library.assets() != want_assets or library.settings() != want_settings:
                    library.landed.clear()
                    await library.landed.wait()
            room = client.room(ROOM)
            assert room is not None and room.offset == last.offset  # every event seen, none twice
        assert sync.changes.closed
    # 1,000 events touching a few hundred keys, coalesced: a handful of batches, not 1,000 calls.
    assert 1 <= library.batches <= 5, library.sizes
    assert sum(library.sizes) < 1000
    assert len(want_assets) > 50 and any(a["trashed"] for a in want_assets.values())


async def test_switching_to_the_v1_events_is_atomic_and_the_old_upload_event_is_ignored_after(
    tmp_path: Path,
) -> None:
    async with running(App(Hub(), Settings())) as srv:
        library = Watched(tmp_path / "library.db")
        client = Client(srv.url, transports=("websocket",))
        sync = PhotoSync(client, library, debounce=0.05)
        async with client:
            await client.subscribe(ROOM)
            client.on("server_upgraded", lambda _: sync.use_v1(), set="legacy")
            await srv.hub.publish(ROOM, "on_upload_success", {"id": "old", "name": "legacy"})
            await srv.hub.publish(ROOM, "server_upgraded", {"version": 2})  # from here on: v1 events
            await srv.hub.publish(ROOM, "AssetUploadReadyV1", {"asset": {"id": "new", "name": "v1"}})
            await srv.hub.publish(ROOM, "on_upload_success", {"id": "ignored", "name": "legacy after"})
            await srv.hub.publish(ROOM, "AssetEditReadyV1", {"asset": {"id": "old", "name": "edited in v1"}})
            await srv.hub.publish(ROOM, "on_asset_trash", ["new"])  # shared by both sets
            async with asyncio.timeout(WAIT):
                while set(library.assets()) != {"old", "new"} or not library.assets()["new"]["trashed"]:
                    library.landed.clear()
                    await library.landed.wait()
    assets = library.assets()
    assert assets["old"]["data"]["name"] == "edited in v1"
    assert "ignored" not in assets
