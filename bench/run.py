"""Run roomcast and its peers side by side under one load generator; print medians and ratios.

    .venv/bin/python bench/run.py [--reps 3] [--scale full|small] [--servers a,b,...] [--json F]

Every run starts the server under test as a fresh process pinned to core 0 and the load
generator (``bench/node/loadgen.mjs``) pinned to core 1, then reads the server's CPU time
(utime + stime from ``/proc/<pid>/stat``) and resident memory (``VmRSS`` from
``/proc/<pid>/status``) at the phase boundaries the load generator announces. Servers are
interleaved within each repetition (and their order rotated between repetitions), so a
machine that drifts during the run drifts for all of them.

Scenarios (``--scenarios``; sizes per ``--scale``):

* ``fanout1000``, ``fanout5000``: N subscribers join one room; one more connection publishes
  300 (60) events of ~100 bytes through the ``publish`` event, keeping 4 requests in flight
  as a busy backend does. Server CPU per delivered message, delivered messages per second.
* ``fanout1000w1``: the same with one publish request in flight at a time (no bursts, so
  nothing to coalesce: the per-message floor).
* ``fanout1000ws``, ``fanout1000sse``: the 1000 subscribers on roomcast's plain WebSocket or
  SSE instead (roomcast's doors only); the publisher is still a Socket.IO client.
* ``latency``, ``latency1000``: a fixed 10,000 deliveries/s (100 subscribers × 100/s, and
  1000 × 10/s); publish-to-receive time measured inside the load generator, p50 and p99, and
  server CPU per delivered message at that rate, where no server is saturated (a saturated
  fan-out measures a ceiling only as far as the load generator keeps up).
* ``busy1000``: the fixed-rate scenario at 200,000 deliveries/s (1000 subscribers × 200/s),
  where a server is busy and fans out together what arrived during its last writes: the
  publisher sends on a clock, not on acks, as a backend with many independent sources does.
  ``roomcast`` and the cluster rows only (what scaling out costs under open-loop load).
* ``conns``: idle Socket.IO connections opened in steps (warm-up, N1, N2); resident memory
  per connection from each step's ``VmRSS`` growth, the whole process's ``VmRSS`` at N2, CPU
  per connect over the N1 step. Fan-out also reads ``VmRSS`` at its end (every subscriber
  connected): memory during active fan-out.
* ``publisher`` (cluster rows only): a worker process publishes straight into Redis with
  ``RedisPublisher`` (blocking, then 16 in flight), then over HTTP (``bench/publish_load.py``).

The ``roomcast-facade`` row is ``bench/peers/pysio_server.py`` (the python-socketio peer)
with its import changed to ``roomcast.socketio``, on roomcast's native door: its
``emit(room=...)`` beside the ``roomcast`` row's ``hub.publish``, per delivered message
(the fan-out scenarios and ``latency`` only; ``roomcast-facade/roomcast`` is the ratio).

Cluster rows: ``roomcast-redis1`` is one node on a fresh redis-server, ``roomcast-redis2``
two nodes on it; the load generator spreads its connections over the nodes (the publisher
too), so most deliveries cross Redis. Their CPU is summed over every node and Redis, all on
core 0 like the single server, so the ratio to ``roomcast`` is what scaling out costs per
delivered message.

Variant rows of the native door, measured on fan-out only (``fanout1000``, ``fanout5000``) and
shown as a ratio to ``roomcast``: ``roomcast-tls`` serves TLS (``--ssl-certfile``/
``--ssl-keyfile``, a self-signed certificate made at the start of the run) and the load
generator connects over wss://; ``roomcast-observed`` runs as an operator does, with
``--log-level info --log-format json`` (a connection line per open and close, written to a
file) while a scraper in this process reads ``/metrics`` every second, so its ratio is what
metrics and logging cost a fan-out; ``roomcast-asgi-native`` is the ASGI app under uvicorn
with ``RoomcastApp(native_port=...)``, the load generator connecting to that in-process native
door, so its ratio is what sharing the process with uvicorn costs. ``roomcast-asgi/bare-asgi``
is the ASGI door against the least any ASGI app pays (``bench/peers/bare_asgi.py``).
``roomcast-pure`` is the native door on the pure-Python fallback (``ROOMCAST_PURE_PYTHON=1``:
the fan-out modules from their ``.py`` even where a compiled build exists), on fan-out, the
fixed rate and memory, so ``roomcast-pure/roomcast`` is what the compiled path saves.

The ``uws`` row is the ceiling the others are read against: a raw pub/sub fan-out server on
uWebSockets (``bench/uws/server.mjs``, C++ behind a thin Node layer) that speaks the Socket.IO
packets a client receives (``42[...]``, ``43<id>[...]``) on a plain WebSocket, with no
Engine.IO handshake or heartbeat; the load generator drives it in its ``raw`` mode. It runs
when ``bench/uws`` is installed (``make bench`` does it; ``make test`` never does), or when
``--servers`` names it. Single-process fan-out and latency scenarios and ``conns`` only.

This is a benchmark, not a test: it measures and prints; ``tests/bench`` only checks that a
small run works and prints its table.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import functools
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
NODE = shutil.which("node") or "node"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The per-process open-file limit bounds the largest idle-connection count one server can hold.
FD_HEADROOM = 200

SERVERS: dict[str, list[str]] = {
    "roomcast": [PY, str(BENCH / "server.py"), "--door", "native"],
    "roomcast-asgi": [PY, str(BENCH / "server.py"), "--door", "asgi"],
    # the native door on the pure-Python fallback: the fan-out modules from their .py even where
    # a compiled build exists (roomcast._speedups), beside the ``roomcast`` row's compiled path
    "roomcast-pure": ["env", "ROOMCAST_PURE_PYTHON=1", PY, str(BENCH / "server.py"), "--door", "native"],
    # the same uvicorn process with RoomcastApp(native_port=...): clients on the in-process native door
    "roomcast-asgi-native": [PY, str(BENCH / "server.py"), "--door", "asgi-native"],
    "node": [NODE, str(BENCH / "node" / "server.mjs")],
    "python-socketio": [PY, str(BENCH / "peers" / "pysio_server.py")],
    # the same python-socketio file on roomcast.socketio (its import changed), native door
    "roomcast-facade": [PY, str(BENCH / "peers" / "pysio_server.py"), "--facade"],
    # a reference row, not a product: the least any ASGI app pays per message (peers/bare_asgi.py)
    "bare-asgi": [PY, str(BENCH / "peers" / "bare_asgi.py")],
    # the C++ ceiling: raw WebSocket frames carrying Socket.IO packets, uWS's own pub/sub
    "uws": [NODE, str(BENCH / "uws" / "server.mjs")],
    # the native door as production runs it: TLS (a certificate added by ``Run``), and logs
    # at info with /metrics scraped every second (``Scraper``)
    "roomcast-tls": [PY, str(BENCH / "server.py"), "--door", "native"],
    "roomcast-observed": [
        PY,
        str(BENCH / "server.py"),
        "--door",
        "native",
        "--log-level",
        "info",
        "--log-format",
        "json",
    ],
}
# Several processes: a redis-server (core 0, as the nodes) and roomcast nodes on it
# (bench/server.py --redis); the load generator spreads its connections over the nodes, the
# publisher included, so most deliveries cross Redis. CPU is summed over every process.
CLUSTERS: dict[str, int] = {"roomcast-redis1": 1, "roomcast-redis2": 2}
REDIS = shutil.which("redis-server") or "redis-server"
DEFAULT_SERVERS = [
    "roomcast",
    "roomcast-pure",
    "roomcast-asgi",
    "roomcast-asgi-native",
    "node",
    "python-socketio",
    "roomcast-facade",
    "bare-asgi",
    "roomcast-tls",
    "roomcast-observed",
    "roomcast-redis1",
    "roomcast-redis2",
]
UWS_ROW = "uws"
# installed by ``make bench`` only (a native binary from a third-party npm republish): a run
# includes the row when it is there, and says how to get it when --servers asks without it
UWS_INSTALLED = (BENCH / "uws" / "node_modules" / "uwebsockets").is_dir()
if UWS_INSTALLED:
    DEFAULT_SERVERS.insert(DEFAULT_SERVERS.index("roomcast-asgi"), UWS_ROW)
# the load generator's raw mode: no Engine.IO under the Socket.IO packets
RAW_ROWS = {UWS_ROW}
TLS_ROW = "roomcast-tls"
OBSERVED_ROW = "roomcast-observed"
IN_PROCESS_ROW = "roomcast-asgi-native"
# what the variant rows run: fan-out, where a per-message cost would show
VARIANTS = {TLS_ROW, OBSERVED_ROW, IN_PROCESS_ROW}
FOR_VARIANTS = {"fanout1000", "fanout5000"}
PURE_ROW = "roomcast-pure"
# the compiled path's gain and the fallback's figures: fan-out, the fixed rate and its p99, memory
FOR_PURE = {"fanout1000", "fanout5000", "latency1000", "conns"}
SCRAPE_INTERVAL = 1.0  # seconds between two reads of /metrics, as a Prometheus would
# roomcast's own transports: only its two doors speak them (the publisher stays Socket.IO)
ONLY_ROOMCAST = {"fanout1000ws", "fanout1000sse"}
ROOMCAST_SERVERS = {"roomcast", "roomcast-asgi", PURE_ROW, *VARIANTS, *CLUSTERS}
# what a cluster row runs: fan-out and latency against one process, and workers publishing
# (memory per connection is one process's figure, and the transports' rows are the single
# node's: the cluster differs from it per publication, not per connection)
FOR_CLUSTERS = {"fanout1000", "fanout1000w1", "fanout5000", "latency", "latency1000", "busy1000", "publisher"}
# the single process against the cluster rows under open-loop load: roomcast's rows only
AGAINST_CLUSTERS = {"busy1000"}
PUBLISHER_ROW = "roomcast-redis1"
# the facade row is about what emit(room=...) costs beside hub.publish: per delivered message
FOR_FACADE = {"fanout1000", "fanout1000w1", "fanout5000", "latency"}
# workers publishing straight into Redis: only a cluster has a Redis to publish into
ONLY_CLUSTERS = {"publisher"}


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    lower_is_better: bool = True


METRICS = [
    Metric("fanout1000_cpu", "fan-out 1000 subs: server CPU per delivered msg", "µs"),
    Metric("fanout1000_rate", "fan-out 1000 subs: delivered msgs per second", "msg/s", lower_is_better=False),
    Metric("fanout1000w1_cpu", "fan-out 1000 subs, one publication at a time: CPU per delivered msg", "µs"),
    Metric("fanout1000ws_cpu", "fan-out 1000 subs over the plain WebSocket (/ws): CPU per msg", "µs"),
    Metric("fanout1000sse_cpu", "fan-out 1000 subs over SSE (/sse): CPU per msg", "µs"),
    Metric("fanout5000_cpu", "fan-out 5000 subs: server CPU per delivered msg", "µs"),
    Metric("fanout5000_rate", "fan-out 5000 subs: delivered msgs per second", "msg/s", lower_is_better=False),
    Metric("latency_cpu", "server CPU per delivered msg at fixed delivery rate", "µs"),
    Metric("latency1000_cpu", "server CPU per delivered msg at fixed delivery rate, big room", "µs"),
    Metric("latency_p50", "latency p50 at fixed delivery rate", "ms"),
    Metric("latency_p99", "latency p99 at fixed delivery rate", "ms"),
    Metric("latency1000_p50", "latency p50 at fixed delivery rate, big room", "ms"),
    Metric("latency1000_p99", "latency p99 at fixed delivery rate, big room", "ms"),
    Metric("busy1000_cpu", "server CPU per delivered msg at a busy fixed rate, big room", "µs"),
    Metric("busy1000_p50", "latency p50 at a busy fixed rate, big room", "ms"),
    Metric("busy1000_p99", "latency p99 at a busy fixed rate, big room", "ms"),
    Metric("pub_sync_rate", "RedisPublisher.publish, one at a time: publications/s", "pub/s", lower_is_better=False),
    Metric("pub_async_rate", "RedisPublisher.apublish, 16 in flight: publications/s", "pub/s", lower_is_better=False),
    Metric("pub_http_rate", "Publisher over HTTP, one at a time: publications/s", "pub/s", lower_is_better=False),
    Metric("pub_cpu", "publishing from a worker: node + Redis CPU per publication", "µs"),
    Metric("mem_small", "idle memory per connection (N1 conns)", "KiB"),
    Metric("mem_large", "idle memory per connection (N2 conns)", "KiB"),
    Metric("rss_large", "server resident memory with N2 idle conns", "MB"),
    Metric("fanout5000_rss", "server resident memory at the end of the 5000-subscriber fan-out", "MB"),
    Metric("connect_cpu", "server CPU per connect (WS + Engine.IO + Socket.IO)", "µs"),
]
INFO = [
    "fanout1000_server_share",
    "fanout1000_loadgen_share",
    "fanout5000_server_share",
    "fanout5000_loadgen_share",
    "latency1000_server_share",
    "busy1000_server_share",
]

SCALES: dict[str, dict[str, Any]] = {
    "full": {
        "fanout1000": {"subs": 1000, "messages": 300, "window": 4},
        "fanout1000w1": {"subs": 1000, "messages": 300, "window": 1},
        "fanout1000ws": {"subs": 1000, "messages": 300, "window": 4, "protocol": "ws"},
        "fanout1000sse": {"subs": 1000, "messages": 300, "window": 4, "protocol": "sse"},
        "fanout5000": {"subs": 5000, "messages": 60, "window": 4},
        "latency": {"subs": 100, "rate": 100, "seconds": 5, "warmup": 1},
        "latency1000": {"subs": 1000, "rate": 10, "seconds": 5, "warmup": 1},
        "busy1000": {"subs": 1000, "rate": 200, "seconds": 3, "warmup": 1},
        "conns": {"targets": [5000, 20000], "warm": 100},
        "publisher": {"count": 5000, "concurrency": 16},
    },
    "small": {
        "fanout1000": {"subs": 50, "messages": 20, "window": 4},
        "fanout1000w1": {"subs": 50, "messages": 20, "window": 1},
        "fanout1000ws": {"subs": 50, "messages": 20, "window": 4, "protocol": "ws"},
        "fanout1000sse": {"subs": 50, "messages": 20, "window": 4, "protocol": "sse"},
        "fanout5000": {"subs": 100, "messages": 10, "window": 4},
        "latency": {"subs": 10, "rate": 50, "seconds": 0.5, "warmup": 0.2},
        "latency1000": {"subs": 20, "rate": 20, "seconds": 0.5, "warmup": 0.2},
        "busy1000": {"subs": 20, "rate": 50, "seconds": 0.5, "warmup": 0.2},
        "conns": {"targets": [100, 200], "warm": 20},
        "publisher": {"count": 200, "concurrency": 4},
    },
}


# -- measuring a process ------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (all threads, dead ones included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pinned(core: int, argv: list[str]) -> list[str]:
    """``taskset -c core argv`` when the machine has a core to spare; ``argv`` otherwise."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(core), *argv]
    return argv


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)  # a poll of a process we do not control; not a test
    raise RuntimeError(f"server did not listen on {port} within {timeout:.0f} s")


@functools.cache
def certificate() -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, made once per run (PEM files in a
    temporary directory removed at exit): what ``roomcast-tls`` serves."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roomcast bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    folder = tempfile.mkdtemp(prefix="roomcast-bench-tls-")
    atexit.register(shutil.rmtree, folder, True)
    certfile, keyfile = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return certfile, keyfile


class Scraper:
    """Reads ``/metrics`` every ``SCRAPE_INTERVAL`` seconds on a thread, the first at once,
    until ``stop``; a scrape that is not a 200 is an error of the run."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self.error: str | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=10) as response:
                    response.read()
                    self.scrapes += 1
            except Exception as exc:  # reported by ``stop``
                if not self._stopped.is_set():
                    self.error = f"scraping /metrics failed: {exc}"
                return
            if self._stopped.wait(SCRAPE_INTERVAL):
                return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(15)


class Run:
    """One fresh server process and one load generator driving it through a scenario."""

    def __init__(self, server: str, spec: dict[str, Any] | None) -> None:
        self.port = free_port()
        self.others: list[subprocess.Popen[bytes]] = []  # a cluster's Redis and further nodes
        self.loadgen: subprocess.Popen[str] | None = None
        self.scraper: Scraper | None = None
        # the observed row's logs go to a file, as a production server's to its collector
        self.log = tempfile.TemporaryFile() if server == OBSERVED_ROW else None
        try:
            ports = self._start_cluster(CLUSTERS[server]) if server in CLUSTERS else [self.port]
            if server not in CLUSTERS:
                argv = [*SERVERS[server], "--port", str(self.port)]
                if server == TLS_ROW:
                    certfile, keyfile = certificate()
                    argv += ["--ssl-certfile", certfile, "--ssl-keyfile", keyfile]
                self.server = self._start(argv)
            for proc, port in zip([self.server, *self.others], ports):
                wait_for_port(port, proc)
            if server == OBSERVED_ROW:
                self.scraper = Scraper(self.port)
            if spec is None:  # the caller drives the server itself
                return
            spec = {**spec, "ports": ports, "tls": server == TLS_ROW, "raw": server in RAW_ROWS}
            self.loadgen = subprocess.Popen(
                pinned(1, [NODE, str(BENCH / "node" / "loadgen.mjs"), json.dumps(spec)]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=BENCH / "node",
            )
        except BaseException:
            self.close()
            raise

    def _start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        stderr = self.log if self.log is not None else subprocess.PIPE
        return subprocess.Popen(pinned(0, argv), stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)

    def check_observed(self) -> None:
        """The observed row really was observed: scraped, and a connection line logged."""
        if self.scraper is None or self.log is None:
            return
        self.scraper.stop()
        if self.scraper.error is not None:
            raise RuntimeError(self.scraper.error)
        self.log.seek(0)
        logged = sum(1 for line in self.log if b'"logger": "roomcast.connections"' in line)
        if not self.scraper.scrapes or not logged:
            raise RuntimeError(f"observed row: {self.scraper.scrapes} scrapes, {logged} connection lines")

    def _start_cluster(self, nodes: int) -> list[int]:
        """A fresh redis-server (no persistence) and ``nodes`` roomcast nodes on it; their ports."""
        redis_port = free_port()
        redis = self._start(
            [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        )
        self.others.append(redis)
        wait_for_port(redis_port, redis)
        url = self.redis_url = f"redis://127.0.0.1:{redis_port}/0"
        ports = [self.port, *(free_port() for _ in range(nodes - 1))]
        node_argv = [PY, str(BENCH / "server.py"), "--door", "native", "--redis", url]
        self.server = self._start([*node_argv, "--port", str(ports[0])])
        self.others[:0] = [self._start([*node_argv, "--port", str(port)]) for port in ports[1:]]
        return ports

    def cpu(self) -> float:
        """CPU seconds of every process of the server under test (a cluster: nodes and Redis)."""
        return sum(cpu_seconds(proc.pid) for proc in [self.server, *self.others])

    @property
    def pid(self) -> int:
        return self.server.pid

    def phase(self) -> dict[str, Any]:
        """The load generator's next report; raises on an error report or an early exit."""
        assert self.loadgen is not None and self.loadgen.stdout is not None
        line = self.loadgen.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.loadgen.wait()})")
        report: dict[str, Any] = json.loads(line)
        if report.get("phase") == "error":
            raise RuntimeError(report.get("message", "load generator error"))
        return report

    def go(self) -> None:
        assert self.loadgen is not None and self.loadgen.stdin is not None
        self.loadgen.stdin.write("go\n")
        self.loadgen.stdin.flush()

    def close(self) -> None:
        """End the load generator, then the server we started (by its PID; a cluster's every
        process): with its clients gone first, a server has nothing left to drain."""
        if self.scraper is not None:
            self.scraper.stop()
        for proc in (self.loadgen, getattr(self, "server", None), *self.others):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for proc in (getattr(self, "server", None), *self.others):
            if proc is not None and proc.stderr is not None:
                proc.stderr.close()
        if self.loadgen is not None:
            for stream in (self.loadgen.stdin, self.loadgen.stdout):
                if stream is not None:
                    stream.close()
        if self.log is not None:
            self.log.close()


# -- scenarios ----------------------------------------------------------------------------
def fanout(server: str, params: dict[str, Any], prefix: str) -> dict[str, float]:
    run = Run(server, {"scenario": "fanout", **params})
    try:
        run.phase()
        cpu0 = run.cpu()
        run.go()
        done = run.phase()
        cpu = run.cpu() - cpu0
        rss = rss_kib(run.pid)  # every subscriber still connected, the last burst just written
        run.check_observed()
    finally:
        run.close()
    delivered = done["delivered"]
    return {
        f"{prefix}_rss": rss / 1024,
        f"{prefix}_cpu": cpu / delivered * 1e6,
        f"{prefix}_rate": delivered / done["seconds"],
        f"{prefix}_server_share": cpu / done["seconds"],
        f"{prefix}_loadgen_share": done["loadgen_cpu_share"],
    }


def latency(server: str, params: dict[str, Any], prefix: str) -> dict[str, float]:
    run = Run(server, {"scenario": "latency", **params})
    try:
        run.phase()
        cpu0 = run.cpu()
        run.go()
        done = run.phase()
        cpu = run.cpu() - cpu0
    finally:
        run.close()
    return {
        f"{prefix}_p50": done["p50_ms"],
        f"{prefix}_p99": done["p99_ms"],
        f"{prefix}_cpu": cpu / done["delivered"] * 1e6,
        f"{prefix}_server_share": cpu / done["seconds"],
    }


def conns(server: str, params: dict[str, Any]) -> dict[str, float]:
    run = Run(server, {"scenario": "conns", **params})
    settle = 0.5
    try:
        warm = run.phase()["n"]
        time.sleep(settle)
        rss0, cpu0 = rss_kib(run.pid), cpu_seconds(run.pid)
        run.go()
        small = run.phase()["n"]
        cpu1 = cpu_seconds(run.pid)
        time.sleep(settle)
        rss1 = rss_kib(run.pid)
        run.go()
        large = run.phase()["n"]
        time.sleep(settle)
        rss2 = rss_kib(run.pid)
    finally:
        run.close()
    return {
        "mem_small": (rss1 - rss0) / (small - warm),
        "mem_large": (rss2 - rss0) / (large - warm),
        "rss_large": rss2 / 1024,
        "connect_cpu": (cpu1 - cpu0) / (small - warm) * 1e6,
    }


def publisher(server: str, params: dict[str, Any]) -> dict[str, float]:
    """A worker process (core 1) publishing straight into the cluster's Redis, then over HTTP."""
    run = Run(server, None)
    try:
        procs = [run.server, *run.others]
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        spec = {**params, "redis": run.redis_url, "http": f"http://127.0.0.1:{run.port}"}
        done = subprocess.run(
            pinned(1, [PY, str(BENCH / "publish_load.py"), json.dumps(spec)]),
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=300,
        )
        cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
    finally:
        run.close()
    rates = json.loads(done.stdout.strip().splitlines()[-1])
    published = params["count"] * 2 + params["count"] // 4 + 1
    return {
        "pub_sync_rate": rates["sync_rate"],
        "pub_async_rate": rates["async_rate"],
        "pub_http_rate": rates["http_rate"],
        "pub_cpu": cpu / published * 1e6,
    }


def max_idle_connections() -> int:
    """The most connections one server process can hold under this machine's open-file limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return hard - FD_HEADROOM


# -- the table ----------------------------------------------------------------------------
def fmt(value: float) -> str:
    if value >= 10_000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    median = statistics.median(values)
    if len(values) == 1:
        return fmt(median)
    return f"{fmt(median)} ({fmt(min(values))}–{fmt(max(values))})"


def ratio(results: dict[str, dict[str, list[float]]], key: str, a: str, b: str) -> str:
    va, vb = results[a].get(key), results[b].get(key)
    if not va or not vb:
        return "–"
    denominator = statistics.median(vb)
    if denominator == 0:
        return "–"  # a metric too small to resolve at this scale (CPU ticks of 10 ms) has no ratio
    return f"{statistics.median(va) / denominator:.2f}×"


def print_table(results: dict[str, dict[str, list[float]]], servers: list[str], labels: dict[str, str]) -> None:
    pairs = [
        (a, b)
        for a, b in (
            ("roomcast", "uws"),
            ("roomcast-pure", "uws"),
            ("roomcast-pure", "roomcast"),
            ("roomcast", "node"),
            ("roomcast", "python-socketio"),
            ("roomcast-facade", "roomcast"),
            ("roomcast-asgi", "node"),
            ("roomcast-asgi", "bare-asgi"),
            ("roomcast-asgi-native", "roomcast"),
            ("bare-asgi", "node"),
            ("roomcast-tls", "roomcast"),
            ("roomcast-observed", "roomcast"),
            ("roomcast-redis1", "roomcast"),
            ("roomcast-redis2", "roomcast"),
        )
        if a in servers and b in servers
    ]
    header = ["metric", *servers, *(f"{a}/{b}" for a, b in pairs)]
    rows = []
    for metric in METRICS:
        if not any(results[s].get(metric.key) for s in servers):
            continue  # a scenario this run left out
        label = labels.get(metric.key, metric.label)
        rows.append(
            [
                f"{label} [{metric.unit}]",
                *(cell(results[s].get(metric.key, [])) for s in servers),
                *(ratio(results, metric.key, a, b) for a, b in pairs),
            ]
        )
    for key in INFO:
        if not any(results[s].get(key) for s in servers):
            continue
        rows.append(
            [
                key.replace("_", " ") + " [cores]",
                *(cell(results[s].get(key, [])) for s in servers),
                *("" for _ in pairs),
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[Any]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
    print("median (min–max) over the repetitions; ratios are of medians, lower is better except msg/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument(
        "--servers",
        default=",".join(DEFAULT_SERVERS),
        help="comma-separated, from: " + ", ".join([*SERVERS, *CLUSTERS]),
    )
    parser.add_argument(
        "--scenarios",
        default="fanout1000,fanout1000w1,fanout1000ws,fanout1000sse,fanout5000,latency,latency1000,busy1000,conns,publisher",
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args(argv)

    servers = [s for s in args.servers.split(",") if s]
    unknown = [s for s in servers if s not in SERVERS and s not in CLUSTERS]
    if unknown:
        parser.error(f"unknown server(s): {', '.join(unknown)}")
    if UWS_ROW in servers and not UWS_INSTALLED:
        parser.error("the uws row needs bench/uws installed: `make bench` (or `cd bench/uws && npm ci`)")
    scale = {k: dict(v) for k, v in SCALES[args.scale].items()}
    conn_targets = scale["conns"]["targets"]
    limit = max_idle_connections()
    if conn_targets[-1] > limit:
        print(
            f"note: the open-file limit allows {limit + FD_HEADROOM} descriptors per process; "
            f"the large idle-connection step uses {limit} instead of {conn_targets[-1]}",
            file=sys.stderr,
        )
        conn_targets[-1] = limit
    n1, n2 = conn_targets

    def at_rate(key: str) -> str:
        p = scale[key]
        return f"{p['subs'] * p['rate']:,} deliveries/s ({p['subs']} subs × {p['rate']}/s)"

    labels = {
        "mem_small": f"idle memory per connection ({n1:,} conns)",
        "mem_large": f"idle memory per connection ({n2:,} conns)",
        "rss_large": f"server resident memory with {n2:,} idle conns",
        "fanout5000_rss": f"server resident memory at the end of the {scale['fanout5000']['subs']}-subscriber fan-out",
        "latency_p50": f"latency p50 at {at_rate('latency')}",
        "latency_p99": f"latency p99 at {at_rate('latency')}",
        "latency1000_p50": f"latency p50 at {at_rate('latency1000')}",
        "latency1000_p99": f"latency p99 at {at_rate('latency1000')}",
        "busy1000_cpu": f"server CPU per delivered msg at {at_rate('busy1000')}",
        "busy1000_p50": f"latency p50 at {at_rate('busy1000')}",
        "busy1000_p99": f"latency p99 at {at_rate('busy1000')}",
        "latency_cpu": f"server CPU per delivered msg at {at_rate('latency')}",
        "latency1000_cpu": f"server CPU per delivered msg at {at_rate('latency1000')}",
        "fanout1000_cpu": f"fan-out {scale['fanout1000']['subs']} subs: server CPU per delivered msg",
        "fanout1000w1_cpu": f"fan-out {scale['fanout1000w1']['subs']} subs, one publication at a time: CPU per msg",
        "fanout1000_rate": f"fan-out {scale['fanout1000']['subs']} subs: delivered msgs per second",
        "fanout5000_cpu": f"fan-out {scale['fanout5000']['subs']} subs: server CPU per delivered msg",
        "fanout5000_rate": f"fan-out {scale['fanout5000']['subs']} subs: delivered msgs per second",
    }
    scenarios: dict[str, Callable[[str], dict[str, float]]] = {
        "fanout1000": lambda s: fanout(s, scale["fanout1000"], "fanout1000"),
        "fanout1000w1": lambda s: fanout(s, scale["fanout1000w1"], "fanout1000w1"),
        "fanout1000ws": lambda s: fanout(s, scale["fanout1000ws"], "fanout1000ws"),
        "fanout1000sse": lambda s: fanout(s, scale["fanout1000sse"], "fanout1000sse"),
        "fanout5000": lambda s: fanout(s, scale["fanout5000"], "fanout5000"),
        "latency": lambda s: latency(s, scale["latency"], "latency"),
        "latency1000": lambda s: latency(s, scale["latency1000"], "latency1000"),
        "busy1000": lambda s: latency(s, scale["busy1000"], "busy1000"),
        "conns": lambda s: conns(s, scale["conns"]),
        "publisher": lambda s: publisher(s, scale["publisher"]),
    }
    chosen = [s for s in args.scenarios.split(",") if s]

    results: dict[str, dict[str, list[float]]] = {s: defaultdict(list) for s in servers}
    failures: list[str] = []
    for rep in range(args.reps):
        order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
        for scenario in chosen:
            for server in order:
                if scenario in ONLY_ROOMCAST and server not in ROOMCAST_SERVERS:
                    continue
                if scenario not in FOR_CLUSTERS and server in CLUSTERS:
                    continue
                if scenario not in FOR_VARIANTS and server in VARIANTS:
                    continue
                if scenario == "publisher" and server != PUBLISHER_ROW:  # one Redis is enough
                    continue
                if scenario in ONLY_CLUSTERS and server not in CLUSTERS:
                    continue
                if scenario in AGAINST_CLUSTERS and server != "roomcast" and server not in CLUSTERS:
                    continue
                if server == "roomcast-facade" and scenario not in FOR_FACADE:
                    continue
                if server == PURE_ROW and scenario not in FOR_PURE:
                    continue
                started = time.monotonic()
                try:
                    measured = scenarios[scenario](server)
                except Exception as exc:  # a failed run is reported, the others go on
                    failures.append(f"rep {rep + 1} {scenario} {server}: {exc}")
                    print(f"  rep {rep + 1} {scenario:<11} {server:<16} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                for key, value in measured.items():
                    results[server][key].append(value)
                shown = ", ".join(f"{k}={fmt(v)}" for k, v in measured.items())
                print(
                    f"  rep {rep + 1} {scenario:<11} {server:<16} {time.monotonic() - started:5.1f} s  {shown}",
                    file=sys.stderr,
                    flush=True,
                )

    print()
    print(
        f"roomcast benchmark: {args.reps} repetition(s), scale {args.scale}, "
        f"{os.cpu_count()} cores, server on core 0, load generator on core 1"
    )
    print_table(results, servers, labels)
    if failures:
        print("\nfailed runs:\n  " + "\n  ".join(failures))
    if args.json:
        args.json.write_text(json.dumps({s: dict(r) for s, r in results.items()}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
