"""A node's writes wait for its own publications on their way through Redis, and no longer.

``Hub.publish`` holds the native door's ``WriteCoalescer`` while a publication to a room with
members here goes to Redis and back; a flush due meanwhile waits, so what comes back
together is written together (one write per connection), as a single process writes a
burst it read together. Real parts: a TCP connection on 127.0.0.1 whose server side the
coalescer writes to (its ``write`` calls counted on the way), a real redis-server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest
from brokers import fanned_out, make_hub
from hub_doubles import CountingEncoder, RecordingConnection
from loopstep import yield_to_loop

from roomcast.server.app import App
from roomcast.server.config import WRITE_HOLD_SECONDS, Settings
from roomcast.server.native_output import CoalescedOutput, WriteCoalescer
from roomcast.server.runner import serve_app

WAIT = 5.0


class CountedTransport:
    """A real socket's transport, with the coalescer's write calls recorded on their way."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def writelines(self, data: Iterable[bytes]) -> None:
        joined = b"".join(data)
        self.writes.append(joined)
        self.transport.write(joined)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[CountedTransport, asyncio.StreamReader]]:
    """The server side of a TCP connection (counted) and the client's reader."""
    accepted: asyncio.Future[asyncio.StreamWriter] = asyncio.get_running_loop().create_future()
    server = await asyncio.start_server(lambda r, w: accepted.set_result(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    served = await asyncio.wait_for(accepted, WAIT)
    transport: Any = served.transport
    try:
        yield CountedTransport(transport), reader
    finally:
        writer.close()
        served.close()
        server.close()
        await server.wait_closed()


async def _turns(n: int) -> None:
    for _ in range(n):
        await yield_to_loop()


async def _read(reader: asyncio.StreamReader, size: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(size), WAIT)


async def test_a_held_flush_writes_nothing_until_the_release_then_everything_in_one_write(
    pair: tuple[CountedTransport, asyncio.StreamReader],
) -> None:
    transport, reader = pair
    coalescer = WriteCoalescer()
    coalescer.limit = 60.0  # not the limit: the release ends this hold
    output = CoalescedOutput(transport, high_water=1 << 20, coalescer=coalescer)  # type: ignore[arg-type]
    coalescer.hold()
    output.write(b"first ")
    await _turns(6)  # the flush came due and waits
    assert transport.writes == []
    output.write(b"second")  # what a publication coming back with its answer writes
    coalescer.release()
    assert await _read(reader, 12) == b"first second"
    assert transport.writes == [b"first second"]


async def test_a_hold_nobody_releases_delays_the_flush_by_the_limit_only(
    pair: tuple[CountedTransport, asyncio.StreamReader],
) -> None:
    """A publication that never comes back (a Redis in trouble) holds nothing for long."""
    transport, reader = pair
    coalescer = WriteCoalescer()
    assert coalescer.limit == WRITE_HOLD_SECONDS <= 0.005
    coalescer.limit = 0.05
    output = CoalescedOutput(transport, high_water=1 << 20, coalescer=coalescer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    coalescer.hold()
    started = loop.time()
    output.write(b"held")
    assert await _read(reader, 4) == b"held"
    assert loop.time() - started >= 0.05
    output.write(b"next")  # still held: the next flush waits for the limit again, then goes
    assert await _read(reader, 4) == b"next"
    coalescer.release()
    output.write(b"free")
    assert await _read(reader, 4) == b"free"


class CountingHold:
    """Stands where the native door's coalescer stands (``Hub.write_hold``): counts."""

    limit = 5.0

    def __init__(self) -> None:
        self.held = 0
        self.taken = 0

    def hold(self) -> None:
        self.held += 1
        self.taken += 1

    def release(self) -> None:
        self.held -= 1
        assert self.held >= 0


@pytest.mark.parametrize("broker_kind", ["memory", "redis"])
async def test_a_publication_holds_the_writes_until_it_is_fanned_out_here(broker_kind: str) -> None:
    hub = make_hub(broker_kind)
    await hub.start()
    hold = hub.write_hold = CountingHold()
    try:
        member = RecordingConnection("c1", hub=hub, encoder=CountingEncoder())
        hub.add_connection(member)
        await hub.join(member, "here")
        for n in range(4):
            await hub.publish("here", "ev", n)
        await fanned_out(hub, "here")
        assert len(member.written) == 4
        assert (hold.taken, hold.held) == (4, 0)  # each held, each released once fanned out

        await hub.publish("elsewhere", "ev", 1)  # no member here: nothing comes back to wait for
        assert hold.taken == 4
    finally:
        await hub.aclose()


@pytest.mark.parametrize(("write_hold", "held"), [(None, True), (0.0, False)])
async def test_the_door_holds_for_the_hub_unless_write_hold_is_0(write_hold: float | None, held: bool) -> None:
    """``roomcast serve`` (``serve_app``) gives the hub its door's coalescer, with the limit
    ``--write-hold`` sets; ``--write-hold 0`` turns the wait off."""
    given = {} if write_hold is None else {"write_hold": write_hold}
    settings = Settings(task_db=":memory:", port=0, **given)
    app = App(None, settings)
    listening: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.ensure_future(serve_app(app, on_ready=lambda host, port: listening.set_result(None), stop=stop))
    try:
        await asyncio.wait_for(listening, WAIT)
        hold = app.hub.write_hold
        if held:
            assert isinstance(hold, WriteCoalescer) and hold.limit == WRITE_HOLD_SECONDS
        else:
            assert hold is None
    finally:
        stop.set()
        await asyncio.wait_for(server, WAIT)
