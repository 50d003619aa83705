"""Throwaway virtualenvs, one of each kind per test session, with sapient-core and the CPU reference installed
from copies of this checkout (nothing is built inside the source tree).

The tests that need real installs (entry points read by ``importlib.metadata``, console scripts, the
pytest11 plugin) share :func:`kit_venv` (plus the example backend, pytest and ml_dtypes); CONTRIBUTING's
quickstart runs in :func:`bare_venv` (sapient-core alone, as the quickstart assumes).  Installs use
``--no-deps --no-build-isolation`` from local copies; only numpy, numba, pluggy, pydantic, pytest,
ml_dtypes, setuptools and wheel come from the package index (pip's cache), which keeps each setup around ten seconds.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sapient-backend-example"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache")


@dataclasses.dataclass(frozen=True)
class Venv:
    root: Path           # the virtualenv
    src: Path            # copies of the installed source trees: core/, cpu/, example/

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> str:
        return str(self.bin / "python")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of an activated virtualenv (PATH first), without this session's leftovers."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SAPIENT_", "PYTEST_", "PYTHON")) and k != "VIRTUAL_ENV"}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(self.root)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env.update(extra)
        return env

    def run(self, args: list[str] | str, *, cwd: Path | None = None, timeout: float = 120,
            **extra: str) -> subprocess.CompletedProcess:
        """Run a command in the virtualenv (a str runs through bash); never raises on exit status."""
        cmd = ["bash", "-euo", "pipefail", "-c", args] if isinstance(args, str) else args
        return subprocess.run(cmd, cwd=cwd, env=self.env(**extra), capture_output=True, text=True,
                              timeout=timeout)


def _pip(python: str, *args: str) -> None:
    proc = subprocess.run([python, "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode:
        raise RuntimeError(f"pip install {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")


def _make_venv(prefix: str, *, kit: bool) -> Venv:
    base = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, base, True)
    root, src = base / "venv", base / "src"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    shutil.copytree(REPO / "sapient_core", src / "core" / "sapient_core", ignore=_IGNORE)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / "core" / f)
    shutil.copytree(REPO / "plugins" / "cpu", src / "cpu", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", "tests", ".pytest_cache"))
    venv = Venv(root, src)
    import numba
    import numpy
    import pluggy
    import pydantic
    # setuptools>=77 (the SPDX license string) for the --no-build-isolation installs below; numba, as the
    # CPU plugin depends on it (without it the plugin runs its NumPy kernels and warns).
    deps = [f"numpy=={numpy.__version__}", f"pluggy=={pluggy.__version__}", f"pydantic=={pydantic.__version__}",
            f"numba=={numba.__version__}", "wheel", "setuptools>=77"]
    local = [str(src / "cpu"), str(src / "core")]
    if kit:
        import ml_dtypes
        import pytest
        deps += [f"pytest=={pytest.__version__}", f"ml_dtypes=={ml_dtypes.__version__}"]
        shutil.copytree(EXAMPLE, src / "example", ignore=_IGNORE)
        local.append(str(src / "example"))
    _pip(venv.python, *deps)
    _pip(venv.python, "--no-deps", "--no-build-isolation", *local)
    return venv


@functools.lru_cache(maxsize=None)
def kit_venv() -> Venv:
    """Create (once) and return the shared throwaway virtualenv: sapient-core, the CPU reference, the example
    backend, pytest and ml_dtypes (the kit's bfloat16 cases)."""
    return _make_venv("sapient-kit-", kit=True)


@functools.lru_cache(maxsize=None)
def bare_venv() -> Venv:
    """A throwaway virtualenv with what CONTRIBUTING's quickstart says a reader has: sapient-core (and so the
    CPU reference) installed, nothing else: no pytest, no ml_dtypes, no example backend."""
    return _make_venv("sapient-bare-", kit=False)


# --- CONTRIBUTING.md's quickstart ------------------------------------------------------------------------

CONTRIBUTING = REPO / "CONTRIBUTING.md"
_BLOCK = re.compile(r"<!-- quickstart-(file|run|output)(?::\s*(.*?))?\s*-->\n```[\w-]*\n(.*?)```", re.S)


def quickstart_blocks() -> list[tuple[str, str, str]]:
    """The quickstart's marked code blocks, in order: (kind, argument, body), kind file/run/output."""
    return [(kind, arg or "", body) for kind, arg, body in _BLOCK.findall(CONTRIBUTING.read_text())]


def quickstart_files() -> dict[str, str]:
    """path -> content of every file the quickstart tells the reader to write."""
    return {arg: body for kind, arg, body in quickstart_blocks() if kind == "file"}
