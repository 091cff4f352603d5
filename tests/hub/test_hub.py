"""Hub: room bookkeeping, publish and fan-out, slow consumers, subscribe, threads, handlers.

Each test runs once per broker (``broker_kind``, tests/hub/conftest.py): ``memory`` delivers
inside ``publish``, ``async`` and ``redis`` later, so a test awaits the joins it publishes to
(as the hub asks of code that must not miss a publication) and ``fanned_out`` before it looks
at what members were written.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from brokers import fanned_out, make_hub
from hub_doubles import ConnFactory, CountingEncoder, RecordingConnection
from loopstep import yield_to_loop

from roomcast import disconnect
from roomcast.errors import ConnectionRefused
from roomcast.hub import Hub
from roomcast.types import StreamPosition, Subscription

WAIT = 2.0  # seconds any asynchronous outcome may take before the test fails

HUB_ONLY = pytest.mark.parametrize("broker_kind", ["memory"])
"""For a test of the hub alone: the handler registry never reaches the broker, so one run says
all (the fixture's ``hub`` is still a started one, over ``memory``)."""


def offsets_of(conn: RecordingConnection) -> list[int]:
    """Offsets of what ``conn`` was written (CountingEncoder puts the offset last)."""
    return [encoded[-1] for encoded in conn.written]


# -- rooms and membership ----------------------------------------------------------------


async def test_join_leave_rooms_members_bookkeeping(hub: Hub, make_conn: ConnFactory) -> None:
    a, b, c = make_conn(), make_conn(), make_conn()
    hub.join(a, "r1")
    hub.join(b, "r1")
    hub.join(b, "r2")
    c.join("r2")  # the Connection API delegates to the hub
    assert hub.rooms() == {"r1": 2, "r2": 2}
    assert hub.members("r1") == [a, b]
    assert set(hub.members("r2")) == {b, c}
    assert a.rooms == {"r1"} and b.rooms == {"r1", "r2"} and c.rooms == {"r2"}
    assert hub.members("nobody-here") == []

    b.leave("r1")
    assert hub.rooms() == {"r1": 1, "r2": 2}
    assert hub.members("r1") == [a]
    assert b.rooms == {"r2"}


async def test_double_join_is_counted_once(hub: Hub, make_conn: ConnFactory) -> None:
    a = make_conn()
    hub.join(a, "r")
    await hub.join(a, "r")
    assert hub.rooms() == {"r": 1}
    assert hub.members("r") == [a]
    await hub.publish("r", "ev")
    await fanned_out(hub, "r")
    assert len(a.written) == 1  # and written once per publication
    hub.leave(a, "r")
    assert hub.rooms() == {}


async def test_leaving_the_last_member_deletes_the_room(hub: Hub, make_conn: ConnFactory) -> None:
    a, b = make_conn(), make_conn()
    hub.join(a, "r")
    hub.join(b, "r")
    hub.leave(a, "r")
    assert "r" in hub.rooms()
    hub.leave(b, "r")
    assert "r" not in hub.rooms()
    assert hub.members("r") == []
    # publishing to the now-empty room writes nothing
    await hub.publish("r", "ev")
    assert a.written == [] and b.written == []


async def test_leave_of_a_non_member_changes_nothing(hub: Hub, make_conn: ConnFactory) -> None:
    a, b = make_conn(), make_conn()
    hub.join(a, "r")
    hub.leave(b, "r")
    hub.leave(b, "unknown")
    assert hub.rooms() == {"r": 1}
    assert b.rooms == set()


async def test_remove_connection_clears_every_membership(hub: Hub, make_conn: ConnFactory) -> None:
    a, b = make_conn(), make_conn()
    for room in ("r1", "r2", "r3"):
        hub.join(a, room)
    await hub.join(b, "r2")
    assert hub.connections == {a.id: a, b.id: b}
    hub.remove_connection(a)
    assert a.rooms == set()
    assert hub.rooms() == {"r2": 1}
    assert hub.members("r2") == [b]
    assert hub.connections == {b.id: b}
    for room in ("r1", "r2", "r3"):
        await hub.publish(room, "ev")
    await fanned_out(hub, "r1", "r2", "r3")
    assert a.written == []
    assert offsets_of(b) == [1]
    hub.remove_connection(a)  # a second call is harmless
    assert hub.connections == {b.id: b}


# -- publish and fan-out -------------------------------------------------------------------


async def test_publish_returns_increasing_offsets_per_room(hub: Hub) -> None:
    epoch = (await hub.broker.position("a")).epoch
    assert [await hub.publish("a", "ev", i) for i in range(3)] == [
        StreamPosition(epoch, 1),
        StreamPosition(epoch, 2),
        StreamPosition(epoch, 3),
    ]
    assert (await hub.publish("b", "ev")).offset == 1
    assert await hub.publish("a", "ev") == StreamPosition(epoch, 4)


async def test_publish_delivers_event_and_args_to_members_only(hub: Hub, make_conn: ConnFactory) -> None:
    member, outsider = make_conn(), make_conn()
    await hub.join(member, "r")
    await hub.join(outsider, "elsewhere")
    await hub.publish("r", "chat", "hi", {"n": 1})
    await fanned_out(hub, "r", "elsewhere")
    assert member.written == [["enc", "chat", ("hi", {"n": 1}), 1]]
    assert outsider.written == []


async def test_one_encode_per_publication_for_1000_members_and_the_same_object_for_all(
    hub: Hub, make_conn: ConnFactory, encoder: CountingEncoder
) -> None:
    members = [make_conn() for _ in range(1000)]
    for conn in members:
        await hub.join(conn, "big")

    await hub.publish("big", "tick", 0)
    await fanned_out(hub, "big")
    assert encoder.calls == 1

    for i in range(1, 100):
        await hub.publish("big", "tick", i)
    await fanned_out(hub, "big")
    assert encoder.calls == 100

    first = members[0]
    assert offsets_of(first) == list(range(1, 101))  # in publish order
    for conn in members:
        assert len(conn.written) == 100
        for mine, reference in zip(conn.written, first.written, strict=True):
            assert mine is reference
    assert hub.delivered == 100 * 1000
    assert hub.slow_disconnects == 0


async def test_two_encoders_encode_exactly_twice(hub: Hub, make_conn: ConnFactory) -> None:
    sio, sse = CountingEncoder("sio"), CountingEncoder("sse")
    sio_conns = [make_conn(sio) for _ in range(5)]
    sse_conns = [make_conn(sse) for _ in range(3)]
    for conn in sio_conns + sse_conns:
        await hub.join(conn, "r")

    await hub.publish("r", "ev", 1)
    await fanned_out(hub, "r")

    assert (sio.calls, sse.calls) == (1, 1)
    sio_obj, sse_obj = sio_conns[0].written[0], sse_conns[0].written[0]
    assert sio_obj is not sse_obj
    assert sio_obj[0] == "sio" and sse_obj[0] == "sse"
    assert all(c.written == [sio_obj] and c.written[0] is sio_obj for c in sio_conns)
    assert all(c.written == [sse_obj] and c.written[0] is sse_obj for c in sse_conns)


async def test_encoder_is_not_called_for_a_room_without_members(
    hub: Hub, make_conn: ConnFactory, encoder: CountingEncoder
) -> None:
    await hub.join(make_conn(), "other")
    await hub.publish("empty", "ev")
    await fanned_out(hub, "empty", "other")
    assert encoder.calls == 0


async def test_slow_consumer_is_disconnected_after_everyone_else_was_written(hub: Hub, make_conn: ConnFactory) -> None:
    log: list[str] = []
    enc_a, enc_b = CountingEncoder("a"), CountingEncoder("b")
    conns = [
        make_conn(enc_a, log=log),
        make_conn(enc_a, log=log, accept=False),  # buffer full
        make_conn(enc_a, log=log),
        make_conn(enc_b, log=log),
    ]
    fast = [conns[0], conns[2], conns[3]]
    slow = conns[1]
    for conn in conns:
        await hub.join(conn, "r")

    await hub.publish("r", "ev", 1)
    await fanned_out(hub, "r")

    for conn in fast:
        assert len(conn.written) == 1
        assert conn.disconnects == []
    assert slow.disconnects == [disconnect.SLOW]
    assert hub.slow_disconnects == 1
    # every write, including those after the slow member, happened before the disconnect
    assert log[-1] == f"disconnect {slow.id}"
    assert sorted(log[:-1]) == sorted(f"write {c.id}" for c in conns)


async def test_several_slow_consumers_each_disconnected_once(hub: Hub, make_conn: ConnFactory) -> None:
    slow = [make_conn(accept=False) for _ in range(3)]
    fast = make_conn()
    for conn in [*slow, fast]:
        await hub.join(conn, "r")
    await hub.publish("r", "ev")
    await fanned_out(hub, "r")
    assert [c.disconnects for c in slow] == [[disconnect.SLOW]] * 3
    assert hub.slow_disconnects == 3
    assert fast.disconnects == [] and len(fast.written) == 1


async def test_aclose_disconnects_every_connection_with_shutdown(make_conn: ConnFactory, hub: Hub) -> None:
    a, b = make_conn(), make_conn()
    hub.join(a, "r")
    await hub.aclose()
    assert a.disconnects == [disconnect.SHUTDOWN]
    assert b.disconnects == [disconnect.SHUTDOWN]
    with pytest.raises(RuntimeError):
        hub.publish_threadsafe("r", "ev")


# -- subscribe: snapshot and recovery -----------------------------------------------------


async def test_subscribe_without_provider_returns_none_snapshot_and_current_position(
    hub: Hub, make_conn: ConnFactory
) -> None:
    await hub.publish("r", "ev")
    await hub.publish("r", "ev")
    conn = make_conn()
    sub = await hub.subscribe(conn, "r")
    assert sub == Subscription("r", await hub.broker.position("r"), recovered=False, snapshot=None)
    assert sub.position.offset == 2
    assert hub.members("r") == [conn]
    assert "r" in conn.rooms


async def test_subscribe_to_a_fresh_room_starts_at_offset_0(hub: Hub, make_conn: ConnFactory) -> None:
    sub = await hub.subscribe(make_conn(), "new")
    assert sub.position.offset == 0 and sub.recovered is False


async def test_subscribe_uses_a_sync_snapshot_provider_by_glob(hub: Hub, make_conn: ConnFactory) -> None:
    asked: list[str] = []

    @hub.snapshot("project:*")
    def project_state(room: str) -> dict[str, Any]:
        asked.append(room)
        return {"room": room, "tasks": [1, 2]}

    assert project_state.__name__ == "project_state"  # the decorator returns the provider
    conn = make_conn()
    sub = await hub.subscribe(conn, "project:42")
    assert sub.snapshot == {"room": "project:42", "tasks": [1, 2]}
    assert sub.recovered is False
    assert asked == ["project:42"]
    assert hub.members("project:42") == [conn]

    other = await hub.subscribe(conn, "chat:1")
    assert other.snapshot is None
    assert asked == ["project:42"]


async def test_subscribe_awaits_an_async_snapshot_provider(hub: Hub, make_conn: ConnFactory) -> None:
    @hub.snapshot("doc:*")
    async def doc_state(room: str) -> str:
        await yield_to_loop()  # a real provider awaits I/O here
        return f"state of {room}"

    conn = make_conn()
    sub = await hub.subscribe(conn, "doc:7")
    assert sub.snapshot == "state of doc:7"
    assert hub.members("doc:7") == [conn]


async def test_first_matching_snapshot_pattern_wins(hub: Hub, make_conn: ConnFactory) -> None:
    hub.snapshot("a:special")(lambda room: "special")
    hub.snapshot("a:*")(lambda room: "generic")
    hub.snapshot("a:special")(lambda room: "never")
    assert (await hub.subscribe(make_conn(), "a:special")).snapshot == "special"
    assert (await hub.subscribe(make_conn(), "a:other")).snapshot == "generic"


async def test_publications_after_subscribe_arrive_and_earlier_ones_do_not(hub: Hub, make_conn: ConnFactory) -> None:
    for i in range(3):
        await hub.publish("r", "ev", i)
    conn = make_conn()
    sub = await hub.subscribe(conn, "r")
    assert sub.position.offset == 3
    await hub.publish("r", "ev", 3)
    await hub.publish("r", "ev", 4)
    await fanned_out(hub, "r")
    assert offsets_of(conn) == [4, 5]


async def test_subscribe_during_a_concurrent_publisher_misses_nothing_and_repeats_nothing(
    hub: Hub, make_conn: ConnFactory
) -> None:
    total = 60
    halfway = asyncio.Event()

    async def publisher() -> None:
        for i in range(1, total + 1):
            await hub.publish("r", "ev", i)
            if i == total // 2:
                halfway.set()
            await yield_to_loop()  # let the subscriber interleave

    task = asyncio.create_task(publisher())
    async with asyncio.timeout(WAIT):
        await halfway.wait()
    conn = make_conn()
    sub = await hub.subscribe(conn, "r")
    async with asyncio.timeout(WAIT):
        await task
    await fanned_out(hub, "r")
    start = sub.position.offset
    assert total // 2 <= start < total
    assert offsets_of(conn) == list(range(start + 1, total + 1))


async def test_recovery_returns_exactly_the_missed_publications_in_order(hub: Hub, make_conn: ConnFactory) -> None:
    first = make_conn()
    sub = await hub.subscribe(first, "r")
    await hub.publish("r", "ev", "a")
    await hub.publish("r", "ev", "b")
    await fanned_out(hub, "r")
    epoch, seen = sub.position.epoch, offsets_of(first)[-1]
    assert seen == 2

    hub.remove_connection(first)  # the client drops ...
    await hub.publish("r", "missed", 1, "x")
    await hub.publish("r", "missed", 2)
    await hub.publish("r", "missed", 3)

    again = make_conn()  # ... and comes back with what it last saw
    back = await hub.subscribe(again, "r", since=StreamPosition(epoch, seen))
    assert (back.room, back.position, back.recovered, back.snapshot) == ("r", StreamPosition(epoch, 5), True, None)
    assert [(p.event, p.data, p.position.offset) for p in back.publications] == [
        ("missed", (1, "x"), 3),
        ("missed", (2,), 4),
        ("missed", (3,), 5),
    ]
    assert again.written == []
    await hub.publish("r", "live")
    await fanned_out(hub, "r")
    assert offsets_of(again) == [6]  # live stream continues right after the recovered ones


async def test_recovery_at_the_current_offset_returns_nothing_missed(hub: Hub, make_conn: ConnFactory) -> None:
    await hub.publish("r", "ev")
    sub = await hub.subscribe(make_conn(), "r", since=await hub.broker.position("r"))
    assert sub.recovered is True
    assert sub.publications == ()
    assert sub.position.offset == 1


@pytest.mark.parametrize("stale", ["wrong-epoch", "ahead"])
async def test_unrecoverable_position_falls_back_to_the_snapshot(hub: Hub, make_conn: ConnFactory, stale: str) -> None:
    hub.snapshot("r")(lambda room: {"fresh": True})
    for _ in range(3):
        await hub.publish("r", "ev")
    epoch = (await hub.broker.position("r")).epoch
    since = StreamPosition("old-epoch", 1) if stale == "wrong-epoch" else StreamPosition(epoch, 99)
    conn = make_conn()
    sub = await hub.subscribe(conn, "r", since=since)
    assert sub == Subscription("r", StreamPosition(epoch, 3), recovered=False, snapshot={"fresh": True})
    assert hub.members("r") == [conn]


async def test_recovery_after_history_was_trimmed_falls_back_to_the_snapshot(broker_kind: str) -> None:
    small = make_hub(broker_kind, history_size=2)
    await small.start()
    try:
        small.snapshot("*")(lambda room: "snap")
        for _ in range(5):
            await small.publish("r", "ev")
        conn = RecordingConnection("x", hub=small, encoder=CountingEncoder())
        epoch = (await small.broker.position("r")).epoch
        sub = await small.subscribe(conn, "r", since=StreamPosition(epoch, 1))
        assert sub.recovered is False and sub.snapshot == "snap" and sub.position.offset == 5
    finally:
        await small.aclose()


async def test_publication_during_an_async_snapshot_is_not_lost(hub: Hub, make_conn: ConnFactory) -> None:
    """The subscriber's view (snapshot + publications after the returned offset) must equal
    the application's state, even when a publication lands while the provider awaits I/O."""
    items: list[str] = []  # the application's state for room "list"
    provider_reading = asyncio.Event()
    io_done = asyncio.Event()

    @hub.snapshot("list")
    async def list_state(room: str) -> list[str]:
        copy = list(items)  # the database read ...
        provider_reading.set()
        await io_done.wait()  # ... and the network round trip that returns it
        return copy

    async def add(item: str) -> None:
        items.append(item)  # update the state, then publish it (no await in between)
        await hub.publish("list", "added", item)

    conn = make_conn()
    subscribe = asyncio.create_task(hub.subscribe(conn, "list"))
    async with asyncio.timeout(WAIT):
        await provider_reading.wait()
    await add("x")
    io_done.set()
    async with asyncio.timeout(WAIT):
        sub = await subscribe
    await add("y")
    await fanned_out(hub, "list")

    view = (
        list(sub.snapshot)
        + [p.data[0] for p in sub.publications]
        + [encoded[2][0] for encoded in conn.written if encoded[-1] > sub.position.offset]
    )
    assert view == items == ["x", "y"]


# -- publishing from sync code and other threads --------------------------------------------


async def test_publish_threadsafe_from_another_thread_delivers(hub: Hub, make_conn: ConnFactory) -> None:
    conn = make_conn()
    await hub.join(conn, "jobs")
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            result["position"] = hub.publish_threadsafe("jobs", "done", 42).result(timeout=WAIT)
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    async with asyncio.timeout(WAIT + 1):
        await asyncio.to_thread(thread.join, WAIT)
    assert not thread.is_alive()
    assert "error" not in result, result.get("error")
    assert result["position"] == await hub.broker.position("jobs")
    assert result["position"].offset == 1
    await fanned_out(hub, "jobs")
    assert conn.written == [["enc", "done", (42,), 1]]


async def test_sync_callback_calling_publish_without_await_never_delivers(hub: Hub, make_conn: ConnFactory) -> None:
    """The trap: a sync progress callback calls the async ``publish`` and drops the coroutine."""
    conn = make_conn()
    hub.join(conn, "job")

    def on_progress_wrong(percent: int) -> Any:
        return hub.publish("job", "progress", percent)  # a coroutine nobody awaits

    coro = on_progress_wrong(50)
    assert asyncio.iscoroutine(coro)
    coro.close()  # what happens to it eventually: it is dropped without ever running
    assert conn.written == []
    assert (await hub.broker.position("job")).offset == 0


async def test_sync_callback_on_the_loop_thread_delivers_with_publish_threadsafe(
    hub: Hub, make_conn: ConnFactory
) -> None:
    conn = make_conn()
    await hub.join(conn, "job")
    futures: list[Any] = []

    def on_progress(percent: int) -> None:  # sync code running on the loop's own thread
        futures.append(hub.publish_threadsafe("job", "progress", percent))

    callback_ran = asyncio.Event()

    def loop_callback() -> None:  # e.g. a progress hook invoked by a library via call_soon
        on_progress(10)
        callback_ran.set()

    asyncio.get_running_loop().call_soon(loop_callback)
    on_progress(20)  # also directly from a sync function called by a coroutine
    async with asyncio.timeout(WAIT):
        await callback_ran.wait()
        positions = [await asyncio.wrap_future(f) for f in futures]
    await fanned_out(hub, "job")
    assert sorted(p.offset for p in positions) == [1, 2]
    assert sorted(encoded[2][0] for encoded in conn.written) == [10, 20]


# Once: the hub refuses before it has started a broker.
def test_publish_threadsafe_before_start_raises_a_clear_error() -> None:
    hub = Hub()
    with pytest.raises(RuntimeError, match=r"start\(\)"):
        hub.publish_threadsafe("r", "ev")


# -- handler registry -------------------------------------------------------------------


@HUB_ONLY
async def test_handler_registration_by_namespace(hub: Hub) -> None:
    @hub.on("chat")
    def chat(conn: Any, text: str) -> str:
        return text.upper()

    @hub.on("chat", namespace="/admin")
    async def admin_chat(conn: Any, text: str) -> tuple[str, int]:
        return text, 2

    @hub.on_connect(namespace="/live")
    def connect(conn: Any, auth: Any) -> None:
        return None

    @hub.on_disconnect(namespace="/gone")
    def gone(conn: Any, reason: Any) -> None:
        return None

    hub.add_namespace("/quiet")

    assert hub.handler("/", "chat") is chat
    assert hub.handler("/admin", "chat") is admin_chat
    assert hub.handler("/live", "chat") is None
    assert hub.handler("/", "unknown") is None
    assert hub.connect_handler("/live") is connect
    assert hub.connect_handler("/") is None
    assert hub.handlers.disconnect_handler("/gone") is gone
    assert hub.handlers.namespaces == {"/", "/admin", "/live", "/gone", "/quiet"}

    assert await _dispatched(hub, chat, None, "hi") == "HI"
    assert await _dispatched(hub, admin_chat, None, "hi") == ("hi", 2)


async def _dispatched(hub: Hub, handler: Any, *args: Any) -> Any:
    """Dispatch through the registry (sync inline, async as a task) and return the result."""
    result: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    hub.handlers.dispatch(handler, args, on_result=result.set_result, on_error=result.set_exception)
    async with asyncio.timeout(WAIT):
        return await result


@HUB_ONLY
async def test_a_refusal_listed_as_expected_is_not_counted_as_a_failure(hub: Hub) -> None:
    def refuse(conn: Any) -> None:
        raise ConnectionRefused("no")

    errors: list[Exception] = []
    hub.handlers.dispatch(refuse, (None,), on_error=errors.append, expected=(ConnectionRefused,))
    assert [str(e) for e in errors] == ["no"] and hub.handlers.failures == 0


@HUB_ONLY
async def test_later_registration_replaces_the_handler(hub: Hub) -> None:
    hub.on("ev")(lambda conn: 1)
    second = hub.on("ev")(lambda conn: 2)
    assert hub.handler("/", "ev") is second


@HUB_ONLY
async def test_failing_handler_is_counted_logged_and_handed_to_on_error(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    @hub.on("boom")
    async def boom(conn: Any) -> None:
        raise ValueError("bad input")

    errors: asyncio.Queue[Exception] = asyncio.Queue()
    results: list[Any] = []
    hub.handlers.dispatch(boom, (None,), on_result=results.append, on_error=errors.put_nowait)
    async with asyncio.timeout(WAIT):
        assert isinstance(await errors.get(), ValueError)
    assert results == []
    assert hub.handlers.failures == 1
    assert any("boom" in r.getMessage() for r in caplog.records)


async def test_a_connection_that_ends_during_an_async_snapshot_is_not_left_in_the_room(
    hub: Hub, make_conn: ConnFactory
) -> None:
    from roomcast.errors import ConnectionClosed

    entered, release = asyncio.Event(), asyncio.Event()

    @hub.snapshot("slow:*")
    async def slow(room: str) -> str:
        entered.set()
        await release.wait()
        return "state"

    conn = make_conn("leaving")
    subscribing = asyncio.ensure_future(hub.subscribe(conn, "slow:1"))
    async with asyncio.timeout(5):
        await entered.wait()
    conn.closed = True  # the transport ends it, as a real one does before remove_connection
    hub.remove_connection(conn)
    release.set()
    with pytest.raises(ConnectionClosed):
        await subscribing
    assert hub.members("slow:1") == [] and "slow:1" not in hub.rooms()


async def test_the_rooms_limit_holds_across_concurrent_subscribes(hub: Hub, make_conn: ConnFactory) -> None:
    """A slot is taken before the snapshot is awaited: 50 subscribes sent at once, limit 5."""
    from roomcast.errors import LimitExceeded

    release = asyncio.Event()

    @hub.snapshot("task:*")
    async def slow(room: str) -> str:
        await release.wait()
        return "state"

    hub.max_rooms_per_connection = 5
    conn = make_conn()
    attempts = [asyncio.ensure_future(hub.subscribe(conn, f"task:{n}")) for n in range(50)]
    await yield_to_loop()
    release.set()
    results = await asyncio.gather(*attempts, return_exceptions=True)
    assert sum(isinstance(r, LimitExceeded) for r in results) == 45
    assert len(conn.rooms) == 5 and len(hub.rooms()) == 5


async def test_a_closed_hub_refuses_publications_instead_of_acknowledging_them(broker_kind: str) -> None:
    from roomcast.errors import ShuttingDown

    hub = make_hub(broker_kind)
    await hub.start()
    await hub.aclose()
    with pytest.raises(ShuttingDown):
        await hub.publish("r", "ev", 1)
    await hub.start()  # started again: publishing again
    try:
        assert (await hub.publish("r", "ev", 1)).offset == 1
    finally:
        await hub.aclose()
