"""The optional compiled fast path: which modules it compiles, and which path each one runs.

Why: the fan-out's user time is the interpreter running a few short methods per recipient
(docs/performance.md, "The compiled path"). ``pip install`` compiles the modules named in
``COMPILED`` with Cython, from these same ``.py`` files (``setup.py``; a ``.pxd`` beside a
module declares its classes as C types). Nothing else is a second implementation: without a
compiler, or with ``ROOMCAST_PURE_PYTHON=1``, the ``.py`` files run as they are.

How a module is chosen, once, when it is first imported (``SpeedupsFinder``, installed on
``sys.meta_path`` by ``roomcast/__init__.py`` before any of them can be imported):

* ``ROOMCAST_PURE_PYTHON`` set to anything but ``""``/``0``: the ``.py``, always;
* no compiled file beside the ``.py``: the ``.py`` ("not built");
* a compiled file whose build recorded another digest of the source than the ``.py`` (and
  ``.pxd``) now has — someone edited it after ``pip install -e .`` — or no digest at all:
  the ``.py``, with one warning naming the module and the rebuild command. A stale build is
  never run silently; the source is what runs. This holds for any ``roomcast`` module with a
  compiled file beside it, so a build left over from a module since taken off ``COMPILED``
  does not run either.
* otherwise the compiled module.

``speedups()`` (``roomcast.speedups()``) reports the choice for every module; ``roomcast
serve`` prints it beside its URLs. This module imports the standard library only: ``setup.py``
loads it by path to read ``COMPILED``, ``MANIFEST`` and ``source_digest``.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["COMPILED", "ENV", "MANIFEST", "Speedups", "SpeedupsFinder", "source_digest", "speedups"]

COMPILED: tuple[str, ...] = (
    "roomcast.server.native_output",  # the write coalescer and the outputs: C types (its .pxd)
    "roomcast.protocol.websocket",  # frames out, the parser in
    "roomcast.protocol.engineio",  # packets, once per publication
    "roomcast.protocol.socketio",
)
"""The modules ``setup.py`` compiles: those where it pays (docs/performance.md, "The compiled
path"). ``hub.hub`` and ``transports.socketio`` were measured compiled and are not here: their
per-recipient code reads ordinary objects' attributes, which compiled code does no faster
than CPython 3.11's specialising interpreter."""

ENV = "ROOMCAST_PURE_PYTHON"
MANIFEST = "_compiled.json"
"""Written by the build beside this file: each compiled module's ``source_digest`` at build time."""

PACKAGE_DIR = Path(__file__).resolve().parent
logger = logging.getLogger("roomcast")


def source_files(module: str, package_dir: Path = PACKAGE_DIR) -> list[Path]:
    """The files a compiled ``module`` is built from: its ``.py`` and, if any, its ``.pxd``."""
    base = package_dir.joinpath(*module.split(".")[1:])
    return [path for path in (base.with_suffix(".py"), base.with_suffix(".pxd")) if path.exists()]


def source_digest(module: str, package_dir: Path = PACKAGE_DIR) -> str:
    """What the build records and the import compares: a digest of the module's source files."""
    digest = hashlib.sha256()
    for path in source_files(module, package_dir):
        digest.update(path.suffix.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


def _compiled_file(module: str) -> Path | None:
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = base.with_name(base.name + suffix)
        if path.exists():
            return path
    return None


def _pure_requested() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


_PURE = _pure_requested()  # read once, at ``import roomcast``: one answer for the process
_reasons: dict[str, str | None] = {}  # module -> why it runs from its .py (None: compiled)
_recorded: dict[str, str] | None = None


def _manifest() -> dict[str, str]:
    global _recorded
    if _recorded is None:
        try:
            loaded = json.loads((PACKAGE_DIR / MANIFEST).read_text())
        except (OSError, ValueError):
            loaded = {}
        _recorded = {str(k): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
    return _recorded


def _why_pure(module: str) -> str | None:
    """``None`` when ``module`` runs compiled, else the reason it runs from its ``.py``; decided once."""
    if module in _reasons:
        return _reasons[module]
    reason: str | None
    if _PURE:
        reason = f"{ENV} is set"
    elif _compiled_file(module) is None:
        reason = "not built"
    elif module not in COMPILED:
        reason = "a build left from an earlier version"
        logger.warning(
            "%s: its compiled file is left from an earlier build (this version compiles it no more); "
            "running the .py (delete %s)",
            module,
            _compiled_file(module),
        )
    elif _manifest().get(module) != source_digest(module):
        reason = "its build is older than its source"
        logger.warning(
            "%s: the compiled module was built from another version of its source; running the .py "
            "(rebuild with `pip install -e .`)",
            module,
        )
    else:
        reason = None
    _reasons[module] = reason
    return reason


class SpeedupsFinder(importlib.abc.MetaPathFinder):
    """Loads a ``roomcast`` module from its ``.py`` when its compiled file must not run.

    For every other module, and for a compiled module that may run, it answers ``None`` and
    the ordinary path finder loads what it would anyway (the extension comes first there).
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("roomcast.") or _compiled_file(fullname) is None:
            return None  # the common case: a plain module, found by the path finder
        if _why_pure(fullname) is None:
            return None  # a current build: the path finder loads it
        source = PACKAGE_DIR.joinpath(*fullname.split(".")[1:]).with_suffix(".py")
        if not source.exists():
            return None  # a compiled module without its source: nothing else to run
        return importlib.util.spec_from_file_location(fullname, source)


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once; ``roomcast/__init__.py`` calls it)."""
    if not any(isinstance(finder, SpeedupsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, SpeedupsFinder())


@dataclass(frozen=True, slots=True)
class Speedups:
    """Which fan-out modules run compiled, and why the others do not."""

    compiled: tuple[str, ...]
    pure: dict[str, str]  # module -> reason

    def describe(self) -> str:
        """One line for a banner: ``compiled (cython, 4 modules)`` or ``pure Python (not built)``."""
        if not self.pure:
            return f"compiled (cython, {len(self.compiled)} modules)"
        if not self.compiled:
            reasons = sorted(set(self.pure.values()))
            return f"pure Python ({'; '.join(reasons)})"
        slow = ", ".join(f"{name} ({why})" for name, why in self.pure.items())
        return f"partly compiled (cython, {len(self.compiled)} of {len(COMPILED)} modules; pure Python: {slow})"


def speedups() -> Speedups:
    """The path each module of ``COMPILED`` runs in this process (modules not yet imported: the
    path they will run when they are)."""
    reasons = {module: _why_pure(module) for module in COMPILED}
    return Speedups(
        compiled=tuple(module for module, why in reasons.items() if why is None),
        pure={module: why for module, why in reasons.items() if why is not None},
    )


if __name__ == "__main__":  # `make`: the files whose edit rebuilds the compiled modules
    print(" ".join(str(path.relative_to(Path.cwd())) for module in COMPILED for path in source_files(module)))
