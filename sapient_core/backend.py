"""The object ``get_backend`` returns: one typed method per op, and the fallback behind them.

The op methods themselves live in :mod:`sapient_core._ops` (generated from the declarations in
:mod:`sapient_core.hookspecs`; see :mod:`sapient_core._codegen` for what each does).  This module
builds, for each op, the :class:`_Route` those methods read: the winning implementation, whether it
is trusted (the CPU reference: no lock, no fallback, no result check), the plugin's lock, and the
slow paths: the fallback to the CPU reference when the plugin raises, declines or returns a wrong
result (one warning per (plugin, op, reason) on the ``sapient_core`` logger, counted in
:meth:`Backend.stats`; in strict mode a :class:`BackendOpError` instead), and the routing of calls
that set an argument the plugin's implementation does not take.

Bad input raises the same error on every backend (the core validates before any plugin code runs)
and is never turned into a fallback.  A backend that is not thread-safe has every call into the
plugin, conversions included, serialised by one lock shared by all its backend objects.
"""

from __future__ import annotations

import logging
import operator
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from ._ops import OpMethods
from .errors import BackendOpError, OpDeclined, is_interrupt
from .hookspecs import OPS, OpSpec
from .validate import float_dtype_name, register_array_type

if TYPE_CHECKING:
    from ._plugin import PluginRecord
    from .models import Capabilities, Explanation, MemoryInfo, Stats

__all__ = ["Backend"]

logger = logging.getLogger("sapient_core")

_ndarray = np.ndarray
_WARNED_LOCK = threading.Lock()
_FALLBACK_NOTE = "the CPU reference computes it instead (logged once per backend, op and reason; see Backend.stats())"


class _Route:
    """What the op method of one op of one backend calls (read on every call: keep it flat)."""

    __slots__ = ("op", "calls", "trusted", "impl", "lock", "divert", "array_type", "to_numpy", "failed",
                 "bad_result")

    def __init__(self, op: str, impl: Callable[..., Any], *, trusted: bool, lock: Any = None):
        self.op = op
        self.calls = 0
        self.trusted = trusted
        self.impl = impl
        self.lock = lock
        self.divert: Callable[[tuple], Any] | None = None
        self.array_type: type = _ndarray
        self.to_numpy: Callable[[Any], Any] = np.asarray
        self.failed: Callable[[BaseException, tuple], Any] | None = None
        self.bad_result: Callable[[Any, tuple], Any] | None = None


def _adapt(fn: Callable[..., Any], spec_args: tuple[str, ...], impl_args: tuple[str, ...]) -> Callable[..., Any]:
    """Call ``fn`` (which takes ``impl_args``, a subset of the spec's) with the spec's positional args."""
    if impl_args == spec_args:
        return fn
    n = len(impl_args)
    if impl_args == spec_args[:n]:
        return lambda *args: fn(*args[:n])
    pick = operator.itemgetter(*(spec_args.index(a) for a in impl_args)) if impl_args else None
    if n == 1:
        return lambda *args: fn(pick(args))              # type: ignore[misc]
    return lambda *args: fn(*pick(args)) if pick else fn()  # type: ignore[misc]


def _result_shape(spec: OpSpec) -> Callable[..., tuple]:
    """``spec.result_shape`` as a function of the op's arguments (for the slow path's messages)."""
    from . import _ops
    return getattr(_ops, f"_shape_{spec.name}")


class Backend(OpMethods):
    """A resolved backend: call its ops as methods, e.g. ``backend.rms_norm(x, w, 1e-6)``.

    :ivar name: the plugin's name (``"cpu"``, ``"mlx"`` ...).
    :ivar device: the device it runs on.
    :ivar capabilities: the plugin's :class:`sapient_core.Capabilities` report.
    :ivar thread_safe: whether calls may run concurrently (if False, the dispatcher serialises them).
    :ivar strict: whether a failing op raises :class:`BackendOpError` instead of falling back.
    :ivar cross_check: the fraction of calls the CPU reference also computes, to compare (0: off; see
        :mod:`sapient_core.crosscheck`).
    :ivar implemented_ops: the ops this plugin implements itself; the others are served by the CPU
        reference.
    :ivar explanation: how this backend object was chosen (the :class:`sapient_core.Explanation` of
        the resolution that created it; later lookups that return the same object do not change it).
    """

    def __init__(self, record: "PluginRecord", reference: "PluginRecord", *, strict: bool = False,
                 explanation: "Explanation | None" = None, cross_check: float = 0.0):
        caps = record.caps
        assert caps is not None and reference.caps is not None
        self._record = record
        self.name: str = caps.name
        self.device: str = caps.device
        self.capabilities: Capabilities = caps
        self.thread_safe: bool = caps.thread_safe
        self.strict: bool = bool(strict)
        self.cross_check: float = float(cross_check)
        self.explanation = explanation
        self._lock = None if caps.thread_safe else record.lock
        hook = record.impls.get("backend_to_numpy")
        self._to_numpy_hook: Callable[[Any], Any] = hook[0] if hook else np.asarray
        hook = record.impls.get("backend_from_numpy")
        self._from_numpy_hook: Callable[[Any], Any] | None = hook[0] if hook else None
        self._converts = self._from_numpy_hook is not None or self._to_numpy_hook is not np.asarray
        self._own_type: type | None = None if self._from_numpy_hook is not None else _ndarray
        self._routes: dict[str, _Route] = {}
        if self._from_numpy_hook is not None:
            register_array_type(self._own_array_type())    # its arrays are accepted as inputs from now on
        self._stats_lock = threading.Lock()
        self._fallbacks: dict[str, dict[str, int]] = {}
        self._routed: dict[str, dict[str, int]] = {}
        self.implemented_ops: tuple[str, ...] = tuple(op for op in OPS if op in record.impls)
        self._cross: Any = None
        if self.cross_check > 0 and record is not reference:
            from .crosscheck import CrossCheck
            self._cross = CrossCheck(self, self.cross_check)
        for spec in OPS.values():
            route = self._build_route(spec, record, reference)
            self._routes[spec.name] = route
            setattr(self, f"_r_{spec.name}", route)

    def _build_route(self, spec: OpSpec, record: "PluginRecord", reference: "PluginRecord") -> _Route:
        ref_fn, ref_args = reference.impls[spec.name]
        ref_impl = _adapt(ref_fn, spec.argnames, ref_args)
        if record is reference:
            return _Route(spec.name, ref_impl, trusted=True)
        if spec.name not in record.impls:      # not implemented: the reference serves it
            return _Route(spec.name, self._served_by_reference(spec, ref_impl), trusted=True)
        fn, impl_args = record.impls[spec.name]
        route = _Route(spec.name, _adapt(fn, spec.argnames, impl_args), trusted=False, lock=self._lock)
        route.array_type = self._own_type or _ndarray
        route.to_numpy = self._to_numpy_unlocked
        route.failed = lambda exc, args: self._fallback(spec, ref_impl, args, exc)
        route.bad_result = lambda y, args: self._check_result(spec, route, ref_impl, y, args)
        cross = self._cross.call(spec, route, ref_impl) if self._cross is not None else None
        lacking = [a for a in spec.args if a.has_default and a.name not in impl_args]
        if lacking:
            route.divert = self._router(spec, route, ref_impl, lacking, tuple(impl_args), then=cross)
        elif cross is not None:
            route.divert = cross
        return route

    # --- data ---------------------------------------------------------------------------------------

    def _to_numpy_unlocked(self, x: Any) -> Any:
        if x is None or x.__class__ is _ndarray:
            return x
        try:
            return np.asarray(self._to_numpy_hook(x))
        except Exception:
            raise
        except BaseException as exc:        # SystemExit & co. from the plugin: its failure, not the program's end
            raise self._hook_error("backend_to_numpy", exc) from exc

    def _hook_error(self, hook: str, exc: BaseException) -> BaseException:
        """A BaseException a plugin's hook raised, as an error of that backend (KeyboardInterrupt stays)."""
        if is_interrupt(exc):
            return exc
        reason = f"{type(exc).__name__}: {exc}"
        return BackendOpError(f"{self.name}.{hook}() raised {reason}; a plugin's hook must not end the program, so "
                              f"it is reported as this error", backend=self.name, op=hook, reason=reason)

    def _locked(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._lock is None:
            return fn(*args)
        with self._lock:
            return fn(*args)

    def to_numpy(self, x: Any) -> np.ndarray:
        """Return a result of this backend (or any array) as a NumPy array."""
        if x.__class__ is _ndarray:
            return x  # type: ignore[no-any-return]
        return self._locked(self._to_numpy_unlocked, x)  # type: ignore[no-any-return]

    def from_numpy(self, x: Any) -> Any:
        """Return the NumPy array ``x`` in this backend's own array type (unchanged when it has none)."""
        if self._from_numpy_hook is None:
            return x
        try:
            return self._locked(self._from_numpy_hook, x)
        except Exception:
            raise
        except BaseException as exc:
            raise self._hook_error("backend_from_numpy", exc) from exc

    def concatenate(self, arrays: Iterable[Any], axis: int = 0) -> Any:
        """Concatenate along ``axis`` in this backend's array type (on the device where it can)."""
        arrays = list(arrays)
        hook = self._record.impls.get("backend_concatenate")
        if hook is None:
            return self.from_numpy(np.concatenate([self.to_numpy(a) for a in arrays], axis))
        return self._locked(hook[0], arrays, axis)

    # --- the reference, for a call the plugin does not compute ---------------------------------------

    def _numpy_args(self, spec: OpSpec, args: tuple) -> tuple:
        """The call's array arguments as NumPy (scalars unchanged), for the CPU reference."""
        return tuple(self._to_numpy_unlocked(a) if arg.is_array else a for arg, a in zip(spec.args, args))

    def _reference_call(self, spec: OpSpec, ref_impl: Callable[..., Any], args: tuple) -> Any:
        if not self._converts:
            return ref_impl(*args)
        result = ref_impl(*self._locked(self._numpy_args, spec, args))
        if spec.numpy_result or self._from_numpy_hook is None:
            return result
        return self._locked(self._from_numpy_hook, result)

    def _served_by_reference(self, spec: OpSpec, ref_impl: Callable[..., Any]) -> Callable[..., Any]:
        if not self._converts:
            return ref_impl
        return lambda *args: self._reference_call(spec, ref_impl, args)

    # --- the slow paths -----------------------------------------------------------------------------

    def _count(self, table: dict[str, dict[str, int]], op: str, reason: str) -> None:
        with self._stats_lock:
            per_op = table.setdefault(op, {})
            per_op[reason] = per_op.get(reason, 0) + 1

    def _log_once(self, op: str, reason: str, message: str, *args: Any) -> None:
        with _WARNED_LOCK:  # shared by every Backend object of the plugin: one warning per plugin
            first = (op, reason) not in self._record.warned
            self._record.warned.add((op, reason))
        if first:
            logger.warning(message, *args)

    def _fallback(self, spec: OpSpec, ref_impl: Callable[..., Any], args: tuple, exc: BaseException | None,
                  reason: str | None = None) -> Any:
        """The plugin failed this call (``exc``, or a wrong result described by ``reason``)."""
        declined = isinstance(exc, OpDeclined)
        if reason is None:
            reason = exc.reason if isinstance(exc, OpDeclined) else f"{type(exc).__name__}: {exc}"
        what = "declined the input" if declined else "failed"
        if self.strict:
            raise BackendOpError(
                f"{self.name}.{spec.name} {what} ({reason}) and strict mode is on, so the CPU reference was "
                f"not used. To allow the fallback: unset SAPIENT_STRICT or pass strict=False",
                backend=self.name, op=spec.name, reason=reason, declined=declined) from exc
        self._count(self._fallbacks, spec.name, reason)
        self._log_once(spec.name, reason, "%s.%s %s (%s); %s", self.name, spec.name, what, reason, _FALLBACK_NOTE)
        return self._reference_call(spec, ref_impl, args)

    def _own_array_type(self) -> type:
        if self._own_type is None:
            try:
                own = type(self._locked(self._from_numpy_hook, np.zeros((0,), np.float32)))
            except BaseException as exc:  # noqa: BLE001 - a broken from_numpy: only NumPy results are accepted
                if is_interrupt(exc):
                    raise
                own = _ndarray
            self._own_type = own
            for route in self._routes.values():
                route.array_type = own
        return self._own_type

    def _result_problem(self, spec: OpSpec, y: Any, args: tuple) -> str | None:
        """What is wrong with the plugin's result ``y`` (None when it is right after all)."""
        if spec.numpy_result:
            if not isinstance(y, _ndarray):
                return f"returned {type(y).__name__}, not a NumPy array"
        elif not isinstance(y, (_ndarray, self._own_array_type())):
            own = self._own_array_type()
            allowed = "a NumPy array" + ("" if own is _ndarray else f" or {own.__module__}.{own.__qualname__}")
            return f"returned {type(y).__name__}, not {allowed}"
        try:
            dtype, shape = y.dtype, tuple(y.shape)
        except Exception as exc:  # noqa: BLE001 - an array-like without dtype/shape is a wrong result
            return f"returned a {type(y).__name__} without a readable dtype and shape ({exc})"
        if float_dtype_name(dtype) != "float32":
            return f"returned dtype {dtype}, not float32"
        expected = tuple(_result_shape(spec)(*args))
        if shape != expected:
            return f"returned shape {shape}, expected {expected}"
        return None

    def _check_result(self, spec: OpSpec, route: _Route, ref_impl: Callable[..., Any], y: Any, args: tuple) -> Any:
        problem = self._result_problem(spec, y, args)
        if problem is None:
            return y
        return self._fallback(spec, ref_impl, args, None, reason=f"wrong result: {problem}")

    def _router(self, spec: OpSpec, route: _Route, ref_impl: Callable[..., Any], lacking: list,
                impl_args: tuple[str, ...], then: Callable[[tuple], Any] | None = None) -> Callable[[tuple], Any]:
        """Calls that set an argument the implementation does not take go to the reference, counted; the
        others to ``then`` (the cross-check, when on) or the plugin."""
        index = [(spec.argnames.index(a.name), a) for a in lacking]

        def divert(args: tuple) -> Any:
            for i, arg in index:
                if args[i] is not arg.default and args[i] != arg.default:
                    reason = (f"{self.name}'s {spec.name}{impl_args} does not take {arg.name!r} (added in hook API "
                              f"{arg.since}), which this call sets")
                    self._count(self._routed, spec.name, reason)
                    self._log_once(spec.name, reason, "%s; the CPU reference computes such calls (logged once; "
                                   "see Backend.stats())", reason)
                    return self._reference_call(spec, ref_impl, args)
            if then is not None:
                return then(args)
            return self._plugin_call(spec, route, args)
        return divert

    def _plugin_call(self, spec: OpSpec, route: _Route, args: tuple) -> Any:
        """The op method's normal path, for calls that went through ``divert`` (same checks)."""
        try:
            if route.lock is None:
                y = route.impl(*args)
                if spec.numpy_result and y.__class__ is not _ndarray:
                    y = self._to_numpy_unlocked(y)
            else:
                with route.lock:
                    y = route.impl(*args)
                    if spec.numpy_result and y.__class__ is not _ndarray:
                        y = self._to_numpy_unlocked(y)
        except Exception as exc:
            return route.failed(exc, args)  # type: ignore[misc]
        return route.bad_result(y, args)  # type: ignore[misc]

    # --- reporting ----------------------------------------------------------------------------------

    @property
    def memory(self) -> "MemoryInfo":
        """The device memory the plugin reported (:class:`sapient_core.MemoryInfo`)."""
        return self._record.memory

    def stats(self) -> "Stats":
        """Calls, fallbacks, routed and cross-checked calls per op, who serves each op, and the plugin's own
        statistics."""
        from .models import OpStats, Stats
        ops = {}
        with self._stats_lock:
            for op, route in self._routes.items():
                fallbacks = dict(self._fallbacks.get(op, {}))
                routed = dict(self._routed.get(op, {}))
                checked, disagreements, kinds = self._cross.counts(op) if self._cross is not None else (0, 0, {})
                ops[op] = OpStats(calls=route.calls, fallbacks=sum(fallbacks.values()), fallback_reasons=fallbacks,
                                  routed=sum(routed.values()), routed_reasons=routed,
                                  cross_checked=checked, disagreements=disagreements, disagreement_reasons=kinds,
                                  implemented_by=self.name if op in self.implemented_ops else "cpu")
        plugin = None
        hook = self._record.impls.get("backend_stats")
        if hook is not None:
            try:
                plugin = self._locked(hook[0])
            except BaseException as exc:  # noqa: BLE001 - stats must never break (or end) the caller
                if is_interrupt(exc):
                    raise
                plugin = {"error": f"backend_stats() raised {type(exc).__name__}: {exc}"}
            if not isinstance(plugin, dict):
                plugin = {"error": f"backend_stats() returned {type(plugin).__name__} {plugin!r:.80}, not a dict"}
        return Stats(backend=self.name, device=self.device, strict=self.strict, cross_check=self.cross_check, ops=ops,
                     plugin=plugin)

    def reset_stats(self) -> None:
        """Set every counter back to zero (warnings already logged stay logged; cross-check sampling restarts)."""
        with self._stats_lock:
            for route in self._routes.values():
                route.calls = 0
            self._fallbacks.clear()
            self._routed.clear()
            if self._cross is not None:
                self._cross.reset()

    def __repr__(self) -> str:
        cross = f" cross_check={self.cross_check:g}" if self.cross_check else ""
        return (f"<sapient_core.Backend {self.name!r} device={self.device!r} "
                f"thread_safe={self.thread_safe} strict={self.strict}{cross}>")
