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

from ._ops import RESULT_SHAPES, TRUSTED, OpMethods
from .errors import BackendOpError, OpDeclined, ShapeError, is_interrupt
from .hookspecs import META_HOOKS, OPS, POSITIONS, OpSpec
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

    __slots__ = ("calls", "trusted", "impl", "lock", "divert", "array_type", "to_numpy", "failed", "bad_result")

    def __init__(self, impl: Callable[..., Any], *, trusted: bool, lock: Any = None):
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
    pick = operator.itemgetter(*(spec_args.index(a) for a in impl_args))   # impl_args is not empty here
    if n == 1:
        return lambda *args: fn(pick(args))
    return lambda *args: fn(*pick(args))


def _axis(what: str, axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ShapeError(f"{what}: axis {axis} is out of range for {ndim} dimensions", op=what)
    return axis % ndim


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
        self._own_type: type = _ndarray if self._from_numpy_hook is None else self._probe_array_type()
        if self._own_type is not _ndarray:
            register_array_type(self._own_type)    # its arrays are accepted as inputs from now on
        self._routes: dict[str, _Route] = {}
        self._stats_lock = threading.Lock()
        self._fallbacks: dict[str, dict[str, int]] = {}
        self._routed: dict[str, dict[str, int]] = {}
        self.implemented_ops: tuple[str, ...] = record.implemented_ops
        self._cross: Any = None
        if self.cross_check > 0 and record is not reference:
            from .crosscheck import CrossCheck
            self._cross = CrossCheck(self, self.cross_check)
        for spec in OPS.values():
            route = self._build_route(spec, record, reference)
            self._routes[spec.name] = route
            setattr(self, f"_r_{spec.name}", route)
            if route.trusted:   # the same method without the route lookup and branches (see _codegen)
                setattr(self, spec.name, TRUSTED[spec.name](route))

    def _build_route(self, spec: OpSpec, record: "PluginRecord", reference: "PluginRecord") -> _Route:
        ref_fn, ref_args = reference.impls[spec.name]
        ref_impl = _adapt(ref_fn, spec.argnames, ref_args)
        if record is reference:
            return _Route(ref_impl, trusted=True)
        if spec.name not in record.impls:      # not implemented: the reference serves it
            return _Route(self._served_by_reference(spec, ref_impl), trusted=True)
        fn, impl_args = record.impls[spec.name]
        route = _Route(_adapt(fn, spec.argnames, impl_args), trusted=False, lock=self._lock)
        route.array_type = self._own_type
        route.to_numpy = self._to_numpy_unlocked
        route.failed = lambda exc, args: self._fallback(spec, ref_impl, args, exc)
        route.bad_result = lambda y, args: self._check_result(spec, route, ref_impl, y, args)
        cross = self._cross.call(spec, route, ref_impl) if self._cross is not None else None
        conditions = self._routing_conditions(spec, tuple(impl_args), record.caps.api_version)  # type: ignore[union-attr]
        if conditions:
            route.divert = self._router(spec, route, ref_impl, conditions, then=cross)
        elif cross is not None:
            route.divert = cross
        return route

    def _routing_conditions(self, spec: OpSpec, impl_args: tuple[str, ...],
                            api_version: int) -> list[tuple[int, Callable[[Any], bool], str]]:
        """``(argument index, test, reason)`` for each kind of call the implementation cannot take."""
        conditions = []
        for i, arg in enumerate(spec.args):
            if arg.has_default and arg.name not in impl_args:
                if arg.default is None:
                    test: Callable[[Any], bool] = lambda v: v is not None  # noqa: E731
                else:
                    test = lambda v, d=arg.default: v != d  # noqa: E731
                conditions.append((i, test, f"{self.name}'s {spec.name}{impl_args} does not take {arg.name!r} "
                                            f"(added in hook API {arg.since}), which this call sets"))
            if arg.kind == POSITIONS and api_version < 2:
                conditions.append((i, lambda v: len(v.shape) == 2,
                                   f"{self.name} was built for hook API {api_version}, whose {spec.name} takes "
                                   f"(S,) positions only, and this call passes (B, S) positions"))
        return conditions

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

    # --- layout: what an engine needs between ops, so that it never calls the array type's methods --------

    def _meta(self, hook: str) -> Callable[..., Any] | None:
        impl = self._record.impls.get(hook)
        if impl is None:
            return None
        return _adapt(impl[0], META_HOOKS[hook], impl[1])

    def concatenate(self, arrays: Iterable[Any], axis: int = 0) -> Any:
        """Concatenate along ``axis`` in this backend's array type (on the device where it can)."""
        arrays = list(arrays)
        hook = self._meta("backend_concatenate")
        if hook is None:
            return self.from_numpy(np.concatenate([self.to_numpy(a) for a in arrays], axis))
        return self._locked(hook, arrays, axis)

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any:
        """``x`` reshaped to ``shape`` (one entry may be -1), in this backend's array type."""
        shape = tuple(int(n) for n in shape)
        if x.__class__ is _ndarray:
            return x.reshape(shape)
        hook = self._meta("backend_reshape")
        if hook is None:
            return self.from_numpy(self.to_numpy(x).reshape(shape))
        return self._locked(hook, x, shape)

    def transpose(self, x: Any, axes: tuple[int, ...]) -> Any:
        """``x`` with its axes permuted (NumPy's ``transpose(x, axes)``), in this backend's array type."""
        axes = tuple(int(a) for a in axes)
        if x.__class__ is _ndarray:
            return x.transpose(axes)
        hook = self._meta("backend_transpose")
        if hook is None:
            return self.from_numpy(self.to_numpy(x).transpose(axes))
        return self._locked(hook, x, axes)

    def slice(self, x: Any, axis: int, start: int, stop: int) -> Any:
        """``x[..., start:stop, ...]`` along ``axis`` (a view where the array type has views)."""
        shape = tuple(x.shape)
        axis = _axis("slice", axis, len(shape))
        if not 0 <= start <= stop <= shape[axis]:
            raise ShapeError(f"slice: need 0 <= start <= stop <= {shape[axis]} on axis {axis}, got start={start}, "
                             f"stop={stop} (x {shape})", op="slice", shapes={"x": shape})
        if x.__class__ is _ndarray:
            return x[(slice(None),) * axis + (slice(start, stop),)]
        hook = self._meta("backend_slice")
        if hook is None:
            return self.from_numpy(self.to_numpy(x)[(slice(None),) * axis + (slice(start, stop),)])
        return self._locked(hook, x, axis, start, stop)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A new float32 array of zeros, in this backend's array type (on the device)."""
        shape = tuple(int(n) for n in shape)
        hook = self._meta("backend_zeros")
        if hook is None:
            return self.from_numpy(np.zeros(shape, np.float32))
        return self._locked(hook, shape)

    def write(self, dst: Any, src: Any, axis: int, start: int) -> Any:
        """Write ``src`` into ``dst`` at ``start`` along ``axis`` (in place where the array type allows it, as
        a KV cache appends); use the returned array from then on (``dst`` itself when written in place)."""
        ds, ss = tuple(dst.shape), tuple(src.shape)
        axis = _axis("write", axis, len(ds))
        if (len(ss) != len(ds) or ss[:axis] + ss[axis + 1:] != ds[:axis] + ds[axis + 1:]
                or not 0 <= start <= ds[axis] - ss[axis]):
            raise ShapeError(f"write: src {ss} does not fit into dst {ds} at {start} along axis {axis}", op="write",
                             shapes={"dst": ds, "src": ss})
        index = (slice(None),) * axis + (slice(start, start + ss[axis]),)
        if dst.__class__ is _ndarray:
            dst[index] = self.to_numpy(src)
            return dst
        hook = self._meta("backend_write")
        if hook is None:
            host = np.array(self.to_numpy(dst), copy=True)
            host[index] = self.to_numpy(src)
            return self.from_numpy(host)
        return self._locked(hook, dst, src, axis, start)

    def eval(self, *arrays: Any) -> None:
        """Evaluate pending results on the device, without a copy to the host (lazy backends such as MLX;
        a no-op elsewhere).  An engine calls it once per step, as mlx-lm does."""
        hook = self._meta("backend_eval")
        if hook is not None:
            self._locked(hook, [a for a in arrays if a is not None])

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
        if exc is not None and is_interrupt(exc):
            raise exc                                  # Ctrl-C is the user's, not the plugin's
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
        try:
            return self._reference_call(spec, ref_impl, args)
        except Exception as ref_exc:
            # E.g. a lazy device whose failed graph also holds this op's inputs: they cannot be brought to
            # the host either.  Say both, rather than surface the second error alone.
            raise BackendOpError(
                f"{self.name}.{spec.name} {what} ({reason}), and the CPU reference could not take over: "
                f"{type(ref_exc).__name__}: {ref_exc}", backend=self.name, op=spec.name, reason=reason,
                declined=declined) from ref_exc

    def _probe_array_type(self) -> type:
        """The type the plugin's ``backend_from_numpy`` returns (NumPy's when that hook is broken)."""
        try:
            return type(self._locked(self._from_numpy_hook, np.zeros((0,), np.float32)))
        except BaseException as exc:  # noqa: BLE001 - a broken from_numpy: only NumPy results are accepted
            if is_interrupt(exc):
                raise
            return _ndarray

    def _result_problem(self, spec: OpSpec, y: Any, args: tuple) -> str | None:
        """What is wrong with the plugin's result ``y`` (None when it is right after all)."""
        if spec.numpy_result:
            if not isinstance(y, _ndarray):
                return f"returned {type(y).__name__}, not a NumPy array"
        elif not isinstance(y, (_ndarray, self._own_type)):
            own = self._own_type
            allowed = "a NumPy array" + ("" if own is _ndarray else f" or {own.__module__}.{own.__qualname__}")
            return f"returned {type(y).__name__}, not {allowed}"
        try:
            dtype, shape = y.dtype, tuple(y.shape)
        except Exception as exc:  # noqa: BLE001 - an array-like without dtype/shape is a wrong result
            return f"returned a {type(y).__name__} without a readable dtype and shape ({exc})"
        if float_dtype_name(dtype) != "float32":
            return f"returned dtype {dtype}, not float32"
        expected = tuple(RESULT_SHAPES[spec.name](*args))
        if shape != expected:
            return f"returned shape {shape}, expected {expected}"
        return None

    def _check_result(self, spec: OpSpec, route: _Route, ref_impl: Callable[..., Any], y: Any, args: tuple) -> Any:
        problem = self._result_problem(spec, y, args)
        if problem is None:
            return y
        return self._fallback(spec, ref_impl, args, None, reason=f"wrong result: {problem}")

    def _router(self, spec: OpSpec, route: _Route, ref_impl: Callable[..., Any],
                conditions: list[tuple[int, Callable[[Any], bool], str]],
                then: Callable[[tuple], Any] | None = None) -> Callable[[tuple], Any]:
        """Calls the implementation cannot take (an argument it does not know is set, (B, S) positions for a
        hook API 1 plugin) go to the CPU reference, counted as routed and logged once; the others to ``then``
        (the cross-check, when on) or the plugin."""

        def divert(args: tuple) -> Any:
            for i, test, reason in conditions:
                if test(args[i]):
                    self._count(self._routed, spec.name, reason)
                    self._log_once(spec.name, reason, "%s; the CPU reference computes such calls (logged once; "
                                   "see Backend.stats())", reason)
                    return self._reference_call(spec, ref_impl, args)
            if then is not None:
                return then(args)
            return self._plugin_call(spec, route, args)
        return divert

    def _call_impl(self, spec: OpSpec, route: _Route, args: tuple) -> Any:
        """Call the plugin's implementation as the op methods do: under its lock when it has one, a
        NumPy-result op's result brought to NumPy under the same lock.  Raises what the plugin raises."""
        if route.lock is None:
            y = route.impl(*args)
            if spec.numpy_result and y.__class__ is not _ndarray:
                y = self._to_numpy_unlocked(y)
            return y
        with route.lock:
            y = route.impl(*args)
            if spec.numpy_result and y.__class__ is not _ndarray:
                y = self._to_numpy_unlocked(y)
            return y

    def _plugin_call(self, spec: OpSpec, route: _Route, args: tuple) -> Any:
        """The op method's normal path, for calls that went through ``divert`` (same checks)."""
        try:
            y = self._call_impl(spec, route, args)
        except BaseException as exc:  # as the op methods: a plugin's SystemExit is its fault
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
