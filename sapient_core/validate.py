"""Input validation for every op, done once in the core before any backend sees the arguments.

Each ``check_<op>`` takes the op's arguments, raises :class:`ShapeError` (a ``ValueError``),
:class:`DTypeError` (a ``TypeError``) or :class:`ArgumentError` (a ``ValueError``: an argument's value
outside what the op accepts) naming the op and every shape involved, and returns None, except the
RoPE checks, which return the positions as an integer array (lists and ranges are accepted).  The full
checks read only ``.shape`` and ``.dtype`` of the arrays, so they work for NumPy arrays and for any
backend's array type (``mx.array`` included); ``check_embedding`` alone also reads values (the ids,
brought to the host, are range-checked).  Some fast paths also read ``.ndim`` and ``len()`` (rms_norm's
weight, apply_rope's inv_freq): an array type without them takes the full check every call.  They are on the hot path: keep them to attribute reads and comparisons.

Each check starts with a fast path that accepts the common case (float32 arrays whose shapes fit; for
``check_embedding``, at most 64 NumPy integer ids within the vocabulary) and returns; anything else
(float16, a wrong shape, a non-array ...) goes through the full check, which raises the error or accepts.  The fast path may only accept what the full check accepts
(tests/test_core_backend.py checks both on the same inputs).  The op methods carry a copy of each
fast path (``python -m sapient_core._codegen`` writes it into ``_ops.py``): its form is fixed, a
``try:`` of assignments and expressions ending in ``if <test>: return`` (see ``_codegen.fast_paths``),
and after editing one, regenerate.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .errors import ArgumentError, DTypeError, ShapeError
from .hookspecs import OPS

__all__ = ["float_dtype_name", "broadcast_shape", "register_array_type", "is_array", "CHECKS"]

_FLOAT_NAMES = ("float32", "float16", "bfloat16")
_F32 = np.dtype(np.float32)
_ndarray = np.ndarray
_DTYPE_CACHE: dict[Any, str | None] = {_F32: "float32", np.dtype(np.float16): "float16"}
#: Every float32 dtype object seen so far (NumPy's, and e.g. ``mx.float32`` once an MLX array has been
#: checked): the fast paths test ``dtype is _F32`` first (NumPy) and this set only for other array types.
_F32S: set[Any] = {_F32}
_I64 = np.dtype(np.int64)
_INT_CACHE: dict[Any, bool] = {}
_INF = float("inf")
#: The classes accepted as arrays: NumPy's, and the array type of every backend constructed in this
#: process (``mx.array`` once an MLX backend exists), registered by :func:`register_array_type`.  An
#: object that merely has ``.shape`` and ``.dtype`` is not an array: it is refused with the same
#: DTypeError on every backend, instead of reaching a plugin.
_ARRAY_TYPES: set[type] = {_ndarray}


def register_array_type(cls: type) -> None:
    """Accept ``cls`` as an array type from now on (called for each backend's own array type)."""
    _ARRAY_TYPES.add(cls)


def is_array(value: Any) -> bool:
    """Whether ``value`` is an array the ops accept: NumPy (subclasses such as ``numpy.memmap`` too, but
    not masked arrays, whose mask an op would ignore) or a registered backend array type."""
    cls = value.__class__
    if cls in _ARRAY_TYPES:
        return True
    return isinstance(value, _ndarray) and not isinstance(value, np.ma.MaskedArray)


def float_dtype_name(dtype: Any) -> str | None:
    """``"float32"``, ``"float16"`` or ``"bfloat16"`` for an accepted dtype (NumPy, MLX, ...), else None."""
    try:
        return _DTYPE_CACHE[dtype]
    except KeyError:
        pass
    except TypeError:  # unhashable dtype object
        return _classify(dtype)
    name = _DTYPE_CACHE[dtype] = _classify(dtype)
    if name == "float32":
        _F32S.add(dtype)
    return name


def _classify(dtype: Any) -> str | None:
    text = str(dtype).rsplit(".", 1)[-1].lower()
    return text if text in _FLOAT_NAMES else None


def _is_int_dtype(dtype: Any) -> bool:
    try:
        return _INT_CACHE[dtype]
    except KeyError:
        pass
    text = str(dtype).rsplit(".", 1)[-1].lower()
    ok = text.startswith(("int", "uint"))
    _INT_CACHE[dtype] = ok
    return ok


_BOOL_CACHE: dict[Any, bool] = {}


def _is_bool_dtype(dtype: Any) -> bool:
    try:
        return _BOOL_CACHE[dtype]
    except KeyError:
        pass
    ok = str(dtype).rsplit(".", 1)[-1].lower() in ("bool", "bool_")
    _BOOL_CACHE[dtype] = ok
    return ok


def _shape(x: Any) -> tuple:
    return tuple(x.shape)


def _desc(**arrays: Any) -> str:
    return ", ".join(f"{k} {_shape(v) if hasattr(v, 'shape') else type(v).__name__}"
                     for k, v in arrays.items())


def _shapes(**arrays: Any) -> dict:
    return {k: (_shape(v) if hasattr(v, "shape") else None) for k, v in arrays.items()}


def _astype_remedy(name: str, value: Any) -> str:
    """How to make ``value`` float32 in its own array library."""
    root = type(value).__module__.split(".")[0]
    if isinstance(value, _ndarray):
        return f"{name}.astype(numpy.float32)"
    if root == "mlx":
        return f"{name}.astype(mlx.core.float32)"
    if root == "torch":
        return f"{name}.float()"
    return f"{name} converted to float32 with its own library ({type(value).__module__}.{type(value).__qualname__})"


def _bad_type(op: str, name: str, value: Any, **arrays: Any) -> DTypeError:
    if not is_array(value):
        if isinstance(value, np.ma.MaskedArray):
            what = (f"{name} is a masked array, whose mask the op would ignore. To remedy this, pass "
                    f"{name}.filled(...) or numpy.asarray({name})")
        else:
            what = f"{name} must be an array (NumPy or the backend's array type), got {type(value).__name__}"
    else:
        what = (f"{name} has dtype {value.dtype}; accepted: float32, float16, bfloat16 (computed in float32)."
                f" To remedy this, pass {_astype_remedy(name, value)}")
    return DTypeError(f"{op}: {what} ({_desc(**arrays)})", op=op, shapes=_shapes(**arrays))


def _float(op: str, name: str, value: Any, arrays: dict) -> None:
    if not is_array(value):
        raise _bad_type(op, name, value, **arrays)
    dt = value.dtype
    if dt is _F32:
        return
    if float_dtype_name(dt) is None:
        raise _bad_type(op, name, value, **arrays)


def _shape_error(op: str, what: str, **arrays: Any) -> ShapeError:
    return ShapeError(f"{op}: {what} ({_desc(**arrays)})", op=op, shapes=_shapes(**arrays))


def _real(op: str, name: str, value: Any, *, positive: bool = False, nonneg: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DTypeError(f"{op}: {name} must be a real number, got {type(value).__name__} {value!r}", op=op)
    if value != value:
        raise ArgumentError(f"{op}: {name} must not be NaN", op=op, arg=name, value=value)
    if value in (_INF, -_INF):
        raise ArgumentError(f"{op}: {name} must be finite, got {value!r}", op=op, arg=name, value=value)
    if positive and not value > 0:
        raise ArgumentError(f"{op}: {name} must be > 0, got {value!r}", op=op, arg=name, value=value)
    if nonneg and not value >= 0:
        raise ArgumentError(f"{op}: {name} must be >= 0, got {value!r}", op=op, arg=name, value=value)


# --- linear ------------------------------------------------------------------------------------------

def _check_linear(op: str, x: Any, weight: Any, bias: Any = None, with_bias: bool = False) -> None:
    arrays = {"x": x, "weight": weight}
    if with_bias and bias is not None:
        arrays["bias"] = bias
    _float(op, "x", x, arrays)
    _float(op, "weight", weight, arrays)
    xs = x.shape
    ws = weight.shape
    if len(xs) != 3:
        raise _shape_error(op, f"x must be 3-D (B, S, in), got {len(xs)}-D", **arrays)
    if len(ws) != 2:
        raise _shape_error(op, f"weight must be 2-D (out, in), got {len(ws)}-D", **arrays)
    if xs[2] != ws[1]:
        raise _shape_error(op, f"x has {xs[2]} input features but weight expects {ws[1]}", **arrays)
    if bias is not None:
        _float(op, "bias", bias, arrays)
        if tuple(bias.shape) != (ws[0],):
            raise _shape_error(op, f"bias must have shape ({ws[0]},) to match weight", **arrays)


def check_linear_3d(x: Any, weight: Any) -> None:
    try:  # fast path: float32 arrays of matching shapes (the common case); anything else is checked fully
        _, _, n = x.shape
        _, m = weight.shape
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S) and (weight.__class__ is _ndarray or weight.__class__ in _ARRAY_TYPES) and (weight.dtype is _F32 or weight.dtype in _F32S)
                and n == m):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _check_linear("linear_3d", x, weight)


def check_linear_3d_bias(x: Any, weight: Any, bias: Any) -> None:
    try:
        _, _, n = x.shape
        o, m = weight.shape
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S) and (weight.__class__ is _ndarray or weight.__class__ in _ARRAY_TYPES) and (weight.dtype is _F32 or weight.dtype in _F32S)
                and n == m and (bias is None or ((bias.__class__ is _ndarray or bias.__class__ in _ARRAY_TYPES) and (bias.dtype is _F32 or bias.dtype in _F32S) and bias.shape == (o,)))):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _check_linear("linear_3d_bias", x, weight, bias, with_bias=True)


# --- norms -------------------------------------------------------------------------------------------

def check_rms_norm(x: Any, weight: Any, eps: Any) -> None:
    try:
        xs = x.shape
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S) and (weight.__class__ is _ndarray or weight.__class__ in _ARRAY_TYPES) and (weight.dtype is _F32 or weight.dtype in _F32S)
                and xs and weight.ndim == 1 and len(weight) == xs[-1]
                and type(eps) is float and 0.0 <= eps < _INF):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    arrays = {"x": x, "weight": weight}
    _float("rms_norm", "x", x, arrays)
    _float("rms_norm", "weight", weight, arrays)
    xs = x.shape
    if not xs:
        raise _shape_error("rms_norm", "x must have at least one dimension", **arrays)
    if len(weight.shape) != 1 or weight.shape[0] != xs[-1]:
        raise _shape_error("rms_norm", f"weight must have shape ({xs[-1]},) to match x's last dimension",
                           **arrays)
    if type(eps) is not float or not 0 <= eps < _INF:
        _real("rms_norm", "eps", eps, nonneg=True)


def check_layer_norm(x: Any, weight: Any, bias: Any, eps: Any) -> None:
    try:
        xs = x.shape
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S) and (weight.__class__ is _ndarray or weight.__class__ in _ARRAY_TYPES) and (weight.dtype is _F32 or weight.dtype in _F32S)
                and xs and weight.shape == xs[-1:]
                and (bias is None or ((bias.__class__ is _ndarray or bias.__class__ in _ARRAY_TYPES) and (bias.dtype is _F32 or bias.dtype in _F32S) and bias.shape == xs[-1:]))
                and type(eps) is float and 0 <= eps < _INF):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    arrays = {"x": x, "weight": weight}
    if bias is not None:
        arrays["bias"] = bias
    _float("layer_norm", "x", x, arrays)
    _float("layer_norm", "weight", weight, arrays)
    xs = x.shape
    if not xs:
        raise _shape_error("layer_norm", "x must have at least one dimension", **arrays)
    if len(weight.shape) != 1 or weight.shape[0] != xs[-1]:
        raise _shape_error("layer_norm", f"weight must have shape ({xs[-1]},) to match x's last dimension",
                           **arrays)
    if bias is not None:
        _float("layer_norm", "bias", bias, arrays)
        if len(bias.shape) != 1 or bias.shape[0] != xs[-1]:
            raise _shape_error("layer_norm", f"bias must have shape ({xs[-1]},) to match x's last dimension",
                               **arrays)
    if type(eps) is not float or not 0 <= eps < _INF:
        _real("layer_norm", "eps", eps, nonneg=True)


# --- elementwise -------------------------------------------------------------------------------------

def check_silu(x: Any) -> None:
    try:
        if (x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _float("silu", "x", x, {"x": x})


def check_gelu(x: Any, approximate: Any) -> None:
    try:
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S) and type(approximate) is str
                and (approximate == "none" or approximate == "tanh")):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _float("gelu", "x", x, {"x": x})
    if not isinstance(approximate, str) or approximate not in ("none", "tanh"):
        raise ArgumentError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}", op="gelu",
                            arg="approximate", value=approximate, shapes=_shapes(x=x))


def _broadcastable(sa: Any, sb: Any) -> bool:
    """NumPy's broadcasting rule on two shapes (a few times faster than ``np.broadcast_shapes``)."""
    if sa == sb:
        return True
    na, nb = len(sa), len(sb)
    if (sa[na - nb:] == sb) if nb <= na else (sb[nb - na:] == sa):   # (B, S, D) with (D,) or (S, D)
        return True
    for x, y in zip(reversed(sa), reversed(sb)):
        if x != y and x != 1 and y != 1:
            return False
    return True


def broadcast_shape(sa: Any, sb: Any) -> tuple:
    """The shape NumPy broadcasting gives two shapes that broadcast (checked before this is called)."""
    if sa == sb:
        return tuple(sa)
    na, nb = len(sa), len(sb)
    if nb <= na and sa[na - nb:] == sb:
        return tuple(sa)
    if na < nb and sb[nb - na:] == sa:
        return tuple(sb)
    n = max(na, nb)
    a = (1,) * (n - na) + tuple(sa)
    b = (1,) * (n - nb) + tuple(sb)
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def _check_binary(op: str, a: Any, b: Any) -> None:
    arrays = {"a": a, "b": b}
    _float(op, "a", a, arrays)
    _float(op, "b", b, arrays)
    if a.shape != b.shape:
        try:
            np.broadcast_shapes(tuple(a.shape), tuple(b.shape))
        except ValueError:
            raise _shape_error(op, "shapes do not broadcast together", **arrays) from None


def check_add(a: Any, b: Any) -> None:
    try:
        sa = a.shape
        sb = b.shape
        if ((a.__class__ is _ndarray or a.__class__ in _ARRAY_TYPES) and (a.dtype is _F32 or a.dtype in _F32S) and (b.__class__ is _ndarray or b.__class__ in _ARRAY_TYPES) and (b.dtype is _F32 or b.dtype in _F32S)
                and (sa == sb or _broadcastable(sa, sb))):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _check_binary("add", a, b)


def check_mul(a: Any, b: Any) -> None:
    try:
        sa = a.shape
        sb = b.shape
        if ((a.__class__ is _ndarray or a.__class__ in _ARRAY_TYPES) and (a.dtype is _F32 or a.dtype in _F32S) and (b.__class__ is _ndarray or b.__class__ in _ARRAY_TYPES) and (b.dtype is _F32 or b.dtype in _F32S)
                and (sa == sb or _broadcastable(sa, sb))):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _check_binary("mul", a, b)


# --- rope --------------------------------------------------------------------------------------------

def _positions(op: str, x: Any, positions: Any) -> Any:
    if not is_array(positions):
        if isinstance(positions, (list, tuple, range)):
            positions = np.asarray(positions)
            if positions.size == 0:
                positions = positions.astype(np.int64)
        else:
            raise DTypeError(f"{op}: positions must be an integer array of shape (S,) or (B, S) (or a list of "
                             f"ints), got {type(positions).__name__} ({_desc(x=x)})", op=op, shapes=_shapes(x=x))
    if not _is_int_dtype(positions.dtype):
        raise DTypeError(f"{op}: positions must have an integer dtype, got {positions.dtype} "
                         f"({_desc(x=x, positions=positions)})", op=op, shapes=_shapes(x=x, positions=positions))
    ps = tuple(positions.shape)
    b, s = x.shape[0], x.shape[2]
    if ps != (s,) and ps != (b, s):
        raise _shape_error(op, f"positions must have shape ({s},), one per sequence position, or ({b}, {s}), "
                               f"one row per batch row", x=x, positions=positions)
    return positions


def _check_rope_x(op: str, x: Any) -> None:
    _float(op, "x", x, {"x": x})
    if len(x.shape) != 4:
        raise _shape_error(op, f"x must be 4-D (B, H, S, D), got {len(x.shape)}-D", x=x)


def check_apply_rope_positions(x: Any, positions: Any, base: Any) -> Any:
    try:
        b, _, s, d = x.shape
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S) and not d % 2
                and positions.__class__ is _ndarray and positions.dtype.kind in "iu"
                and ((positions.ndim == 1 and len(positions) == s) or (positions.ndim == 2 and positions.shape == (b, s))) and type(base) is float and 0 < base < _INF):
            return positions
    except (AttributeError, TypeError, ValueError):
        pass
    op = "apply_rope_positions"
    _check_rope_x(op, x)
    if x.shape[3] % 2:
        raise _shape_error(op, f"head size D={x.shape[3]} must be even", x=x)
    positions = _positions(op, x, positions)
    if type(base) is not float or not 0 < base < _INF:
        _real(op, "base", base, positive=True)
    return positions


def check_apply_rope_partial(x: Any, positions: Any, base: Any, rotary_dim: Any) -> Any:
    try:
        b, _, s, d = x.shape
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S)
                and positions.__class__ is _ndarray and positions.dtype.kind in "iu"
                and ((positions.ndim == 1 and len(positions) == s) or (positions.ndim == 2 and positions.shape == (b, s))) and type(base) is float and 0 < base < _INF
                and type(rotary_dim) is int and not rotary_dim % 2 and 2 <= rotary_dim <= d):
            return positions
    except (AttributeError, TypeError, ValueError):
        pass
    op = "apply_rope_partial"
    _check_rope_x(op, x)
    positions = _positions(op, x, positions)
    if type(base) is not float or not 0 < base < _INF:
        _real(op, "base", base, positive=True)
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, numbers.Integral):
        raise DTypeError(f"{op}: rotary_dim must be an int, got {type(rotary_dim).__name__} {rotary_dim!r}",
                         op=op, shapes=_shapes(x=x))
    d = x.shape[3]
    if rotary_dim % 2 or not 2 <= rotary_dim <= d:
        raise _shape_error(op, f"rotary_dim={rotary_dim!r} must be even and between 2 and the head size "
                               f"D={d}", x=x)
    return positions


def check_apply_rope(x: Any, positions: Any, inv_freq: Any, attention_scaling: Any) -> Any:
    try:
        b, _, s, d = x.shape
        n = len(inv_freq)
        if ((x.__class__ is _ndarray or x.__class__ in _ARRAY_TYPES) and (x.dtype is _F32 or x.dtype in _F32S)
                and (inv_freq.__class__ is _ndarray or inv_freq.__class__ in _ARRAY_TYPES) and (inv_freq.dtype is _F32 or inv_freq.dtype in _F32S)
                and inv_freq.ndim == 1 and 1 <= n and 2 * n <= d and positions.__class__ is _ndarray
                and (positions.dtype is _I64 or positions.dtype.kind in "iu")
                and ((positions.ndim == 1 and len(positions) == s) or (positions.ndim == 2 and positions.shape == (b, s)))
                and type(attention_scaling) is float and 0.0 < attention_scaling < _INF):
            return positions
    except (AttributeError, TypeError, ValueError):
        pass
    op = "apply_rope"
    _check_rope_x(op, x)
    positions = _positions(op, x, positions)
    _float(op, "inv_freq", inv_freq, {"x": x, "inv_freq": inv_freq})
    d = x.shape[3]
    if len(inv_freq.shape) != 1 or not 1 <= inv_freq.shape[0] <= d // 2:
        raise _shape_error(op, f"inv_freq must have shape (R/2,) with 1 <= R/2 <= D/2 = {d // 2} (R = 2 * "
                               f"len(inv_freq) channels are rotated)", x=x, inv_freq=inv_freq)
    if type(attention_scaling) is not float or not 0 < attention_scaling < _INF:
        _real(op, "attention_scaling", attention_scaling, positive=True)
    return positions


# --- attention ---------------------------------------------------------------------------------------

def check_gqa_attention(q: Any, k: Any, v: Any, n_kv_heads: Any, causal: Any, scale: Any = None,
                        sliding_window: Any = None, softcap: Any = None, kv_mask: Any = None) -> None:
    try:
        qb, qh, sq, qd = q.shape
        kb, kvh, sk, kd = ks = k.shape
        if ((q.__class__ is _ndarray or q.__class__ in _ARRAY_TYPES) and (q.dtype is _F32 or q.dtype in _F32S)
                and (k.__class__ is _ndarray or k.__class__ in _ARRAY_TYPES) and (k.dtype is _F32 or k.dtype in _F32S)
                and (v.__class__ is _ndarray or v.__class__ in _ARRAY_TYPES) and (v.dtype is _F32 or v.dtype in _F32S) and v.shape == ks and qb == kb
                and qd == kd and n_kv_heads == kvh and type(n_kv_heads) is int and kvh > 0
                and not qh % kvh and sk > 0 and (causal is False or (causal is True and sq <= sk))
                and scale is None and sliding_window is None and softcap is None and kv_mask is None):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    op = "gqa_attention"
    arrays = {"q": q, "k": k, "v": v}
    _float(op, "q", q, arrays)
    _float(op, "k", k, arrays)
    _float(op, "v", v, arrays)
    qs, ks, vs = q.shape, k.shape, v.shape
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        raise _shape_error(op, "q must be (B, H, Sq, d) and k, v (B, KV, Sk, d)", **arrays)
    if ks != vs:
        raise _shape_error(op, "k and v must have the same shape", **arrays)
    if qs[0] != ks[0]:
        raise _shape_error(op, f"batch sizes differ: q has {qs[0]}, k and v have {ks[0]}", **arrays)
    if qs[3] != ks[3]:
        raise _shape_error(op, f"head sizes differ: q has {qs[3]}, k and v have {ks[3]}", **arrays)
    if isinstance(n_kv_heads, bool) or not isinstance(n_kv_heads, numbers.Integral):
        raise DTypeError(f"{op}: n_kv_heads must be an int, got {type(n_kv_heads).__name__} {n_kv_heads!r} "
                         f"({_desc(**arrays)})", op=op, shapes=_shapes(**arrays))
    if n_kv_heads != ks[1]:
        raise _shape_error(op, f"n_kv_heads={n_kv_heads} but k and v have {ks[1]} heads", **arrays)
    if n_kv_heads <= 0 or qs[1] % n_kv_heads:
        raise _shape_error(op, f"{qs[1]} query heads are not divisible by n_kv_heads={n_kv_heads}", **arrays)
    if causal is not True and causal is not False:
        if not isinstance(causal, (bool, np.bool_)):
            raise DTypeError(f"{op}: causal must be a bool, got {type(causal).__name__} {causal!r}", op=op)
    if causal and qs[2] > ks[2]:
        raise _shape_error(op, f"causal attention needs Sq <= Sk (query i sees keys <= i + Sk - Sq), "
                               f"got Sq={qs[2]} > Sk={ks[2]}", **arrays)
    if ks[2] == 0 and qs[2] > 0 and qs[0] > 0:
        raise _shape_error(op, "no keys (Sk=0) for a non-empty query: the softmax is undefined", **arrays)
    if scale is not None:
        _real(op, "scale", scale)
    if softcap is not None:
        _real(op, "softcap", softcap, positive=True)
    if sliding_window is not None:
        if isinstance(sliding_window, (bool, np.bool_)) or not isinstance(sliding_window, numbers.Integral):
            raise DTypeError(f"{op}: sliding_window must be an int or None, got {type(sliding_window).__name__} "
                             f"{sliding_window!r}", op=op)
        if sliding_window < 1:
            raise ArgumentError(f"{op}: sliding_window must be >= 1 (the number of keys a query sees, itself "
                                f"included), got {sliding_window}", op=op, arg="sliding_window", value=sliding_window)
        if not causal:
            raise ArgumentError(f"{op}: sliding_window={sliding_window} needs causal=True (the window is the "
                                f"W most recent keys up to the query's own position)", op=op, arg="sliding_window",
                                value=sliding_window)
    if kv_mask is not None:
        arrays["kv_mask"] = kv_mask
        if not is_array(kv_mask):
            raise DTypeError(f"{op}: kv_mask must be a bool array of shape (B, Sk) or None, got "
                             f"{type(kv_mask).__name__} ({_desc(**arrays)})", op=op, shapes=_shapes(**arrays))
        if not _is_bool_dtype(kv_mask.dtype):
            raise DTypeError(f"{op}: kv_mask must have a bool dtype (False: a key never to attend), got "
                             f"{kv_mask.dtype}. To remedy this, pass kv_mask != 0 ({_desc(**arrays)})", op=op,
                             shapes=_shapes(**arrays))
        if tuple(kv_mask.shape) != (qs[0], ks[2]):
            raise _shape_error(op, f"kv_mask must have shape (B, Sk) = ({qs[0]}, {ks[2]})", **arrays)


# --- logits ------------------------------------------------------------------------------------------

def _check_logits(op: str, hidden: Any, lm_head: Any, last: bool, softcap: Any) -> None:
    arrays = {"hidden": hidden, "lm_head": lm_head}
    _float(op, "hidden", hidden, arrays)
    _float(op, "lm_head", lm_head, arrays)
    hs, ls = hidden.shape, lm_head.shape
    if len(hs) != 3:
        raise _shape_error(op, f"hidden must be 3-D (B, S, h), got {len(hs)}-D", **arrays)
    if len(ls) != 2:
        raise _shape_error(op, f"lm_head must be 2-D (vocab, h), got {len(ls)}-D", **arrays)
    if hs[2] != ls[1]:
        raise _shape_error(op, f"hidden size {hs[2]} does not match lm_head's {ls[1]}", **arrays)
    if last and hs[1] == 0 and hs[0] > 0:
        raise _shape_error(op, "hidden has no positions (S=0): there is no last position", **arrays)
    if softcap is not None:
        _real(op, "softcap", softcap, positive=True)


def check_logits_from_hidden(hidden: Any, lm_head: Any, softcap: Any = None) -> None:
    try:
        _, s, h = hidden.shape
        _, m = lm_head.shape
        if ((hidden.__class__ is _ndarray or hidden.__class__ in _ARRAY_TYPES) and (hidden.dtype is _F32 or hidden.dtype in _F32S)
                and (lm_head.__class__ is _ndarray or lm_head.__class__ in _ARRAY_TYPES) and (lm_head.dtype is _F32 or lm_head.dtype in _F32S)
                and h == m and s > 0 and softcap is None):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _check_logits("logits_from_hidden", hidden, lm_head, True, softcap)


def check_all_logits_from_hidden(hidden: Any, lm_head: Any, softcap: Any = None) -> None:
    try:
        _, _, h = hidden.shape
        _, m = lm_head.shape
        if ((hidden.__class__ is _ndarray or hidden.__class__ in _ARRAY_TYPES) and (hidden.dtype is _F32 or hidden.dtype in _F32S)
                and (lm_head.__class__ is _ndarray or lm_head.__class__ in _ARRAY_TYPES) and (lm_head.dtype is _F32 or lm_head.dtype in _F32S)
                and h == m and softcap is None):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    _check_logits("all_logits_from_hidden", hidden, lm_head, False, softcap)


# --- embedding ---------------------------------------------------------------------------------------

def check_embedding(ids: Any, table: Any) -> None:
    try:
        ts = table.shape
        few = ids.ravel().tolist() if ids.__class__ is _ndarray and ids.ndim == 2 and 0 < ids.size <= 64 else None
        if (few and ids.dtype.kind in "iu" and (table.__class__ is _ndarray or table.__class__ in _ARRAY_TYPES)
                and (table.dtype is _F32 or table.dtype in _F32S) and len(ts) == 2
                and min(few) >= 0 and max(few) < ts[0]):
            return
    except (AttributeError, TypeError, ValueError):
        pass
    op = "embedding"
    arrays = {"ids": ids, "table": table}
    if not is_array(ids):
        raise DTypeError(f"{op}: ids must be an integer array of shape (B, S), got {type(ids).__name__} "
                         f"({_desc(**arrays)})", op=op, shapes=_shapes(**arrays))
    if not _is_int_dtype(ids.dtype):
        raise DTypeError(f"{op}: ids must have an integer dtype, got {ids.dtype} ({_desc(**arrays)})", op=op,
                         shapes=_shapes(**arrays))
    _float(op, "table", table, arrays)
    if len(ids.shape) != 2:
        raise _shape_error(op, f"ids must be 2-D (B, S), got {len(ids.shape)}-D", **arrays)
    if len(table.shape) != 2:
        raise _shape_error(op, f"table must be 2-D (V, D), got {len(table.shape)}-D", **arrays)
    n = table.shape[0]
    if ids.shape[0] * ids.shape[1] == 0:
        return
    host = ids if ids.__class__ is _ndarray else np.asarray(ids)    # a device array: the ids are tiny
    if host.size <= 64:          # a decode step's few ids: Python's min/max beat two NumPy reductions
        flat = host.ravel().tolist()
        lo, hi = min(flat), max(flat)
    else:
        lo, hi = int(host.min()), int(host.max())
    if lo < 0 or hi >= n:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in np.argwhere(host == bad)[0])
        raise ArgumentError(f"{op}: id {bad} at {where} is outside the vocabulary [0, {n}) of table "
                            f"({_desc(**arrays)})", op=op, arg="ids", value=bad, shapes=_shapes(**arrays))


#: op name -> check function (``check_<op>``, declared by ``OpSpec.check_name``); the RoPE checks return
#: the (normalised) positions.
CHECKS = {name: globals()[spec.check_name] for name, spec in OPS.items()}
