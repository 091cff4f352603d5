"""What python-socketio's ``AsyncClient`` sees of the example board, as one JSON-able dict.

The scenario waits on each expected event (never sleeps) and ends every client with an ack
round trip, so events that must NOT arrive (a skipped sender, another namespace) would be
in the transcript by then if the server sent them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio

WAIT_S = 15.0


class Peer:
    """One client and everything it received, in order."""

    def __init__(self, name: str, transports: list[str]) -> None:
        self.name = name
        self.transports = transports
        self.log: list[list[Any]] = []
        self.changed = asyncio.Event()
        self.client = socketio.AsyncClient(reconnection=False)
        for ns in ("/", "/admin"):
            self.client.on("*", self._record, namespace=ns)
            self.client.on("connect_error", self._refused, namespace=ns)
        self.client.on("disconnect", self._disconnected)
        self.client.on("confirm", self._confirm)
        self.client.on("rate", self._rate)

    def _note(self, entry: list[Any]) -> None:
        self.log.append(entry)
        self.changed.set()

    def _record(self, event: str, *args: Any) -> None:
        self._note([event, *args])

    def _refused(self, data: Any) -> None:
        self._note(["connect_error", data])

    def _disconnected(self, *_: Any) -> None:
        self._note(["disconnect"])

    def _confirm(self, question: str) -> str:
        self._note(["confirm", question])
        return "yes: " + question

    def _rate(self, question: str) -> tuple[int, str]:
        self._note(["rate", question])
        return 5, "stars"

    async def until(self, event: str) -> None:
        async with asyncio.timeout(WAIT_S):
            while not any(entry[0] == event for entry in self.log):
                self.changed.clear()
                await self.changed.wait()

    async def connect(self, url: str, auth: Any, namespaces: list[str] | None = None, **kwargs: Any) -> None:
        await self.client.connect(url, auth=auth, namespaces=namespaces or ["/"], transports=self.transports, **kwargs)

    async def ask(self, event: str, *args: Any, namespace: str = "/") -> Any:
        answer = await self.client.call(event, args[0] if len(args) == 1 else args or None, namespace=namespace)
        self._note(["ack:" + event, list(answer) if isinstance(answer, tuple) else answer])
        return answer


async def run(url: str, transports: list[str] | None = None) -> dict[str, list[list[Any]]]:
    """The scenario against ``url``; every client connects with ``transports`` (WebSocket only
    by default; ``["polling"]`` keeps them on long-polling)."""
    peers: list[Peer] = []

    def peer(name: str) -> Peer:
        peers.append(Peer(name, transports or ["websocket"]))
        return peers[-1]

    try:
        nobody = peer("nobody")
        try:
            await nobody.connect(url, None)
        except socketio.exceptions.ConnectionError:
            pass
        await nobody.until("connect_error")

        alice, bob, carol = peer("alice"), peer("bob"), peer("carol")
        await alice.connect(url + "?board=b1", {"user": "alice"}, headers={"X-Board-Client": "py"})
        await bob.connect(url, {"user": "bob"})
        await carol.connect(url, {"user": "carol"})
        for p in (alice, bob, carol):
            await p.until("welcome")

        await alice.ask("join", "alpha")
        await bob.ask("join", "alpha")
        await alice.until("joined")
        await carol.ask("join", "beta")
        await alice.ask("add_card", {"project": "alpha", "title": "first"})
        await bob.until("card_added")
        await alice.ask("add_card", {"project": "gamma", "title": "nowhere"})
        await alice.ask("attach", "alpha", b"\x00\x01binary")
        await bob.until("attached")
        await bob.ask("whoami")
        await carol.ask("wave", 1, "two")

        await alice.client.emit("confirm_me", "ship it?")
        await alice.until("confirmed")
        await alice.client.emit("rate_me")
        await alice.until("rated")

        admin = peer("admin")
        await admin.connect(url, {"user": "root", "role": "admin"}, namespaces=["/admin"])
        await admin.ask("watch", "alpha", namespace="/admin")
        await admin.ask("rooms", namespace="/admin")
        eve = peer("eve")
        try:
            await eve.connect(url, {"user": "eve"}, namespaces=["/admin"])
        except socketio.exceptions.ConnectionError:
            pass
        await eve.until("connect_error")

        await bob.client.emit("shout", "hello all")
        for p in (alice, bob, carol):
            await p.until("shouted")
        await admin.client.emit("announce", "maintenance", namespace="/admin")
        await admin.until("announcement")

        await carol.client.emit("kick")
        await carol.until("disconnect")
        await alice.ask("leave", "alpha")
        for p in (alice, bob):  # a last round trip: whatever was sent to them is in by now
            await p.ask("sync")
        await admin.ask("sync", namespace="/admin")
        assert all(p.client.transport() == p.transports[-1] for p in (alice, bob, admin))
        return {p.name: p.log for p in peers}
    finally:
        for p in peers:
            await p.client.disconnect()
