"""The conformance kit (sapient_core.testing): the CPU reference passes it, and planted broken
backends are each caught with the exact op and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sapient_core.hookspecs import OPS
from sapient_core.registry import Registry
from sapient_core.testing import (CASE_TOLERANCES, DECLINED, FAIL, KIT_SIZES, NOT_IMPLEMENTED, NOT_RUN, PASS, ROUTED,
                                  TOLERANCES, build_cases, max_abs_err, nmse, run_case, run_conformance, tolerance_for)

from helpers.planted import planted_module, write_dist

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def registry():
    """A fresh registry with only the CPU reference (whatever else is installed here)."""
    return Registry(entry_points=lambda: [])


def plant(registry, name):
    registry.register(planted_module(name), name)
    return name


def by_case(report):
    return {(r.op, r.case): r for r in report.results}


def value_cases(op, *, nonempty=False, dtype=None):
    out = []
    for c in build_cases("small", [op]):
        if c.expect is not None:
            continue
        arrays = [a for a in c.args() if isinstance(a, np.ndarray)]
        if nonempty and any(a.size == 0 for a in arrays):
            continue
        if dtype is not None and any(a.dtype != dtype for a in arrays if a.dtype.kind in "fV"):  # V: bfloat16
            continue
        out.append(c.name)
    return out


# --- the cases themselves ------------------------------------------------------------------------------

def test_every_op_has_value_edge_and_bad_input_cases():
    cases = build_cases()
    for op in OPS:
        names = {c.name for c in cases if c.op == op}
        assert "native" in names, op
        assert any("float16" in n and "bfloat16" not in n for n in names), op
        assert any("bfloat16" in n for n in names), op
        assert any(n.startswith("zero") for n in names), op
        assert any(n.startswith("bad-") for n in names), op
        assert any("nan" in n for n in names), op
        assert op in TOLERANCES
    assert {(op, case) for op, case in CASE_TOLERANCES} <= {(c.op, c.name) for c in cases}


def test_edge_case_inputs_are_what_their_names_say():
    cases = {c.id: c.args() for c in build_cases()}
    q, k, v, kv, causal = cases["gqa_attention:kv-offset"]
    assert q.shape[2] < k.shape[2] and causal                                   # KV-cache offset
    assert cases["gqa_attention:decode-S1"][0].shape[2] == 1
    assert cases["gqa_attention:mqa"][3] == 1
    assert cases["gqa_attention:mha"][3] == cases["gqa_attention:mha"][0].shape[1]
    assert 1 < cases["gqa_attention:prefill-gqa"][3] < cases["gqa_attention:prefill-gqa"][0].shape[1]
    assert cases["gqa_attention:non-causal"][4] is False
    assert not all(np.diff(cases["apply_rope_positions:noncontig-positions"][1]) == 1)
    assert cases["apply_rope_partial:phi-80-32"][0].shape[-1] == 80 and cases["apply_rope_partial:phi-80-32"][3] == 32
    for cid, args in cases.items():
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        if "noncontig" in cid and "positions" not in cid:
            assert any(not a.flags.c_contiguous for a in arrays), cid
        if "bfloat16" in cid:
            assert any(a.dtype.name == "bfloat16" for a in arrays), cid
        elif "float16" in cid:
            assert any(a.dtype == np.float16 for a in arrays), cid
        if ":zero" in cid:
            assert any(a.size == 0 for a in arrays), cid
        if ":nan" in cid:
            assert any(a.dtype.kind == "f" and np.isnan(a).any() for a in arrays), cid
    x = cases["silu:large"][0]
    assert np.abs(x).max() >= 1e38


def test_llm_size_has_the_issue_shapes():
    s = KIT_SIZES["llm"]
    assert (s.hidden, s.heads, s.kv_heads, s.head_dim, s.mlp, s.kv_len, s.seq) == (2048, 32, 8, 64, 8192, 512, 128)
    cases = {c.id: c for c in build_cases("llm", ["gqa_attention", "linear_3d"])}
    q, k, *_ = cases["gqa_attention:decode-S1"].args()
    assert q.shape == (1, 32, 1, 64) and k.shape == (1, 8, 513, 64)
    assert cases["linear_3d:prefill"].args()[1].shape == (8192, 2048)


def test_cases_are_deterministic():
    a = build_cases()[0].args()
    b = build_cases()[0].args()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


# --- metrics -------------------------------------------------------------------------------------------

def test_nmse_and_max_abs_err():
    assert nmse([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert nmse([1.1, 2.0], [1.0, 2.0]) == pytest.approx(0.01 / 5)
    assert nmse([np.nan, 3.0], [np.nan, 2.0]) == pytest.approx(1 / 4)      # non-finite elements left out
    assert nmse(np.zeros(0), np.zeros(0)) == 0.0
    assert nmse([1.0], [0.0]) == float("inf")
    assert max_abs_err([1.0, 5.0, np.inf], [1.5, 5.0, np.inf]) == 0.5


def test_tolerances_catch_a_relative_error_of_1e_3_in_every_op():
    for op, tol in TOLERANCES.items():
        assert tol.nmse < 1e-6 and tol.reason, op
    for (op, case), tol in CASE_TOLERANCES.items():
        assert tolerance_for(op, case) is tol and tol.nmse < 1e-4 and tol.reason


# --- the CPU reference passes ---------------------------------------------------------------------------

def test_cpu_reference_passes_every_case(registry):
    report = run_conformance("cpu", registry=registry)
    assert report.ok, report.table(failures_only=True)
    assert report.counts() == {PASS: len(build_cases()), FAIL: 0, DECLINED: 0, ROUTED: 0, NOT_IMPLEMENTED: 0,
                               NOT_RUN: 0}
    for r in report.results:
        if r.kind == "value":
            assert r.nmse <= r.tolerance.nmse and r.nmse_cpu == 0.0, (r.op, r.case)
    assert "cpu (cpu, " in report.summary() and ": OK - " in report.summary()


def test_cpu_reference_passes_at_llm_size_for_one_op(registry):
    report = run_conformance("cpu", size="llm", ops=["rms_norm"], registry=registry)
    assert report.ok and report.size == "llm" and len(report.passed) == len(build_cases("llm", ["rms_norm"]))


def test_run_case_refuses_a_non_strict_backend(registry):
    be = registry.get_backend("cpu", strict=False)
    with pytest.raises(ValueError, match="must be strict"):
        run_case(be, build_cases()[0], be)


# --- planted broken backends ---------------------------------------------------------------------------

def test_numerically_wrong_rms_norm_is_caught(registry):
    report = run_conformance(plant(registry, "wrongrms"), registry=registry)
    assert not report.ok
    failed = {(r.op, r.case) for r in report.failures}
    assert failed == {("rms_norm", c) for c in value_cases("rms_norm", nonempty=True)}
    r = by_case(report)[("rms_norm", "prefill")]
    assert r.nmse == pytest.approx(1e-6, rel=0.01)
    assert r.reason.startswith("NMSE vs oracle 1.0e-06 > 1e-10; max abs err ")
    assert "NMSE vs the CPU reference 1.0e-06 > 4 * 1e-10" in r.reason
    assert all(r.status == PASS for r in report.results if r.op == "silu")
    assert "FAILED" in report.summary()


def test_backend_that_modifies_its_input_is_caught(registry):
    report = run_conformance(plant(registry, "mutates"), registry=registry)
    failed = {(r.op, r.case): r.reason for r in report.failures}
    assert set(failed) == {("silu", c) for c in value_cases("silu", nonempty=True, dtype=np.float32)}
    assert set(failed.values()) == {"modified its input 'x'"}
    assert not report.ok


def test_backend_that_falls_back_for_everything_cannot_pass(registry):
    name = plant(registry, "raises")
    # Without strict mode every call would quietly get the CPU reference's (right) answer ...
    x = np.ones((1, 2, 8), np.float32)
    np.testing.assert_allclose(registry.get_backend(name).rms_norm(x, np.ones(8, np.float32), 1e-6), 1.0, rtol=1e-6)
    # ... so the kit runs it in strict mode, where every op fails with the backend's own error.
    report = run_conformance(name, registry=registry)
    assert not report.ok and not report.ran_itself
    values = [r for r in report.results if r.kind == "value"]
    assert values and all(r.status == FAIL for r in values)
    assert {r.op for r in report.failures} == set(OPS)
    assert by_case(report)[("gqa_attention", "decode-S1")].reason == \
        "the backend raised RuntimeError: no kernel for gqa_attention"
    # bad input never reaches the backend: those cases pass
    assert all(r.status == PASS for r in report.results if r.kind == "error")


def test_wrong_result_shape_is_caught(registry):
    report = run_conformance(plant(registry, "wrongshape"), registry=registry)
    assert {(r.op, r.case) for r in report.failures} == {("linear_3d", c) for c in value_cases("linear_3d")}
    assert by_case(report)[("linear_3d", "prefill")].reason == "wrong result: returned shape (2, 7, 687), expected (2, 7, 688)"
    assert by_case(report)[("linear_3d", "decode-S1")].reason == "wrong result: returned shape (1, 1, 255), expected (1, 1, 256)"
    assert not report.ok


def test_declined_inputs_are_reported_not_failed_but_a_backend_that_declines_everything_cannot_pass(registry):
    report = run_conformance(plant(registry, "declines"), registry=registry)
    assert not report.failures
    declined = report.declined
    assert {r.op for r in declined} == {"rms_norm", "silu"}
    assert {r.reason for r in declined} == {"no input is good enough"}
    assert {r.op for r in report.not_implemented} == set(OPS) - {"rms_norm", "silu"}
    assert all(r.case == "*" and r.reason == "served by the CPU reference" for r in report.not_implemented)
    assert not report.ok
    assert "ran none of the ops itself, so it cannot pass" in report.summary()


def test_wrong_dtype_nan_parity_and_overflow_warnings_are_caught(registry):
    report = run_conformance(plant(registry, "float64"), registry=registry)
    assert "wrong result: returned dtype float64, not float32" in by_case(report)[("add", "same-shape")].reason
    report = run_conformance(plant(registry, "nanparity"), registry=registry)
    assert {r.case for r in report.failures} == {"nan-inf"}
    reason = by_case(report)[("silu", "nan-inf")].reason
    assert "no NaN at 3 element(s) where the oracle has NaN (first at (0, 0, 0))" in reason
    assert "no +Inf at 1 element(s) where the oracle has +Inf (first at (0, 0, 1))" in reason
    report = run_conformance(plant(registry, "overflows"), registry=registry)
    assert {r.case for r in report.failures} == {"large"}
    assert by_case(report)[("silu", "large")].reason == "emitted RuntimeWarning: overflow encountered in exp"


def test_a_backend_that_keeps_the_input_dtype_fails_the_bfloat16_and_float16_cases(registry):
    report = run_conformance(plant(registry, "keepsdtype"), ops=["silu", "rms_norm", "add"], registry=registry)
    failed = {(r.op, r.case): r.reason for r in report.failures}
    assert failed == {
        ("silu", "float16"): "wrong result: returned dtype float16, not float32",
        ("silu", "bfloat16"): "wrong result: returned dtype bfloat16, not float32",
        ("rms_norm", "float16"): "wrong result: returned dtype float16, not float32",
        ("rms_norm", "bfloat16"): "wrong result: returned dtype bfloat16, not float32",
        ("add", "float16-mixed"): "wrong result: returned dtype float16, not float32",
        ("add", "bfloat16-mixed"): "wrong result: returned dtype bfloat16, not float32",
    }
    assert not report.ok


def test_bfloat16_cases_compute_the_bfloat16_values_in_float32(registry):
    import ml_dtypes
    case = next(c for c in build_cases() if c.id == "rms_norm:bfloat16")
    x, w, eps = case.args()
    assert x.dtype == w.dtype == np.dtype(ml_dtypes.bfloat16) and case.needs == "ml_dtypes"
    twin = next(c for c in build_cases() if c.id == "rms_norm:float16")
    assert (twin.op, twin.expect, twin.native) == (case.op, case.expect, case.native)
    result = run_case(registry.get_backend("cpu", strict=True), case, registry.get_backend("cpu", strict=True))
    assert result.status == PASS and result.nmse <= result.tolerance.nmse


def test_without_ml_dtypes_the_bfloat16_cases_are_reported_not_run(registry, monkeypatch):
    from sapient_core.testing import cases
    monkeypatch.setattr(cases, "bfloat16", lambda: None)
    report = run_conformance("cpu", ops=["silu", "gelu"], registry=registry)
    not_run = {(r.op, r.case): r.reason for r in report.not_run}
    reason = "bfloat16 input needs ml_dtypes (NumPy has no bfloat16 of its own): pip install ml_dtypes"
    assert not_run == {("silu", "bfloat16"): reason, ("gelu", "bfloat16-erf"): reason,
                       ("gelu", "bfloat16-tanh"): reason}
    assert report.ok and report.counts()[NOT_RUN] == 3
    assert f": OK - {len(report.passed)} passed, 0 failed, 0 declined, 3 not run ({reason}), 0 op(s) not " \
           f"implemented" in report.summary()


def test_report_table_and_json(registry):
    report = run_conformance(plant(registry, "wrongshape"), ops=["linear_3d", "silu"], registry=registry)
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split() == ["op", "backend", "case", "status", "NMSE", "NMSE", "vs", "cpu", "max", "abs",
                                "err", "tol", "NMSE", "reason"]
    assert any(line.split()[:4] == ["linear_3d", "wrongshape", "prefill", "fail"] for line in lines)
    assert any(line.split()[:5] == ["silu", "wrongshape", "*", "not", "implemented"] for line in lines)
    only = report.table(failures_only=True)
    assert " pass " not in only and "fail" in only
    d = report.as_dict()
    assert d["ok"] is False and d["counts"][FAIL] == len(report.failures)
    assert {"op", "case", "status", "reason", "nmse", "max_abs_err", "nmse_cpu", "tolerance"} <= set(d["results"][0])


# --- the pytest entry points ----------------------------------------------------------------------------

def _pytest(args, cwd, **env):
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SAPIENT_", "PYTEST_"))}
    e["COLUMNS"] = "400"                      # pytest's short summary is cut to the terminal's width
    e.update(env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


def test_conformance_tests_in_a_plugins_own_suite(tmp_path):
    (tmp_path / "test_plugin.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "import sapient_core\n"
        "from helpers.planted import planted_module\n"
        "sapient_core.register_backend(planted_module('wrongrms'), 'wrongrms')\n"
        "from sapient_core.testing import conformance_tests\n"
        "test_kit = conformance_tests('wrongrms', ops=['rms_norm', 'silu', 'add'])\n")
    proc = _pytest(["test_plugin.py"], tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out
    n_fail = len(value_cases("rms_norm", nonempty=True))
    n_add = len(build_cases("small", ["add"]))
    n_pass = len(build_cases("small", ["rms_norm", "silu"])) - n_fail
    assert f"{n_fail} failed, {n_pass} passed, {n_add} skipped" in out
    assert ("FAILED test_plugin.py::test_kit[rms_norm:prefill] - Failed: wrongrms rms_norm:prefill: "
            "NMSE vs oracle 1.0e-06") in out
    assert "wrongrms add:same-shape: not implemented: served by the CPU reference" in out


def test_conformance_tests_lists_expected_failures_with_their_reason(tmp_path):
    (tmp_path / "test_plugin.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "import sapient_core\n"
        "from helpers.planted import planted_module\n"
        "sapient_core.register_backend(planted_module('wrongshape'), 'wrongshape')\n"
        "from sapient_core.testing import conformance_tests\n"
        "test_kit = conformance_tests('wrongshape', ops=['linear_3d'], expected_failures={\n"
        "    'linear_3d:prefill': 'issue 7: the last block is dropped',\n"
        "    'linear_3d:bad-rank': 'passes: strict xfail notices'})\n")
    proc = _pytest(["test_plugin.py", "-rfxX"], tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, out
    n_value = len(value_cases("linear_3d"))
    assert f"{n_value} failed, 2 passed, 1 xfailed" in out           # the strict XPASS fails
    assert "XFAIL test_plugin.py::test_kit[linear_3d:prefill] - issue 7: the last block is dropped" in out
    assert "test_kit[linear_3d:bad-rank]" in out and "[XPASS(strict)] passes: strict xfail notices" in out
    from sapient_core.testing import conformance_tests
    with pytest.raises(ValueError, match="expected_failures names no case: linear_3d:nope"):
        conformance_tests("cpu", expected_failures={"linear_3d:nope": "?"})


def test_pytest_option_collects_the_kit_for_an_installed_backend(tmp_path):
    write_dist(tmp_path / "site", "wrongshape")
    proc = _pytest(["--sapient-backend", "cpu", "--sapient-backend", "wrongshape", "-k", "linear_3d and not bias"],
                   tmp_path, PYTHONPATH=str(tmp_path / "site"))
    out = proc.stdout
    n = len(build_cases("small", ["linear_3d"]))
    n_fail = len(value_cases("linear_3d"))          # zero-length results have the wrong shape too
    assert proc.returncode == 1, out + proc.stderr
    assert f"{n_fail} failed, {2 * n - n_fail} passed" in out
    assert "test_conformance[wrongshape-linear_3d:prefill] - Failed: wrongshape linear_3d:prefill: wrong result: " \
           "returned shape (2, 7, 687), expected (2, 7, 688)" in out
    assert "[cpu-linear_3d" not in out.split("short test summary")[-1]       # cpu passed every case


# --- contract v2: every new argument is covered, and a backend that ignores one is caught by name ------------

def test_every_argument_with_a_default_is_set_by_a_value_case():
    """A backend that takes an argument and ignores it must fail some case: each defaulted argument (all of
    contract v2's) is set to something other than its default by at least one value case."""
    from sapient_core.testing.conformance import _is_default
    cases = build_cases()
    for op, spec in OPS.items():
        for i, arg in enumerate(spec.args):
            if not arg.has_default:
                continue
            setting = [c.name for c in cases if c.op == op and c.expect is None and len(c.args()) > i
                       and not _is_default(c.args()[i], arg.default)]
            assert setting, f"no value case of {op} sets {arg.name}"


@pytest.mark.parametrize("name, op, arg", [("ignoreswindow", "gqa_attention", "sliding_window"),
                                           ("ignoressoftcap", "gqa_attention", "softcap"),
                                           ("ignoressoftcap", "logits_from_hidden", "softcap")])
def test_a_backend_that_ignores_an_argument_fails_with_the_op_and_the_argument_named(registry, name, op, arg):
    report = run_conformance(plant(registry, name), registry=registry)
    assert not report.ok
    failing = [r for r in report.failures if r.op == op]
    named = [r.reason.split("]")[0] for r in failing]
    assert failing and all(n.startswith("[sets ") and arg in n[6:].split(", ") for n in named), named
    cases = {c.name for c in build_cases() if c.op == op and c.expect is None}
    setting = {r.case for r in failing}
    assert setting < cases                                    # the cases that do not set it pass
    assert all(r.status == PASS for r in report.results if r.op == op and r.case not in setting)


def test_a_plugin_built_for_api_1_is_routed_not_failed(registry):
    report = run_conformance(plant(registry, "v1attention"), registry=registry)
    assert report.ok, report.table(failures_only=True)
    routed = {(r.op, r.case) for r in report.results if r.status == ROUTED}
    v2_cases = {(c.op, c.name) for c in build_cases() if c.expect is None and (
        (c.op == "gqa_attention" and len(c.args()) > 5) or (c.op == "apply_rope_positions" and c.args()[1].ndim == 2))}
    assert routed == v2_cases and routed
    r = next(r for r in report.results if r.status == ROUTED and r.op == "gqa_attention")
    assert "does not take" in r.reason and "added in hook API 2" in r.reason
    r = next(r for r in report.results if r.status == ROUTED and r.op == "apply_rope_positions")
    assert "built for hook API 1" in r.reason and "(B, S) positions" in r.reason
    assert f"{len(routed)} routed to the CPU reference" in report.summary()


# --- backends planted at the edge of each tolerance: just over fails, well under passes ---------------------

EDGE_PLANTS = {"nmse_over": ("nmse", 3.0), "nmse_under": ("nmse", 0.1),
               "max_over": ("max_err", 3.0), "max_under": ("max_err", 0.1)}


@pytest.fixture(scope="module")
def edge_registry():
    from helpers.planted import off_by
    reg = Registry(entry_points=lambda: [])
    for name, (kind, factor) in EDGE_PLANTS.items():
        reg.register(off_by(kind, factor), name)
    return reg


@pytest.mark.parametrize("op", list(OPS))
def test_an_error_just_over_a_tolerance_fails_and_well_under_passes(edge_registry, op):
    """3x the op's NMSE tolerance fails on the NMSE check (and 3x its max-abs-err tolerance on that check);
    0.1x of either passes: run_case applies TOLERANCES[op] as published (metric and comparison).  The values
    themselves are guarded by test_tolerances_catch_a_relative_error_of_1e_3_in_every_op."""
    case = next(c for c in build_cases("small", [op]) if c.expect is None and not c.native)
    assert tolerance_for(op, case.name) is TOLERANCES[op]
    reference = edge_registry.get_backend("cpu", strict=True)
    results = {name: run_case(edge_registry.get_backend(name, strict=True), case, reference)
               for name in EDGE_PLANTS}
    tol = TOLERANCES[op]
    over, under = results["nmse_over"], results["nmse_under"]
    assert over.status == FAIL and f"NMSE vs oracle {over.nmse:.1e} > {tol.nmse:.0e}" in over.reason, over
    if tol.nmse:
        assert 2 * tol.nmse < over.nmse < 4 * tol.nmse                     # the plant is where it says it is
    else:                                                                  # an exact op: one ulp off fails
        assert 0 < over.nmse < 1e-13
    assert under.status == PASS and under.nmse <= 0.2 * tol.nmse, under
    over, under = results["max_over"], results["max_under"]
    assert over.status == FAIL and "max abs err " in over.reason and f"> {tol.max_err:.0e} * " in over.reason, over
    assert under.status == PASS, under


def test_float32_subnormals_count_as_zero_in_the_metrics():
    """A GPU flushes float32 subnormals to zero (GELU of -13.5 is -1.06e-40): not an error; a normal value is."""
    from sapient_core.testing.conformance import FLOAT32_TINY
    assert nmse(np.array([-0.0]), np.array([-1.0555981e-40])) == 0.0
    assert nmse(np.array([0.0, 1.0]), np.array([FLOAT32_TINY / 2, 1.0])) == 0.0
    assert nmse(np.array([-1e-30]), np.array([-2e-30])) == pytest.approx(0.25)
    assert nmse(np.array([0.0]), np.array([FLOAT32_TINY])) == 1.0         # the smallest normal still counts
