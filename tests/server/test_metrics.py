"""``GET /metrics`` on real sockets: the exposition format, figures that move, who may scrape, and
the workers of one server adding up their figures through a real Redis.

Every scrape goes through ``parse``, a strict reader of the Prometheus text format (0.0.4):
each family's ``HELP`` and ``TYPE`` once and before its samples, its samples together, label
syntax and escapes, no duplicate series, histograms with increasing ``le``, cumulative
buckets and a ``+Inf`` bucket equal to ``_count``. Waits are on what the server answers or
sends, never on a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
import redis.asyncio as aioredis
from keyspace import key_events
from rawclient import call, open_websocket, socketio_connect
from redisserver import fresh_url
from servers import RunningServer, running, uvicorn_running
from sseclient import open_sse

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.asgi import RoomcastApp
from roomcast.server.config import Settings
from roomcast.server.metrics import FAMILIES

WS_HEADERS = {"Sec-WebSocket-Protocol": "roomcast.v1"}
SECRET = "metrics-test-secret-long-enough-for-hs256"

# -- a strict reader of the text exposition format ------------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_VALUE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|Inf)|NaN")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """A parsed scrape: ``types[family]`` and ``samples[(name, labels)] = value``."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """The one sample named ``name`` whose labels include ``labels``."""
        found = [v for (n, ls), v in self.samples.items() if n == name and labels.items() <= dict(ls).items()]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(v for (n, ls), v in self.samples.items() if n == name and labels.items() <= dict(ls).items())

    def labels(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self.samples if n == name}


def _labels(text: str, line: str) -> Labels:
    pairs, rest = [], text
    while rest:
        match = _LABEL.match(rest)
        assert match, f"bad label syntax in {line!r}"
        value = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], match.group(2))
        pairs.append((match.group(1), value))
        rest = rest[match.end() :]
        if rest:
            assert rest[0] == "," and rest[1:], f"bad label separator in {line!r}"
            rest = rest[1:]
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"a label twice in {line!r}"
    return tuple(pairs)


def _owner(name: str, family: str, kind: str) -> bool:
    if kind == "histogram":
        return name in (f"{family}_bucket", f"{family}_sum", f"{family}_count")
    return name == family


def parse(text: str) -> Scrape:
    """Read ``text`` as the exposition format, refusing anything the format does not allow."""
    assert text.endswith("\n") and "\n\n" not in text, "lines end with one newline, none is blank"
    scrape, helped, done = Scrape(), set(), set()
    current: str | None = None  # the family whose samples are being read
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[0] == "#" and len(parts) >= 3 and parts[1] in ("HELP", "TYPE"), line
            family = parts[2]
            assert _NAME.fullmatch(family), line
            assert family not in done and family != current, f"metadata after the samples of {family}"
            if parts[1] == "HELP":
                assert family not in helped, f"HELP twice for {family}"
                helped.add(family)
                assert "\n" not in parts[3] and not re.search(r"\\[^\\n]", parts[3]), line
            else:
                assert family not in scrape.types and len(parts) == 4 and parts[3] in _TYPES, line
                scrape.types[family] = parts[3]
            continue
        name_match = _NAME.match(line)
        assert name_match, line
        name, rest = name_match.group(0), line[name_match.end() :]
        labels: Labels = ()
        if rest.startswith("{"):
            close = rest.rfind("}")
            assert close > 0, line
            labels, rest = _labels(rest[1:close], line), rest[close + 1 :]
        assert rest.startswith(" ") and _VALUE.fullmatch(rest[1:]), f"bad value (or a timestamp) in {line!r}"
        family = next((f for f, kind in scrape.types.items() if _owner(name, f, kind)), None)
        assert family is not None, f"a sample of an undeclared family: {line!r}"
        if family != current:
            assert family not in done, f"the samples of {family} are not together"
            if current is not None:
                done.add(current)
            current = family
        key = (name, labels)
        assert key not in scrape.samples, f"a series twice: {line!r}"
        value = float(rest[1:])
        if scrape.types[family] == "counter":
            assert value >= 0, line
        scrape.samples[key] = value
    _check_histograms(scrape)
    return scrape


def _check_histograms(scrape: Scrape) -> None:
    for family, kind in scrape.types.items():
        if kind != "histogram":
            continue
        buckets: dict[Labels, list[tuple[float, float]]] = {}
        for (name, labels), value in scrape.samples.items():
            if name == f"{family}_bucket":
                rest = tuple(p for p in labels if p[0] != "le")
                [le] = [v for k, v in labels if k == "le"]
                buckets.setdefault(rest, []).append((float(le), value))
        assert buckets, f"histogram {family} has no buckets"
        for rest, found in buckets.items():
            bounds = [b for b, _ in found]
            assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), f"{family}: le not increasing"
            counts = [c for _, c in found]
            assert counts == sorted(counts), f"{family}: buckets are not cumulative"
            assert bounds[-1] == math.inf, f"{family}: no +Inf bucket"
            assert scrape.samples[(f"{family}_count", rest)] == counts[-1], f"{family}: +Inf bucket is not _count"
            assert (f"{family}_sum", rest) in scrape.samples, f"{family}: no _sum"


def test_the_parser_refuses_what_the_format_does_not_allow() -> None:
    good = '# HELP a_total A.\n# TYPE a_total counter\na_total{k="v \\"q\\""} 1\n'
    assert parse(good).value("a_total", k='v "q"') == 1
    for bad in (
        "a_total 1\n",  # no TYPE
        '# TYPE a counter\na{k="v"} 1\na{k="v"} 2\n',  # a series twice
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n",  # samples not together
        "# TYPE a gauge\na 1 1700000000\n",  # a timestamp
        "# TYPE a gauge\na 1_0\n",  # not a number of the format
        '# TYPE a gauge\na{k="v"\n',
        '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\nh_sum 0\n',  # not cumulative
        "# TYPE a gauge\na 1",  # no final newline
    ):
        with pytest.raises(AssertionError):
            parse(bad)


# -- helpers ----------------------------------------------------------------------------------


async def scrape(url: str, headers: dict[str, str] | None = None) -> Scrape:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", headers=headers or {}) as response:
        text = await response.text()
        assert response.status == 200, (response.status, text)
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        return parse(text)


async def request(
    url: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{url}{path}", json=body, headers=headers or {}) as response:
            text = await response.text()
            return response.status, json.loads(text) if text.startswith("{") else text


def app(**settings: Any) -> App:
    settings.setdefault("task_db", ":memory:")
    return App(Hub(), Settings(**settings))


def token(subscribe: list[str]) -> str:
    return jwt.encode({"sub": "u1", "rooms": {"subscribe": subscribe, "publish": []}}, SECRET, algorithm="HS256")


# -- figures that move --------------------------------------------------------------------------


async def test_a_scrape_is_valid_and_every_figure_moves_with_what_clients_do() -> None:
    async with running(app()) as srv:
        first = await scrape(srv.url)
        # every family is there from the start, but API requests, labelled by what was asked
        assert set(FAMILIES) - set(first.types) == {"roomcast_api_requests_total"}
        for transport in ("socketio-polling", "socketio-websocket", "sse", "ws"):
            assert first.value("roomcast_connections", transport=transport, door="native") == 0
        assert first.value("roomcast_nodes") == 1
        assert first.value("roomcast_broker_up", broker="memory") == 1
        assert first.value("roomcast_tasks", status="running") == 0

        async with aiohttp.ClientSession() as http, open_sse(srv.url, ["news"]) as sse:
            assert (await sse.next()).event == "snapshot"
            ws = await open_websocket(srv.host, srv.port, "/ws", headers=WS_HEADERS)
            sio = await socketio_connect(srv.host, srv.port)
            try:
                ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "news"}))
                assert json.loads(await ws.recv())["type"] == "snapshot"
                assert (await call(sio, 1, "subscribe", {"room": "news"}))[0]["room"] == "news"
                async with http.get(f"{srv.url}/socket.io/?EIO=4&transport=polling") as handshake:
                    assert handshake.status == 200 and (await handshake.text()).startswith("0{")

                now = await scrape(srv.url)
                for transport in ("socketio-polling", "socketio-websocket", "sse", "ws"):
                    assert now.value("roomcast_connections", transport=transport, door="native") == 1, transport
                assert now.value("roomcast_rooms") == 1
                assert now.value("roomcast_door_connections", door="native") >= 3  # sse, ws, sio held open
                accepted = now.value("roomcast_door_accepted_connections_total", door="native")
                assert accepted >= first.value("roomcast_door_accepted_connections_total", door="native") + 3

                # a publication reaches the three subscribers: one fan-out, three deliveries
                assert (await request(srv.url, "POST", "/api/publish", {"room": "news", "event": "e", "data": 1}))[
                    0
                ] == 200
                assert (await sse.next()).event == "e"
                assert json.loads(await ws.recv())["event"] == "e"
                assert await sio.recv() == '42["e",1]'
                now = await scrape(srv.url)
                assert now.value("roomcast_publications_total") == 1
                assert now.value("roomcast_fanouts_total") == 1
                assert now.value("roomcast_deliveries_total") == 3
                api_200 = {"method": "POST", "route": "/api/publish", "status": "200"}
                assert now.value("roomcast_api_requests_total", **api_200) == 1

                # bad requests, each where it is refused
                ws.send("not json")
                assert json.loads(await ws.recv())["type"] == "error"
                assert (await request(srv.url, "GET", "/sse"))[0] == 400  # no room
                assert (await request(srv.url, "GET", "/socket.io/?EIO=3&transport=polling"))[0] == 400
                assert (await request(srv.url, "POST", "/api/publish", {"room": ""}))[0] == 400
                reader, writer = await asyncio.open_connection(srv.host, srv.port)
                writer.write(b"NOT HTTP AT ALL\r\n\r\n")
                assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
                writer.close()
                # an API caller refused: the keyless API refuses a request that came through a proxy
                forwarded = {"X-Forwarded-For": "203.0.113.9"}
                status, _ = await request(srv.url, "POST", "/api/publish", {"room": "a", "event": "e"}, forwarded)
                assert status == 403

                now = await scrape(srv.url)
                for kind in ("ws", "sse", "engineio", "api", "http"):
                    assert now.value("roomcast_bad_requests_total", kind=kind) == 1, kind
                assert now.value("roomcast_auth_refusals_total", kind="api") == 1
                api_400 = {"method": "POST", "route": "/api/publish", "status": "400"}
                assert now.value("roomcast_api_requests_total", **api_400) == 1
                assert now.value("roomcast_api_requests_total", status="403") == 1

                # a connection ended by the server, counted under its reason
                [ws_conn] = srv.app.ws.connections
                status, body = await request(srv.url, "POST", "/api/disconnect", {"connection": ws_conn.id})
                assert (status, body) == (200, {"disconnected": 1})
                now = await scrape(srv.url)
                reason = {"reason": "server namespace disconnect", "code": "3012"}
                assert now.value("roomcast_disconnects_total", **reason) == 1
                assert now.value("roomcast_connections", transport="ws") == 0
                assert await asyncio.wait_for(ws.closed, 5) == 3012
            finally:
                ws.close()
                sio.close()


async def test_tasks_are_counted_by_status_as_they_go_and_end() -> None:
    async with running(app()) as srv:
        ids = []
        for _ in range(2):
            status, task = await request(srv.url, "POST", "/api/tasks", {"kind": "crawl"})
            assert status == 201
            ids.append(task["id"])
        assert (await request(srv.url, "POST", f"/api/tasks/{ids[0]}/progress", {"progress": 10}))[0] == 200
        now = await scrape(srv.url)
        assert now.value("roomcast_tasks", status="pending") == 1
        assert now.value("roomcast_tasks", status="running") == 1
        assert (await request(srv.url, "POST", f"/api/tasks/{ids[0]}/complete", {"result": 1}))[0] == 200
        assert (await request(srv.url, "POST", f"/api/tasks/{ids[1]}/fail", {"error": "no"}))[0] == 200
        now = await scrape(srv.url)
        assert now.total("roomcast_tasks") == 0
        assert now.value("roomcast_tasks_ended_total", status="completed") == 1
        assert now.value("roomcast_tasks_ended_total", status="failed") == 1
        route = {"method": "POST", "route": "/api/tasks/{id}/progress", "status": "200"}
        assert now.value("roomcast_api_requests_total", **route) == 1  # task ids are not labels


async def test_refused_tokens_and_grants_are_counted() -> None:
    async with running(app(jwt_secret=SECRET)) as srv:
        async with open_sse(srv.url, ["news"]) as refused:
            assert refused.status == 401  # no token
        async with open_sse(srv.url, ["news"], extra_query={"token": token(["other"])}) as denied:
            assert denied.status == 403  # a token without the grant
        bad = await open_websocket(srv.host, srv.port, "/ws", headers={**WS_HEADERS, "Authorization": "Bearer junk"})
        assert bad.status == 401
        bad.close()
        ws = await open_websocket(
            srv.host, srv.port, "/ws", headers={**WS_HEADERS, "Authorization": f"Bearer {token(['news'])}"}
        )
        try:
            ws.send(json.dumps({"type": "subscribe", "id": 1, "room": "admin"}))
            assert json.loads(await ws.recv())["code"] == "forbidden"
        finally:
            ws.close()
        now = await scrape(srv.url)
        assert now.value("roomcast_auth_refusals_total", kind="token") == 2
        assert now.value("roomcast_auth_refusals_total", kind="grant") == 2


async def test_a_slow_consumer_cut_is_counted_with_its_reason() -> None:
    served = app(max_buffer_bytes=256 * 1024)
    async with running(served) as srv:
        fast = await socketio_connect(srv.host, srv.port)
        slow = await socketio_connect(srv.host, srv.port, rcvbuf=4096)
        try:
            for client in (fast, slow):
                assert (await call(client, 1, "subscribe", {"room": "feed"}))[0]["room"] == "feed"
            assert slow.transport is not None
            slow.transport.pause_reading()  # it never reads again
            payload, sent = "x" * 32 * 1024, 0
            async with asyncio.timeout(30):
                while srv.hub.slow_disconnects == 0:
                    assert sent < 2000, "the slow consumer was never cut"
                    await srv.hub.publish("feed", "blob", payload)
                    sent += 1
                    await fast.recv(timeout=10)  # the fast one keeps up
            now = await scrape(srv.url)
            assert now.value("roomcast_slow_consumer_disconnects_total") == 1
            assert now.value("roomcast_disconnects_total", reason="slow consumer", code="3008") == 1
            assert now.value("roomcast_publications_total") == sent
            assert now.value("roomcast_deliveries_total") == 2 * sent  # the last one was written, then cut
        finally:
            fast.close()
            slow.close()


async def test_event_loop_lag_is_a_histogram_that_sees_a_blocked_loop() -> None:
    served = app()
    served.metrics.lag.interval = 0.05
    async with running(served) as srv:
        tick = served.metrics.lag.next_tick()
        time.sleep(0.3)  # blocks the loop: the lateness to measure, not a wait
        assert await asyncio.wait_for(tick, 5) >= 0.2
        now = await scrape(srv.url)
        node = served.hub.nodes.cluster.node_id
        count = now.value("roomcast_event_loop_lag_seconds_count", node=node)
        assert count >= 1
        assert now.value("roomcast_event_loop_lag_seconds_bucket", node=node, le="0.1") < count
        assert now.value("roomcast_event_loop_lag_seconds_sum", node=node) >= 0.2


async def test_behind_the_asgi_door_connections_are_labelled_with_it() -> None:
    async with uvicorn_running(RoomcastApp(app())) as url:
        async with open_sse(url, ["news"]) as sse:
            assert (await sse.next()).event == "snapshot"
            now = await scrape(url)
            assert now.value("roomcast_connections", transport="sse", door="asgi") == 1
            assert "roomcast_door_connections" not in now.types  # the host's connections, not ours
            assert "roomcast_door_accepted_connections_total" not in now.types


# -- who may scrape -----------------------------------------------------------------------------


async def status_of(srv: RunningServer, headers: dict[str, str] | None = None, method: str = "GET") -> int:
    async with aiohttp.ClientSession() as http, http.request(method, f"{srv.url}/metrics", headers=headers) as r:
        return r.status


async def test_without_a_key_only_loopback_clients_may_scrape_and_never_through_a_proxy() -> None:
    async with running(app()) as srv:
        assert await status_of(srv) == 200
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}) as r:
                assert r.status == 403
                assert "--api-key" in (await r.json())["error"]["message"]
        assert await status_of(srv, {"Forwarded": "for=203.0.113.9"}) == 403
        assert await status_of(srv, {"Host": "metrics.example.com"}) == 403  # DNS rebinding
        assert await status_of(srv, {"Origin": "https://evil.example"}) == 403  # a page elsewhere
        assert await status_of(srv, method="POST") == 405
        assert (await scrape(srv.url)).value("roomcast_auth_refusals_total", kind="metrics") == 4


async def test_with_a_key_a_scrape_needs_it() -> None:
    async with running(app(api_key="api-secret")) as srv:
        assert await status_of(srv) == 401  # loopback is not enough once a key is set
        assert await status_of(srv, {"Authorization": "Bearer wrong"}) == 401
        assert await status_of(srv, {"Authorization": "Bearer api-secret"}) == 200
        assert await status_of(srv, {"X-API-Key": "api-secret"}) == 200


async def test_a_metrics_key_lets_a_scraper_in_without_the_key_that_publishes() -> None:
    async with running(app(metrics_key="scrape-only")) as srv:
        assert await status_of(srv) == 401  # a key is set: loopback alone no longer scrapes
        assert await status_of(srv, {"Authorization": "Bearer scrape-only"}) == 200
        assert (await request(srv.url, "POST", "/api/publish", {"room": "a", "event": "e"}))[0] == 200  # API keyless
    bearer = {"Authorization": "Bearer scrape-only"}
    async with running(app(api_key="api-secret", metrics_key="scrape-only")) as srv:
        assert await status_of(srv, {"Authorization": "Bearer scrape-only"}) == 200
        assert await status_of(srv, {"Authorization": "Bearer api-secret"}) == 200
        refused = await request(srv.url, "POST", "/api/publish", {"room": "a", "event": "e"}, bearer)
        assert refused[0] == 401  # the metrics key does not publish


# -- the workers of one server, through Redis -----------------------------------------------------

PORT = 40_123  # what both workers are told they serve: their group (they listen on ports of their own)


async def subscribers(srv: RunningServer, room: str, n: int) -> list[Any]:
    clients = []
    for i in range(n):
        client = await open_websocket(srv.host, srv.port, "/ws", headers=WS_HEADERS)
        client.send(json.dumps({"type": "subscribe", "id": i, "room": room}))
        assert json.loads(await client.recv())["type"] == "snapshot"
        clients.append(client)
    return clients


async def test_the_workers_of_one_server_add_up_their_figures_through_redis(redis_url: str) -> None:
    url = fresh_url(redis_url)
    a, b = (App(settings=Settings(redis_url=url, port=PORT)) for _ in range(2))  # each a hub on Redis
    node_a, node_b = a.hub.nodes.cluster.node_id, b.hub.nodes.cluster.node_id
    async with running(a) as srv_a, running(b) as srv_b:
        assert a.metrics.shared is not None and b.metrics.shared is not None
        on_own = await subscribers(srv_a, "room", 2)
        on_b = await subscribers(srv_b, "room", 1)
        clients = on_own + on_b
        try:
            assert (await request(srv_a.url, "POST", "/api/publish", {"room": "room", "event": "e"}))[0] == 200
            for client in clients:
                assert json.loads(await client.recv())["event"] == "e"
            await b.metrics.shared.push()  # what each worker does every few seconds

            scraped = [await scrape(srv_a.url), await scrape(srv_b.url)]
            for each in scraped:  # either worker answers the server's totals
                assert each.value("roomcast_nodes") == 2
                assert each.value("roomcast_connections", transport="ws") == 3
                assert each.value("roomcast_deliveries_total") == 3
                assert each.value("roomcast_fanouts_total") == 2  # once per worker with members
                assert each.value("roomcast_publications_total") == 1
                assert each.labels("roomcast_event_loop_lag_seconds_count", "node") == {node_a, node_b}
                assert each.value("roomcast_rooms", node=node_a) == each.value("roomcast_rooms", node=node_b) == 1
                assert each.value("roomcast_broker_up", node=node_b, broker="redis") == 1

            # Redis does not answer a's scrape in time (a timeout of 0): a answers its own figures
            # of now with b's as last heard, so no total drops (a drop reads as a counter reset)
            a.metrics.shared.timeout = 0
            assert (await request(srv_a.url, "POST", "/api/publish", {"room": "room", "event": "f"}))[0] == 200
            for client in clients:
                assert json.loads(await client.recv())["event"] == "f"
            blind = await scrape(srv_a.url)
            assert blind.value("roomcast_deliveries_total") == 5  # a's 2 new ones; b's new one not heard yet
            assert blind.value("roomcast_connections", transport="ws") == 3
            assert blind.value("roomcast_nodes") == 2
            a.metrics.shared.timeout = 2.0
            await b.metrics.shared.push()
            assert (await scrape(srv_a.url)).value("roomcast_deliveries_total") == 6

            # b vanishes without a word (its liveness key is gone, its figures never folded by it):
            # its counters stay in the totals, its connections and per-process series leave them
            await b.hub.nodes.cluster.aclose()
            after = await scrape(srv_a.url)
            assert after.value("roomcast_nodes") == 1
            assert after.value("roomcast_deliveries_total") == 6
            assert after.value("roomcast_connections", transport="ws") == 2
            assert after.labels("roomcast_event_loop_lag_seconds_count", "node") == {node_a}

            # b was only stalled and writes again: what was folded for it is not counted twice
            await b.metrics.shared.push()
            assert (await scrape(srv_a.url)).value("roomcast_deliveries_total") == 6

            await b.shutdown()  # a graceful stop: its final figures (its client's goodbye) join the totals
            last = await scrape(srv_a.url)
            assert last.value("roomcast_nodes") == 1
            assert last.value("roomcast_deliveries_total") == 6
            assert last.value("roomcast_disconnects_total", reason="server shutting down") == 1
        finally:
            for client in clients:
                client.close()


def test_one_process_alone_or_on_port_0_shares_nothing(redis_url: str) -> None:
    # port 0: every process has a port of its own, so there is no server to add up
    assert App(settings=Settings(redis_url=redis_url, port=0)).metrics.shared is None
    assert App(settings=Settings(redis_url=redis_url, port=PORT)).metrics.shared is not None
    assert app(port=8000).metrics.shared is None  # no Redis: this process alone


# -- roomcast serve --workers 2: the real processes, one killed -----------------------------------


async def group_figures(client: Any, key: str) -> dict[str, dict[str, Any]]:
    """The figures each live worker last wrote into its server's hash, by node id."""
    fields = await client.hgetall(key)
    return {f.decode()[2:]: json.loads(v) for f, v in fields.items() if f.startswith(b"n:")}


async def test_under_workers_every_scrape_shows_the_servers_totals_even_past_a_killed_worker(
    redis_url: str,
) -> None:
    from test_workers import WAIT, everyone_gets, serving, subscribe_on_every_worker

    url = fresh_url(redis_url)
    client = aioredis.from_url(url)
    async with serving("--workers", "2", "--redis", url, "--port", "0") as serve:
        base, pids = await serve.listening()
        key = f"rc:metrics:{socket.gethostname()}:{base.rsplit(':', 1)[1]}"
        async with contextlib.AsyncExitStack() as stack, key_events(url, key) as writes:
            held = await subscribe_on_every_worker(stack, base, pids, "feed")
            subscribers = sum(len(streams) for streams in held.values())
            await everyone_gets(held, base, "feed", {"n": 1})
            async with asyncio.timeout(WAIT):  # each worker writes its figures every 5 s: wait for both
                while True:
                    figures = await group_figures(client, key)
                    delivered = sum(f["c"]["roomcast_deliveries_total"] for f in figures.values())
                    if len(figures) == 2 and delivered == subscribers:
                        break
                    await writes.next()
            for _ in range(4):  # whichever worker the kernel hands a scrape to, the same totals
                now = await scrape(base)
                assert now.value("roomcast_nodes") == 2
                assert now.value("roomcast_deliveries_total") == subscribers
                assert now.value("roomcast_connections", transport="sse") == subscribers
                assert len(now.labels("roomcast_event_loop_lag_seconds_count", "node")) == 2

            victim, survivor = pids
            async with key_events(url, "rc:alive:*") as liveness:
                serve.watched[victim].kill()  # no goodbye: its figures stay as it last wrote them
                await serve.watched[victim].gone(WAIT)
                async with asyncio.timeout(WAIT):  # Redis says when its liveness key lapses
                    while (await liveness.next())[1] != "expired":
                        pass
            after = await scrape(base)  # the survivor, or the worker started in the victim's place
            assert after.value("roomcast_deliveries_total") == subscribers  # the victim's stay counted
            assert after.value("roomcast_connections", transport="sse") == len(held[survivor])
            assert after.value("roomcast_nodes") in (1, 2)  # its replacement may be there already
    await client.aclose()
