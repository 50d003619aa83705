"""float64 oracles, written straight from the formulas of the contract (SPEC §4).

Each function takes NumPy-convertible arrays, computes in float64 with the most literal NumPy
expression of the formula (no tricks, no fusion), and returns float64.  They are slow and exact on
purpose: they are what every backend, the CPU reference included, is measured against.
:class:`OracleBackend` offers them as methods, so the same model code can run on a backend and on the
oracle.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "linear_3d", "linear_3d_bias", "rms_norm", "layer_norm", "silu", "gelu", "add", "mul",
    "apply_rope_positions", "apply_rope_partial", "gqa_attention", "logits_from_hidden",
    "all_logits_from_hidden", "OracleBackend",
]


def _f64(x):
    return None if x is None else np.asarray(x, dtype=np.float64)


def linear_3d(x, weight):
    return np.einsum("bsi,oi->bso", _f64(x), _f64(weight), optimize=True)  # optimize: BLAS, same sums in float64


def linear_3d_bias(x, weight, bias):
    y = linear_3d(x, weight)
    return y if bias is None else y + _f64(bias)


def rms_norm(x, weight, eps):
    x = _f64(x)
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * _f64(weight)


def layer_norm(x, weight, bias, eps):
    x = _f64(x)
    mean = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * _f64(weight)
    return y if bias is None else y + _f64(bias)


def _sigmoid(z):
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def silu(x):
    x = _f64(x)
    return x * _sigmoid(x)


_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def gelu(x, approximate="none"):
    x = _f64(x)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    # 0.5 x (1 + erf(x/sqrt2)) == 0.5 x erfc(-x/sqrt2); erfc keeps the negative tail exact.
    return 0.5 * x * _erfc(-x / math.sqrt(2.0))


def add(a, b):
    return _f64(a) + _f64(b)


def mul(a, b):
    return _f64(a) * _f64(b)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope_partial(x, positions, base, rotary_dim):
    x = _f64(x)
    inv_freq = float(base) ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    freqs = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)                    # (S, rotary_dim)
    rot = x[..., :rotary_dim]
    rot = rot * np.cos(emb) + _rotate_half(rot) * np.sin(emb)
    return np.concatenate([rot, x[..., rotary_dim:]], axis=-1)


def apply_rope_positions(x, positions, base):
    return apply_rope_partial(x, positions, base, np.shape(x)[-1])


def gqa_attention(q, k, v, n_kv_heads, causal):
    q, k, v = _f64(q), _f64(k), _f64(v)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    group = h // n_kv_heads
    k = np.repeat(k, group, axis=1)                  # Hugging Face repeat_kv: head j -> j*group ...
    v = np.repeat(v, group, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if causal:
        i = np.arange(sq)[:, None]
        j = np.arange(sk)[None, :]
        scores = np.where(j <= i + (sk - sq), scores, -np.inf)
    if scores.size == 0:
        return np.zeros((b, h, sq, d))
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    return p @ v


def logits_from_hidden(hidden, lm_head):
    return _f64(hidden)[:, -1, :] @ _f64(lm_head).T


def all_logits_from_hidden(hidden, lm_head):
    return _f64(hidden) @ _f64(lm_head).T


class OracleBackend:
    """The oracles as a backend-like object (float64 NumPy in and out), for composed-model tests."""

    name = "oracle"
    device = "cpu"

    linear_3d = staticmethod(linear_3d)
    linear_3d_bias = staticmethod(linear_3d_bias)
    rms_norm = staticmethod(rms_norm)
    layer_norm = staticmethod(layer_norm)
    silu = staticmethod(silu)
    gelu = staticmethod(gelu)
    add = staticmethod(add)
    mul = staticmethod(mul)
    apply_rope_positions = staticmethod(apply_rope_positions)
    apply_rope_partial = staticmethod(apply_rope_partial)
    gqa_attention = staticmethod(gqa_attention)
    logits_from_hidden = staticmethod(logits_from_hidden)
    all_logits_from_hidden = staticmethod(all_logits_from_hidden)

    @staticmethod
    def to_numpy(x):
        return np.asarray(x)

    @staticmethod
    def from_numpy(x):
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def concatenate(arrays, axis=0):
        return np.concatenate([np.asarray(a) for a in arrays], axis)
