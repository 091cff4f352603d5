"""One room model, three transports: the same behaviour tests over Socket.IO, SSE and /ws.

Each transport is driven through a small adapter with one interface (subscribe with an
optional position, next event, unsubscribe), so every test below runs three times against
the same server code: subscribe gives the snapshot, publications arrive in order, unsubscribe
stops them, a reconnect with a position recovers exactly what was missed, a gap history no
longer holds gives a fresh snapshot, and limits are refused with a reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from brokers import BROKERS, make_broker
from loopstep import yield_to_loop
from rawclient import RawWebSocket, call, open_websocket, socketio_connect
from servers import RunningServer, running
from sseclient import SseStream, open_sse

from roomcast.hub.hub import Hub
from roomcast.protocol import sse
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.types import StreamPosition

TRANSPORTS = ["socketio", "sse", "ws"]


@dataclass
class Synced:
    """What a subscribe told the client: where the room stood, and how it got in sync."""

    epoch: str
    offset: int
    recovered: bool
    snapshot: Any = None


class Client(Protocol):
    async def subscribe(self, room: str, *, at: StreamPosition | None = None) -> Synced: ...

    async def next_event(self) -> tuple[str, Any]: ...

    async def unsubscribe(self, room: str) -> None: ...

    async def refusal(self, rooms: list[str]) -> str:
        """Subscribe to ``rooms``; the reason the server gave for refusing the last one(s)."""

    async def close(self) -> None: ...


def _data(args: list[Any]) -> Any:
    return None if not args else args[0] if len(args) == 1 else args


class SocketIOClient:
    """The built-in ``subscribe`` event over a raw WebSocket Socket.IO connection."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.pending: deque[tuple[str, Any]] = deque()
        self.acks = 0

    async def subscribe(self, room: str, *, at: StreamPosition | None = None) -> Synced:
        request: dict[str, Any] = {"room": room}
        if at is not None:
            request.update(epoch=at.epoch, offset=at.offset)
        self.acks += 1
        [result] = await call(self.ws, self.acks, "subscribe", request)
        publications = result.get("publications", [])
        for pub in publications:
            self.pending.append((pub["event"], _data(pub["data"])))
        # The ack's offset is the room's position after its publications; a snapshot stands before them.
        base = result["offset"] - (0 if result["recovered"] else len(publications))
        return Synced(result["epoch"], base, result["recovered"], result.get("snapshot"))

    async def next_event(self) -> tuple[str, Any]:
        if self.pending:
            return self.pending.popleft()
        while True:
            message = await self.ws.recv()
            if isinstance(message, str) and message.startswith("42["):
                event, *args = json.loads(message[2:])
                return event, _data(args)

    async def unsubscribe(self, room: str) -> None:
        self.acks += 1
        assert await call(self.ws, self.acks, "unsubscribe", {"room": room}) == [{"room": room}]

    async def refusal(self, rooms: list[str]) -> str:
        for room in rooms:
            self.acks += 1
            [result] = await call(self.ws, self.acks, "subscribe", {"room": room})
            if "error" in result:
                return str(result["error"])
        raise AssertionError("every subscribe was accepted")

    async def close(self) -> None:
        self.ws.close()


class PlainWebSocketClient:
    """``roomcast.v1`` over ``/ws``."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.ids = 0

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        self.ws.send(json.dumps({**message, "id": self.ids}))
        while True:
            reply: dict[str, Any] = json.loads(await self.ws.recv())
            if reply.get("id") == self.ids:
                return reply

    async def subscribe(self, room: str, *, at: StreamPosition | None = None) -> Synced:
        message: dict[str, Any] = {"type": "subscribe", "room": room}
        if at is not None:
            message.update(epoch=at.epoch, offset=at.offset)
        reply = await self._request(message)
        assert reply["type"] == "snapshot", reply
        return Synced(reply["epoch"], reply["offset"], reply["recovered"], reply.get("snapshot"))

    async def next_event(self) -> tuple[str, Any]:
        while True:
            message = json.loads(await self.ws.recv())
            if message["type"] == "event":
                return message["event"], message["data"]

    async def unsubscribe(self, room: str) -> None:
        assert (await self._request({"type": "unsubscribe", "room": room}))["type"] == "ack"

    async def refusal(self, rooms: list[str]) -> str:
        for room in rooms:
            reply = await self._request({"type": "subscribe", "room": room})
            if reply["type"] == "error":
                assert reply["code"] == "limit"
                return str(reply["message"])
        raise AssertionError("every subscribe was accepted")

    async def close(self) -> None:
        self.ws.close()


class SseClient:
    """One ``/sse`` stream per subscribed room; the position goes in as a ``Last-Event-ID``."""

    def __init__(self, srv: RunningServer) -> None:
        self.srv = srv
        self.streams: dict[str, tuple[contextlib.AsyncExitStack, SseStream]] = {}
        self.current: SseStream | None = None
        self.pending: deque[tuple[str, Any]] = deque()

    async def subscribe(self, room: str, *, at: StreamPosition | None = None) -> Synced:
        stack = contextlib.AsyncExitStack()
        cursor = sse.encode_cursor({room: at}) if at is not None else None
        stream = await stack.enter_async_context(open_sse(self.srv.url, [room], last_event_id=cursor))
        assert stream.status == 200
        self.streams[room] = (stack, stream)
        self.current = stream
        first = await stream.next()
        if first.event in ("snapshot", "reset"):
            body = first.json()
            return Synced(body["epoch"], body["offset"], False, body["snapshot"])
        # Recovered: SSE just carries on from the cursor; the first event is a missed one.
        self.pending.append((first.event, first.json()))
        assert at is not None
        position = sse.decode_cursor(first.id or "")[room]
        return Synced(position.epoch, position.offset, True)

    async def next_event(self) -> tuple[str, Any]:
        if self.pending:
            return self.pending.popleft()
        assert self.current is not None
        event = await self.current.next()
        return event.event, event.json()

    async def unsubscribe(self, room: str) -> None:
        stack, _ = self.streams.pop(room)
        members = self.srv.hub.rooms().get(room, 0)
        await stack.aclose()
        async with asyncio.timeout(5):  # the server notices the stream closed
            while self.srv.hub.rooms().get(room, 0) == members:
                await yield_to_loop()

    async def refusal(self, rooms: list[str]) -> str:
        async with open_sse(self.srv.url, rooms) as stream:
            assert stream.status == 400
            return str((await stream.response.json())["error"]["message"])

    async def close(self) -> None:
        for stack, _ in self.streams.values():
            await stack.aclose()
        self.streams.clear()


async def connect(kind: str, srv: RunningServer) -> Client:
    if kind == "socketio":
        return SocketIOClient(await socketio_connect(srv.host, srv.port))
    if kind == "ws":
        ws = await open_websocket(srv.host, srv.port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
        assert ws.status == 101
        return PlainWebSocketClient(ws)
    return SseClient(srv)


def _app(kind: str, history_size: int = 100) -> App:
    hub = Hub(broker=make_broker(kind, history_size=history_size))
    boards: dict[str, list[str]] = {"board": ["card-1"]}

    @hub.snapshot("*")
    def snapshot(room: str) -> dict[str, Any]:
        return {"cards": boards.get(room, [])}

    return App(hub, Settings())


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    """Every test runs over each broker: the memory one, and one that delivers later."""
    name: str = request.param
    return name


async def test_subscribe_gives_the_snapshot_then_every_publication_in_order(transport: str, broker: str) -> None:
    async with running(_app(broker)) as srv:
        client = await connect(transport, srv)
        try:
            synced = await client.subscribe("board")
            assert (synced.recovered, synced.offset, synced.snapshot) == (False, 0, {"cards": ["card-1"]})
            for n in range(5):
                await srv.hub.publish("board", "card", {"n": n})
            await srv.hub.publish("board", "pair", 1, 2)
            assert [await client.next_event() for _ in range(6)] == [
                *[("card", {"n": n}) for n in range(5)],
                ("pair", [1, 2]),
            ]
        finally:
            await client.close()


async def test_one_publication_reaches_subscribers_on_all_three_transports(broker: str) -> None:
    async with running(_app(broker)) as srv:
        clients = [await connect(kind, srv) for kind in TRANSPORTS]
        try:
            for client in clients:
                await client.subscribe("board")
            assert (await srv.hub.presence("board")).connections == 3
            await srv.hub.publish("board", "moved", {"card": 1})
            for client in clients:
                assert await client.next_event() == ("moved", {"card": 1})
        finally:
            for client in clients:
                await client.close()


async def test_unsubscribe_stops_delivery(transport: str, broker: str) -> None:
    async with running(_app(broker)) as srv:
        client, witness = await connect(transport, srv), await connect("ws", srv)
        try:
            await client.subscribe("board")
            await witness.subscribe("board")
            await client.unsubscribe("board")
            assert (await srv.hub.presence("board")).connections == 1
            await srv.hub.publish("board", "after", 1)
            assert await witness.next_event() == ("after", 1)
            assert srv.hub.delivered == 1  # the witness only
        finally:
            await client.close()
            await witness.close()


async def test_a_reconnect_with_a_position_recovers_exactly_what_was_missed(transport: str, broker: str) -> None:
    async with running(_app(broker)) as srv:
        first = await connect(transport, srv)
        synced = await first.subscribe("board")
        await srv.hub.publish("board", "n", 1)
        assert await first.next_event() == ("n", 1)
        await first.close()
        for n in (2, 3, 4):
            await srv.hub.publish("board", "n", n)
        second = await connect(transport, srv)
        try:
            back = await second.subscribe("board", at=StreamPosition(synced.epoch, 1))
            assert back.recovered is True and back.snapshot is None
            assert [await second.next_event() for _ in range(3)] == [("n", 2), ("n", 3), ("n", 4)]
            await srv.hub.publish("board", "n", 5)
            assert await second.next_event() == ("n", 5)  # nothing twice, then live
        finally:
            await second.close()


async def test_a_gap_history_no_longer_holds_gives_a_fresh_snapshot(transport: str, broker: str) -> None:
    async with running(_app(broker, history_size=2)) as srv:
        client = await connect(transport, srv)
        try:
            synced = await client.subscribe("board")
            await client.unsubscribe("board")
            for n in range(5):
                await srv.hub.publish("board", "n", n)
            back = await client.subscribe("board", at=StreamPosition(synced.epoch, synced.offset))
            assert (back.recovered, back.offset, back.snapshot) == (False, 5, {"cards": ["card-1"]})
            foreign = await client.subscribe("other", at=StreamPosition("another-epoch", 3))
            assert foreign.recovered is False and foreign.offset == 0
        finally:
            await client.close()


async def test_rooms_past_the_limit_are_refused_with_a_reason(transport: str, broker: str) -> None:
    app = _app(broker)
    app.hub.max_rooms_per_connection = 2
    async with running(app) as srv:
        client = await connect(transport, srv)
        try:
            assert await client.refusal(["r1", "r2", "r3"]) == "at most 2 rooms per connection"
        finally:
            await client.close()


async def test_subscribing_while_publications_pour_in_gives_each_one_exactly_once(transport: str, broker: str) -> None:
    """The hub's subscribe sync, end to end: clients subscribe at different moments of a
    stream of publications, and each gets its snapshot's position and then every later
    publication once, in order, whatever the broker's delivery timing."""
    total, clients = 60, 3
    async with running(_app(broker)) as srv:
        started = asyncio.Event()

        async def publish() -> None:
            for n in range(1, total + 1):
                await srv.hub.publish("board", "n", n)
                if n == 5:
                    started.set()
                await yield_to_loop()

        task = asyncio.create_task(publish())
        async with asyncio.timeout(10):
            await started.wait()
        joined = []
        try:
            for _ in range(clients):
                client = await connect(transport, srv)
                joined.append((client, await client.subscribe("board")))
            async with asyncio.timeout(10):
                await task
            for client, synced in joined:
                assert synced.offset < total
                got = [await client.next_event() for _ in range(total - synced.offset)]
                assert got == [("n", n) for n in range(synced.offset + 1, total + 1)]
        finally:
            task.cancel()
            for client, _ in joined:
                await client.close()
