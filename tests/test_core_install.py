"""Fresh processes: what ``import sapient_core`` costs, and a plugin installed by pip into a virtualenv.

The virtualenv is made once per session and without pip of its own (fast); it sees this environment's
packages (sapient-core, the CPU reference, NumPy, pip) through a .pth file, and the fake plugin is a
wheel that the real ``pip install`` puts into the virtualenv's own site-packages.  The plugin is then
found by the real ``importlib.metadata`` in a fresh interpreter, with the default registry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest

from helpers.fakeplugins import build_wheel, plugin_source


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def run_python(code, python=sys.executable, env=None, check=True):
    proc = subprocess.run([str(python), "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env or clean_env(), timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


# --- import sapient_core is cheap ---------------------------------------------------------------------------

def test_import_sapient_core_imports_no_plugin_no_numpy_no_accelerator_library(fake_site, tmp_path):
    marker = tmp_path / "spy-imported"
    fake_site.add_plugin("spy", header=f"open({str(marker)!r}, 'a').write('imported')", device="metal")
    code = """
        import json, sys
        before = set(sys.modules)
        import sapient_core
        at_import = sorted(set(sys.modules) - before)
        sapient_core.get_backend("cpu")
        after_cpu = sorted(sys.modules)
        print(json.dumps([at_import, after_cpu]))
    """
    out = run_python(code, env=clean_env(PYTHONPATH=str(fake_site.root))).stdout
    at_import, after_cpu = json.loads(out)
    heavy = [m for m in at_import if m.split(".")[0] in {"numpy", "mlx", "torch", "sapient_backend_cpu",
                                                           "sapient_fake_spy", "pluggy", "pydantic"}]
    assert heavy == [] and "sapient_core" in at_import
    assert not [m for m in at_import if m.startswith(("sapient_core.registry", "sapient_core.backend",
                                                      "sapient_core.hookspecs", "sapient_core.models"))]
    # the control: the CPU reference and NumPy do get imported once a backend is asked for ...
    assert "numpy" in after_cpu and "sapient_backend_cpu.plugin" in after_cpu
    # ... but a plugin not needed for "cpu" is still not imported
    assert "sapient_fake_spy" not in after_cpu and not marker.exists()


# --- a plugin pip-installed into a throwaway virtualenv -------------------------------------------------------

PLUGIN = plugin_source(device="fakegpu", priority=10 ** 6, memory=64 * 1024 ** 3, ops=["silu"],
                       version="0.2.0", extra=textwrap.dedent("""
    @hookimpl
    def backend_stats():
        return {"silu_calls": len(CALLS)}
    """))


@pytest.fixture(scope="session")
def plugin_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("venv")
    env_dir = root / "env"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site_packages = Path(run_python("import sysconfig; print(sysconfig.get_paths()['purelib'])",
                                    python=python).stdout.strip())
    outer = sysconfig.get_paths()["purelib"]
    (site_packages / "_sapient_outer_env.pth").write_text(f"import site; site.addsitedir({outer!r})\n")
    wheel = build_wheel(root, "sapient-backend-fakeaccel", "0.2.0",
                        {"sapient_backend_fakeaccel/__init__.py": "", "sapient_backend_fakeaccel/plugin.py": PLUGIN},
                        {"fakeaccel": "sapient_backend_fakeaccel.plugin"}, requires=["sapient-core"])
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                           "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python, env_dir


def test_pip_installed_plugin_is_discovered_and_used(plugin_venv):
    python, env_dir = plugin_venv
    code = """
        import importlib.metadata, json, sys
        import numpy as np
        import sapient_core
        infos = {i.name: i for i in sapient_core.list_backends()}
        fake = infos["fakeaccel"]
        b = sapient_core.get_backend("auto")
        x = np.linspace(-4, 4, 9, dtype=np.float32)
        same = bool((b.silu(x) == sapient_core.get_backend("cpu").silu(x)).all())
        dist = importlib.metadata.distribution("sapient-backend-fakeaccel")
        print(json.dumps({
            "prefix": sys.prefix,
            "installed_at": str(dist.locate_file("")),
            "fake": [fake.status, fake.distribution, fake.version, fake.device, fake.priority],
            "cpu": infos["cpu"].status,
            "auto": b.name, "by_device": sapient_core.get_backend("fakegpu").name,
            "same": same, "stats": b.stats().ops["silu"].model_dump(), "plugin": b.stats().plugin,
        }))
    """
    out = json.loads(run_python(code, python=python).stdout)
    assert Path(out["prefix"]).resolve() == env_dir.resolve()
    assert Path(out["installed_at"]).resolve().is_relative_to(env_dir.resolve())      # in the venv, not outside
    assert out["fake"] == ["available", "sapient-backend-fakeaccel", "0.2.0", "fakegpu", 10 ** 6]
    assert out["cpu"] == "available"
    assert out["auto"] == out["by_device"] == "fakeaccel"
    assert out["same"] is True
    assert out["stats"] == {"calls": 1, "fallbacks": 0, "fallback_reasons": {}, "routed": 0, "routed_reasons": {},
                            "cross_checked": 0, "disagreements": 0, "disagreement_reasons": {},
                            "implemented_by": "fakeaccel"}
    assert out["plugin"] == {"silu_calls": 1}

    # the command line of the same environment shows it, and the allow-list hides it
    proc = subprocess.run([str(python), "-m", "sapient_core", "list"], capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert any(line.split()[:3] == ["fakeaccel", "available", "fakegpu"] for line in proc.stdout.splitlines())
    proc = subprocess.run([str(python), "-m", "sapient_core", "list", "--json"], capture_output=True, text=True,
                          env=clean_env(SAPIENT_PLUGINS=""), timeout=60)
    statuses = {i["name"]: i["status"] for i in json.loads(proc.stdout)}
    assert statuses["fakeaccel"] == "disabled" and statuses["cpu"] == "available"
