"""The ASGI door (``RoomcastApp``) mounted in a real FastAPI app, served by a real uvicorn.

This is the "few lines" a FastAPI user writes to add roomcast to an existing app::

    api = FastAPI()
    api.mount("/rt", RoomcastApp(build_app()))

and clients connect with ``socketio_path="/rt/socket.io"``. FastAPI does not forward lifespan
to mounted apps, so these tests also exercise the lazy start on the first request (pass
``FastAPI(lifespan=rt.lifespan)`` to shut roomcast down with the host app as well).

Every test is bounded by ``asyncio.timeout`` and waits on events or replies, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
import uvicorn
from fastapi import FastAPI
from rawclient import call, socketio_connect

from roomcast import RoomcastApp, Settings
from roomcast.server.asgi import Message
from roomcast.server.conformance import build_app
from roomcast.transports.base import HttpRequest, HttpResponse

TEST_TIMEOUT_S = 10.0
SERVER_START_S = 5.0
SERVER_STOP_S = 5
NODE_DIR = Path(__file__).parents[1] / "interop" / "node"
SIO_PATH = "/rt/socket.io"


@dataclass
class Served:
    """A running uvicorn serving FastAPI with roomcast mounted at ``/rt``."""

    url: str
    rt: RoomcastApp

    def eio(self, query: str = "") -> str:
        """The mounted Engine.IO polling URL, with extra query parameters."""
        return f"{self.url}{SIO_PATH}/?EIO=4&transport=polling{query}"


class _Server(uvicorn.Server):
    """uvicorn's server with an event set once it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:  # a failed startup (lifespan, bind) returns with should_exit set
            self.ready.set()


@contextlib.asynccontextmanager
async def serve(rt: RoomcastApp) -> AsyncIterator[Served]:
    """Mount ``rt`` at ``/rt`` of a FastAPI app with its own route, and serve it on a free port."""
    api = FastAPI()

    @api.get("/api/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    api.mount("/rt", rt)
    config = uvicorn.Config(
        api, host="127.0.0.1", port=0, lifespan="on", log_level="warning", timeout_graceful_shutdown=SERVER_STOP_S
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(SERVER_START_S):
            ready = asyncio.create_task(server.ready.wait())
            await asyncio.wait((ready, task), return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
        assert server.ready.is_set(), "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(f"http://127.0.0.1:{port}", rt)
    finally:
        server.should_exit = True
        async with asyncio.timeout(SERVER_STOP_S + 2):
            await task
        await rt.shutdown()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    async with serve(RoomcastApp(build_app())) as s:
        yield s


@contextlib.asynccontextmanager
async def new_client() -> AsyncIterator[socketio.AsyncClient]:
    """An AsyncClient on its own aiohttp session, shut down on exit."""
    async with aiohttp.ClientSession() as http:
        client = socketio.AsyncClient(reconnection=False, http_session=http)
        try:
            yield client
        finally:
            await client.shutdown()


def inbox(client: socketio.AsyncClient, event: str) -> asyncio.Queue[Any]:
    """A queue receiving every `event` on `client`; register it before connecting."""
    received: asyncio.Queue[Any] = asyncio.Queue()
    client.on(event, lambda *args: received.put_nowait(args[0] if len(args) == 1 else args))
    return received


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_connect_echo_publish(served: Served, transports: list[str]) -> None:
    """Auth comes back, `echo` acks, a room publish arrives, and FastAPI's own route answers."""
    auth = {"token": "s3cr3t", "user": {"id": 7}}
    room = f"room-{uuid.uuid4().hex}"
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        auth_events, news = inbox(client, "auth"), inbox(client, "news")
        await client.connect(served.url, socketio_path=SIO_PATH, transports=transports, auth=auth)
        assert client.transport() == transports[0]
        assert await auth_events.get() == auth
        assert await client.call("echo", {"x": 1}, timeout=5) == {"x": 1}
        assert await client.call("join", {"room": room}, timeout=5) is True
        await client.emit("publish", {"room": room, "event": "news", "data": {"n": 1}})
        assert await news.get() == {"n": 1}
        async with aiohttp.ClientSession() as http, http.get(f"{served.url}/api/hello") as response:
            assert response.status == 200
            assert await response.json() == {"hello": "world"}


async def test_polling_upgrades_to_websocket(served: Served) -> None:
    """With the default transports the client starts on polling and ends on websocket."""
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        await client.connect(served.url, socketio_path=SIO_PATH, auth={"t": 1})
        assert await client.call("echo", "first", timeout=5) == "first"
        n = 0
        while client.transport() != "websocket":  # bounded by the test timeout
            n += 1
            assert await client.call("echo", n, timeout=5) == n
        assert await client.call("echo", "after", timeout=5) == "after"


async def test_oversized_post_ends_only_its_session(served: Served) -> None:
    """A POST over max_payload gets 413 and its session is gone; another client is unharmed."""
    limit = served.rt.settings.max_payload
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as healthy, aiohttp.ClientSession() as http:
        await healthy.connect(served.url, socketio_path=SIO_PATH, transports=["websocket"])
        async with http.get(served.eio()) as response:
            assert response.status == 200
            sid = json.loads((await response.text())[1:])["sid"]
        body = b"4" + b"x" * (limit + limit // 2)
        async with http.post(served.eio(f"&sid={sid}"), data=io.BytesIO(body)) as response:
            assert response.status == 413
            assert await response.json() == {"code": 3, "message": "Payload too large"}
        async with http.get(served.eio(f"&sid={sid}")) as response:
            assert response.status == 400
            assert (await response.json())["code"] == 1  # session ID unknown
        assert await healthy.call("echo", "still here", timeout=5) == "still here"


async def test_oversized_websocket_message_closes_1009(served: Served) -> None:
    """A WebSocket message over max_payload closes that WebSocket with 1009 and ends its session."""
    limit = served.rt.settings.max_payload
    url = served.url.replace("http", "ws", 1) + f"{SIO_PATH}/?EIO=4&transport=websocket"
    async with asyncio.timeout(TEST_TIMEOUT_S), aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        opened = await ws.receive_str()
        sid = json.loads(opened[1:])["sid"]
        assert sid in served.rt.app.engine.sessions
        await ws.send_str("4" + "x" * limit)
        message = await ws.receive()
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
        assert sid not in served.rt.app.engine.sessions


async def test_refused_websocket(served: Served) -> None:
    """A refused handshake is an HTTP answer when the server offers it, else a 1008 close."""
    url = served.url.replace("http", "ws", 1) + f"{SIO_PATH}/?EIO=3&transport=websocket"
    async with asyncio.timeout(TEST_TIMEOUT_S), aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 400  # uvicorn offers websocket.http.response

        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "websocket.connect"}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/socket.io/", "query_string": b"EIO=3&transport=websocket"}
        await served.rt(scope, receive, send)
        assert sent == [{"type": "websocket.close", "code": 1008}]


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_binary_round_trip(served: Served, transports: list[str]) -> None:
    """`message` with bytes comes back as `message-back` with identical bytes."""
    payload = bytes(range(256)) * 4
    async with asyncio.timeout(TEST_TIMEOUT_S), new_client() as client:
        back = inbox(client, "message-back")
        await client.connect(served.url, socketio_path=SIO_PATH, transports=transports)
        await client.emit("message", payload)
        received = await back.get()
        assert isinstance(received, bytes) and received == payload


async def test_client_leaving_a_long_poll_ends_the_request() -> None:
    """A pending long-poll GET is cancelled when its client disconnects; the session lives on.

    Long ping intervals keep the poll pending until the client leaves.
    """
    rt = RoomcastApp(settings=Settings(ping_interval=30.0, ping_timeout=20.0, cors_origins=("*",)))
    polling, cancelled = asyncio.Event(), asyncio.Event()
    handle = rt.app.http

    async def spy(request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and "sid" in request.query:
            polling.set()
        try:
            return await handle(request)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    rt.app.http = spy  # type: ignore[method-assign]
    async with asyncio.timeout(TEST_TIMEOUT_S), serve(rt) as served, aiohttp.ClientSession() as http:
        async with http.get(served.eio()) as response:
            sid = json.loads((await response.text())[1:])["sid"]

        async def long_poll() -> None:
            async with aiohttp.ClientSession() as leaving, leaving.get(served.eio(f"&sid={sid}")) as r:
                await r.read()

        poll = asyncio.create_task(long_poll())
        await polling.wait()
        poll.cancel()  # closes that client's connection
        with contextlib.suppress(asyncio.CancelledError):
            await poll
        await cancelled.wait()
        session = rt.app.engine.sessions[sid]
        assert session.poll is None
        async with http.post(served.eio(f"&sid={sid}"), data=b"40") as response:
            assert response.status == 200
        async with http.get(served.eio(f"&sid={sid}")) as response:  # not a "second concurrent GET"
            assert response.status == 200
            assert (await response.text()).startswith("40")


async def test_lifespan_and_lazy_start_run_startup_once() -> None:
    """Concurrent first requests start the app once; lifespan does not restart it; hosts can own it."""
    rt = RoomcastApp(build_app())
    calls: list[str] = []
    startup, shutdown = rt.app.startup, rt.app.shutdown

    async def counted_startup() -> None:
        calls.append("startup")
        await startup()

    async def counted_shutdown(reason: Any = None) -> None:
        calls.append("shutdown")
        await shutdown(reason)

    rt.app.startup = counted_startup  # type: ignore[method-assign]
    rt.app.shutdown = counted_shutdown  # type: ignore[method-assign]

    async def get(app: RoomcastApp, path: str) -> list[Message]:
        sent: list[Message] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/rt" + path, "root_path": "/rt", "headers": []}
        await app(scope, receive, send)
        return sent

    async def lifespan(kind: str) -> Message:
        sent: list[Message] = []
        messages = iter([{"type": f"lifespan.{kind}"}, {"type": "lifespan.shutdown"}])

        async def receive() -> Message:
            return next(messages)

        async def send(message: Message) -> None:
            sent.append(message)

        await rt({"type": "lifespan"}, receive, send)
        return sent[0]

    async with asyncio.timeout(TEST_TIMEOUT_S):
        first, second = await asyncio.gather(get(rt, "/readyz"), get(rt, "/healthz"))
        assert first[0]["status"] == 200 and first[1]["body"] == b"ready"
        assert second[0]["status"] == 200
        assert await lifespan("startup") == {"type": "lifespan.startup.complete"}
        assert calls == ["startup", "shutdown"]
        assert await lifespan("shutdown") == {"type": "lifespan.shutdown.complete"}
        assert calls == ["startup", "shutdown"]

        hosted = RoomcastApp(build_app())  # FastAPI(lifespan=hosted.lifespan)
        async with hosted.lifespan(FastAPI()):
            assert (await get(hosted, "/readyz"))[1]["body"] == b"ready"
        assert (await get(hosted, "/readyz"))[0]["status"] == 503  # shut down with its host


JS_CLIENT = """
import { io } from 'socket.io-client';
const [url, path] = process.argv.slice(1);
const fail = (message) => { console.log(JSON.stringify({ error: message })); process.exit(1); };
setTimeout(() => fail('timeout'), 8000);
const socket = io(url, { path, transports: ['websocket'], auth: { token: 'js' }, reconnection: false });
socket.on('connect_error', (err) => fail(err.message));
socket.on('connect', () => {
  socket.emit('echo', { from: 'js', n: [1, 2] }, (ack) => {
    console.log(JSON.stringify({ connected: true, transport: socket.io.engine.transport.name, ack }));
    socket.close();
    process.exit(0);
  });
});
"""


async def test_official_js_client_over_websocket(served: Served) -> None:
    """socket.io-client 4 connects through the mount over websocket and gets its echo ack."""
    if not (NODE_DIR / "node_modules" / "socket.io-client").is_dir():
        pytest.fail(f"socket.io-client is not installed in {NODE_DIR}: run `make test-deps`")
    process = await asyncio.create_subprocess_exec(
        "node",
        "--input-type=module",
        "-e",
        JS_CLIENT,
        served.url,
        SIO_PATH,
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, f"node failed: {stdout.decode()} {stderr.decode()}"
    assert json.loads(stdout.decode().strip().splitlines()[-1]) == {
        "connected": True,
        "transport": "websocket",
        "ack": {"from": "js", "n": [1, 2]},
    }


async def test_slow_consumer_on_the_asgi_door_is_disconnected_and_the_others_carry_on() -> None:
    """A reader that stops makes uvicorn's send wait; the queue behind it is bounded."""
    app = build_app()
    app = type(app)(app.hub, Settings(cors_origins=("*",), max_buffer_bytes=256 * 1024))
    reasons: dict[str, str] = {}

    @app.hub.on_disconnect()
    def gone(conn: Any, reason: str) -> None:
        reasons[conn.id] = reason

    async with serve(RoomcastApp(app)) as s:
        host, port = s.url.removeprefix("http://").split(":")
        fast = [await socketio_connect(host, int(port), path=f"{SIO_PATH}/") for _ in range(3)]
        slow = await socketio_connect(host, int(port), path=f"{SIO_PATH}/", rcvbuf=4096)
        try:
            for i, c in enumerate([*fast, slow]):
                assert await call(c, i + 1, "join", {"room": "feed"}) == [True]
            slow_id = next(
                iter(set(c.id for c in app.hub.members("feed")) - {c.id for c in app.hub.members("feed")[:3]})
            )
            assert slow.transport is not None
            slow.transport.pause_reading()  # it stops reading
            payload = "x" * 32 * 1024
            sent = 0
            async with asyncio.timeout(30):
                while app.hub.slow_disconnects == 0:
                    assert sent < 2000, "the slow consumer was never disconnected"
                    await app.hub.publish("feed", "blob", sent, payload)
                    sent += 1
                    for c in fast:  # the fast readers keep up, so only the paused one falls behind
                        assert await c.recv(timeout=10) == f'42["blob",{sent - 1},"{payload}"]'
            assert reasons.get(slow_id) == "slow consumer"
            assert len(app.hub.members("feed")) == 3
            await app.hub.publish("feed", "after", 1)
            for c in fast:
                assert await c.recv() == '42["after",1]'
        finally:
            for c in [*fast, slow]:
                c.close()
