"""Named handler sets: registration, isolated dispatch, and the atomic switch."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from roomcast.client.listeners import ListenerSets

WAIT = 2.0


async def _suspend() -> None:
    """Give up the loop once, on a future the loop resolves on its next turn."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.call_soon(fut.set_result, None)
    await fut


async def test_handlers_run_in_registration_order_sync_and_async_mixed() -> None:
    sets = ListenerSets()
    calls: list[tuple[str, tuple[Any, ...]]] = []

    def first(*args: Any) -> None:
        calls.append(("first", args))

    async def second(*args: Any) -> None:
        await _suspend()  # a real suspension: "third" must still wait for us
        calls.append(("second", args))

    def third(*args: Any) -> None:
        calls.append(("third", args))

    for fn in (first, second, third):
        sets.on("msg", fn)
    assert await sets.dispatch("msg", ["hi", {"n": 1}]) == 3
    assert calls == [(name, ("hi", {"n": 1})) for name in ("first", "second", "third")]


async def test_decorator_form_registers_and_returns_the_function() -> None:
    sets = ListenerSets()
    seen: list[int] = []

    @sets.on("tick", set="live")
    def on_tick(n: int) -> None:
        seen.append(n)

    on_tick(0)  # still the plain function
    sets.use("live")
    await sets.dispatch("tick", [1])
    assert seen == [0, 1]


async def test_a_failing_handler_is_logged_with_event_and_traceback_and_the_rest_carry_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sets = ListenerSets()
    seen: list[str] = []

    async def broken(value: str) -> None:
        raise KeyError("no such widget")

    sets.on("update", lambda v: seen.append(f"before:{v}"))
    sets.on("update", broken)
    sets.on("update", lambda v: seen.append(f"after:{v}"))
    with caplog.at_level(logging.ERROR, logger="roomcast.client"):
        assert await sets.dispatch("update", ["1"]) == 3
        assert await sets.dispatch("update", ["2"]) == 3
    assert seen == ["before:1", "after:1", "before:2", "after:2"]
    records = [r for r in caplog.records if r.name == "roomcast.client"]
    assert len(records) == 2
    assert all("'update'" in r.getMessage() and r.exc_info is not None for r in records)
    assert "no such widget" in caplog.text


async def test_off_removes_one_handler_or_all_of_an_event() -> None:
    sets = ListenerSets()
    seen: list[str] = []

    def a() -> None:
        seen.append("a")

    def b() -> None:
        seen.append("b")

    sets.on("e", a)
    sets.on("e", b)
    sets.on("e", a)
    assert sets.off("e", a) == 2
    await sets.dispatch("e", [])
    assert seen == ["b"]
    assert sets.off("e") == 1
    assert sets.off("e") == 0
    assert sets.off("e", b, set="never-made") == 0
    assert await sets.dispatch("e", []) == 0


async def test_a_dispatch_in_progress_keeps_the_handlers_it_started_with() -> None:
    sets = ListenerSets()
    seen: list[str] = []

    def remover() -> None:
        seen.append("remover")
        sets.off("e", later)
        sets.on("e", added)

    def later() -> None:
        seen.append("later")

    def added() -> None:
        seen.append("added")

    sets.on("e", remover)
    sets.on("e", later)
    await sets.dispatch("e", [])
    assert seen == ["remover", "later"]
    seen.clear()
    await sets.dispatch("e", [])
    assert seen == ["remover", "added"]


async def test_only_the_active_set_handles_events() -> None:
    sets = ListenerSets(default="following")
    seen: list[str] = []
    sets.on("cursor", lambda pos: seen.append(f"follow {pos}"))
    sets.on("cursor", lambda pos: seen.append(f"edit {pos}"), set="editing")
    assert sets.active == "following"
    await sets.dispatch("cursor", [1])
    sets.use("editing")
    await sets.dispatch("cursor", [2])
    sets.use("following")
    await sets.dispatch("cursor", [3])
    assert seen == ["follow 1", "edit 2", "follow 3"]
    assert sets.names == {"following", "editing"}


async def test_switching_to_a_new_set_mutes_until_it_gets_handlers() -> None:
    sets = ListenerSets()
    seen: list[int] = []
    sets.on("e", seen.append)
    sets.use("frozen")
    assert await sets.dispatch("e", [1]) == 0
    sets.on("e", lambda n: seen.append(-n), set="frozen")
    assert await sets.dispatch("e", [2]) == 1
    assert seen == [-2]


async def test_catch_all_gets_unhandled_events_of_its_set_only() -> None:
    sets = ListenerSets()
    seen: list[tuple[Any, ...]] = []
    sets.on("known", lambda: seen.append(("known",)))

    @sets.any()
    def fallback(event: str, *args: Any) -> None:
        seen.append((event, *args))

    assert await sets.dispatch("known", []) == 1
    assert await sets.dispatch("other", [1, 2]) == 1
    sets.use("quiet")  # its own catch-all: none
    assert await sets.dispatch("other", [3]) == 0
    assert seen == [("known",), ("other", 1, 2)]
    assert sets.off_any() is True and sets.off_any() is False


async def test_the_set_is_chosen_when_dispatch_is_called_not_when_it_runs() -> None:
    sets = ListenerSets()
    seen: list[str] = []
    sets.on("e", lambda: seen.append("old"))
    sets.on("e", lambda: seen.append("new"), set="new")
    task = asyncio.create_task(sets.dispatch("e", []))  # queued by the reader loop
    sets.use("new")  # before the task ever ran
    async with asyncio.timeout(WAIT):
        await task
    assert seen == ["old"]


async def test_atomic_switch_every_event_is_handled_by_exactly_one_set() -> None:
    """Events dispatched from tasks interleaved with switches, while earlier events are
    still half-way through their handlers: each event goes to one whole set."""
    sets = ListenerSets(default="a")
    handled: dict[int, list[str]] = {}
    gate = asyncio.Event()  # holds every dispatch between its two handlers
    all_inside = asyncio.Event()

    def make(name: str) -> tuple[Any, Any]:
        async def first(i: int) -> None:
            handled.setdefault(i, []).append(f"{name}.first")
            if len(handled) == 60:
                all_inside.set()
            await gate.wait()

        def second(i: int) -> None:
            handled.setdefault(i, []).append(f"{name}.second")

        return first, second

    for name in ("a", "b"):
        for fn in make(name):
            sets.on("tick", fn, set=name)

    expected: dict[int, str] = {}

    async def dispatcher(i: int) -> None:
        expected[i] = sets.active
        await sets.dispatch("tick", [i])

    async def switcher() -> None:
        sets.use("b" if sets.active == "a" else "a")

    # Tasks run in creation order, so dispatches and switches interleave, and every
    # switch lands while the events before it are suspended between their two handlers.
    tasks = []
    for i in range(60):
        tasks.append(asyncio.create_task(dispatcher(i)))
        if i % 7 == 3:
            tasks.append(asyncio.create_task(switcher()))
    async with asyncio.timeout(WAIT):
        await all_inside.wait()
        gate.set()
        await asyncio.gather(*tasks)

    assert set(expected.values()) == {"a", "b"}  # the switches really interleaved
    for i in range(60):
        s = expected[i]
        assert handled[i] == [f"{s}.first", f"{s}.second"], i


async def test_cancelling_a_dispatch_cancels_it_instead_of_logging_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Closing the client cancels its reader; a handler stuck in I/O must not swallow that.
    sets = ListenerSets()
    started = asyncio.Event()
    after: list[str] = []

    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    sets.on("e", stuck)
    sets.on("e", lambda: after.append("ran"))
    task = asyncio.create_task(sets.dispatch("e", []))
    async with asyncio.timeout(WAIT):
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert after == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
