"""A small Llama-style decoder composed from sapient_core ops, for tests, examples and benchmarks.

It reads top to bottom like mlx-lm's ``llama.py``, with Hugging Face checkpoint names.  It runs on
any backend (``get_backend(...)``) and on :class:`sapient_core.testing.oracle.OracleBackend` (float64),
so a test can compare a whole prefill + KV-cache decode against the oracle.  Only ``reshape`` and
``transpose`` are called on the backend's arrays (NumPy and ``mx.array`` both have them); the KV cache
grows with ``backend.concatenate``, so on a device backend it stays on the device.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["LlamaConfig", "random_weights", "Llama"]


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    vocab_size: int = 101
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def random_weights(config: LlamaConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights with Hugging Face names, scaled so that activations stay of order one."""
    rng = np.random.default_rng(seed)
    c = config
    hd = c.head_dim

    def linear(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((c.vocab_size, c.hidden_size)).astype(np.float32)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(c.hidden_size)
        w[p + "self_attn.q_proj.weight"] = linear(c.num_attention_heads * hd, c.hidden_size)
        w[p + "self_attn.k_proj.weight"] = linear(c.num_key_value_heads * hd, c.hidden_size)
        w[p + "self_attn.v_proj.weight"] = linear(c.num_key_value_heads * hd, c.hidden_size)
        w[p + "self_attn.o_proj.weight"] = linear(c.hidden_size, c.num_attention_heads * hd)
        w[p + "post_attention_layernorm.weight"] = norm(c.hidden_size)
        w[p + "mlp.gate_proj.weight"] = linear(c.intermediate_size, c.hidden_size)
        w[p + "mlp.up_proj.weight"] = linear(c.intermediate_size, c.hidden_size)
        w[p + "mlp.down_proj.weight"] = linear(c.hidden_size, c.intermediate_size)
    w["model.norm.weight"] = norm(c.hidden_size)
    w["lm_head.weight"] = linear(c.vocab_size, c.hidden_size)
    return w


class Llama:
    """``Llama(backend, config, weights)(tokens, cache) -> (last-position logits, cache)``.

    ``tokens``: (B, S) integer NumPy array.  ``cache``: None for a prefill, else what the previous call
    returned; each call appends its S positions to it.  Logits are a NumPy (B, vocab) array.
    """

    def __init__(self, backend: Any, config: LlamaConfig, weights: dict[str, np.ndarray]):
        self.backend = backend
        self.config = config
        self.weights = weights

    def attention(self, i: int, x: Any, positions: np.ndarray, cache: list) -> Any:
        be, c, w = self.backend, self.config, self.weights
        p = f"model.layers.{i}.self_attn."
        b, s = x.shape[0], x.shape[1]
        hd = c.head_dim
        q = be.linear_3d(x, w[p + "q_proj.weight"]).reshape(b, s, c.num_attention_heads, hd).transpose(0, 2, 1, 3)
        k = be.linear_3d(x, w[p + "k_proj.weight"]).reshape(b, s, c.num_key_value_heads, hd).transpose(0, 2, 1, 3)
        v = be.linear_3d(x, w[p + "v_proj.weight"]).reshape(b, s, c.num_key_value_heads, hd).transpose(0, 2, 1, 3)
        q = be.apply_rope_positions(q, positions, c.rope_theta)
        k = be.apply_rope_positions(k, positions, c.rope_theta)
        if cache[i] is not None:
            k = be.concatenate([cache[i][0], k], axis=2)
            v = be.concatenate([cache[i][1], v], axis=2)
        cache[i] = (k, v)
        o = be.gqa_attention(q, k, v, c.num_key_value_heads, True)
        o = o.transpose(0, 2, 1, 3).reshape(b, s, c.num_attention_heads * hd)
        return be.linear_3d(o, w[p + "o_proj.weight"])

    def mlp(self, i: int, x: Any) -> Any:
        be, w = self.backend, self.weights
        p = f"model.layers.{i}.mlp."
        gate = be.silu(be.linear_3d(x, w[p + "gate_proj.weight"]))
        up = be.linear_3d(x, w[p + "up_proj.weight"])
        return be.linear_3d(be.mul(gate, up), w[p + "down_proj.weight"])

    def __call__(self, tokens: np.ndarray, cache: list | None = None) -> tuple[np.ndarray, list]:
        be, c, w = self.backend, self.config, self.weights
        tokens = np.asarray(tokens)
        if cache is None:
            cache = [None] * c.num_hidden_layers
        offset = 0 if cache[0] is None else cache[0][0].shape[2]
        positions = np.arange(offset, offset + tokens.shape[1], dtype=np.int64)
        h = be.from_numpy(w["model.embed_tokens.weight"][tokens])   # one upload per step, on a device
        for i in range(c.num_hidden_layers):
            p = f"model.layers.{i}."
            h = be.add(h, self.attention(i, be.rms_norm(h, w[p + "input_layernorm.weight"], c.rms_norm_eps),
                                         positions, cache))
            h = be.add(h, self.mlp(i, be.rms_norm(h, w[p + "post_attention_layernorm.weight"], c.rms_norm_eps)))
        h = be.rms_norm(h, w["model.norm.weight"], c.rms_norm_eps)
        return be.logits_from_hidden(h, w["lm_head.weight"]), cache
