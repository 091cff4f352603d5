"""Socket.IO connection state recovery on the wire, with raw WebSocket clients on real sockets.

What a client of the official protocol sees: a ``pid`` in the CONNECT reply, an offset as the
last argument of every event sent without an ack id, and, when it comes back with
``{pid, offset}`` in its CONNECT auth, the same ``sid``, its rooms and exactly the
publications it missed. Everything waits on messages or server events with timeouts; a lost
transport is a client closing its TCP socket, which the server sees as ``transport close``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from rawclient import RawWebSocket, call, open_websocket
from servers import RunningServer, running

from roomcast import ConnectionRefused, _json
from roomcast.broker.memory import MemoryBroker
from roomcast.hub.connection import Connection
from roomcast.server.app import App
from roomcast.transports.recovery import Recovery
from roomcast.transports.socketio import SioSocket
from roomcast.types import Publication, StreamPosition

WINDOW = 120.0


class Observer:
    """What the server's handlers saw, and a gate that holds comebacks in the connect handler."""

    def __init__(self) -> None:
        self.connects: list[dict[str, Any]] = []
        self.disconnected: asyncio.Queue[str] = asyncio.Queue()
        self.gate: asyncio.Future[None] | None = None
        self.entered = asyncio.Event()


@pytest.fixture
def observer() -> Observer:
    return Observer()


def _install(app: App, observer: Observer) -> App:
    """Handlers shared by the servers below: connect/disconnect observers, poke, ask, custom ns."""
    hub = app.hub

    async def connect(conn: Connection, auth: Any) -> None:
        recovered = isinstance(conn, SioSocket) and conn.recovered
        observer.connects.append({"id": conn.id, "recovered": recovered, "auth": auth, "data": dict(conn.data)})
        if auth.get("token") == "revoked":
            raise ConnectionRefused("token revoked")
        if recovered and observer.gate is not None:
            observer.entered.set()
            await observer.gate
        if not recovered:
            conn.data["user"] = auth.get("token")
        conn.emit("welcome", conn.id)

    def disconnected(conn: Connection, reason: str) -> None:
        observer.disconnected.put_nowait(conn.id)

    def poke(conn: Connection, value: Any = None) -> None:
        conn.emit("poked", value)

    async def ask(conn: Connection, question: Any = None) -> Any:
        return await conn.call("question", question, timeout=5)

    def join(conn: Connection, request: Any) -> bool:
        conn.join(request["room"])
        return True

    for namespace in ("/", "/custom"):
        hub.on_connect(namespace=namespace)(connect)
        hub.on_disconnect(namespace=namespace)(disconnected)
    hub.on("poke")(poke)
    hub.on("ask")(ask)
    hub.on("join", namespace="/custom")(join)
    return app


@pytest.fixture
async def srv(make_app: Callable[..., App], observer: Observer) -> AsyncIterator[RunningServer]:
    async with running(_install(make_app(recovery_window=WINDOW), observer)) as s:
        yield s


# -- a raw Socket.IO client --------------------------------------------------------------------
def _prefix(kind: str, namespace: str) -> str:
    return kind if namespace == "/" else f"{kind}{namespace},"


async def connect(srv: RunningServer, auth: Any = None, namespace: str = "/") -> tuple[RawWebSocket, str]:
    """Open a WebSocket session and CONNECT to ``namespace``; return it and the reply text."""
    client = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
    assert client.status == 101
    opened = await client.recv()
    assert isinstance(opened, str) and opened.startswith("0")
    client.send(_prefix("40", namespace) + (_json.dumps_str(auth) if auth is not None else ""))
    reply = await client.recv()
    assert isinstance(reply, str), reply
    return client, reply


def connect_body(reply: str, namespace: str = "/") -> dict[str, Any]:
    prefix = _prefix("40", namespace)
    assert reply.startswith(prefix + "{"), reply
    body: dict[str, Any] = _json.loads(reply[len(prefix) :])
    return body


async def event(client: RawWebSocket, namespace: str = "/") -> list[Any]:
    """The next message, which must be a plain EVENT of ``namespace``: its argument array."""
    message = await client.recv()
    prefix = _prefix("42", namespace)
    assert isinstance(message, str) and message.startswith(prefix + "["), message
    args: list[Any] = _json.loads(message[len(prefix) :])
    return args


async def joined(client: RawWebSocket, *rooms: str) -> None:
    for ack_id, room in enumerate(rooms, start=100):
        assert await call(client, ack_id, "join", {"room": room}) == [True]


async def lose(client: RawWebSocket, observer: Observer, sid: str) -> None:
    """Drop the TCP connection and wait until the server has ended the socket."""
    client.close()
    async with asyncio.timeout(5):
        assert await observer.disconnected.get() == sid


async def fresh(
    srv: RunningServer, observer: Observer, *rooms: str, token: str = "t"
) -> tuple[RawWebSocket, dict[str, Any]]:
    """A connected, welcomed client, member of ``rooms``."""
    client, reply = await connect(srv, {"token": token})
    body = connect_body(reply)
    assert (await event(client))[:2] == ["welcome", body["sid"]]
    await joined(client, *rooms)
    return client, body


def recovery_of(srv: RunningServer) -> Recovery:
    recovery = srv.app.socketio.recovery
    assert recovery is not None
    return recovery


# -- the wire ---------------------------------------------------------------------------------
@pytest.mark.parametrize("namespace", ["/", "/custom"])
async def test_connect_reply_carries_a_pid(srv: RunningServer, namespace: str) -> None:
    client, reply = await connect(srv, {"token": "t"}, namespace)
    try:
        body = connect_body(reply, namespace)
        assert list(body) == ["sid", "pid"]
        assert isinstance(body["pid"], str) and body["pid"] and body["pid"] != body["sid"]
    finally:
        client.close()


async def test_events_carry_offsets_acks_and_calls_do_not(srv: RunningServer, observer: Observer) -> None:
    client, _ = await fresh(srv, observer, "r")  # the join acks were `43N[true]`: no offset
    other, _ = await connect(srv, {"token": "t"}, "/custom")
    try:
        assert (await event(other, "/custom"))[0] == "welcome"
        client.send('42["poke","before"]')  # nothing published yet: the record's start
        first = await event(client)
        assert first[:2] == ["poked", "before"] and isinstance(first[2], str)
        other.send('42/custom,1["join",{"room":"r"}]')
        assert await other.recv() == "43/custom,1[true]"  # an ack: no offset

        await srv.hub.publish("r", "news", {"n": 1})
        news = await event(client)
        assert news[:2] == ["news", {"n": 1}] and isinstance(news[2], str) and news[2] != first[2]
        assert await event(other, "/custom") == news  # one offset per publication, any namespace

        await srv.hub.publish("elsewhere", "news", {"n": 2})  # no socket has it: not in the trail
        await srv.hub.publish("r", "news", {"n": 3})
        later = await event(client)
        assert recovery_of(srv).parse_offset(later[2]) == recovery_of(srv).parse_offset(news[2]) + 1
        assert await event(other, "/custom") == later
        client.send('42["poke","after"]')
        poked = await event(client)
        assert poked[:2] == ["poked", "after"]
        assert poked[2] == later[2]  # the head: everything written before it reached the client

        client.send('427["ask",21]')  # the server calls back: an event with an ack id
        question = await client.recv()
        assert question == '420["question",21]'
        client.send("430[42]")
        assert await client.recv() == "437[42]"

        await srv.hub.publish("r", "blob", b"\x01\x02", "x")
        head = await client.recv()
        assert isinstance(head, str) and head.startswith('451-["blob",{"_placeholder":true,"num":0},"x",')
        offset = _json.loads(head[len("451-") :])[-1]
        assert recovery_of(srv).parse_offset(offset) == recovery_of(srv).head
        assert await client.recv() == b"\x01\x02"
    finally:
        client.close()
        other.close()


async def test_recovery_disabled_keeps_the_wire_unchanged(make_app: Callable[..., App], observer: Observer) -> None:
    async with running(_install(make_app(recovery_window=0), observer)) as srv:
        assert srv.app.socketio.recovery is None
        client, reply = await connect(srv, {"token": "t", "pid": "p", "offset": "o"})
        try:
            body = connect_body(reply)
            assert list(body) == ["sid"]
            assert observer.connects[-1]["auth"] == {"token": "t", "pid": "p", "offset": "o"}  # not ours to strip
            assert await client.recv() == f'42["welcome","{body["sid"]}"]'
            await joined(client, "r")
            await srv.hub.publish("r", "news", {"n": 1})
            assert await client.recv() == '42["news",{"n":1}]'
            client.send('42["poke",1]')
            assert await client.recv() == '42["poked",1]'
        finally:
            client.close()


# -- coming back ------------------------------------------------------------------------------
async def test_a_lost_socket_comes_back_with_its_id_rooms_data_and_missed_publications(
    srv: RunningServer, observer: Observer
) -> None:
    client, body = await fresh(srv, observer, "a", "b", token="ann")
    sid, pid = body["sid"], body["pid"]
    await srv.hub.publish("a", "news", {"n": 1})
    seen = await event(client)
    assert seen[:2] == ["news", {"n": 1}]
    await lose(client, observer, sid)
    assert srv.hub.rooms() == {} and recovery_of(srv).saved_sessions == 1

    await srv.hub.publish("a", "news", {"n": 2})
    await srv.hub.publish("c", "news", {"n": "not mine"})
    await srv.hub.publish("b", "news", {"n": 3})

    back, reply = await connect(srv, {"token": "ann", "pid": pid, "offset": seen[2]})
    try:
        assert connect_body(reply) == {"sid": sid, "pid": pid}
        replayed = [await event(back), await event(back)]
        assert [args[:2] for args in replayed] == [["news", {"n": 2}], ["news", {"n": 3}]]
        welcome = await event(back)  # the connect handler's emit comes after the replay
        assert welcome[:2] == ["welcome", sid] and welcome[2] == recovery_of(srv).head_offset
        assert observer.connects[-1] == {
            "id": sid,
            "recovered": True,
            "auth": {"token": "ann"},
            "data": {"user": "ann"},
        }
        assert srv.hub.rooms() == {"a": 1, "b": 1}
        await srv.hub.publish("b", "news", {"n": 4})
        assert (await event(back))[:2] == ["news", {"n": 4}]
        assert recovery_of(srv).saved_sessions == 0
    finally:
        back.close()


async def test_a_session_is_restored_at_most_once(srv: RunningServer, observer: Observer) -> None:
    client, body = await fresh(srv, observer, "r")
    await lose(client, observer, body["sid"])
    auth = {"token": "t", "pid": body["pid"]}
    first, reply = await connect(srv, auth)
    second, again = await connect(srv, auth)
    try:
        assert connect_body(reply) == {"sid": body["sid"], "pid": body["pid"]}
        other = connect_body(again)
        assert other["sid"] != body["sid"] and other["pid"] != body["pid"]
        assert [c["recovered"] for c in observer.connects[-2:]] == [True, False]
    finally:
        first.close()
        second.close()


async def test_a_comeback_without_offset_gets_everything_since_it_connected(
    srv: RunningServer, observer: Observer
) -> None:
    """The official client omits ``offset`` when no event told it one: nothing seen at all."""
    client, body = await fresh(srv, observer, "r")
    await lose(client, observer, body["sid"])
    await srv.hub.publish("r", "news", {"n": 1})
    back, reply = await connect(srv, {"token": "t", "pid": body["pid"]})
    try:
        assert connect_body(reply)["sid"] == body["sid"]
        assert (await event(back))[:2] == ["news", {"n": 1}]
    finally:
        back.close()


async def test_publications_during_an_async_connect_handler_join_the_replay(
    srv: RunningServer, observer: Observer
) -> None:
    client, body = await fresh(srv, observer, "r")
    await srv.hub.publish("r", "news", {"n": 1})
    seen = await event(client)
    await lose(client, observer, body["sid"])
    await srv.hub.publish("r", "news", {"n": 2})

    observer.gate = asyncio.get_running_loop().create_future()
    back = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
    try:
        await back.recv()
        back.send("40" + _json.dumps_str({"token": "t", "pid": body["pid"], "offset": seen[2]}))
        async with asyncio.timeout(5):
            await observer.entered.wait()
        await srv.hub.publish("r", "news", {"n": 3})  # while the handler holds the comeback
        observer.gate.set_result(None)
        assert connect_body(str(await back.recv())) == {"sid": body["sid"], "pid": body["pid"]}
        assert [(await event(back))[1] for _ in range(2)] == [{"n": 2}, {"n": 3}]
        assert (await event(back))[0] == "welcome"
        await srv.hub.publish("r", "news", {"n": 4})
        assert (await event(back))[1] == {"n": 4}  # nothing twice
    finally:
        back.close()


async def test_a_comeback_lost_before_it_is_accepted_can_come_back_again(
    srv: RunningServer, observer: Observer
) -> None:
    client, body = await fresh(srv, observer, "r")
    await lose(client, observer, body["sid"])
    await srv.hub.publish("r", "news", {"n": 1})
    observer.gate = asyncio.get_running_loop().create_future()
    auth = {"token": "t", "pid": body["pid"]}
    ended = asyncio.Event()
    sio = srv.app.socketio
    on_close = sio.on_close

    def observed(session: Any, reason: Any) -> None:  # observe the server ending the session
        on_close(session, reason)
        ended.set()

    sio.on_close = observed  # type: ignore[method-assign]
    stalled = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
    await stalled.recv()
    stalled.send("40" + _json.dumps_str(auth))
    async with asyncio.timeout(5):
        await observer.entered.wait()
        stalled.close()
        await ended.wait()
    assert recovery_of(srv).saved_sessions == 1  # handed back: never accepted
    observer.gate.set_result(None)
    observer.gate = None
    back, reply = await connect(srv, auth)
    try:
        assert connect_body(reply)["sid"] == body["sid"]
        assert (await event(back))[:2] == ["news", {"n": 1}]
    finally:
        back.close()


async def test_a_gap_lost_during_the_connect_handler_gives_a_new_session(
    make_app: Callable[..., App], observer: Observer
) -> None:
    """History is read again at acceptance: the client is told, never silently short."""
    app = _install(make_app(recovery_window=WINDOW), observer)
    app.hub.broker = MemoryBroker(history_size=2)
    async with running(app) as srv:
        client, body = await fresh(srv, observer, "r")
        await srv.hub.publish("r", "news", {"n": 1})
        seen = await event(client)
        await lose(client, observer, body["sid"])
        await srv.hub.publish("r", "news", {"n": 2})
        observer.gate = asyncio.get_running_loop().create_future()
        back = await open_websocket(srv.host, srv.port, "/socket.io/?EIO=4&transport=websocket")
        try:
            await back.recv()
            back.send("40" + _json.dumps_str({"token": "t", "pid": body["pid"], "offset": seen[2]}))
            async with asyncio.timeout(5):
                await observer.entered.wait()
            for n in (3, 4):
                await srv.hub.publish("r", "news", {"n": n})  # history keeps 2: #2, which it lacks, goes
            observer.gate.set_result(None)
            reply = connect_body(str(await back.recv()))
            assert reply["pid"] != body["pid"]  # `socket.recovered` is false for the client
            assert (await event(back))[0] == "welcome"  # and no replay before it
            assert srv.hub.rooms() == {}
            assert await call(back, 1, "echo", "alive") == ["alive"]
        finally:
            back.close()


async def test_what_was_lost_in_flight_is_replayed_from_the_offset_the_client_has(
    srv: RunningServer, observer: Observer
) -> None:
    """Events written to the socket but never read are replayed from the client's offset."""
    client, body = await fresh(srv, observer, "a", "b")
    await srv.hub.publish("a", "news", {"n": 1})
    seen = await event(client)
    for n, room in ((2, "b"), (3, "a"), (4, "b")):  # written to the socket, never read by the client
        await srv.hub.publish(room, "news", {"n": n})
    await lose(client, observer, body["sid"])
    back, reply = await connect(srv, {"token": "t", "pid": body["pid"], "offset": seen[2]})
    try:
        assert connect_body(reply)["sid"] == body["sid"]
        replayed = [(await event(back))[1]["n"] for _ in range(3)]
        assert replayed == [2, 3, 4]  # in publication order, across rooms
        assert (await event(back))[0] == "welcome"
    finally:
        back.close()


async def test_a_refused_comeback_discards_the_session(srv: RunningServer, observer: Observer) -> None:
    client, body = await fresh(srv, observer, "r")
    await lose(client, observer, body["sid"])
    refused, reply = await connect(srv, {"token": "revoked", "pid": body["pid"]})
    refused.close()
    assert reply == '44{"message":"token revoked"}'
    back, reply = await connect(srv, {"token": "t", "pid": body["pid"]})
    try:
        assert connect_body(reply)["sid"] != body["sid"]
    finally:
        back.close()


async def test_unknown_pid_gives_a_new_session(srv: RunningServer, observer: Observer) -> None:
    client, reply = await connect(srv, {"token": "t", "pid": "no-such-pid", "offset": recovery_of(srv).head_offset})
    try:
        body = connect_body(reply)
        assert list(body) == ["sid", "pid"] and body["pid"] != "no-such-pid"
        assert observer.connects[-1]["recovered"] is False
        assert observer.connects[-1]["auth"] == {"token": "t"}
    finally:
        client.close()


BAD_AUTH = {
    "pid not a string": {"pid": 5},
    "pid null": {"pid": None},
    "pid an object": {"pid": {"a": 1}},
    "offset a number": {"offset": 7},
    "offset null": {"offset": None},
    "offset a list": {"offset": ["x"]},
    "offset garbage": {"offset": "nope"},
    "offset of another server": {"offset": "elsewhere.1"},
    "offset not hex": {"offset": "{epoch}.-1"},
    "offset with a prefix": {"offset": "{epoch}.0x1"},
    "offset in the future": {"offset": "{epoch}.ff"},
    "offset far too long": {"offset": "{epoch}." + "f" * 100},
    "offset huge": {"offset": "x" * 100_000},
}


@pytest.mark.parametrize("bad", list(BAD_AUTH))
async def test_bad_recovery_auth_gives_a_new_session(srv: RunningServer, observer: Observer, bad: str) -> None:
    client, body = await fresh(srv, observer, "r")
    await lose(client, observer, body["sid"])
    epoch = recovery_of(srv).epoch
    auth = {"token": "t", "pid": body["pid"]}
    auth.update({k: v.replace("{epoch}", epoch) if isinstance(v, str) else v for k, v in BAD_AUTH[bad].items()})
    back, reply = await connect(srv, auth)
    try:
        assert connect_body(reply)["sid"] != body["sid"]
        assert observer.connects[-1]["auth"] == {"token": "t"}
        assert (await event(back))[0] == "welcome"
        assert await call(back, 1, "echo", "alive") == ["alive"]
    finally:
        back.close()


async def test_a_client_namespace_disconnect_is_final(srv: RunningServer, observer: Observer) -> None:
    client, body = await fresh(srv, observer, "r")
    try:
        client.send("41")
        async with asyncio.timeout(5):
            assert await observer.disconnected.get() == body["sid"]
        assert recovery_of(srv).saved_sessions == 0
    finally:
        client.close()
    back, reply = await connect(srv, {"token": "t", "pid": body["pid"]})
    try:
        assert connect_body(reply)["sid"] != body["sid"]
    finally:
        back.close()


async def test_after_the_window_a_session_is_gone(make_app: Callable[..., App], observer: Observer) -> None:
    # A window of a nanosecond: any comeback, which takes network round trips, is too late.
    async with running(_install(make_app(recovery_window=1e-9), observer)) as srv:
        client, body = await fresh(srv, observer, "r")
        await lose(client, observer, body["sid"])
        back, reply = await connect(srv, {"token": "t", "pid": body["pid"]})
        try:
            assert connect_body(reply)["sid"] != body["sid"]
            assert observer.connects[-1]["recovered"] is False
        finally:
            back.close()


# -- the record's bounds ----------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _pub(room: str, n: int) -> Publication:
    return Publication(room, "news", (n,), StreamPosition("e", n), 0.0)


def _lost(recovery: Recovery, *, rooms: dict[str, int], written: int, since: int = 0, pid: str = "pid") -> None:
    positions = {room: StreamPosition("e", offset) for room, offset in rooms.items()}
    recovery.save(pid, sid="sid", namespace="/", positions=positions, data={}, since=since, written=written)


def _back(recovery: Recovery, seq: int | None, pid: str = "pid") -> dict[str, int] | None:
    auth: dict[str, Any] = {"pid": pid}
    if seq is not None:
        auth["offset"] = f"{recovery.epoch}.{seq:x}"
    resume = recovery.take("/", auth)
    return None if resume is None else {room: p.offset for room, p in resume.positions.items()}


def test_the_trail_numbers_each_publication_once_and_is_bounded() -> None:
    recovery = Recovery(10.0, capacity=3, clock=Clock())
    pub = _pub("r", 1)
    assert recovery.stamp(pub) == recovery.stamp(pub) == (1, f"{recovery.epoch}.1")  # two encoders, one entry
    for n in range(2, 6):
        recovery.stamp(_pub("r", n))
    assert len(recovery) == 3 and recovery.head == 5
    assert recovery.parse_offset(recovery.head_offset) == 5


def test_a_client_with_everything_written_resumes_at_its_positions() -> None:
    recovery = Recovery(60.0, clock=Clock())
    for n in (1, 2):
        recovery.stamp(_pub("r", n))
    _lost(recovery, rooms={"r": 2, "quiet": 7}, written=2)
    assert _back(recovery, 2) == {"r": 2, "quiet": 7}


def test_what_was_written_but_not_received_moves_each_room_back() -> None:
    recovery = Recovery(60.0, clock=Clock())
    recovery.stamp(_pub("a", 1))  # seq 1: received
    recovery.stamp(_pub("b", 5))  # seq 2: in flight
    recovery.stamp(_pub("a", 2))  # seq 3: in flight
    recovery.stamp(_pub("b", 6))  # seq 4: in flight
    recovery.stamp(_pub("other", 1))  # seq 5: not this socket's room
    _lost(recovery, rooms={"a": 2, "b": 6, "c": 3}, written=4)
    assert _back(recovery, 1) == {"a": 1, "b": 4, "c": 3}


def test_no_recovery_when_more_was_in_flight_than_the_trail_kept() -> None:
    recovery = Recovery(60.0, capacity=2, clock=Clock())
    for n in range(1, 5):
        recovery.stamp(_pub("r", n))  # the trail keeps seq 3 and 4
    _lost(recovery, rooms={"r": 4}, written=4)
    assert _back(recovery, 1) is None  # seq 2 may be lost and nobody knows its room any more
    assert recovery.saved_sessions == 0  # claimed: gone either way
    _lost(recovery, rooms={"r": 4}, written=4, pid="p2")
    assert _back(recovery, 2, pid="p2") == {"r": 2}


def test_an_offset_from_an_earlier_session_is_floored_at_this_one() -> None:
    """The official client keeps its last offset across sessions; the session start floors it."""
    recovery = Recovery(60.0, clock=Clock())
    recovery.stamp(_pub("r", 1))
    recovery.stamp(_pub("r", 2))
    _lost(recovery, rooms={"r": 3}, written=3, since=2)
    recovery.stamp(_pub("x", 1))
    assert recovery.head == 3
    assert _back(recovery, 1) == {"r": 3}  # seq 1 and 2 were before this session


def test_sessions_expire_and_are_purged() -> None:
    clock = Clock()
    recovery = Recovery(5.0, clock=clock)
    _lost(recovery, rooms={}, written=0)
    clock.now += 5.0
    _lost(recovery, rooms={}, written=0, pid="other")
    assert recovery.saved_sessions == 1
    assert recovery.take("/", {"pid": "pid"}) is None
    assert recovery.take("/custom", {"pid": "other"}) is None  # another namespace's: left alone
    assert recovery.saved_sessions == 1
    clock.now += 5.0
    assert recovery.take("/", {"pid": "other"}) is None
