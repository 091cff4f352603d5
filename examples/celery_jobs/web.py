"""The web side of the sketch-to-3D example: FastAPI for the app, roomcast mounted beside it.

    .venv/bin/uvicorn examples.celery_jobs.web:app          # then open http://127.0.0.1:8000/

``POST /sketches/{id}/generate`` sends the Celery job from an ``async def`` and answers its
id at once: the roomcast task exists before any worker has it, so the page subscribes to
``task:{id}`` over SSE (``/sse?room=task:{id}``) and misses nothing, even a job that ends
before the page connects (it then gets the final state with the result). The page's stop
button posts to ``/jobs/{id}/stop``; the worker sees it at its next check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

from examples.celery_jobs.jobs import generate
from roomcast import InvalidTransition, RoomcastApp, TaskNotFound

HERE = Path(__file__).parent

rt = RoomcastApp()  # the roomcast server the workers report to (ROOMCAST_URL), in this process
app = FastAPI(lifespan=rt.lifespan)


@app.post("/sketches/{sketch_id}/generate", status_code=202)
async def start(sketch_id: int, seconds: float = 3.0) -> dict[str, str]:
    job = generate.delay(sketch_id, seconds)  # never waits for roomcast: this is the event loop
    return {"id": job.id, "events": f"/sse?room=task:{job.id}"}


@app.post("/jobs/{job_id}/stop")
async def stop(job_id: str) -> dict[str, Any]:
    try:
        return (await rt.app.tasks.request_stop(job_id, by="page")).to_json()
    except TaskNotFound:
        raise HTTPException(404, f"no job {job_id!r}") from None
    except InvalidTransition as exc:  # it has ended
        raise HTTPException(409, str(exc)) from None


@app.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(HERE / "static" / "index.html")


app.mount("/", rt)  # last: /sse, /ws, /socket.io/, /api/ (the workers' task reports)
