"""``bench/publisher_keepalive.py`` at a small scale: it starts its server and prints its table.

Rates are not checked (a benchmark, not a test); the connection counts are, since they do
not depend on the machine: one kept-alive connection per path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_publisher_bench_runs_and_counts_one_connection_per_path() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "publisher_keepalive.py"), "--events", "50", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.startswith(("sync", "async"))}
    assert set(rows) == {"sync", "async"}
    assert rows["sync"][-1] == rows["async"][-1] == "1"
