"""Faults, bounded and on loopback only: a server killed and restarted, a cut TCP proxy, a
refusing port, a server that never answers.

Each test bounds its own time (``asyncio.timeout``) and the number of faults it injects.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

import pytest
from clientkit import Recorder, Subprocess, free_port, proxy_to, roomcast_argv, stopping
from servers import running

from roomcast import disconnect
from roomcast.client import Backoff, Client, ClientState, ConnectionClosed, ConnectTimeout, StateChange
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

S = ClientState


async def test_server_killed_and_restarted_mid_stream_resets_the_room() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = Subprocess(roomcast_argv(port))
    with stopping(first):
        await first.wait_line("listening on")
        first.drain()
        subscriber = Client(url, backoff_initial=0.2, backoff_max=0.5, ack_timeout=5)
        publisher = Client(url, backoff_initial=0.2, backoff_max=0.5, ack_timeout=5)
        rec = Recorder(subscriber)
        subscriber.on("tick", rec.handler("tick"))
        resets: list[Any] = []
        subscriber.on_snapshot(lambda state, snapshot: resets.append(state))
        sent = 0

        async def publish_forever() -> None:
            nonlocal sent
            while True:
                try:
                    await publisher.emit("publish", {"room": "stream", "event": "tick", "data": sent}, ack=True)
                except (ConnectionClosed, TimeoutError):
                    continue  # lost with the server: the stream goes on after the restart
                sent += 1

        try:
            async with asyncio.timeout(30):
                await subscriber.connect()
                await publisher.connect()
                before = await subscriber.subscribe("stream")
                pumping = asyncio.ensure_future(publish_forever())
                await rec.wait_for(lambda: len(rec.of("tick")) >= 20)
                first.kill()  # SIGKILL mid-stream: no goodbye on any socket
                await rec.wait_state(S.RECONNECTING)
                second = Subprocess(roomcast_argv(port))
                with stopping(second):
                    await second.wait_line("listening on")
                    second.drain()
                    await rec.wait_state(S.CONNECTED, count=2)
                    await rec.wait_for(lambda: len(resets) == 2)
                    after = subscriber.room("stream")
                    assert after is not None and after.recovered is False  # a new epoch: reset
                    assert after.epoch != before.epoch
                    seen = len(rec.of("tick"))
                    await rec.wait_for(lambda: len(rec.of("tick")) >= seen + 20)  # the stream goes on
                    pumping.cancel()
                    await asyncio.gather(pumping, return_exceptions=True)
        finally:
            await subscriber.close()
            await publisher.close()
    states = rec.states
    assert states[:3] == [S.CONNECTING, S.CONNECTED, S.RECONNECTING]
    middle = states[3:-2]  # failed attempts while the server was down
    assert all(s in (S.CONNECTING, S.RECONNECTING) for s in middle)
    assert states[-2:] == [S.CONNECTED, S.CLOSED] and states.count(S.CONNECTED) == 2
    assert rec.changes[2].reason in ("transport close", "transport error")
    ticks = [args[0] for args in rec.of("tick")]
    assert ticks == sorted(ticks) and len(ticks) == len(set(ticks))  # in order, never twice


async def test_a_cut_proxy_loses_no_event_within_history() -> None:
    hub = Hub()
    async with running(App(hub, Settings())) as srv, proxy_to(srv.port) as proxy:
        client = Client(f"http://127.0.0.1:{proxy.port}", backoff_initial=0.4, backoff_max=0.8, ack_timeout=5)
        rec = Recorder(client)
        client.on("n", rec.handler("n"))
        published = 0

        async def publish(count: int) -> None:
            nonlocal published
            for _ in range(count):
                await hub.publish("r", "n", published)
                published += 1

        try:
            async with asyncio.timeout(20):
                await client.connect()
                await client.subscribe("r")
                for cut in range(1, 4):  # three cuts, each with events published while away
                    await publish(5)
                    await rec.wait_for(lambda: len(rec.of("n")) == published)
                    assert proxy.sever() >= 1
                    await rec.wait_state(S.RECONNECTING, count=cut)
                    await publish(5)  # the client is away for >= 0.1 s
                    await rec.wait_state(S.CONNECTED, count=cut + 1)
                    await rec.wait_for(lambda: len(rec.of("n")) == published)
                    assert client.room("r").recovered is True  # type: ignore[union-attr]
        finally:
            await client.close()
    assert [args[0] for args in rec.of("n")] == list(range(30))  # every one, in order, once
    assert rec.states == [S.CONNECTING, S.CONNECTED] + [S.RECONNECTING, S.CONNECTING, S.CONNECTED] * 3 + [S.CLOSED]


async def test_a_server_side_disconnect_loses_no_event_with_polling_too() -> None:
    hub = Hub()
    async with running(App(hub, Settings())) as srv:
        client = Client(srv.url, transports=("polling",), backoff_initial=0.4, backoff_max=0.8, ack_timeout=5)
        rec = Recorder(client)
        client.on("n", rec.handler("n"))
        try:
            async with asyncio.timeout(20):
                await client.connect()
                await client.subscribe("r")
                await hub.publish("r", "n", 0)
                await rec.wait_for(lambda: len(rec.of("n")) == 1)
                for conn in hub.members("r"):
                    conn.disconnect(disconnect.TRANSPORT_CLOSE)  # the server drops the session
                await rec.wait_state(S.RECONNECTING)
                await hub.publish("r", "n", 1)
                await hub.publish("r", "n", 2)
                await rec.wait_state(S.CONNECTED, count=2)
                await rec.wait_for(lambda: len(rec.of("n")) == 3)
        finally:
            await client.close()
    assert [args[0] for args in rec.of("n")] == [0, 1, 2]
    assert client.room("r") is not None and client.room("r").recovered is True  # type: ignore[union-attr]


def _attempts_in(window: float, backoff: Backoff) -> int:
    """Attempts a refused client makes in ``window`` seconds: one, then one per delay."""
    elapsed, attempts = 0.0, 1
    while True:
        elapsed += backoff.next()
        if elapsed > window:
            return attempts
        attempts += 1


async def test_reconnect_attempts_against_a_refusing_port_are_bounded() -> None:
    # The default schedule (0.5 s initial, 30 s cap) scaled down 20x: 3 s here is 60 s there,
    # so the count measured below is the attempts per minute of a client with default settings.
    scale, window = 20, 3.0
    port = free_port()  # nothing listens: every attempt is refused at once
    client = Client(f"http://127.0.0.1:{port}", backoff_initial=0.5 / scale, backoff_max=30.0 / scale)
    stamps: list[float] = []
    past_window = asyncio.Event()
    start = time.monotonic()

    def attempt(change: StateChange) -> None:
        if change.new is S.CONNECTING:
            stamps.append(time.monotonic())
            if stamps[-1] - start > window:
                past_window.set()  # the first attempt after the window closes the count

    client.on_state(attempt)
    task = asyncio.ensure_future(client.connect())
    await asyncio.wait_for(past_window.wait(), window + 2 * 30.0 / scale + 5)
    measured = sum(1 for t in stamps if t - start <= window)
    await client.close()
    with pytest.raises(ConnectionClosed):
        await task
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= (0.5 / scale) / 4  # never a zero-delay loop: the Backoff floor holds
    simulated = [_attempts_in(60.0, Backoff(0.5, 30.0, rng=random.Random(seed))) for seed in range(2000)]
    low, high = min(simulated), max(simulated)
    print(
        f"\nrefused client, default settings: measured {measured} attempts in the first minute "
        f"(simulated: mean {statistics.mean(simulated):.1f}, range {low}-{high}); "
        f"steady state {60 / ((0.125 + 30) / 2):.1f}/min"
    )
    assert low - 1 <= measured <= high + 1
    assert high <= 14  # far from the hundreds per second of a zero-delay loop


async def test_max_attempts_gives_up_and_a_silent_server_times_out() -> None:
    port = free_port()
    client = Client(f"http://127.0.0.1:{port}", backoff_initial=0.02, backoff_max=0.04, max_attempts=3)
    rec = Recorder(client)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(client.connect(), 5)
    assert rec.states.count(S.CONNECTING) == 4  # the first attempt and three more
    assert rec.states[-1] is S.DISCONNECTED and rec.changes[-1].reason.startswith("gave up after 3 attempts")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        mute = Client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", reconnect=False, connect_timeout=0.3)
        with pytest.raises(ConnectTimeout):
            await asyncio.wait_for(mute.connect(), 5)
        assert mute.state is S.DISCONNECTED
    finally:
        server.close()
