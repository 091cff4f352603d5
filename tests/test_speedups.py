"""The compiled fast path and its pure-Python fallback: which one runs, and how a user picks.

``make test`` runs the whole suite on the build ``pip install -e`` made (when this machine has
a compiler), then the protocol, hub and transport suites again with ``ROOMCAST_PURE_PYTHON=1``;
these tests hold in both runs, and say which one they are in.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import roomcast
from roomcast._speedups import COMPILED, ENV, PACKAGE_DIR

EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)
PROBE = (  # imports every compiled module and those named on its command line
    "import importlib, json, sys, roomcast\n"
    "names = [*roomcast._speedups.COMPILED, *sys.argv[1:]]\n"
    "files = {m: importlib.import_module(m).__file__ for m in names}\n"
    "s = roomcast.speedups()\n"
    "print(json.dumps({'files': files, 'compiled': s.compiled, 'pure': s.pure, 'describe': s.describe()}))\n"
)


def _built() -> bool:
    """This checkout has a build of every compiled module (``pip install -e .`` with a compiler)."""
    stem = (PACKAGE_DIR.joinpath(*m.split(".")[1:]) for m in COMPILED)
    return all(any(base.with_name(base.name + suffix).exists() for suffix in EXTENSIONS) for base in stem)


def _probe(env: dict[str, str], pythonpath: Path | None = None, also: str = "") -> dict[str, object]:
    environ = {**os.environ, **env}
    if pythonpath is not None:
        environ["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *([also] if also else [])],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
        cwd=pythonpath,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    found["stderr"] = done.stderr
    return found


def test_each_module_runs_the_path_speedups_reports_and_a_build_runs_compiled() -> None:
    report = roomcast.speedups()
    for name in COMPILED:
        path = importlib.import_module(name).__file__ or ""
        if name in report.compiled:
            assert path.endswith(EXTENSIONS), (name, path)
        else:
            assert path.endswith(".py"), (name, path)
    assert set(report.compiled) | set(report.pure) == set(COMPILED)
    if os.environ.get(ENV, "") not in ("", "0"):  # the pure-Python run of `make test`
        assert report.compiled == ()
        assert report.describe() == f"pure Python ({ENV} is set)"
    elif _built():  # the compiled run: every module of the build, none stale
        assert report.pure == {}, f"a stale or partial build (`pip install -e .` rebuilds it): {report.pure}"
        assert report.describe() == f"compiled (cython, {len(COMPILED)} modules)"
    else:  # no compiler, or a checkout nobody built: the source runs, and says so
        assert report.compiled == () and set(report.pure.values()) == {"not built"}
        assert report.describe() == "pure Python (not built)"


def test_the_environment_variable_runs_every_module_from_its_source() -> None:
    found = _probe({ENV: "1"})
    files = found["files"]
    assert isinstance(files, dict)
    assert all(path.endswith(".py") for path in files.values()), files
    assert found["compiled"] == [] and found["describe"] == f"pure Python ({ENV} is set)"


def test_a_build_older_than_its_source_is_not_run_and_says_so_once(tmp_path: Path) -> None:
    """A developer edits a compiled module after ``pip install -e .``: the edit runs, not the build.

    A copy of the package where ``protocol/engineio.py`` changed since its build, and where
    ``hub/hub.py``, which roomcast does not compile, has a compiled file left from an older
    build. Where this checkout has no build, the compiled files are placeholders that could
    not even be loaded, so running one instead of its source would fail the probe.
    """
    package = tmp_path / "roomcast"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    module, leftover = "roomcast.protocol.engineio", "roomcast.hub.hub"
    assert leftover not in COMPILED
    source = package / "protocol" / "engineio.py"
    if not any(source.with_name("engineio" + suffix).exists() for suffix in EXTENSIONS):
        source.with_name("engineio" + EXTENSIONS[0]).write_bytes(b"not a shared object")
    source.write_text(source.read_text() + "\n# edited after the build\n")
    (package / "hub" / ("hub" + EXTENSIONS[0])).write_bytes(b"not a shared object either")

    found = _probe({ENV: ""}, pythonpath=tmp_path, also=leftover)
    files = found["files"]
    pure = found["pure"]
    assert isinstance(files, dict) and isinstance(pure, dict)
    assert files[module] == str(source)
    assert files[leftover] == str(package / "hub" / "hub.py")
    assert pure[module] == "its build is older than its source"
    stderr = str(found["stderr"])
    assert stderr.count(f"{module}: the compiled module was built from another version of its source") == 1
    assert "pip install -e ." in stderr
    assert stderr.count(f"{leftover}: its compiled file is left from an earlier build") == 1


def test_serve_prints_the_fan_out_path_beside_its_urls() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, ENV: "1", "ROOMCAST_TASK_DB": ":memory:"},
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    try:
        while not (line := lines.get(timeout=20)).startswith("  fan-out"):
            pass
        assert line.split(None, 1)[1].strip() == f"pure Python ({ENV} is set)"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
