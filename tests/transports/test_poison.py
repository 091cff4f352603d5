"""A poison publication is refused before it is acknowledged, on every path into the hub.

The attack: data nested deeper than the encoders go (or a reserved event name) was accepted,
stored and acknowledged with an offset; then every encoder failed on it, so ``/ws`` stopped
receiving, SSE resumes ended in an error on every reconnect and a Socket.IO ``subscribe``
never got its ack. Now the one depth limit (``_json.MAX_DEPTH``) holds for decoders and for
publish, reserved names are refused, and a healthy subscriber on every transport, and its
recovery across the attempt, carry on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from rawclient import call, open_websocket, socketio_connect
from servers import running
from sseclient import open_sse

from roomcast import _json
from roomcast.errors import InvalidPublication
from roomcast.hub.hub import Hub
from roomcast.hub.publication import RESERVED_EVENTS
from roomcast.server.app import App
from roomcast.server.config import Settings


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


async def test_deep_data_and_reserved_names_are_refused_and_every_transport_carries_on() -> None:
    app = App(Hub(), Settings())
    async with running(app) as srv:
        async with open_sse(srv.url, ["feed"]) as stream:
            assert (await stream.next()).event == "snapshot"
            ws = await open_websocket(srv.host, srv.port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
            sio = await socketio_connect(srv.host, srv.port)
            try:
                # /ws: 300 levels do not even decode; 200 levels past the limit neither
                for depth in (300, _json.MAX_DEPTH + 10):
                    ws.send(
                        json.dumps({"type": "publish", "id": 1, "room": "feed", "event": "x", "data": nested(depth)})
                    )
                    reply = json.loads(await ws.recv())
                    assert (reply["type"], reply["code"]) == ("error", "bad_request"), reply
                # reserved names, through the built-in publish of both socket transports
                for name in ("connect", "disconnect", "snapshot", "reset", "error", "newListener"):
                    ws.send(json.dumps({"type": "publish", "id": 2, "room": "feed", "event": name, "data": 1}))
                    reply = json.loads(await ws.recv())
                    assert reply["type"] == "error" and "reserved" in reply["message"], reply
                    [answer] = await call(sio, 7, "publish", {"room": "feed", "event": name, "data": 1})
                    assert "reserved" in answer["error"]
                # from the application itself, past the limit but within what orjson can encode
                with pytest.raises(InvalidPublication):
                    await srv.hub.publish("feed", "x", nested(_json.MAX_DEPTH + 50))
                with pytest.raises(InvalidPublication):
                    await srv.hub.publish("feed", "line\nbreak", 1)
                with pytest.raises(InvalidPublication):
                    await srv.hub.publish("feed", "x", object())
                assert (await srv.hub.broker.position("feed")).offset == 0  # nothing was stored

                # everyone carries on: the deepest data allowed reaches every transport
                ws.send(json.dumps({"type": "subscribe", "id": 3, "room": "feed"}))
                assert json.loads(await ws.recv())["type"] == "snapshot"
                [ok] = await call(sio, 8, "subscribe", {"room": "feed"})
                assert ok["offset"] == 0
                deepest = nested(_json.MAX_DEPTH - 2)  # each envelope may add a level
                [published] = await call(sio, 9, "publish", {"room": "feed", "event": "deep", "data": deepest})
                assert published["offset"] == 1
                assert json.loads(await ws.recv())["data"] == deepest
                assert (await stream.next()).json() == deepest
                cursor = stream.last_id
            finally:
                ws.close()
                sio.close()
        await srv.hub.publish("feed", "after", 2)
        async with open_sse(srv.url, ["feed"], last_event_id=cursor) as back:  # a resume across it all
            event = await back.next()
            assert (event.event, event.json()) == ("after", 2)


def test_every_reserved_name_is_listed() -> None:
    assert RESERVED_EVENTS == {
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
        "snapshot",
        "reset",
        "error",
    }


async def test_binary_and_lone_surrogates_are_still_published() -> None:
    app = App(Hub(), Settings())
    async with running(app) as srv:
        async with open_sse(srv.url, ["feed"]) as stream:
            await stream.next()
            await srv.hub.publish("feed", "blob", b"\x01\x02")
            assert (await stream.next()).json() == {"$binary": "AQI="}
            await srv.hub.publish("feed", "text", "a\ud800b")
            assert (await stream.next()).json() == "a?b"  # replaced, on every transport alike


async def test_the_api_refuses_a_poison_publication_with_400() -> None:
    import aiohttp

    app = App(Hub(), Settings())
    async with running(app) as srv, aiohttp.ClientSession() as http:
        for body in (
            {"room": "feed", "event": "x", "data": nested(300)},
            {"room": "feed", "event": "x", "data": nested(_json.MAX_DEPTH + 5)},
            {"room": "feed", "event": "disconnect", "data": 1},
            {"rooms": ["feed", "other"], "event": "connect"},
        ):
            path = "/api/broadcast" if "rooms" in body else "/api/publish"
            async with http.post(
                srv.url + path, data=json.dumps(body), headers={"Content-Type": "application/json"}
            ) as response:
                assert response.status == 400, body
                assert (await response.json())["error"]["code"] == "bad_request"
        assert (await srv.hub.broker.position("feed")).offset == 0


async def test_a_failing_request_is_answered_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A broker that fails under a /ws publish: the client gets an error, the log one line with
    the connection, and asyncio never reports an unretrieved task exception."""
    from tapbroker import TapBroker

    from roomcast.errors import BrokerUnavailable

    broker = TapBroker()

    def down(_: Any) -> None:
        raise BrokerUnavailable("the broker is down")

    broker.taps.append(down)
    async with running(App(Hub(broker=broker), Settings())) as srv:
        ws = await open_websocket(srv.host, srv.port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
        try:
            ws.send(json.dumps({"type": "publish", "id": 1, "room": "feed", "event": "x", "data": 1}))
            reply = json.loads(await ws.recv())
            assert (reply["type"], reply["code"]) == ("error", "internal")
        finally:
            ws.close()
    failures = [r for r in caplog.records if "a request failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
