"""The object ``get_backend`` returns: one plain method per op, bound at resolution time.

Each op method is generated once per backend (:func:`_build_op`): it validates the arguments (the
same check on every backend, so bad input raises the same error everywhere and never becomes a
fallback), counts the call, and calls the winning implementation directly (no pluggy hook call on the
hot path).  If that implementation raises or declines, the CPU reference computes the result instead,
one warning per (backend, op, reason) is logged on the ``sapient_core`` logger, and the fallback is
counted; in strict mode a :class:`BackendOpError` is raised instead.  A backend that is not thread-safe
has every call serialised by a lock shared by all its backend objects.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any, Callable

import numpy as np

from . import hookspecs
from ._plugin import Capabilities, PluginRecord
from .errors import BackendOpError, OpDeclined
from .memory import MemoryInfo
from .validate import CHECKS

__all__ = ["Backend"]

logger = logging.getLogger("sapient_core")

_ARRAY_ARGS = hookspecs.ARRAY_ARGS
_NUMPY_RESULT_OPS = hookspecs.NUMPY_RESULT_OPS
_ROPE_OPS = frozenset({"apply_rope_positions", "apply_rope_partial"})
_ndarray = np.ndarray
_WARNED_LOCK = threading.Lock()


def _count(counter: "itertools.count") -> int:
    """Read an ``itertools.count`` without advancing it (``next`` on it is atomic under the GIL).

    Its repr is ``count(N)``; ``__reduce__`` would also tell, but pickling itertools objects is
    deprecated since Python 3.12 and gone in 3.14."""
    return int(repr(counter)[6:-1])


def _adapter(fn: Callable, spec_args: tuple[str, ...], impl_args: tuple[str, ...]) -> Callable:
    """Call ``fn`` (which takes ``impl_args``, a subset of the spec's) with the spec's positional args."""
    if impl_args == spec_args:
        return fn
    src = f"def adapted({', '.join(spec_args)}):\n    return fn({', '.join(impl_args)})\n"
    ns: dict[str, Any] = {"fn": fn}
    exec(src, ns)  # noqa: S102 - generated from the fixed argument names in hookspecs.OPS
    return ns["adapted"]


def _build_op(op: str, *, check: Callable, impl: Callable, calls: Any, lock: Any,
              fallback: Callable | None, to_numpy: Callable) -> Callable:
    """Generate the op method: ``check(args); count; [lock] impl(args) [except -> fallback]``."""
    args = hookspecs.OPS[op]
    defaults = hookspecs.OP_DEFAULTS.get(op, {})
    params = ", ".join(f"{a}={defaults[a]!r}" if a in defaults else a for a in args)
    call = ", ".join(args)
    lines = [f"def {op}({params}):"]
    lines.append(f"    positions = check({call})" if op in _ROPE_OPS else f"    check({call})")
    lines.append("    next(calls)")
    indent = "    "
    if lock is not None:
        lines.append("    with lock:")
        indent = "        "
    body = f"impl({call})"
    if fallback is not None:
        lines.append(f"{indent}try:")
        lines.append(f"{indent}    r = {body}")
        lines.append(f"{indent}except Exception as exc:")
        lines.append(f"{indent}    return fallback(exc, ({call},))")
    else:
        lines.append(f"{indent}r = {body}")
    if op in _NUMPY_RESULT_OPS:
        lines.append(f"{indent}if r.__class__ is not ndarray:")
        lines.append(f"{indent}    r = to_numpy(r)")
    lines.append(f"{indent}return r")
    ns: dict[str, Any] = {"check": check, "impl": impl, "calls": calls, "lock": lock,
                          "fallback": fallback, "to_numpy": to_numpy, "ndarray": _ndarray}
    exec("\n".join(lines) + "\n", ns)  # noqa: S102 - generated from the fixed names in hookspecs.OPS
    fn = ns[op]
    fn.__doc__ = getattr(getattr(hookspecs, op), "__doc__", None)
    fn.__qualname__ = f"Backend.{op}"
    return fn


class Backend:
    """A resolved backend: call its ops as methods, e.g. ``backend.rms_norm(x, w, 1e-6)``.

    :ivar name: the plugin's name (``"cpu"``, ``"mlx"`` ...).
    :ivar device: the device it runs on.
    :ivar capabilities: the plugin's :class:`Capabilities` report.
    :ivar memory: the device memory it reported (:class:`MemoryInfo`).
    :ivar thread_safe: whether calls may run concurrently (if False, the dispatcher serialises them).
    :ivar strict: whether a failing op raises :class:`BackendOpError` instead of falling back.
    :ivar implemented_ops: the ops this plugin implements itself; the others are served by the CPU
        reference.
    :ivar explanation: how this backend was chosen (an :class:`Explanation`), when known.
    """

    def __init__(self, record: PluginRecord, reference: PluginRecord, *, strict: bool = False,
                 explanation: Any = None):
        caps = record.caps
        assert caps is not None and reference.caps is not None
        self._record = record
        self.name: str = caps.name
        self.device: str = caps.device
        self.capabilities: Capabilities = caps
        self.thread_safe: bool = caps.thread_safe
        self.strict: bool = bool(strict)
        self.explanation = explanation
        self._lock = None if caps.thread_safe else record.lock
        hook = record.impls.get("backend_to_numpy")
        self._to_numpy_hook = hook[0] if hook else np.asarray
        hook = record.impls.get("backend_from_numpy")
        self._from_numpy_hook = hook[0] if hook else None
        self._calls: dict[str, Any] = {}
        self._calls_base: dict[str, int] = dict.fromkeys(hookspecs.OPS, 0)
        self._fallbacks: dict[str, dict[str, int]] = {}
        self._fallback_lock = threading.Lock()
        self.implemented_ops: tuple[str, ...] = tuple(op for op in hookspecs.OPS if op in record.impls)
        is_reference = record is reference
        for op, spec_args in hookspecs.OPS.items():
            calls = self._calls[op] = itertools.count()
            ref_fn, ref_args = reference.impls[op]
            ref_impl = _adapter(ref_fn, spec_args, ref_args)
            if op in record.impls:
                fn, impl_args = record.impls[op]
                impl = _adapter(fn, spec_args, impl_args)
                fallback = None if is_reference else self._make_fallback(op, ref_impl)
                lock = self._lock
            else:  # not implemented: the reference serves it, on NumPy copies of the inputs
                impl = self._make_served_by_reference(op, ref_impl)
                fallback = None
                converts = self._from_numpy_hook is not None or self._to_numpy_hook is not np.asarray
                lock = self._lock if converts else None
            setattr(self, op, _build_op(op, check=CHECKS[op], impl=impl, calls=calls, lock=lock,
                                        fallback=fallback, to_numpy=self._to_numpy_unlocked))

    # --- data ---------------------------------------------------------------------------------------

    def _to_numpy_unlocked(self, x: Any) -> Any:
        if x is None or x.__class__ is _ndarray:
            return x
        return np.asarray(self._to_numpy_hook(x))

    def to_numpy(self, x: Any) -> np.ndarray:
        """Return a result of this backend (or any array) as a NumPy array."""
        if x.__class__ is _ndarray:
            return x
        if self._lock is None:
            return self._to_numpy_unlocked(x)
        with self._lock:
            return self._to_numpy_unlocked(x)

    def from_numpy(self, x: Any) -> Any:
        """Return the NumPy array ``x`` in this backend's own array type (unchanged when it has none)."""
        if self._from_numpy_hook is None:
            return x
        if self._lock is None:
            return self._from_numpy_hook(x)
        with self._lock:
            return self._from_numpy_hook(x)

    def concatenate(self, arrays: Any, axis: int = 0) -> Any:
        """Concatenate along ``axis`` in this backend's array type (on the device where it can)."""
        arrays = list(arrays)
        hook = self._record.impls.get("backend_concatenate")
        if hook is None:
            return self.from_numpy(np.concatenate([self.to_numpy(a) for a in arrays], axis))
        if self._lock is None:
            return hook[0](arrays, axis)
        with self._lock:
            return hook[0](arrays, axis)

    # --- fallback -----------------------------------------------------------------------------------

    def _numpy_args(self, op: str, args: tuple) -> tuple:
        return tuple(self._to_numpy_unlocked(a) if name in _ARRAY_ARGS else a
                     for name, a in zip(hookspecs.OPS[op], args))

    def _wrap_result(self, op: str, result: Any) -> Any:
        if op in _NUMPY_RESULT_OPS or self._from_numpy_hook is None:
            return result
        return self._from_numpy_hook(result)

    def _make_served_by_reference(self, op: str, ref_impl: Callable) -> Callable:
        if self._from_numpy_hook is None and self._to_numpy_hook is np.asarray:
            return ref_impl

        def served(*args: Any) -> Any:
            return self._wrap_result(op, ref_impl(*self._numpy_args(op, args)))
        return served

    def _make_fallback(self, op: str, ref_impl: Callable) -> Callable:
        record = self._record

        def fallback(exc: Exception, args: tuple) -> Any:
            declined = isinstance(exc, OpDeclined)
            reason = exc.reason if declined else f"{type(exc).__name__}: {exc}"
            if self.strict:
                what = "declined the input" if declined else "failed"
                raise BackendOpError(
                    f"{self.name}.{op} {what} ({reason}) and strict mode is on, so the CPU reference was "
                    f"not used. To allow the fallback: unset SAPIENT_STRICT or pass strict=False",
                    backend=self.name, op=op, reason=reason, declined=declined) from exc
            with self._fallback_lock:
                per_op = self._fallbacks.setdefault(op, {})
                per_op[reason] = per_op.get(reason, 0) + 1
            with _WARNED_LOCK:  # shared by every Backend object of the plugin: one warning per plugin
                first = (op, reason) not in record.warned
                record.warned.add((op, reason))
            if first:
                logger.warning("%s.%s %s (%s); the CPU reference computes it instead (logged once per "
                               "backend, op and reason; see Backend.stats())", self.name, op,
                               "declined the input" if declined else "failed", reason)
            return self._wrap_result(op, ref_impl(*self._numpy_args(op, args)))
        return fallback

    # --- reporting ----------------------------------------------------------------------------------

    @property
    def memory(self) -> MemoryInfo:
        return self._record.memory

    def stats(self) -> dict[str, Any]:
        """Calls and fallbacks per op, who serves each op, and the plugin's own statistics."""
        ops = {}
        with self._fallback_lock:
            for op in hookspecs.OPS:
                reasons = dict(self._fallbacks.get(op, {}))
                ops[op] = {
                    "calls": _count(self._calls[op]) - self._calls_base[op],
                    "fallbacks": sum(reasons.values()),
                    "fallback_reasons": reasons,
                    "implemented_by": self.name if op in self.implemented_ops else "cpu",
                }
        out: dict[str, Any] = {"backend": self.name, "device": self.device, "strict": self.strict,
                               "ops": ops}
        hook = self._record.impls.get("backend_stats")
        if hook is not None:
            try:
                if self._lock is None:
                    out["plugin"] = hook[0]()
                else:
                    with self._lock:
                        out["plugin"] = hook[0]()
            except Exception as exc:  # noqa: BLE001 - stats must never break the caller
                out["plugin"] = {"error": f"backend_stats() raised {type(exc).__name__}: {exc}"}
        return out

    def reset_stats(self) -> None:
        """Set every call and fallback counter back to zero (warnings already logged stay logged)."""
        with self._fallback_lock:
            for op in hookspecs.OPS:
                self._calls_base[op] = _count(self._calls[op])
            self._fallbacks.clear()

    def __repr__(self) -> str:
        return (f"<sapient_core.Backend {self.name!r} device={self.device!r} "
                f"thread_safe={self.thread_safe} strict={self.strict}>")
