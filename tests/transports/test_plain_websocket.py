"""The plain WebSocket at ``/ws`` (``roomcast.v1``): subscribe, recover, emit, publish, errors.

Real sockets on the native door with the raw test client; docs/protocol.md is the spec.
"""

from __future__ import annotations

import json
from typing import Any

from rawclient import RawWebSocket, open_websocket
from servers import RunningServer, running

from roomcast.broker.memory import MemoryBroker
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

PROTOCOL = {"Sec-WebSocket-Protocol": "roomcast.v1"}


def _app(*, history_size: int = 100, **settings: Any) -> App:
    hub = Hub(broker=MemoryBroker(history_size=history_size))

    @hub.snapshot("*")
    def snapshot(room: str) -> dict[str, str]:
        return {"room": room}

    @hub.on("shout")
    def shout(conn: Connection, data: Any = None) -> Any:
        return {"heard": data}

    @hub.on("boom")
    def boom(conn: Connection, data: Any = None) -> Any:
        raise RuntimeError("handler bug")

    return App(hub, Settings(**settings))


async def _connect(srv: RunningServer) -> RawWebSocket:
    client = await open_websocket(srv.host, srv.port, "/ws", headers=PROTOCOL)
    assert client.status == 101
    assert "Sec-WebSocket-Protocol: roomcast.v1" in client.response_head
    return client


async def _request(client: RawWebSocket, message: dict[str, Any]) -> dict[str, Any]:
    client.send(json.dumps(message))
    return await _next(client)


async def _next(client: RawWebSocket) -> dict[str, Any]:
    raw = await client.recv()
    assert isinstance(raw, str)
    reply: dict[str, Any] = json.loads(raw)
    return reply


async def test_subscribe_gets_a_snapshot_then_live_events_with_offsets() -> None:
    async with running(_app()) as srv:
        client = await _connect(srv)
        try:
            reply = await _request(client, {"type": "subscribe", "id": 1, "room": "news"})
            assert reply == {
                "type": "snapshot",
                "id": 1,
                "room": "news",
                "epoch": reply["epoch"],
                "offset": 0,
                "recovered": False,
                "snapshot": {"room": "news"},
            }
            await srv.hub.publish("news", "headline", {"t": "hi"})
            await srv.hub.publish("news", "pair", 1, 2)
            assert await _next(client) == {
                "type": "event",
                "room": "news",
                "event": "headline",
                "data": {"t": "hi"},
                "offset": 1,
            }
            assert (await _next(client))["data"] == [1, 2]
            assert await _request(client, {"type": "ping", "id": "p"}) == {"type": "ack", "id": "p", "data": None}
            assert await _request(client, {"type": "unsubscribe", "id": 2, "room": "news"}) == {
                "type": "ack",
                "id": 2,
                "data": None,
            }
            await srv.hub.publish("news", "gone", 1)
            assert (await _request(client, {"type": "ping", "id": 3}))["id"] == 3  # nothing came before it
        finally:
            client.close()


async def test_resubscribe_with_epoch_and_offset_recovers_exactly_what_was_missed() -> None:
    async with running(_app()) as srv:
        first = await _connect(srv)
        snap = await _request(first, {"type": "subscribe", "id": 1, "room": "r"})
        await srv.hub.publish("r", "e", 1)
        seen = await _next(first)
        first.close()
        await first.closed
        for n in (2, 3):
            await srv.hub.publish("r", "e", n)
        second = await _connect(srv)
        try:
            reply = await _request(
                second, {"type": "subscribe", "id": 1, "room": "r", "epoch": snap["epoch"], "offset": seen["offset"]}
            )
            assert reply["recovered"] is True and "snapshot" not in reply and reply["offset"] == 3
            assert [(await _next(second))["data"] for _ in range(2)] == [2, 3]
            await srv.hub.publish("r", "e", 4)
            assert (await _next(second))["data"] == 4
        finally:
            second.close()


async def test_a_gap_history_no_longer_holds_gives_a_fresh_snapshot_not_a_silent_gap() -> None:
    async with running(_app(history_size=1)) as srv:
        client = await _connect(srv)
        try:
            snap = await _request(client, {"type": "subscribe", "id": 1, "room": "r"})
            await srv.hub.publish("r", "e", 1)
            await _next(client)
            await _request(client, {"type": "unsubscribe", "id": 2, "room": "r"})
            for n in (2, 3, 4):
                await srv.hub.publish("r", "e", n)
            reply = await _request(
                client, {"type": "subscribe", "id": 3, "room": "r", "epoch": snap["epoch"], "offset": 1}
            )
            assert reply["recovered"] is False and reply["offset"] == 4 and reply["snapshot"] == {"room": "r"}
            reply = await _request(
                client, {"type": "subscribe", "id": 4, "room": "other", "epoch": "not-this-server", "offset": 9}
            )
            assert reply["recovered"] is False and reply["offset"] == 0
        finally:
            client.close()


async def test_emit_reaches_the_handlers_and_publish_reaches_every_member() -> None:
    async with running(_app()) as srv:
        a, b = await _connect(srv), await _connect(srv)
        try:
            await _request(b, {"type": "subscribe", "id": 1, "room": "chat"})
            assert await _request(a, {"type": "emit", "id": 7, "event": "shout", "data": "hey"}) == {
                "type": "ack",
                "id": 7,
                "data": {"heard": "hey"},
            }
            ack = await _request(a, {"type": "publish", "id": 8, "room": "chat", "event": "msg", "data": "yo"})
            assert ack["type"] == "ack" and ack["data"]["offset"] == 1 and ack["data"]["room"] == "chat"
            assert (await _next(b))["data"] == "yo"
        finally:
            a.close()
            b.close()


async def test_bad_messages_get_an_error_with_their_id_and_the_connection_carries_on() -> None:
    async with running(_app()) as srv:
        client = await _connect(srv)
        try:
            cases: list[tuple[str | bytes, str, Any]] = [
                ("not json", "bad_request", None),
                ("[1, 2]", "bad_request", None),
                (json.dumps({"type": "dance", "id": 4}), "unknown_type", 4),
                (json.dumps({"type": "subscribe", "id": 5}), "bad_request", 5),
                (json.dumps({"type": "subscribe", "id": 6, "room": "r", "epoch": "x"}), "bad_request", 6),
                (json.dumps({"type": "emit", "id": 7, "event": "nobody-listens"}), "not_found", 7),
                (json.dumps({"type": "emit", "id": 8, "event": "boom"}), "internal", 8),
                (b"\xff\xfe", "bad_request", None),
            ]
            for message, code, request_id in cases:
                client.send(message)
                reply = await _next(client)
                assert reply["type"] == "error" and reply["code"] == code, (message, reply)
                assert reply.get("id") == request_id
            assert srv.app.ws.bad_messages == 6
            assert (await _request(client, {"type": "ping", "id": 9}))["type"] == "ack"
        finally:
            client.close()


async def test_an_oversize_message_closes_1009_and_a_wrong_subprotocol_is_refused() -> None:
    async with running(_app(max_payload=1000)) as srv:
        healthy = await _connect(srv)
        big = await _connect(srv)
        try:
            big.send(json.dumps({"type": "emit", "event": "shout", "data": "x" * 2000}))
            assert await big.closed == 1009
            wrong = await open_websocket(srv.host, srv.port, "/ws", headers={"Sec-WebSocket-Protocol": "mqtt"})
            assert wrong.status == 400
            wrong.close()
            assert (await _request(healthy, {"type": "ping", "id": 1}))["type"] == "ack"
        finally:
            healthy.close()
            big.close()


async def test_too_many_rooms_is_refused_with_a_limit_error() -> None:
    app = _app()
    app.hub.max_rooms_per_connection = 2
    async with running(app) as srv:
        client = await _connect(srv)
        try:
            for i in (1, 2):
                assert (await _request(client, {"type": "subscribe", "id": i, "room": f"r{i}"}))["type"] == "snapshot"
            reply = await _request(client, {"type": "subscribe", "id": 3, "room": "r3"})
            assert reply["type"] == "error" and reply["code"] == "limit" and reply["id"] == 3
            assert (await _request(client, {"type": "subscribe", "id": 4, "room": "r1"}))["type"] == "snapshot"
        finally:
            client.close()


async def test_server_shutdown_closes_with_1001() -> None:
    app = _app()
    async with running(app) as srv:
        client = await _connect(srv)
        await _request(client, {"type": "ping", "id": 1})
        await app.shutdown()
        assert await client.closed == 1001
