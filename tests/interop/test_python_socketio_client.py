"""Interop: python-socketio's ``AsyncClient`` against the server under test.

Every test is bounded by ``asyncio.timeout`` and waits on events, never on sleeps. Except the
reconnection test, each runs over websocket only, polling only, and polling with upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import socketio

TEST_TIMEOUT_S = 10.0
TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "polling+upgrade": ["polling", "websocket"]}


@pytest.fixture(params=list(TRANSPORTS))
def transports(request: pytest.FixtureRequest) -> list[str]:
    """The client transports a test connects with."""
    return TRANSPORTS[request.param]


@contextlib.asynccontextmanager
async def new_client() -> AsyncIterator[socketio.AsyncClient]:
    """An AsyncClient with fast reconnection; shut down (disconnected, no retries) on exit.

    The client gets an aiohttp session owned here: python-engineio's own session handling
    races with a quick reconnection (the old connection's cleanup drops the new session,
    which then leaks), while an external session is never replaced and is closed below.
    """
    async with aiohttp.ClientSession() as http:
        client = socketio.AsyncClient(
            reconnection_delay=0.05, reconnection_delay_max=0.2, randomization_factor=0, http_session=http
        )
        try:
            yield client
        finally:
            await client.shutdown()


def inbox(client: socketio.AsyncClient, event: str, namespace: str = "/") -> asyncio.Queue[Any]:
    """A queue receiving every `event` on `client` (one argument as is, several as a tuple).

    Register it before connecting so that events sent right after the connection are kept.
    """
    received: asyncio.Queue[Any] = asyncio.Queue()

    def handler(*args: Any) -> None:
        received.put_nowait(args[0] if len(args) == 1 else args)

    client.on(event, handler, namespace=namespace)
    return received


def unique_room(label: str) -> str:
    """A room name no other test uses (the server lives for the whole session)."""
    return f"{label}-{uuid.uuid4().hex}"


async def test_auth_is_echoed(sio_server: str, transports: list[str]) -> None:
    """The `auth` dict given at connection comes back in the server's `auth` event."""
    auth = {"token": "s3cr3t", "user": {"id": 7, "roles": ["a", "b"]}}
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        auth_events = inbox(client, "auth")
        await client.connect(sio_server, auth=auth, transports=transports)
        assert client.connected and client.get_sid()
        # python-engineio finishes a polling -> websocket upgrade inside connect()
        assert client.transport() == transports[-1]
        assert await auth_events.get() == auth


async def test_auth_defaults_to_empty_dict(sio_server: str, transports: list[str]) -> None:
    """Without auth data the server's `auth` event carries an empty dict."""
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        auth_events = inbox(client, "auth")
        await client.connect(sio_server, transports=transports)
        assert await auth_events.get() == {}


async def test_publish_reaches_room_members_only(sio_server: str, transports: list[str]) -> None:
    """Members of a room receive its publishes (the sender included); an outsider does not.

    The outsider joins room B only. Room A's publish is sent before room B's by the same
    client, so an outsider wrongly sent room A's event would see it first: its first `news`
    being room B's proves it received nothing from A, without waiting for an absence.
    """
    room_a, room_b = unique_room("a"), unique_room("b")
    async with (
        asyncio.timeout(TEST_TIMEOUT_S),
        new_client() as publisher,
        new_client() as member,
        new_client() as outsider,
    ):
        clients = {"publisher": publisher, "member": member, "outsider": outsider}
        queues = {name: inbox(client, "news") for name, client in clients.items()}
        for client in clients.values():
            await client.connect(sio_server, transports=transports)
        assert await publisher.call("join", {"room": room_a}, timeout=5) is True
        assert await member.call("join", {"room": room_a}, timeout=5) is True
        assert await outsider.call("join", {"room": room_b}, timeout=5) is True

        await publisher.emit("publish", {"room": room_a, "event": "news", "data": {"room": "A"}})
        await publisher.emit("publish", {"room": room_b, "event": "news", "data": {"room": "B"}})

        assert await queues["member"].get() == {"room": "A"}
        assert await queues["publisher"].get() == {"room": "A"}
        assert await queues["outsider"].get() == {"room": "B"}


async def test_ack_returns_data(sio_server: str, transports: list[str]) -> None:
    """`echo` acks with its argument; `message-with-ack` acks with all its arguments."""
    data = {"text": "héllo ✓", "n": 3.5, "flag": True, "none": None, "list": [1, [2]], "raw": b"\x00\xff"}
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        await client.connect(sio_server, transports=transports)
        assert await client.call("echo", data, timeout=5) == data
        several = (1, "two", {"three": [3]})
        assert await client.call("message-with-ack", several, timeout=5) == several


async def test_binary_round_trip(sio_server: str, transports: list[str]) -> None:
    """`message` with bytes (top level and nested) comes back as `message-back`, bytes equal."""
    payload = bytes(range(256))
    nested = {"name": "blob", "parts": [b"\x00", b"", b"\xde\xad\xbe\xef" * 64]}
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        back = inbox(client, "message-back")
        await client.connect(sio_server, transports=transports)
        await client.emit("message", payload)
        await client.emit("message", nested)
        first = await back.get()
        assert isinstance(first, bytes) and first == payload
        assert await back.get() == nested


async def test_custom_namespace_connects(sio_server: str, transports: list[str]) -> None:
    """`/custom` accepts the connection and echoes the auth payload there."""
    auth = {"token": "custom"}
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        auth_events = inbox(client, "auth", namespace="/custom")
        await client.connect(sio_server, auth=auth, namespaces=["/custom"], transports=transports)
        assert client.connected and list(client.namespaces) == ["/custom"]
        assert await auth_events.get() == auth


async def test_unknown_namespace_is_refused(sio_server: str, transports: list[str]) -> None:
    """Connecting to a namespace the server does not have fails with "Invalid namespace"."""
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        errors = inbox(client, "connect_error", namespace="/random")
        with pytest.raises(socketio.exceptions.ConnectionError, match="/random"):
            await client.connect(sio_server, namespaces=["/random"], transports=transports)
        assert await errors.get() == {"message": "Invalid namespace"}
        assert not client.connected


async def test_reconnects_after_server_drops_transport(sio_server: str) -> None:
    """After `drop` closes the transport, the client reconnects on its own and works again.

    WebSocket only: over polling the server announces the close with an Engine.IO CLOSE
    packet, which python-socketio treats as a deliberate disconnect and does not retry.
    """
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        connects: list[str] = []
        reconnected = asyncio.Event()
        disconnects = inbox(client, "disconnect")

        def on_connect() -> None:
            connects.append(client.get_sid())
            if len(connects) == 2:
                reconnected.set()

        client.on("connect", on_connect)
        await client.connect(sio_server, transports=["websocket"])
        await client.emit("drop")
        await disconnects.get()
        await reconnected.wait()
        assert connects[0] != connects[1]  # a new session, not the old one resumed
        assert await client.call("echo", "still here", timeout=5) == "still here"
