"""Publisher throughput and TCP connections: 1,000 sequential publishes, sync and async.

    .venv/bin/python bench/publisher_keepalive.py [--events 1000] [--rounds 3]

Starts ``bench/server.py`` (the native door) on a free 127.0.0.1 port in a child process,
then, in this process, publishes ``--events`` events one after the other with
``Publisher.publish`` and again with ``Publisher.apublish``, and prints for each: the
events per second (the best of ``--rounds``) and how many TCP connections the server
admitted meanwhile (``roomcast_door_accepted_connections_total`` from ``/metrics``, read
before and after each run; the scrapes' own connections are taken off).

Why sequential: a web worker or a Celery task publishes one event after another, so the
cost measured is one round trip plus, without keep-alive, one TCP handshake per event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from roomcast.publisher import Publisher

HERE = Path(__file__).resolve().parent
_ACCEPTED = re.compile(r'^roomcast_door_accepted_connections_total\{door="native"\} (\S+)$', re.M)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepted(url: str) -> int:
    """The server's admitted-connection count; this scrape's own connection is one of them."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        match = _ACCEPTED.search(answer.read().decode())
    if match is None:
        raise SystemExit("the server's /metrics has no roomcast_door_accepted_connections_total")
    return int(float(match[1]))


def _sync_run(publisher: Publisher, events: int) -> float:
    started = time.perf_counter()
    for i in range(events):
        publisher.publish("bench", "tick", i)
    return time.perf_counter() - started


async def _async_run(publisher: Publisher, events: int) -> float:
    started = time.perf_counter()
    for i in range(events):
        await publisher.apublish("bench", "tick", i)
    return time.perf_counter() - started


def _measure(url: str, events: int, rounds: int, run: str) -> tuple[float, int]:
    """The best events/s over ``rounds`` runs, each with a new ``Publisher``, and the TCP
    connections the first run opened (later sync runs reuse this thread's kept connection;
    each async run has a loop, and so a pool, of its own)."""
    best, connections = 0.0, -1
    for _ in range(rounds):
        publisher = Publisher(url)
        before = _accepted(url)
        elapsed = _sync_run(publisher, events) if run == "sync" else asyncio.run(_async_run(publisher, events))
        opened = _accepted(url) - before - 1  # less the second scrape's own connection
        best = max(best, events / elapsed)
        if connections < 0:
            connections = opened
    return best, connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, str(HERE / "server.py"), "--port", str(port)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        url = f"http://127.0.0.1:{port}"
        print(f"{args.events} sequential publishes to {url}, best of {args.rounds}")
        print(f"{'path':<6} {'events/s':>10} {'TCP connections':>16}")
        for run in ("sync", "async"):
            rate, connections = _measure(url, args.events, args.rounds, run)
            print(f"{run:<6} {rate:>10,.0f} {connections:>16}")
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
