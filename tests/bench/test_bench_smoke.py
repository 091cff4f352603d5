"""``make bench`` at a small scale: every server starts, every scenario runs, the table prints.

Figures are not checked here (benchmarks are not tests; see docs/performance.md); what is
checked is that the harness a reader reruns works end to end with every peer, and that the
TLS row (wss:// to a certificate made at the start), the observed row (info logs, /metrics
scraped) and the in-process native door's row (uvicorn's lifespan opens it) run; the observed
row itself fails its run unless it was scraped and logged. The servers are named, so the run
is the same whether or not ``make bench`` has installed the uWebSockets ceiling
(``bench/uws``, never a test dependency).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ("roomcast", "roomcast-asgi", "node", "python-socketio")
# the native door over TLS, logged and scraped, and inside uvicorn's process (RoomcastApp(native_port=...))
VARIANTS = ("roomcast-tls", "roomcast-observed", "roomcast-asgi-native")
CLUSTERS = ("roomcast-redis1", "roomcast-redis2")
# the native door on the pure-Python fallback (ROOMCAST_PURE_PYTHON=1), beside the compiled row
PURE = "roomcast-pure"


def test_small_bench_run_prints_the_table_with_every_server_and_ratio() -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            *("--reps", "1", "--scale", "small"),
            *("--servers", ",".join((*SERVERS, "bare-asgi", "roomcast-facade", PURE, *VARIANTS, *CLUSTERS))),
        ],
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
        *VARIANTS,
        "roomcast-redis1",
        "roomcast-redis2",
        "roomcast/node",
        "roomcast/python-socketio",
        "roomcast-facade",
        "roomcast-facade/roomcast",
        "roomcast-asgi/node",
        "roomcast-asgi/bare-asgi",
        "roomcast-asgi-native/roomcast",
        "roomcast-redis2/roomcast",
        "roomcast-tls/roomcast",
        "roomcast-observed/roomcast",
        "roomcast-pure/roomcast",
    ):
        assert column in header.split()
    names = header.split()[1:]

    def measured(metric: str) -> dict[str, str]:
        """The first row naming ``metric``: each column's cell (repetitions 1: one value each)."""
        row = next(line for line in lines if metric in line)
        return dict(zip(names, row.split("]", 1)[1].split()))

    # every server measured fan-out, the TLS and observed rows and the clusters too
    fanout = measured("server CPU per delivered msg")
    assert all(fanout[s] != "–" for s in (*SERVERS, PURE, *VARIANTS, "roomcast-redis1", "roomcast-redis2")), fanout
    latency = measured("latency p99")  # the variant rows run fan-out only
    assert all(latency[s] != "–" for s in (*SERVERS, "roomcast-redis1", "roomcast-redis2")), latency
    assert all(latency[s] == "–" for s in VARIANTS), latency
    busy = measured("server CPU per delivered msg at 1,000 deliveries/s")  # the single process against the clusters
    assert all(busy[s] != "–" for s in ("roomcast", "roomcast-redis1", "roomcast-redis2")), busy
    assert all(busy[s] == "–" for s in SERVERS if s != "roomcast"), busy
    for metric in ("idle memory per connection", "CPU per connect"):  # one process's figures
        row = measured(metric)
        assert all(row[s] != "–" for s in SERVERS), row
    assert any("RedisPublisher.publish" in line for line in lines)
    assert "failed runs" not in result.stdout
