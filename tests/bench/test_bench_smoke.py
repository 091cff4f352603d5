"""``make bench`` at a small scale: every server starts, every scenario runs, the table prints.

Figures are not checked here (benchmarks are not tests; see docs/performance.md); what is
checked is that the harness a reader reruns works end to end with every peer.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("roomcast", "roomcast-asgi", "node", "python-socketio")


def test_small_bench_run_prints_the_table_with_every_server_and_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--reps", "1", "--scale", "small"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    for column in (
        *SERVERS,
        "roomcast-redis1",
        "roomcast-redis2",
        "roomcast/node",
        "roomcast/python-socketio",
        "roomcast-facade",
        "roomcast-facade/roomcast",
        "roomcast-asgi/node",
        "roomcast-redis2/roomcast",
    ):
        assert column in header.split()
    for metric in ("server CPU per delivered msg", "latency p99"):
        row = next(line for line in lines if metric in line)
        assert "–" not in row.split("]", 1)[1], row  # every server measured it, the clusters too
    for metric in ("idle memory per connection", "CPU per connect"):  # one process's figures
        row = next(line for line in lines if metric in line)
        assert "–" not in row.split("]", 1)[1].split()[: len(SERVERS)], row
    assert any("RedisPublisher.publish" in line for line in lines)
    assert "failed runs" not in result.stdout
