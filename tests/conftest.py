"""Shared fixtures: a real roomcast server on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

# `roomcast serve` processes started by tests keep tasks in memory, not in a file in the repo.
os.environ.setdefault("ROOMCAST_TASK_DB", ":memory:")
# ... and drain for at most 1 s at SIGTERM: a server a test stops usually still holds that test's
# clients, whom a full 10 s drain would spread over the whole grace. The drain's own tests
# (tests/server/test_drain.py) pass the grace they test.
os.environ.setdefault("ROOMCAST_SHUTDOWN_GRACE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from brokers import BROKERS  # noqa: E402
from servers import RunningServer, running  # noqa: E402

from roomcast.hub.hub import Hub  # noqa: E402
from roomcast.server.app import App  # noqa: E402
from roomcast.server.config import Settings  # noqa: E402
from roomcast.server.conformance import register_demo_events  # noqa: E402

# Developers' runs explore new examples each time; CI replays a fixed set, so a landing is
# judged on the code, not on which examples the dice picked that run.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own empty directory.

    ``Settings()`` keeps tasks in ``roomcast-tasks.db`` relative to the working directory,
    as ``roomcast serve`` does, and dozens of tests build ``App(hub, Settings(...))``
    in-process: from the repository root they would all write that file into the working
    tree and see each other's tasks (and a previous run's). Here each gets a file of its
    own that goes with ``tmp_path``. Paths in tests are built from ``__file__``, never from
    the working directory; a subprocess that needs the repository passes ``cwd=`` itself.
    """
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_app() -> Callable[..., App]:
    """Build an App with the demo events (echo, join, publish, drop) and custom settings.

    Tasks are kept in memory unless a test passes ``task_db``: no file, nothing shared.
    """

    def build(**settings: object) -> App:
        hub = Hub()
        register_demo_events(hub)
        settings.setdefault("task_db", ":memory:")
        return App(hub, Settings(**settings))  # type: ignore[arg-type]

    return build


@pytest.fixture
async def server(make_app: Callable[..., App]) -> AsyncIterator[RunningServer]:
    async with running(make_app()) as srv:
        yield srv


@pytest.fixture(params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker a parity suite runs over (``brokers.make_broker``): each test once per kind.

    A test about one broker only says so with ``@pytest.mark.parametrize("broker_kind", [...])``.
    """
    kind: str = request.param
    return kind


@pytest.fixture(scope="session", autouse=True)
def redis_url() -> Iterator[str]:
    """A real redis-server for the session (the ``redis`` rows of every broker matrix)."""
    import brokers
    from redisserver import running_redis

    with running_redis() as server:
        brokers.REDIS_URL = server.url
        yield server.url
