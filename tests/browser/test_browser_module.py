"""roomcast's browser module (``/roomcast.js``, DESIGN §7) in a real Chromium, over ``/ws`` and SSE.

The page comes from another port (``module_page.page_server``) and imports the module from
the roomcast server under test, so every request is cross-origin. What is checked is what
docs/client.md promises of it: states, reconnect and recovery (each missed event once, in
order), resets, token callables and refusals, the change batcher, emit with ack, pause and
close. Every wait is bounded; none is a sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pytest
from eventsource_page import SseSpy
from module_page import ModulePage, page_server
from servers import RunningServer, running

from roomcast import disconnect
from roomcast.broker.memory import MemoryBroker
from roomcast.hub.connection import Connection
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.asgi import RoomcastApp
from roomcast.server.config import Settings
from roomcast.transports.base import HttpRequest, HttpResponse, WebSocketAccept

SECRET = "test-secret-that-is-long-enough-for-hs256"
TEST_S = 45  # the bound on a whole test
BOTH = pytest.mark.parametrize("transport", ["websocket", "sse"])


def token(*, exp_in: float = 60.0, subscribe: list[str] | None = None, publish: list[str] | None = None) -> str:
    claims = {
        "sub": "u1",
        "exp": time.time() + exp_in,
        "rooms": {"subscribe": subscribe or ["*"], "publish": publish or []},
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Door:
    """Counts the handshakes and streams the server accepted, per transport."""

    def __init__(self, app: App) -> None:
        self.ws_handshakes = 0
        self.sse = SseSpy(app)
        handle = app.ws.handle_websocket

        def counted(request: HttpRequest) -> WebSocketAccept | HttpResponse:
            self.ws_handshakes += 1
            return handle(request)

        app.ws.handle_websocket = counted  # type: ignore[method-assign]

    def attempts(self, transport: str) -> int:
        return self.ws_handshakes if transport == "websocket" else len(self.sse.requests)


@asynccontextmanager
async def serving(
    browser: Any,
    *,
    history: int = 100,
    secret: str | None = None,
    setup: Callable[[Hub], None] | None = None,
    sse_format: str = "events",
) -> AsyncIterator[tuple[RunningServer, ModulePage, Door]]:
    """A roomcast server with a snapshot for every room, and a page that imported the module."""
    hub = Hub(broker=MemoryBroker(history_size=history))

    @hub.snapshot("*")
    def snapshot(room: str) -> dict[str, Any]:
        return {"room": room, "items": []}

    if setup is not None:
        setup(hub)
    async with asyncio.timeout(TEST_S), page_server() as origin:
        app = App(hub, Settings(cors_origins=(origin,), sse_retry_ms=200, jwt_secret=secret, sse_format=sse_format))
        door = Door(app)
        async with running(app) as srv:
            context = await browser.new_context()
            try:
                page = await ModulePage.open(context, origin, srv.url)
                yield srv, page, door
                await page.run("() => Object.values(clients).forEach((c) => c.close())")
            finally:
                if door.sse.gate is not None:
                    door.sse.release()
                await context.close()


async def drop_everyone(srv: RunningServer) -> None:
    """The server drops every /ws and /sse connection with a transient reason."""
    srv.app.ws.close_all(disconnect.TRANSPORT_CLOSE)
    srv.app.sse.close_all(disconnect.TRANSPORT_CLOSE)


def events_of(log: dict[str, Any]) -> list[tuple[str | None, Any]]:
    return [(e["meta"].get("room"), e["data"]) for e in log["events"]]


# -- the served file ----------------------------------------------------------------------


async def test_the_module_is_served_with_an_etag_and_revalidated() -> None:
    async with asyncio.timeout(TEST_S), running(App(Hub())) as srv, aiohttp.ClientSession() as http:
        async with http.get(f"{srv.url}/roomcast.js") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
            assert response.headers["Cache-Control"] == "no-cache"
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            etag = response.headers["ETag"]
            body = await response.read()
        assert b"export class RoomcastClient" in body and etag.startswith('"')
        async with http.get(f"{srv.url}/roomcast.js", headers={"If-None-Match": etag}) as response:
            assert response.status == 304 and response.headers["ETag"] == etag
            assert await response.read() == b""
        async with http.get(f"{srv.url}/roomcast.js", headers={"If-None-Match": '"stale"'}) as response:
            assert response.status == 200 and await response.read() == body
        async with http.post(f"{srv.url}/roomcast.js") as response:
            assert response.status == 405

    # The ASGI door routes through the same App.
    asgi = RoomcastApp(App(Hub()))
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    for headers in ([], [(b"if-none-match", etag.encode())]):
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": "/roomcast.js", "query_string": b"", "headers": headers}
        async with asyncio.timeout(TEST_S):
            await asgi(scope, receive, send)
        start, body_message = sent
        assert start["status"] == (200 if not headers else 304)
        assert (b"etag", etag.encode()) in start["headers"]
        assert body_message["body"] == (body if not headers else b"")
    await asgi.shutdown()


# -- connecting, subscribing, receiving ----------------------------------------------------


@BOTH
async def test_connects_subscribes_with_a_snapshot_first_then_receives_events(browser: Any, transport: str) -> None:
    async with serving(browser) as (srv, page, door):
        await page.make("c", transport=transport)
        await page.run("""() => {
            record("c", ["chat", "score"]);
            record("c", ["chat"], "muted");
            clients.c.on("chat", () => { throw new Error("a broken handler"); });
        }""")
        result = await page.run("() => start('c', ['a', 'b'])")
        assert [(r["room"], r["offset"], r["recovered"]) for r in result] == [("a", 0, False), ("b", 0, False)]
        assert await page.states("c") == [
            ("disconnected", "connecting", "connect"),
            ("connecting", "connected", f"connected over {transport}"),
        ]
        snapshots = (await page.log("c"))["snapshots"]
        assert [(s["state"]["room"], s["snapshot"]) for s in snapshots] == [
            ("a", {"room": "a", "items": []}),
            ("b", {"room": "b", "items": []}),
        ]

        await srv.hub.publish("a", "chat", {"text": "héllo ✓"})
        await srv.hub.publish("b", "score", 1, 2)
        await srv.hub.publish("a", "unheard", "no handler")
        events = await page.wait_count("c", "events", 2)
        assert [(e["event"], e["meta"], e["data"]) for e in events] == [
            ("chat", {"event": "chat", "room": "a", "offset": 1}, {"text": "héllo ✓"}),
            ("score", {"event": "score", "room": "b", "offset": 1}, [1, 2]),
        ]
        # The throwing handler was logged with its event's name; the others carried on.
        assert any('"chat" failed' in line and "a broken handler" in line for line in await page.console_errors())

        # Switching sets: the next event goes to the "muted" set only.
        await page.run("() => clients.c.use('muted')")
        await srv.hub.publish("a", "chat", "to the muted set")
        await srv.hub.publish("b", "score", "no handler in muted")
        await srv.hub.publish("a", "chat", "again")
        events = (await page.wait_count("c", "events", 4))[2:]
        assert [(e["set"], e["data"]) for e in events] == [("muted", "to the muted set"), ("muted", "again")]
        assert await page.run("() => clients.c.room('b')") == {
            "room": "b",
            "epoch": (await srv.hub.broker.position("b")).epoch,
            "offset": 2,
            "recovered": False,
        }
        assert door.attempts(transport) == 1


async def test_over_sse_the_module_reads_named_events_whatever_the_servers_default_format(browser: Any) -> None:
    async with serving(browser, sse_format="message") as (srv, page, door):
        await page.make("c", transport="sse")
        await page.run("() => record('c', ['chat'])")
        await page.run("() => start('c', ['a'])")
        snapshots = (await page.log("c"))["snapshots"]
        assert [s["snapshot"] for s in snapshots] == [{"room": "a", "items": []}]
        await srv.hub.publish("a", "chat", {"text": "hi"})
        (event,) = await page.wait_count("c", "events", 1)
        assert (event["event"], event["meta"]["offset"], event["data"]) == ("chat", 1, {"text": "hi"})
        assert door.attempts("sse") == 1  # one stream: nothing was refused or misread


@BOTH
async def test_a_dropped_connection_comes_back_by_itself_with_each_missed_event_once_in_order(
    browser: Any, transport: str
) -> None:
    async with serving(browser) as (srv, page, door):
        await page.make("c", transport=transport, backoffInitial=1000)
        await page.run("() => record('c', ['e'])")
        await page.run("() => start('c', ['a', 'b'])")
        await srv.hub.publish("a", "e", "a1")
        await srv.hub.publish("b", "e", "b1")
        await page.wait_count("c", "events", 2)

        door.sse.hold()  # SSE: reconnects wait at the door until released
        await drop_everyone(srv)
        for room, value in [("a", "a2"), ("b", "b2"), ("a", "a3"), ("b", "b3")]:
            await srv.hub.publish(room, "e", value)
        # /ws: published before the browser could come back (its first delay is >= 250 ms).
        assert door.attempts(transport) == 1
        if transport == "sse":
            await door.sse.until(lambda: len(door.sse.requests) == 2, "the module to reconnect by itself")
            door.sse.release()

        await page.wait_count("c", "events", 6)
        await srv.hub.publish("b", "e", "b4")
        await srv.hub.publish("a", "e", "a4")
        log = await page.log("c")
        log = {**log, "events": await page.wait_count("c", "events", 8)}
        assert events_of(log) == [
            ("a", "a1"),
            ("b", "b1"),
            ("a", "a2"),
            ("a", "a3"),
            ("b", "b2"),
            ("b", "b3"),
            ("b", "b4"),
            ("a", "a4"),
        ]
        states = await page.states("c")
        assert [(old, new) for old, new, _ in states] == [
            ("disconnected", "connecting"),
            ("connecting", "connected"),
            ("connected", "reconnecting"),
            ("reconnecting", "connecting"),
            ("connecting", "connected"),
        ]
        assert states[2][2].startswith("transport close")
        rooms = await page.run("() => clients.c.rooms")
        assert [(r["room"], r["offset"], r["recovered"]) for r in rooms] == [("a", 4, True), ("b", 4, True)]
        assert len(log["snapshots"]) == 2  # a recovery calls no snapshot handler
        assert door.attempts(transport) == 2
        if transport == "sse":
            assert door.sse.requests[1].rooms == ["a", "b"]


@BOTH
async def test_a_reset_calls_the_snapshot_handlers_again(browser: Any, transport: str) -> None:
    async with serving(browser, history=2) as (srv, page, door):
        await page.make("c", transport=transport, backoffInitial=1000)
        await page.run("() => record('c', ['e'])")
        await page.run("() => start('c', ['a'])")
        door.sse.hold()
        await drop_everyone(srv)
        for n in range(1, 5):  # four while away; the history keeps two: no replay possible
            await srv.hub.publish("a", "e", n)
        assert door.attempts(transport) == 1
        if transport == "sse":
            await door.sse.until(lambda: len(door.sse.requests) == 2, "the module to reconnect by itself")
            door.sse.release()
        snapshots = await page.wait_count("c", "snapshots", 2)
        assert [(s["state"]["offset"], s["state"]["recovered"]) for s in snapshots] == [(0, False), (4, False)]
        assert snapshots[1]["snapshot"] == {"room": "a", "items": []}
        await srv.hub.publish("a", "e", 5)
        events = await page.wait_count("c", "events", 1)
        assert events_of({"events": events}) == [("a", 5)]  # nothing the snapshot already holds
        assert await page.run("() => clients.c.room('a')") == {
            "room": "a",
            "epoch": (await srv.hub.broker.position("a")).epoch,
            "offset": 5,
            "recovered": False,
        }


# -- tokens -------------------------------------------------------------------------------


@BOTH
async def test_a_token_callable_gets_a_refused_token_replaced(browser: Any, transport: str) -> None:
    async with serving(browser, secret=SECRET) as (srv, page, door):
        await page.make("c", transport=transport, backoffInitial=200, tokens=[token(exp_in=-30), token()])
        await page.run("() => { window.sub = clients.c.subscribe('a'); }")  # recorded; subscribed once connected
        await page.run("() => clients.c.connect()")
        assert (await page.run("() => sub"))["room"] == "a"
        states = await page.states("c")
        assert [(old, new) for old, new, _ in states] == [
            ("disconnected", "connecting"),
            ("connecting", "reconnecting"),
            ("reconnecting", "connecting"),
            ("connecting", "connected"),
        ]
        assert states[1][2] == "refused: token expired"
        assert (await page.log("c"))["tokenCalls"] == 2


@BOTH
async def test_a_static_bad_token_stops_the_client(browser: Any, transport: str) -> None:
    async with serving(browser, secret=SECRET) as (srv, page, door):
        await page.make("c", transport=transport, backoffInitial=100, token="garbage")
        await page.run("() => clients.c.subscribe('a').catch(() => null) && null")
        error = await page.run("() => clients.c.connect().then(() => null, (e) => e.message)")
        assert error is not None and error.startswith("refused: ")
        assert await page.states("c") == [
            ("disconnected", "connecting", "connect"),
            ("connecting", "disconnected", error),
        ]
        assert door.attempts(transport) == 1

        # The same through a callable that has nothing better: it stops after one more try.
        await page.make("d", transport=transport, backoffInitial=100, tokens=["garbage"])
        await page.run("() => clients.d.subscribe('a').catch(() => null) && null")
        error = await page.run("() => clients.d.connect().then(() => null, (e) => e.message)")
        assert error is not None and error.endswith("(the token callable returned the same token)")
        assert [new for _, new, _ in await page.states("d")] == [
            "connecting",
            "reconnecting",
            "connecting",
            "disconnected",
        ]


# -- batches, emit, pause, close ----------------------------------------------------------


async def test_a_burst_of_500_events_reaches_the_batcher_as_one_or_two_coalesced_batches(browser: Any) -> None:
    async with serving(browser) as (srv, page, door):
        await page.make("c", transport="websocket")
        await page.run("() => batch('c', 'item', {debounce: 300})")
        await page.run("() => start('c', ['items'])")
        expected: dict[str, dict[str, Any]] = {}
        for i in range(500):
            key = f"k{i % 50}"
            kind = "delete" if i >= 450 and i % 50 < 5 else "update"
            expected.pop(key, None)
            expected[key] = {"key": key, "kind": kind, "data": {"key": key, "kind": kind, "i": i}}
            await srv.hub.publish("items", "item", {"key": key, "kind": kind, "i": i})
        await page.wait("() => log.c.batches.flat().length > 0 && batchers.c.size === 0", None, "the batches")
        await page.wait("() => !batchers.c._running", None, "the batch handler to return")
        batches = (await page.log("c"))["batches"]
        assert 1 <= len(batches) <= 2
        final: dict[str, dict[str, Any]] = {}
        for batch in batches:
            assert len({c["key"] for c in batch}) == len(batch)  # coalesced: one change per key
            for change in batch:
                final.pop(change["key"], None)
                final[change["key"]] = change
        assert final == expected and list(final) == list(expected)  # last per key, in order of last change
        assert sum(c["kind"] == "delete" for c in final.values()) == 5  # a delete beats the earlier updates


async def test_emit_with_ack_and_publish_over_ws_and_a_clear_error_over_sse(browser: Any) -> None:
    def setup(hub: Hub) -> None:
        @hub.on("echo")
        async def echo(conn: Connection, data: Any = None) -> Any:
            return {"echo": data, "by": conn.id}

        @hub.on("boom")
        def boom(conn: Connection, data: Any = None) -> Any:
            raise RuntimeError("boom")

    async with serving(browser, setup=setup) as (srv, page, door):
        await page.make("c", transport="websocket")
        # Emitted before connecting: kept, then sent once connected.
        await page.run("() => { window.early = clients.c.emit('echo', 'early', {ack: true}); }")
        await page.run("() => clients.c.connect()")
        assert (await page.run("() => early"))["echo"] == "early"
        reply = await page.run("() => clients.c.emit('echo', {n: 1}, {ack: true})")
        assert reply["echo"] == {"n": 1} and reply["by"].startswith("ws-")
        errors = await page.run("""() => Promise.all([
            clients.c.emit('nobody', 1, {ack: true}).catch((e) => e.code),
            clients.c.emit('boom', 1, {ack: true}).catch((e) => e.code),
        ])""")
        assert errors == ["not_found", "internal"]
        await page.run("() => { record('c', ['said']); return clients.c.subscribe('a'); }")
        position = await page.run("() => clients.c.publish('a', 'said', {text: 'hi'})")
        assert position == {"room": "a", "epoch": (await srv.hub.broker.position("a")).epoch, "offset": 1}
        assert events_of({"events": await page.wait_count("c", "events", 1)}) == [("a", {"text": "hi"})]

        await page.make("s", transport="sse")
        refusal = await page.run(
            "() => { try { clients.s.emit('echo', 1); } catch (e) { return [e.code, e.message]; } }"
        )
        assert refusal == ["unsupported", "emit needs the websocket transport: an SSE stream only receives"]


@BOTH
async def test_pause_disconnects_holds_batches_and_resume_recovers_close_drops_pending(
    browser: Any, transport: str
) -> None:
    async with serving(browser) as (srv, page, door):
        await page.make("c", transport=transport)
        await page.run("() => { record('c', ['item']); batch('c', 'item', {debounce: 100}); }")
        await page.run("() => start('c', ['items'])")
        await page.run("() => clients.c.pause(0)")
        await page.wait_state("c", "disconnected")
        assert (await page.states("c"))[-1] == ("connected", "disconnected", "paused")
        await srv.hub.publish("items", "item", {"key": "x", "kind": "update"})

        await page.run("() => clients.c.resume()")
        await page.wait_state("c", "connected")
        assert events_of({"events": await page.wait_count("c", "events", 1)}) == [
            ("items", {"key": "x", "kind": "update"})
        ]
        assert (await page.run("() => clients.c.room('items')"))["recovered"] is True
        await page.wait_count("c", "batches", 1)

        # Held while paused, dropped on close.
        await page.run("() => { clients.c.pause(0); batchers.c.add('y', 'update'); }")
        await page.wait_state("c", "disconnected")
        await page.run("() => clients.c.close()")
        assert await page.run("() => [clients.c.state, batchers.c.size, batchers.c.closed]") == ["closed", 0, True]
        assert len((await page.log("c"))["batches"]) == 1
        assert await page.run("() => clients.c.connect().catch((e) => e.code)") == "closed"
