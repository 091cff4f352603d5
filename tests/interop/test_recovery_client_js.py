"""Interop: connection state recovery with the official JavaScript client (socket.io-client 4).

roomcast runs in this test's event loop (recovery needs a server setting the shared
conformance server does not have) and ``node/recovery_scenario.mjs`` runs as a subprocess
awaited on that loop. The scenario loses the transport by asking the server to ``drop`` it,
which the client treats as a recoverable "transport close" and reconnects by itself; it holds
the reconnection (in its ``auth`` callback) until the publications it must miss are
acknowledged, so "published while away" is certain, not a race.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from nodescenario import Observations, run_node_scenario
from servers import RunningServer, running

from roomcast.server.app import App

DRIVER_TIMEOUT_MS = 10_000
SUBPROCESS_TIMEOUT_S = 20.0
TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "polling+upgrade": ["polling", "websocket"]}


@pytest.fixture(params=list(TRANSPORTS))
def transports(request: pytest.FixtureRequest) -> list[str]:
    return TRANSPORTS[request.param]


@pytest.fixture
async def recovering(make_app: Callable[..., App]) -> AsyncIterator[RunningServer]:
    """roomcast with the demo events and the official default window (120 s)."""
    async with running(make_app(recovery_window=120.0)) as srv:
        yield srv


@pytest.fixture
async def forgetful(make_app: Callable[..., App]) -> AsyncIterator[RunningServer]:
    """Recovery on, but a window of a nanosecond: any comeback, network round trips
    later, is past it."""
    async with running(make_app(recovery_window=1e-9)) as srv:
        yield srv


async def run_scenario(node_dir: Path, **options: Any) -> Observations:
    """Run the driver to completion without blocking the loop the server runs on."""
    options.setdefault("timeoutMs", DRIVER_TIMEOUT_MS)
    return await run_node_scenario(
        node_dir / "recovery_scenario.mjs", options, timeout=SUBPROCESS_TIMEOUT_S, cwd=node_dir
    )


def of_type(observations: Observations, kind: str) -> Observations:
    return [o for o in observations if o["type"] == kind]


async def test_the_official_client_recovers_what_it_missed(
    node_peers: Path, recovering: RunningServer, transports: list[str]
) -> None:
    observations = await run_scenario(node_peers, url=recovering.url, transports=transports)

    first, second = of_type(observations, "connected")
    assert first["recovered"] is False
    assert second["recovered"] is True and second["id"] == first["id"]
    assert [o["reason"] for o in of_type(observations, "disconnected")] == ["transport close"]
    received = of_type(observations, "received")
    assert [o["data"]["n"] for o in received] == [1, 2, 3, 4, 5, 6]  # in order, nothing twice
    offsets = [o["extra"] for o in received]
    assert all(len(extra) == 1 and isinstance(extra[0], str) for extra in offsets)
    assert len({extra[0] for extra in offsets}) == 6
    assert recovering.app.socketio.recovery is not None
    assert recovering.app.socketio.recovery.saved_sessions == 0


async def test_after_the_window_the_official_client_starts_afresh(
    node_peers: Path, forgetful: RunningServer, transports: list[str]
) -> None:
    observations = await run_scenario(node_peers, url=forgetful.url, transports=transports)

    first, second = of_type(observations, "connected")
    assert first["recovered"] is False and second["recovered"] is False
    assert second["id"] != first["id"]
    # Nothing replayed: after rejoining, the next publication is the first one seen again.
    assert [o["data"]["n"] for o in of_type(observations, "received")] == [1, 2, 6]
