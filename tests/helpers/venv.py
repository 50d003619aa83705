"""One throwaway virtualenv per test session, with sapient-core, the CPU reference and the example
backend installed from copies of this checkout (nothing is built inside the source tree).

The tests that need real installs (entry points read by ``importlib.metadata``, console scripts, the
pytest11 plugin) share it through :func:`kit_venv`, cached for the session.  Installs use
``--no-deps --no-build-isolation`` from local copies; only numpy, pluggy, pydantic, pytest and wheel come from
the package index (pip's cache), which keeps the whole setup around ten seconds.
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


@functools.lru_cache(maxsize=None)
def kit_venv() -> Venv:
    """Create (once) and return the shared throwaway virtualenv."""
    base = Path(tempfile.mkdtemp(prefix="sapient-kit-"))
    atexit.register(shutil.rmtree, base, True)
    root, src = base / "venv", base / "src"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    shutil.copytree(REPO / "sapient_core", src / "core" / "sapient_core", ignore=_IGNORE)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / "core" / f)
    shutil.copytree(REPO / "plugins" / "cpu", src / "cpu", ignore=shutil.ignore_patterns(
        "__pycache__", "*.egg-info", "build", "dist", "tests", ".pytest_cache"))
    shutil.copytree(EXAMPLE, src / "example", ignore=_IGNORE)
    venv = Venv(root, src)
    import numpy
    import pluggy
    import pydantic
    import pytest
    _pip(venv.python, f"numpy=={numpy.__version__}", f"pluggy=={pluggy.__version__}",
         f"pydantic=={pydantic.__version__}", f"pytest=={pytest.__version__}", "wheel", "setuptools>=64")
    _pip(venv.python, "--no-deps", "--no-build-isolation", str(src / "cpu"), str(src / "core"),
         str(src / "example"))
    return venv


# --- CONTRIBUTING.md's quickstart ------------------------------------------------------------------------

CONTRIBUTING = REPO / "CONTRIBUTING.md"
_BLOCK = re.compile(r"<!-- quickstart-(file|run|output)(?::\s*(.*?))?\s*-->\n```[\w-]*\n(.*?)```", re.S)


def quickstart_blocks() -> list[tuple[str, str, str]]:
    """The quickstart's marked code blocks, in order: (kind, argument, body), kind file/run/output."""
    return [(kind, arg or "", body) for kind, arg, body in _BLOCK.findall(CONTRIBUTING.read_text())]


def quickstart_files() -> dict[str, str]:
    """path -> content of every file the quickstart tells the reader to write."""
    return {arg: body for kind, arg, body in quickstart_blocks() if kind == "file"}
