"""Logging in to ``/dashboard`` (``server.dashboard``) over real HTTP: ``--dashboard-key``
beside ``--api-key``, and the limit on failed logins per client address.

A real roomcast server on 127.0.0.1; the other client address is a real one too (the
connection is bound to 127.0.0.2, which Linux routes on loopback), so the limit is seen as
a client behind another address would see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from servers import RunningServer, running

from roomcast.hub.hub import Hub
from roomcast.server.app import App
from roomcast.server.config import Settings
from roomcast.server.dashboard import LOGIN_BURST, LOGIN_REFILL, SESSION_COOKIE
from roomcast.transports.ratelimit import AttemptLimit

DASHBOARD_KEY = "dashboard-only-key-5b0e93c1"
API_KEY = "api-key-that-publishes-7d21a4"
TEST_S = 30


@asynccontextmanager
async def serving(**keys: str | None) -> AsyncIterator[RunningServer]:
    async with asyncio.timeout(TEST_S), running(App(Hub(), Settings(task_db=":memory:", **keys))) as srv:
        yield srv


async def login(http: aiohttp.ClientSession, srv: RunningServer, key: str) -> aiohttp.ClientResponse:
    async with http.post(f"{srv.url}/dashboard/login", data={"key": key}, allow_redirects=False) as response:
        await response.read()
        return response


async def page_with(http: aiohttp.ClientSession, srv: RunningServer, response: aiohttp.ClientResponse) -> int:
    """The status of ``GET /dashboard`` with the cookie a login answer set."""
    cookie = response.cookies[SESSION_COOKIE].value
    async with http.get(f"{srv.url}/dashboard", headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}) as page:
        return page.status


async def test_the_dashboard_key_and_the_api_key_log_in_and_the_dashboard_key_cannot_publish() -> None:
    async with serving(dashboard_key=DASHBOARD_KEY, api_key=API_KEY) as srv, aiohttp.ClientSession() as http:
        for key in (DASHBOARD_KEY, API_KEY):
            answer = await login(http, srv, key)
            assert answer.status == 303 and answer.headers["Location"] == "/dashboard"
            assert await page_with(http, srv, answer) == 200
        headers = {"Authorization": f"Bearer {DASHBOARD_KEY}"}
        async with http.post(f"{srv.url}/api/publish", json={"room": "r", "event": "e"}, headers=headers) as refused:
            assert refused.status == 401  # the dashboard key is not the key that publishes


async def test_a_dashboard_key_alone_needs_a_login_and_the_api_stays_for_this_machine() -> None:
    async with serving(dashboard_key=DASHBOARD_KEY) as srv, aiohttp.ClientSession() as http:
        async with http.get(f"{srv.url}/dashboard") as refused:
            assert refused.status == 401  # the login form, even from loopback
        answer = await login(http, srv, DASHBOARD_KEY)
        assert answer.status == 303 and await page_with(http, srv, answer) == 200
        async with http.post(f"{srv.url}/api/publish", json={"room": "r", "event": "e"}) as local:
            assert local.status == 200  # no API key: the keyless API, loopback only, as before


async def test_a_flood_of_wrong_keys_gets_429_with_retry_after_while_another_address_logs_in() -> None:
    async with serving(dashboard_key=DASHBOARD_KEY) as srv, aiohttp.ClientSession() as http:
        for attempt in range(LOGIN_BURST):
            answer = await login(http, srv, f"guess-{attempt}")
            assert answer.status == 401 and SESSION_COOKIE not in answer.cookies
        async with http.post(f"{srv.url}/dashboard/login", data={"key": "guess-x"}) as limited:
            assert limited.status == 429
            wait = int(limited.headers["Retry-After"])
            assert 1 <= wait <= 1 / LOGIN_REFILL + 1
            assert "too many failed logins" in (await limited.json())["error"]["message"]
        right = await login(http, srv, DASHBOARD_KEY)
        assert right.status == 429  # while limited, not even the right key is looked at
        other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=other) as elsewhere:
            answer = await login(elsewhere, srv, DASHBOARD_KEY)
            assert answer.status == 303 and await page_with(elsewhere, srv, answer) == 200
        assert srv.app.dashboard.logins.wait("127.0.0.2") == 0  # a right key costs nothing


def test_the_attempt_limit_refills_and_forgets_the_oldest_address_past_its_bound() -> None:
    now = [0.0]
    limit = AttemptLimit(per_second=0.5, burst=2, max_keys=3, clock=lambda: now[0])
    limit.charge("a")
    limit.charge("a")
    assert limit.wait("a") == pytest.approx(2.0)  # one token back in 2 s
    now[0] = 1.0
    assert limit.wait("a") == pytest.approx(1.0)
    now[0] = 2.0
    assert limit.wait("a") == 0
    limit.charge("a")
    assert limit.wait("a") > 0  # dry again
    for address in ("b", "c", "d"):  # "a" is the one touched longest ago: forgotten
        limit.charge(address)
    assert len(limit) == 3 and limit.wait("a") == 0
    with pytest.raises(ValueError):
        AttemptLimit(per_second=0, burst=1)
