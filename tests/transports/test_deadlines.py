"""``DeadlineWheel``: many deadlines on one loop timer — within a tick, in order, cancellable."""

from __future__ import annotations

import asyncio

from roomcast.transports.deadlines import DeadlineWheel

RESOLUTION = 0.01


async def test_deadlines_fire_in_order_within_one_tick_of_their_time() -> None:
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    done = asyncio.Event()

    def on_deadline(name: str, tick: int) -> None:
        fired.append((name, loop.time()))
        if len(fired) == 3:
            done.set()

    wheel: DeadlineWheel[str] = DeadlineWheel(on_deadline, resolution=RESOLUTION)
    start = loop.time()
    due = {"c": start + 0.09, "a": start + 0.03, "b": start + 0.06}
    for name, when in due.items():
        wheel.file(name, when)
    async with asyncio.timeout(5):
        await done.wait()
    assert [name for name, _ in fired] == ["a", "b", "c"]
    for name, at in fired:
        assert at >= due[name] - RESOLUTION - 1e-3, f"{name} fired more than a tick early"
    assert len(wheel) == 0


async def test_a_cancelled_deadline_does_not_fire_and_one_timer_serves_many() -> None:
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    done = asyncio.Event()

    def on_deadline(item: int, tick: int) -> None:
        fired.append(item)
        if len(fired) == 999:
            done.set()

    wheel: DeadlineWheel[int] = DeadlineWheel(on_deadline, resolution=RESOLUTION)
    when = loop.time() + 0.05
    ticks = [wheel.file(i, when) for i in range(1000)]
    wheel.cancel(500, ticks[500])
    wheel.cancel(500, ticks[500])  # twice is harmless
    timers_before = len(loop._scheduled)  # type: ignore[attr-defined]
    assert timers_before <= 2  # one for the wheel (plus whatever the test runner keeps)
    async with asyncio.timeout(5):
        await done.wait()
    assert sorted(fired) == [i for i in range(1000) if i != 500]


async def test_a_callback_may_file_again_and_close_drops_everything() -> None:
    loop = asyncio.get_running_loop()
    beats: list[int] = []
    third = asyncio.Event()

    def on_deadline(item: str, tick: int) -> None:
        beats.append(tick)
        if len(beats) == 3:
            third.set()
        else:
            wheel.file(item, loop.time() + 0.02)

    wheel: DeadlineWheel[str] = DeadlineWheel(on_deadline, resolution=RESOLUTION)
    wheel.file("session", loop.time() + 0.02)
    async with asyncio.timeout(5):
        await third.wait()
    assert beats == sorted(beats) and len(set(beats)) == 3
    wheel.file("other", loop.time() + 0.02)
    wheel.close()
    assert len(wheel) == 0
