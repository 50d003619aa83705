"""Cross-check mode: the CPU reference also computes a fraction of a backend's calls, and every disagreement
is logged and counted.

Turned on per backend object, ``get_backend(kind, cross_check=0.1)``, or for the process with
``SAPIENT_CROSS_CHECK=0.1`` (see :mod:`sapient_core.switches`); ``0`` (the default) is off, ``1`` checks
every call.  It is meant for an engine author running a real workload on a new backend: where does it
diverge from the reference, how often, and how?

On a cross-checked call of an op the plugin implements, the dispatcher copies the array arguments,
calls the plugin as usual, and then computes the CPU reference's result from the copies.  It compares the
two with the conformance kit's tolerances for the op (:mod:`sapient_core.testing.tolerances`), the way
the kit compares a result with the CPU reference:

- NMSE above ``4 * nmse`` (two results within ``nmse`` of the exact one are within ``4 * nmse`` of each
  other), over the elements finite in both;
- max abs error above ``2 * max_err * max(1, max |reference|)``;
- NaN, +Inf or -Inf where the reference has none, or missing where it has one;
- an array argument the plugin modified (compared with the copy taken before the call).

Each kind of disagreement is logged once per (backend, op, kind) on the ``sapient_core`` logger, with the
figures of the first occurrence, and every one is counted: ``Backend.stats().ops[op]`` has
``cross_checked`` (calls compared), ``disagreements`` (calls that disagreed) and
``disagreement_reasons`` (``{kind: count}``).

**The caller gets the plugin's result**, as without cross-checking: the mode observes, it does not
correct, so a workload computes the same thing with and without it.  In strict mode a disagreement
raises :class:`sapient_core.BackendOpError` (reason ``"cross-check: ..."``) instead of returning a result
known to be wrong; it is counted first.

Which calls: deterministic, per op of a backend object.  With the fraction written as the ratio ``p/q``
(``0.1`` = 1/10), the ``k``-th call (``k = 0, 1, ...``) is checked when ``k * p mod q < p``: exactly ``p``
of every ``q`` consecutive calls, the first call included.  Calls that fail or return a wrong result
fall back as usual (``fallbacks``) and are not compared; calls routed to the reference
(``routed``) are not either, nor are the ops the CPU reference serves.  The per-case tolerance
widenings of the kit (a layer norm of inputs with a mean of 1000, RoPE beyond position 1100) do not
apply: a disagreement there may be float32 rounding; the logged figures say by how much.

Off, it costs nothing: no route has a divert for it, so the op methods run their usual path.  On, every
call of an implemented op takes the dispatcher's general path (a few microseconds), and a checked call
also costs the copies and the reference computation.
"""

from __future__ import annotations

import fractions
import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import BackendOpError

if TYPE_CHECKING:
    from .backend import Backend, _Route
    from .hookspecs import OpSpec

__all__ = ["CrossCheck", "compare", "REFERENCE_NMSE_FACTOR", "REFERENCE_MAX_ERR_FACTOR"]

#: A disagreement is an NMSE against the reference above this times the op's NMSE tolerance ...
REFERENCE_NMSE_FACTOR = 4.0
#: ... or a max abs error above this times the op's max-abs-error tolerance (times max(1, max |ref|)).
REFERENCE_MAX_ERR_FACTOR = 2.0

_SPECIALS = (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf))


def compare(op: str, got: Any, ref: Any) -> dict[str, str]:
    """How ``got`` (a plugin's result) disagrees with ``ref`` (the CPU reference's), as ``{kind: figures}``;
    empty when they agree within the op's tolerances.  Both have the same shape."""
    from .testing.conformance import max_abs_err, nmse
    from .testing.tolerances import TOLERANCES

    tol = TOLERANCES[op]
    found: dict[str, str] = {}
    with np.errstate(all="ignore"):
        g = np.asarray(got, dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        for what, test in _SPECIALS:
            extra = np.argwhere(test(g) & ~test(r))
            missing = np.argwhere(test(r) & ~test(g))
            if len(extra):
                found[f"{what} where the CPU reference has none"] = (
                    f"{len(extra)} element(s), first at {tuple(int(i) for i in extra[0])}")
            if len(missing):
                found[f"no {what} where the CPU reference has {what}"] = (
                    f"{len(missing)} element(s), first at {tuple(int(i) for i in missing[0])}")
        e = nmse(g, r)
        limit = REFERENCE_NMSE_FACTOR * tol.nmse
        if not e <= limit:
            found[f"NMSE above {REFERENCE_NMSE_FACTOR:g} x {tol.nmse:.0e}"] = f"NMSE {e:.1e} > {limit:.1e}"
        finite = np.isfinite(r)
        scale = max(1.0, float(np.max(np.abs(r[finite]))) if finite.any() else 1.0)
        m = max_abs_err(g, r)
        limit = REFERENCE_MAX_ERR_FACTOR * tol.max_err * scale
        if not m <= limit:
            found[f"max abs error above {REFERENCE_MAX_ERR_FACTOR:g} x {tol.max_err:.0e} x max(1, max |reference|)"] = (
                f"max abs error {m:.1e} > {limit:.1e}")
    return found


class CrossCheck:
    """The cross-checking of one :class:`sapient_core.Backend` (see the module docstring)."""

    def __init__(self, backend: "Backend", fraction: float):
        self.backend = backend
        ratio = fractions.Fraction(fraction).limit_denominator(1_000_000)
        self._p, self._q = ratio.numerator, ratio.denominator
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}
        self.checked: dict[str, int] = {}
        self.disagreements: dict[str, int] = {}
        self.reasons: dict[str, dict[str, int]] = {}

    # --- which calls --------------------------------------------------------------------------------

    def _sampled(self, op: str) -> bool:
        with self._lock:
            k = self._seen.get(op, 0)
            self._seen[op] = k + 1
        return (k * self._p) % self._q < self._p

    def call(self, spec: "OpSpec", route: "_Route", ref_impl: Callable[..., Any]) -> Callable[[tuple], Any]:
        """The function the op's route diverts its calls to: the plugin's call, compared when sampled."""
        backend = self.backend

        def cross_checked(args: tuple) -> Any:
            if not self._sampled(spec.name):
                return backend._plugin_call(spec, route, args)
            return self._checked_call(spec, route, ref_impl, args)
        return cross_checked

    # --- one checked call ---------------------------------------------------------------------------

    def _checked_call(self, spec: "OpSpec", route: "_Route", ref_impl: Callable[..., Any], args: tuple) -> Any:
        b = self.backend
        before = b._locked(self._copies, spec, args)
        try:
            y = b._call_impl(spec, route, args)
        except BaseException as exc:            # as the op methods: a plugin's SystemExit is its fault
            return route.failed(exc, args)      # type: ignore[misc]  # a failure: the fallback, not compared
        checked = route.bad_result(y, args)     # type: ignore[misc]  # y itself when it is right
        if checked is not y:                    # a wrong result: the fallback's
            return checked
        got = b._locked(b._to_numpy_unlocked, y)
        ref_args = tuple(before.get(arg.name, a) if arg.is_array else a for arg, a in zip(spec.args, args))
        with np.errstate(all="ignore"):
            ref = np.asarray(ref_impl(*ref_args))
        found = compare(spec.name, got, ref)
        after = b._locked(self._copies, spec, args, False)
        for name, old in before.items():
            new = after.get(name)
            if new is None or new.shape != old.shape or not np.array_equal(new, old, equal_nan=True):
                found[f"modified its input {name!r}"] = "the array differs after the call from a copy taken before"
        self._record(spec, args, found)
        return y

    def _copies(self, spec: "OpSpec", args: tuple, copy: bool = True) -> dict[str, np.ndarray]:
        """The array arguments as NumPy (copies when ``copy``), by name."""
        b = self.backend
        out = {}
        for arg, a in zip(spec.args, args):
            if arg.is_array and a is not None:
                x = b._to_numpy_unlocked(a)
                out[arg.name] = np.array(x, copy=True) if copy else np.asarray(x)
        return out

    def _record(self, spec: "OpSpec", args: tuple, found: dict[str, str]) -> None:
        b, op = self.backend, spec.name
        with b._stats_lock:
            self.checked[op] = self.checked.get(op, 0) + 1
            if found:
                self.disagreements[op] = self.disagreements.get(op, 0) + 1
                per_op = self.reasons.setdefault(op, {})
                for kind in found:
                    per_op[kind] = per_op.get(kind, 0) + 1
        if not found:
            return
        shapes = ", ".join(f"{arg.name} {tuple(a.shape)} {a.dtype}" for arg, a in zip(spec.args, args)
                           if arg.is_array and a is not None and hasattr(a, "shape"))
        outcome = ("strict mode raises BackendOpError" if b.strict else
                   f"the caller got {b.name}'s result")
        for kind, figures in found.items():
            b._log_once(op, f"cross-check: {kind}",
                        "%s.%s disagrees with the CPU reference on a cross-checked call: %s (%s; inputs %s); %s. "
                        "Logged once per backend, op and kind of disagreement; every one is counted in "
                        "Backend.stats()", b.name, op, kind, figures, shapes or "none", outcome)
        if b.strict:
            detail = "; ".join(f"{kind} ({figures})" for kind, figures in found.items())
            raise BackendOpError(
                f"{b.name}.{op} disagrees with the CPU reference on a cross-checked call ({detail}) and strict mode "
                f"is on, so its result was not returned. To get the plugin's results and the disagreements counted "
                f"instead: pass strict=False (or unset SAPIENT_STRICT)",
                backend=b.name, op=op, reason=f"cross-check: {detail}")

    # --- reporting ----------------------------------------------------------------------------------

    def counts(self, op: str) -> tuple[int, int, dict[str, int]]:
        """``(cross_checked, disagreements, disagreement_reasons)`` of ``op`` (call under the stats lock)."""
        return self.checked.get(op, 0), self.disagreements.get(op, 0), dict(self.reasons.get(op, {}))

    def reset(self) -> None:
        """Zero the counters and restart the sampling (call under the stats lock)."""
        self.checked.clear()
        self.disagreements.clear()
        self.reasons.clear()
        with self._lock:
            self._seen.clear()
