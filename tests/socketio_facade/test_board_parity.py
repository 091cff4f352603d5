"""The example board runs unchanged on roomcast: python-socketio's own client sees exactly what
it sees when the same file runs on python-socketio (the reference), on both of roomcast's doors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from boards import load_board  # noqa: E402
from servers import running, uvicorn_running  # noqa: E402
from transcript import run  # noqa: E402

_reference: dict[str, Any] = {}


async def reference_transcript() -> dict[str, Any]:
    """The board on python-socketio under uvicorn (run once per session)."""
    if not _reference:
        async with uvicorn_running(load_board("python-socketio").app) as url:
            _reference.update(await run(url))
    return _reference


async def test_reference_transcript_shows_the_behaviour_compared() -> None:
    seen = await reference_transcript()
    assert seen["nobody"] == [["connect_error", {"message": "who are you?", "data": {"need": "user"}}]]
    assert ["welcome", {"user": "alice", "board": "b1", "client": "py"}] in seen["alice"]
    assert ["card_added", {"id": 1, "project": "alpha", "title": "first", "by": "alice"}] in seen["bob"]
    assert not any(e[0] == "card_added" for e in seen["alice"] + seen["carol"])  # skip_sid, other room
    assert ["ack:wave", {"unhandled": "wave", "args": [1, "two"]}] in seen["carol"]
    assert ["attached", "alpha", b"\x00\x01binary"] in seen["bob"]
    assert ["confirmed", {"answer": "yes: ship it?"}] in seen["alice"]
    assert ["rated", {"stars": [5, "stars"]}] in seen["alice"]
    assert not any(e[0] == "shouted" for e in seen["admin"])  # another namespace
    assert not any(e[0] == "announcement" for e in seen["alice"] + seen["bob"])  # "/admin"'s room
    assert seen["eve"] == [["connect_error", {"message": "Connection rejected by server"}]]


async def test_the_board_on_roomcast_asgi_matches_python_socketio() -> None:
    expected = await reference_transcript()
    async with uvicorn_running(load_board("roomcast").app) as url:
        assert await run(url) == expected


async def test_the_board_on_roomcast_native_door_matches_python_socketio() -> None:
    expected = await reference_transcript()
    board = load_board("roomcast")
    async with running(board.sio.app) as server:
        assert await run(server.url) == expected


async def test_the_board_over_long_polling_matches_too() -> None:
    expected = await reference_transcript()
    board = load_board("roomcast")
    async with running(board.sio.app) as server:
        assert await run(server.url, ["polling"]) == expected
