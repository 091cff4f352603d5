"""Every ``--redis`` URL form reaches a real Redis, and no password ever shows.

Real parts: redis-servers started for each test (an ACL user made with ``ACL SETUSER``, a
TLS listener with a certificate made here, a Redis Sentinel watching one of them), a broker
that subscribes, publishes and reads history through each form, and ``RedisPublisher``.
Logs are captured at DEBUG, redis-py's included, and searched for the password, as are
errors, ``repr`` and ``/readyz``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import redis
from brokerevents import Events
from redisserver import RedisProcess, running_redis, running_sentinel
from selfsigned import self_signed
from servers import running

from roomcast import PublishError, RedisPublisher
from roomcast.broker import redis_client
from roomcast.broker.redis import RedisBroker
from roomcast.errors import BrokerUnavailable
from roomcast.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.types import StreamPosition

WAIT = 10.0
PASSWORD = "s3cret-Pa55"
ACL = ["on", f">{PASSWORD}", "~rc:*", "&rc:*", "+@all", "-@dangerous", "+info"]
"""What docs/scaling.md asks for: roomcast's keys and channels, no dangerous command but INFO
(the publish script reads the server's run id and version)."""


@pytest.fixture
def caplog_all(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
def acl_redis() -> Iterator[RedisProcess]:
    """A redis-server with the ACL user ``roomcast``."""
    with running_redis() as server:
        admin = redis.Redis.from_url(server.url)
        try:
            admin.execute_command("ACL", "SETUSER", "roomcast", "reset", *ACL)
        finally:
            admin.close()
        yield server


def _with_user(url: str, password: str = PASSWORD, user: str = "roomcast") -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest}"


async def _round_trip(url: str) -> None:
    """What a node and a worker do: subscribe, publish, hear it, read history, presence."""
    broker, events = RedisBroker(url), Events()
    await broker.start(events)
    try:
        await broker.subscribe("room")
        sent = await broker.publish("room", "ev", ({"n": 1},), ts=1.0)
        async with asyncio.timeout(WAIT):
            assert await events.publications.get() == sent
        history = await broker.history("room", since=StreamPosition(sent.position.epoch, 0))
        assert history.complete and history.publications == (sent,)
        await broker.add_presence("room", "c1", "ann")
        assert (await broker.presence("room")).users == ("ann",)
        assert PASSWORD not in repr(broker)
        worker = RedisPublisher(url)
        assert PASSWORD not in repr(worker)
        assert (await asyncio.to_thread(worker.publish, "room", "ev", 2)).offset == 2
        assert (await worker.apublish("room", "ev", 3)).offset == 3
        async with asyncio.timeout(WAIT):
            assert [(await events.publications.get()).data for _ in range(2)] == [(2,), (3,)]
    finally:
        await broker.aclose()


# -- redact -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://app:pw@[::1]:6379/2", "redis://app:***@[::1]:6379/2"),
        ("rediss://app:pw@cache:6380/0?ssl_ca_certs=/ca.pem", "rediss://app:***@cache:6380/0?ssl_ca_certs=/ca.pem"),
        ("redis://cache/0?password=pw&db=1", "redis://cache/0?password=***&db=1"),
        ("unix://app:pw@/run/redis.sock?db=1", "unix://app:***@/run/redis.sock?db=1"),
        (
            "redis+sentinel://app:pw@s1:26379,s2/main/1?sentinel_password=spw",
            "redis+sentinel://app:***@s1:26379,s2/main/1?sentinel_password=***",
        ),
        ("redis://app:p@ss/w?rd@cache:6379", "redis://app:***@cache:6379"),  # unencoded: hidden all the same
        ("redis://app@cache:6379", "redis://app@cache:6379"),  # a user without a password
    ],
)
def test_redact_hides_the_password_in_every_form(url: str, shown: str) -> None:
    assert redis_client.redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://app:{PASSWORD}@cache:6379",
        f"redis://app:{PASSWORD}@cache:port/0",
        f"redis+sentinel://app:{PASSWORD}@/main",
        f"redis+sentinel://app:{PASSWORD}@s1:26379",
        f"redis+sentinel://app:{PASSWORD}@s1:x/main",
    ],
)
def test_an_unreadable_url_is_refused_without_showing_its_password(url: str) -> None:
    for connect in (redis_client.connect, redis_client.connect_sync):
        with pytest.raises(ValueError) as refused:
            connect(url)
        assert PASSWORD not in str(refused.value) and "***" in str(refused.value)


# -- ACL users and passwords --------------------------------------------------------------------
async def test_an_acl_user_reaches_redis_with_its_password(
    acl_redis: RedisProcess, caplog_all: pytest.LogCaptureFixture
) -> None:
    url = _with_user(acl_redis.url)
    await _round_trip(url)
    client = redis_client.connect(url)
    try:
        assert await client.acl_whoami() == "roomcast"
    finally:
        await client.aclose()
    admin = redis.Redis.from_url(acl_redis.url)
    try:
        assert admin.acl_log() == []  # the ACL of the docs is enough: nothing was denied
    finally:
        admin.close()
    assert PASSWORD not in caplog_all.text


async def test_the_default_users_password_alone_is_enough(caplog_all: pytest.LogCaptureFixture) -> None:
    with running_redis() as server:
        admin = redis.Redis.from_url(server.url)
        try:
            admin.config_set("requirepass", PASSWORD)
        finally:
            admin.close()
        await _round_trip(server.url.replace("redis://", f"redis://:{PASSWORD}@"))
    assert PASSWORD not in caplog_all.text


async def test_a_wrong_password_is_refused_in_clear_words_that_do_not_hold_it(
    acl_redis: RedisProcess, caplog_all: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ng-" + PASSWORD
    url = _with_user(acl_redis.url, password=wrong)
    broker = RedisBroker(url)
    with pytest.raises(BrokerUnavailable) as refused:
        await broker.start(Events())
    message = str(refused.value)
    assert "refused the credentials" in message and "roomcast:***@127.0.0.1" in message
    with pytest.raises(BrokerUnavailable) as on_publish:
        await broker.publish("room", "ev", (), ts=1.0)
    await broker.aclose()
    worker = RedisPublisher(url)
    with pytest.raises(PublishError) as sync_refused:
        await asyncio.to_thread(worker.publish, "room", "ev", 1)
    with pytest.raises(PublishError) as async_refused:
        await worker.apublish("room", "ev", 1)
    for error in (refused.value, on_publish.value, sync_refused.value, async_refused.value):
        assert wrong not in str(error) and wrong not in repr(error) and error.__cause__ is None
    assert "refused the credentials" in str(sync_refused.value)
    assert wrong not in caplog_all.text and PASSWORD not in caplog_all.text
    admin = redis.Redis.from_url(acl_redis.url)
    try:  # a refused password is not retried: one login per call (start, publish, aclose, 2 workers')
        refusals = [entry for entry in admin.acl_log() if entry["reason"] == "auth"]
        assert sum(int(entry["count"]) for entry in refusals) == 5
    finally:
        admin.close()


async def test_readyz_never_shows_the_redis_password(acl_redis: RedisProcess) -> None:
    url = _with_user(acl_redis.url)
    assert PASSWORD not in repr(Settings(redis_url=url))
    app = App(Hub(broker=RedisBroker(url)), Settings(task_db=":memory:"))
    async with running(app) as srv, aiohttp.ClientSession() as http:
        async with http.get(f"{srv.url}/readyz") as response:
            assert (response.status, await response.text()) == (200, "ready")


# -- TLS ----------------------------------------------------------------------------------------
async def test_rediss_reaches_redis_over_tls_with_the_certificate_it_is_told_to_trust(
    tmp_path: Path, caplog_all: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(tls=self_signed(tmp_path))
    try:
        server.start()
        assert server.url.startswith("rediss://")
        admin = redis.Redis.from_url(server.url)
        try:
            admin.execute_command("ACL", "SETUSER", "roomcast", "reset", *ACL)
        finally:
            admin.close()
        await _round_trip(_with_user(server.url))
        untrusted = RedisBroker(_with_user(server.url.split("?", 1)[0]))  # no ssl_ca_certs: the system's CAs
        with pytest.raises(BrokerUnavailable, match="unreachable"):
            await untrusted.start(Events())
        await untrusted.aclose()
    finally:
        server.stop()
    assert PASSWORD not in caplog_all.text


# -- Sentinel -----------------------------------------------------------------------------------
async def test_a_sentinel_url_finds_the_master_and_every_call_works_through_it(
    acl_redis: RedisProcess, caplog_all: pytest.LogCaptureFixture
) -> None:
    """The first sentinel listed is not there: the next one is asked. The master's
    credentials and the sentinel's own password both travel in the URL."""
    sentinel_password = "sentinel-" + PASSWORD
    with running_sentinel(acl_redis, name="main", password=sentinel_password) as port:
        with running_redis() as gone:
            absent = gone.port  # a port nothing listens on once this block ends
        url = (
            f"redis+sentinel://roomcast:{PASSWORD}@127.0.0.1:{absent},127.0.0.1:{port}/main/0"
            f"?sentinel_password={sentinel_password}"
        )
        await _round_trip(url)
        shown = redis_client.redact(url)
        assert PASSWORD not in shown and sentinel_password not in shown
    assert PASSWORD not in caplog_all.text and sentinel_password not in caplog_all.text
