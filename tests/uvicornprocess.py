"""uvicorn in a subprocess, for the tests that need what only a real process has: signals
(the drain on SIGTERM) and ``--workers N``. In-process uvicorn is ``servers.uvicorn_running``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

__all__ = ["UvicornProcess", "uvicorn_process"]


class UvicornProcess(NamedTuple):
    proc: asyncio.subprocess.Process
    url: str
    """The base URL it listens on (``http://127.0.0.1:<port>``)."""
    lines: list[str]
    """Its output so far and to come (stdout and stderr)."""


@contextlib.asynccontextmanager
async def uvicorn_process(
    app_dir: Path,
    *options: str,
    app: str = "board:app",
    env: dict[str, str] | None = None,
    apps_started: int = 0,
    wait: float = 30.0,
) -> AsyncIterator[UvicornProcess]:
    """``python -m uvicorn <app> --app-dir <app_dir> <options>`` on 127.0.0.1, a free port,
    yielded once it listens and ``apps_started`` apps have run their startup (one a worker).

    Its output is read on until it ends (a full pipe would stall uvicorn); one still running
    at the end is killed. Each wait is bounded by ``wait`` seconds.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--app-dir",
        str(app_dir),
        *options,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "info",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader: asyncio.Future[None] | None = None
    try:
        async with asyncio.timeout(wait):
            while sum("Application startup complete" in line for line in lines) < apps_started or not any(
                "Uvicorn running on" in line for line in lines
            ):
                raw = await proc.stdout.readline()
                assert raw, "uvicorn ended:\n" + "".join(lines)
                lines.append(raw.decode(errors="replace"))
        found = re.search(r"Uvicorn running on (http://\S+)", "".join(lines))
        assert found is not None

        async def read_on() -> None:
            assert proc.stdout is not None
            while raw := await proc.stdout.readline():
                lines.append(raw.decode(errors="replace"))

        reader = asyncio.ensure_future(read_on())
        yield UvicornProcess(proc, found[1], lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), wait)
        if reader is not None:
            await asyncio.wait_for(reader, wait)
