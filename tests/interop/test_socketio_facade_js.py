"""The official ``socket.io-client`` sees the same of the example python-socketio board whether
the file runs on python-socketio (the reference) or, with its import changed, on roomcast."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from servers import uvicorn_running

sys.path.insert(0, str(Path(__file__).parents[1] / "socketio_facade"))

from boards import load_board  # noqa: E402

RUN_TIMEOUT_S = 30.0


async def node_transcript(node_dir: Path, url: str) -> dict[str, Any]:
    """Run the node driver against ``url`` (the server runs on this loop, so no blocking wait)."""
    process = await asyncio.create_subprocess_exec(
        "node",
        "sio_board_scenario.mjs",
        url,
        cwd=node_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(RUN_TIMEOUT_S):
        out, err = await process.communicate()
    lines = out.decode().splitlines()
    assert process.returncode == 0 and lines, f"driver failed ({process.returncode}): {out.decode()}\n{err.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


async def test_socket_io_client_sees_the_same_board_on_roomcast_and_python_socketio(node_peers: Path) -> None:
    async with uvicorn_running(load_board("python-socketio").app) as url:
        expected = await node_transcript(node_peers, url)
    assert ["card_added", {"id": 1, "project": "alpha", "title": "from js", "by": "alice"}] in expected["bob"]
    assert ["ack:wave", {"unhandled": "wave", "args": [1, "two"]}] in expected["bob"]
    assert ["rated", {"stars": [5, "stars"]}] in expected["alice"]
    assert ["welcome", {"user": "alice", "board": "b2", "client": "js"}] in expected["alice"]
    async with uvicorn_running(load_board("roomcast").app) as url:
        assert await node_transcript(node_peers, url) == expected
