"""``roomcast tasks list|show|stop`` as a user runs them: real processes against a real server.

The server is the test's own, in-process (so the test can set tasks up through the
``Publisher`` and read their state back); each command is a real ``python -m roomcast``
process, awaited with a timeout, so the server goes on serving while it runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from servers import RunningServer, running

from roomcast import Publisher
from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings

KEY = "k-0123456789abcdef"
WAIT = 30.0


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


async def _roomcast(*args: str, env: dict[str, str] | None = None) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@asynccontextmanager
async def _server() -> AsyncIterator[tuple[RunningServer, Publisher, dict[str, str]]]:
    async with running(App(Hub(), Settings(api_key=KEY))) as srv:
        yield srv, Publisher(srv.url, api_key=KEY), {"ROOMCAST_URL": srv.url, "ROOMCAST_API_KEY": KEY}


async def test_list_prints_one_line_per_task_and_filters() -> None:
    async with _server() as (srv, publisher, env):
        crawl = await publisher.acreate_task("crawl", title="example.com front page", owner="ann")
        await publisher.areport(crawl["id"], progress=40, step="fetch")
        pending = await publisher.acreate_task("index", owner="bob")
        done = await publisher.acreate_task("crawl", title="done", owner="bob")
        await publisher.areport(done["id"], progress=12.5)
        await publisher.acomplete_task(done["id"], {"ok": True})

        everything = await _roomcast("tasks", "list", env=env)
        assert everything.code == 0, everything.err
        assert sorted(everything.lines) == sorted(
            [
                f"{crawl['id']} running 40 crawl example.com front page",
                f"{pending['id']} pending - index",
                f"{done['id']} completed 100 crawl done",
            ]
        )

        # flags instead of the environment; filters combine
        running_crawls = await _roomcast(
            "tasks",
            "list",
            "--url",
            srv.url,
            "--api-key",
            KEY,
            "--status",
            "running",
            "--status",
            "pending",
            "--kind",
            "crawl",
        )
        assert (running_crawls.code, running_crawls.lines) == (
            0,
            [f"{crawl['id']} running 40 crawl example.com front page"],
        )
        bobs = await _roomcast("tasks", "list", "--owner", "bob", "--limit", "1", env=env)
        assert bobs.code == 0 and len(bobs.lines) == 1 and bobs.lines[0].split()[0] in {pending["id"], done["id"]}
        none = await _roomcast("tasks", "list", "--kind", "nothing-of-this-kind", env=env)
        assert (none.code, none.out) == (0, "")

        bad = await _roomcast("tasks", "list", "--status", "sleeping", env=env)
        assert bad.code == 2 and "sleeping" in bad.err  # click refuses it before any request


async def test_show_prints_the_task_json_and_stop_prints_the_new_status() -> None:
    async with _server() as (srv, publisher, env):
        task = await publisher.acreate_task("crawl", title="t", metadata={"depth": 2})
        await publisher.areport(task["id"], progress=10)

        shown = await _roomcast("tasks", "show", task["id"], env=env)
        assert shown.code == 0, shown.err
        assert json.loads(shown.out) == await publisher.aget_task(task["id"])
        assert shown.out.startswith("{\n  ")  # pretty, for people

        stopped = await _roomcast("tasks", "stop", task["id"], "--by", "ann", env=env)
        assert (stopped.code, stopped.out) == (0, "stopping\n"), stopped.err
        after = await publisher.aget_task(task["id"])
        assert after["status"] == "stopping" and "ann" in (after["message"] or "")
        # the worker's next report is how it learns
        assert (await publisher.areport(task["id"], progress=11))["status"] == "stopping"

        pending = await publisher.acreate_task("index")
        stopped = await _roomcast("tasks", "stop", pending["id"], env=env)
        assert (stopped.code, stopped.out) == (0, "cancelled\n")  # no worker to ask: at once

        ended = await _roomcast("tasks", "stop", pending["id"], env=env)
        assert ended.code == 1 and ended.out == "" and ended.err.startswith("error: ") and "cancelled" in ended.err


async def test_unknown_ids_bad_keys_and_unreachable_servers_exit_1_with_the_reason() -> None:
    async with _server() as (srv, _, env):
        for command in ("show", "stop"):
            missing = await _roomcast("tasks", command, "nope", env=env)
            assert missing.code == 1 and missing.out == ""
            assert missing.err.strip() == "error: no task 'nope'"

        wrong_key = await _roomcast("tasks", "list", env={**env, "ROOMCAST_API_KEY": "wrong"})
        assert (wrong_key.code, wrong_key.err.strip()) == (1, "error: invalid API key")

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    unreachable = await _roomcast("tasks", "show", "x", "--url", closed, "--timeout", "5")
    assert unreachable.code == 1 and unreachable.err.startswith("error: cannot reach roomcast at")

    bad_url = await _roomcast("tasks", "list", "--url", "ftp://example")
    assert bad_url.code == 2 and "--url" in bad_url.err
