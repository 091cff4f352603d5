"""Socket.IO behind a load balancer without sticky sessions (issue 13, item 4).

Real ``roomcast serve --redis`` processes on a real redis-server, in front of them
``RoundRobinProxy`` (tests/rrproxy.py): every HTTP request goes to the next node in turn,
so an Engine.IO session's polling requests alternate between its owner and the other node.
Without forwarding, each request that reaches the other node would be answered 400
``Session ID unknown`` and the client would never stay connected; the tests count those
requests in the proxy's log and check that the other node forwarded exactly that many
(its ``ForwardStats``, read over the node bus) and that the owner answered them.

Peers: the official ``socket.io-client`` (``nosticky_scenario.mjs``) and python-socketio's
``AsyncClient``, over polling only and over polling with an upgrade; the upgrade is sent to
the owner (accepted: the client moves to WebSocket) or to the other node (refused: the client
stays on polling and keeps working). Raw aiohttp requests check what a forwarded answer
carries, measure what forwarding adds to a poll, hold a forwarded GET for a whole ping
interval, and SIGKILL an owner under a pending forwarded poll.

Every test is bounded by ``asyncio.timeout`` and waits on answers or events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import socketio
from redisserver import fresh_url
from rrproxy import RoundRobinProxy
from test_task_restart import serving

from roomcast import Publisher
from roomcast.cluster.redis import RedisCluster
from roomcast.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.transports.engineio_forward import owner_of, stats_kind

TEST_TIMEOUT = 60.0
WAIT = 20.0
SCENARIO = Path(__file__).parent / "nosticky_scenario.mjs"
CLIENT = Path(__file__).parents[1] / "interop" / "node" / "node_modules" / "socket.io-client" / "package.json"
EIO = "/socket.io/?EIO=4&transport=polling"

Node = tuple[asyncio.subprocess.Process, str]
Observations = list[dict[str, Any]]

# transports, and where the proxy sends the upgrade: None (polling only), 0 (the owner: every
# session here is opened through the proxy's first request, which goes to node 0) or 1.
MODES: dict[str, tuple[list[str], int | None]] = {
    "polling": (["polling"], None),
    "upgrade-to-owner": (["polling", "websocket"], 0),
    "upgrade-to-other-node": (["polling", "websocket"], 1),
}


@contextlib.asynccontextmanager
async def two_nodes(tmp_path: Path, url: str, *extra: str) -> AsyncIterator[list[Node]]:
    """Two ``roomcast serve --redis url`` processes (each with its own task database)."""
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(serving(tmp_path / f"node-{n}.db", "--redis", url, *extra))
            for n in range(2)
        ]


@contextlib.asynccontextmanager
async def bus(url: str) -> AsyncIterator[RedisCluster]:
    """A node on the bus for the test itself: it reads every node's ``ForwardStats``."""
    cluster = RedisCluster(url)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.aclose()


async def forward_stats(cluster: RedisCluster) -> dict[str, dict[str, int]]:
    """Each live node's ``ForwardStats`` of its Socket.IO server, by node id."""
    answers = await cluster.ask_all(stats_kind("socket.io"), None, timeout=WAIT)
    return {str(a["node"]): {k: int(v) for k, v in a.items() if k != "node"} for a in answers if isinstance(a, dict)}


async def handshake(http: aiohttp.ClientSession, base: str) -> str:
    """A new Engine.IO session opened straight on ``base``; its sid (the OPEN packet is read)."""
    async with http.get(base + EIO) as response:
        assert response.status == 200
        body = await response.text()
    assert body.startswith("0")
    sid: str = json.loads(body[1:])["sid"]
    return sid


async def node_ids(bases: list[str]) -> list[str]:
    """Each node's id, read from a session it opened (the sid names its owner)."""
    ids = []
    async with aiohttp.ClientSession() as http:
        for base in bases:
            sid = await handshake(http, base)
            async with http.post(f"{base}{EIO}&sid={sid}", data="1") as response:
                assert response.status == 200
            owner = owner_of(sid)
            assert owner is not None
            ids.append(owner)
    return ids


async def connections_in(base: str, room: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/api/presence?room={room}") as response:
        count: int = (await response.json())["connections"]
        return count


CLOSED_WITHIN = 10.0
"""A client's close must end its session well before a ping timeout would (25 + 20 s)."""


async def until_empty(base: str, room: str) -> None:
    """Wait until ``room`` has no member left on any node (presence lives in Redis): the
    client's close packet reached the owner, since a lost one would take a ping timeout."""
    async with asyncio.timeout(CLOSED_WITHIN):
        while await connections_in(base, room):
            pass


class NodeScript:
    """``nosticky_scenario.mjs`` as a subprocess whose observations are read as they come, so a
    test can act in the middle of a scenario (kill a node on ``ready``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.seen: Observations = []

    @classmethod
    async def start(cls, scenario: str, options: dict[str, Any]) -> NodeScript:
        if not CLIENT.is_file():
            pytest.fail("needs tests/interop/node/node_modules (run `make test-deps`)")
        process = await asyncio.create_subprocess_exec(
            "node",
            str(SCENARIO),
            scenario,
            json.dumps({"timeoutMs": 40_000, **options}),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        return cls(process)

    def _fail(self, why: str) -> None:
        pytest.fail(f"{why}\n" + "\n".join(json.dumps(o) for o in self.seen))

    async def _line(self) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        line = await self.process.stdout.readline()
        if not line:
            return None
        try:
            observation: dict[str, Any] = json.loads(line)
        except ValueError:
            observation = {"type": "output", "line": line.decode(errors="replace").rstrip()}
        self.seen.append(observation)
        if observation["type"] == "error":
            self._fail(f"the scenario failed: {observation['message']}")
        return observation

    async def until(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next observation of ``kind`` (with these fields)."""
        while (observation := await self._line()) is not None:
            if observation["type"] == kind and all(observation.get(k) == v for k, v in fields.items()):
                return observation
        self._fail(f"the scenario ended before {kind} {fields}")
        raise AssertionError  # unreachable: pytest.fail raises

    async def end(self) -> Observations:
        """Read to the end and wait for the process, which ends once its last request is
        answered (the close packet included); it must have printed ``done`` and exit 0."""
        while await self._line() is not None:
            pass
        if await self.process.wait() != 0 or not any(o["type"] == "done" for o in self.seen):
            self._fail(f"the scenario exited with {self.process.returncode}")
        return self.seen

    async def stop(self) -> None:
        """End the script (by its pid) if a failed test left it running."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


def of_type(observations: Observations, kind: str) -> Observations:
    return [o for o in observations if o["type"] == kind]


async def check_forwarding(proxy: RoundRobinProxy, cluster: RedisCluster, ids: list[str], sid: str) -> tuple[int, int]:
    """Every polling request of session ``sid`` the proxy sent to the node that does not own
    it was forwarded by that node, answered by the owner, and answered 200: without forwarding
    each of them would have been a 400. Returns (forwarded, the session's polling requests)."""
    await proxy.idle()
    owner = ids.index(owner_of(sid) or "")
    assert owner == 0, "the proxy's first request (the handshake) goes to node 0"
    session = [r for r in proxy.routed() if r.sid == sid]
    strangers = [r for r in session if r.upstream != owner]
    statuses = [r.status for r in strangers]
    if statuses and statuses[-1] == 400 and strangers[-1].method == "GET":
        # A poll the client sent as its session closed: the owner answers it 400, exactly as
        # a single node does (python-engineio may poll once more after its close packet).
        statuses[-1] = 200
    assert statuses == [200] * len(strangers)
    stats = await forward_stats(cluster)
    assert stats[ids[1 - owner]]["forwarded"] == len(strangers)
    assert stats[ids[owner]]["answered"] == len(strangers)
    assert stats[ids[owner]]["forwarded"] == stats[ids[1 - owner]]["answered"] == 0
    assert stats[ids[1 - owner]]["unreachable"] == 0
    assert proxy.errors == []
    return len(strangers), len(session)


# -- the official JavaScript client ------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
async def test_the_official_client_works_through_a_round_robin_proxy(tmp_path: Path, redis_url: str, mode: str) -> None:
    """socket.io-client connects through the proxy, subscribes with the built-in, gets five
    publications made on both nodes (and by itself, acked) in order, and disconnects cleanly;
    an upgrade reaching the owner moves it to WebSocket, one reaching the other node is
    refused and leaves it polling, working."""
    transports, upgrades_to = MODES[mode]
    room = f"board-{uuid.uuid4().hex}"
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url) as nodes,
        RoundRobinProxy([base for _, base in nodes], upgrades_to=upgrades_to) as proxy,
        bus(url) as cluster,
    ):
        bases = [base for _, base in nodes]
        ids = await node_ids(bases)
        script = await NodeScript.start(
            "rooms", {"url": proxy.url, "apis": bases, "room": room, "transports": transports}
        )
        try:
            seen = await script.end()
        finally:
            await script.stop()
        await until_empty(bases[1], room)  # the client's close reached the owner: no ping timeout

        [connected] = of_type(seen, "connected")
        acks = {o["event"]: o["reply"] for o in of_type(seen, "ack")}
        assert acks["subscribe"]["room"] == room and acks["subscribe"]["offset"] == 0
        assert acks["publish"]["offset"] == 3
        assert [o["data"] for o in of_type(seen, "received")] == [1, 2, 3, 4, 5]
        assert [o["reason"] for o in of_type(seen, "disconnect")] == ["io client disconnect"]
        [final] = of_type(seen, "final-transport")
        upgrades = proxy.routed(websocket=True)
        stats = await forward_stats(cluster)
        if upgrades_to is None:
            assert final["transport"] == "polling" and upgrades == []
        elif upgrades_to == 0:
            assert of_type(seen, "upgrade")[0]["outcome"] == "upgrade to websocket"
            assert final["transport"] == "websocket" and [u.status for u in upgrades] == [101]
        else:
            assert of_type(seen, "upgrade")[0]["outcome"].startswith("upgradeError")
            assert final["transport"] == "polling" and [u.status for u in upgrades] == [400]
        assert stats[ids[1]]["refused_upgrades"] == (1 if upgrades_to == 1 else 0)
        forwarded, total = await check_forwarding(proxy, cluster, ids, connected["sid"])
        assert forwarded > 0  # it polls before and while it probes: some polls reached the other node
        print(f"\n[{mode}] socket.io-client: {forwarded} of the session's {total} polling requests were forwarded")


# -- python-socketio ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
async def test_python_socketio_works_through_a_round_robin_proxy(tmp_path: Path, redis_url: str, mode: str) -> None:
    """The same scenario with python-socketio's AsyncClient. It probes right after the
    handshake, before it polls: accepted by the owner, the session never polls (nothing to
    forward); refused by the other node, it stays on polling and half its polls are forwarded."""
    transports, upgrades_to = MODES[mode]
    room = f"feed-{uuid.uuid4().hex}"
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url) as nodes,
        RoundRobinProxy([base for _, base in nodes], upgrades_to=upgrades_to) as proxy,
        bus(url) as cluster,
        aiohttp.ClientSession() as http,
    ):
        a, b = bases = [base for _, base in nodes]
        ids = await node_ids(bases)
        client = socketio.AsyncClient(reconnection=False, http_session=http)
        received: asyncio.Queue[Any] = asyncio.Queue()
        client.on("n", received.put_nowait)
        try:
            await client.connect(proxy.url, transports=transports)
            sid = client.eio.sid
            subscribed = await client.call("subscribe", {"room": room}, timeout=WAIT)
            assert subscribed["room"] == room and subscribed["offset"] == 0
            await Publisher(a).apublish(room, "n", 1)
            await Publisher(b).apublish(room, "n", 2)
            acked = await client.call("publish", {"room": room, "event": "n", "data": 3}, timeout=WAIT)
            assert acked["offset"] == 3
            await Publisher(a).apublish(room, "n", 4)
            await Publisher(b).apublish(room, "n", 5)
            assert [await received.get() for _ in range(5)] == [1, 2, 3, 4, 5]
            assert client.transport() == ("websocket" if upgrades_to == 0 else "polling")
        finally:
            await client.disconnect()
        await until_empty(a, room)

        upgrades = [u.status for u in proxy.routed(websocket=True)]
        assert upgrades == {None: [], 0: [101], 1: [400]}[upgrades_to]
        assert (await forward_stats(cluster))[ids[1]]["refused_upgrades"] == (1 if upgrades_to == 1 else 0)
        forwarded, total = await check_forwarding(proxy, cluster, ids, sid)
        assert (forwarded > 0) == (upgrades_to != 0)
        print(f"\n[{mode}] python-socketio: {forwarded} of the session's {total} polling requests were forwarded")


# -- the owner dies ---------------------------------------------------------------------------
async def test_the_official_client_gets_a_new_session_when_the_owner_is_sigkilled(
    tmp_path: Path, redis_url: str
) -> None:
    """Its session's owner SIGKILLed, the client's next request fails at once (a forwarded one
    with 400, one the proxy sent to the dead node with 502), and it reconnects to a new session
    on the survivor, long before the 45 s a ping timeout would take."""
    room = f"jobs-{uuid.uuid4().hex}"
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url) as nodes,
        RoundRobinProxy([base for _, base in nodes]) as proxy,
        bus(url) as cluster,
    ):
        bases = [base for _, base in nodes]
        ids = await node_ids(bases)
        script = await NodeScript.start("kill", {"url": proxy.url, "apis": bases, "room": room})
        try:
            ready = await script.until("ready")
            owner = ids.index(owner_of(ready["sid"]) or "")
            nodes[owner][0].send_signal(signal.SIGKILL)
            await nodes[owner][0].wait()
            killed = time.monotonic()
            again = await script.until("connected", n=2)
            reconnected = time.monotonic() - killed
            seen = await script.end()
        finally:
            await script.stop()
        survivor = ids[1 - owner]
        assert again["sid"] != ready["sid"] and owner_of(again["sid"]) == survivor
        assert [o["data"] for o in of_type(seen, "received")] == ["before", "after"]
        reasons = [o["reason"] for o in of_type(seen, "disconnect")]
        assert reasons[0] in ("transport error", "transport close") and reasons[-1] == "io client disconnect"
        assert reconnected < 10.0
        stats = (await forward_stats(cluster))[survivor]
        print(f"\nreconnected {reconnected * 1000:.0f} ms after the SIGKILL; survivor's stats {stats}")
        assert proxy.errors == []


async def test_python_socketio_gets_a_new_session_when_the_owner_is_sigkilled(tmp_path: Path, redis_url: str) -> None:
    """The same with python-socketio: reconnected to a new session on the survivor."""
    room = f"jobs-{uuid.uuid4().hex}"
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url) as nodes,
        RoundRobinProxy([base for _, base in nodes]) as proxy,
        aiohttp.ClientSession() as http,
    ):
        bases = [base for _, base in nodes]
        ids = await node_ids(bases)
        client = socketio.AsyncClient(
            reconnection_delay=0.05, reconnection_delay_max=0.2, randomization_factor=0, http_session=http
        )
        connects: asyncio.Queue[str] = asyncio.Queue()
        received: asyncio.Queue[Any] = asyncio.Queue()
        client.on("connect", lambda: connects.put_nowait(client.eio.sid))
        client.on("n", received.put_nowait)
        try:
            await client.connect(proxy.url, transports=["polling"])
            first = await connects.get()
            await client.call("subscribe", {"room": room}, timeout=WAIT)
            await client.call("publish", {"room": room, "event": "n", "data": "before"}, timeout=WAIT)
            assert await received.get() == "before"
            owner = ids.index(owner_of(first) or "")
            nodes[owner][0].send_signal(signal.SIGKILL)
            await nodes[owner][0].wait()
            killed = time.monotonic()
            second = await connects.get()
            reconnected = time.monotonic() - killed
            assert second != first and owner_of(second) == ids[1 - owner]
            await client.call("subscribe", {"room": room}, timeout=WAIT)
            await client.call("publish", {"room": room, "event": "n", "data": "after"}, timeout=WAIT)
            assert await received.get() == "after"
        finally:
            await client.shutdown()
        assert reconnected < 10.0
        print(f"\npython-socketio reconnected {reconnected * 1000:.0f} ms after the SIGKILL")
        assert proxy.errors == []


async def test_a_forwarded_poll_pending_on_an_owner_that_dies_fails_fast(tmp_path: Path, redis_url: str) -> None:
    """A GET forwarded to the owner and waiting there (nothing to send for 25 s) when the owner
    is SIGKILLed is answered 400 ``Session ID unknown`` within about a second (the watch's
    ping), not after its 50 s bus timeout; a request forwarded after the death fails at once
    (nobody listens on the owner's channel any more)."""
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url) as nodes,
        bus(url) as cluster,
        aiohttp.ClientSession() as http,
    ):
        (owner_proc, a), (_, b) = nodes
        sid = await handshake(http, a)
        a_id, b_id = owner_of(sid), owner_of(await handshake(http, b))
        assert a_id is not None and b_id is not None
        query = f"{EIO}&sid={sid}"
        async with http.post(b + query, data="40") as response:
            assert (response.status, await response.text()) == (200, "ok")
        async with http.get(b + query) as response:
            assert (await response.text()).startswith("40")  # the CONNECT reply, through node b

        async def poll() -> tuple[int, Any]:
            async with http.get(b + query) as response:
                return response.status, await response.json()

        pending = asyncio.ensure_future(poll())
        while (await forward_stats(cluster))[a_id]["answering"] != 1:  # held by the owner now
            assert not pending.done()
        owner_proc.send_signal(signal.SIGKILL)
        await owner_proc.wait()
        killed = time.monotonic()
        assert await pending == (400, {"code": 1, "message": "Session ID unknown"})
        in_flight = time.monotonic() - killed

        started = time.monotonic()
        async with http.post(b + query, data="6") as response:
            assert (response.status, await response.json()) == (400, {"code": 1, "message": "Session ID unknown"})
        after = time.monotonic() - started
        stats = (await forward_stats(cluster))[b_id]
        print(
            f"\npending forwarded poll failed {in_flight * 1000:.0f} ms after the SIGKILL, a new one in {after * 1000:.1f} ms"
        )
        assert in_flight < 5.0 and after < 1.0  # the bus's timeout here is 25 + 20 + 5 = 50 s
        assert stats["unreachable"] == 2 and stats["forwarded"] == 2


# -- what crosses the bus -----------------------------------------------------------------------
async def test_a_forwarded_answer_is_the_owners_and_costs_one_bus_round_trip(tmp_path: Path, redis_url: str) -> None:
    """The other node's answers are the owner's: status, content type, CORS headers and body
    bytes (a binary attachment included), with the client's Origin. Measures what forwarding
    adds to a POST and to a poll that has something to return. A WebSocket upgrade presenting
    the sid to the other node is refused (400) while the owner accepts it; from then on a
    polling request through the other node gets the owner's own 400."""
    origin = "http://app.example"
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url, "--cors-origin", origin) as nodes,
        aiohttp.ClientSession(headers={"Origin": origin}) as http,
    ):
        (_, a), (_, b) = nodes
        sid = await handshake(http, a)
        query = f"{EIO}&sid={sid}"

        async def timed(method: str, base: str, body: str | None = None) -> tuple[float, int, bytes, dict[str, str]]:
            started = time.perf_counter()
            async with http.request(method, base + query, data=body) as response:
                payload = await response.read()
                elapsed = time.perf_counter() - started
            skip = {"date", "content-length", "connection", "keep-alive", "server"}
            return (
                elapsed,
                response.status,
                payload,
                {k.lower(): v for k, v in response.headers.items() if k.lower() not in skip},
            )

        _, status, payload, direct_headers = await timed("POST", a, "40")
        _, status_b, payload_b, forwarded_headers = await timed("POST", b, "6")
        assert (status, payload, status_b, payload_b) == (200, b"ok", 200, b"ok")
        assert forwarded_headers == direct_headers
        assert forwarded_headers["access-control-allow-origin"] == origin
        assert forwarded_headers["content-type"] == "text/plain; charset=UTF-8"
        _, status, connect_reply, forwarded_headers = await timed("GET", b)
        assert status == 200 and connect_reply.startswith(b"40{")
        assert forwarded_headers == direct_headers

        # The body's bytes cross as they are: UTF-8 beyond ASCII, and the record separator.
        await timed("POST", b, '420["subscribe",{"room":"r"}]')
        packets: list[str] = []
        while not any(p.startswith("430") for p in packets):
            packets += (await timed("GET", b))[2].decode().split("\x1e")
        await Publisher(b).apublish("r", "n", "héllo ✓ \u2028")
        await Publisher(a).apublish("r", "n", 2)
        while not any(p.startswith('42["n",2') for p in packets):
            packets += (await timed("GET", b))[2].decode().split("\x1e")
        assert [json.loads(p[2:]) for p in packets if p.startswith('42["n"')] == [["n", "héllo ✓ \u2028"], ["n", 2]]

        posts: dict[str, list[float]] = {a: [], b: []}
        polls: dict[str, list[float]] = {a: [], b: []}
        for n in range(20):
            for base in (a, b):
                elapsed, status, _, _ = await timed("POST", base, "6")
                assert status == 200
                posts[base].append(elapsed)
                await timed("POST", a, f'42{n}["unsubscribe",{{"room":"r"}}]')  # its ack waits for the poll
                elapsed, status, reply, _ = await timed("GET", base)
                assert status == 200 and reply.startswith(f"43{n}".encode())
                polls[base].append(elapsed)
        post_direct, post_forwarded = statistics.median(posts[a]), statistics.median(posts[b])
        poll_direct, poll_forwarded = statistics.median(polls[a]), statistics.median(polls[b])
        print(
            f"\nmedian POST {post_direct * 1000:.2f} ms direct, {post_forwarded * 1000:.2f} ms forwarded; "
            f"median poll {poll_direct * 1000:.2f} ms direct, {poll_forwarded * 1000:.2f} ms forwarded"
        )
        assert poll_forwarded - poll_direct < 0.25  # one Redis round trip each way, not a timeout

        ws_url = f"{b}/socket.io/?EIO=4&transport=websocket&sid={sid}"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url)
        assert refused.value.status == 400
        async with http.ws_connect(ws_url.replace(b, a)) as ws:
            await ws.send_str("2probe")
            assert (await ws.receive_str()) == "3probe"
            await ws.send_str("5")  # upgraded: the session is on WebSocket now
            _, status, body, _ = await timed("GET", b)
            assert (status, json.loads(body)) == (400, {"code": 3, "message": "Bad request"})  # the owner's answer


async def test_a_forwarded_poll_may_wait_a_whole_ping_interval(tmp_path: Path, redis_url: str) -> None:
    """With nothing to send, a poll is released by the next ping: a forwarded GET waits that
    whole interval on the owner (6 s here, longer than the bus's default 5 s per request) and
    gets the ping; the pong sent through the other node keeps the session."""
    url = fresh_url(redis_url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url, "--ping-interval", "6", "--ping-timeout", "3") as nodes,
        aiohttp.ClientSession() as http,
    ):
        (_, a), (_, b) = nodes
        opened = time.monotonic()
        sid = await handshake(http, a)
        query = f"{EIO}&sid={sid}"
        async with http.get(b + query) as response:
            assert (response.status, await response.text()) == (200, "2")  # the ping, ~6 s after the handshake
        waited = time.monotonic() - opened
        assert waited > 5.0
        async with http.post(b + query, data="3") as response:  # the pong
            assert (response.status, await response.text()) == (200, "ok")
        async with http.post(a + query, data="1") as response:  # closed by the client: the session was alive
            assert (response.status, await response.text()) == (200, "ok")
        print(f"\na forwarded GET waited {waited:.2f} s for the ping")


async def test_a_body_over_max_payload_never_crosses_the_bus(tmp_path: Path, redis_url: str) -> None:
    """A POST over ``max_payload`` to the other node is refused there: only the fact crosses
    the bus (Redis reads far fewer bytes than the body), and the owner closes the session
    with 413 as it would have itself."""
    url = fresh_url(redis_url)
    admin = aioredis.from_url(url)
    async with (
        asyncio.timeout(TEST_TIMEOUT),
        two_nodes(tmp_path, url, "--max-payload", "100000") as nodes,
        aiohttp.ClientSession() as http,
    ):
        (_, a), (_, b) = nodes
        sid = await handshake(http, a)
        query = f"{EIO}&sid={sid}"
        body = "4" + "x" * 400_000
        before = int((await admin.info("stats"))["total_net_input_bytes"])
        async with http.post(b + query, data=body) as response:
            assert (response.status, await response.json()) == (413, {"code": 3, "message": "Payload too large"})
        read = int((await admin.info("stats"))["total_net_input_bytes"]) - before
        async with http.get(a + query) as response:  # closed by the owner
            assert (response.status, await response.json()) == (400, {"code": 1, "message": "Session ID unknown"})
    await admin.aclose()
    print(f"\nRedis read {read} bytes while a {len(body)}-byte body was refused")
    assert read < 50_000


# -- one node: as before --------------------------------------------------------------------------
async def test_one_node_keeps_plain_session_ids_and_forwards_nothing() -> None:
    """With no other node (``LocalCluster``) nothing is forwarded: sids name no node, and a
    sid naming one is unknown here, 400 as always."""
    from servers import running

    app = App(Hub(), Settings(task_db=":memory:"))
    assert app.engine.forwarding is None
    async with asyncio.timeout(WAIT), running(app) as server, aiohttp.ClientSession() as http:
        sid = await handshake(http, server.url)
        assert owner_of(sid) is None
        async with http.get(f"{server.url}{EIO}&sid=another-node.{sid}") as response:
            assert (response.status, await response.json()) == (400, {"code": 1, "message": "Session ID unknown"})
    assert app.engine.forward_stats.forwarded == 0


def test_a_sid_names_its_owner_or_nothing() -> None:
    """The owner is what precedes the sid's last dot; a sid without one, or too long to be
    ours, names no node (and is never forwarded)."""
    assert owner_of("n0de.id.abc") == "n0de.id"
    assert owner_of("Xk3p_a9Qz1-w.tok") == "Xk3p_a9Qz1-w"
    for sid in ("plain", ".tok", "node.", "x" * 120 + ".tok-long"):
        assert owner_of(sid) is None
