"""TLS on the native door (``--ssl-certfile`` / ``--ssl-keyfile``), tested with real peers.

A throw-away CA made here with ``cryptography`` signs the server's certificate; the clients
trust that CA and nothing else, as a deployment with a private CA would: the official
``socket.io-client`` through ``NODE_EXTRA_CA_CERTS``, roomcast's Python client through
``SSL_CERT_FILE`` (read by ``ssl.create_default_context``), ``Publisher`` through its
``ssl_context``. So each test proves a verified handshake, not one with checks turned off.

Real ``roomcast serve`` processes on 127.0.0.1 (free ports, temporary directories). The
reload test overwrites the files, sends SIGHUP and waits for the server's own log line that
it reloaded: a connection made before it keeps working on the same socket, and a new one is
shown the new certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_no_sticky_sessions import CLIENT, SCENARIO

from roomcast import Publisher
from roomcast.client import Client

WAIT = 20.0
LISTENING = re.compile(rb"listening on (https://127\.0\.0\.1:\d+)")


class TestCa:
    """A CA of this test run, and the server certificates it signs (ECDSA P-256, SAN 127.0.0.1
    and localhost): what a client must trust to reach the server, and nothing more."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roomcast test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / "ca.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, cert_path: Path, key_path: Path) -> str:
        """Write a server certificate and its key (replacing the files in one step each, as a
        renewal tool does); returns the certificate's SHA-256 fingerprint."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        for path, data in ((key_path, key_pem), (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
            scratch = path.with_suffix(".new")
            scratch.write_bytes(data)
            os.replace(scratch, path)
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only, and checks the host name."""
        return ssl.create_default_context(cafile=str(self.path))


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path)


class TlsServer:
    """A ``roomcast serve --ssl-certfile … --ssl-keyfile …`` process; its output is read line by
    line so a test can wait for what it logs."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url

    async def until_output(self, pattern: bytes) -> bytes:
        """The next output line containing ``pattern`` (bounded by ``WAIT``)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(WAIT):
            while line := await self.proc.stdout.readline():
                if pattern in line:
                    return line
        raise AssertionError(f"the server ended before it wrote {pattern!r}")


@contextlib.asynccontextmanager
async def tls_server(tmp_path: Path, cert: Path, key: Path, *extra: str) -> AsyncIterator[TlsServer]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast",
        "serve",
        "--port",
        "0",
        "--task-db",
        str(tmp_path / "tasks.db"),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(WAIT):
            while not (found := LISTENING.search(line := await proc.stdout.readline())):
                assert line, "the server exited before it listened"
        yield TlsServer(proc, found.group(1).decode())
    finally:
        if proc.returncode is None:
            proc.kill()  # by its pid: the process this fixture started
        await asyncio.wait_for(proc.wait(), WAIT)


@pytest.fixture
def server_files(tmp_path: Path, ca: TestCa) -> tuple[Path, Path, str]:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    fingerprint = ca.issue("roomcast test server", cert, key)
    return cert, key, fingerprint


async def _node_scenario(url: str, ca: TestCa, transports: list[str], room: str) -> list[dict[str, object]]:
    """``nosticky_scenario.mjs rooms`` against ``url`` with the official client, trusting the CA:
    connect, subscribe, five publications (the API over https, and its own emit), disconnect."""
    if not CLIENT.is_file():
        pytest.fail("needs tests/interop/node/node_modules (run `make test-deps`)")
    options = {"url": url, "apis": [url, url], "room": room, "transports": transports, "timeoutMs": 15_000}
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(SCENARIO),
        "rooms",
        json.dumps(options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(ca.path)},
    )
    output, _ = await asyncio.wait_for(proc.communicate(), WAIT)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, output.decode()
    return lines


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]], ids=["https-polling", "wss-upgrade"])
async def test_the_official_client_connects_over_https_and_wss(
    tmp_path: Path, ca: TestCa, server_files: tuple[Path, Path, str], transports: list[str]
) -> None:
    cert, key, _ = server_files
    async with tls_server(tmp_path, cert, key) as server:
        seen = await _node_scenario(server.url, ca, transports, "tls-room")
    received = [o["data"] for o in seen if o["type"] == "received"]
    assert received == [1, 2, 3, 4, 5]
    final = next(o["transport"] for o in seen if o["type"] == "final-transport")
    assert final == ("polling" if transports == ["polling"] else "websocket")
    if transports == ["polling", "websocket"]:
        assert {"type": "upgrade", "outcome": "upgrade to websocket"} in seen


async def test_the_python_client_connects_over_wss_and_polling_https(
    tmp_path: Path, ca: TestCa, server_files: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key, _ = server_files
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.path))  # the client's default context trusts the CA
    async with tls_server(tmp_path, cert, key) as server:
        publisher = Publisher(server.url, ssl_context=ca.client_context())
        for transports in (("websocket",), ("polling",)):
            got: asyncio.Queue[object] = asyncio.Queue()
            async with Client(server.url, transports=transports, reconnect=False) as client:
                client.on("news", got.put_nowait)
                await client.wait_connected(WAIT)
                await client.subscribe("tls-news")
                await publisher.apublish("tls-news", "news", {"over": transports[0]})
                assert await asyncio.wait_for(got.get(), WAIT) == {"over": transports[0]}


async def test_a_client_that_does_not_trust_the_ca_is_refused_by_its_own_check(
    tmp_path: Path, server_files: tuple[Path, Path, str]
) -> None:
    """The certificate really is checked: the system's CAs do not know the test CA."""
    cert, key, _ = server_files
    async with tls_server(tmp_path, cert, key) as server:
        host, port = server.url.removeprefix("https://").split(":")
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=ssl.create_default_context()), WAIT)


async def _fingerprint(url: str, context: ssl.SSLContext) -> str:
    """The SHA-256 of the certificate a new TLS connection to ``url`` is shown."""
    host, port = url.removeprefix("https://").split(":")
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port), ssl=context), WAIT)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """One keep-alive ``GET`` on an open connection; the status line's code."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    await asyncio.wait_for(reader.readexactly(length), WAIT)
    return head.split(b" ", 2)[1]


async def test_sighup_reloads_the_certificate_and_keeps_every_connection(
    tmp_path: Path, ca: TestCa, server_files: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key, first = server_files
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.path))
    context = ca.client_context()
    async with tls_server(tmp_path, cert, key) as server:
        host, port = server.url.removeprefix("https://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port), ssl=context)
        got: asyncio.Queue[object] = asyncio.Queue()
        async with Client(server.url, transports=("websocket",), reconnect=False) as client:
            client.on("news", got.put_nowait)
            await client.wait_connected(WAIT)
            await client.subscribe("renewal")
            assert await _get(reader, writer, "/healthz") == b"200"

            second = ca.issue("roomcast renewed server", cert, key)
            assert second != first
            # Files replaced, no signal yet: the server still presents what it loaded.
            assert await _fingerprint(server.url, context) == first

            server.proc.send_signal(signal.SIGHUP)
            await server.until_output(b"TLS certificate reloaded")
            assert await _fingerprint(server.url, context) == second

            # The connections made before the reload are the same sockets, still serving.
            assert await _get(reader, writer, "/healthz") == b"200"
            peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert hashlib.sha256(peer).hexdigest() == first
            await Publisher(server.url, ssl_context=context).apublish("renewal", "news", "after the reload")
            assert await asyncio.wait_for(got.get(), WAIT) == "after the reload"
            assert client.state.value == "connected"
        writer.close()
        assert server.proc.returncode is None


async def test_a_reload_with_a_broken_file_keeps_the_previous_certificate(
    tmp_path: Path, ca: TestCa, server_files: tuple[Path, Path, str]
) -> None:
    cert, key, first = server_files
    async with tls_server(tmp_path, cert, key) as server:
        key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        server.proc.send_signal(signal.SIGHUP)
        line = await server.until_output(b"still serving the previous certificate")
        assert str(key).encode() in line or str(cert).encode() in line
        assert await _fingerprint(server.url, ca.client_context()) == first


def _serve_fails(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", "--task-db", ":memory:", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )


def test_an_unusable_certificate_is_one_clear_line_and_status_2(
    tmp_path: Path, ca: TestCa, server_files: tuple[Path, Path, str]
) -> None:
    cert, key, _ = server_files
    other_key = tmp_path / "other.key"
    ca.issue("another server", tmp_path / "other.pem", other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    unreadable = tmp_path / "unreadable.pem"
    unreadable.write_bytes(cert.read_bytes())
    unreadable.chmod(0)
    cases = [
        (["--ssl-certfile", str(tmp_path / "missing.pem"), "--ssl-keyfile", str(key)], "missing.pem: no such file"),
        (["--ssl-certfile", str(garbage), "--ssl-keyfile", str(key)], f"cannot use the TLS certificate {garbage}"),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(other_key)], f"with key {other_key}"),
        (["--ssl-keyfile", str(key)], "--ssl-keyfile needs --ssl-certfile"),
    ]
    if os.geteuid() != 0:  # root reads a mode-0 file anyway
        cases.append((["--ssl-certfile", str(unreadable), "--ssl-keyfile", str(key)], "permission denied"))
    for args, expected in cases:
        result = _serve_fails(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
