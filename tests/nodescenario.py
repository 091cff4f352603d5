"""Runs a Node scenario script to its end and returns what it observed, for tests in any folder.

A scenario prints one JSON object per line and ends with ``{"type": "done"}``. It runs as a
subprocess awaited with a timeout, so a server on the test's own event loop keeps serving;
a scenario that fails, hangs or ends without ``done`` fails the test with its output.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

Observations = list[dict[str, Any]]


async def run_node_scenario(
    script: Path, options: dict[str, Any], *, timeout: float, cwd: Path | None = None
) -> Observations:
    process = await asyncio.create_subprocess_exec(
        "node",
        str(script),
        json.dumps(options),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{script.name} did not finish within {timeout} s")
    out = stdout.decode()
    observations = [json.loads(line) for line in out.splitlines() if line.strip()]
    if process.returncode != 0 or not observations or observations[-1]["type"] != "done":
        pytest.fail(f"scenario failed (exit {process.returncode})\nstdout:\n{out}\nstderr:\n{stderr.decode()}")
    return observations
