"""The backend HTTP API under ``/api/``: what a backend does with it, and every refusal.

A real server on the native door, real HTTP with aiohttp; subscribers on the plain
WebSocket and SSE see what the API publishes.

What the API does to rooms (publish, broadcast, rooms, history, presence, disconnect) runs
once per broker (``broker_kind``: memory, async, redis; ``brokers.make_app``); over redis the
server is built from ``Settings(redis_url=...)``, so its rooms listing and disconnects go
through the Redis node bus as in a deployment. Refusals, the loopback rule and the OpenAPI
document are decided before anything reaches the hub: they run once.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from brokers import make_app
from rawclient import open_websocket
from servers import RunningServer, running
from sseclient import open_sse

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.transports.base import HttpRequest

KEY = "k-0123456789abcdef"


async def _call(srv: RunningServer, method: str, path: str, *, key: str | None = KEY, **kwargs: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    headers.update(kwargs.pop("headers", {}))
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{srv.url}{path}", headers=headers, **kwargs) as response:
            return response.status, await response.json(content_type=None)


async def test_publish_and_broadcast_reach_subscribers_on_every_transport(broker_kind: str) -> None:
    async with running(make_app(broker_kind, api_key=KEY)) as srv, open_sse(srv.url, ["news"]) as stream:
        await stream.next()
        ws = await open_websocket(srv.host, srv.port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
        ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "sports"}))
        await ws.recv()
        try:
            status, body = await _call(
                srv, "POST", "/api/publish", json={"room": "news", "event": "flash", "data": {"t": "hi"}}
            )
            assert status == 200 and body == {"room": "news", "epoch": body["epoch"], "offset": 1}
            assert (await stream.next()).json() == {"t": "hi"}
            status, body = await _call(
                srv, "POST", "/api/broadcast", json={"rooms": ["news", "sports"], "event": "all", "data": 7}
            )
            assert status == 200 and [r["room"] for r in body["results"]] == ["news", "sports"]
            assert (await stream.next()).json() == 7
            assert json.loads(await ws.recv())["data"] == 7
        finally:
            ws.close()


async def test_rooms_history_presence_and_disconnect(broker_kind: str) -> None:
    app = make_app(broker_kind, api_key=KEY)
    async with running(app) as srv, open_sse(srv.url, ["lobby"]) as stream:
        await stream.next()
        for n in range(3):
            await app.hub.publish("lobby", "n", n)
        status, body = await _call(srv, "GET", "/api/rooms")
        assert status == 200 and body == {"rooms": [{"room": "lobby", "connections": 1, "users": 0}]}
        status, body = await _call(srv, "GET", "/api/history?room=lobby&since=1")
        assert status == 200 and body["complete"] is True and body["offset"] == 3
        assert [(p["offset"], p["data"]) for p in body["publications"]] == [(2, [1]), (3, [2])]
        status, body = await _call(srv, "GET", "/api/history?room=lobby&since=0&epoch=gone")
        assert status == 200 and body["complete"] is False and body["publications"] == []
        status, body = await _call(srv, "GET", "/api/presence?room=lobby")
        assert body == {"room": "lobby", "connections": 1, "users": []}
        conn_id = next(iter(app.sse.streams)).id
        status, body = await _call(srv, "POST", "/api/disconnect", json={"connection": conn_id})
        assert status == 200 and body == {"disconnected": 1}
        events = [e for e in await stream.until_end() if e.event == "error"]
        assert events and events[0].json()["reconnect"] is False


# Once, over memory: every refusal is decided before the hub is called, whatever its broker.
async def test_refusals_are_json_errors_with_the_right_status() -> None:
    async with running(App(Hub(), Settings(api_key=KEY))) as srv:
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", "/api/publish", {"key": None, "json": {"room": "a", "event": "e"}}, 401, "API key required"),
            ("POST", "/api/publish", {"key": "wrong", "json": {"room": "a", "event": "e"}}, 401, "invalid API key"),
            (
                "POST",
                "/api/publish",
                {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
                400,
                "not valid JSON",
            ),
            ("POST", "/api/publish", {"data": b'{"room":"a","event":"e"}'}, 415, "Content-Type: application/json"),
            ("POST", "/api/publish", {"json": [1]}, 400, "JSON object"),
            ("POST", "/api/publish", {"json": {"event": "e"}}, 400, "'room'"),
            ("POST", "/api/publish", {"json": {"room": "a", "event": ""}}, 400, "'event'"),
            ("POST", "/api/broadcast", {"json": {"rooms": [], "event": "e"}}, 400, "'rooms'"),
            ("GET", "/api/history?room=a&since=-1", {}, 400, "'since'"),
            ("POST", "/api/disconnect", {"json": {}}, 400, "exactly one"),
            ("GET", "/api/publish", {}, 405, "POST"),
            ("GET", "/api/nothing", {}, 404, "no API route"),
            ("POST", "/api/publish", {"data": b"x" * 2_000_000}, 413, "size limit"),
        ]
        for method, path, kwargs, status, message in cases:
            key = kwargs.pop("key", KEY)
            got, body = await _call(srv, method, path, key=key, **kwargs)
            assert got == status, (path, body)
            assert message in body["error"]["message"], (path, body)
        status, body = await _call(
            srv, "POST", "/api/publish", json={"room": "a", "event": "e"}, key=None, headers={"X-API-Key": KEY}
        )
        assert status == 200 and body["offset"] == 1  # the other header works, and nothing above published


# Once: who may call a keyless API is the door's rule, not the broker's.
async def test_without_a_key_only_loopback_clients_are_answered() -> None:
    app = App(Hub(), Settings())
    async with running(app) as srv:
        status, body = await _call(srv, "POST", "/api/publish", key=None, json={"room": "a", "event": "e"})
        assert status == 200
        remote = HttpRequest(
            "POST", "/api/publish", {}, {}, body=b'{"room":"a","event":"e"}', client=("203.0.113.9", 5000)
        )
        refused = await app.api.handle(remote)
        assert refused.status == 403 and b"loopback clients only" in refused.body


# Once: a static document.
async def test_the_openapi_document_describes_every_route() -> None:
    async with running(App(Hub(), Settings(api_key=KEY))) as srv:
        status, doc = await _call(srv, "GET", "/api/openapi.json", key=None)
        assert status == 200 and doc["openapi"].startswith("3.1")
        assert set(doc["paths"]) == {
            "/api/publish",
            "/api/broadcast",
            "/api/rooms",
            "/api/history",
            "/api/presence",
            "/api/disconnect",
            "/api/tasks",
            "/api/tasks/{id}",
            "/api/tasks/{id}/progress",
            "/api/tasks/{id}/complete",
            "/api/tasks/{id}/fail",
            "/api/tasks/{id}/stop",
            "/api/tasks/{id}/cancel",
        }
