"""Run an ``App`` on the native front door until SIGINT/SIGTERM, with a graceful stop; or run
N worker processes that serve one port together (``roomcast serve --workers N``).

Imports ``server.app`` and ``server.native``. uvloop is used when installed (it is a
dependency on every platform it supports).

How ``--workers N`` works, and why this way:

* **Each worker binds its own listening socket with ``SO_REUSEPORT``** and the kernel spreads
  new connections over them. A worker is a whole server (its own hub, Redis broker and node
  id), and rooms are shared through Redis, so ``--workers`` needs ``--redis``: without it a
  room's subscribers and publishers would be split between processes, silently.
* **The parent only supervises.** It first binds (without listening) one socket per address
  on the chosen port: ``--port 0`` is resolved to one real port every worker shares, the
  port stays ours while a worker restarts, and a port some other process already uses is
  refused at once (that check binds without ``SO_REUSEPORT``, which would otherwise let a
  second server on the same port take half of the connections).
* **Workers are fresh interpreters started with ``subprocess``** (``python -c`` with the
  settings pickled on stdin), not ``fork`` and not ``multiprocessing``. ``fork`` would copy
  the parent's threads and event-loop state (uvloop's included) into the child.
  ``multiprocessing``'s spawn gives no way to start the child in a session of its own, and
  that is what keeps signals simple: a worker is started with ``start_new_session``, so a
  Ctrl-C in the terminal (SIGINT to the whole foreground group) and a hang-up reach the
  parent only, which forwards the signal once; a worker never gets a stray SIGINT while
  it is still importing (a traceback instead of a clean stop), nor one signal twice.
* **Stopping:** SIGTERM or SIGINT to the parent is forwarded to every worker, which stops
  gracefully (it drains for up to ``--shutdown-grace``, ``server.drain``, then
  ``App.shutdown``); a worker still running ``STOP_TIMEOUT`` seconds past the grace is killed. A second signal kills the remaining workers at once. The parent then exits 0.
* **A worker that dies** is logged with its status and started again, after a delay from
  ``roomcast.backoff`` (0.5 s growing to 30 s with jitter while it keeps dying; reset once a
  worker has served ``STABLE_AFTER`` seconds): the other workers keep serving, the dead one's
  clients reconnect to them, and capacity comes back. Restarting the whole group instead
  would drop every worker's connections for one crash. The exception is the start: a
  worker that dies before every worker is listening means the configuration cannot work
  (Redis unreachable, a bad file), so the parent stops the others and exits 1.
* **A parent that dies** (even by SIGKILL) closes each worker's stdin; a worker reads that
  end of file as a stop request, so no worker outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from collections.abc import Callable, Coroutine, Sequence
from ssl import SSLContext
from typing import Any

from roomcast.backoff import Backoff
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.drain import Drain, DrainPlan
from roomcast.server.logs import configure_logging
from roomcast.server.native import DoorLimits, serve
from roomcast.server.native_output import WriteCoalescer
from roomcast.server.proxy import ProxyTrust
from roomcast.server.tls import reload_certificate, server_context

__all__ = [
    "run",
    "serve_app",
    "listen",
    "drain",
    "run_workers",
    "CannotListen",
    "NEEDS_REDIS",
    "STOP_TIMEOUT",
    "HURRY_BOUND",
    "STABLE_AFTER",
]

logger = logging.getLogger("roomcast.workers")

STOP_TIMEOUT = 5.0
"""Seconds past ``Settings.shutdown_grace`` that the parent waits for a signalled worker to
stop gracefully before killing it: a worker drains for up to the grace (``server.drain``),
and this margin is for its shutdown on a loaded machine."""

HURRY_BOUND = 1.0
"""Seconds after a second signal within which a process exits, its shutdown done or not."""

STABLE_AFTER = 30.0
"""Seconds a worker must have served for its restart delay to start again from the shortest."""

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CannotListen(OSError):
    """The listening socket could not be had: the port is taken, the address is not this
    machine's, or a low port needs privileges. One class for ``run`` and ``run_workers``, so
    the CLI reports both the same way, in one line; ``str()`` is that line's text."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        # create_server's message repeats the address; the errno's own text says it plainly.
        reason = os.strerror(cause.errno) if isinstance(cause.errno, int) and cause.errno > 0 else None
        reason = (reason or cause.strerror or str(cause)).lower()
        shown = f"[{host}]" if ":" in host else host
        super().__init__(cause.errno, f"cannot listen on {shown}:{port}: {reason}")

    def __str__(self) -> str:
        return str(self.strerror)


async def serve_app(
    app: App,
    *,
    on_ready: Callable[[str, int], None] | None = None,
    reuse_port: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` until ``stop`` is set, SIGINT or SIGTERM; calls ``on_ready(host, port)``
    once listening.

    The signal handlers are installed before the app starts, so a signal that arrives while
    it is starting still ends in a graceful stop rather than the default abrupt exit.
    ``reuse_port`` binds with ``SO_REUSEPORT`` (the listening socket of one worker of many).
    With ``ssl_certfile`` it serves TLS, and ``SIGHUP`` reads the certificate again
    (``server.tls``): renewed certificates are taken without a restart or a dropped client.

    Raises:
        CertificateError: the certificate or key cannot be used (before anything starts).
        CannotListen: the address or port cannot be bound (after the app started; it is
            shut down again).
    """
    s = app.settings
    loop = asyncio.get_running_loop()
    context = server_context(s.ssl_certfile, s.ssl_keyfile) if s.ssl_certfile else None
    if context is not None and s.ssl_certfile:
        certfile, keyfile = s.ssl_certfile, s.ssl_keyfile
        with contextlib.suppress(NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            loop.add_signal_handler(signal.SIGHUP, reload_certificate, context, certfile, keyfile)
    stop = stop if stop is not None else asyncio.Event()
    hurry = asyncio.Event()
    installed = []
    for sig in _SIGNALS:
        try:
            loop.add_signal_handler(sig, _on_stop_signal, sig, stop, hurry)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
            pass
    try:
        await app.startup()
        try:
            server = await listen(app, reuse_port=reuse_port, ssl=context)
            try:
                host, port = server.sockets[0].getsockname()[:2]
                served = not stop.is_set()  # a stop while starting: nobody to drain
                if on_ready is not None and served:
                    on_ready(host, port)
                await stop.wait()
                if served:
                    await drain(app, server, hurry)
            finally:
                server.close()
        finally:
            await app.shutdown()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if context is not None:
            loop.remove_signal_handler(signal.SIGHUP)


async def listen(
    app: App,
    *,
    host: str | None = None,
    port: int | None = None,
    reuse_port: bool = False,
    ssl: SSLContext | None = None,
) -> asyncio.Server:
    """Open the native door for the started ``app``: its limits, its counters (what
    ``/metrics`` reads), the proxies it trusts, on ``host``/``port`` (``Settings.host`` and
    ``Settings.port`` unless given). ``roomcast serve`` and ``RoomcastApp(native_port=...)``
    both open it here, so the two serve the same door.

    Raises:
        CannotListen: the address or port cannot be bound.
    """
    s = app.settings
    host = s.host if host is None else host
    port = s.port if port is None else port
    coalescer = WriteCoalescer(app.door_counters)
    if s.write_hold > 0:  # its own publications come back through the broker: see WriteCoalescer
        coalescer.limit = s.write_hold
        app.hub.write_hold = coalescer
    try:
        return await serve(
            app,
            host,
            port,
            limits=DoorLimits.from_settings(s),
            coalescer=coalescer,
            reuse_port=reuse_port or None,
            proxies=ProxyTrust(s.forwarded_allow_ips),
            ssl=ssl,
        )
    except OSError as exc:  # only the bind is left to fail here: a certificate is loaded before
        raise CannotListen(host, port, exc) from exc


async def drain(app: App, server: asyncio.Server, hurry: asyncio.Event) -> None:
    """The graceful drain of ``server``'s clients (``server.drain``), ending with its listening
    socket closed; nothing but the close when ``shutdown_grace`` is 0. ``App.shutdown`` is
    the caller's next step."""
    s = app.settings
    if s.shutdown_grace > 0:
        await Drain(app, server.close, DrainPlan.of(s.shutdown_grace, s.drain_delay), hurry).run()
    server.close()


def _on_stop_signal(sig: signal.Signals, stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """SIGTERM or SIGINT: the first one starts the graceful drain (``server.drain``); the
    second one hurries it (every client closed now, then the shutdown) and, should even that
    hang (a store that does not answer), ends the process ``HURRY_BOUND`` seconds later."""
    if not stop.is_set():
        logger.info("%s: draining, then stopping", sig.name)
        stop.set()
        return
    if hurry.is_set():
        return
    logger.warning("%s again: stopping now", sig.name)
    hurry.set()
    asyncio.get_running_loop().call_later(HURRY_BOUND, _exit_now)


def _exit_now() -> None:
    """The hurried shutdown did not end in time: exit without it (status 1: not graceful)."""
    logger.error("the shutdown did not end %.1f s after the second signal; exiting", HURRY_BOUND)
    logging.shutdown()
    os._exit(1)


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main)
        return
    if sys.version_info >= (3, 12):
        uvloop.run(main)
    else:
        uvloop.install()
        asyncio.run(main)


def run(app: App, *, on_ready: Callable[[str, int], None] | None = None) -> None:
    """Blocking entry point for the CLI and scripts: one process serves ``app``."""
    _run_loop(serve_app(app, on_ready=on_ready))


# -- several workers -----------------------------------------------------------------------


NEEDS_REDIS = (
    "--workers {workers} needs --redis URL: each worker is a separate process, and without a "
    "shared Redis a room's subscribers and publishers would be split between them"
)


def run_workers(
    settings: Settings,
    workers: int,
    *,
    on_ready: Callable[[str, int], None] | None = None,
    stop_timeout: float | None = None,
) -> int:
    """Serve ``App(settings=settings)`` from ``workers`` processes on one port until SIGINT or
    SIGTERM; returns the exit status (0 after a requested stop, 1 when the start failed).

    ``on_ready(host, port)`` is called once, when every worker is listening (with the real
    port when ``settings.port`` is 0). The module docstring says how the workers are started,
    stopped and restarted.

    Raises:
        ValueError: ``workers`` is below 2, or there is no ``redis_url`` (``NEEDS_REDIS``).
        CannotListen: the port cannot be bound (in use by another process, a bad address).
    """
    if workers < 2:
        raise ValueError(f"run_workers is for 2 workers or more, got {workers}: use run() for one")
    if settings.redis_url is None:
        raise ValueError(NEEDS_REDIS.format(workers=workers))
    try:
        sockets, host, port = _reserve(settings.host, settings.port)
    except OSError as exc:
        raise CannotListen(settings.host, settings.port, exc) from exc
    try:
        bound = settings.shutdown_grace + STOP_TIMEOUT if stop_timeout is None else stop_timeout
        supervisor = _Supervisor(dataclasses.replace(settings, port=port), workers, bound)
        return asyncio.run(supervisor.run(lambda: on_ready(host, port) if on_ready is not None else None))
    finally:
        for sock in sockets:
            sock.close()


def _reserve(host: str, port: int) -> tuple[list[socket.socket], str, int]:
    """Bind, without listening, one ``SO_REUSEPORT`` socket per address of ``host`` on one
    port (a free one when ``port`` is 0); returns them, and the first one's host and port.

    Each address is first bound without ``SO_REUSEPORT`` (but with ``SO_REUSEADDR``, as a
    listening server binds, so connections of a previous run in TIME_WAIT do not matter):
    that fails when any other socket is bound there, a server that uses ``SO_REUSEPORT``
    included, instead of silently sharing its connections with it.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, sockaddr[0]) for family, _, _, _, sockaddr in infos))
    attempts = 8 if port == 0 else 1  # with port 0, another address may already hold the port picked
    for attempt in range(attempts):
        try:
            return _bind_all(addresses, port)
        except OSError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _bind_all(addresses: Sequence[tuple[socket.AddressFamily, Any]], port: int) -> tuple[list[socket.socket], str, int]:
    held: list[socket.socket] = []
    try:
        for family, address in addresses:
            for reuse_port in (False, True):  # the exclusive check, then the socket we keep
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if reuse_port:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if family == socket.AF_INET6:  # as asyncio binds: each family on its own
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((address, port))
                    port = sock.getsockname()[1]
                except BaseException:
                    sock.close()
                    raise
                if reuse_port:
                    held.append(sock)
                else:
                    sock.close()
    except BaseException:
        for sock in held:
            sock.close()
        raise
    bound_host, bound_port = held[0].getsockname()[:2]
    return held, bound_host, bound_port


@dataclasses.dataclass(frozen=True)
class _Order:
    """What a worker is told on its stdin: the settings (port resolved), its number, and the
    descriptor it writes one byte to once it is listening."""

    settings: Settings
    index: int
    ready_fd: int


_WORKER_CODE = "from roomcast.server.runner import _worker_main; _worker_main()"
_LENGTH = struct.Struct("!Q")


def _worker_main() -> None:
    """A worker's entry point: read the order from stdin, serve until told to stop.

    stdin stays open while the parent lives: its end of file means the parent is gone, and
    the worker stops gracefully rather than serve on unsupervised.
    """
    order = _read_order(0)
    # off the loop through a bounded queue, as ``roomcast serve`` itself (``server.logs``)
    configure_logging(order.settings.log_level, order.settings.log_format, worker=order.index)
    _run_loop(_serve_worker(App(settings=order.settings), order))


def _read_order(fd: int) -> _Order:
    def exactly(n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = os.read(fd, left)
            if not chunk:
                raise SystemExit("roomcast worker: stdin ended before the order (start workers with run_workers)")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = _LENGTH.unpack(exactly(_LENGTH.size))
    order = pickle.loads(exactly(size))  # written by our own parent process: trusted
    assert isinstance(order, _Order)
    return order


async def _serve_worker(app: App, order: _Order) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def parent_gone() -> None:
        try:
            if os.read(0, 4096):
                return  # nothing else is ever written; only the end of file matters
        except OSError:
            pass
        loop.remove_reader(0)
        if not stop.is_set():
            logger.warning("the supervising process is gone; stopping")
            stop.set()

    def ready(host: str, port: int) -> None:
        try:
            os.write(order.ready_fd, b"R")
        except OSError:
            parent_gone()
        finally:
            os.close(order.ready_fd)

    loop.add_reader(0, parent_gone)
    try:
        await serve_app(app, on_ready=ready, reuse_port=True, stop=stop)
    finally:
        loop.remove_reader(0)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclasses.dataclass
class _Slot:
    """One worker's place: its number, and the process filling it now."""

    index: int
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


class _Supervisor:
    """The parent of ``--workers``: starts, restarts and stops the workers (module docstring)."""

    def __init__(self, settings: Settings, workers: int, stop_timeout: float) -> None:
        self.settings = settings
        self.workers = workers
        self.stop_timeout = stop_timeout
        self.failed = False
        self.serving = False  # every worker was listening once: deaths from now are restarts
        self.signal = signal.SIGTERM

    async def run(self, on_ready: Callable[[], None]) -> int:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        self.kill_now = asyncio.Event()
        self.all_listening = asyncio.Event()
        for sig in _SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        if self.settings.ssl_certfile:  # each worker reads its certificate again (server.tls)
            loop.add_signal_handler(signal.SIGHUP, self._forward_hangup)
        self.slots = slots = [_Slot(n) for n in range(1, self.workers + 1)]
        keepers = [asyncio.ensure_future(self._keep(slot)) for slot in slots]
        try:
            all_listening = asyncio.ensure_future(self.all_listening.wait())
            stopping = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait((all_listening, stopping), return_when=asyncio.FIRST_COMPLETED)
            all_listening.cancel()
            if not self.stopping.is_set():
                self.serving = True
                logger.info(
                    "%d workers listening (pids %s)", self.workers, ", ".join(str(s.proc.pid) for s in slots if s.proc)
                )
                on_ready()
            await stopping
            await asyncio.gather(*keepers)
        finally:
            for sig in _SIGNALS:
                loop.remove_signal_handler(sig)
            loop.remove_signal_handler(signal.SIGHUP)
            for keeper in keepers:
                keeper.cancel()
        return 1 if self.failed else 0

    def _forward_hangup(self) -> None:
        """SIGHUP: every worker reloads its TLS certificate; nothing stops."""
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGHUP)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.stopping.is_set():
            logger.warning("%s again: killing the workers that are still stopping", sig.name)
            self.kill_now.set()
            return
        logger.info("%s: stopping %d workers", sig.name, self.workers)
        self.signal = sig
        self.stopping.set()

    async def _keep(self, slot: _Slot) -> None:
        """Keep ``slot`` filled until the stop: start a worker, wait for its end, start again."""
        backoff = Backoff(initial=0.5, cap=30.0)
        while not self.stopping.is_set():
            started = await self._start(slot)
            if started is None:
                returncode, served = 1, 0.0  # could not even start the interpreter (logged)
            else:
                returncode, served = await self._watch(slot, *started)
            if self.stopping.is_set():
                return
            pid = started[0].pid if started is not None else "-"
            if not self.serving:
                logger.error(
                    "worker %d (pid %s) %s before every worker was listening; stopping",
                    slot.index,
                    pid,
                    _describe(returncode),
                )
                self.failed = True
                self.stopping.set()
                return
            if served >= STABLE_AFTER:
                backoff.reset()
            delay = backoff.next()
            logger.error(
                "worker %d (pid %s) %s; starting it again in %.1f s", slot.index, pid, _describe(returncode), delay
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=delay)

    async def _start(self, slot: _Slot) -> tuple[asyncio.subprocess.Process, int] | None:
        """Start a worker for ``slot``; its process and the read end of its readiness pipe."""
        read_fd, write_fd = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _WORKER_CODE,
                stdin=asyncio.subprocess.PIPE,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            logger.error("worker %d could not be started: %s", slot.index, exc)
            return None
        finally:
            os.close(write_fd)  # the worker holds its own copy: EOF here once it exits
        slot.proc = proc
        logger.info("worker %d started (pid %d)", slot.index, proc.pid)
        order = pickle.dumps(_Order(self.settings, slot.index, write_fd))
        assert proc.stdin is not None
        proc.stdin.write(_LENGTH.pack(len(order)) + order)
        with contextlib.suppress(ConnectionError):  # it died at once: _watch reports its status
            await proc.stdin.drain()
        return proc, read_fd

    async def _watch(self, slot: _Slot, proc: asyncio.subprocess.Process, ready_fd: int) -> tuple[int, float]:
        """Follow one worker to its end; on the stop, signal it and wait with a bound.

        Returns its exit status and how many seconds it served (0 if it never listened).
        """
        loop = asyncio.get_running_loop()
        listening = asyncio.ensure_future(self._listening(slot, proc, ready_fd))
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait((exited, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.signal)
                kill_now = asyncio.ensure_future(self.kill_now.wait())
                try:
                    await asyncio.wait(
                        (exited, kill_now), timeout=self.stop_timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    kill_now.cancel()
                if not exited.done():
                    logger.warning("worker %d (pid %d) did not stop in time; killing it", slot.index, proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            returncode = await exited
            if self.stopping.is_set():
                logger.info("worker %d (pid %d) %s", slot.index, proc.pid, _describe(returncode))
            ready_at = await listening  # the pipe ends with the process at the latest
            return returncode, 0.0 if ready_at is None else loop.time() - ready_at
        finally:
            stopping.cancel()
            listening.cancel()  # done by now, unless this keeper itself is cancelled
            if proc.stdin is not None:
                proc.stdin.close()

    async def _listening(self, slot: _Slot, proc: asyncio.subprocess.Process, fd: int) -> float | None:
        """Wait for the worker's readiness byte: the loop time it came, or ``None`` at EOF."""
        loop = asyncio.get_running_loop()
        said: asyncio.Future[bool] = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(fd, 1)
            except BlockingIOError:
                return
            if not said.done():
                said.set_result(bool(data))

        os.set_blocking(fd, False)
        loop.add_reader(fd, readable)
        try:
            if not await said:
                return None
        finally:
            loop.remove_reader(fd)
            os.close(fd)
        logger.info("worker %d listening (pid %d)", slot.index, proc.pid)
        slot.ready.set()
        if all(each.ready.is_set() for each in self.slots):
            self.all_listening.set()
        return loop.time()
