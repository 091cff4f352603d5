"""roomcast as people install it: a wheel built from the source, in a fresh venv without the repo.

The wheel is built from a copy of the files a build reads (pyproject.toml, setup.py, README.md, LICENSE,
src/), so the build writes nothing into the working tree and a file the build needs but the
copy lacks fails here. The venv is new, its own interpreter runs with the working directory
outside the repository and no PYTHONPATH, and the test checks that ``roomcast`` is imported
from the venv's site-packages. Dependencies come from the package index, as for a user.

The build runs as on a machine without a C compiler (``CC=/bin/false``): the optional
compiled fan-out modules (setup.py) fail to compile, and the wheel still builds, installs and
serves, from the .py files, saying so.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import roomcast

REPO = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "src"]
STEP_TIMEOUT = 180  # seconds for one build or install step; the whole module takes ~20 s


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    workdir: Path  # outside the repository: the working directory of every command run here
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def _clean_env() -> dict[str, str]:
    """This process's environment, less anything that would point Python at the repository."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONSAFEPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["ROOMCAST_TASK_DB"] = ":memory:"  # the server writes no task file anywhere
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("package")
    env = _clean_env()

    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(
                path,
                source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.so", "*.c", "_compiled.json"),
            )
        else:
            shutil.copy2(path, source / name)

    # The ordinary PEP 517 build with build isolation: pip fetches `[build-system] requires`.
    # No working compiler: each compiled module's build fails, which must not fail the wheel.
    dist = root / "dist"
    no_compiler = {**env, "CC": "/bin/false"}
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(dist)], root, no_compiler
    )
    (wheel,) = dist.glob("roomcast-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root, env)
    workdir = root / "work"
    workdir.mkdir()
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], workdir, env)
    return Installed(wheel, venv, workdir, env)


def test_the_wheel_carries_the_license_the_typing_marker_and_the_browser_module(installed: Installed) -> None:
    # tagged for this interpreter (it declares extensions), carrying none: nothing compiled, no C
    assert re.fullmatch(rf"roomcast-{re.escape(roomcast.__version__)}-cp3\d+-cp3\d+-\w+\.whl", installed.wheel.name)
    info = f"roomcast-{roomcast.__version__}.dist-info"
    with zipfile.ZipFile(installed.wheel) as whl:
        names = set(whl.namelist())
        assert whl.read(f"{info}/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        assert "roomcast/py.typed" in names
        assert whl.read("roomcast/static/roomcast.js") == (REPO / "src/roomcast/static/roomcast.js").read_bytes()
        for page in ("dashboard.html", "dashboard-login.html", "dashboard.js", "dashboard.css"):  # /dashboard's files
            assert whl.read(f"roomcast/static/{page}") == (REPO / "src/roomcast/static" / page).read_bytes(), page
    assert not any(name.startswith(("tests/", "bench/", "examples/")) for name in names)
    assert not [name for name in names if name.endswith((".so", ".c"))]


def test_installed_metadata_comes_from_the_one_version_and_names_the_license(installed: Installed) -> None:
    probe = (
        "import importlib.metadata as m, json, sys, roomcast\n"
        "d = m.distribution('roomcast')\n"
        "print(json.dumps({'file': roomcast.__file__, 'path': sys.path, 'version': roomcast.__version__,\n"
        "  'meta_version': d.version, 'license': d.metadata['License-Expression'],\n"
        "  'license_files': d.metadata.get_all('License-File'), 'classifiers': d.metadata.get_all('Classifier'),\n"
        "  'urls': d.metadata.get_all('Project-URL'), 'files': [str(f) for f in d.files or []]}))\n"
    )
    found = json.loads(_run([installed.bin("python"), "-c", probe], installed.workdir, installed.env))

    # Imported from the new venv, and nothing of the repository on the path.
    assert Path(found["file"]).is_relative_to(installed.venv), found["file"]
    assert not [p for p in found["path"] if p and Path(p).resolve().is_relative_to(REPO)], found["path"]

    assert found["meta_version"] == found["version"] == roomcast.__version__
    assert found["license"] == "MIT"
    assert found["license_files"] == ["LICENSE"]
    assert f"roomcast-{roomcast.__version__}.dist-info/licenses/LICENSE" in found["files"]
    assert "Typing :: Typed" in found["classifiers"] and "Framework :: AsyncIO" in found["classifiers"]
    assert not [c for c in found["classifiers"] if c.startswith("License ::")]
    assert {url.split(",", 1)[0] for url in found["urls"]} >= {"Homepage", "Documentation", "Changelog"}


@pytest.fixture
def served(installed: Installed) -> Iterator[tuple[str, str, str]]:
    """``roomcast serve --port 0`` from the venv's own console script: (base URL, banner line,
    the banner's fan-out line)."""
    proc = subprocess.Popen(
        [installed.bin("roomcast"), "serve", "--port", "0"],
        cwd=installed.workdir,
        env=installed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []], daemon=True).start()
    seen: list[str] = []
    banner = ""
    try:
        deadline = time.monotonic() + 20
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            seen.append(line)
            if "listening on" in line:  # "roomcast 0.1.0 listening on http://127.0.0.1:PORT"
                banner = line
            elif line.startswith("  fan-out"):  # the banner's last line
                break
        yield banner.rsplit(" ", 1)[1].strip(), banner.strip(), line.strip()
    except queue.Empty:
        pytest.fail("roomcast serve printed no URL in 20 s:\n" + "".join(seen))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
            raise
    assert code == 0, "".join(seen)


def test_the_installed_server_answers_health_the_browser_module_and_the_dashboard(
    served: tuple[str, str, str],
) -> None:
    base, banner, fan_out = served
    assert banner.startswith(f"roomcast {roomcast.__version__} listening on http://127.0.0.1:")
    assert fan_out == "fan-out    pure Python (not built)"  # built without a compiler, and it says so
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"ok"
    with urllib.request.urlopen(f"{base}/roomcast.js", timeout=5) as r:
        assert r.status == 200
        assert r.headers.get_content_type() == "text/javascript"
        assert r.read() == (REPO / "src/roomcast/static/roomcast.js").read_bytes()
    # Keyless and from loopback, /dashboard is the page itself, with its script and style.
    with urllib.request.urlopen(f"{base}/dashboard", timeout=5) as r:
        assert r.status == 200 and r.headers.get_content_type() == "text/html"
        assert r.read() == (REPO / "src/roomcast/static/dashboard.html").read_bytes()
    for name, content_type in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        with urllib.request.urlopen(f"{base}/dashboard/{name}", timeout=5) as r:
            assert r.status == 200 and r.headers.get_content_type() == content_type
            assert r.read() == (REPO / "src/roomcast/static" / name).read_bytes()
