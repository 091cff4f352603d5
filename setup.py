"""The optional compiled fast path: the fan-out modules compiled by Cython from their own .py.

Everything else about the package is in pyproject.toml; this file only adds the extensions,
because their list and the compile step need code. Which modules, and how the import picks
between a build and its source: ``src/roomcast/_speedups.py`` (loaded here by path, so the
build never imports roomcast).

A machine without a C compiler, or without Cython (a build with ``--no-build-isolation`` in
an environment that lacks it), still installs: each extension is ``optional``, a failed
compile is a warning, and the module runs from its .py. ``ROOMCAST_NO_EXTENSIONS=1`` skips the
compile step on purpose (a packager's pure wheel).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SRC = Path(__file__).resolve().parent / "src"


def _speedups_module() -> Any:
    spec = importlib.util.spec_from_file_location("_roomcast_speedups", SRC / "roomcast" / "_speedups.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


SPEEDUPS = _speedups_module()


def extensions() -> list[Extension]:
    if os.environ.get("ROOMCAST_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("roomcast: Cython is not installed; the fan-out modules stay pure Python")
        return []
    sources = [
        Extension(name, [str(Path("src", *name.split(".")).with_suffix(".py"))], optional=True)
        for name in SPEEDUPS.COMPILED
    ]
    compiled: list[Extension] = cythonize(
        sources,
        language_level=3,
        quiet=True,
        nthreads=os.cpu_count() or 1,
        compiler_directives={
            # Annotations stay hints, as in CPython: an `x: float` that receives an int keeps
            # it an int. The C types come from the .pxd beside a module, nowhere else.
            "annotation_typing": False,
        },
    )
    for extension in compiled:
        extension.optional = True  # cythonize's copies drop it
    return compiled


class BuildSpeedups(build_ext):
    """Records each extension built, with the digest of the source it was built from.

    A failed compile (``optional``) records nothing, so an older build left beside the
    source is not taken for this one; the import runs the .py instead (``roomcast._speedups``).
    """

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # one compiler per core: the build is most of `pip install`'s time
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        self._built: dict[str, str] = {}
        super().run()
        package_dir = Path(self.get_ext_fullpath("roomcast._any")).parent
        package_dir.mkdir(parents=True, exist_ok=True)
        (package_dir / SPEEDUPS.MANIFEST).write_text(json.dumps(self._built, indent=1, sort_keys=True) + "\n")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            # setuptools' own filter for `optional` misses the compiler errors of its newer
            # releases (they come from another module than the classes it catches), so this
            # is where a missing compiler or header becomes a warning.
            if not ext.optional:
                raise
            print(f"roomcast: {ext.name} not compiled ({exc}); it runs from its .py")
            return
        self._built[ext.name] = SPEEDUPS.source_digest(ext.name, SRC / "roomcast")


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildSpeedups})
