"""SPEC §2, row by row: how a kind resolves to a backend.

The fake accelerators are real installed distributions (dist-info + entry_points.txt on sys.path, read
by the real importlib.metadata; see tests/helpers/fakeplugins.py); the CPU reference is the real one.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import sapient_core
from sapient_core import BackendNotFoundError, BackendUnavailableError
from sapient_core.memory import GiB
from sapient_backend_cpu import kernels

MLX_REASON = "MLX GPU execution is only available on macOS"


def install_accelerators(site):
    """The standard set of fakes (see the table in each test's docstring)."""
    site.add_plugin("metalfast", device="metal", priority=100, memory=16 * GiB, ops=["rms_norm"])
    site.add_plugin("metalslow", device="metal", priority=10, memory=64 * GiB, ops=["rms_norm", "silu"])
    site.add_plugin("cudaoff", device="cuda", available=False, reason="no CUDA driver found (fake)")
    site.add_plugin("nomem", device="npu", priority=200, memory=None)
    site.add_plugin("cpuplug", device="cpu", priority=1000)
    site.add_plugin("mlxlike", device="cpu", priority=50, unavailable_devices={"metal": MLX_REASON})


@pytest.fixture
def reg(fake_site):
    install_accelerators(fake_site)
    return fake_site.registry()


def x_w():
    x = np.random.default_rng(1).standard_normal((2, 3, 8)).astype(np.float32)
    return x, np.linspace(0.5, 1.5, 8, dtype=np.float32)


# --- "cpu" -----------------------------------------------------------------------------------------

def test_cpu_is_the_reference_plugin(reg):
    b = reg.get_backend("cpu")
    assert (b.name, b.device) == ("cpu", "cpu")
    assert b.capabilities.distribution == "sapient-backend-cpu"
    assert b.implemented_ops == tuple(sapient_core.hookspecs.OPS)
    x, w = x_w()
    np.testing.assert_array_equal(b.rms_norm(x, w, 1e-6), kernels.rms_norm(x, w, 1e-6))
    assert b.explanation.chosen == "cpu" and b.explanation.source == "argument"


def test_get_backend_returns_one_object_per_plugin_and_strictness(reg):
    assert reg.get_backend("cpu") is reg.get_backend("CPU ")
    assert reg.get_backend("cpu", strict=True) is not reg.get_backend("cpu")
    assert reg.get_backend("cpu", strict=True).strict is True
    b = reg.get_backend("metalslow", model_bytes=GiB)
    assert reg.get_backend("metal", model_bytes=40 * GiB) is not b
    assert reg.get_backend("auto", model_bytes=10 * GiB) is b       # the cached object ...
    # ... keeps the explanation of the resolution that created it (a later lookup does not rewrite it)
    assert b.explanation.kind == "metalslow" and b.explanation.model_bytes == GiB
    assert reg.explain("auto", model_bytes=10 * GiB).chosen == "metalslow"


# --- "metal" and other device names ------------------------------------------------------------------

def test_metal_is_the_highest_priority_available_metal_plugin(reg):
    b = reg.get_backend("metal")
    assert (b.name, b.device) == ("metalfast", "metal")
    assert b.capabilities.priority == 100 and b.memory.total_bytes == 16 * GiB
    exp = reg.explain("metal")
    by_name = {c.name: c for c in exp.candidates}
    assert by_name["metalfast"].chosen and by_name["metalfast"].reason == "provides 'metal' (priority 100)"
    assert by_name["metalslow"].reason == "provides 'metal', but 'metalfast' has a higher priority"
    assert by_name["mlxlike"].reason == f"can provide 'metal' elsewhere, not here: {MLX_REASON}"
    assert by_name["cpu"].reason == "runs on 'cpu', not 'metal'"


def test_metal_used_when_asked_even_if_the_model_may_not_fit(reg, caplog):
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        b = reg.get_backend("metal", model_bytes=20 * GiB)
    assert b.name == "metalfast"
    assert "'metal' resolves to 'metalfast', but a 21474836480-byte model may not fit: 20.00 GiB x 1.5" in caplog.text


def test_metal_unavailable_error_carries_each_plugins_reason(fake_site):
    fake_site.add_plugin("mlxlike", device="cpu", priority=50, unavailable_devices={"metal": MLX_REASON})
    fake_site.add_plugin("metaloff", device="metal", available=False, reason="the fake Metal GPU is switched off")
    reg = fake_site.registry()
    with pytest.raises(BackendUnavailableError, match=rf"^no available backend provides 'metal': "
                       rf"metaloff: the fake Metal GPU is switched off; mlxlike: {MLX_REASON}\. "
                       rf"get_backend\('auto'\) picks the best available backend$") as exc:
        reg.get_backend("metal")
    assert exc.value.kind == "metal"
    assert exc.value.reasons == {"metaloff": "the fake Metal GPU is switched off", "mlxlike": MLX_REASON}
    assert set(exc.value.installed) == {"cpu", "mlxlike", "metaloff"}


def test_metal_without_any_provider_says_what_to_install(fake_site):
    reg = fake_site.registry()
    with pytest.raises(BackendNotFoundError, match=r"^no installed plugin provides 'metal' \(installed: 'cpu'\)\. "
                       r"To get it: pip install sapient-backend-mlx .*; or use get_backend\('auto'\)$") as exc:
        reg.get_backend("metal")
    assert type(exc.value) is BackendNotFoundError
    assert exc.value.kind == "metal" and exc.value.installed == ("cpu",)
    assert isinstance(exc.value, LookupError)


def test_a_device_name_like_cuda(fake_site):
    fake_site.add_plugin("cudaoff", device="cuda", available=False, reason="no CUDA driver found (fake)")
    reg = fake_site.registry()
    with pytest.raises(BackendUnavailableError, match="^no available backend provides 'cuda': cudaoff: no CUDA "
                                                      r"driver found \(fake\)\. get_backend\('auto'\) picks") as exc:
        reg.get_backend("cuda")
    assert exc.value.reasons == {"cudaoff": "no CUDA driver found (fake)"}

    fake_site.add_plugin("cudaon", device="cuda", priority=5)
    reg = fake_site.registry()
    b = reg.get_backend("cuda")
    assert (b.name, b.device) == ("cudaon", "cuda")


def test_any_device_a_plugin_reports_is_a_kind(reg):
    assert reg.get_backend("npu").name == "nomem"


# --- a plugin name ------------------------------------------------------------------------------------

def test_plugin_name_works_on_a_cpu_device(reg):
    b = reg.get_backend("mlxlike")
    assert (b.name, b.device) == ("mlxlike", "cpu")
    assert reg.get_backend("cpuplug").device == "cpu"


def test_plugin_name_wins_over_priority(reg):
    b = reg.get_backend("metalslow")
    assert b.name == "metalslow"
    assert reg.explain("metalslow").candidates[0].reason == "asked for by name"


def test_unavailable_plugin_by_name_says_why(reg):
    with pytest.raises(BackendUnavailableError, match=r"^backend 'cudaoff' is not available here: no CUDA driver "
                                                      r"found \(fake\)\. get_backend\('auto'\) picks the best "
                                                      r"available backend$") as exc:
        reg.get_backend("cudaoff")
    assert exc.value.kind == "cudaoff" and exc.value.reasons == {"cudaoff": "no CUDA driver found (fake)"}


# --- "auto" -------------------------------------------------------------------------------------------

def test_auto_picks_the_highest_priority_accelerator_never_a_cpu_plugin(reg):
    exp = reg.explain("auto")
    assert exp.chosen == "nomem"            # priority 200; memory unknown but model_bytes=0 fits
    by_name = {c.name: c for c in exp.candidates}
    assert by_name["cpuplug"].reason.startswith("runs on the CPU; auto picks accelerators only")
    assert by_name["cudaoff"].reason == "unavailable: no CUDA driver found (fake)"
    assert by_name["metalfast"].reason == "fits, but 'nomem' has a higher priority"
    assert by_name["cpu"].reason == "the fallback; not needed"
    assert reg.get_backend("auto").name == "nomem"
    assert reg.get_backend().name == "nomem"


def test_auto_passes_over_unknown_memory_and_too_small_devices_showing_the_arithmetic(reg, caplog):
    with caplog.at_level(logging.DEBUG, logger="sapient_core"):
        exp = reg.explain("auto", model_bytes=10 * GiB)
    assert exp.chosen == "metalslow"
    by_name = {c.name: c for c in exp.candidates}
    assert by_name["nomem"].reason == "the model does not fit"
    assert by_name["nomem"].memory == ("device memory unknown (the fake driver does not report memory): cannot "
                                       "check a 10.00 GiB model, so it is not assumed to fit")
    assert by_name["metalfast"].memory == ("10.00 GiB x 1.5 = 15.00 GiB > usable 14.00 GiB (16.00 GiB from fake "
                                           "device info - 2.00 GiB reserve)")
    assert by_name["metalslow"].memory.startswith("10.00 GiB x 1.5 = 15.00 GiB <= usable 62.00 GiB")
    text = str(exp)
    assert " -> metalslow" in text and "15.00 GiB > usable 14.00 GiB" in text and text.endswith("result: 'metalslow'")
    # the decision and the unknown memory are logged
    assert ("resolve 'auto': passed over nomem - the model does not fit device memory unknown (the fake driver "
            "does not report memory)") in caplog.text
    assert "resolve 'auto' (model_bytes=10737418240) -> 'metalslow'" in caplog.text


def test_auto_falls_back_to_cpu_and_never_raises(reg, caplog):
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        b = reg.get_backend("auto", model_bytes=10_000 * GiB)
    assert b.name == "cpu"
    cpu = b.explanation.candidates[0]
    assert cpu.chosen and cpu.reason == "no accelerator is available and fits, so the CPU reference"
    assert "'auto' resolves to 'cpu', but a 10737418240000-byte model may not fit: 10000.00 GiB x 1.5" in caplog.text


def test_auto_with_only_cpu_device_plugins_is_cpu(fake_site):
    fake_site.add_plugin("cpuplug", device="cpu", priority=1000)
    fake_site.add_plugin("broken", header="raise ImportError('no such driver')")
    with pytest.warns(sapient_core.PluginWarning):
        assert fake_site.registry().get_backend("auto").name == "cpu"


# --- SAPIENT_BACKEND ------------------------------------------------------------------------------------

def test_sapient_backend_env_is_the_default_kind_and_an_argument_wins(reg, monkeypatch):
    monkeypatch.setenv("SAPIENT_BACKEND", " MetalSlow ")
    assert reg.get_backend().name == "metalslow"
    assert reg.explain().source == "SAPIENT_BACKEND"
    assert reg.get_backend("cpu").name == "cpu"
    assert reg.get_backend("auto").name == "nomem"
    monkeypatch.setenv("SAPIENT_BACKEND", "tpu9")
    with pytest.raises(BackendNotFoundError, match="^unknown backend kind 'tpu9'") as exc:
        reg.get_backend()
    assert exc.value.kind == "tpu9"
    monkeypatch.setenv("SAPIENT_BACKEND", "")
    assert reg.explain().source == "default" and reg.explain().kind == "auto"


# --- unknown kinds and bad arguments --------------------------------------------------------------------

def test_unknown_kind_lists_what_is_installed(reg):
    with pytest.raises(BackendNotFoundError, match=(
            r"^unknown backend kind 'tpu9'\. Installed plugins: 'cpu', 'cpuplug', 'cudaoff', 'metalfast', "
            r"'metalslow', 'mlxlike', 'nomem'; devices they know: 'cpu', 'cuda', 'metal', 'npu'\. Valid kinds: "
            r"'auto', a plugin name or a device name; see `sapient-backends list`$")) as exc:
        reg.get_backend("tpu9")
    assert type(exc.value) is BackendNotFoundError
    assert exc.value.kind == "tpu9"
    assert set(exc.value.installed) == {"cpu", "cpuplug", "cudaoff", "metalfast", "metalslow", "mlxlike", "nomem"}
    exp = reg.explain("tpu9")   # explain never raises for an unknown kind: it says what would happen
    assert exp.chosen is None and exp.error == str(exc.value) and exp.rule == "unknown kind"


def test_kind_must_be_a_string(reg):
    with pytest.raises(TypeError, match=r"^get_backend: kind must be a str .*, got int 3$"):
        reg.get_backend(3)


@pytest.mark.parametrize("bad, exc_type, message", [
    (-1, ValueError, r"^model_bytes must be >= 0 \(the model's weight bytes; 0 = unknown\), got -1$"),
    (1.5, TypeError, r"^model_bytes must be an int, the model's weight bytes \(0 = unknown\), got float 1\.5\."),
    ("10", TypeError, r"got str '10'"),
    (True, TypeError, r"got bool True"),
    (None, TypeError, r"got NoneType None"),
])
def test_model_bytes_is_validated(reg, bad, exc_type, message):
    with pytest.raises(exc_type, match=message):
        reg.get_backend("auto", model_bytes=bad)
    with pytest.raises(exc_type, match=message):
        reg.explain("cpu", model_bytes=bad)


def test_model_bytes_accepts_numpy_integers(reg):
    exp = reg.explain("auto", model_bytes=np.int64(10 * GiB))
    assert exp.model_bytes == 10 * GiB and type(exp.model_bytes) is int and exp.chosen == "metalslow"


# --- the memory rule at the boundary, through auto ------------------------------------------------------

@pytest.mark.parametrize("usable, model_bytes, fits", [
    (3000, 2000, True),        # 2000 * 1.5 == 3000 == total - 2 GiB: fits exactly
    (2999, 2000, False),       # one byte short
    (3001, 2001, False),       # 3001.5 > 3001 (rounding 3001.5 down would wrongly fit)
    (3002, 2001, True),
])
def test_memory_rule_boundary(fake_site, usable, model_bytes, fits):
    fake_site.add_plugin("edge", device="metal", priority=5, memory=2 * GiB + usable)
    reg = fake_site.registry()
    exp = reg.explain("auto", model_bytes=model_bytes)
    assert exp.chosen == ("edge" if fits else "cpu")
    edge = next(c for c in exp.candidates if c.name == "edge")
    sign = "<=" if fits else ">"
    needed = -(-model_bytes * 3 // 2)
    assert f"= {needed} B {sign} usable {usable} B" in edge.memory


def test_module_level_functions_use_the_default_registry(fake_site, use_registry):
    install_accelerators(fake_site)
    use_registry(fake_site.registry())
    assert sapient_core.get_backend("metal").name == "metalfast"
    assert sapient_core.explain("auto", model_bytes=10 * GiB).chosen == "metalslow"
    assert {i.name for i in sapient_core.list_backends()} >= {"cpu", "metalfast", "nomem"}
