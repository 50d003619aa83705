"""NumPy reference kernels, one function per op of the sapient_core contract.

Each function has its hook's exact signature and assumes validated input (the core checks shapes and
dtypes before calling).  Inputs may be float16 or any array NumPy can convert; everything is computed
and returned in float32.  Where float32 alone would lose accuracy, the kernel works around it: norm
statistics use pairwise summation and a float64 mean, RoPE angles are computed in float64, softmax
subtracts the row maximum, and sigmoid is evaluated in a form that never overflows.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = [
    "linear_3d", "linear_3d_bias", "rms_norm", "layer_norm", "silu", "gelu", "add", "mul",
    "apply_rope_positions", "apply_rope_partial", "gqa_attention", "logits_from_hidden",
    "all_logits_from_hidden", "erf", "erfc",
]

_F32 = np.dtype(np.float32)
_ndarray = np.ndarray


def _f32(x):
    """``x`` as a float32 ndarray (no copy when it already is one)."""
    if x.__class__ is _ndarray and x.dtype is _F32:
        return x
    return np.asarray(x, dtype=np.float32)


# --- linear ------------------------------------------------------------------------------------------

def linear_3d(x, weight):
    x = _f32(x)
    w = _f32(weight)
    b, s, n = x.shape
    if x.flags.c_contiguous:
        return np.dot(x.reshape(b * s, n), w.T).reshape(b, s, w.shape[0])
    return np.matmul(x, w.T)


def linear_3d_bias(x, weight, bias):
    y = linear_3d(x, weight)
    if bias is not None:
        y += _f32(bias)
    return y


# --- norms -------------------------------------------------------------------------------------------

def rms_norm(x, weight, eps):
    x = _f32(x)
    w = _f32(weight)
    if x.size == 0:
        return np.empty(x.shape, np.float32)
    out = np.square(x)
    ms = out.sum(axis=-1, keepdims=True)          # pairwise summation along the contiguous axis
    ms *= np.float32(1.0 / x.shape[-1])
    ms += np.float32(eps)
    np.sqrt(ms, out=ms)
    np.divide(x, ms, out=out)
    out *= w
    return out


def layer_norm(x, weight, bias, eps):
    x = _f32(x)
    w = _f32(weight)
    if x.size == 0:
        return np.empty(x.shape, np.float32)
    inv_d = np.float32(1.0 / x.shape[-1])
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    xc = x - mean
    corr = xc.sum(axis=-1, keepdims=True)         # what the float32 rounding of the mean left behind
    corr *= inv_d
    xc -= corr
    var = np.square(xc)
    var = var.sum(axis=-1, keepdims=True)
    var *= inv_d
    var += np.float32(eps)
    np.sqrt(var, out=var)
    xc /= var
    xc *= w
    if bias is not None:
        xc += _f32(bias)
    return xc


# --- activations -------------------------------------------------------------------------------------

def _times_sigmoid(x, z):
    """``x * sigmoid(z)`` computed without overflow: with e = exp(-|z|) <= 1,
    sigmoid(z) = 1 / (1 + e) for z >= 0 and e / (1 + e) for z < 0."""
    e = np.abs(z)
    np.negative(e, out=e)
    np.exp(e, out=e)
    num = np.where(z < 0, e, np.float32(1.0))
    num *= x
    e += np.float32(1.0)
    num /= e
    return num


def silu(x):
    x = _f32(x)
    return _times_sigmoid(x, x)


# erfc(a) for a >= 0 as t * exp(-a^2 + P(t)), t = 1 / (1 + a/2): the Chebyshev fit of Numerical
# Recipes (erfcc), whose fractional error is below 1.2e-7 everywhere; evaluated in float64.
_ERFC_COEFFS = (0.17087277, -0.82215223, 1.48851587, -1.13520398, 0.27886807, -0.18628806,
                0.09678418, 0.37409196, 1.00002368, -1.26551223)


def _erfc_nonneg(a):
    """erfc(a) for a >= 0 (float64 array), relative error below 1.2e-7."""
    t = 1.0 / (1.0 + 0.5 * a)
    p = np.full_like(a, _ERFC_COEFFS[0])
    for c in _ERFC_COEFFS[1:]:
        p *= t
        p += c
    p -= a * a
    np.exp(p, out=p)
    p *= t
    return p


def erfc(x):
    """Complementary error function of a float array (float64 result), relative error < 1.2e-7."""
    x = np.asarray(x, dtype=np.float64)
    e = _erfc_nonneg(np.abs(x))
    return np.where(x < 0, 2.0 - e, e)


def erf(x):
    """Error function of a float array (float64 result), absolute error < 1.2e-7."""
    x = np.asarray(x, dtype=np.float64)
    e = _erfc_nonneg(np.abs(x))
    return np.where(x < 0, e - 1.0, 1.0 - e)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu(x, approximate):
    x = _f32(x)
    if approximate == "tanh":
        # 0.5 (1 + tanh(u)) == sigmoid(2u): the stable sigmoid keeps the negative tail accurate.
        z = x * x
        z *= np.float32(0.044715)
        z += np.float32(1.0)
        z *= x
        z *= np.float32(2.0 * _SQRT_2_OVER_PI)
        return _times_sigmoid(x, z)
    # 0.5 x (1 + erf(x / sqrt 2)) == 0.5 x erfc(-x / sqrt 2); for x < 0 erfc is evaluated directly
    # (accurate in the tail), for x >= 0 as 2 - erfc(|x| / sqrt 2).
    xd = x.astype(np.float64)
    e = _erfc_nonneg(np.abs(xd) * (1.0 / math.sqrt(2.0)))
    e = np.where(xd < 0, e, 2.0 - e)
    e *= xd
    e *= 0.5
    return e.astype(np.float32)


# --- elementwise -------------------------------------------------------------------------------------

def add(a, b):
    return np.add(_f32(a), _f32(b))


def mul(a, b):
    return np.multiply(_f32(a), _f32(b))


# --- rope --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _inv_freq(base, rotary_dim):
    return float(base) ** (-(np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))


def _rope(x, positions, base, rotary_dim):
    x = _f32(x)
    half = rotary_dim // 2
    pos = np.asarray(positions, dtype=np.float64)
    angles = pos[:, None] * _inv_freq(float(base), rotary_dim)[None, :]   # (S, half), float64
    cos = np.cos(angles).astype(np.float32)
    sin = np.sin(angles).astype(np.float32)
    out = np.empty_like(x)
    x1 = x[..., :half]
    x2 = x[..., half:rotary_dim]
    lo = out[..., :half]
    hi = out[..., half:rotary_dim]
    np.multiply(x1, cos, out=lo)
    lo -= x2 * sin
    np.multiply(x2, cos, out=hi)
    hi += x1 * sin
    if rotary_dim < x.shape[-1]:
        out[..., rotary_dim:] = x[..., rotary_dim:]
    return out


def apply_rope_positions(x, positions, base):
    return _rope(x, positions, base, x.shape[-1])


def apply_rope_partial(x, positions, base, rotary_dim):
    return _rope(x, positions, base, int(rotary_dim))


# --- attention ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _causal_bias(sq, sk):
    """(Sq, Sk) float32: 0 where query i may see key j (j <= i + Sk - Sq), -inf elsewhere."""
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    bias = np.where(j <= i + (sk - sq), np.float32(0.0), np.float32(-np.inf)).astype(np.float32)
    bias.setflags(write=False)
    return bias


def gqa_attention(q, k, v, n_kv_heads, causal):
    q = _f32(q)
    k = _f32(k)
    v = _f32(v)
    b, h, sq, d = q.shape
    kv, sk = k.shape[1], k.shape[2]
    if b == 0 or sq == 0:
        return np.zeros((b, h, sq, d), np.float32)
    g = h // kv
    # Query heads j*g ... (j+1)*g-1 share kv head j: group them as rows of one matmul per kv head,
    # so K and V are never repeated.
    qg = q.reshape(b, kv, g * sq, d) * np.float32(1.0 / math.sqrt(d))
    scores = np.matmul(qg, k.transpose(0, 1, 3, 2))                      # (b, kv, g*sq, sk)
    if causal and sq > 1:
        scores.reshape(b, kv, g, sq, sk)[...] += _causal_bias(sq, sk)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    denom = scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v)                                            # (b, kv, g*sq, d)
    out /= denom
    return out.reshape(b, h, sq, d)


# --- logits ------------------------------------------------------------------------------------------

def logits_from_hidden(hidden, lm_head):
    hidden = _f32(hidden)
    w = _f32(lm_head)
    return np.dot(hidden[:, -1, :], w.T)


def all_logits_from_hidden(hidden, lm_head):
    return linear_3d(hidden, lm_head)
