"""Error bounds used by the CPU plugin's numerics tests, each with the reason it is what it is.

``U`` is the float32 unit roundoff (2**-24, half an ulp of 1); ``EPS`` = 2 U.  The float64 oracle is
exact to far below these bounds, so every bound is a bound on the float32 kernel's own rounding.

| op | bound on abs(kernel - oracle) | why |
| --- | --- | --- |
| add, mul | U * abs(ref) | one correctly rounded float32 operation |
| linear, logits (K-long dots) | 4 sqrt(K) U * sum_i abs(x_i w_i) (+ U abs(b)) | BLAS sums in blocks and with FMA; the worst case is K U, the error of a random-signed sum grows like sqrt(K) U; 4 is the margin over the largest seen |
| rms_norm | 8 EPS * abs(ref) | pairwise sum of squares (log2 D levels, but all terms positive: relative error <= few U), sqrt, one scale, one multiply |
| layer_norm | 8 EPS * (abs(ref) + abs(w) + abs(b)) | as rms_norm after centring; the centred value's rounding is relative to the output scale, not the element |
| silu | 3 EPS (1 + abs(x)) abs(ref) | exp2(-x log2 e): rounding the argument costs abs(x) U relative (silu's own condition number is ~ 1 + abs(x)); exp2 <= 3 ulp |
| gelu exact | 4 EPS (1 + x^2) abs(ref) | fit error 6.4e-8 (1 + x^2/2) plus exp2 of x^2/2 rounded (x^2 U); gelu's condition number in the negative tail is ~ 1 + x^2 |
| gelu tanh | 4 EPS (1 + abs(z)) abs(ref), z = 2 sqrt(2/pi)(x + 0.044715 x^3) log2 e | as silu, with the exponent z |
| rope | 4 EPS (abs(x1) + abs(x2)) max(1, attention scaling) | two products and a sum per output, cos/sin rounded once |
| attention | see ``attention_bound`` | score errors move the softmax; the output is a convex combination of v |
"""

from __future__ import annotations

import numpy as np

U = 2.0 ** -24
EPS = 2.0 ** -23


def dot_bound(x, w, bias=None):
    """Bound for x @ w.T computed in float32: 4 sqrt(K) U sum_i |x_i w_i| (+ one rounding of the bias)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    k = x.shape[-1]
    bound = 4.0 * np.sqrt(max(k, 1)) * U * (np.abs(x) @ np.abs(w).T) + 1e-45
    if bias is not None:
        bound = bound + 2 * U * np.abs(np.asarray(bias, np.float64))
    return bound


def attention_bound(q, k, v, n_kv_heads, scale=None, softcap=None):
    """Per output row: max|v| * (2 * ds + 8 sqrt(Sk) U + 8 U), ds the bound on the score errors.

    ds = 4 sqrt(d) U max_j scale * sum_i |q_i k_ji| (a d-long dot product, scaled; plus one rounding
    of the scale); a score error ds changes each softmax weight by at most a factor exp(2 ds) and the
    output is a convex combination of the rows of v; p @ v adds a Sk-long sum of positive weights.
    With a softcap c, scores = c tanh(s / c): tanh' <= 1 passes ds on unchanged, and the division,
    tanh (<= 4 ulp) and the multiplication by c add at most 12 U c.  Masked keys only remove terms, so
    the bound over all keys covers every mask.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, h, sq, d = q.shape
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    g = h // n_kv_heads
    kr = np.repeat(np.abs(k), g, axis=1)
    vr = np.repeat(np.abs(v), g, axis=1)
    sk = k.shape[2]
    sabs = (np.abs(q) @ kr.transpose(0, 1, 3, 2)) * scale               # (b, h, sq, sk)
    ds = (4 * np.sqrt(d) + 2) * U * sabs.max(axis=-1, keepdims=True, initial=0.0)
    if softcap is not None:
        ds = ds + 12 * U * softcap
    vmax = vr.max(axis=(2, 3), initial=0.0)[:, :, None, None]
    return vmax * (2 * ds + 8 * np.sqrt(sk) * U + 8 * U)


def rope_bound(x, rotary_dim, scaling=1.0):
    """4 EPS (|x1| + |x2|) per rotated channel, times the attention scaling that multiplies cos and sin
    (two products and a sum per output, cos/sin rounded once); the copied channels are exact."""
    x = np.abs(x.astype(np.float64))
    half = rotary_dim // 2
    pair = x[..., :half] + x[..., half:rotary_dim]
    rot = 4 * EPS * max(1.0, scaling) * np.concatenate([pair, pair], axis=-1)
    return np.concatenate([rot, np.zeros_like(x[..., rotary_dim:])], axis=-1)


def f32_result(y, shape):
    """``y``, after checking that it is a float32 NumPy array of ``shape``."""
    assert isinstance(y, np.ndarray) and y.dtype == np.float32, (type(y), getattr(y, "dtype", None))
    assert y.shape == shape, (y.shape, shape)
    return y


def assert_within(got, ref, bound, what):
    """abs(got - ref) <= bound elementwise, with the worst element in the message."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != oracle {ref.shape}"
    err = np.abs(got - ref)
    bound = np.broadcast_to(np.asarray(bound, np.float64), err.shape)
    bad = ~(err <= bound)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / np.maximum(bound, 1e-300), 0)), err.shape)
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.size} elements out of bounds; worst at {i}: "
                             f"got {got[i]!r}, oracle {ref[i]!r}, error {err[i]:.3e} > bound {bound[i]:.3e}")
