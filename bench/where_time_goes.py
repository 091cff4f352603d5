"""Where a fan-out's time goes: user against kernel CPU, system calls, py-spy, per delivered message.

    .venv/bin/python bench/where_time_goes.py [--servers roomcast,uws] [--tool split|strace|pyspy]

The figures of "Where the time goes" in docs/performance.md. Each run is one bounded fan-out
of ``bench/run.py`` (a fresh server on core 0, the load generator on core 1, 4 publications in
flight) at 1000 and at 5000 subscribers, with one tool around the server between the load
generator's phases:

* ``split``: utime and stime from ``/proc/<pid>/stat`` per delivered message, and, for a
  Python server, its write system calls per delivered message from ``/proc/<pid>/io``
  (``syscw``; ``sendto``, which uWS uses, is not counted there);
* ``strace``: ``strace -c -f`` attached to the server, every system call per delivered
  message by name (strace slows the server, which may change how much it batches: compare
  with ``split``'s ``syscw``);
* ``pyspy``: ``py-spy record --idle -f raw`` of a Python server, summed by line (self) into
  the share of the main thread's samples.

A benchmark helper, not a test: it prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import BENCH, CLK_TCK, Run

SIZES = {1000: 1000, 5000: 200}  # subscribers: publications, 1,000,000 deliveries each
STRACE_SIZES = {1000: 300, 5000: 60}  # shorter under strace, which slows the server
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def user_system(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def write_calls(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("syscw:"))


def strace_counts(path: str) -> dict[str, int]:
    """``strace -c`` output: calls by system call name."""
    calls: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls[parts[-1]] = int(parts[3])
    return calls


def pyspy_shares(path: str) -> dict[str, float]:
    """The main thread's samples by innermost line, as shares (idle thread-pool workers left out)."""
    lines: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for row in f:
            stack, count = row.rsplit(" ", 1)
            if "Thread._bootstrap" in stack:
                continue
            lines[stack.split(";")[-1]] += int(count)
    total = sum(lines.values()) or 1
    return {frame: round(n / total, 3) for frame, n in lines.most_common(12)}


def measure(server: str, subs: int, tool: str, workdir: str) -> dict[str, Any]:
    messages = (STRACE_SIZES if tool == "strace" else SIZES)[subs]
    run = Run(server, {"scenario": "fanout", "subs": subs, "messages": messages, "window": 4})
    watcher: subprocess.Popen[bytes] | None = None
    out = f"{workdir}/{tool}-{server}-{subs}.txt"
    python = not server.startswith(("uws", "node"))
    try:
        run.phase()
        if tool == "strace":
            watcher = subprocess.Popen(["strace", "-c", "-f", "-o", out, "-p", str(run.pid)], stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the first publication
        elif tool == "pyspy" and python:
            argv = [
                PY_SPY,
                "record",
                "-p",
                str(run.pid),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                out,
                "--nonblocking",
                "--idle",
            ]
            watcher = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2.0)  # py-spy samples from its second second
        user0, system0 = user_system(run.pid)
        writes0 = write_calls(run.pid)
        run.go()
        done = run.phase()
        user1, system1 = user_system(run.pid)
        writes1 = write_calls(run.pid)
        if watcher is not None:
            watcher.send_signal(signal.SIGINT)
            watcher.wait(30)
    finally:
        run.close()
    delivered = done["delivered"]
    figures: dict[str, Any] = {"server": server, "subs": subs, "delivered": delivered, "tool": tool}
    if tool == "split":
        figures["user_us"] = round((user1 - user0) / delivered * 1e6, 2)
        figures["kernel_us"] = round((system1 - system0) / delivered * 1e6, 2)
        figures["server_share"] = round((user1 - user0 + system1 - system0) / done["seconds"], 2)
        figures["loadgen_share"] = round(done["loadgen_cpu_share"], 2)
        if python:
            figures["write_calls_per_msg"] = round((writes1 - writes0) / delivered, 3)
    elif tool == "strace":
        calls = strace_counts(out)
        figures["calls_per_msg"] = round(sum(calls.values()) / delivered, 4)
        figures["by_call"] = {
            name: round(n / delivered, 4) for name, n in sorted(calls.items(), key=lambda kv: -kv[1])[:6]
        }
    elif tool == "pyspy" and python:
        figures["main_thread_lines"] = pyspy_shares(out)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", default="roomcast,uws")
    parser.add_argument("--tool", choices=("split", "strace", "pyspy"), default="split")
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    if args.tool == "strace" and shutil.which("strace") is None:
        parser.error("strace is not installed")
    servers = [s for s in args.servers.split(",") if s]
    if "uws" in servers and not (BENCH / "uws" / "node_modules" / "uwebsockets").is_dir():
        parser.error("the uws row needs bench/uws installed: `make bench` (or `cd bench/uws && npm ci`)")
    with tempfile.TemporaryDirectory(prefix="roomcast-where-") as workdir:
        for _ in range(args.reps):
            for subs in SIZES:
                for server in servers:
                    print(json.dumps(measure(server, subs, args.tool, workdir)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
