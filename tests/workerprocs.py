"""Watching a server's worker processes from a test, through Linux's ``/proc`` and pidfds.

Two questions the multi-process tests must answer without adding debug fields to the
product:

* **Which worker accepted this connection?** With ``SO_REUSEPORT`` (or uvicorn's shared
  listening socket) the kernel chooses. ``owners`` finds the process holding the server end
  of each client connection: ``/proc/net/tcp`` maps the connection to a socket inode, and
  ``/proc/<pid>/fd`` says which worker holds that inode. Once the client has read bytes the
  server wrote on the connection, the worker has accepted it, so the answer is settled and
  there is nothing to poll.
* **Has this worker ended?** ``Watched`` opens a pidfd as soon as the test learns a pid: it
  names that very process (never a later one that reuses the pid), becomes readable when the
  process ends (reaped or not, child of the test or not), and can signal it safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
from collections.abc import Iterable

__all__ = ["Watched", "owners"]


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def owners(server_port: int, client_ports: Iterable[int], pids: Iterable[int]) -> dict[int, int | None]:
    """For each client port, the pid among ``pids`` holding the server end of its connection
    to ``server_port`` on this machine (``None``: none of them)."""
    inodes: dict[int, int] = {}  # client port -> inode of the accepted socket
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as rows:
            next(rows)  # the header
            for row in rows:
                fields = row.split()
                local, remote, inode = fields[1], fields[2], int(fields[9])
                if _port(local) == server_port and _port(remote) != 0 and inode:
                    inodes[_port(remote)] = inode
    holder: dict[int, int] = {}  # socket inode -> pid
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    holder[int(target[len("socket:[") : -1])] = pid
    found: dict[int, int | None] = {}
    for port in client_ports:
        inode = inodes.get(port)
        found[port] = None if inode is None else holder.get(inode)
    return found


class Watched:
    """One process, by a pidfd opened while it is known to be alive."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = os.pidfd_open(pid)

    def __repr__(self) -> str:
        return f"Watched({self.pid})"

    @property
    def ended(self) -> bool:
        return bool(select.select([self.fd], [], [], 0)[0])

    async def gone(self, timeout: float) -> None:
        """Return once the process has ended; ``TimeoutError`` after ``timeout`` seconds."""
        if self.ended:
            return
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(self.fd, lambda: ended.done() or ended.set_result(None))
        try:
            async with asyncio.timeout(timeout):
                await ended
        finally:
            loop.remove_reader(self.fd)

    def send(self, signum: int) -> None:
        """Signal this very process (it cannot have been replaced by a newer one)."""
        signal.pidfd_send_signal(self.fd, signum)

    def kill(self) -> None:
        """SIGKILL this very process, if it has not ended (cleanup after a failed test)."""
        with contextlib.suppress(ProcessLookupError):
            self.send(signal.SIGKILL)

    def close(self) -> None:
        os.close(self.fd)
