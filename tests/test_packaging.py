"""The three distributions as they are published: each sdist builds without a setuptools deprecation
warning, carries its licence as an SPDX expression, and ships tests only if they run from the sdist.

sapient-core's tests (tests/) exercise the whole checkout (plugins/, examples/, CONTRIBUTING.md), so its
sdist leaves them out; each plugin's sdist ships its tests with every helper they import, and those
tests are run here from the unpacked sdist.  Builds use the throwaway virtualenv's setuptools (no build
isolation, nothing fetched), from copies of the projects (nothing is written into the checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers.venv import REPO, kit_venv

PROJECTS = {"sapient_core": REPO, "sapient_backend_cpu": REPO / "plugins" / "cpu",
            "sapient_backend_mlx": REPO / "plugins" / "mlx"}
#: Tests of the repository that stay out of a plugin's sdist, with the reason (see its MANIFEST.in).
LEFT_OUT = {"sapient_backend_mlx": {"tests/test_mlx_benchmark.py"}}   # runs the repository's benchmarks/
_IGNORE = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".venv", ".git",
                                 "tests", "plugins", "examples", "benchmarks", ".ci", "docs")


def python_files(directory: Path) -> set[str]:
    """The .py files under ``directory``, relative to it (CI runs on a copy without .git: no git here)."""
    return {str(p.relative_to(directory)) for p in directory.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def sdists(tmp_path_factory):
    venv = kit_venv()
    out = {}
    for name, project in PROJECTS.items():
        work = tmp_path_factory.mktemp(name) / "project"
        shutil.copytree(project, work, ignore=_IGNORE)
        if (project / "tests").is_dir():          # the tests too, so that the sdist's choice is what is tested
            shutil.copytree(project / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        proc = venv.run([venv.python, "-c", "import setuptools.build_meta as b; print(b.build_sdist('dist'))"],
                        cwd=work, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        sdist = work / "dist" / proc.stdout.strip().splitlines()[-1]
        out[name] = (sdist, proc.stdout + proc.stderr)
    return out


@pytest.mark.parametrize("name", list(PROJECTS))
def test_the_sdist_builds_without_deprecation_warnings(sdists, name):
    sdist, log = sdists[name]
    assert "deprecated" not in log.lower() and "warning" not in log.lower(), log[-3000:]
    with tarfile.open(sdist) as tar:
        pkg_info = tar.extractfile(f"{sdist.name[:-len('.tar.gz')]}/PKG-INFO").read().decode()
    assert "License-Expression: MIT\n" in pkg_info and "\nLicense: " not in pkg_info


def test_the_core_sdist_ships_no_tests(sdists):
    sdist, _ = sdists["sapient_core"]
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
    assert not [n for n in names if "/tests/" in n or n.endswith("/tests")]
    assert any(n.endswith("sapient_core/testing/conformance.py") for n in names)   # the kit is the package's


@pytest.mark.parametrize("name", ["sapient_backend_cpu", "sapient_backend_mlx"])
def test_a_plugin_sdist_ships_its_tests_with_their_helpers_and_they_pass(sdists, name, tmp_path):
    sdist, _ = sdists[name]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    unpacked = tmp_path / sdist.name[:-len(".tar.gz")]
    shipped = {str(p.relative_to(unpacked)) for p in (unpacked / "tests").rglob("*.py")}
    expected = python_files(PROJECTS[name] / "tests")
    assert shipped == {f"tests/{f}" for f in expected} - LEFT_OUT.get(name, set())
    assert "tests/conftest.py" in shipped
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAPIENT_", "PYTEST_"))}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=unpacked,
                          capture_output=True, text=True, env=env, timeout=600)
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in last and "skipped" not in last and "error" not in last, last
