"""The Celery tasks of ``test_celery.py``: imported by the test (which sends them) and by the
real ``celery worker`` process it starts (which runs them).

Configured from the environment in the worker (``CELERYJOBS_BROKER``: the Celery broker's
Redis URL; ``CELERYJOBS_ROOMCAST``: the roomcast server's URL for ``Publisher``, or the
nodes' ``redis://`` URL for ``RedisPublisher``) and by ``configure`` in the test.

The ``time.sleep`` calls below are the jobs' simulated work, which a worker runs; the test
itself waits on events only.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from roomcast import Publisher, RedisPublisher
from roomcast.celery import RoomcastTask, track

app = Celery("celeryjobs")

LONGEST_JOB = 20.0
"""Seconds a job that waits for a stop runs at most: a lost stop ends the test, not the suite."""


def configure(broker: str, roomcast: str) -> None:
    """Point the app at the Celery ``broker`` and track its tasks through ``roomcast``."""
    app.conf.update(
        broker_url=broker,
        result_backend=broker,
        broker_connection_retry_on_startup=True,
        worker_prefetch_multiplier=1,  # one -c 1 worker takes one job at a time: the rest stay queued
        task_acks_late=False,
        worker_hijack_root_logger=False,
    )
    publisher = RedisPublisher(roomcast) if roomcast.startswith("redis") else Publisher(roomcast)
    track(app, publisher, progress_interval=0.05, stop_poll=0.1)


if "CELERYJOBS_BROKER" in os.environ:
    configure(os.environ["CELERYJOBS_BROKER"], os.environ["CELERYJOBS_ROOMCAST"])


@app.task(base=RoomcastTask, bind=True)
def render(self: RoomcastTask, parts: int) -> dict[str, int]:
    """Progress from ``self.roomcast`` and from Celery's own ``update_state``."""
    for i in range(parts):
        self.roomcast.progress(100 * i / parts, step=f"part {i + 1}/{parts}")
        time.sleep(0.06)  # past progress_interval: each part is reported
    self.update_state(state="PROGRESS", meta={"current": 9, "total": 10, "step": "packing"})
    return {"parts": parts}


@app.task(base=RoomcastTask, bind=True)
def crawl(self: RoomcastTask) -> dict[str, int]:
    """Cooperative: checks ``stop_requested`` and returns early when asked to stop."""
    pages = 0
    until = time.monotonic() + LONGEST_JOB
    while not self.roomcast.stop_requested and time.monotonic() < until:
        pages += 1
        self.roomcast.progress(min(pages, 99), step="crawling")
        time.sleep(0.02)
    return {"pages": pages}


@app.task(base=RoomcastTask, bind=True)
def stuck(self: RoomcastTask) -> str:
    """Reports nothing and never checks: only a revoke can end it early."""
    time.sleep(LONGEST_JOB)
    return "woke up"


@app.task(base=RoomcastTask, bind=True)
def explode(self: RoomcastTask, why: str) -> None:
    raise ValueError(why)


@app.task(base=RoomcastTask, bind=True)
def overshoot(self: RoomcastTask) -> None:
    """A bad progress value: refused in the job's own call, which fails the job."""
    self.roomcast.progress(150)


@app.task(base=RoomcastTask, bind=True, max_retries=3)
def flaky(self: RoomcastTask, failures: int) -> dict[str, int]:
    """Fails ``failures`` times (each retried at once), then succeeds."""
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError("upstream down"), countdown=0)
    return {"attempts": self.request.retries + 1}
