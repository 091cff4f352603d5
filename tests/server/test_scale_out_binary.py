"""Binary attachments across ``roomcast serve --redis`` nodes (issue 13).

Real processes on 127.0.0.1: two nodes on one redis-server, and a third node alone (no
Redis: one process, ``MemoryBroker``), which is what a publishing node delivers by itself.
A python-socketio client emits a binary event through the built-in ``publish`` on node
``a``; a worker publishes bytes straight into Redis (``RedisPublisher``). Every subscriber of
every transport, on either node, receives byte for byte what the lone node's subscribers
receive for the same publications: Socket.IO a binary event with its attachments, SSE and
/ws the ``{"$binary": "<base64>"}`` form. History on either node (Socket.IO and /ws
recovery, an SSE ``Last-Event-ID``, the API's history) gives the same as live delivery.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import socketio
from rawclient import RawWebSocket, open_websocket, socketio_connect
from redisserver import fresh_url
from sseclient import SseStream, open_sse
from test_scale_out import nodes
from test_task_restart import WAIT, serving

from roomcast import RedisPublisher
from roomcast.protocol import socketio as sio

ROOM = "gallery"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
IMAGE = {"name": "a.png", "png": PNG}
THUMBS = [b"\x00\x01", {"small": b"\xff", "label": '{"$binary": "not bytes"}'}]
ATTACHMENT = re.compile(r"4[56](\d+)-")


def _host_port(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


async def _sio_packet(ws: RawWebSocket) -> list[str | bytes]:
    """One Socket.IO packet as it came: its text, then each of its binary attachments."""
    text = await ws.recv(WAIT)
    assert isinstance(text, str), text
    found = ATTACHMENT.match(text)
    return [text, *[await ws.recv(WAIT) for _ in range(int(found.group(1)) if found else 0)]]


class Subscribers:
    """A raw Socket.IO, an SSE and a /ws subscriber of ``ROOM`` on one node."""

    def __init__(self, base: str, sio_ws: RawWebSocket, ws: RawWebSocket, sse_stream: SseStream) -> None:
        self.base, self.sio, self.ws, self.sse = base, sio_ws, ws, sse_stream
        self.epoch = ""
        self.cursor = sse_stream.last_id  # the SSE cursor before any publication
        self.seen: list[dict[str, list[Any]]] = []

    async def received(self) -> dict[str, list[Any]]:
        """The next publication as each subscriber got it (SSE without its cursor)."""
        event = await self.sse.next(WAIT)
        got = {
            "socketio": await _sio_packet(self.sio),
            "sse": [event.event, event.data],
            "ws": [await self.ws.recv(WAIT)],
        }
        self.seen.append(got)
        return got


@contextlib.asynccontextmanager
async def subscribed(base: str) -> AsyncIterator[Subscribers]:
    host, port = _host_port(base)
    sio_ws = await socketio_connect(host, port)
    ws = await open_websocket(host, port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
    try:
        async with open_sse(base, [ROOM]) as stream:
            assert (await stream.next(WAIT)).event == "snapshot"
            sio_ws.send("421" + json.dumps(["subscribe", {"room": ROOM}]))
            ack = await sio_ws.recv(WAIT)
            assert isinstance(ack, str) and ack.startswith("431["), ack
            ws.send(json.dumps({"type": "subscribe", "id": 1, "room": ROOM}))
            answer = await ws.recv(WAIT)
            assert isinstance(answer, str) and json.loads(answer)["type"] == "snapshot"
            subscribers = Subscribers(base, sio_ws, ws, stream)
            subscribers.epoch = json.loads(ack[3:])[0]["epoch"]
            yield subscribers
    finally:
        sio_ws.close()
        ws.close()


@contextlib.asynccontextmanager
async def python_socketio(base: str, transports: list[str]) -> AsyncIterator[socketio.AsyncClient]:
    async with aiohttp.ClientSession() as http:
        client = socketio.AsyncClient(reconnection=False, http_session=http)
        try:
            await client.connect(base, transports=transports)
            yield client
        finally:
            await client.shutdown()


async def _publish(client: socketio.AsyncClient, event: str, data: Any) -> int:
    """The built-in ``publish`` from a real client: a binary event (``data`` holds bytes)."""
    answer = await client.call("publish", {"room": ROOM, "event": event, "data": data}, timeout=WAIT)
    assert "offset" in answer, answer
    offset: int = answer["offset"]
    return offset


async def _recovered(base: str, epoch: str) -> tuple[list[str | bytes], Any]:
    """A new Socket.IO client's subscribe from offset 0: the ack as it came, and decoded."""
    host, port = _host_port(base)
    ws = await socketio_connect(host, port)
    try:
        ws.send("421" + json.dumps(["subscribe", {"room": ROOM, "epoch": epoch, "offset": 0}]))
        raw = await _sio_packet(ws)
    finally:
        ws.close()
    decoder = sio.Decoder()
    packet = None
    for part in raw:
        packet = decoder.feed(part[1:] if isinstance(part, str) else part)
    assert packet is not None and packet.type is sio.SioType.ACK
    reply = packet.data[0]
    assert reply.pop("epoch") == epoch
    return [part.replace(epoch, "<epoch>") if isinstance(part, str) else part for part in raw], reply


async def test_binary_attachments_reach_every_node_and_transport_as_one_node_alone_delivers_them(
    tmp_path: Path, redis_url: str
) -> None:
    url = fresh_url(redis_url)
    async with (
        nodes(tmp_path, url, 2) as (a, b),
        serving(tmp_path / "alone.db") as (_, alone),
        subscribed(a) as on_a,
        subscribed(b) as on_b,
        subscribed(alone) as on_alone,
        python_socketio(b, ["polling"]) as polling_b,  # a real client on the other node, over polling
    ):
        images: asyncio.Queue[Any] = asyncio.Queue()
        polling_b.on("img", images.put_nowait)
        await polling_b.call("subscribe", {"room": ROOM}, timeout=WAIT)

        async with python_socketio(a, ["websocket"]) as sender, python_socketio(alone, ["websocket"]) as lone:
            assert await _publish(sender, "img", IMAGE) == await _publish(lone, "img", IMAGE) == 1
            got = [await s.received() for s in (on_a, on_b, on_alone)]
            assert got[0] == got[1] == got[2]
            assert got[0]["socketio"] == ['451-["img",{"name":"a.png","png":{"_placeholder":true,"num":0}}]', PNG]
            assert json.loads(got[0]["sse"][1]) == {"name": "a.png", "png": {"$binary": _b64(PNG)}}
            async with asyncio.timeout(WAIT):
                assert await images.get() == IMAGE  # python-socketio decoded the attachment: bytes

            worker = RedisPublisher(url)  # the worker's form of the same kind of publication
            assert (await worker.apublish(ROOM, "thumbs", THUMBS)).offset == await _publish(lone, "thumbs", THUMBS) == 2
            got = [await s.received() for s in (on_a, on_b, on_alone)]
            assert got[0] == got[1] == got[2]
            assert got[0]["socketio"][1:] == [b"\x00\x01", b"\xff"]

        # History, through the other node and through Socket.IO recovery: what live delivery gave.
        replayed = [await _recovered(base, s.epoch) for base, s in ((b, on_b), (a, on_a), (alone, on_alone))]
        assert replayed[0] == replayed[1] == replayed[2]
        raw, reply = replayed[0]
        assert raw[0].startswith("463-1[") and raw[1:] == [PNG, b"\x00\x01", b"\xff"]
        assert reply["recovered"] and [(p["event"], p["data"]) for p in reply["publications"]] == [
            ("img", [IMAGE]),
            ("thumbs", [THUMBS]),
        ]
        for subscribers in (on_a, on_b):  # each cluster node replays the room as its live subscribers got it
            async with open_sse(subscribers.base, [ROOM], last_event_id=on_b.cursor) as back:
                assert [[e.event, e.data] for e in [await back.next(WAIT) for _ in range(2)]] == [
                    got["sse"] for got in on_alone.seen
                ]
            host, port = _host_port(subscribers.base)
            ws = await open_websocket(host, port, "/ws", headers={"Sec-WebSocket-Protocol": "roomcast.v1"})
            try:
                ws.send(json.dumps({"type": "subscribe", "id": 1, "room": ROOM, "epoch": on_b.epoch, "offset": 0}))
                assert json.loads(await ws.recv(WAIT))["recovered"] is True
                assert [[await ws.recv(WAIT)] for _ in range(2)] == [got["ws"] for got in on_alone.seen]
            finally:
                ws.close()
        async with aiohttp.ClientSession() as http:  # the API's history: the JSON transports' form
            for base in (a, b, alone):
                async with http.get(f"{base}/api/history?room={ROOM}") as response:
                    assert response.status == 200, await response.text()
                    listed = (await response.json())["publications"]
                assert [[p["event"], _json_text(p["data"][0])] for p in listed] == [got["sse"] for got in on_alone.seen]


def _json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
