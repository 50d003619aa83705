"""float64 oracles, written straight from the formulas of the contract (SPEC §4 and the v2 additions
of §8).

Each function takes NumPy-convertible arrays, computes in float64 with the most literal NumPy
expression of the formula (no tricks, no fusion), and returns float64.  The v2 arguments
(``scale``, ``sliding_window``, ``softcap``, ``kv_mask``; ``positions`` of shape [B, S]) have defaults
that give exactly the v1 behaviour, so v1 callers are unaffected.  The semantics are Hugging Face
transformers': rotate-half RoPE (``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb``), scores scaled,
then soft-capped (Gemma 2 ``attn_logit_softcapping``), then masked (``masking_utils``: causal, sliding
window ``p - W < j <= p``, padding); a query row with no visible key gives zeros.  They are slow and exact on
purpose: they are what every backend, the CPU reference included, is measured against.
:class:`OracleBackend` offers them as methods, so the same model code can run on a backend and on the
oracle.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "linear_3d", "linear_3d_bias", "rms_norm", "layer_norm", "silu", "gelu", "add", "mul",
    "apply_rope_positions", "apply_rope_partial", "apply_rope", "gqa_attention", "logits_from_hidden",
    "all_logits_from_hidden", "embedding", "rope_inv_freq", "visible_keys", "OracleBackend",
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


def rope_inv_freq(base, rotary_dim):
    """``base ** (-2i / rotary_dim)`` for i < rotary_dim / 2, float64 (the default RoPE frequencies)."""
    return float(base) ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def apply_rope(x, positions, inv_freq, attention_scaling=1.0):
    """Rotate-half RoPE over the first R = 2 len(inv_freq) channels of x [B, H, S, D], the rest unchanged.

    ``positions`` [S] (every batch row) or [B, S] (one row of positions per batch row);
    angle = position * inv_freq; cos and sin are multiplied by ``attention_scaling``.
    """
    x = _f64(x)
    inv_freq = np.asarray(inv_freq, dtype=np.float64).reshape(-1)
    rotary_dim = 2 * inv_freq.size
    pos = np.asarray(positions, dtype=np.float64)
    freqs = pos[..., :, None] * inv_freq                             # ([B,] S, R/2)
    emb = np.concatenate([freqs, freqs], axis=-1)                    # ([B,] S, R)
    cos = np.cos(emb) * float(attention_scaling)
    sin = np.sin(emb) * float(attention_scaling)
    if pos.ndim == 2:                                                # (B, S, R) -> (B, 1, S, R): every head
        cos, sin = cos[:, None], sin[:, None]
    rot = x[..., :rotary_dim]
    rot = rot * cos + _rotate_half(rot) * sin
    return np.concatenate([rot, x[..., rotary_dim:]], axis=-1)


def apply_rope_partial(x, positions, base, rotary_dim):
    return apply_rope(x, positions, rope_inv_freq(base, rotary_dim), 1.0)


def apply_rope_positions(x, positions, base):
    return apply_rope_partial(x, positions, base, np.shape(x)[-1])


def visible_keys(b, sq, sk, causal, sliding_window=None, kv_mask=None):
    """Bool (B, 1, Sq, Sk): whether query i may attend to key j (broadcast over heads).

    Causal: the query's absolute position is p = i + (Sk - Sq) (the KV-cache offset) and it sees keys
    j <= p; a sliding window W also requires j > p - W; ``kv_mask[b, j]`` False hides key j of batch
    row b (padding).
    """
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    p = i + (sk - sq)
    vis = np.ones((sq, sk), dtype=bool)
    if causal:
        vis &= j <= p
        if sliding_window is not None:
            vis &= j > p - sliding_window
    vis = np.broadcast_to(vis, (b, 1, sq, sk))
    if kv_mask is not None:
        vis = vis & np.asarray(kv_mask, dtype=bool)[:, None, None, :]
    return vis


def gqa_attention(q, k, v, n_kv_heads, causal, scale=None, sliding_window=None, softcap=None, kv_mask=None):
    q, k, v = _f64(q), _f64(k), _f64(v)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    group = h // n_kv_heads
    k = np.repeat(k, group, axis=1)                  # Hugging Face repeat_kv: head j -> j*group ...
    v = np.repeat(v, group, axis=1)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    if softcap is not None:                          # Gemma 2: after scaling, before masking
        scores = softcap * np.tanh(scores / softcap)
    vis = np.broadcast_to(visible_keys(b, sq, sk, causal, sliding_window, kv_mask), scores.shape)
    # softmax over the visible keys only; a row that sees no key has no weights and gives zeros
    row_max = np.max(np.where(vis, scores, -np.inf), axis=-1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.exp(np.where(vis, scores - row_max, -np.inf))             # exp(-inf) = 0: hidden keys
    denom = p.sum(axis=-1, keepdims=True)
    p = p / np.where(denom > 0, denom, 1.0)
    return p @ v


def _softcap(logits, softcap):
    return logits if softcap is None else softcap * np.tanh(logits / softcap)


def logits_from_hidden(hidden, lm_head, softcap=None):
    hidden = _f64(hidden)
    if hidden.shape[1] == 0:                         # B = 0 (validation refuses S = 0 with B > 0)
        return np.zeros((hidden.shape[0], np.shape(lm_head)[0]))
    return _softcap(hidden[:, -1, :] @ _f64(lm_head).T, softcap)


def all_logits_from_hidden(hidden, lm_head, softcap=None):
    return _softcap(_f64(hidden) @ _f64(lm_head).T, softcap)


def embedding(ids, table):
    """Row ``ids[b, s]`` of ``table`` for every id: [B, S] integer, [V, D] -> [B, S, D]."""
    return _f64(table)[np.asarray(ids, dtype=np.int64)]


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
    apply_rope = staticmethod(apply_rope)
    gqa_attention = staticmethod(gqa_attention)
    logits_from_hidden = staticmethod(logits_from_hidden)
    all_logits_from_hidden = staticmethod(all_logits_from_hidden)
    embedding = staticmethod(embedding)

    @staticmethod
    def to_numpy(x):
        return np.asarray(x)

    @staticmethod
    def from_numpy(x):
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def concatenate(arrays, axis=0):
        return np.concatenate([np.asarray(a) for a in arrays], axis)
