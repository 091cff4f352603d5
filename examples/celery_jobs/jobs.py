"""The Celery side of the sketch-to-3D example: one task that roomcast tracks.

Imported by the web app (which sends jobs) and by the workers (which run them):

    .venv/bin/celery -A examples.celery_jobs.jobs worker --loglevel=info

``CELERY_BROKER`` is Celery's broker (default ``redis://127.0.0.1:6379/1``). The workers
report to roomcast through ``ROOMCAST_URL``, the web app's base URL (default
``http://127.0.0.1:8000``), or, when the web processes run roomcast on Redis
(``ROOMCAST_REDIS``), straight into that Redis with no HTTP hop.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from roomcast import Publisher, RedisPublisher
from roomcast.celery import RoomcastTask, track

app = Celery("sketches", broker=os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/1"))

if os.environ.get("ROOMCAST_REDIS"):
    track(app, RedisPublisher(os.environ["ROOMCAST_REDIS"]))
else:
    track(app, Publisher(os.environ.get("ROOMCAST_URL", "http://127.0.0.1:8000")))

STAGES = ("trace", "mesh", "texture")


@app.task(base=RoomcastTask, bind=True, roomcast_kind="generate", max_retries=3)
def generate(self: RoomcastTask, sketch_id: int, seconds: float = 3.0) -> dict[str, object]:
    """Turn a sketch into a 3D model (simulated): progress per stage, stoppable, retried once
    when the (simulated) GPU is busy."""
    if sketch_id < 0:
        raise ValueError(f"no sketch {sketch_id}")
    if sketch_id == 0 and self.request.retries == 0:
        raise self.retry(exc=RuntimeError("GPU busy"), countdown=1)
    ticks = 20
    for tick in range(ticks):
        if self.roomcast.stop_requested:  # the page's stop button: end early, cancelled
            return {"sketch": sketch_id, "stopped_at": tick}
        stage = STAGES[tick * len(STAGES) // ticks]
        self.roomcast.progress(100 * tick / ticks, step=stage)
        time.sleep(seconds / ticks)  # the work
    return {"sketch": sketch_id, "model": f"/models/{sketch_id}.glb"}
