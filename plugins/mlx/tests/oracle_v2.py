"""float64 oracles of the contract v2 additions (SPEC section 8), written straight from the formulas.

Kept in the MLX plugin's tests (``sapient_core.testing.oracle`` is being extended with the same
formulas elsewhere; these stay independent of it) and used by ``benchmarks/mlx_gpu_check.py``.  Each
takes NumPy-convertible arrays and returns float64, with the most literal NumPy expression of the
formula: Hugging Face transformers semantics.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["rope", "rope_base", "attention", "logits", "all_logits", "embedding"]


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def rope(x, positions, inv_freq, attention_scaling=1.0):
    """Rotate-half RoPE over the first R = 2 len(inv_freq) channels; angle = position * inv_freq;
    cos and sin times ``attention_scaling``; positions (S,) or (B, S)."""
    x = _f64(x)
    inv = _f64(inv_freq).reshape(-1)
    r = 2 * inv.shape[0]
    p = _f64(positions)
    angle = p[..., None] * inv                                   # (S, R/2) or (B, S, R/2)
    emb = np.concatenate([angle, angle], axis=-1)
    cos, sin = np.cos(emb) * attention_scaling, np.sin(emb) * attention_scaling
    if p.ndim == 2:
        cos, sin = cos[:, None], sin[:, None]                    # (B, 1, S, R): one row per batch item
    rot = x[..., :r]
    half = r // 2
    rotated = np.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    return np.concatenate([rot * cos + rotated * sin, x[..., r:]], axis=-1)


def rope_base(x, positions, base, rotary_dim=None):
    d = np.shape(x)[-1] if rotary_dim is None else rotary_dim
    return rope(x, positions, float(base) ** (-np.arange(0, d, 2, dtype=np.float64) / d))


def attention(q, k, v, n_kv_heads, causal, scale=None, sliding_window=None, softcap=None, kv_mask=None):
    """softmax over the keys each query may see of (softcapped, scaled) q k^T, times v; rows that see no
    key are zeros.  Grouped-query heads in Hugging Face ``repeat_kv`` order."""
    q, k, v = _f64(q), _f64(k), _f64(v)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    g = h // n_kv_heads
    k = np.repeat(k, g, axis=1)
    v = np.repeat(v, g, axis=1)
    scores = q @ k.transpose(0, 1, 3, 2) * (1.0 / math.sqrt(d) if scale is None else scale)
    if softcap is not None:
        scores = softcap * np.tanh(scores / softcap)
    seen = np.ones((b, 1, sq, sk), bool)
    p = np.arange(sq)[:, None] + (sk - sq)                      # absolute query positions
    j = np.arange(sk)[None, :]
    if causal:
        seen &= (j <= p)[None, None]
        if sliding_window is not None:
            seen &= (j > p - sliding_window)[None, None]
    if kv_mask is not None:
        seen &= np.asarray(kv_mask, bool)[:, None, None, :]
    out = np.zeros((b, h, sq, v.shape[-1]))
    for bi in range(b):
        for i in range(sq):
            cols = seen[bi, 0, i]
            if not cols.any():
                continue                                         # sees no key: zeros
            s = scores[bi][:, i][:, cols]                        # (H, keys seen)
            w = np.exp(s - s.max(axis=-1, keepdims=True))
            w /= w.sum(axis=-1, keepdims=True)
            out[bi, :, i] = np.einsum("hk,hkd->hd", w, v[bi][:, cols])
    return out


def logits(hidden, lm_head, softcap=None):
    y = _f64(hidden)[:, -1, :] @ _f64(lm_head).T
    return y if softcap is None else softcap * np.tanh(y / softcap)


def all_logits(hidden, lm_head, softcap=None):
    y = _f64(hidden) @ _f64(lm_head).T
    return y if softcap is None else softcap * np.tanh(y / softcap)


def embedding(ids, table):
    return _f64(table)[np.asarray(ids)]
