"""The conformance kit: run every case of :mod:`.cases` against a backend and report each result.

For a backend named ``name`` (the entry-point name), :func:`run_conformance` resolves it in strict
mode (``get_backend(name, strict=True)``: a failing or declining op raises instead of borrowing the
CPU reference's answer) and, for each case of an op the backend implements:

- value cases: calls the op, then checks that the backend ran it itself (``backend.stats()``: one
  call, no fallback, ``implemented_by == name``); the result's type (the backend's own array type,
  NumPy for the logits ops), shape and dtype (float32); that no input was modified; NaN/Inf parity
  with the float64 oracle (:mod:`.oracle`); the normalised mean squared error and maximum absolute
  error against the oracle within :data:`.tolerances.TOLERANCES`; the NMSE against the CPU reference
  within four times that; and, for cases that ask, that NumPy emitted no overflow warning.
- bad-input cases: the call raises the documented error type (``ShapeError`` / ``DTypeError``) naming
  the op, before the backend is called.

Each case ends as ``pass``, ``fail`` (with the reasons), ``declined`` (the backend raised
``OpDeclined``: reported with its reason, not a failure) or ``not implemented`` (the op is served by
the CPU reference: reported, not a failure).  Any other exception from the backend is a failure.
A backend passes when nothing failed and at least one value case ran on the backend itself.

Only ``backend.to_numpy`` / ``backend.from_numpy`` touch the backend's arrays, so the kit works for
any array type (NumPy, ``mx.array`` ...).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import BackendOpError
from ..hookspecs import OPS
from . import oracle
from ..reporting import fmt_sci, format_table
from .cases import Case, build_cases, kit_sizes, missing_need
from .tolerances import Tolerance, tolerance_for

__all__ = ["PASS", "FAIL", "DECLINED", "NOT_IMPLEMENTED", "ROUTED", "NOT_RUN", "CaseResult", "Report", "nmse",
           "max_abs_err",
           "run_case", "run_conformance", "check_case", "conformance_tests"]

PASS = "pass"
FAIL = "fail"
DECLINED = "declined"
NOT_IMPLEMENTED = "not implemented"
#: The backend's implementation does not take an argument the case sets (or (B, S) positions, for a
#: hook API 1 plugin): the dispatcher handed the call to the CPU reference by design.  Not a failure.
ROUTED = "routed"
NOT_RUN = "not run"

#: The NMSE against the CPU reference may be up to this times the oracle tolerance.
REFERENCE_FACTOR = 4.0


@dataclasses.dataclass
class CaseResult:
    """The outcome of one case on one backend.

    :ivar status: ``"pass"``, ``"fail"``, ``"declined"``, ``"not implemented"`` or ``"not run"`` (the case's
        inputs need a package that is not installed: the reason says which).
    :ivar reason: why it failed (every failed check, ``"; "``-separated), or the backend's reason for
        declining.
    :ivar kind: ``"value"`` (compared with the oracle) or ``"error"`` (bad input must raise).
    :ivar nmse: NMSE against the float64 oracle (value cases that produced a result).
    :ivar max_abs_err: ``max |result - oracle|`` over the elements finite in both.
    :ivar nmse_cpu: NMSE against the CPU reference.
    :ivar tolerance: the tolerance that applied.
    """

    backend: str
    op: str
    case: str
    status: str
    reason: str = ""
    kind: str = "value"
    nmse: float | None = None
    max_abs_err: float | None = None
    nmse_cpu: float | None = None
    tolerance: Tolerance | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite metrics become the strings ``"inf"`` / ``"nan"``."""
        d = dataclasses.asdict(self)
        for key in ("nmse", "max_abs_err", "nmse_cpu"):
            if d[key] is not None and not np.isfinite(d[key]):
                d[key] = str(d[key])
        d["tolerance"] = None if self.tolerance is None else self.tolerance.nmse
        d["max_err_tolerance"] = None if self.tolerance is None else self.tolerance.max_err
        return d


@dataclasses.dataclass
class Report:
    """Every case's result for one backend."""

    backend: str
    device: str
    version: str
    size: str
    implemented_ops: tuple[str, ...]
    results: list[CaseResult]

    def _with(self, status: str) -> list[CaseResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failures(self) -> list[CaseResult]:
        return self._with(FAIL)

    @property
    def passed(self) -> list[CaseResult]:
        return self._with(PASS)

    @property
    def declined(self) -> list[CaseResult]:
        return self._with(DECLINED)

    @property
    def not_implemented(self) -> list[CaseResult]:
        return self._with(NOT_IMPLEMENTED)

    @property
    def not_run(self) -> list[CaseResult]:
        return self._with(NOT_RUN)

    @property
    def ran_itself(self) -> bool:
        """Whether at least one value case ran on the backend itself (and passed)."""
        return any(r.kind == "value" for r in self.passed)

    @property
    def ok(self) -> bool:
        """No failure, and the backend computed at least one result itself."""
        return not self.failures and self.ran_itself

    def counts(self) -> dict[str, int]:
        return {s: len(self._with(s)) for s in (PASS, FAIL, DECLINED, ROUTED, NOT_IMPLEMENTED, NOT_RUN)}

    def summary(self) -> str:
        c = self.counts()
        verdict = "OK" if self.ok else "FAILED"
        not_run = ""
        if c[NOT_RUN]:
            reasons = sorted({r.reason for r in self.not_run})
            not_run = f"{c[NOT_RUN]} not run ({'; '.join(reasons)}), "
        text = (f"{self.backend} ({self.device}, {self.version}): {verdict} - {c[PASS]} passed, {c[FAIL]} failed, "
                f"{c[DECLINED]} declined, {not_run}"
                + (f"{c[ROUTED]} routed to the CPU reference (an argument the backend does not take), "
                   if c[ROUTED] else "")
                + f"{c[NOT_IMPLEMENTED]} op(s) not implemented (served by the CPU reference)")
        if not self.failures and not self.ran_itself:
            text += "; it ran none of the ops itself, so it cannot pass"
        return text

    def rows(self, *, failures_only: bool = False) -> list[list[str]]:
        rows = []
        for r in self.results:
            if failures_only and r.status == PASS:
                continue
            rows.append([r.op, r.backend, r.case, r.status, fmt_sci(r.nmse), fmt_sci(r.nmse_cpu),
                         fmt_sci(r.max_abs_err), fmt_sci(r.tolerance.nmse) if r.tolerance else "-", r.reason])
        return rows

    def table(self, *, failures_only: bool = False) -> str:
        """One row per case (``failures_only``: every row but the passes)."""
        return format_table(self.rows(failures_only=failures_only), TABLE_HEADER, right=(4, 5, 6, 7))

    def as_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "version": self.version, "size": self.size,
                "ok": self.ok, "ran_itself": self.ran_itself, "counts": self.counts(),
                "implemented_ops": list(self.implemented_ops),
                "results": [r.as_dict() for r in self.results]}


TABLE_HEADER = ["op", "backend", "case", "status", "NMSE", "NMSE vs cpu", "max abs err", "tol NMSE", "reason"]


# --- metrics -------------------------------------------------------------------------------------------

#: The smallest normal float32.  Values below it in magnitude (float32 subnormals) count as 0 in
#: :func:`nmse`: GPUs flush them to zero (FTZ), and a difference of 1e-39 is not an error of a float32 kernel
#: (GELU of x < -13.3 is subnormal: the CPU reference keeps it, MLX returns -0.0).
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def _flush(a: np.ndarray) -> np.ndarray:
    return np.where(np.abs(a) < FLOAT32_TINY, 0.0, a)


def nmse(result: Any, expected: Any) -> float:
    """``sum((result - expected)**2) / sum(expected**2)`` over the elements finite in both (0 if empty),
    with float32 subnormals counted as 0 (see :data:`FLOAT32_TINY`)."""
    r = _flush(np.asarray(result, dtype=np.float64))
    e = _flush(np.asarray(expected, dtype=np.float64))
    finite = np.isfinite(r) & np.isfinite(e)
    diff = r[finite] - e[finite]
    num = float(np.dot(diff, diff))
    if num == 0.0:
        return 0.0
    den = float(np.dot(e[finite], e[finite]))
    return num / den if den > 0 else float("inf")


def max_abs_err(result: Any, expected: Any) -> float:
    """``max |result - expected|`` over the elements finite in both (0 if none)."""
    r = np.asarray(result, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    finite = np.isfinite(r) & np.isfinite(e)
    return float(np.max(np.abs(r[finite] - e[finite]))) if finite.any() else 0.0


def _parity(result: np.ndarray, expected: np.ndarray) -> list[str]:
    """Where the result's NaN / +Inf / -Inf differ from the oracle's."""
    problems = []
    for what, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        got, want = test(result), test(expected)
        extra = np.argwhere(got & ~want)
        missing = np.argwhere(want & ~got)
        if len(extra):
            problems.append(f"{what} at {len(extra)} element(s) where the oracle has none (first at "
                            f"{tuple(int(i) for i in extra[0])})")
        if len(missing):
            problems.append(f"no {what} at {len(missing)} element(s) where the oracle has {what} (first at "
                            f"{tuple(int(i) for i in missing[0])})")
    return problems


# --- running one case ----------------------------------------------------------------------------------

def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray)


def _is_default(value: Any, default: Any) -> bool:
    return value is None if default is None else (not _is_array(value) and value == default)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_case(backend: Any, case: Case, reference: Any) -> CaseResult:
    """Run ``case`` on ``backend`` (a strict :class:`sapient_core.backend.Backend`) and check it.

    :param reference: the CPU reference backend (may be ``backend`` itself).
    """
    name, op = backend.name, case.op
    kind = "error" if case.expect is not None else "value"
    if op not in backend.implemented_ops:
        return CaseResult(name, op, case.name, NOT_IMPLEMENTED, "served by the CPU reference", kind)
    missing = missing_need(case)
    if missing is not None:
        return CaseResult(name, op, case.name, NOT_RUN, missing, kind)
    if not backend.strict:
        raise ValueError(f"run_case: the backend {name!r} must be strict (get_backend({name!r}, strict=True)) "
                         f"so that a fallback cannot borrow the CPU reference's answer")
    spec = OPS[op]
    args = spec.with_defaults(case.args())    # a case gives the leading arguments; the rest take their defaults
    sets = [a.name for a, v in zip(spec.args, args) if a.has_default and not _is_default(v, a.default)]
    result = _run(backend, case, args, reference)
    if result.status == FAIL and sets and result.kind == "value":
        # name the arguments the case sets, so that a backend that ignores one (a window, a softcap)
        # is told which: "gqa_attention:sliding-window-1 [sets sliding_window]: NMSE ..."
        result.reason = f"[sets {', '.join(sets)}] {result.reason}"
    return result


def _run(backend: Any, case: Case, args: tuple, reference: Any) -> CaseResult:
    name, op = backend.name, case.op
    kind = "error" if case.expect is not None else "value"
    spec = OPS[op]
    saved = tuple(a.copy() if _is_array(a) else a for a in args)
    if case.native:
        call_args = tuple(backend.from_numpy(a) if _is_array(a) and arg.is_array else a
                          for arg, a in zip(spec.args, args))
    else:
        call_args = args
    backend.reset_stats()
    fn = getattr(backend, op)
    try:
        # Warnings are recorded (NaN/Inf inputs legitimately warn); cases marked no_warnings check them.
        with warnings.catch_warnings(record=True) as caught, \
                np.errstate(over="warn", invalid="warn", divide="warn", under="ignore"):
            warnings.simplefilter("always")
            out = fn(*call_args)
    except BackendOpError as exc:
        if exc.declined:
            return CaseResult(name, op, case.name, DECLINED, exc.reason, kind)
        if exc.reason.startswith(("wrong result: ", "cross-check: ")):   # the dispatcher's own checks
            return CaseResult(name, op, case.name, FAIL, exc.reason, kind)
        return CaseResult(name, op, case.name, FAIL, f"the backend raised {exc.reason}", kind)
    except BaseException as exc:  # noqa: BLE001 - every exception is a result here (SystemExit too)
        if isinstance(exc, KeyboardInterrupt):
            raise
        if case.expect is None:
            return CaseResult(name, op, case.name, FAIL, f"raised {_describe(exc)} on valid input", kind)
        return _check_error(backend, case, exc)
    routed = backend.stats().ops[op].routed_reasons
    if routed and case.expect is None:
        return CaseResult(name, op, case.name, ROUTED, "; ".join(routed), kind)
    if case.expect is not None:
        return CaseResult(name, op, case.name, FAIL, f"bad input did not raise {case.expect.__name__} "
                                                      f"(returned {type(out).__name__})", kind)
    return _check_value(backend, case, call_args, saved, out, caught, reference)


def _check_error(backend: Any, case: Case, exc: BaseException) -> CaseResult:
    name, op = backend.name, case.op
    problems = []
    if not isinstance(exc, case.expect):
        problems.append(f"raised {_describe(exc)}, expected {case.expect.__name__}")
    else:
        if getattr(exc, "op", None) != op or op not in str(exc):
            problems.append(f"the {type(exc).__name__} does not name the op {op!r}: {exc}")
        calls = backend.stats().ops[op].calls
        if calls:
            problems.append("the backend's op was called before the input was rejected")
    return CaseResult(name, op, case.name, FAIL if problems else PASS, "; ".join(problems), "error")


def _check_value(backend: Any, case: Case, call_args: tuple, saved: tuple, result: Any,
                 caught: list, reference: Any) -> CaseResult:
    name, op = backend.name, case.op
    tol = tolerance_for(op, case.name)
    out = CaseResult(name, op, case.name, PASS, "", "value", tolerance=tol)
    problems: list[str] = []

    stats = backend.stats().ops[op]
    if stats.implemented_by != name or stats.fallbacks or stats.routed or stats.calls != 1:
        problems.append(f"the backend did not run the op itself (stats: calls={stats.calls}, "
                        f"fallbacks={stats.fallbacks}, routed={stats.routed}, implemented_by={stats.implemented_by!r})")

    if OPS[op].numpy_result:
        if not isinstance(result, np.ndarray):
            problems.append(f"returned {type(result).__name__}, expected a NumPy array")
    else:
        own = type(backend.from_numpy(np.zeros(1, np.float32)))
        if not isinstance(result, own):
            problems.append(f"returned {type(result).__name__}, expected the backend's array type "
                            f"{own.__name__} (what from_numpy returns)")
    try:
        got = np.asarray(backend.to_numpy(result))
    except Exception as exc:  # noqa: BLE001
        out.status, out.reason = FAIL, "; ".join(problems + [f"to_numpy(result) raised {_describe(exc)}"])
        return out

    for argname, arg, before in zip(OPS[op].argnames, call_args, saved):
        if not _is_array(before):
            continue
        after = np.asarray(backend.to_numpy(arg)) if case.native else arg
        if after.shape != before.shape or not np.array_equal(after, before, equal_nan=True):
            problems.append(f"modified its input {argname!r}")

    bad_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning)] if case.no_warnings else []
    if bad_warnings:
        problems.append(f"emitted RuntimeWarning: {bad_warnings[0].message}")

    with np.errstate(all="ignore"):
        expected = np.asarray(getattr(oracle, op)(*saved), dtype=np.float64)
        try:
            ref = got if reference is backend else np.asarray(reference.to_numpy(getattr(reference, op)(*saved)))
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the kit keeps going
            problems.append(f"the CPU reference raised {_describe(exc)} (a bug in sapient-backend-cpu)")
            ref = np.empty((0,))

    if got.shape != expected.shape:
        problems.append(f"result shape {got.shape} != expected {expected.shape}")
    if got.dtype != np.float32:
        problems.append(f"result dtype {got.dtype} != float32")
    if got.shape == expected.shape:
        got64 = got.astype(np.float64)
        problems += _parity(got64, expected)
        out.nmse = nmse(got64, expected)
        out.max_abs_err = max_abs_err(got64, expected)
        finite = np.isfinite(expected)
        scale = max(1.0, float(np.max(np.abs(expected[finite]))) if finite.any() else 1.0)
        if not out.nmse <= tol.nmse:
            problems.append(f"NMSE vs oracle {out.nmse:.1e} > {tol.nmse:.0e}")
        if not out.max_abs_err <= tol.max_err * scale:
            problems.append(f"max abs err {out.max_abs_err:.1e} > {tol.max_err:.0e} * {scale:.3g}")
        if ref.shape == got.shape:
            out.nmse_cpu = nmse(got64, ref)
            if not out.nmse_cpu <= REFERENCE_FACTOR * tol.nmse:
                problems.append(f"NMSE vs the CPU reference {out.nmse_cpu:.1e} > {REFERENCE_FACTOR:g} * "
                                f"{tol.nmse:.0e}")
    if problems:
        out.status, out.reason = FAIL, "; ".join(problems)
    return out


# --- running the kit -----------------------------------------------------------------------------------

def _registry(registry: Any) -> Any:
    if registry is not None:
        return registry
    import sapient_core
    return sapient_core.default_registry()


def run_conformance(name: str, *, size: str = "small", ops: Iterable[str] | None = None, registry: Any = None,
                    progress: Callable[[int, int, Case], None] | None = None) -> Report:
    """Run the kit against the backend ``name`` and return its :class:`Report`.

    :param name: what ``get_backend`` takes: a plugin's entry-point name (``"example"``, ``"mlx"``).
    :param size: ``"small"`` (default, seconds) or ``"llm"`` (a 7B-class layer; see :mod:`.cases`).
    :param ops: only these ops (default: all).
    :param registry: the :class:`sapient_core.registry.Registry` to resolve in (default: the process's).
    :param progress: called as ``progress(i, n, case)`` before each case.
    :raises BackendNotFoundError: ``name`` is not installed (``BackendUnavailableError``: not usable here).
    """
    reg = _registry(registry)
    backend = reg.get_backend(name, strict=True)
    reference = reg.get_backend("cpu", strict=True)
    cases = build_cases(size, ops)
    results: list[CaseResult] = []
    skipped: set[str] = set()
    for i, case in enumerate(cases):
        if progress is not None:
            progress(i, len(cases), case)
        if case.op not in backend.implemented_ops:
            if case.op not in skipped:
                skipped.add(case.op)
                results.append(CaseResult(backend.name, case.op, "*", NOT_IMPLEMENTED,
                                          "served by the CPU reference", "value"))
            continue
        results.append(run_case(backend, case, reference))
    return Report(backend.name, backend.device, backend.capabilities.version, kit_sizes(size).name,
                  tuple(backend.implemented_ops), results)


# --- pytest --------------------------------------------------------------------------------------------

def check_case(name: str, case: Case, *, registry: Any = None) -> CaseResult:
    """Run one case in a pytest test: fail the test on a failure, skip it (with the reason) when the
    backend declines the input or does not implement the op."""
    import pytest

    reg = _registry(registry)
    backend = reg.get_backend(name, strict=True)
    result = run_case(backend, case, reg.get_backend("cpu", strict=True))
    if result.status == FAIL:
        pytest.fail(f"{backend.name} {case.id}: {result.reason}", pytrace=False)
    if result.status in (DECLINED, ROUTED, NOT_IMPLEMENTED, NOT_RUN):
        pytest.skip(f"{backend.name} {case.id}: {result.status}: {result.reason}")
    return result


def conformance_tests(name: str, *, size: str = "small", ops: Iterable[str] | None = None,
                      expected_failures: dict[str, str] | None = None) -> Callable:
    """A pytest test function, parametrised over every case, that runs the kit against ``name``.

    In a plugin's own test suite::

        from sapient_core.testing import conformance_tests

        test_conformance = conformance_tests("example")

    Failures fail; declined inputs and ops served by the CPU reference are skipped with the reason
    (``pytest -rs`` lists them).

    :param expected_failures: ``{"op:case": reason}`` for known bugs: those cases are marked
        ``xfail(strict=True)`` with the reason, so they are listed, and a fix is noticed.
    """
    import pytest

    cases = build_cases(size, ops)
    expected = dict(expected_failures or {})
    unknown = set(expected) - {c.id for c in cases}
    if unknown:
        raise ValueError(f"conformance_tests: expected_failures names no case: {', '.join(sorted(unknown))} "
                         f"(case ids look like 'rms_norm:prefill'; see sapient_core.testing.build_cases())")
    params = [pytest.param(c, id=c.id, marks=pytest.mark.xfail(reason=expected[c.id], strict=True))
              if c.id in expected else pytest.param(c, id=c.id) for c in cases]

    @pytest.mark.parametrize("sapient_case", params)
    def test_sapient_conformance(sapient_case: Case) -> None:
        check_case(name, sapient_case)

    test_sapient_conformance.__doc__ = f"The sapient_core conformance kit against {name!r} ({size})."
    return test_sapient_conformance
