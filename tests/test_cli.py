"""`roomcast serve` as a user runs it: a real process, flags and ROOMCAST_* variables."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from roomcast import cli
from roomcast.server.config import Settings


def _serve(
    *args: str, env: dict[str, str] | None = None, seen: list[str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    while True:
        line = lines.get(timeout=15)
        if seen is not None:
            seen.append(line)
        if "listening on" in line:
            return proc, line.rsplit(" ", 1)[1].strip()


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=10)


def test_serve_reads_flags_and_environment_and_stops_on_sigterm() -> None:
    proc, base = _serve("--ping-timeout", "9", env={"ROOMCAST_PING_INTERVAL": "7", "ROOMCAST_MAX_PAYLOAD": "5000"})
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok"
        with urllib.request.urlopen(f"{base}/socket.io/?EIO=4&transport=polling", timeout=5) as r:
            handshake = json.loads(r.read()[1:])
        assert (handshake["pingInterval"], handshake["pingTimeout"], handshake["maxPayload"]) == (7000, 9000, 5000)
    finally:
        assert _stop(proc) == 0


def test_help_lists_every_option_with_its_environment_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for flag, var in [
        ("--host", "ROOMCAST_HOST"),
        ("--port", "ROOMCAST_PORT"),
        ("--cors-origin", "ROOMCAST_CORS_ORIGIN"),
        ("--ping-interval", "ROOMCAST_PING_INTERVAL"),
        ("--ping-timeout", "ROOMCAST_PING_TIMEOUT"),
        ("--max-payload", "ROOMCAST_MAX_PAYLOAD"),
        ("--log-level", "ROOMCAST_LOG_LEVEL"),
        ("--sse-heartbeat", "ROOMCAST_SSE_HEARTBEAT"),
        ("--jwt-secret", "ROOMCAST_JWT_SECRET"),
        ("--jwt-public-key", "ROOMCAST_JWT_PUBLIC_KEY"),
        ("--task-db", "ROOMCAST_TASK_DB"),
        ("--task-stop-grace", "ROOMCAST_TASK_STOP_GRACE"),
        ("--task-event", "ROOMCAST_TASK_EVENT"),
        ("--task-payload", "ROOMCAST_TASK_PAYLOAD"),
        ("--sse-format", "ROOMCAST_SSE_FORMAT"),
        ("--task-list-room", "ROOMCAST_TASK_LIST_ROOM"),
        ("--task-keep-days", "ROOMCAST_TASK_KEEP_DAYS"),
        ("--task-keep-count", "ROOMCAST_TASK_KEEP_COUNT"),
        ("--task-lease-ttl", "ROOMCAST_TASK_LEASE_TTL"),
    ]:
        assert flag in out and var in out


def test_bad_flag_value_is_refused_with_a_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--max-payload", "0"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "max-payload" in result.stderr


def test_serve_without_a_key_says_it_runs_open_and_with_one_refuses_clients_without_a_token() -> None:
    seen: list[str] = []
    proc, base = _serve(seen=seen)
    try:
        assert any("running OPEN" in line for line in seen)
        with urllib.request.urlopen(f"{base}/sse?room=a", timeout=5) as r:  # open: no token needed
            assert r.status == 200
    finally:
        _stop(proc)
    seen.clear()
    proc, base = _serve(env={"ROOMCAST_JWT_SECRET": "a-secret-long-enough-for-hs256-tokens"}, seen=seen)
    try:
        assert not any("running OPEN" in line for line in seen)
        assert any("clients need a valid token (HS256)" in line for line in seen)
        try:
            urllib.request.urlopen(f"{base}/sse?room=a", timeout=5)
            raise AssertionError("a client without a token was let in")
        except urllib.error.HTTPError as refused:
            assert refused.code == 401
            assert json.loads(refused.read())["error"]["message"] == "token required"
    finally:
        assert _stop(proc) == 0


def _post(base: str, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        answer: dict[str, object] = json.loads(r.read())
        return answer


def test_task_event_aliases_from_the_environment_and_list_rooms_from_flags() -> None:
    proc, base = _serve(
        "--task-list-room",
        "kind",
        env={
            "ROOMCAST_TASK_EVENT": "crawl.progress=crawl_progress crawl.cancelled=crawl:stopped "
            "crawl.stopping=crawl:stopping",
            "ROOMCAST_TASK_DB": ":memory:",
        },
    )
    try:
        with urllib.request.urlopen(f"{base}/sse?room=tasks:kind:crawl", timeout=5) as stream:
            task = _post(base, "/api/tasks", {"kind": "crawl", "title": "site"})
            _post(base, f"/api/tasks/{task['id']}/progress", {"progress": 10})
            _post(base, f"/api/tasks/{task['id']}/stop", {})
            _post(base, f"/api/tasks/{task['id']}/cancel", {})
            other = _post(base, "/api/tasks", {"kind": "index"})
            events = []
            while "crawl:stopped" not in events:
                line = stream.readline().decode()
                assert line, "the stream ended early"
                if line.startswith("event: "):
                    events.append(line[len("event: ") :].strip())
        # Aliased names for kind crawl, several in one variable; the others keep their defaults.
        assert events == [
            "snapshot",
            "task:created",
            "task:updated",
            "crawl_progress",
            "crawl:stopping",
            "crawl:stopped",
        ]
        assert other["kind"] == "index"
    finally:
        assert _stop(proc) == 0


def test_bad_task_event_alias_is_refused_with_a_reason() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--task-event", "crawl.progresss=x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--task-event" in result.stderr and "EVENT must be one of" in result.stderr


WIRE_MODULE = """
def crawl_wire(task):
    return {"progressId": task.id, "percentage": task.progress or 0, "status": task.status.value}
"""


def test_a_task_payload_map_from_a_module_of_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "wiremap.py").write_text(WIRE_MODULE)
    proc, base = _serve(
        "--task-payload", "crawl=wiremap:crawl_wire", "--sse-format", "message", "--task-db", ":memory:", cwd=tmp_path
    )
    try:
        task = _post(base, "/api/tasks", {"kind": "crawl"})
        assert "percentage" not in task  # the API keeps the canonical task
        with urllib.request.urlopen(f"{base}/tasks/{task['id']}/events", timeout=5) as stream:
            line = b""
            while not line.startswith(b"data: "):
                line = stream.readline()
        snapshot = json.loads(line[len(b"data: ") :])
        assert snapshot["event"] == "snapshot"
        assert snapshot["data"]["snapshot"] == {"progressId": task["id"], "percentage": 0, "status": "pending"}
    finally:
        assert _stop(proc) == 0


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("crawl=wiremap", "must look like KIND=MODULE:FUNCTION"),
        ("crawl=no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("crawl=json:no_such_function", "'json:no_such_function' is not a function"),
    ],
)
def test_a_bad_task_payload_is_refused_with_a_reason(spec: str, reason: str) -> None:
    refused = CliRunner().invoke(cli.main, ["serve", "--task-payload", spec])
    assert refused.exit_code == 2
    assert "--task-payload" in refused.output and reason in refused.output


def _settings_of_serve(monkeypatch: pytest.MonkeyPatch, *args: str, **env: str) -> Settings:
    """The ``Settings`` ``roomcast serve *args`` builds with only ``env`` of the ROOMCAST_ variables.

    serve's own code builds the Settings; the App (which would open the task file) and the
    server loop are the only things replaced, and logging is left as the test runner set it.
    """
    built: list[Settings] = []

    def capture(*, settings: Settings) -> object:
        built.append(settings)
        return object()

    monkeypatch.setattr(cli, "App", capture)
    monkeypatch.setattr(cli, "run", lambda app, **_: None)
    monkeypatch.setattr(cli, "configure_logging", lambda *_, **__: None)  # the test runner's logging stays
    unset: dict[str, str | None] = {name: None for name in os.environ if name.startswith("ROOMCAST_")}
    result = CliRunner().invoke(cli.main, ["serve", *args], env={**unset, **env}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [settings] = built
    return settings


def test_settings_defaults_are_what_serve_builds_with_no_flag_and_no_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Embedding roomcast (``App()``, ``RoomcastApp()``) and running ``roomcast serve`` must
    give the same server: every ``Settings`` field, including those the CLI has no flag for."""
    from_cli = _settings_of_serve(monkeypatch)

    def values(settings: Settings) -> dict[str, Any]:
        return {f.name: getattr(settings, f.name) for f in dataclasses.fields(Settings)}

    assert values(from_cli) == values(Settings())
    assert Settings().task_db == "roomcast-tasks.db"  # the file finished tasks outlive a restart in


def test_dashboard_key_from_the_flag_the_environment_or_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _settings_of_serve(monkeypatch, "--dashboard-key", "from-flag").dashboard_key == "from-flag"
    assert _settings_of_serve(monkeypatch, ROOMCAST_DASHBOARD_KEY="from-env").dashboard_key == "from-env"
    (tmp_path / "roomcast.toml").write_text('dashboard_key = "from-file"\n')
    config = str(tmp_path / "roomcast.toml")
    assert _settings_of_serve(monkeypatch, "--config", config).dashboard_key == "from-file"
    assert Settings().dashboard_key is None


def test_write_hold_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _settings_of_serve(monkeypatch, "--write-hold", "0").write_hold == 0.0
    assert _settings_of_serve(monkeypatch, ROOMCAST_WRITE_HOLD="0.005").write_hold == 0.005
    refused = CliRunner().invoke(cli.main, ["serve", "--write-hold", "-1"])
    assert refused.exit_code == 2 and "--write-hold" in refused.output


def test_task_lease_ttl_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # The App passes it to TaskService(lease_ttl=): tests/server/test_api_tasks.py sees the lease.
    assert _settings_of_serve(monkeypatch, "--task-lease-ttl", "4").task_lease_ttl == 4.0
    assert _settings_of_serve(monkeypatch, ROOMCAST_TASK_LEASE_TTL="2.5").task_lease_ttl == 2.5
    refused = CliRunner().invoke(cli.main, ["serve", "--task-lease-ttl", "0"])
    assert refused.exit_code == 2 and "--task-lease-ttl" in refused.output
