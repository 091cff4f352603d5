"""Interop: the official JavaScript client (socket.io-client 4) against the server under test.

Each test runs one scenario of ``node/client_scenario.mjs`` in a subprocess, for each
transport setting, and asserts on the JSON observations the driver prints.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

Observations = list[dict[str, Any]]
DRIVER_TIMEOUT_MS = 10_000
SUBPROCESS_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class TransportMode:
    """A client transport setting and the transports it must open with and end on."""

    transports: tuple[str, ...]
    opens_on: str
    ends_on: str


MODES = {
    "websocket": TransportMode(("websocket",), opens_on="websocket", ends_on="websocket"),
    "polling": TransportMode(("polling",), opens_on="polling", ends_on="polling"),
    "polling+upgrade": TransportMode(("polling", "websocket"), opens_on="polling", ends_on="websocket"),
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> TransportMode:
    """Each test runs once per transport setting."""
    return MODES[request.param]


def run_scenario(node_dir: Path, scenario: str, **options: Any) -> Observations:
    """Run one driver scenario to completion and return its observations (one dict per line).

    Fails the test, with the driver's output, unless it exits 0 with a final ``done`` line.
    """
    options.setdefault("timeoutMs", DRIVER_TIMEOUT_MS)
    completed = subprocess.run(
        ["node", "client_scenario.mjs", scenario, json.dumps(options)],
        cwd=node_dir,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    observations = [json.loads(line) for line in completed.stdout.splitlines() if line.strip()]
    if completed.returncode != 0 or not observations or observations[-1]["type"] != "done":
        pytest.fail(
            f"scenario {scenario!r} failed (exit {completed.returncode})\n"
            f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
        )
    return observations


def of_type(observations: Observations, kind: str, socket: str | None = None) -> Observations:
    """The observations of one type, optionally only those of one socket label."""
    return [o for o in observations if o["type"] == kind and (socket is None or o.get("socket") == socket)]


def binary(data: bytes) -> dict[str, str]:
    """The driver's JSON form of a binary value."""
    return {"$binary": data.hex()}


def assert_transports(observations: Observations, mode: TransportMode, socket: str = "client") -> None:
    """`socket` opened on the mode's first transport and finished on the expected one."""
    assert [o["transport"] for o in of_type(observations, "open", socket)] == [mode.opens_on]
    assert [o["transport"] for o in of_type(observations, "final-transport", socket)] == [mode.ends_on]
    upgrades = [o["transport"] for o in of_type(observations, "upgrade", socket)]
    assert upgrades == ([mode.ends_on] if mode.opens_on != mode.ends_on else [])


def test_auth_is_echoed(node_peers: Path, sio_server: str, mode: TransportMode) -> None:
    """The handshake auth payload comes back in the server's `auth` event."""
    auth = {"token": "s3cr3t", "user": {"id": 42, "tags": ["a", "b"]}}
    observations = run_scenario(node_peers, "auth", url=sio_server, transports=mode.transports, auth=auth)

    assert [o["data"] for o in of_type(observations, "auth", "client")] == [auth]
    connected = of_type(observations, "connected", "client")
    assert len(connected) == 1 and connected[0]["id"]
    assert_transports(observations, mode)


def test_publish_reaches_room_members_only(node_peers: Path, sio_server: str, mode: TransportMode) -> None:
    """A publish to room A reaches its member; the outsider's first `news` is room B's.

    Both publishes come from one sender in order, so an outsider wrongly sent room A's event
    would see it before room B's: no waiting for an absence is needed.
    """
    observations = run_scenario(node_peers, "rooms", url=sio_server, transports=mode.transports)

    assert [o["args"] for o in of_type(observations, "ack") if o["event"] == "join"] == [[True], [True]]
    assert [o["data"] for o in of_type(observations, "received", "member")] == [{"room": "A", "n": 1}]
    assert [o["data"] for o in of_type(observations, "received", "outsider")] == [{"room": "B", "n": 2}]
    for label in ("member", "outsider"):
        assert_transports(observations, mode, label)


def test_acks_carry_data(node_peers: Path, sio_server: str, mode: TransportMode) -> None:
    """`echo` acks with its argument (binary included); `message-with-ack` with all its args."""
    data = {"text": "héllo ✓", "n": 3.5, "flag": True, "none": None, "list": [1, [2]]}
    data["raw"] = binary(b"\x00\xff")
    observations = run_scenario(node_peers, "ack", url=sio_server, transports=mode.transports, data=data)

    acks = {o["event"]: o["args"] for o in of_type(observations, "ack")}
    assert acks == {"echo": [data], "message-with-ack": [1, "two", {"three": [3]}]}
    assert_transports(observations, mode)


def test_binary_round_trip(node_peers: Path, sio_server: str, mode: TransportMode) -> None:
    """`message` with Buffers nested in an object comes back as `message-back`, bytes identical."""
    data = {
        "name": "blob",
        "payload": binary(bytes(range(256))),
        "nested": {"parts": [binary(b"\x00"), binary(b""), binary(b"\xde\xad\xbe\xef" * 64)]},
    }
    observations = run_scenario(node_peers, "binary", url=sio_server, transports=mode.transports, data=data)

    received = of_type(observations, "received", "client")
    assert [(o["event"], o["data"]) for o in received] == [("message-back", data)]
    assert_transports(observations, mode)
