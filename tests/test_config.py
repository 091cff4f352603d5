"""Configuration: ``Settings`` refuses bad values itself, ``roomcast serve --config FILE`` reads
a TOML file under the flags and ``ROOMCAST_*`` variables, and a refusal (a bad value, a bad
file, a busy port) is one line on stderr with exit status 2.

``Settings`` is checked in-process; everything the CLI does runs as a user runs it, a
``python -m roomcast serve`` subprocess, read line by line with a bound and ended by its PID.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import typing
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from roomcast.server.config import LOG_LEVELS, Settings, SettingsError
from roomcast.tasks.model import TaskEvents

WAIT = 20.0  # seconds for a server process to start or stop: generous, still bounded

# -- Settings ---------------------------------------------------------------------------------


def _refusal(**values: Any) -> SettingsError:
    with pytest.raises(SettingsError) as caught:
        Settings(**values)
    return caught.value


# (field, value, what the reason says): one row per rule in server/config.py.
RULES: list[tuple[str, object, str]] = [
    ("port", 99999, "must be between 0 and 65535, got 99999"),
    ("port", -1, "must be between 0 and 65535, got -1"),
    ("port", 8000.0, "must be an integer, got float 8000.0"),
    ("port", True, "must be an integer, got bool True"),  # bool is an int to Python, not to us
    ("host", None, "must be a string, got NoneType None"),
    ("cors_origins", "*", "must be a tuple of strings, got str '*'"),  # would be iterated as '*'
    ("cors_origins", ["*"], "must be a tuple of strings, got list"),
    ("cors_origins", (1,), "must be a tuple of strings"),
    *((name, 0, "must be > 0, got 0") for name in ("ping_interval", "ping_timeout", "connect_timeout")),
    *((name, -0.5, "must be > 0, got -0.5") for name in ("request_timeout", "keepalive_timeout", "ws_ping_timeout")),
    ("sse_heartbeat", 0.0, "must be > 0, got 0.0"),
    ("task_lease_ttl", 0, "must be > 0, got 0"),
    ("task_keep_days", 0, "must be > 0, got 0"),  # None keeps tasks; 0 would delete each at once
    *(
        (name, 0, "must be >= 1, got 0")
        for name in (
            "max_payload",
            "max_buffer_bytes",
            "output_high_water",
            "max_request_line",
            "max_header_bytes",
            "max_headers",
            "message_burst",
            "max_rooms_per_connection",
        )
    ),
    *(
        (name, -1, "must be >= 0, got -1")
        for name in (
            "max_connections",
            "max_connections_per_address",
            "ws_ping_interval",
            "max_messages_per_second",
            "max_attachments",
            "history_size",
            "history_ttl",
            "history_room_bytes",
            "history_bytes",
            "recovery_window",
            "sse_retry_ms",
            "jwt_leeway",
            "task_stop_grace",
            "task_keep_count",
        )
    ),
    ("max_payload", 1.5, "must be an integer, got float 1.5"),
    ("recovery_window", math.nan, "must be a finite number, got nan"),
    ("ping_interval", math.inf, "must be a finite number, got inf"),
    ("log_level", "loud", "must be one of debug, info, warning, error, got 'loud'"),
    ("log_level", "INFO", "must be one of"),  # the CLI lower-cases; Settings holds one spelling
    ("engineio_echo", 1, "must be True or False, got int 1"),
    ("task_db", None, "must be a string, got NoneType None"),
    ("task_events", {"crawl": "crawl_progress"}, "must be a mapping of strings to TaskEvents"),
    ("task_list_rooms", ("kind", "team"), "may only hold ['kind', 'owner'], got ['team']"),
    ("task_payloads", {"crawl": {"percentage": "progress"}}, "must be a mapping of strings to functions"),
    ("sse_format", "onmessage", "must be one of events, message, got 'onmessage'"),
    ("poll_allow", "https://x/", "must be a tuple of strings or None"),
]


@pytest.mark.parametrize(("name", "value", "reason"), RULES, ids=[f"{r[0]}={r[1]!r}" for r in RULES])
def test_settings_refuses_a_bad_value_naming_the_field(name: str, value: object, reason: str) -> None:
    refusal = _refusal(**{name: value})
    assert isinstance(refusal, ValueError)  # embedders catching ValueError keep working
    [(field, said)] = refusal.problems
    assert field == name and reason in said
    assert str(refusal).startswith(f"{name} {reason}")


def test_every_field_the_rules_tests_name_exists() -> None:
    """A renamed field must not leave a row above testing nothing (Settings(**{name}) would
    fail with a TypeError, but a row's field must also be the one the refusal names)."""
    names = {f.name for f in dataclasses.fields(Settings)}
    assert {row[0] for row in RULES} <= names


def _numeric(name: str) -> bool:
    hint = typing.get_type_hints(Settings)[name]
    kinds = {int, float}
    return hint in kinds or (set(typing.get_args(hint)) - {type(None)}) <= kinds and bool(typing.get_args(hint))


NUMERIC = [f.name for f in dataclasses.fields(Settings) if _numeric(f.name)]


@pytest.mark.parametrize("name", NUMERIC)
def test_every_number_is_refused_below_zero_and_when_not_finite(name: str) -> None:
    """The generic rule: a field added later without a row above is still checked."""
    for bad in (-1, math.nan, math.inf):
        assert [field for field, _ in _refusal(**{name: bad}).problems] == [name]


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Settings)])
def test_every_field_refuses_a_value_of_no_type_it_takes(name: str) -> None:
    try:
        Settings(**{name: object()})
    except SettingsError as refusal:
        assert [field for field, _ in refusal.problems] == [name]
    else:
        pytest.fail(f"Settings.{name} took object(): its annotation is one config.py's _matches cannot check")


def test_every_bad_field_is_named_at_once_in_field_order() -> None:
    refusal = _refusal(ping_interval=-1, port=99999)
    assert [name for name, _ in refusal.problems] == ["port", "ping_interval"]
    assert str(refusal) == "port must be between 0 and 65535, got 99999; ping_interval must be > 0, got -1"


def test_a_secret_of_the_wrong_type_is_named_but_never_echoed() -> None:
    for name in ("jwt_secret", "api_key", "metrics_key", "dashboard_key", "redis_url"):
        refusal = _refusal(**{name: b"s3cret-value"})
        assert name in str(refusal) and "s3cret" not in str(refusal)


def test_history_ttl_must_be_positive_with_redis_only() -> None:
    assert Settings(history_ttl=0).history_ttl == 0  # the memory broker keeps none
    [(name, reason)] = _refusal(redis_url="redis://127.0.0.1:6379/0", history_ttl=0).problems
    assert name == "history_ttl" and "redis_url" in reason


def test_good_values_at_each_boundary_are_accepted() -> None:
    Settings(
        port=0,
        cors_origins=("*",),
        ping_interval=0.001,
        max_payload=1,
        max_connections=0,  # 0: off
        max_connections_per_address=0,
        ws_ping_interval=0,
        max_messages_per_second=0,
        recovery_window=30,  # an int where a float is expected, as the type checker allows
        log_level="debug",
        poll_allow=None,
        task_events={"crawl": TaskEvents(progress="crawl_progress")},
        task_list_rooms=("kind", "owner"),
        task_keep_days=None,
        task_keep_count=None,
    )
    Settings(port=65535, log_level=LOG_LEVELS[-1])
    assert dataclasses.replace(Settings(), port=1).port == 1  # replace() builds, so it checks too
    with pytest.raises(SettingsError, match="port"):
        dataclasses.replace(Settings(), port=70000)


# -- the CLI ------------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any ROOMCAST_ variable the caller's shell may set."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}, **extra}


def _refused(*args: str, cwd: Path, **env: str) -> str:
    """Run ``roomcast serve *args``, which must refuse: status 2, no traceback; its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=cwd,
        env=_env(**env),
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and result.stdout == ""
    return result.stderr


def _one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@contextmanager
def _serving(*args: str, cwd: Path, **env: str) -> Iterator[str]:
    """A running ``roomcast serve *args``: its base URL (as it printed it); SIGTERM to its PID
    at the end, and its exit status must be 0."""
    proc = subprocess.Popen(
        # a short grace: these servers hold a client session at SIGTERM, and the environment
        # (so conftest's short grace) is cleared here; the drain has its own tests (test_drain)
        [sys.executable, "-m", "roomcast", "serve", "--log-level", "error", "--shutdown-grace", "1", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env=_env(**env),
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in proc.stdout or []:
            lines.put(line)
        lines.put("")  # the end of its output: it exited

    threading.Thread(target=read, daemon=True).start()
    try:
        seen: list[str] = []
        while "listening on" not in (line := lines.get(timeout=WAIT)):
            assert line, f"roomcast serve exited before listening: {seen}"
            seen.append(line)
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0


def _handshake(base: str, origin: str | None = None) -> dict[str, Any]:
    """The Engine.IO handshake (what the server was configured with), as ``origin`` sees it."""
    headers = {"Origin": origin} if origin else {}
    request = urllib.request.Request(f"{base}/socket.io/?EIO=4&transport=polling", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as r:
        answer: dict[str, Any] = json.loads(r.read()[1:])
        return answer


def test_the_file_is_under_the_variables_which_are_under_the_flags(tmp_path: Path) -> None:
    (tmp_path / "roomcast.toml").write_text(
        "# every serve option, by its name\n"
        "port = 0\n"  # the default is 8000: the printed URL shows the file was read
        "ping_interval = 7\n"  # only the file: 7 s
        "ping_timeout = 8.5\n"  # the file, then ROOMCAST_PING_TIMEOUT: 9 s
        "max_payload = 5000\n"  # the file, the variable, then --max-payload: 6000
        'cors_origins = ["https://a.example"]\n'
        'task_db = ":memory:"\n'
        'log_level = "ERROR"\n'  # the option's own type takes it, case and all
        'sse_format = "message"\n'
    )
    with _serving(
        "--config",
        "roomcast.toml",
        "--max-payload",
        "6000",
        cwd=tmp_path,
        ROOMCAST_PING_TIMEOUT="9",
        ROOMCAST_MAX_PAYLOAD="5500",
    ) as base:
        assert not base.endswith(":8000")
        shake = _handshake(base, origin="https://a.example")
        assert (shake["pingInterval"], shake["pingTimeout"], shake["maxPayload"]) == (7000, 9000, 6000)
        with pytest.raises(urllib.error.HTTPError) as other:  # the file's list of origins, and only it
            _handshake(base, origin="https://b.example")
        assert other.value.code == 403
        with urllib.request.urlopen(f"{base}/sse?room=a", timeout=5) as stream:  # unnamed, for onmessage
            lines = [stream.readline() for _ in range(4)]  # retry, blank, id, data
        assert lines[2].startswith(b"id: ") and lines[3].startswith(b'data: {"event":"snapshot"')


def test_the_file_can_come_from_roomcast_config_and_a_flag_still_wins(tmp_path: Path) -> None:
    (tmp_path / "conf.toml").write_text('ping_interval = 3\nport = 0\ntask_db = ":memory:"\n')
    with _serving("--ping-interval", "4", cwd=tmp_path, ROOMCAST_CONFIG="conf.toml") as base:
        assert _handshake(base)["pingInterval"] == 4000
    with _serving(cwd=tmp_path, ROOMCAST_CONFIG="conf.toml") as base:
        shake = _handshake(base)
        assert (shake["pingInterval"], shake["pingTimeout"]) == (3000, 20000)  # the file, then Settings()


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("prot = 8001\n", "roomcast serve: bad.toml: unknown key 'prot' (the keys are the names of the roomcast"),
        ("max-payload = 10\n", "roomcast serve: bad.toml: unknown key 'max-payload': write 'max_payload'"),
        ("connect_timeout = 5\n", "roomcast serve: bad.toml: unknown key 'connect_timeout'"),  # no flag: no key
        ('port = "8001"\n', "roomcast serve: bad.toml: port must be an integer, got a string '8001'"),
        ("port = true\n", "roomcast serve: bad.toml: port must be an integer, got a boolean True"),
        ("ping_interval = [1]\n", "roomcast serve: bad.toml: ping_interval must be a number, got an array [1]"),
        ('cors_origins = "https://a"\n', "roomcast serve: bad.toml: cors_origins must be a list of strings"),
        ("[serve]\nport = 1\n", "roomcast serve: bad.toml: unknown key 'serve'"),
        ('log_level = "loud"\n', "roomcast serve: bad.toml: log_level: 'loud' is not one of"),
        ("port =\n", "roomcast serve: bad.toml: not valid TOML: "),
        ("port = 99999\n", "roomcast serve: bad.toml: port must be between 0 and 65535, got 99999"),
        ("ping_interval = -1\n", "roomcast serve: bad.toml: ping_interval must be > 0, got -1"),
    ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path: Path, text: str, line: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    assert _one_line(_refused("--config", "bad.toml", cwd=tmp_path)).startswith(line)


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    missing = _one_line(_refused("--config", "missing.toml", cwd=tmp_path))
    assert missing == "roomcast serve: cannot read the config file missing.toml: no such file or directory"
    (tmp_path / "adir.toml").mkdir()  # unreadable even for root, unlike a chmod 000 file
    folder = _one_line(_refused("--config", "adir.toml", cwd=tmp_path))
    assert folder == "roomcast serve: cannot read the config file adir.toml: is a directory"
    (tmp_path / "latin1.toml").write_bytes(b'host = "caf\xe9"\n')
    assert "latin1.toml: not valid TOML" in _one_line(_refused("--config", "latin1.toml", cwd=tmp_path))


def test_a_bad_value_names_where_it_was_written_flag_variable_or_file(tmp_path: Path) -> None:
    """Every bad value at once, each under the name the user wrote it with."""
    (tmp_path / "c.toml").write_text("max_headers = 0\n")
    line = _one_line(_refused("--config", "c.toml", "--port", "99999", cwd=tmp_path, ROOMCAST_PING_INTERVAL="-1"))
    assert line == (
        "roomcast serve: --port must be between 0 and 65535, got 99999; "
        "ROOMCAST_PING_INTERVAL must be > 0, got -1.0; c.toml: max_headers must be >= 1, got 0"
    )


def test_a_busy_port_is_one_line_and_status_2(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        stderr = _refused("--port", str(port), "--task-db", ":memory:", "--log-level", "error", cwd=tmp_path)
        assert _one_line(stderr) == f"roomcast serve: cannot listen on 127.0.0.1:{port}: address already in use"
        # At the default level the start-up log comes too (from its own thread: in any order).
        noisy = _refused("--port", str(port), "--task-db", ":memory:", cwd=tmp_path).splitlines()
        assert noisy.count(f"roomcast serve: cannot listen on 127.0.0.1:{port}: address already in use") == 1


def test_an_address_not_of_this_machine_is_one_line(tmp_path: Path) -> None:
    stderr = _refused(
        "--host", "192.0.2.1", "--port", "0", "--task-db", ":memory:", "--log-level", "error", cwd=tmp_path
    )
    assert _one_line(stderr) == "roomcast serve: cannot listen on 192.0.2.1:0: cannot assign requested address"
