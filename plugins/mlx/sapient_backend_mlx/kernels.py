"""MLX kernels, one function per op of the sapient_core contract.  Importing this module imports MLX.

Each function has its hook's exact signature and assumes validated input (the core checks shapes and
dtypes first).  Inputs are NumPy arrays or ``mx.array``s; float16 / bfloat16 are computed in float32;
results are float32 ``mx.array``s, left unevaluated (MLX is lazy: a chain of ops becomes one graph,
evaluated when a result is brought to the host), except the two logits ops, which return NumPy.

Numerical choices (what the tests check against the float64 oracle):

- matmuls (``linear_3d``, logits) are float32 ``mx.matmul`` with full float32 accumulation:
  ``MLX_ENABLE_TF32=0`` is set before MLX is imported (see :mod:`._runtime`), so no TF32 on NVIDIA
  or M5-class GPUs;
- ``rms_norm`` is ``mx.fast.rms_norm``; ``layer_norm`` is ``mx.fast.layer_norm`` applied to
  ``x - mean(x)``: the fast kernel alone loses the variance when the mean is large compared with the
  spread (relative error 1e-3 at mean 1e4, 1e-1 at 1e5 measured with MLX 0.32), and centring first
  makes it as accurate as the CPU reference for one extra reduction;
- ``silu`` is ``x * mx.sigmoid(x)`` (MLX's sigmoid never overflows); GELU "tanh" is
  ``x * sigmoid(2u)`` (the same function as ``0.5 x (1 + tanh u)``, without the cancellation in the
  negative tail); GELU "none" uses ``erfc`` (Numerical Recipes' Chebyshev fit; the CPU reference
  uses a Mills-ratio fit of its own): ``mx.erf`` exists, but ``0.5 x (1 + erf(x / sqrt 2))`` cancels
  to exactly 0 below x = -5.5, while erfc keeps a relative error below 2e-5 out to x = -12;
- RoPE is ``mx.fast.rope(traditional=False)``, which is the rotate-half (NeoX / Hugging Face)
  convention with ``inv_freq_i = base ** (-2i / dims)`` over the first ``dims`` channels, the others
  copied: exactly ``apply_rope_partial`` with ``dims = rotary_dim``.  Contiguous positions
  ``p0, p0+1, ...`` pass ``offset=p0``.  Non-contiguous positions are computed on MLX too: the
  sequence axis is moved to the batch axis, so that each position is a batch row of length 1 with
  its own offset (``offset`` accepts one per batch row).  Angles are float32 (as in Hugging Face and
  MLX models), so the absolute error grows with the position, about ``|p| * 2**-24 * max|x|``
  (1e-4 at position 1000, 6e-3 at 60000); positions of magnitude ``2**24`` or more, which float32
  cannot even represent, are declined (the CPU reference, with float64 angles, computes them);
- attention is ``mx.fast.scaled_dot_product_attention``, which handles grouped-query attention
  natively (K and V are never repeated) and whose ``"causal"`` mask is aligned lower-right, which is
  the contract's KV-cache offset.
"""

from __future__ import annotations

import math

import numpy as np
from sapient_core import OpDeclined

from . import _runtime
from .cache import TRANSFERS, WEIGHTS

mx = _runtime.import_mlx()

__all__ = [
    "linear_3d", "linear_3d_bias", "rms_norm", "layer_norm", "silu", "gelu", "add", "mul",
    "apply_rope_positions", "apply_rope_partial", "gqa_attention", "logits_from_hidden",
    "all_logits_from_hidden", "as_activation", "as_weight", "to_device", "to_host", "concatenate",
    "MAX_ROPE_POSITION",
]

_F32 = mx.float32
_MX_ARRAY = mx.array
_NP_F32 = np.dtype(np.float32)
_NP_F16 = np.dtype(np.float16)
_ndarray = np.ndarray

#: Positions of this magnitude or more are declined (float32 cannot represent them exactly).
MAX_ROPE_POSITION = 2 ** 24


# --- moving data ------------------------------------------------------------------------------------

def _host_float(x):
    a = np.asarray(x)
    if a.dtype != _NP_F32 and a.dtype != _NP_F16:
        a = a.astype(np.float32)          # e.g. bfloat16 from ml_dtypes, which MLX cannot read
    return a


def as_activation(x):
    """``x`` as a float32 ``mx.array`` (NumPy input is uploaded afresh and counted)."""
    if x.__class__ is _MX_ARRAY:
        return x if x.dtype == _F32 else x.astype(_F32)
    a = _host_float(x)
    y = mx.array(a)
    TRANSFERS.upload(a.nbytes)
    return y if y.dtype == _F32 else y.astype(_F32)


def _upload_weight(w):
    a = _host_float(w)
    y = mx.array(a)
    if y.dtype != _F32:
        y = y.astype(_F32)
        mx.eval(y)                        # the cache keeps the float32 copy, not the float16 upload
    return y


def as_weight(w):
    """A weight as a float32 ``mx.array``: NumPy arrays go through the weight cache."""
    if w.__class__ is _MX_ARRAY:
        return w if w.dtype == _F32 else w.astype(_F32)
    if isinstance(w, _ndarray):
        return WEIGHTS.get(w, _upload_weight)
    return as_activation(w)


def to_device(x):
    """``x`` as an ``mx.array`` of its own dtype (float64 becomes float32: MLX GPUs have no float64)."""
    if x.__class__ is _MX_ARRAY:
        return x
    a = np.asarray(x)
    if a.dtype.kind == "f" and a.dtype != _NP_F32 and a.dtype != _NP_F16:
        a = a.astype(np.float32)
    y = mx.array(a)
    TRANSFERS.upload(a.nbytes)
    return y


def to_host(x):
    """``x`` as a NumPy array (a copy; counted as a device -> host transfer)."""
    if x.__class__ is not _MX_ARRAY:
        return np.asarray(x)
    if x.dtype == mx.bfloat16:
        x = x.astype(_F32)
    out = np.array(x, copy=True)
    TRANSFERS.download(out.nbytes)
    return out


def concatenate(arrays, axis):
    return mx.concatenate([to_device(a) for a in arrays], axis=axis)


# --- linear -----------------------------------------------------------------------------------------

def linear_3d(x, weight):
    x = as_activation(x)
    w = as_weight(weight)
    if x.shape[2] == 0:
        return mx.zeros((x.shape[0], x.shape[1], w.shape[0]), dtype=_F32)
    return mx.matmul(x, w.T)


def linear_3d_bias(x, weight, bias):
    y = linear_3d(x, weight)
    if bias is not None:
        y = y + as_weight(bias)
    return y



# --- norms ------------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    x = as_activation(x)
    w = as_weight(weight)
    if x.size == 0:
        return mx.zeros(x.shape, dtype=_F32)
    return mx.fast.rms_norm(x, w, float(eps))


def layer_norm(x, weight, bias, eps):
    x = as_activation(x)
    w = as_weight(weight)
    b = None if bias is None else as_weight(bias)
    if x.size == 0:
        return mx.zeros(x.shape, dtype=_F32)
    x = x - mx.mean(x, axis=-1, keepdims=True)
    return mx.fast.layer_norm(x, w, b, float(eps))


# --- activations ------------------------------------------------------------------------------------

def silu(x):
    x = as_activation(x)
    return x * mx.sigmoid(x)


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


def gelu(x, approximate):
    x = as_activation(x)
    if approximate == "tanh":
        z = x * (1.0 + 0.044715 * (x * x)) * _TWO_SQRT_2_OVER_PI
        return x * mx.sigmoid(z)
    # 0.5 x (1 + erf(x / sqrt 2)) == 0.5 x erfc(-x / sqrt 2): evaluated directly for x < 0 (accurate in
    # the tail), as x (1 - 0.5 erfc(x / sqrt 2)) for x >= 0 (so that gelu(+inf) = +inf).
    e = _erfc_nonneg(mx.abs(x) * _INV_SQRT2)
    return mx.where(x < 0, 0.5 * x * e, x * (1.0 - 0.5 * e))


# --- elementwise ------------------------------------------------------------------------------------

def add(a, b):
    return mx.add(as_activation(a), as_activation(b))


def mul(a, b):
    return mx.multiply(as_activation(a), as_activation(b))


# --- rope -------------------------------------------------------------------------------------------

def _rope(x, positions, base, dims):
    x = as_activation(x)
    b, h, s, d = x.shape
    if x.size == 0:
        return mx.zeros(x.shape, dtype=_F32)
    base = float(base)
    if positions.__class__ is _MX_ARRAY:
        offsets = positions.astype(mx.int32)
    else:
        p = np.asarray(positions)
        lo, hi = int(p.min()), int(p.max())
        if max(-lo, hi) >= MAX_ROPE_POSITION:
            raise OpDeclined(f"positions up to {max(-lo, hi)} are beyond 2**24, which MLX's float32 RoPE "
                             f"angles cannot represent")
        p0 = int(p[0])
        if s == 1 or (hi - lo == s - 1 and p0 == lo and np.array_equal(p, np.arange(lo, lo + s))):
            return mx.fast.rope(x, dims, traditional=False, base=base, scale=1.0, offset=p0)
        offsets = mx.array(p.astype(np.int32))
        TRANSFERS.upload(offsets.nbytes)
    # Non-contiguous positions: one batch row of length 1 per position, each with its own offset.
    rows = x.transpose(2, 0, 1, 3).reshape(s, b * h, 1, d)
    out = mx.fast.rope(rows, dims, traditional=False, base=base, scale=1.0, offset=offsets)
    return out.reshape(s, b, h, d).transpose(1, 2, 0, 3)


def apply_rope_positions(x, positions, base):
    return _rope(x, positions, base, x.shape[-1])


def apply_rope_partial(x, positions, base, rotary_dim):
    return _rope(x, positions, base, int(rotary_dim))


# --- attention --------------------------------------------------------------------------------------

def gqa_attention(q, k, v, n_kv_heads, causal):
    q = as_activation(q)
    k = as_activation(k)
    v = as_activation(v)
    if q.size == 0:
        return mx.zeros(q.shape, dtype=_F32)
    sq = q.shape[2]
    mask = "causal" if causal and sq > 1 else None      # Sq == 1 sees every key either way
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[3]), mask=mask)


# --- logits -----------------------------------------------------------------------------------------

def logits_from_hidden(hidden, lm_head):
    w = as_weight(lm_head)
    if hidden.shape[0] == 0:
        return np.zeros((0, w.shape[0]), np.float32)
    if hidden.__class__ is not _MX_ARRAY:
        hidden = np.asarray(hidden)[:, -1, :]    # upload only the last position
        last = as_activation(hidden)
    else:
        last = as_activation(hidden[:, -1, :])
    if last.shape[-1] == 0:
        return np.zeros((last.shape[0], w.shape[0]), np.float32)
    return to_host(mx.matmul(last, w.T))


def all_logits_from_hidden(hidden, lm_head):
    return to_host(linear_3d(hidden, lm_head))
