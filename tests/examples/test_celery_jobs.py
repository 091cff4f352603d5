"""examples/celery_jobs as its README runs it: the FastAPI app (roomcast mounted) under a
real uvicorn, a real ``celery worker`` (solo pool) on redis-server, a page's SSE stream.

A job sent from the app's ``async def`` route is followed to its result; another is stopped
from the page's button route and ends cancelled. Waits are on the SSE stream, bounded.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import redis
from celeryworker import celery_worker
from servers import uvicorn_running
from sseclient import open_sse

from examples.celery_jobs import jobs, web
from roomcast import Publisher
from roomcast.celery import track

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0
CELERY_DB = 10


async def test_the_app_sends_a_job_a_page_follows_it_to_its_model_and_stops_another(redis_url: str) -> None:
    broker = redis_url.rsplit("/", 1)[0] + f"/{CELERY_DB}"
    redis.Redis.from_url(broker).flushdb()
    jobs.app.conf.broker_url = broker
    async with uvicorn_running(web.app) as url:
        track(jobs.app, Publisher(url))  # this process sends: its tasks go to this app's roomcast
        env = {
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "CELERY_BROKER": broker,
            "ROOMCAST_URL": url,
        }
        async with celery_worker("examples.celery_jobs.jobs", cwd=ROOT, env=env, pool="solo"):
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{url}/sketches/7/generate?seconds=0.2") as answer:
                    assert answer.status == 202
                    job = await answer.json()
                async with open_sse(url, [f"task:{job['id']}"]) as page:
                    events = [(e.event, e.json()) for e in await page.until_end(timeout=WAIT)]
                assert events[-1][0] == "task:completed"
                assert events[-1][1]["result"] == {"sketch": 7, "model": "/models/7.glb"}
                assert events[-1][1]["kind"] == "generate"
                assert {data.get("step") for name, data in events if name == "task:progress"} <= {
                    "trace",
                    "mesh",
                    "texture",
                }

                async with http.post(f"{url}/sketches/8/generate?seconds=20") as answer:
                    job = await answer.json()
                async with open_sse(url, [f"task:{job['id']}"]) as page:
                    while (await page.next(timeout=WAIT)).event != "task:progress":
                        pass
                    async with http.post(f"{url}/jobs/{job['id']}/stop") as answer:
                        assert answer.status == 200 and (await answer.json())["status"] == "stopping"
                    events = [(e.event, e.json()) for e in await page.until_end(timeout=WAIT)]
                assert events[-1][0] == "task:cancelled" and events[-1][1]["message"] == "stopped"
                async with http.post(f"{url}/jobs/{job['id']}/stop") as answer:
                    assert answer.status == 409  # it has ended
