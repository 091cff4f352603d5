"""A real ``uvicorn`` process serving an app module written for the test, for tests in any folder."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

WAIT = 20.0


@contextlib.asynccontextmanager
async def uvicorn_serving(
    tmp_path: Path, source: str, target: str = "board:app"
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str, list[str]]]:
    """``uvicorn target`` on a free port, ``source`` written as the module ``target`` names:
    (process, base URL, its output lines so far and to come). Killed on exit if still running."""
    module = target.split(":", 1)[0]
    (tmp_path / f"{module}.py").write_text(source)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--app-dir",
        str(tmp_path),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "info",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    reader: asyncio.Future[None] | None = None
    try:
        async with asyncio.timeout(WAIT):
            while not any("Uvicorn running on" in line for line in lines):
                raw = await proc.stdout.readline()
                assert raw, "uvicorn ended:\n" + "".join(lines)
                lines.append(raw.decode(errors="replace"))
        found = re.search(r"Uvicorn running on (http://\S+)", "".join(lines))
        assert found is not None

        async def read_on() -> None:  # keep the pipe flowing: a full one would stall uvicorn
            assert proc.stdout is not None
            while raw := await proc.stdout.readline():
                lines.append(raw.decode(errors="replace"))

        reader = asyncio.ensure_future(read_on())
        yield proc, found[1], lines
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if reader is not None:
            await asyncio.wait_for(reader, WAIT)
