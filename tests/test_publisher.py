"""``roomcast.Publisher`` against a real server: what a worker, a task or a script sees.

A real server on 127.0.0.1 (the native door, in this test's event loop), real sockets; an
SSE subscriber checks that each publication arrives where the answer says it landed. The
sync calls run in other threads (``asyncio.to_thread``), as they would in a web worker,
while the server goes on serving in the loop.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from selfsigned import self_signed
from servers import RunningServer, running
from sseclient import open_sse

from roomcast import Publisher, PublishError
from roomcast.hub.hub import Hub
from roomcast.protocol.sse import decode_cursor
from roomcast.publisher import PublishResult
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.types import StreamPosition

KEY = "k-0123456789abcdef"


@asynccontextmanager
async def _server(**settings: object) -> AsyncIterator[RunningServer]:
    async with running(App(Hub(), Settings(api_key=KEY, **settings))) as srv:  # type: ignore[arg-type]
        yield srv


@asynccontextmanager
async def _scripted(answer: Callable[[asyncio.StreamReader], Awaitable[bytes | None]]) -> AsyncIterator[str]:
    """A one-trick TCP server: ``answer`` reads what it likes and returns the bytes to send."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        reply = await answer(reader)
        if reply is not None:
            writer.write(reply)
            await writer.drain()
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def _request_then(reader: asyncio.StreamReader, reply: bytes) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    return reply


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sync_and_async_publish_reach_a_subscriber_at_the_offsets_they_answer() -> None:
    async with _server() as srv, open_sse(srv.url, ["news"]) as stream:
        await stream.next()  # the snapshot: subscribed
        publisher = Publisher(srv.url, api_key=KEY)
        sent = await asyncio.to_thread(publisher.publish, "news", "flash", {"t": "sync"})
        assert isinstance(sent, PublishResult) and (sent.room, sent.offset) == ("news", 1)
        event = await stream.next()
        assert (event.event, event.json()) == ("flash", {"t": "sync"})
        assert decode_cursor(event.id or "")["news"] == sent.position == StreamPosition(sent.epoch, 1)

        sent = await publisher.apublish("news", "flash", [1, "two"])
        event = await stream.next()
        assert (event.event, event.json(), sent.offset) == ("flash", [1, "two"], 2)
        assert decode_cursor(event.id or "")["news"] == sent.position


async def test_no_data_publishes_no_arguments_and_none_publishes_one_null() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        first = await asyncio.to_thread(publisher.publish, "r", "bare")
        await publisher.apublish("r", "bare")
        await publisher.apublish("r", "null", None)
        history = await srv.hub.broker.history("r", since=StreamPosition(first.epoch, 0))
        assert [(p.event, p.data) for p in history.publications] == [("bare", ()), ("bare", ()), ("null", (None,))]


async def test_broadcast_sync_and_async_publish_to_every_room_in_order() -> None:
    async with _server() as srv, open_sse(srv.url, ["a"]) as a_stream, open_sse(srv.url, ["b"]) as b_stream:
        await a_stream.next(), await b_stream.next()
        publisher = Publisher(srv.url, api_key=KEY)
        results = await asyncio.to_thread(publisher.broadcast, ["a", "b", "a"], "all", 1)
        assert [(r.room, r.offset) for r in results] == [("a", 1), ("b", 1)]  # a repeated room counts once
        results = await publisher.abroadcast(("b", "a"), "all", 2)
        assert [(r.room, r.offset) for r in results] == [("b", 2), ("a", 2)]
        assert [(await a_stream.next()).json() for _ in range(2)] == [1, 2]
        assert [(await b_stream.next()).json() for _ in range(2)] == [1, 2]
        with pytest.raises(TypeError, match="not a str"):
            publisher.broadcast("ab", "all")


async def test_many_threads_and_another_event_loop_share_one_publisher() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)

        def worker() -> list[int]:
            return [publisher.publish("busy", "n", i).offset for i in range(5)]

        def other_loop() -> list[int]:  # e.g. a thread that runs its own asyncio.run
            async def burst() -> list[int]:
                return [r.offset for r in await asyncio.gather(*(publisher.apublish("busy", "n") for _ in range(5)))]

            return asyncio.run(burst())

        batches = await asyncio.gather(*(asyncio.to_thread(worker) for _ in range(8)), asyncio.to_thread(other_loop))
        concurrent_async = await asyncio.gather(*(publisher.apublish("busy", "n") for _ in range(10)))
        offsets = sorted([o for batch in batches for o in batch] + [r.offset for r in concurrent_async])
        assert offsets == list(range(1, 56))  # every call landed once, none lost to a shared socket


async def test_a_separate_process_publishes_with_only_the_url_and_key() -> None:
    async with _server() as srv, open_sse(srv.url, ["cron"]) as stream:
        await stream.next()
        script = (
            "import sys; from roomcast import Publisher\n"
            "r = Publisher(sys.argv[1], api_key=sys.argv[2]).publish('cron', 'nightly', {'ok': True})\n"
            "print(r.offset)"
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, srv.url, KEY, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0 and out.strip() == b"1"
        assert (await stream.next()).json() == {"ok": True}


async def test_a_wrong_or_missing_key_is_a_401_publish_error() -> None:
    async with _server() as srv:
        wrong = Publisher(srv.url, api_key="wrong")
        for call in (lambda: asyncio.to_thread(wrong.publish, "a", "e"), lambda: wrong.apublish("a", "e")):
            with pytest.raises(PublishError) as refused:
                await call()
            assert (refused.value.status, refused.value.code, refused.value.message) == (
                401,
                "unauthorized",
                "invalid API key",
            )
        with pytest.raises(PublishError) as refused:
            await Publisher(srv.url).apublish("a", "e")
        assert refused.value.status == 401 and "API key required" in refused.value.message
        assert "wrong" not in repr(wrong)  # a key never lands in a log line by way of repr


async def test_bad_input_is_a_400_with_the_servers_message() -> None:
    async with _server() as srv:
        publisher = Publisher(srv.url, api_key=KEY)
        with pytest.raises(PublishError) as refused:
            await asyncio.to_thread(publisher.publish, "", "e")
        assert (refused.value.status, refused.value.code) == (400, "bad_request")
        assert refused.value.message == "'room' must be a string of 1 to 256 characters"
        assert str(refused.value) == refused.value.message
        with pytest.raises(PublishError) as refused:
            await publisher.abroadcast([], "e")
        assert refused.value.status == 400 and "'rooms'" in refused.value.message
        with pytest.raises(PublishError) as refused:
            await publisher.apublish("a", "e", "x" * 2_000_000)
        assert (refused.value.status, refused.value.code) == (413, "too_large")
        with pytest.raises(TypeError):
            await publisher.apublish("a", "e", {1, 2})  # not JSON: the caller's bug, not the server's


async def test_an_unreachable_server_is_status_0_unreachable_naming_the_url() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    publisher = Publisher(url)
    for call in (lambda: asyncio.to_thread(publisher.publish, "a", "e"), lambda: publisher.apublish("a", "e")):
        with pytest.raises(PublishError) as failed:
            await call()
        assert (failed.value.status, failed.value.code) == (0, "unreachable")
        assert failed.value.message.startswith(f"cannot reach roomcast at {url}: ")


async def test_a_server_that_never_answers_times_out_as_unreachable() -> None:
    async def never(reader: asyncio.StreamReader) -> None:
        await reader.read()  # until the client gives up and closes

    async with _scripted(never) as url:
        publisher = Publisher(url, timeout=0.3)
        for call in (lambda: asyncio.to_thread(publisher.publish, "a", "e"), lambda: publisher.apublish("a", "e")):
            with pytest.raises(PublishError) as failed:
                await call()
            assert (failed.value.status, failed.value.code) == (0, "unreachable")
            assert failed.value.message == f"cannot reach roomcast at {url}: no answer within 0.3 s"


async def test_answers_that_are_not_roomcasts_own() -> None:
    gateway = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 12\r\n\r\nupstream off"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
        b'14\r\n{"room":"a","epoch":\r\n10\r\n"E","offset":41}\r\n0\r\n\r\n'
    )
    close_delimited = b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"room":"a","epoch":"E","offset":42}'
    wrong_shape = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    not_http = b"SSH-2.0-OpenSSH_9.6\r\n"
    async with (
        _scripted(lambda r: _request_then(r, gateway)) as gw,
        _scripted(lambda r: _request_then(r, chunked)) as ch,
        _scripted(lambda r: _request_then(r, close_delimited)) as cd,
        _scripted(lambda r: _request_then(r, wrong_shape)) as ws,
        _scripted(lambda r: _request_then(r, not_http)) as nh,
    ):
        for use_thread in (True, False):

            async def call(url: str) -> PublishResult:
                publisher = Publisher(url)
                if use_thread:  # noqa: B023 - called within this iteration
                    return await asyncio.to_thread(publisher.publish, "a", "e")
                return await publisher.apublish("a", "e")

            assert await call(ch) == PublishResult("a", "E", 41)
            assert await call(cd) == PublishResult("a", "E", 42)
            for url, status, code, text in [
                (gw, 502, "http_error", "upstream off"),
                (ws, 200, "bad_response", "lacks"),
                (nh, 0, "bad_response", "did not answer HTTP"),
            ]:
                with pytest.raises(PublishError) as failed:
                    await call(url)
                assert (failed.value.status, failed.value.code) == (status, code), failed.value
                assert text in failed.value.message


def test_bad_urls_and_timeouts_are_refused_at_construction() -> None:
    for url in ["127.0.0.1:8000", "ftp://h", "http://", "http://u:p@h", "http://h?x=1", "http://h:99999"]:
        with pytest.raises(ValueError):
            Publisher(url)
    with pytest.raises(ValueError):
        Publisher("http://h", timeout=0)
    assert repr(Publisher("http://h:1/rt/", api_key="secret")) == "Publisher('http://h:1/rt')"
    for key in ["k\r\nX-Injected: 1", "k\n", "k€"]:  # would start a header of its own, or cannot be sent
        with pytest.raises(ValueError, match="api_key") as refused:
            Publisher("http://h", api_key=key)
        assert key not in str(refused.value)  # a key is a secret: never echoed


# -- https, through a TLS-terminating proxy ---------------------------------------------------
async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


@asynccontextmanager
async def _tls_proxy(port: int, cert_file: str, key_file: str) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        for task in (asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_https_with_a_private_ca_and_refusal_of_an_unknown_certificate(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    async with _server() as srv, _tls_proxy(srv.port, cert_file, key_file) as url:
        publisher = Publisher(url, api_key=KEY, ssl_context=trusting)
        assert (await asyncio.to_thread(publisher.publish, "tls", "e", 1)).offset == 1
        assert (await publisher.apublish("tls", "e", 2)).offset == 2
        default_trust = Publisher(url, api_key=KEY)
        for call in (
            lambda: asyncio.to_thread(default_trust.publish, "tls", "e"),
            lambda: default_trust.apublish("tls", "e"),
        ):
            with pytest.raises(PublishError) as failed:
                await call()
            assert (failed.value.status, failed.value.code) == (0, "unreachable")
            assert "CERTIFICATE_VERIFY_FAILED" in failed.value.message
