"""SPEC §6, cross-check mode: the CPU reference also computes a chosen fraction of the calls, and every
disagreement beyond the kit's tolerances (NaN/Inf placement and modified inputs included) is logged once
per (backend, op, kind) and counted; the caller still gets the plugin's result (strict mode: an error)."""

from __future__ import annotations

import logging
import threading
import warnings

import numpy as np
import pytest

from sapient_core import BackendOpError, SwitchWarning
from sapient_core.hookspecs import OPS
from sapient_core.registry import Registry
from sapient_core.testing import build_cases
from sapient_backend_cpu import kernels

from helpers.fakeplugins import (Boxed, caps_dict, delegating_plugin, namespace_plugin, op_function,
                                 sapient_warnings, unbox)
from helpers.planted import planted_module
from helpers.samples import valid_args

X = np.random.default_rng(3).standard_normal((2, 3, 8)).astype(np.float32)
W = (1 + 0.1 * np.random.default_rng(4).standard_normal(8)).astype(np.float32)


def registry_with(**plugins):
    reg = Registry(entry_points=lambda: [])
    for name, plugin in plugins.items():
        reg.register(plugin, name)
    return reg


def planted(name, **kw):
    return registry_with(**{name: planted_module(name)}).get_backend(name, **kw)


def call_numbered(wrong_calls):
    """A plugin whose silu is off by a relative 1e-3 on the calls (0, 1, ...) in ``wrong_calls``."""
    n = [0]

    def silu(x):
        k, n[0] = n[0], n[0] + 1
        y = kernels.silu(x)
        return y * np.float32(1 + 1e-3) if k in wrong_calls else y
    return namespace_plugin(caps_dict(), silu=op_function("silu", silu))


# --- off by default, and then free -------------------------------------------------------------------------

def test_off_by_default_no_route_is_diverted():
    b = registry_with(fake=delegating_plugin()).get_backend("fake")
    assert b.cross_check == 0.0 and b._cross is None
    assert all(b._routes[op].divert is None for op in OPS)        # the op methods' usual path, unchanged
    for op in OPS:
        getattr(b, op)(*valid_args(op))
    stats = b.stats()
    assert stats.cross_check == 0.0
    assert all((s.cross_checked, s.disagreements, s.disagreement_reasons) == (0, 0, {}) for s in stats.ops.values())
    assert "cross_check" not in repr(b)


def test_on_every_implemented_op_is_diverted_and_agreeing_results_count_no_disagreement():
    plugin = delegating_plugin(ops=["rms_norm", "silu", "gelu"])
    b = registry_with(fake=plugin).get_backend("fake", cross_check=1)
    assert {op for op in OPS if b._routes[op].divert is not None} == {"rms_norm", "silu", "gelu"}
    for op in OPS:
        np.testing.assert_array_equal(getattr(b, op)(*valid_args(op)), getattr(kernels, op)(*valid_args(op)))
    ops = b.stats().ops
    assert {op: s.cross_checked for op, s in ops.items() if s.cross_checked} == {"rms_norm": 1, "silu": 1, "gelu": 1}
    assert all(s.disagreements == 0 for s in ops.values())
    assert repr(b).endswith("strict=False cross_check=1>")


# --- what a disagreement is ---------------------------------------------------------------------------------

def test_a_numerically_wrong_op_is_counted_and_logged_once_per_kind(caplog):
    b = planted("wrongrms", cross_check=1)
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        results = [b.rms_norm(X, W, 1e-6) for _ in range(5)]
    for y in results:                                    # the caller gets the plugin's (wrong) result
        np.testing.assert_array_equal(y, kernels.rms_norm(X, W, 1e-6) * np.float32(1 + 1e-3))
    s = b.stats().ops["rms_norm"]
    nmse_kind = "NMSE above 4 x 1e-10"
    max_kind = "max abs error above 2 x 1e-05 x max(1, max |reference|)"
    assert (s.calls, s.cross_checked, s.disagreements, s.fallbacks) == (5, 5, 5, 0)
    assert s.disagreement_reasons == {nmse_kind: 5, max_kind: 5}
    logged = sapient_warnings(caplog)
    assert len(logged) == 2
    assert logged[0].startswith(f"wrongrms.rms_norm disagrees with the CPU reference on a cross-checked call: "
                                f"{nmse_kind} (NMSE 1.0e-06 > 4.0e-10; inputs x (2, 3, 8) float32, weight (8,) "
                                f"float32); the caller got wrongrms's result. Logged once per backend, op and kind")
    assert logged[1].startswith(f"wrongrms.rms_norm disagrees with the CPU reference on a cross-checked call: "
                                f"{max_kind} (max abs error ")


def test_nan_and_inf_placement_is_a_disagreement():
    b = planted("nanparity", cross_check=1)
    x = X.copy()
    x[0, 0, :3] = [np.nan, np.inf, -np.inf]
    y = b.silu(x)
    assert not np.isnan(y).any()                         # the plugin's result, as it is
    s = b.stats().ops["silu"]
    assert s.disagreements == 1 and s.disagreement_reasons == {
        "no NaN where the CPU reference has NaN": 1, "no +Inf where the CPU reference has +Inf": 1}


def test_an_input_modified_in_place_is_a_disagreement_and_the_reference_sees_the_original():
    b = planted("mutates", cross_check=1)
    x = X.copy()
    y = b.silu(x)
    assert y is x                                        # the plugin's result (its mutated input)
    s = b.stats().ops["silu"]
    assert s.disagreements == 1 and s.disagreement_reasons == {"modified its input 'x'": 1}


def test_nan_where_the_reference_is_finite():
    plugin = namespace_plugin(caps_dict(), add=op_function("add", lambda a, b: np.full(
        np.broadcast_shapes(a.shape, b.shape), np.nan, np.float32)))
    b = registry_with(nanny=plugin).get_backend("nanny", cross_check=1)
    b.add(X, W)
    assert b.stats().ops["add"].disagreement_reasons == {"NaN where the CPU reference has none": 1}


def test_strict_mode_raises_on_a_disagreement_after_counting_it():
    b = planted("wrongrms", cross_check=1, strict=True)
    with pytest.raises(BackendOpError, match=r"^wrongrms\.rms_norm disagrees with the CPU reference on a "
                                             r"cross-checked call \(NMSE above 4 x 1e-10 \(NMSE 1\.0e-06 > 4\.0e-10\); "
                                             r"max abs error above .*\) and strict mode is on, so its result was not "
                                             r"returned\. To get the plugin's results and the disagreements counted "
                                             r"instead: pass strict=False \(or unset SAPIENT_STRICT\)$") as exc:
        b.rms_norm(X, W, 1e-6)
    assert exc.value.reason.startswith("cross-check: NMSE above") and exc.value.op == "rms_norm"
    assert b.stats().ops["rms_norm"].disagreements == 1
    np.testing.assert_array_equal(b.silu(X), kernels.silu(X))       # agreeing ops are untouched


@pytest.mark.parametrize("error", [RuntimeError("kernel exploded"), SystemExit(3)], ids=["RuntimeError", "SystemExit"])
def test_failures_fall_back_and_are_not_compared(error):
    def before(op, args):      # a plugin's SystemExit is its failure too, as without cross-checking
        raise error
    b = registry_with(flaky=delegating_plugin(ops=["silu"], before=before)).get_backend("flaky", cross_check=1)
    np.testing.assert_array_equal(b.silu(X), kernels.silu(X))
    s = b.stats().ops["silu"]
    assert (s.fallbacks, s.cross_checked, s.disagreements) == (1, 0, 0)


def test_a_wrong_result_type_still_falls_back_first():
    plugin = namespace_plugin(caps_dict(), silu=op_function("silu", lambda x: kernels.silu(x).astype(np.float64)))
    b = registry_with(f64=plugin).get_backend("f64", cross_check=1)
    assert b.silu(X).dtype == np.float32
    s = b.stats().ops["silu"]
    assert s.fallback_reasons == {"wrong result: returned dtype float64, not float32": 1} and s.cross_checked == 0


def test_routed_calls_are_not_compared_but_the_others_are():
    plugin = namespace_plugin(caps_dict(), gelu=op_function("gelu", lambda x: kernels.gelu(x, "none"), ["x"]))
    b = registry_with(erfonly=plugin).get_backend("erfonly", cross_check=1)
    b.gelu(X, "tanh")                                        # routed to the reference
    b.gelu(X)                                                # the plugin's, compared
    s = b.stats().ops["gelu"]
    assert (s.calls, s.routed, s.cross_checked, s.disagreements) == (2, 1, 1, 0)


def test_a_backend_with_its_own_array_type_is_compared_through_to_numpy():
    plugin = namespace_plugin(caps_dict(device="metal"), backend_to_numpy=unbox,
                              backend_from_numpy=lambda x: Boxed(x),
                              rms_norm=op_function("rms_norm", lambda x, weight, eps: Boxed(
                                  kernels.rms_norm(unbox(x), unbox(weight), eps) * np.float32(1.01))))
    b = registry_with(boxed=plugin).get_backend("boxed", cross_check=1)
    y = b.rms_norm(b.from_numpy(X), W, 1e-6)
    assert isinstance(y, Boxed)
    assert b.stats().ops["rms_norm"].disagreements == 1


# --- which calls: deterministic -------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction, calls, checked", [(1, 7, 7), (0.5, 7, 4), (0.25, 8, 2), (0.1, 25, 3),
                                                       (0.3, 10, 3), (1e-6, 5, 1)])
def test_the_fraction_checks_exactly_p_of_every_q_calls_the_first_included(fraction, calls, checked):
    b = registry_with(fake=delegating_plugin(ops=["silu"])).get_backend("fake", cross_check=fraction)
    for _ in range(calls):
        b.silu(X)
    assert b.stats().ops["silu"].cross_checked == checked


def test_the_sampled_calls_are_the_same_on_every_run():
    for _ in range(2):
        b = registry_with(odd=call_numbered({1, 3, 5, 7})).get_backend("odd", cross_check=0.5)
        for _ in range(8):
            b.silu(X)
        s = b.stats().ops["silu"]
        assert (s.cross_checked, s.disagreements) == (4, 0)          # calls 0, 2, 4, 6: all right
        b = registry_with(even=call_numbered({0, 4})).get_backend("even", cross_check=0.5)
        for _ in range(8):
            b.silu(X)
        assert b.stats().ops["silu"].disagreements == 2


def test_reset_stats_restarts_the_counters_and_the_sampling():
    b = registry_with(fake=delegating_plugin(ops=["silu"])).get_backend("fake", cross_check=0.5)
    for _ in range(3):
        b.silu(X)
    b.reset_stats()
    b.silu(X)                                                        # call 0 again: checked
    assert b.stats().ops["silu"].cross_checked == 1


def test_threads_lose_no_count():
    b = registry_with(fake=delegating_plugin(ops=["silu"])).get_backend("fake", cross_check=1)
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()
        for _ in range(25):
            b.silu(X)
    pool = [threading.Thread(target=work) for _ in range(4)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    s = b.stats().ops["silu"]
    assert s.calls == s.cross_checked == 100 and s.disagreements == 0


# --- turning it on ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, fraction", [("0.1", 0.1), ("1", 1.0), (" YES ", 1.0), ("on", 1.0), ("0", 0.0),
                                             ("off", 0.0), ("", 0.0), ("0.0", 0.0), ("1e-2", 0.01)])
def test_the_environment_variable(monkeypatch, value, fraction):
    monkeypatch.setenv("SAPIENT_CROSS_CHECK", value)
    reg = registry_with(fake=delegating_plugin(ops=["silu"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = reg.get_backend("fake")
    assert b.cross_check == fraction and (b._cross is not None) == (fraction > 0)
    assert reg.get_backend("fake", cross_check=0) is not b or fraction == 0       # the argument wins
    assert reg.get_backend("fake", cross_check=0).cross_check == 0


@pytest.mark.parametrize("value", ["lots", "2", "-0.1", "nan", "10%"])
def test_a_bad_environment_value_warns_once_and_is_off(monkeypatch, value):
    monkeypatch.setenv("SAPIENT_CROSS_CHECK", value)
    reg = registry_with(fake=delegating_plugin(ops=["silu"]))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        backends = [reg.get_backend("fake"), reg.get_backend("fake"), reg.get_backend("auto")]
    assert all(b.cross_check == 0.0 for b in backends)
    caught = [w for w in record if issubclass(w.category, SwitchWarning)]
    assert len(caught) == 1 and str(caught[0].message) == (
        f"SAPIENT_CROSS_CHECK={value!r} is not an accepted value: SAPIENT_CROSS_CHECK accepts a fraction between 0 "
        f"and 1 (the share of calls the CPU reference also computes, e.g. 0.1), or 1, true, yes, on (on) or 0, "
        f"false, no, off (off), case-insensitive; an empty value means unset (on = every call). It is read as off (no "
        f"call is cross-checked). To remedy this, set e.g. SAPIENT_CROSS_CHECK=0.1, or unset it")


@pytest.mark.parametrize("value, error, message", [
    (1.5, ValueError, r"^cross_check must be between 0 and 1 \(the fraction of calls the CPU reference also computes; "
                      r"0 = off, 1 = every call\), got 1\.5$"),
    (-0.1, ValueError, r"got -0\.1$"), (float("nan"), ValueError, r"got nan$"),
    ("0.1", TypeError, r"^cross_check must be a number between 0 and 1 \(the fraction of calls the CPU reference also "
                       r"computes\), got str '0\.1'$"),
])
def test_a_bad_argument_raises(value, error, message):
    reg = registry_with(fake=delegating_plugin(ops=["silu"]))
    with pytest.raises(error, match=message):
        reg.get_backend("fake", cross_check=value)


def test_backend_objects_are_cached_per_fraction_and_true_means_every_call():
    reg = registry_with(fake=delegating_plugin(ops=["silu"]))
    a, b = reg.get_backend("fake", cross_check=0.1), reg.get_backend("fake", cross_check=0.1)
    assert a is b and a is not reg.get_backend("fake") and a is not reg.get_backend("fake", cross_check=0.2)
    assert reg.get_backend("fake", cross_check=True).cross_check == 1.0
    assert reg.get_backend("fake", cross_check=np.float32(0.5)).cross_check == 0.5


def test_the_module_level_get_backend_takes_it(use_registry):
    import sapient_core
    use_registry(registry_with(fake=delegating_plugin(ops=["silu"])))
    b = sapient_core.get_backend("fake", cross_check=0.5)
    assert b.cross_check == 0.5 and b.stats().cross_check == 0.5


def test_the_cpu_reference_is_never_compared_with_itself():
    b = Registry(entry_points=lambda: []).get_backend("cpu", cross_check=1)
    assert b.cross_check == 1.0 and b._cross is None
    b.silu(X)
    assert b.stats().ops["silu"].cross_checked == 0


# --- a correct backend raises no false alarm ---------------------------------------------------------------------

def test_mlx_agrees_with_the_cpu_reference_on_every_kit_case():
    """The installed MLX plugin, cross-checking every call of every value case of the kit whose tolerance is
    the op's own (the kit widens a few, which cross-checking does not know about)."""
    from sapient_core.testing.tolerances import CASE_TOLERANCES
    mlx = Registry().get_backend("mlx", cross_check=1)
    ran = 0
    for case in build_cases():
        if case.expect is not None or (case.op, case.name) in CASE_TOLERANCES:
            continue
        args = case.args()
        if case.native:
            args = tuple(mlx.from_numpy(a) if isinstance(a, np.ndarray) and spec_arg.is_array else a
                         for spec_arg, a in zip(OPS[case.op].args, args))
        with np.errstate(all="ignore"):
            getattr(mlx, case.op)(*args)
        ran += 1
    stats = mlx.stats().ops
    assert ran > 0
    assert {op: s.disagreement_reasons for op, s in stats.items() if s.disagreements} == {}
    assert sum(s.cross_checked for s in stats.values()) == ran - sum(s.fallbacks for s in stats.values())
