"""``Publisher``'s task methods against a real server: an out-of-process worker's view.

A real server on 127.0.0.1 (the native door, in this test's event loop). The sync calls
run in other threads (``asyncio.to_thread``), as a Celery or cron worker would make them,
while the server goes on serving in the loop. Waits are on the task's SSE room (the
server's own ``task:cancelled``), each bounded by the reader's timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from servers import RunningServer, running
from sseclient import SseStream, open_sse

from roomcast import Publisher, PublishError
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

KEY = "k-0123456789abcdef"
# Short, so the unacknowledged stop ends quickly, yet long enough that the worker's one
# report right after the stop lands while the task is still ``stopping`` on a loaded machine.
GRACE = 0.25


@asynccontextmanager
async def _server(**settings: object) -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings(api_key=KEY, **settings))) as srv:  # type: ignore[arg-type]
        yield srv


async def _events_to_end(stream: SseStream) -> list[tuple[str, Any]]:
    """Every event of a task room until the server ends it (the task ended); bounded."""
    return [(e.event, e.json()) for e in await stream.until_end(timeout=10.0)]


async def test_a_sync_worker_learns_of_a_stop_from_its_report_and_the_task_ends_cancelled() -> None:
    async with _server(task_stop_grace=GRACE) as srv:
        worker = Publisher(srv.url, api_key=KEY)
        task = await asyncio.to_thread(
            worker.create_task, "crawl", title="example.com", owner="ann", metadata={"depth": 2}
        )
        assert (task["status"], task["kind"], task["title"], task["owner"]) == (
            "pending",
            "crawl",
            "example.com",
            "ann",
        )
        assert task["metadata"] == {"depth": 2} and task["progress"] is None
        tid = task["id"]
        async with open_sse(srv.url, [f"task:{tid}"]) as stream:
            assert (await stream.next()).event == "snapshot"
            reported = await asyncio.to_thread(worker.report, tid, progress=10, step="fetch")
            assert (reported["status"], reported["progress"], reported["step"]) == ("running", 10, "fetch")

            stopped = await asyncio.to_thread(Publisher(srv.url, api_key=KEY).stop_task, tid, "bob")
            assert stopped["status"] == "stopping"

            answer = await asyncio.to_thread(worker.report, tid, progress=20)
            assert answer["status"] == "stopping"  # how the worker is told: it stops reporting

            events = await _events_to_end(stream)
        names = [name for name, _ in events]
        assert names[-1] == "task:cancelled" and "task:stopping" in names
        assert "stop not acknowledged" in events[-1][1]["message"]
        final = await asyncio.to_thread(worker.get_task, tid)
        assert final["status"] == "cancelled" and final["finished_at"] is not None
        with pytest.raises(PublishError) as late:
            await asyncio.to_thread(worker.report, tid, progress=30)
        assert (late.value.status, late.value.code) == (409, "conflict")


async def test_an_async_worker_learns_of_a_stop_from_its_report_and_the_task_ends_cancelled() -> None:
    async with _server(task_stop_grace=GRACE) as srv:
        worker = Publisher(srv.url, api_key=KEY)
        task = await worker.acreate_task("render", title="frame 7", deadline=None)
        tid = task["id"]
        async with open_sse(srv.url, [f"task:{tid}"]) as stream:
            assert (await stream.next()).event == "snapshot"
            assert (await worker.areport(tid, progress=5, message="warming up"))["status"] == "running"
            stopped = await Publisher(srv.url, api_key=KEY).astop_task(tid, by="ops")
            assert stopped["status"] == "stopping"
            assert (await worker.areport(tid, progress=6))["status"] == "stopping"
            events = await _events_to_end(stream)
        assert events[-1][0] == "task:cancelled" and events[-1][1]["status"] == "cancelled"
        assert (await worker.aget_task(tid))["status"] == "cancelled"
        # stopping a task that has ended is refused, not absorbed
        with pytest.raises(PublishError) as ended:
            await worker.astop_task(tid)
        assert (ended.value.status, ended.value.code) == (409, "conflict")


async def test_stopping_a_pending_task_cancels_it_at_once() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        tid = (await publisher.acreate_task("import"))["id"]
        assert (await asyncio.to_thread(publisher.stop_task, tid))["status"] == "cancelled"


async def test_complete_fail_get_and_list_sync_and_async() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        a = await asyncio.to_thread(publisher.create_task, "crawl", title="a", owner="ann")
        await asyncio.to_thread(publisher.report, a["id"], progress=50, step="parse", message="half")
        done = await asyncio.to_thread(publisher.complete_task, a["id"], {"pages": 3})
        assert (done["status"], done["progress"], done["result"]) == ("completed", 100, {"pages": 3})
        assert (done["step"], done["message"]) == ("parse", "half")
        assert await asyncio.to_thread(publisher.get_task, a["id"]) == done

        b = await publisher.acreate_task("crawl", title="b", owner="bob")
        await publisher.areport(b["id"], progress=1)
        failed = await publisher.afail_task(b["id"], "disk full")
        assert (failed["status"], failed["error"]) == ("failed", "disk full")

        c = await publisher.acreate_task("index", owner="ann")
        await publisher.areport(c["id"], step="start")
        assert (await publisher.acomplete_task(c["id"]))["result"] is None

        d = await asyncio.to_thread(publisher.create_task, "crawl", title="d")
        await asyncio.to_thread(publisher.report, d["id"])  # no fields: just starts it
        assert (await publisher.aget_task(d["id"]))["status"] == "running"

        def ids(page: dict[str, Any]) -> set[str]:
            return {t["id"] for t in page["tasks"]}

        assert ids(await asyncio.to_thread(publisher.list_tasks, status="completed")) == {a["id"], c["id"]}
        assert ids(await publisher.alist_tasks(status=["failed", "running"])) == {b["id"], d["id"]}
        assert ids(await publisher.alist_tasks(kind="crawl", owner="ann")) == {a["id"]}
        assert ids(await asyncio.to_thread(publisher.list_tasks, kind="crawl")) == {a["id"], b["id"], d["id"]}

        seen: list[str] = []
        cursor = None
        for _ in range(10):  # bounded: four tasks, two a page
            page = await publisher.alist_tasks(limit=2, cursor=cursor)
            assert len(page["tasks"]) <= 2
            seen.extend(t["id"] for t in page["tasks"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted([a["id"], b["id"], c["id"], d["id"]])


async def test_refusals_raise_publish_error_with_the_servers_status_code_and_message() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        tid = (await publisher.acreate_task("import"))["id"]

        with pytest.raises(PublishError) as missing:
            await asyncio.to_thread(publisher.get_task, "nope")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        assert "no task 'nope'" in missing.value.message
        with pytest.raises(PublishError) as missing:
            await publisher.areport("nope", progress=1)
        assert missing.value.status == 404

        with pytest.raises(PublishError) as bad:
            await asyncio.to_thread(publisher.report, tid, progress=150)
        assert (bad.value.status, bad.value.code) == (400, "bad_request") and "progress" in bad.value.message
        with pytest.raises(PublishError) as bad:
            await publisher.afail_task(tid, "")
        assert bad.value.status == 400 and "'error'" in bad.value.message
        with pytest.raises(PublishError) as bad:
            await publisher.alist_tasks(status="sleeping")
        assert bad.value.status == 400 and "'status'" in bad.value.message
        with pytest.raises(PublishError) as bad:
            await asyncio.to_thread(publisher.create_task, "")
        assert bad.value.status == 400 and "'kind'" in bad.value.message

        await publisher.acomplete_task(tid, 1)
        with pytest.raises(PublishError) as twice:
            await asyncio.to_thread(publisher.complete_task, tid, 2)
        assert (twice.value.status, twice.value.code) == (409, "conflict")
        with pytest.raises(PublishError) as twice:
            await publisher.acomplete_task(tid, 2)
        assert twice.value.status == 409
        assert (await publisher.aget_task(tid))["result"] == 1  # nothing changed

        with pytest.raises(PublishError) as refused:
            await Publisher(srv.url, api_key="wrong").aget_task(tid)
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")

        with pytest.raises(ValueError, match="task_id"):
            publisher.get_task("")  # would name the list route
        with pytest.raises(ValueError, match="task_id"):
            await publisher.astop_task("")


async def test_a_worker_may_choose_the_task_id_and_a_taken_or_bad_one_is_refused_unchanged() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        tid = "0f6c1e2a-6a4b-4f5e-9b8e-3f1d2c4b5a69"  # a Celery task id
        async with open_sse(srv.url, [f"task:{tid}"]) as page:  # subscribed before the task exists
            assert (await page.next()).json()["snapshot"] is None
            task = await publisher.acreate_task("render", title="first", id=tid)
            assert (task["id"], task["status"]) == (tid, "pending")
            created = await page.next()
            assert (created.event, created.json()["title"]) == ("task:created", "first")

            with pytest.raises(PublishError) as taken:
                await asyncio.to_thread(publisher.create_task, "render", title="second", id=tid)
            assert (taken.value.status, taken.value.code) == (
                409,
                "conflict",
            ) and "already exists" in taken.value.message
            for bad in ("a/b", "has space", "-starts-with-dash", "é", "x" * 252):
                with pytest.raises(PublishError) as refused:
                    await publisher.acreate_task("render", id=bad)
                assert refused.value.status == 400 and "task id" in refused.value.message, bad
            assert (await publisher.aget_task(tid))["title"] == "first"  # nothing changed

            await publisher.areport(tid, progress=10)
            cancelled = await asyncio.to_thread(publisher.cancel_task, tid, "user left")
            assert (cancelled["status"], cancelled["message"]) == ("cancelled", "user left")
            events = await _events_to_end(page)
        assert events[-1][0] == "task:cancelled"
        with pytest.raises(PublishError) as ended:
            await publisher.acancel_task(tid)
        assert ended.value.status == 409


async def test_redis_publisher_drives_a_task_by_the_nodes_rules_with_no_node_between() -> None:
    import brokers

    from roomcast import RedisPublisher

    async with running(brokers.make_app("redis")) as srv:
        worker = RedisPublisher(str(srv.app.settings.redis_url))
        node = Publisher(srv.url)
        tid = "celery-7"
        async with open_sse(srv.url, [f"task:{tid}", "tasks"]) as page:
            await page.next()
            await page.next()  # the two snapshots
            task = await asyncio.to_thread(worker.create_task, "render", title="frame", owner="ann", id=tid)
            assert (task["id"], task["status"], task["owner"]) == (tid, "pending", "ann")
            assert (await node.aget_task(tid))["title"] == "frame"  # the nodes read what the worker wrote

            running_task = await asyncio.to_thread(worker.report, tid, progress=40, step="mesh")
            assert (running_task["status"], running_task["progress"]) == ("running", 40)
            with pytest.raises(PublishError) as bad:
                await asyncio.to_thread(worker.report, tid, progress=150)
            assert (bad.value.status, bad.value.code) == (400, "bad_request") and "progress" in bad.value.message
            with pytest.raises(PublishError) as taken:
                await asyncio.to_thread(worker.create_task, "render", id=tid)
            assert taken.value.status == 409

            assert (await node.astop_task(tid, by="bob"))["status"] == "stopping"
            answer = await asyncio.to_thread(worker.report, tid, progress=50)
            assert answer["status"] == "stopping"  # how the worker learns of the stop, as over HTTP
            done = await asyncio.to_thread(worker.cancel_task, tid, "stopped")
            assert (done["status"], done["message"], done["progress"]) == ("cancelled", "stopped", 50)

            seen = []
            while not seen or seen[-1] != ("task:cancelled", f"task:{tid}"):
                event = await page.next(timeout=10)
                seen.append((event.event, f"task:{tid}" if "result" in event.json() else "tasks"))
        names = [name for name, room in seen if room == f"task:{tid}"]
        assert names == [
            "task:created",
            "task:updated",
            "task:progress",
            "task:stopping",
            "task:progress",
            "task:cancelled",
        ]
        assert ("task:created", "tasks") in seen  # the summary rooms, as a node publishes them

        with pytest.raises(PublishError) as ended:
            await asyncio.to_thread(worker.report, tid, progress=60)
        assert (ended.value.status, ended.value.code) == (409, "conflict")
        with pytest.raises(PublishError) as missing:
            await asyncio.to_thread(worker.get_task, "nope")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        async with open_sse(srv.url, [f"task:{tid}"]) as late:  # the room was marked finished
            finals = await late.until_end(timeout=10)
        assert [e.event for e in finals] == ["snapshot"] and finals[0].json()["snapshot"]["status"] == "cancelled"


async def test_redis_publisher_refuses_a_bad_task_field_with_the_nodes_answer_and_creates_nothing() -> None:
    import brokers

    from roomcast import RedisPublisher

    async with running(brokers.make_app("redis")) as srv:
        worker = RedisPublisher(str(srv.app.settings.redis_url))
        node = Publisher(srv.url)
        bad_fields: list[dict[str, Any]] = [
            {"kind": ""},
            {"kind": "k" * 300},
            {"owner": ""},
            {"deadline": "tomorrow"},
            {"deadline": True},
            {"title": 7},
        ]
        for bad in bad_fields:
            answers = []
            for publisher in (node, worker):
                with pytest.raises(PublishError) as refused:
                    await asyncio.to_thread(publisher.create_task, **{"kind": "render", **bad})
                answers.append((refused.value.status, refused.value.code, refused.value.message))
            assert answers[0] == answers[1] and answers[0][:2] == (400, "bad_request"), (bad, answers)
        assert (await node.alist_tasks())["tasks"] == []
