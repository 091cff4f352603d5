"""``AsgiSender``: the ASGI door's outbound side against the host ``send`` behaviours it meets.

The host's ``send`` is the input here (written as the hosts write theirs: a coroutine that
writes and returns, one that waits while the peer does not read, one that raises once the
peer is gone, one that needs a task). What a user relies on: every message arrives, in
order, whatever the host did; a slow consumer is reported past the high-water mark; a gone
peer stops the sending without an error reaching the fan-out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from roomcast.server.asgi import AsgiWebSocket, InlineRunner

WAIT = 10.0


def _texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["text"] for m in messages if m["type"] == "websocket.send"]


async def test_messages_go_inline_while_the_host_writes_at_once() -> None:
    written: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        written.append(message)

    ws = AsgiWebSocket(send, high_water=1000)
    for n in range(5):
        assert ws.send(f"m{n}")
        assert len(written) == n + 1  # written before send() returned: no task, no loop turn
    assert ws.drain is None
    ws.close(1000)
    await asyncio.wait_for(ws.finished, WAIT)
    assert _texts(written) == [f"m{n}" for n in range(5)] and written[-1]["type"] == "websocket.close"


async def test_a_host_that_waits_keeps_the_order_and_reports_a_slow_consumer() -> None:
    written: list[dict[str, Any]] = []
    writable = asyncio.Event()
    writable.set()

    async def send(message: dict[str, Any]) -> None:
        await writable.wait()  # as uvicorn waits while the peer does not read
        written.append(message)

    ws = AsgiWebSocket(send, high_water=10)
    assert ws.send("a")
    writable.clear()
    assert ws.send("b")  # the host suspends: a drain task takes over
    assert ws.drain is not None
    assert ws.send("ccccc") and ws.send("ddddd")  # queued: 10 bytes, at the mark
    assert not ws.send("e")  # past it: a slow consumer
    writable.set()
    await asyncio.wait_for(asyncio.shield(ws.drain), WAIT)
    assert _texts(written) == ["a", "b", "ccccc", "ddddd", "e"]
    assert ws.send("f") and ws.drain is None  # inline again
    assert _texts(written)[-1] == "f"


async def test_a_gone_peer_stops_the_sending_without_raising() -> None:
    calls = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise OSError("the peer is gone")

    ws = AsgiWebSocket(send, high_water=1000)
    assert ws.send("a")  # the fan-out never sees the host's error
    assert ws.closing and ws.finished.done()
    assert ws.send("b") and calls == 1  # nothing more goes to the host


async def test_a_host_whose_send_needs_a_task_still_gets_every_message_in_order() -> None:
    written: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        async with asyncio.timeout(WAIT):  # raises RuntimeError outside a task
            written.append(message.get("text", message["type"]))

    ws = AsgiWebSocket(send, high_water=1000)

    def fan_out() -> None:  # outside any task, as a loop callback (a broker's reader) calls it
        for n in range(3):
            assert ws.send(f"m{n}")
        ws.close(1000)

    asyncio.get_running_loop().call_soon(fan_out)
    await asyncio.wait_for(ws.finished, WAIT)
    assert written == ["m0", "m1", "m2", "websocket.close"]
    assert ws.send("late") and written[-1] == "websocket.close"  # closed: nothing after the close


async def test_a_send_made_from_inside_another_connections_host_send_still_arrives() -> None:
    """The connections of one door share their inline runner; a host (or a middleware around
    its ``send``) that sends on another connection from inside its own gets both through."""
    runner = InlineRunner()
    second_written: asyncio.Queue[str] = asyncio.Queue()

    async def second_send(message: dict[str, Any]) -> None:
        second_written.put_nowait(message["text"])

    second = AsgiWebSocket(second_send, high_water=1000, runner=runner)
    first_written: list[str] = []

    async def first_send(message: dict[str, Any]) -> None:
        first_written.append(message["text"])
        second.send("relayed " + message["text"])  # from inside the first host send

    first = AsgiWebSocket(first_send, high_water=1000, runner=runner)
    assert first.send("a") and first.send("b")
    assert first_written == ["a", "b"]  # the first connection's messages went inline
    assert second.send("c")
    got = [await asyncio.wait_for(second_written.get(), WAIT) for _ in range(3)]
    assert got == ["relayed a", "relayed b", "c"]
