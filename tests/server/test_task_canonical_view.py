"""``roomcast tail`` shows a mapped task kind in its canonical form; every client keeps the mapped one.

A real server on the native door, ``roomcast.tail.Tail`` over a real socket and, beside it,
an SSE client as a page reads it, on the same rooms: the task's room and a routed room. The
tail's connection is ended by the server and its reconnect held until the missed changes are
published, so what it prints afterwards can only be the replay its ``Last-Event-ID`` asked
for. Over the memory broker and over Redis, where the canonical form crosses the wire and is
read back from the stream's history. Then who may ask for the canonical view, and who not.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiohttp
import brokers
import pytest
from servers import running
from sseclient import open_sse

from roomcast import disconnect
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.tail import Tail
from roomcast.tasks.model import Task, TaskEvents, TaskStatus

KEY = "k-canonical-0123456789"
WAIT = 15.0
CRAWL_EVENTS = TaskEvents(progress="crawl_progress", completed="crawl:completed")
FEED = "crawl-feed"


def crawl_wire(task: Task) -> dict[str, Any]:
    """The field names a hand-rolled crawl frontend reads (and nothing else of the task)."""
    return {"progressId": task.id, "percentage": task.progress, "status": task.status.value}


def _feed(task: Task) -> list[str]:
    return [FEED] if task.kind == "crawl" else []


class Finished(Exception):
    """Raised into ``Tail.run`` by its sleep once the test has ended: the thread returns."""


class TailThread:
    """``Tail.run`` in a thread; its lines come to the loop, and its first reconnect waits
    until the test lets it go. ``stop`` ends it at its next reconnect (a failed test's server
    going away is one), so no thread outlives the test."""

    def __init__(self, url: str, rooms: list[str], **options: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self.notes: list[str] = []
        self.dropped = asyncio.Event()
        self.resume = threading.Event()
        self.tail = Tail(
            url,
            rooms,
            out=lambda line: self.loop.call_soon_threadsafe(self.lines.put_nowait, line),
            note=self.notes.append,
            sleep=self._sleep,
            **options,
        )
        self.sleeps = 0
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.resume.set()

    def _sleep(self, _delay: float) -> None:
        if self.stopped:
            raise Finished
        self.sleeps += 1
        if self.sleeps == 1:
            self.loop.call_soon_threadsafe(self.dropped.set)
            self.resume.wait(WAIT)
            if self.stopped:
                raise Finished

    async def run(self) -> int:
        return await asyncio.to_thread(self.tail.run)

    async def line(self) -> tuple[str, Any]:
        event, data = (await asyncio.wait_for(self.lines.get(), WAIT)).split(" ", 1)
        return event, json.loads(data)


def _canonical(data: Any, task_id: str, status: str, progress: float | None) -> None:
    assert "progressId" not in data and "percentage" not in data, data
    assert (data["id"], data["kind"], data["status"], data["progress"]) == (task_id, "crawl", status, progress)


@pytest.mark.parametrize("broker_kind", ["memory", "redis"])
async def test_tail_prints_the_canonical_task_live_and_on_recovery_while_a_page_gets_the_mapped_one(
    broker_kind: str,
) -> None:
    app = brokers.make_app(
        broker_kind, api_key=KEY, task_events={"crawl": CRAWL_EVENTS}, task_payloads={"crawl": crawl_wire}
    )
    app.tasks.route(_feed)
    async with running(app) as srv:
        service = srv.app.tasks
        task = await service.create("crawl", title="example.com")
        rooms = [f"task:{task.id}", FEED]
        tail = TailThread(srv.url, rooms, api_key=KEY, retry_max=1.0)
        following = asyncio.create_task(tail.run())
        try:
            async with open_sse(srv.url, rooms) as page:
                assert [(await page.next()).json()["snapshot"] for _ in rooms] == [crawl_wire(task), None]
                (event, first), (_, feed) = await tail.line(), await tail.line()
                assert event == "snapshot" and first["snapshot"] == task.to_json() and feed["snapshot"] is None

                await service.report(task.id, 40)
                live = [await tail.line() for _ in range(4)]  # each change to the task's room, then the feed
                assert [e for e, _ in live] == ["task:updated"] * 2 + ["crawl_progress"] * 2
                for (_, data), progress in zip(live, (None, None, 40.0, 40.0)):
                    _canonical(data, task.id, "running", progress)
                mapped = [(e.event, e.json()) for e in [await page.next(timeout=WAIT) for _ in range(4)]]
                assert (
                    mapped[2:]
                    == [("crawl_progress", {"progressId": task.id, "percentage": 40.0, "status": "running"})] * 2
                )
                assert len(srv.app.sse.encoders) == 2  # one group per view, each encoded once

                (tail_conn,) = [conn for conn in srv.app.sse.streams if conn.canonical]
                tail_conn.disconnect(disconnect.SHUTDOWN)  # it may reconnect, and is held at the backoff
                assert (await tail.line())[0] == "error"
                await asyncio.wait_for(tail.dropped.wait(), WAIT)
                await service.report(task.id, 70)
                missed = [await page.next(timeout=WAIT) for _ in range(2)]  # published while tail was away
                assert [e.json()["percentage"] for e in missed] == [70.0, 70.0]
                tail.resume.set()

                replayed = [await tail.line() for _ in range(2)]  # replayed, not a snapshot or a reset
                assert [e for e, _ in replayed] == ["crawl_progress"] * 2
                for _, data in replayed:
                    _canonical(data, task.id, "running", 70.0)
                await service.complete(task.id, {"pages": 7})
                ended = [await tail.line() for _ in range(2)]  # live again after the replay
                async with aiohttp.ClientSession() as http:
                    headers = {"X-API-Key": KEY}
                    async with http.get(f"{srv.url}/api/tasks/{task.id}", headers=headers) as response:
                        shown = await response.json()
                assert ended == [("crawl:completed", shown)] * 2  # what /api/tasks/{id} shows
                assert shown["status"] == TaskStatus.COMPLETED.value and shown["result"] == {"pages": 7}
                end = [(e.event, e.json()) for e in [await page.next(timeout=WAIT) for _ in range(2)]]
                assert (
                    end
                    == [("crawl:completed", {"progressId": task.id, "percentage": 100.0, "status": "completed"})] * 2
                )
            await srv.app.hub.mark_terminal(FEED)  # every room finished: the tail's reconnect gets 204
            assert await asyncio.wait_for(following, WAIT) == 0
            assert any("resuming from the last event" in note for note in tail.notes), tail.notes
        finally:
            tail.stop()  # a failed test: the thread ends once the server has gone


async def test_the_canonical_view_is_the_apis_and_a_stream_without_its_access_is_refused() -> None:
    app = App(Hub(), Settings(task_db=":memory:", api_key=KEY, task_payloads={"crawl": crawl_wire}))
    async with running(app) as srv:
        task = await srv.app.tasks.create("crawl")
        room = f"task:{task.id}"
        for headers, status in [({}, 401), ({"X-API-Key": "wrong"}, 401)]:
            async with open_sse(srv.url, [room], headers=headers, extra_query={"view": "canonical"}) as refused:
                assert refused.status == status
                message = (await refused.response.json())["error"]["message"]
                assert "canonical view" in message and "view=client" in message
        async with open_sse(srv.url, [room], extra_query={"view": "everything"}) as bad:
            assert bad.status == 400
            assert "view must be one of client, canonical" in (await bad.response.json())["error"]["message"]
        assert not srv.app.sse.streams  # nothing opened for any of them

        lines: list[str] = []
        notes: list[str] = []
        refused_tail = Tail(srv.url, [room], out=lines.append, note=notes.append, sleep=lambda _: None)
        assert await asyncio.wait_for(asyncio.to_thread(refused_tail.run), WAIT) == 1  # no retry: it would fail again
        assert lines == [] and "canonical view" in notes[-1] and "HTTP 401" in notes[-1], notes

        # Without the key, the mapped form is one flag away: what clients receive.
        client = Tail(srv.url, [room], view="client", out=lines.append, note=notes.append, sleep=lambda _: None)
        await srv.app.tasks.complete(task.id, {"pages": 1})
        assert await asyncio.wait_for(asyncio.to_thread(client.run), WAIT) == 0  # the finished room: 204
        (line,) = lines
        assert json.loads(line.split(" ", 1)[1])["snapshot"] == crawl_wire(await srv.app.tasks.get(task.id))
