"""A python-socketio application written the usual way: a project board.

Rooms per project, a user session, a class-based ``/admin`` namespace, a catch-all handler,
and acknowledgements both ways (client → server through handler return values, server →
client with ``call`` and ``emit(callback=...)``).

It runs on python-socketio as is. To run it on roomcast, change the one import::

    import socketio                  # python-socketio
    from roomcast import socketio    # roomcast

``tests/socketio_facade/test_board_parity.py`` runs this very file both ways and checks
that clients see the same thing. Serve it with ``uvicorn board:app``.
"""

from __future__ import annotations

import itertools
from typing import Any
from urllib.parse import parse_qs

import socketio

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
app = socketio.ASGIApp(sio)

_card_ids = itertools.count(1)


def project_room(project: str) -> str:
    return f"project:{project}"


@sio.event
async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
    user = auth.get("user") if isinstance(auth, dict) else None
    if not user:
        raise socketio.exceptions.ConnectionRefusedError("who are you?", {"need": "user"})
    board = parse_qs(environ.get("QUERY_STRING", "")).get("board", ["main"])[0]
    client = environ.get("HTTP_X_BOARD_CLIENT", "unknown")
    await sio.save_session(sid, {"user": user, "board": board, "projects": []})
    await sio.emit("welcome", {"user": user, "board": board, "client": client}, to=sid)


@sio.event
async def join(sid: str, project: str) -> dict[str, Any]:
    await sio.enter_room(sid, project_room(project))
    async with sio.session(sid) as session:
        session["projects"].append(project)
        user = session["user"]
    await sio.emit("joined", {"user": user, "project": project}, room=project_room(project), skip_sid=sid)
    return {"rooms": sorted(r for r in sio.rooms(sid) if r != sid)}


@sio.event
async def leave(sid: str, project: str) -> bool:
    await sio.leave_room(sid, project_room(project))
    async with sio.session(sid) as session:
        session["projects"].remove(project)
    return True


@sio.event
async def add_card(sid: str, card: dict[str, Any]) -> dict[str, Any]:
    session = await sio.get_session(sid)
    if card.get("project") not in session["projects"]:
        return {"error": "join the project first"}
    added = {"id": next(_card_ids), "project": card["project"], "title": card["title"], "by": session["user"]}
    await sio.emit("card_added", added, to=project_room(card["project"]), skip_sid=sid)
    return {"id": added["id"]}


@sio.event
async def attach(sid: str, project: str, blob: bytes) -> int:
    """A binary attachment to a project: to the others in it, as bytes."""
    await sio.emit("attached", (project, blob), room=project_room(project), skip_sid=sid)
    return len(blob)


@sio.event
async def whoami(sid: str) -> tuple[str, list[str]]:
    session = await sio.get_session(sid)
    return session["user"], session["projects"]


@sio.event
async def shout(sid: str, text: str) -> None:
    session = await sio.get_session(sid)
    await sio.emit("shouted", {"by": session["user"], "text": text})  # everyone in "/"


@sio.event
async def confirm_me(sid: str, question: str) -> None:
    answer = await sio.call("confirm", question, to=sid, timeout=10)
    await sio.emit("confirmed", {"answer": answer}, to=sid)


@sio.event
async def rate_me(sid: str) -> None:
    async def rated(*stars: Any) -> None:
        await sio.emit("rated", {"stars": list(stars)}, to=sid)

    await sio.emit("rate", "how was it?", to=sid, callback=rated)


@sio.event
async def kick(sid: str) -> None:
    await sio.disconnect(sid)


@sio.on("*")
async def anything(event: str, sid: str, *args: Any) -> dict[str, Any]:
    return {"unhandled": event, "args": list(args)}


@sio.event
async def disconnect(sid: str, reason: str) -> None:
    pass


class Admin(socketio.AsyncNamespace):
    """Operators: a namespace of its own, with rooms of the same names as ``/``'s."""

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        return isinstance(auth, dict) and auth.get("role") == "admin"

    async def on_watch(self, sid: str, project: str) -> str:
        await self.enter_room(sid, project_room(project))  # "/admin"'s room, not "/"'s
        return "watching"

    async def on_announce(self, sid: str, text: str) -> None:
        await self.emit("announcement", text, room=project_room("alpha"))

    async def on_rooms(self, sid: str) -> list[str]:
        return sorted(r for r in self.rooms(sid) if r != sid)


sio.register_namespace(Admin("/admin"))
