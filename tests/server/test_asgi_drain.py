"""Graceful drain under uvicorn (``server.asgi_drain``): a real ``uvicorn`` process serving
``RoomcastApp``, SIGTERMed with clients of every transport connected.

What a rolling restart of an ASGI deployment needs, each checked here:

* ``/readyz`` answers 503 at once;
* every client is told to come back in its transport's own words, not cut: ``/ws`` close 1001,
  Socket.IO's Engine.IO transport closed with no Socket.IO DISCONNECT (the official
  python-socketio client reads a transport error, not "server disconnect", and reconnects), SSE a final
  ``error`` event with ``reconnect: true`` and the end of the stream; spread over the grace;
* once the drain delay is over, a new client of each transport is answered 503 with
  ``Retry-After`` (uvicorn's socket is still open: a moved client must not come straight back);
* uvicorn then stops by itself within the grace, with no task cancelled for exceeding
  ``--timeout-graceful-shutdown`` (left unset here: without the drain one SSE stream would
  hold it for ever). uvicorn re-raises the signal it stopped on once it is done (since 0.29),
  so the process ends by SIGTERM, as it does without roomcast.

Every wait has a bound; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import socketio
from rawclient import RawWebSocket, open_websocket
from sseclient import SseStream, open_sse
from uvicornproc import uvicorn_serving as uvicorn_process

from roomcast import RoomcastApp
from roomcast.server.config import Settings
from roomcast.server.drain import DrainPlan

GRACE = 2.5
DELAY = 0.5
PLAN = DrainPlan.of(GRACE, DELAY)
WAIT = 20.0
ROOM = "board"
PER_TRANSPORT = 8

APP_MODULE = """\
from roomcast import RoomcastApp
from roomcast.server.config import Settings

app = RoomcastApp(settings=Settings(task_db=":memory:", shutdown_grace={grace}, drain_delay={delay}))
"""


@contextlib.asynccontextmanager
async def uvicorn_serving(
    tmp_path: Path, grace: float = GRACE
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, list[str]]]:
    """``uvicorn board:app`` on a free port: (process, base URL, its output lines so far and to come)."""
    async with uvicorn_process(tmp_path, APP_MODULE.format(grace=grace, delay=DELAY)) as serving:
        yield serving


def _address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def _ws_told(ws: RawWebSocket) -> str:
    """Read to the server's close; what the client was told (messages before it are dropped)."""
    code = await asyncio.wait_for(asyncio.shield(ws.closed), WAIT)
    return f"close {code}"


async def _sio_told(ws: RawWebSocket) -> str:
    """A raw Socket.IO client: read to the close, answering pings; a DISCONNECT is a failure."""
    while True:
        getter = asyncio.ensure_future(ws.messages.get())
        await asyncio.wait({getter, ws.closed}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            assert ws.closed.done(), "no close within the bound"
            while not ws.messages.empty():
                assert not str(ws.messages.get_nowait()).startswith("41")
            return f"close {ws.close_code}"
        message = getter.result()
        assert not str(message).startswith("41"), "a Socket.IO DISCONNECT stops the official client for good"
        if message == "2":
            ws.send("3")


async def test_sigterm_under_uvicorn_tells_every_client_to_reconnect_then_uvicorn_stops_in_the_grace(
    tmp_path: Path,
) -> None:
    async with uvicorn_serving(tmp_path) as (proc, base, lines), aiohttp.ClientSession() as http:
        host, port = _address(base)
        told: list[tuple[str, str, float]] = []
        first_told = asyncio.Event()
        stack = contextlib.AsyncExitStack()
        async with stack:
            # /ws and Socket.IO over WebSocket, raw: the close frame itself is seen
            sockets: list[tuple[str, RawWebSocket]] = []
            for _ in range(PER_TRANSPORT):
                ws = await open_websocket(host, port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
                assert ws.status == 101
                ws.send(json.dumps({"type": "subscribe", "id": 1, "room": ROOM}))
                assert json.loads(await ws.recv(WAIT))["type"] == "snapshot"
                sockets.append(("ws", ws))
                sio = await open_websocket(host, port, "/socket.io/?EIO=4&transport=websocket")
                assert sio.status == 101
                sio.send("40")
                while not str(await sio.recv(WAIT)).startswith("40"):
                    pass
                sockets.append(("socket.io", sio))
            streams = []
            for _ in range(PER_TRANSPORT):
                stream = await stack.enter_async_context(open_sse(base, [ROOM]))
                assert stream.status == 200 and (await stream.next(WAIT)).event == "snapshot"
                streams.append(stream)
            # the official python-socketio client, with its reconnection on
            official = socketio.AsyncClient(reconnection=True, reconnection_delay=5)
            reasons: asyncio.Queue[str] = asyncio.Queue()

            @official.event
            async def disconnect(reason: str) -> None:
                reasons.put_nowait(reason)

            await official.connect(base, transports=["websocket"], wait_timeout=WAIT)
            stack.push_async_callback(official.shutdown)
            async with http.get(f"{base}/readyz") as ready:
                assert ready.status == 200

            async def sse_told(stream: SseStream) -> None:
                error = None
                with contextlib.suppress(EOFError):
                    while True:
                        event = await stream.next(WAIT)
                        if event.event == "error":
                            error = event.json()
                told.append(("sse", f"error reconnect={error and error['reconnect']}", time.monotonic()))
                first_told.set()

            async def socket_told(kind: str, ws: RawWebSocket) -> None:
                outcome = await (_ws_told(ws) if kind == "ws" else _sio_told(ws))
                told.append((kind, outcome, time.monotonic()))
                first_told.set()

            watchers = [asyncio.ensure_future(socket_told(kind, ws)) for kind, ws in sockets]
            watchers += [asyncio.ensure_future(sse_told(stream)) for stream in streams]

            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT):
                while True:
                    async with http.get(f"{base}/readyz") as ready:
                        if ready.status == 503:
                            break
            not_ready_after = time.monotonic() - signalled

            # Past the delay, while clients are being moved, uvicorn still listens but every new
            # client is sent elsewhere (once the last one is gone, the drain ends and uvicorn stops).
            await asyncio.wait_for(first_told.wait(), WAIT)
            async with http.get(f"{base}/sse", params={"room": ROOM}) as refused:
                assert refused.status == 503 and refused.headers["Retry-After"] == "1"
            async with http.get(f"{base}/socket.io/", params={"EIO": "4", "transport": "polling"}) as refused:
                assert refused.status == 503
            late = await open_websocket(host, port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
            assert late.status == 503
            late.close()
            await asyncio.wait_for(asyncio.gather(*watchers), WAIT)
            official_reason = await asyncio.wait_for(reasons.get(), WAIT)

            code = await asyncio.wait_for(proc.wait(), WAIT)
            exited_after = time.monotonic() - signalled
            for ws in sockets:
                ws[1].close()

    moments = sorted(at - signalled for _, _, at in told)
    print(
        f"\nuvicorn, {len(told)} clients: /readyz 503 after {not_ready_after:.3f} s; first told at "
        f"{moments[0]:.3f} s, last at {moments[-1]:.3f} s (grace {GRACE} s, delay {DELAY} s); "
        f"exited after {exited_after:.3f} s ({code})"
    )
    output = "".join(lines)
    assert {(kind, outcome) for kind, outcome, _ in told} == {
        ("ws", "close 1001"),
        ("socket.io", "close 1001"),
        ("sse", "error reconnect=True"),
    }
    # not "server disconnect", after which python-socketio never reconnects
    assert official_reason == socketio.AsyncClient.reason.TRANSPORT_ERROR, official_reason
    assert not_ready_after < PLAN.delay
    assert moments[0] >= PLAN.delay  # nobody moved while a load balancer may still send clients
    assert moments[-1] - moments[0] > 0.3 * GRACE  # spread, not one stampede
    assert moments[-1] <= PLAN.spread_until + 0.5
    assert exited_after < GRACE + 1.0, output
    assert code == -signal.SIGTERM, output  # uvicorn re-raises the signal it stopped on
    assert "timeout graceful shutdown exceeded" not in output and "Traceback" not in output, output
    assert "Application shutdown complete" in output, output


async def test_a_second_sigterm_under_uvicorn_moves_everyone_at_once_and_stops(tmp_path: Path) -> None:
    """A long grace, cut short: the second signal closes every client now (still with the
    reconnect signal) and uvicorn stops at once."""
    grace = 20.0
    async with uvicorn_serving(tmp_path, grace) as (proc, base, lines), aiohttp.ClientSession() as http:
        host, port = _address(base)
        ws = await open_websocket(host, port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
        assert ws.status == 101
        async with open_sse(base, [ROOM]) as stream:
            assert (await stream.next(WAIT)).event == "snapshot"
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(WAIT):
                while True:
                    async with http.get(f"{base}/readyz") as ready:
                        if ready.status == 503:
                            break
            proc.send_signal(signal.SIGTERM)
            assert await _ws_told(ws) == "close 1001"
            events = await stream.until_end(WAIT)
            assert events[-1].event == "error" and events[-1].json()["reconnect"] is True
        code = await asyncio.wait_for(proc.wait(), WAIT)
        exited_after = time.monotonic() - signalled
        ws.close()
    assert code == -signal.SIGTERM and exited_after < grace / 4, (exited_after, "".join(lines))


async def test_a_host_that_handles_sigterm_on_its_loop_keeps_it_and_gets_every_handler_back() -> None:
    """A host on ``loop.add_signal_handler`` (its loop dispatches the signal itself) is left
    alone; a handler roomcast put in front is given back at shutdown."""
    loop = asyncio.get_running_loop()
    host_got: asyncio.Queue[str] = asyncio.Queue()
    sigint_before = signal.getsignal(signal.SIGINT)
    loop.add_signal_handler(signal.SIGTERM, host_got.put_nowait, "SIGTERM")
    try:
        sigterm_before = signal.getsignal(signal.SIGTERM)
        rt = RoomcastApp(settings=Settings(task_db=":memory:"))
        await rt.startup()
        try:
            assert signal.getsignal(signal.SIGTERM) is sigterm_before
            os.kill(os.getpid(), signal.SIGTERM)
            assert await asyncio.wait_for(host_got.get(), WAIT) == "SIGTERM"
            assert rt.signals is None or rt.signals.drained is None  # roomcast did not start a drain
        finally:
            await rt.shutdown()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is sigint_before
