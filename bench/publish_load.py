"""Publish load from a worker process: the ``publisher`` scenario of ``bench/run.py``.

    .venv/bin/python bench/publish_load.py '{"redis": URL, "http": BASE, "count": N, "concurrency": C}'

Publishes ``count`` events (about 100 bytes each) to one room three ways and prints one JSON
line with the rates: ``RedisPublisher.publish`` (blocking, one at a time), ``apublish`` with
``concurrency`` calls in flight (a Celery worker with an event loop, or several threads), and
the HTTP ``Publisher`` through a node, one at a time, for comparison.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from roomcast import Publisher, RedisPublisher


def main() -> None:
    spec = json.loads(sys.argv[1])
    count, concurrency = spec["count"], spec["concurrency"]
    body = {"body": "x" * 64}
    worker = RedisPublisher(spec["redis"])
    worker.publish("warm", "tick", body)

    started = time.perf_counter()
    for n in range(count):
        worker.publish("bench", "tick", {**body, "seq": n})
    sync_rate = count / (time.perf_counter() - started)

    async def flood() -> float:
        queue = iter(range(count))

        async def one_lane() -> None:
            for n in queue:
                await worker.apublish("bench", "tick", {**body, "seq": n})

        began = time.perf_counter()
        await asyncio.gather(*(one_lane() for _ in range(concurrency)))
        return count / (time.perf_counter() - began)

    async_rate = asyncio.run(flood())

    http = Publisher(spec["http"])
    started = time.perf_counter()
    for n in range(count // 4):
        http.publish("bench", "tick", {**body, "seq": n})
    http_rate = (count // 4) / (time.perf_counter() - started)
    print(json.dumps({"sync_rate": sync_rate, "async_rate": async_rate, "http_rate": http_rate}), flush=True)


if __name__ == "__main__":
    main()
