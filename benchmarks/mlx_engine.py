"""A Llama-style engine that keeps everything on the MLX device: the pattern the MLX plugin is built for.

It differs from ``sapient_core.testing.models.Decoder`` (which runs on any backend) in what a real engine
on a GPU does, as mlx-lm does:

- the weights are **handed over once** (``backend.from_numpy``) and the host arrays dropped, so they
  are held once, in their own dtype;
- the embedding table stays on the device (``embedding``): a step uploads the token ids, not rows;
- the KV cache is preallocated and written in place (``zeros`` / ``write`` / ``slice``), not grown by
  concatenation;
- every step ends with an evaluation on the device (``eval``) of what the next step needs.

Everything goes through the core's backend object (validation, lock, fallback): the ops and the layout
helpers (``eval``, ``zeros``, ``write``, ``slice``, ``reshape``, ``transpose``), as ``sapient_core.KVCache``
calls them.
Used by ``benchmarks/mlx_issue10.py`` and ``benchmarks/mlx_gpu_check.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class DeviceLlama:
    """``DeviceLlama(backend, config, weights, max_len)(tokens) -> last-position logits`` (NumPy).

    ``config`` is a :class:`sapient_core.testing.models.DecoderConfig`; ``weights`` its Hugging Face named
    NumPy arrays, handed over to the device here (the caller may drop its own copies afterwards).
    Each call appends ``tokens.shape[1]`` positions to the cache; ``reset()`` starts a new sequence.
    """

    def __init__(self, backend: Any, config: Any, weights: dict[str, np.ndarray], max_len: int,
                 batch: int = 1):
        self.be, self.c = backend, config
        self.w = {name: backend.from_numpy(w) for name, w in weights.items()}   # handed over once
        self.max_len, self.batch = max_len, batch
        self.reset()

    def reset(self) -> None:
        c, be = self.c, self.be
        shape = (self.batch, c.num_key_value_heads, self.max_len, c.head_size)
        self.keys = [be.zeros(shape) for _ in range(c.num_hidden_layers)]
        self.values = [be.zeros(shape) for _ in range(c.num_hidden_layers)]
        self.offset = 0
        be.eval(*self.keys, *self.values)

    def _heads(self, x: Any, n: int, s: int) -> Any:
        be = self.be
        return be.transpose(be.reshape(x, (self.batch, s, n, self.c.head_size)), (0, 2, 1, 3))

    def attention(self, i: int, x: Any, s: int, positions: np.ndarray) -> Any:
        be, c, w = self.be, self.c, self.w
        pre = f"model.layers.{i}.self_attn."
        q = be.apply_rope_positions(self._heads(be.linear_3d(x, w[pre + "q_proj.weight"]),
                                                c.num_attention_heads, s), positions, c.rope_theta)
        k = be.apply_rope_positions(self._heads(be.linear_3d(x, w[pre + "k_proj.weight"]),
                                                c.num_key_value_heads, s), positions, c.rope_theta)
        v = self._heads(be.linear_3d(x, w[pre + "v_proj.weight"]), c.num_key_value_heads, s)
        self.keys[i] = be.write(self.keys[i], k, 2, self.offset)
        self.values[i] = be.write(self.values[i], v, 2, self.offset)
        end = self.offset + s
        o = be.gqa_attention(q, be.slice(self.keys[i], 2, 0, end), be.slice(self.values[i], 2, 0, end),
                             c.num_key_value_heads, True)
        o = be.reshape(be.transpose(o, (0, 2, 1, 3)), (self.batch, s, c.num_attention_heads * c.head_size))
        return be.linear_3d(o, w[pre + "o_proj.weight"])

    def mlp(self, i: int, x: Any) -> Any:
        be, w = self.be, self.w
        pre = f"model.layers.{i}.mlp."
        gate = be.silu(be.linear_3d(x, w[pre + "gate_proj.weight"]))
        return be.linear_3d(be.mul(gate, be.linear_3d(x, w[pre + "up_proj.weight"])),
                            w[pre + "down_proj.weight"])

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        be, c, w = self.be, self.c, self.w
        s = tokens.shape[1]
        positions = np.arange(self.offset, self.offset + s, dtype=np.int64)
        h = be.embedding(tokens, w["model.embed_tokens.weight"])
        for i in range(c.num_hidden_layers):
            pre = f"model.layers.{i}."
            h = be.add(h, self.attention(i, be.rms_norm(h, w[pre + "input_layernorm.weight"], c.rms_norm_eps),
                                         s, positions))
            h = be.add(h, self.mlp(i, be.rms_norm(h, w[pre + "post_attention_layernorm.weight"],
                                                  c.rms_norm_eps)))
        self.offset += s
        logits = be.logits_from_hidden(be.rms_norm(h, w["model.norm.weight"], c.rms_norm_eps),
                                       w["lm_head.weight"])
        be.eval(*self.keys, *self.values)              # what the next step needs, on the device
        return logits
