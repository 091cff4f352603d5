"""The photo-library sync example: bursts of events, ids deleted and uploaded again, a server
killed mid-burst, and a device store that ends exactly equal to the server's library.

``expected()`` is the reference: the events applied one by one, in plain Python. The server
(``examples/photo_sync/server.py``) must hold exactly that, and the device exactly what the
server holds. The example's ``PhotoSync`` runs on the real ``roomcast.client.Client`` over a
WebSocket, against the example's server in-process or as a real process.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from client.clientkit import Subprocess, proxy_to, stopping
from servers import running

from examples.photo_sync.server import LibraryServer
from examples.photo_sync.sync_client import EVENT_CHANGES, LEGACY_EVENTS, LocalLibrary, PhotoSync
from roomcast.client import Change, Client, ConnectionClosed
from roomcast.client.batcher import ChangeBuffer
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

USER = "alice"
ROOM = f"user:{USER}"
WAIT = 20.0
ROOT = Path(__file__).resolve().parents[2]


def burst(count: int, seed: int = 7) -> list[tuple[str, Any]]:
    """``count`` plausible library events: uploads, edits, trash and restore, hides, stacks,
    deletes, uploads that reuse a deleted id (a re-import), config changes and releases."""
    rng = random.Random(seed)
    alive: list[str] = []
    gone: list[str] = []
    events: list[tuple[str, Any]] = []
    serial = 0
    while len(events) < count:
        roll = rng.random()
        if roll < 0.3 or len(alive) < 5:
            if gone and rng.random() < 0.3:
                asset_id = gone.pop(rng.randrange(len(gone)))
            else:
                serial += 1
                asset_id = f"a{serial}"
            alive.append(asset_id)
            events.append(("on_upload_success", {"id": asset_id, "name": f"IMG_{len(events):04}.jpg", "rev": 0}))
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
            asset_id = alive.pop(rng.randrange(len(alive)))
            gone.append(asset_id)
            events.append(("on_asset_delete", asset_id))
        elif roll < 0.97:
            events.append(("on_config_update", {"trash_days": rng.randint(1, 60)}))
        else:
            events.append(("on_new_release", {"version": f"v1.{len(events)}"}))
    return events


def expected(events: list[tuple[str, Any]]) -> dict[str, Any]:
    """The reference: each event applied on its own, in order (``LocalLibrary.state()``'s shape).

    An upload makes a new asset, without the flags an earlier asset of that id had."""
    assets: dict[str, dict[str, Any]] = {}
    settings: dict[str, Any] = {}
    for event, data in events:
        if event == "on_upload_success":
            assets[data["id"]] = {"data": data, "trashed": False, "hidden": False, "stack": None}
        elif event == "on_asset_update":
            assets[data["id"]]["data"] = data
        elif event == "on_asset_delete":
            del assets[data]
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
    return {"assets": assets, "settings": settings}


def reused(events: list[tuple[str, Any]]) -> int:
    """How many uploads reuse the id of an asset deleted before."""
    uploaded = [data["id"] for event, data in events if event == "on_upload_success"]
    return len(uploaded) - len(set(uploaded))


class Watched(LocalLibrary):
    """The example's store, telling the test when a batch or a snapshot has landed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sizes: list[int] = []
        self.landed = asyncio.Event()

    def apply(self, batch: list[Change]) -> None:
        super().apply(batch)
        self.sizes.append(len(batch))
        self.landed.set()

    def replace(self, state: Mapping[str, Any]) -> None:
        super().replace(state)
        self.landed.set()


async def until(check: Callable[[], bool], signal: asyncio.Event) -> None:
    """Wait until ``check()`` holds, looking again each time ``signal`` is set."""
    async with asyncio.timeout(WAIT):
        while not check():
            signal.clear()
            await signal.wait()


# -- keying: batches of any cut, no server ---------------------------------------------------


def apply_in_batches(library: LocalLibrary, batches: list[list[tuple[str, Any]]]) -> None:
    """Each batch's events through ``EVENT_CHANGES`` and the batcher's coalescing, then applied."""
    for events in batches:
        buffer = ChangeBuffer()
        for event, data in events:
            for change in EVENT_CHANGES[event](data):
                buffer.add(change, now=0.0)
        library.apply(buffer.drain())


def upload(asset_id: str, name: str = "v1") -> tuple[str, Any]:
    return ("on_upload_success", {"id": asset_id, "name": name})


FLAGGED = [
    upload("a1"),
    ("on_asset_trash", ["a1"]),
    ("on_asset_hidden", "a1"),
    ("on_asset_stack_update", {"id": "s1", "assets": ["a1"]}),
]


@pytest.mark.parametrize(
    "batches",
    [
        [FLAGGED, [("on_asset_delete", "a1"), upload("a1", "v2")]],
        [[*FLAGGED, ("on_asset_delete", "a1"), upload("a1", "v2")]],
        [[*FLAGGED, ("on_asset_delete", "a1"), upload("a1", "v2"), ("on_asset_update", {"id": "a1", "name": "v3"})]],
        [[upload("a1"), ("on_asset_delete", "a1"), upload("a1", "v2"), ("on_asset_trash", ["a1"])]],
        [FLAGGED, [("on_asset_update", {"id": "a1", "name": "v2"}), ("on_asset_delete", "a1")]],
        [[upload("a1"), ("on_asset_delete", "a1"), upload("a1", "v2"), ("on_asset_delete", "a1")]],
    ],
    ids=["delete-upload", "all-in-one-batch", "then-edited", "then-trashed", "edit-then-delete", "deleted-again"],
)
def test_an_id_deleted_and_uploaded_again_is_a_new_asset(tmp_path: Path, batches: list[list[tuple[str, Any]]]) -> None:
    library = LocalLibrary(tmp_path / "device.db")
    apply_in_batches(library, batches)
    assert library.state() == expected([event for batch in batches for event in batch])


@pytest.mark.parametrize("seed", range(5))
def test_a_burst_cut_into_batches_anywhere_ends_as_the_events_one_by_one(tmp_path: Path, seed: int) -> None:
    events = burst(1000, seed=seed)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(events)), 6))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)])]
    library = LocalLibrary(tmp_path / "device.db")
    apply_in_batches(library, batches)
    assert reused(events) > 10
    assert library.state() == expected(events)


# -- through a server in this process --------------------------------------------------------


async def test_a_burst_of_1000_events_lands_exactly_right_in_a_handful_of_batches(tmp_path: Path) -> None:
    events = burst(1000)
    want = expected(events)
    server = LibraryServer(tmp_path / "libraries")
    async with running(server.app) as srv:
        library = Watched(tmp_path / "library.db")
        client = Client(srv.url, transports=("websocket",))
        sync = PhotoSync(client, library, ROOM)  # the batcher's defaults: 0.5 s debounce, 5 s window
        async with client:
            await client.subscribe(ROOM)
            await until(lambda: sync.snapshots == 1, library.landed)  # the (empty) library
            last = None
            for event, data in events:
                last = await server.change(USER, event, data)
            assert last is not None
            await until(lambda: library.state() == want, library.landed)
            room = client.room(ROOM)
            assert room is not None and room.offset == last.offset  # every event seen, none twice
        assert sync.changes.closed
        assert server.library(USER).state() == want
    # 1,000 events touching a few hundred keys, coalesced: a handful of batches, not 1,000 calls.
    assert 1 <= library.batches <= 5, library.sizes
    assert sum(library.sizes) < 1000
    assert len(want["assets"]) > 50 and any(a["trashed"] for a in want["assets"].values())
    assert reused(events) > 10


async def test_switching_to_the_v1_events_is_atomic_and_the_old_upload_event_is_ignored_after(
    tmp_path: Path,
) -> None:
    async with running(LibraryServer(tmp_path / "libraries").app) as srv:
        library = Watched(tmp_path / "library.db")
        client = Client(srv.url, transports=("websocket",))
        sync = PhotoSync(client, library, ROOM, debounce=0.05)
        async with client:
            await client.subscribe(ROOM)
            client.on("server_upgraded", lambda _: sync.use_v1(), set="legacy")
            await srv.hub.publish(ROOM, "on_upload_success", {"id": "old", "name": "legacy"})
            await srv.hub.publish(ROOM, "server_upgraded", {"version": 2})  # from here on: v1 events
            await srv.hub.publish(ROOM, "AssetUploadReadyV1", {"asset": {"id": "new", "name": "v1"}})
            await srv.hub.publish(ROOM, "on_upload_success", {"id": "ignored", "name": "legacy after"})
            await srv.hub.publish(ROOM, "AssetEditReadyV1", {"asset": {"id": "old", "name": "edited in v1"}})
            await srv.hub.publish(ROOM, "on_asset_trash", ["new"])  # shared by both sets
            await until(
                lambda: set(library.assets()) == {"old", "new"} and library.assets()["new"]["trashed"], library.landed
            )
    assets = library.assets()
    assert assets["old"]["data"]["name"] == "edited in v1"
    assert "ignored" not in assets


async def test_without_a_library_snapshot_the_store_is_kept_and_events_still_apply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    library = Watched(tmp_path / "library.db")
    library.apply([Change("asset:kept", "create", {"id": "kept"})])
    async with running(App(Hub(), Settings(task_db=":memory:"))) as srv:  # a plain roomcast server
        client = Client(srv.url, transports=("websocket",))
        sync = PhotoSync(client, library, ROOM, debounce=0.05)
        async with client:
            with caplog.at_level(logging.WARNING, logger="photo_sync"):
                await client.subscribe(ROOM)
                await srv.hub.publish(ROOM, "on_upload_success", {"id": "new"})
                await until(lambda: "new" in library.assets(), library.landed)
    assert set(library.assets()) == {"kept", "new"} and sync.snapshots == 0
    assert "gave no library snapshot" in caplog.text


# -- the server as a process, killed mid-burst -----------------------------------------------

BACKOFF, BACKOFF_MAX = 0.05, 0.25  # reconnect delays: back within a quarter second of the server
NEVER = 3600.0  # no timed hand-over in the test: what is pending at the reset is still pending
MARK = "test:mark"


def library_server(data: Path, port: int) -> Subprocess:
    """The example's server as a process (``python -m examples.photo_sync.server``)."""
    argv = [
        sys.executable,
        "-m",
        "examples.photo_sync.server",
        "--data",
        str(data),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    return Subprocess(argv, {"PYTHONPATH": str(ROOT)})


async def listening(proc: Subprocess) -> str:
    """Its base URL, once it listens; its output is drained from then on."""
    line = await proc.wait_line("listening on", timeout=WAIT)
    proc.drain()
    return line.split()[-1]


class Seen:
    """The room's events as the device's handlers get them (after PhotoSync's own handler)."""

    def __init__(self, client: Client) -> None:
        self.count = 0
        self.marked = False
        self.signal = asyncio.Event()
        for event in LEGACY_EVENTS:
            client.on(event, self._event, set="legacy")
        client.on(MARK, self._mark, set="legacy")

    def _event(self, *_: Any) -> None:
        self.count += 1
        self.signal.set()

    def _mark(self, *_: Any) -> None:
        self.marked = True
        self.signal.set()


class Driver:
    """Sends each event through the server (``library``), in order, one at a time; waits for
    ``go`` before the event at ``pause_at``.

    One whose connection died before the answer is sent again after the reconnect: applied
    twice it is the same, since it only says what the asset, flag or setting is now.
    """

    def __init__(self, client: Client, pause_at: int) -> None:
        self.client = client
        self.pause_at = pause_at
        self.go = asyncio.Event()
        self.acked = 0
        self.signal = asyncio.Event()

    async def run(self, events: list[tuple[str, Any]]) -> None:
        for i, (event, data) in enumerate(events):
            if i == self.pause_at:
                await self.go.wait()
            for _attempt in range(5):
                try:
                    reply = await self.client.emit("library", {"user": USER, "event": event, "data": data}, ack=True)
                except ConnectionClosed:
                    continue
                assert "error" not in reply, reply
                break
            else:
                pytest.fail(f"{event} {data} was never answered")
            self.acked += 1
            self.signal.set()


@pytest.mark.parametrize(
    "batching",
    [{"debounce": NEVER, "window": NEVER, "max_wait": NEVER}, {}],
    ids=["changes-pending-at-the-reset", "default-batching"],
)
async def test_a_server_killed_mid_burst_and_restarted_leaves_the_device_equal_to_the_library(
    tmp_path: Path, batching: dict[str, float]
) -> None:
    """SIGKILL with a third of the burst sent; the device stays away (its proxy refuses it)
    until the restarted server has a third more, so it can only catch up from a snapshot;
    the last third streams in once it is back."""
    events = burst(1500, seed=11)
    want = expected(events)
    third = len(events) // 3
    data = tmp_path / "libraries"
    first = library_server(data, 0)
    with stopping(first):
        url = await listening(first)
        port = int(url.rsplit(":", 1)[1])
        async with proxy_to(port) as proxy:
            device = Watched(tmp_path / "device.db")
            client = Client(
                f"http://127.0.0.1:{proxy.port}",
                transports=("websocket",),
                backoff_initial=BACKOFF,
                backoff_max=BACKOFF_MAX,
            )
            sync = PhotoSync(client, device, ROOM, **batching)
            seen = Seen(client)
            driver = Driver(
                Client(
                    url, transports=("websocket",), ack_timeout=WAIT, backoff_initial=BACKOFF, backoff_max=BACKOFF_MAX
                ),
                pause_at=2 * third,
            )
            async with client, driver.client:
                await client.subscribe(ROOM)
                await until(lambda: sync.snapshots == 1, device.landed)
                before = client.room(ROOM)
                driving = asyncio.create_task(driver.run(events))
                try:
                    await until(lambda: seen.count >= third, seen.signal)
                    pending = len(sync.changes)
                    proxy.refuse_websocket = True  # the device's reconnects fail until allowed again
                    first.kill()  # SIGKILL, mid-burst: the driver has an event in flight
                    assert first.process.returncode == -9 and not driving.done()

                    second = library_server(data, port)
                    with stopping(second):
                        assert await listening(second) == url
                        await until(lambda: driver.acked == 2 * third, driver.signal)  # paused there
                        proxy.refuse_websocket = False
                        await until(lambda: sync.snapshots == 2, device.landed)
                        after = client.room(ROOM)
                        assert before is not None and after is not None
                        assert after.recovered is False and after.epoch != before.epoch  # a reset
                        driver.go.set()
                        async with asyncio.timeout(WAIT):
                            await driving  # every event answered, by one server or the other
                        # Published after the reset: the device gets it after every event before it.
                        await driver.client.emit("publish", {"room": ROOM, "event": MARK}, ack=True)
                        await until(lambda: seen.marked, seen.signal)
                        await sync.changes.flush()
                        truth = LocalLibrary(data / f"{USER}.db").state()
                finally:
                    driving.cancel()
    assert len(truth["assets"]) > 200 and reused(events) > 50
    assert truth == want  # nothing lost: each event was committed before it was published
    assert device.state() == truth
    assert seen.count < len(events)  # the device missed events: only the snapshot had them
    if batching:  # nothing handed over on a timer: the changes were pending at the reset
        assert pending > 0 and sync.dropped >= pending  # dropped, never applied
        assert device.batches == 1  # the final flush, of what came after the reset
