"""A project board with live cards and a stoppable crawl: FastAPI for the API, roomcast for rooms.

Run from the repository root:  .venv/bin/uvicorn examples.project_board.app:app
(or .venv/bin/python -m examples.project_board.app), then open http://127.0.0.1:8000/.

Rooms: ``projects`` (project:created, project:renamed) and ``project:{pid}`` (card:created,
card:updated, card:deleted, and every event of that project's crawls). A client subscribing
to either gets the current state first. A crawl is a roomcast task of kind ``crawl``: its own
room ``task:{id}`` gets its state on join (also after it ended), ``crawl_progress`` (coalesced
to ~10/s), ``crawl:stopping``, ``crawl:stopped`` and ``crawl:completed``, each carrying the
crawl in the hand-rolled board's own field names (``crawl_wire``); ``task:stop {id}`` from a
client is the stop button.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel

from roomcast import Hub, InvalidTransition, RoomcastApp, Settings, Task, TaskEvents, TaskHandle, TaskNotFound
from roomcast.tasks.model import TaskStatus

HERE = Path(__file__).parent
CLIENT_JS = HERE.parents[1] / "tests/interop/node/node_modules/socket.io-client/dist/socket.io.min.js"
CLIENT_CDN = "https://cdn.socket.io/4.8.1/socket.io.min.js"

# The event names the hand-rolled board used, kept on the wire unchanged.
CRAWL_EVENTS = TaskEvents(
    created="crawl:started",
    progress="crawl_progress",
    stopping="crawl:stopping",
    cancelled="crawl:stopped",
    completed="crawl:completed",
    failed="crawl:failed",
)

# The field names the hand-rolled board sent, kept on the wire unchanged too: its page reads
# `progressId`, `percentage` and `status: "crawling"`. Clients get this form; roomcast's API,
# store and dashboard keep the canonical task.
CRAWL_STATUS = {TaskStatus.RUNNING: "crawling"}


def crawl_wire(task: Task) -> dict[str, Any]:
    return {
        "progressId": task.id,
        "project": task.metadata.get("project"),
        "status": CRAWL_STATUS.get(task.status, task.status.value),
        "percentage": task.progress or 0,
        "log": task.step,
        "result": task.result,
        "error": task.error,
    }


hub = Hub()
# recovery_window: a browser that drops for < 2 min gets its rooms and missed events back.
rt = RoomcastApp(
    hub=hub,
    settings=Settings(task_events={"crawl": CRAWL_EVENTS}, task_payloads={"crawl": crawl_wire}, recovery_window=120),
)
tasks = rt.app.tasks


@dataclass
class Project:
    id: str
    name: str
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)
    crawl: str | None = None  # the task id of the latest crawl

    def summary(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


projects: dict[str, Project] = {}
ids = itertools.count(1)


class Name(BaseModel):
    name: str


class NewCard(BaseModel):
    title: str


class CardChange(BaseModel):
    title: str | None = None
    done: bool | None = None


def project_or_404(pid: str) -> Project:
    project = projects.get(pid)
    if project is None:
        raise HTTPException(404, f"no project {pid!r}")
    return project


# -- state on join: the built-in `subscribe {room}` answers with these ----------------------


@hub.snapshot("projects")
def projects_state(room: str) -> list[dict[str, str]]:
    return [p.summary() for p in projects.values()]


@hub.snapshot("project:*")
async def project_state(room: str) -> dict[str, Any] | None:
    project = projects.get(room.removeprefix("project:"))
    if project is None:
        return None
    crawl = tasks.client_form(await tasks.get(project.crawl)) if project.crawl else None  # as its events read
    return {**project.summary(), "cards": list(project.cards.values()), "crawl": crawl}


@tasks.route
def crawl_project_room(task: Task) -> list[str]:
    """Every change of a crawl also goes, in full, to its project's room."""
    project = task.metadata.get("project")
    return [f"project:{project}"] if task.kind == "crawl" and isinstance(project, str) else []


# -- the API ------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with rt.lifespan():  # roomcast (hub, task store) starts and stops with FastAPI, in one loop
        yield


app = FastAPI(title="project board", lifespan=lifespan)


@app.post("/projects", status_code=201)
async def create_project(body: Name) -> dict[str, str]:
    project = Project(f"p{next(ids)}", body.name)
    projects[project.id] = project
    await hub.publish("projects", "project:created", project.summary())
    return project.summary()


@app.get("/projects")
async def list_projects() -> list[dict[str, str]]:
    return projects_state("projects")


@app.patch("/projects/{pid}")
async def rename_project(pid: str, body: Name) -> dict[str, str]:
    project = project_or_404(pid)
    project.name = body.name
    await hub.publish("projects", "project:renamed", project.summary())
    return project.summary()


@app.post("/projects/{pid}/cards", status_code=201)
async def create_card(pid: str, body: NewCard) -> dict[str, Any]:
    project = project_or_404(pid)
    cid = f"c{next(ids)}"
    card = project.cards[cid] = {"id": cid, "project": pid, "title": body.title, "done": False}
    await hub.publish(f"project:{pid}", "card:created", card)
    return card


@app.patch("/projects/{pid}/cards/{cid}")
async def update_card(pid: str, cid: str, body: CardChange) -> dict[str, Any]:
    card = project_or_404(pid).cards.get(cid)
    if card is None:
        raise HTTPException(404, f"no card {cid!r} in project {pid!r}")
    card.update(body.model_dump(exclude_none=True))
    await hub.publish(f"project:{pid}", "card:updated", card)
    return card


@app.delete("/projects/{pid}/cards/{cid}", status_code=204)
async def delete_card(pid: str, cid: str) -> Response:
    if project_or_404(pid).cards.pop(cid, None) is None:
        raise HTTPException(404, f"no card {cid!r} in project {pid!r}")
    await hub.publish(f"project:{pid}", "card:deleted", {"id": cid, "project": pid})
    return Response(status_code=204)


async def crawl(task: TaskHandle, pages: int, delay: float) -> dict[str, int]:
    """The crawl itself. roomcast publishes its start, progress, stop and end to its rooms."""
    for page in range(1, pages + 1):
        await asyncio.sleep(delay)  # fetch and parse one page; a stop cancels us here
        task.progress(100 * page / pages, step=f"page {page} of {pages}")
    return {"pages": pages, "links": 7 * pages}  # the result


@app.post("/projects/{pid}/crawl", status_code=202)
async def start_crawl(
    pid: str, pages: int = Query(20, ge=1, le=100_000), delay: float = Query(0.1, ge=0, le=10)
) -> dict[str, str]:
    project = project_or_404(pid)
    task = await tasks.spawn(
        "crawl", lambda t: crawl(t, pages, delay), title=f"Crawl {project.name}", metadata={"project": pid}
    )
    project.crawl = task.id
    return {"id": task.id, "room": f"task:{task.id}"}


@app.post("/projects/{pid}/crawl/{task_id}/stop")
async def stop_crawl(pid: str, task_id: str) -> Any:
    """The stop button over HTTP; Socket.IO clients can emit ``task:stop {id}`` instead."""
    project_or_404(pid)
    try:
        task = await tasks.get(task_id)
        if task.kind != "crawl" or task.metadata.get("project") != pid:
            raise TaskNotFound(task_id)
        return tasks.client_form(await tasks.request_stop(task_id))
    except TaskNotFound:
        raise HTTPException(404, f"no crawl {task_id!r} in project {pid!r}") from None
    except InvalidTransition as exc:
        raise HTTPException(409, str(exc)) from None


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(HERE / "static" / "index.html")


@app.get("/client/socket.io.min.js", include_in_schema=False)
async def socketio_client() -> Response:
    """The official browser client: the copy the tests installed, else the CDN's."""
    return FileResponse(CLIENT_JS) if CLIENT_JS.is_file() else RedirectResponse(CLIENT_CDN)


app.mount("/", rt)  # last: /socket.io/, /sse, /ws, /tasks/{id}/events, /api/ (roomcast's)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
