"""MLX kernels, one function per op of the sapient_core contract (v2 signatures), plus the array helpers
an engine needs between ops.  Importing this module imports MLX.

Each op function takes its hook's arguments, positionally, with no defaults, and assumes validated
input (the core checks shapes, dtypes and values first).  Inputs are NumPy arrays or ``mx.array``s;
float16 / bfloat16 are computed in float32; results are float32 ``mx.array``s, left unevaluated (MLX is
lazy: a chain of ops becomes one graph), except the two logits ops, which return NumPy.

**Where and when it runs.** Every function builds its graph on the plugin's own stream
(:func:`.device.stream`, entered with ``mx.stream``), on the device the plugin reports, whatever the
process default device or stream is; results can be read and extended from any thread.  Every
evaluation (:func:`evaluate`, :func:`to_host`, the logits ops, the first-use check below) holds
:data:`.device.LOCK`.

**Errors that show only when MLX evaluates** (an allocation that fails, a kernel the device cannot
run, a command buffer that fails):

- *first-use check*: the first time an op is called with inputs of a given kind (dtype and shape
  class: each dimension's bit length, so a new class starts at every power of two), the op evaluates its inputs and then its result
  before returning.  A failure of its own result raises from the op, so the core falls back to the CPU
  reference (or raises ``BackendOpError`` in strict mode) exactly as for an error raised while building
  the graph; an input that fails is an earlier op's failure and is left to show where it is evaluated.
  Later calls of that kind stay lazy (one extra synchronisation per new kind; ``PROBE = False`` turns
  it off);
- the logits ops evaluate their input before their own product: a failure of the product falls back
  with an evaluated input, which the CPU reference can read; a failure of the input raises
  :class:`MLXEvaluationError` naming the pending ops;
- :func:`evaluate` and :func:`to_host` report a failure as :class:`MLXEvaluationError` with the ops
  built since the last successful evaluation, after one retry with MLX's buffer cache released
  (``mx.clear_cache()``) when the error is an allocation failure.

Numerical choices (what the tests check against the float64 oracle):

- matmuls (``linear_3d``, logits) are float32 ``mx.matmul`` with full float32 accumulation
  (``MLX_ENABLE_TF32=0``, see :mod:`._runtime`); half-precision weights stay half precision in the
  weight cache and are converted to float32 inside the op;
- ``rms_norm`` is ``mx.fast.rms_norm``; ``layer_norm`` is ``mx.fast.layer_norm`` applied to
  ``x - mean(x)`` (the fast kernel alone loses the variance when the mean dominates: 1e-3 relative
  error at mean 1e4);
- ``silu`` is ``x * mx.sigmoid(x)``; GELU "tanh" is ``x * sigmoid(2u)``; GELU "none" uses an erfc fit
  (``0.5 x (1 + erf(x / sqrt 2))`` cancels to 0 below x = -5.5 in float32);
- **RoPE uses cos/sin tables computed on the host in float64** (angle = position * inv_freq in
  float64, rounded to float32 once) and applied with elementwise ops on the device.
  ``mx.fast.rope`` computes the angle in float32 and, on Metal, takes ``metal::fast::cos/sin`` of it:
  its error grows with the position (float32 angles alone: ~|p| * 2**-24 rad, 6e-3 at position
  60000), and no device's fast trigonometry is trusted here.  The tables cost one small upload per
  distinct positions array (a decode step: 2 * R/2 floats), cached across layers; the error is a few
  float32 roundings of the result at any position, on every device.  (``mx.fast.rope``'s ``freqs``
  argument, checked numerically with MLX 0.32, is the *period* ``1 / inv_freq``: angle = position /
  freqs.);
- attention is ``mx.fast.scaled_dot_product_attention`` (grouped-query attention natively, K and V never
  repeated; ``"causal"`` is lower-right aligned, the contract's KV-cache offset) with a boolean mask
  array for sliding windows and padding, except with ``softcap`` (the fused kernel has no hook
  between the scores and the softmax): then the scores are computed explicitly, as mlx-lm's Gemma 2
  does.  A query row that sees no key gives zeros: such rows are unmasked for the kernel (no NaN is
  ever computed) and zeroed after.  A decode step (one query) of grouped-query attention folds the
  query heads of each KV head into the query axis (multi-head attention with G queries), which is the
  same arithmetic and keeps Metal off its GQA path for long caches (ml-explore/mlx#4022: garbage
  output of the 2-pass GQA vector kernel from 1024 keys on M3 Max, closed without a fix).
"""

from __future__ import annotations

import builtins
import collections
import functools
import math
from typing import Any

import numpy as np

from . import _runtime, device
from ._runtime import MLXEvaluationError
from .cache import TRANSFERS, WEIGHTS

mx = _runtime.import_mlx()

__all__ = [
    "linear_3d", "linear_3d_bias", "rms_norm", "layer_norm", "silu", "gelu", "add", "mul",
    "apply_rope_positions", "apply_rope_partial", "apply_rope", "gqa_attention", "logits_from_hidden",
    "all_logits_from_hidden", "embedding",
    "to_device", "to_host", "evaluate", "concatenate", "reshape", "transpose", "zeros", "write", "slice",
    "evaluation_stats", "MLXEvaluationError", "PROBE",
]

_F32 = mx.float32
_BOOL = mx.bool_
_MX_ARRAY = mx.array
_NP_F32 = np.dtype(np.float32)
_NP_F16 = np.dtype(np.float16)
_ndarray = np.ndarray
_STREAM = device.stream()
_LOCK = device.LOCK

#: Evaluate each op once per new kind of input (see the module docstring).  Set False to skip.
PROBE = True
_PROBED: set = set()              # (op, static, input kinds) already checked
_SEEN: set = set()                # exact (op, static, dtype, shapes) whose kind is in _PROBED (bounded)
_SEEN_MAX = 4096
_PENDING: collections.Counter[str] = collections.Counter()   # op -> results built since the last evaluation
_STATS = {"evaluations": 0, "failures": 0, "retries": 0, "probes": 0, "probe_failures": 0}


def _on_stream(fn):
    """Build ``fn``'s graph on the plugin's stream (and device), whatever the thread's default."""
    @functools.wraps(fn)
    def on_stream(*args):
        with mx.stream(_STREAM):
            return fn(*args)
    return on_stream


# --- evaluation ---------------------------------------------------------------------------------------

_ALLOCATION_WORDS = ("alloc", "out of memory", "insufficient memory", "resource limit")


def _is_allocation_failure(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in _ALLOCATION_WORDS)


def _pending_text() -> str:
    if not _PENDING:
        return "no op of the plugin"
    return ", ".join(f"{op} x{n}" for op, n in sorted(_PENDING.items(), key=lambda kv: -kv[1]))


def _eval(arrays: list, what: str) -> None:
    """``mx.eval(*arrays)`` under the plugin's lock; one retry after ``mx.clear_cache()`` for an allocation
    failure; any other failure raises :class:`MLXEvaluationError` naming the pending ops."""
    if not arrays:
        return
    with _LOCK:
        _STATS["evaluations"] += 1
        try:
            mx.eval(*arrays)
        except Exception as exc:  # noqa: BLE001 - reported with context below
            error = exc
            if _is_allocation_failure(exc):
                _STATS["retries"] += 1
                mx.clear_cache()
                try:
                    mx.eval(*arrays)
                except Exception as again:  # noqa: BLE001
                    error = again
                else:
                    _PENDING.clear()
                    return
            _STATS["failures"] += 1
            pending = dict(_PENDING)
            raise MLXEvaluationError(
                f"{what}: MLX failed to evaluate on the {device.device_name()} device "
                f"({type(error).__name__}: {error}); pending since the last evaluation: {_pending_text()}. "
                f"To remedy this: if memory ran out, evaluate every step (Backend.eval) or use a smaller "
                f"batch; otherwise run the ops with SAPIENT_STRICT=1 to find the op that fails",
                pending=pending, error=f"{type(error).__name__}: {error}") from error
        _PENDING.clear()


def evaluate(arrays) -> None:
    """Evaluate the given results on the device, with no host copy (the plugin side of ``Backend.eval``).

    Call it every step on what the next step needs (the KV cache, the hidden state) when results are not
    read back every step: a lazy graph left pending keeps every intermediate alive.  NumPy arrays and
    None in ``arrays`` are ignored.
    """
    _eval([a for a in arrays if a.__class__ is _MX_ARRAY], "evaluate")


def _kind(a) -> tuple:
    return (a.dtype, tuple(d.bit_length() for d in a.shape))


def _done(op: str, result, a, b=None, static: Any = None):
    """Count ``result`` as pending and, the first time ``op`` sees inputs of this kind, evaluate it.

    ``a`` and ``b`` are the op's main inputs (``mx.array``s); the kind is their dtype and shapes with
    bit length of each dimension (a new kind at every power of two), so a growing KV cache is checked once
    per doubling.
    The exact shapes already covered are remembered, which keeps the common path to one set lookup.
    """
    _PENDING[op] += 1
    if PROBE:
        exact = (op, static, a.dtype, a.shape, None if b is None else b.shape)
        if exact not in _SEEN:
            _check_kind(op, exact, result, a, b, static)
    return result


def _check_kind(op: str, exact: tuple, result, a, b, static) -> None:
    inputs = (a,) if b is None else (a, b)
    key = (op, static) + tuple(_kind(x) for x in inputs)
    if key not in _PROBED:
        with _LOCK:
            _STATS["probes"] += 1
            try:
                _eval(list(inputs), f"{op} (its inputs)")
            except MLXEvaluationError:
                return        # an earlier op's failure: it shows where its result is evaluated
            try:
                _eval([result], op)
            except MLXEvaluationError:
                _STATS["probe_failures"] += 1
                raise
            _PROBED.add(key)
    if len(_SEEN) >= _SEEN_MAX:
        _SEEN.clear()
    _SEEN.add(exact)


def evaluation_stats() -> dict[str, int]:
    """Evaluations run by the plugin, failures, allocation retries, first-use checks and their failures."""
    with _LOCK:
        return dict(_STATS, pending=sum(_PENDING.values()), kinds_checked=len(_PROBED))


# --- moving data ------------------------------------------------------------------------------------

def _host(x) -> np.ndarray:
    """``x`` as a NumPy array MLX can read (a copy only for negative strides)."""
    a = np.asarray(x)
    # np.flip / x[..., ::-1]: DLPack refuses any negative stride, even on an axis of size 1, where NumPy
    # still calls the array contiguous (so the flag alone is not enough).
    if min(a.strides, default=0) < 0:
        a = a.copy(order="C")               # (np.ascontiguousarray would return such an array as it is)
    return a


def _upload(a: np.ndarray):
    y = mx.array(a)
    TRANSFERS.upload(a.nbytes)
    return y


def _act(x):
    """``x`` as a float32 ``mx.array`` (NumPy input is uploaded afresh and counted)."""
    if x.__class__ is _MX_ARRAY:
        return x if x.dtype == _F32 else x.astype(_F32)
    a = _host(x)
    if a.dtype != _NP_F32 and a.dtype != _NP_F16:
        a = a.astype(np.float32)          # e.g. bfloat16 from ml_dtypes, which MLX cannot read
    y = _upload(a)
    return y if y.dtype == _F32 else y.astype(_F32)


def _is_bfloat16(a: np.ndarray) -> bool:
    return a.dtype.name == "bfloat16" and a.dtype.itemsize == 2   # ml_dtypes: same bits as mx.bfloat16


def _bfloat16_array(a: np.ndarray):
    return mx.array(a.view(np.uint16)).view(mx.bfloat16)


def _upload_weight(w):
    """A host weight on the device in its own dtype where MLX has it (float16 stays float16)."""
    a = _host(w)
    if a.dtype == _NP_F16 or a.dtype == _NP_F32:
        return mx.array(a)
    if _is_bfloat16(a):
        return _bfloat16_array(a)
    return mx.array(a.astype(np.float32))


def _weight(w):
    """A weight as an ``mx.array`` in its storage dtype: NumPy arrays go through the weight cache."""
    if w.__class__ is _MX_ARRAY:
        return w
    if isinstance(w, _ndarray):
        return WEIGHTS.get(w, _upload_weight)
    return _upload_weight(w)


def _w32(w):
    w = _weight(w)
    return w if w.dtype == _F32 else w.astype(_F32)


def to_device(x):
    """``x`` as an ``mx.array`` of its own dtype (float64 becomes float32: MLX GPUs have no float64).

    This is ``Backend.from_numpy``: an engine hands its weights over with it (half precision stays half
    precision) and then drops the host arrays, so that they are held once (see README.md).
    """
    if x.__class__ is _MX_ARRAY:
        return x
    a = _host(x)
    if a.dtype.kind == "f" and a.dtype != _NP_F32 and a.dtype != _NP_F16:
        if _is_bfloat16(a):
            y = _bfloat16_array(a)
            TRANSFERS.upload(a.nbytes)
            return y
        a = a.astype(np.float32)
    return _upload(a)


@_on_stream
def to_host(x):
    """``x`` as a NumPy array (evaluated under the plugin's lock; a copy, counted as device -> host)."""
    if x.__class__ is not _MX_ARRAY:
        return np.asarray(x)
    if x.dtype == mx.bfloat16:
        x = x.astype(_F32)
    return _own_result_to_host(x, "to_numpy")


def _own_result_to_host(y, op: str):
    """``y`` evaluated and copied to the host under the plugin's lock, counted as device -> host (for the
    logits ops, their own product: a failure raises from the op, and the core falls back)."""
    with _LOCK:
        _eval([y], op)
        out = np.array(y, copy=True)
    TRANSFERS.download(out.nbytes)
    return out


def _evaluated_input(x, op: str) -> None:
    try:
        _eval([x], op)
    except MLXEvaluationError as exc:
        raise MLXEvaluationError(
            f"{op}: its input, computed by earlier ops and pending since the last evaluation "
            f"({_pending_text()}), failed to evaluate on the {device.device_name()} device ({exc.error}); "
            f"the CPU reference cannot read it either", pending=exc.pending, error=exc.error) from exc


# --- layout and the KV cache --------------------------------------------------------------------------

@_on_stream
def concatenate(arrays, axis):
    _PENDING["concatenate"] += 1
    return mx.concatenate([to_device(a) for a in arrays], axis=axis)


@_on_stream
def reshape(x, shape):
    _PENDING["reshape"] += 1
    return mx.reshape(to_device(x), tuple(shape))


@_on_stream
def transpose(x, axes):
    _PENDING["transpose"] += 1
    return mx.transpose(to_device(x), tuple(axes))


@_on_stream
def zeros(shape):
    """A float32 array of zeros on the device (e.g. a preallocated KV cache)."""
    return mx.zeros(tuple(shape), dtype=_F32)


@_on_stream
def write(dst, src, axis, start):
    """``dst`` with ``src`` written along ``axis`` from ``start`` (what mlx-lm's KVCache does by slice
    assignment).  Returns the updated array; rebind to it (``cache = write(cache, k, 2, t)``) so that
    the old one is dropped and MLX updates the buffer in place when it evaluates."""
    _PENDING["write"] += 1
    d = to_device(dst)
    s = to_device(src)
    if s.dtype != d.dtype:
        s = s.astype(d.dtype)
    return mx.slice_update(d, s, _start_index(int(start)), [int(axis)])


_START_INDICES: "collections.OrderedDict[int, Any]" = collections.OrderedDict()


def _start_index(start: int):
    """The (1,) int32 start of ``write`` on the device, shared by the layers of a step (a 4-byte upload)."""
    with _LOCK:
        index = _START_INDICES.get(start)
        if index is None:
            index = _START_INDICES[start] = _upload(np.array([start], np.int32))
            while len(_START_INDICES) > 8:
                _START_INDICES.popitem(last=False)
        return index


@_on_stream
def slice(x, axis, start, stop):  # noqa: A001 - the helper's name in the backend API
    """``x[..., start:stop, ...]`` along ``axis`` (e.g. the filled prefix of a KV cache)."""
    _PENDING["slice"] += 1
    x = to_device(x)
    index = [builtins.slice(None)] * x.ndim
    index[axis] = builtins.slice(int(start), int(stop))
    return x[tuple(index)]


# --- linear -----------------------------------------------------------------------------------------

@_on_stream
def linear_3d(x, weight):
    x = _act(x)
    w = _w32(weight)
    if x.shape[2] == 0:
        return mx.zeros((x.shape[0], x.shape[1], w.shape[0]), dtype=_F32)
    return _done("linear_3d", mx.matmul(x, w.T), x, w)


@_on_stream
def linear_3d_bias(x, weight, bias):
    y = linear_3d.__wrapped__(x, weight)          # already on the stream: not through its decorator again
    if bias is not None:
        y = _done("linear_3d_bias", y + _w32(bias), y)
    return y


# --- norms ------------------------------------------------------------------------------------------

@_on_stream
def rms_norm(x, weight, eps):
    x = _act(x)
    w = _w32(weight)
    if x.size == 0:
        return mx.zeros(x.shape, dtype=_F32)
    return _done("rms_norm", mx.fast.rms_norm(x, w, float(eps)), x, w)


@_on_stream
def layer_norm(x, weight, bias, eps):
    x = _act(x)
    w = _w32(weight)
    b = None if bias is None else _w32(bias)
    if x.size == 0:
        return mx.zeros(x.shape, dtype=_F32)
    xc = x - mx.mean(x, axis=-1, keepdims=True)
    return _done("layer_norm", mx.fast.layer_norm(xc, w, b, float(eps)), x, w, b is None)


# --- activations ------------------------------------------------------------------------------------

@_on_stream
def silu(x):
    x = _act(x)
    return _done("silu", x * mx.sigmoid(x), x)


# erfc(a) for a >= 0 as t * exp(-a^2 + P(t)), t = 1 / (1 + a/2) (Numerical Recipes' erfcc, fractional
# error < 1.2e-7 in exact arithmetic; evaluated in float32 here).
_ERFC_COEFFS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                0.09678418, 0.37409196, 1.00002368, -1.26551223)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_TWO_SQRT_2_OVER_PI = 2.0 * math.sqrt(2.0 / math.pi)


def _erfc_nonneg(a):
    t = 1.0 / (1.0 + 0.5 * a)
    p = t * _ERFC_COEFFS[0] + _ERFC_COEFFS[1]
    for c in _ERFC_COEFFS[2:]:
        p = p * t + c
    return t * mx.exp(p - a * a)


@_on_stream
def gelu(x, approximate):
    x = _act(x)
    if approximate == "tanh":
        z = x * (1.0 + 0.044715 * (x * x)) * _TWO_SQRT_2_OVER_PI
        return _done("gelu", x * mx.sigmoid(z), x, None, approximate)
    # 0.5 x (1 + erf(x / sqrt 2)) == 0.5 x erfc(-x / sqrt 2): evaluated directly for x < 0 (accurate in
    # the tail), as x (1 - 0.5 erfc(x / sqrt 2)) for x >= 0 (so that gelu(+inf) = +inf).
    e = _erfc_nonneg(mx.abs(x) * _INV_SQRT2)
    return _done("gelu", mx.where(x < 0, 0.5 * x * e, x * (1.0 - 0.5 * e)), x, None, approximate)


# --- elementwise ------------------------------------------------------------------------------------

@_on_stream
def add(a, b):
    a, b = _act(a), _act(b)
    return _done("add", mx.add(a, b), a, b)


@_on_stream
def mul(a, b):
    a, b = _act(a), _act(b)
    return _done("mul", mx.multiply(a, b), a, b)


# --- rope -------------------------------------------------------------------------------------------

_ROPE_TABLES: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_ROPE_TABLES_MAX = 8


def _host_values(a) -> np.ndarray:
    """Positions or inv_freq on the host (an ``mx.array`` is copied back: pass NumPy to avoid that)."""
    if a.__class__ is _MX_ARRAY:
        return to_host(a)
    return np.asarray(a)


def _rope_table(positions, inv_freq64: np.ndarray, scaling: float):
    """cos | sin of position * inv_freq (float64 on the host, times ``scaling``), as one float32 device
    array of shape (1 or B, 1, S, R): cached by content, so the layers of a step share one upload."""
    p = _host_values(positions)
    key = (p.shape, p.dtype.str, p.tobytes(), inv_freq64.tobytes(), float(scaling))
    with _LOCK:
        table = _ROPE_TABLES.get(key)
        if table is not None:
            _ROPE_TABLES.move_to_end(key)
            return table
    angle = p.astype(np.float64)[..., None] * inv_freq64              # (S, R/2) or (B, S, R/2)
    host = np.concatenate([np.cos(angle), np.sin(angle)], axis=-1) * float(scaling)
    host = host.astype(np.float32)
    host = host.reshape((1, 1) + host.shape) if p.ndim == 1 else host[:, None]
    table = _upload(np.ascontiguousarray(host))
    with _LOCK:
        _ROPE_TABLES[key] = table
        while len(_ROPE_TABLES) > _ROPE_TABLES_MAX:
            _ROPE_TABLES.popitem(last=False)
    return table


def _rope(op: str, x, positions, inv_freq64: np.ndarray, scaling: float):
    x = _act(x)
    if x.size == 0:
        return mx.zeros(x.shape, dtype=_F32)
    half = int(inv_freq64.shape[0])
    rot = 2 * half
    table = _rope_table(positions, inv_freq64, scaling)
    cos, sin = table[..., :half], table[..., half:]
    x1, x2 = x[..., :half], x[..., half:rot]
    parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if rot < x.shape[-1]:
        parts.append(x[..., rot:])
    return _done(op, mx.concatenate(parts, axis=-1), x, table)


@functools.lru_cache(maxsize=16)
def _base_inv_freq(base: float, rotary_dim: int) -> np.ndarray:
    """base ** (-2i / rotary_dim), float64, read-only and cached (every layer's q and k ask for it)."""
    inv = float(base) ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    inv.setflags(write=False)
    return inv


@_on_stream
def apply_rope(x, positions, inv_freq, attention_scaling):
    """Rotate-half RoPE over the first 2 * len(inv_freq) channels, angle = position * inv_freq (the
    float32 values given, multiplied in float64), cos and sin times ``attention_scaling``."""
    f = _host_values(inv_freq)
    return _rope("apply_rope", x, positions, f.astype(np.float64).reshape(-1), float(attention_scaling))


@_on_stream
def apply_rope_positions(x, positions, base):
    return _rope("apply_rope_positions", x, positions, _base_inv_freq(float(base), x.shape[-1]), 1.0)


@_on_stream
def apply_rope_partial(x, positions, base, rotary_dim):
    return _rope("apply_rope_partial", x, positions, _base_inv_freq(float(base), int(rotary_dim)), 1.0)


# --- attention --------------------------------------------------------------------------------------

def _kv_mask(kv_mask):
    if kv_mask.__class__ is _MX_ARRAY:
        return kv_mask if kv_mask.dtype == _BOOL else kv_mask.astype(_BOOL)
    return _upload(_host(kv_mask).astype(np.bool_, copy=False))


def _query_key_positions(sq: int, sk: int):
    """``(i, j)``: the absolute query positions (Sq, 1), the KV-cache offset counted, and the key positions
    (1, Sk); a causal query sees the keys ``j <= i`` (lower-right alignment)."""
    return mx.arange(sq, dtype=mx.int32)[:, None] + (sk - sq), mx.arange(sk, dtype=mx.int32)[None, :]


def _mask(sq: int, sk: int, causal: bool, window, kv_mask):
    """None, "causal", or a boolean array broadcastable to (B, 1, Sq, Sk): True = the key is seen."""
    if window is not None and int(window) >= sk:
        window = None                              # p - W < 0 <= j for every key: the window hides none
    need_positions = causal and (window is not None or (kv_mask is not None and sq > 1))
    if kv_mask is None and not need_positions:
        return "causal" if causal and sq > 1 else None
    m = None
    if need_positions:
        i, j = _query_key_positions(sq, sk)
        m = j <= i
        if window is not None:
            m = mx.logical_and(m, j > i - int(window))
        m = m[None, None]
    if kv_mask is not None:
        km = _kv_mask(kv_mask)[:, None, None, :]
        m = km if m is None else mx.logical_and(m, km)
    return m


def _scores_attention(q, k, v, scale: float, softcap: float, mask):
    """softmax(c * tanh(q k^T * scale / c) masked) v, grouped-query (mlx-lm's Gemma 2 does the same)."""
    b, h, sq, d = q.shape
    kv = k.shape[1]
    g = h // kv
    qg = (q * scale).reshape(b, kv, g, sq, d)
    scores = mx.matmul(qg, mx.expand_dims(k, 2).swapaxes(-1, -2))           # (B, KV, G, Sq, Sk)
    scores = mx.tanh(scores / softcap) * softcap
    if mask is not None:
        if isinstance(mask, str):                                            # "causal", lower-right
            i, j = _query_key_positions(sq, k.shape[2])
            mask = (j <= i)[None, None]
        scores = mx.where(mx.expand_dims(mask, 2), scores, -math.inf)
    probs = mx.softmax(scores, axis=-1, precise=True)
    return mx.matmul(probs, mx.expand_dims(v, 2)).reshape(b, h, sq, d)


@_on_stream
def gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask):
    q, k, v = _act(q), _act(k), _act(v)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    if q.size == 0 or sk == 0:
        return mx.zeros(q.shape, dtype=_F32)       # nothing to compute, or no key to see: zeros
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    mask = _mask(sq, sk, bool(causal), sliding_window, kv_mask)
    seen = None
    if kv_mask is not None:                        # then mask is an array (_mask)
        # A row whose keys are all masked (padding) would be 0/0: let it see every key, zero it after.
        seen = mx.any(mask, axis=-1, keepdims=True)
        mask = mx.logical_or(mask, mx.logical_not(seen))
    kvh = k.shape[1]
    if softcap is not None:
        out = _scores_attention(q, k, v, scale, float(softcap), mask)
    elif sq == 1 and h > kvh:                      # (mask is None or an array: "causal" needs Sq > 1)
        # Decode: fold each KV head's G query heads into the query axis (multi-head, Sq = G).
        g = h // kvh
        out = mx.fast.scaled_dot_product_attention(q.reshape(b, kvh, g, d), k, v, scale=scale, mask=mask)
        out = out.reshape(b, h, 1, d)
    else:
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    # An infinity in a query row makes every score of the row infinite or NaN, so the softmax is NaN (as the
    # formula, the float64 oracle and the CPU reference give); the fused kernel's finite row maximum would
    # turn a row of -inf scores into finite garbage instead.  One reduction over q, in the same graph.
    out = mx.where(mx.any(mx.isinf(q), axis=-1, keepdims=True), mx.array(float("nan"), dtype=_F32), out)
    if seen is not None:
        out = mx.where(seen, out, 0.0)
    static = (bool(causal), sliding_window is not None, softcap is not None, kv_mask is not None)
    return _done("gqa_attention", out, q, k, static)


# --- logits -----------------------------------------------------------------------------------------

def _softcap(y, softcap):
    if softcap is None:
        return y
    c = float(softcap)
    return mx.tanh(y / c) * c


@_on_stream
def logits_from_hidden(hidden, lm_head, softcap):
    w = _w32(lm_head)
    if hidden.shape[0] == 0:
        return np.zeros((0, w.shape[0]), np.float32)
    if hidden.__class__ is not _MX_ARRAY:
        last = _act(np.asarray(hidden)[:, -1, :])      # upload only the last position
    else:
        last = _act(hidden[:, -1, :])
    if last.shape[-1] == 0:
        return np.zeros((last.shape[0], w.shape[0]), np.float32)
    _evaluated_input(last, "logits_from_hidden")
    return _own_result_to_host(_softcap(mx.matmul(last, w.T), softcap), "logits_from_hidden")


@_on_stream
def all_logits_from_hidden(hidden, lm_head, softcap):
    x = _act(hidden)
    w = _w32(lm_head)
    if x.size == 0:
        return np.zeros((x.shape[0], x.shape[1], w.shape[0]), np.float32)
    _evaluated_input(x, "all_logits_from_hidden")
    return _own_result_to_host(_softcap(mx.matmul(x, w.T), softcap), "all_logits_from_hidden")


# --- embedding --------------------------------------------------------------------------------------

@_on_stream
def embedding(ids, table):
    """``table[ids]`` as float32 (B, S, D): the table stays on the device (cached like a weight, in its
    own dtype), so a decode step uploads only the token ids."""
    t = _weight(table)
    if ids.__class__ is _MX_ARRAY:
        idx = ids if ids.dtype == mx.int32 else ids.astype(mx.int32)
    else:
        idx = _upload(_host(ids).astype(np.int32, copy=False))
    out = mx.take(t, idx, axis=0)
    out = out if out.dtype == _F32 else out.astype(_F32)
    return _done("embedding", out, t, idx)
