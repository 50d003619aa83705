"""Resolving kinds with the MLX plugin installed, allowed out, absent, or with a broken MLX."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap

import mlx.core as mx
import pytest

from mlx_helpers import ON_CPU_DEVICE
from sapient_core import BackendNotFoundError, BackendUnavailableError
from sapient_core.registry import ENTRY_POINT_GROUP, Registry


def test_mlx_by_name_works_on_its_best_device(registry):
    backend = registry.get_backend("mlx")
    assert backend.name == "mlx"
    assert backend.device == ("metal" if mx.metal.is_available() else "cuda" if mx.cuda.is_available() else "cpu")
    assert backend.capabilities.priority == 100


def test_resolution_on_this_machine(registry):
    if not ON_CPU_DEVICE:                        # an Apple or NVIDIA GPU: auto takes MLX
        assert registry.get_backend("auto").name == "mlx"
        assert registry.get_backend(registry.get_backend("mlx").device).name == "mlx"
        return
    with pytest.raises(BackendUnavailableError, match="MLX GPU execution is only available on macOS") as exc:
        registry.get_backend("metal")
    assert exc.value.kind == "metal" and "mlx" in exc.value.reasons
    assert registry.get_backend("auto").name == "cpu"
    exp = registry.explain("auto")
    mlx_cand = next(c for c in exp.candidates if c.name == "mlx")
    assert not mlx_cand.chosen and "auto picks accelerators only" in mlx_cand.reason
    with pytest.raises(BackendUnavailableError, match=r"sapient-backend-mlx\[cuda\]"):
        registry.get_backend("cuda")


def test_on_an_apple_gpu_auto_picks_mlx_when_the_model_fits_the_working_set(monkeypatch):
    # The platform facts and device info of an Apple Silicon Mac; the kernels still run on this machine.
    from sapient_backend_mlx import capabilities, device
    from sapient_core.memory import GiB
    facts = capabilities.PlatformFacts("Darwin", "arm64", mlx_version=mx.__version__, metal_available=True,
                                       cuda_available=False, precision="float32")
    monkeypatch.setattr(capabilities, "gather_facts", lambda: facts)
    monkeypatch.setattr(device, "_state", None)          # decided again, from the faked facts
    monkeypatch.setattr(mx, "device_info", lambda *a: {"memory_size": 16 * GiB,
                                                       "max_recommended_working_set_size": 12 * GiB})
    reg = Registry()
    assert reg.get_backend("auto").name == "mlx"
    assert reg.get_backend("metal").name == "mlx"
    assert reg.get_backend("auto", model_bytes=6 * GiB).name == "mlx"      # 9 GiB <= 12 - 2 GiB
    exp = reg.explain("auto", model_bytes=7 * GiB)                          # 10.5 GiB > 10 GiB
    assert exp.chosen == "cpu"
    mlx_cand = next(c for c in exp.candidates if c.name == "mlx")
    assert "does not fit" in mlx_cand.reason and "max_recommended_working_set_size" in mlx_cand.memory


def test_without_the_plugin_installed_auto_is_cpu_and_mlx_or_metal_say_what_to_install():
    def without_mlx():   # only the CPU reference: other test plugins may be installed in a dev venv
        return [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "cpu"]
    reg = Registry(entry_points=without_mlx)
    assert reg.get_backend("auto").name == "cpu"
    assert [b.name for b in reg.list_backends()] == ["cpu"]
    with pytest.raises(BackendNotFoundError, match=r"^no backend named 'mlx' is installed \(installed: 'cpu'\)\. To get "
                       r"it: pip install sapient-backend-mlx; or use get_backend\('auto'\)$") as exc:
        reg.get_backend("mlx")
    assert exc.value.installed == ("cpu",)
    with pytest.raises(BackendNotFoundError, match="pip install sapient-backend-mlx"):
        reg.get_backend("metal")


def _run(code, tmp_path, **env):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_not_allowed_by_sapient_plugins_the_plugin_runs_no_code_and_mlx_is_never_imported(tmp_path):
    out = _run("""
        import sys
        import sapient_backend_mlx.plugin          # importing the plugin module itself imports no MLX
        assert not [m for m in sys.modules if m == "mlx" or m.startswith("mlx.")], "plugin import loaded mlx"
        import sapient_core
        assert sapient_core.get_backend("auto").name == "cpu"
        status = {b.name: b.status for b in sapient_core.list_backends()}
        assert status["mlx"] == "disabled", status
        try:
            sapient_core.get_backend("mlx")
        except sapient_core.BackendUnavailableError as exc:
            print("ERROR:", exc)
        assert not [m for m in sys.modules if m == "mlx" or m.startswith("mlx.")], "discovery loaded mlx"
    """, tmp_path, SAPIENT_PLUGINS="")
    assert "backend 'mlx' is installed but not loaded" in out and "SAPIENT_PLUGINS" in out


def test_a_real_broken_mlx_import_never_breaks_discovery(tmp_path):
    # A stand-in `mlx` package whose `mlx.core` fails as the plain Linux wheel does, ahead of the real one.
    fake = tmp_path / "fake" / "mlx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core.py").write_text("raise ImportError('libmlx.so: cannot open shared object file: "
                                  "No such file or directory')\n")
    out = _run("""
        import warnings
        warnings.simplefilter("error")            # no PluginWarning: the plugin is unavailable, not broken
        import sapient_core
        info = {b.name: b for b in sapient_core.list_backends()}
        assert info["mlx"].status == "unavailable", info["mlx"]
        assert sapient_core.get_backend("auto").name == "cpu"
        try:
            sapient_core.get_backend("mlx")
        except sapient_core.BackendUnavailableError as exc:
            print("ERROR:", exc)
        try:
            sapient_core.get_backend("metal")
        except sapient_core.BackendUnavailableError as exc:
            print("METAL:", exc)
    """, tmp_path, PYTHONPATH=str(tmp_path / "fake"))
    assert "libmlx.so: cannot open shared object file" in out
    assert "pip install --force-reinstall 'mlx[cpu]" in out
    assert "METAL: no available backend provides 'metal'" in out
