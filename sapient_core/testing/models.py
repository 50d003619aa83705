"""Today's decoder architectures composed from the ops: a worked engine that runs on every backend.

It reads top to bottom like mlx-lm's model files, with Hugging Face checkpoint names, and covers:

- ``family="llama"``: Llama 2 and 3.x (rope scaling through :func:`sapient_core.rope_parameters`:
  llama3, yarn, longrope, dynamic, linear), Mistral (``sliding_window``), Qwen2/3-style configs without
  projection biases;
- ``family="gemma2"``: Gemma 2 — embeddings scaled by sqrt(hidden), ``(1 + w)`` RMSNorms before and
  after attention and the MLP, GELU-tanh MLP, ``query_pre_attn_scalar`` attention scale, attention and
  final-logit soft-capping, sliding-window and full layers alternating (``layer_types``).

Batches of prompts of different lengths are left-padded: ``attention_mask`` (B, S) marks real tokens;
positions are built as transformers builds them (``cumsum(mask) - 1``, padding at 1) and given to the
RoPE ops as (B, S) arrays, and the padding keys are masked with ``kv_mask``.  The KV cache is
:class:`sapient_core.KVCache` (preallocated, appended in place); each step ends with
``backend.eval`` of the cache, as mlx-lm does on a lazy device.

The engine calls only the backend object: ops, and its layout methods (``reshape``, ``transpose``,
``slice``, ``write``, ``zeros``, ``eval``) — never a method of the arrays themselves — so it runs on
a backend whose arrays have none of NumPy's methods, and on :class:`.oracle.OracleBackend` (float64),
against which the tests compare every backend.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ..kvcache import KVCache
from ..rope import rope_parameters

__all__ = ["DecoderConfig", "random_weights", "Decoder", "DecodeState", "left_padded"]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """The fields of a transformers config the engine reads (names as in ``config.json``)."""

    family: str = "llama"
    hidden_size: int = 64
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int | None = None
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    vocab_size: int = 101
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.family not in ("llama", "gemma2"):
            raise ValueError(f"DecoderConfig: family must be 'llama' or 'gemma2', got {self.family!r}")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_type(self, i: int) -> str:
        """``"sliding_attention"`` or ``"full_attention"`` (Gemma 2: sliding on even layers)."""
        if self.layer_types is not None:
            return self.layer_types[i]
        if self.family == "gemma2":
            return "sliding_attention" if (i + 1) % 2 else "full_attention"
        return "sliding_attention" if self.sliding_window else "full_attention"

    def to_dict(self) -> dict[str, Any]:
        """The config as transformers' ``to_dict()`` would give it (what ``rope_parameters`` reads)."""
        d = dataclasses.asdict(self)
        d["head_dim"] = self.head_size
        return d


def random_weights(config: DecoderConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 weights with Hugging Face names, scaled so that activations stay of order one."""
    rng = np.random.default_rng(seed)
    c, hd = config, config.head_size

    def linear(out: int, inp: int) -> np.ndarray:
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    def norm(n: int) -> np.ndarray:           # Gemma stores w with the norm computing (1 + w)
        return ((0.0 if c.family == "gemma2" else 1.0) + 0.1 * rng.standard_normal(n)).astype(np.float32)

    scale = 1.0 / math.sqrt(c.hidden_size) if c.family == "gemma2" else 1.0   # Gemma multiplies by sqrt(h)
    w = {"model.embed_tokens.weight": (scale * rng.standard_normal((c.vocab_size, c.hidden_size))).astype(np.float32)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(c.hidden_size)
        w[p + "self_attn.q_proj.weight"] = linear(c.num_attention_heads * hd, c.hidden_size)
        w[p + "self_attn.k_proj.weight"] = linear(c.num_key_value_heads * hd, c.hidden_size)
        w[p + "self_attn.v_proj.weight"] = linear(c.num_key_value_heads * hd, c.hidden_size)
        w[p + "self_attn.o_proj.weight"] = linear(c.hidden_size, c.num_attention_heads * hd)
        w[p + "post_attention_layernorm.weight"] = norm(c.hidden_size)
        if c.family == "gemma2":
            w[p + "pre_feedforward_layernorm.weight"] = norm(c.hidden_size)
            w[p + "post_feedforward_layernorm.weight"] = norm(c.hidden_size)
        w[p + "mlp.gate_proj.weight"] = linear(c.intermediate_size, c.hidden_size)
        w[p + "mlp.up_proj.weight"] = linear(c.intermediate_size, c.hidden_size)
        w[p + "mlp.down_proj.weight"] = linear(c.hidden_size, c.intermediate_size)
    w["model.norm.weight"] = norm(c.hidden_size)
    if not c.tie_word_embeddings:
        w["lm_head.weight"] = linear(c.vocab_size, c.hidden_size)
    return w


def left_padded(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens, attention_mask)`` of a left-padded batch, as a tokenizer with ``padding_side="left"``."""
    n = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), n), pad_id, np.int64)
    mask = np.zeros((len(prompts), n), bool)
    for i, p in enumerate(prompts):
        if p:
            tokens[i, n - len(p):] = p
            mask[i, n - len(p):] = True
    return tokens, mask


@dataclasses.dataclass
class DecodeState:
    """What a generation carries from one step to the next.

    :ivar cache: the key/value cache (one :class:`sapient_core.kvcache.LayerCache` per layer).
    :ivar mask: (B, positions so far) bool: which cached positions are real tokens (not padding).
    """

    cache: Any
    mask: np.ndarray

    @property
    def offset(self) -> int:
        return int(self.mask.shape[1])


class Decoder:
    """``Decoder(backend, config, weights)(tokens, state=None, attention_mask=None) -> (logits, state)``.

    ``tokens``: (B, S) integer NumPy array; ``state``: None for a prefill, else what the previous call
    returned (each call appends its S positions); ``attention_mask``: (B, S) for this call's tokens
    (True/1 = a real token, False/0 = left padding; default all real).  Logits: NumPy (B, vocab) of
    the last position.

    :param cache: ``"inplace"`` (default: :class:`sapient_core.KVCache`) or ``"concat"`` (grow the
        cache by concatenation, the pre-KVCache way, kept for the benchmark's comparison).
    """

    def __init__(self, backend: Any, config: DecoderConfig, weights: dict[str, np.ndarray], *,
                 cache: str = "inplace", cache_step: int = 256):
        if cache not in ("inplace", "concat"):
            raise ValueError(f"Decoder: cache must be 'inplace' or 'concat', got {cache!r}")
        self.backend = backend
        self.config = config
        self.weights = weights
        self.cache_kind = cache
        self.cache_step = cache_step
        c = config
        self.lm_head = weights["model.embed_tokens.weight"] if c.tie_word_embeddings else weights["lm_head.weight"]
        if c.family == "gemma2":     # (1 + w), computed once in float32 as Gemma2RMSNorm does
            self.norms = {k: (1.0 + v).astype(np.float32) for k, v in weights.items() if k.endswith("norm.weight")}
            self.normalizer = np.array([math.sqrt(c.hidden_size)], np.float32)
            self.scale = float(c.query_pre_attn_scalar or c.head_size) ** -0.5
        else:
            self.norms = {k: v for k, v in weights.items() if k.endswith("norm.weight")}
            self.normalizer = None
            self.scale = None
        self._rope: dict[str, tuple[Any, Any, float]] = {}

    # --- the pieces ---------------------------------------------------------------------------------

    def rope(self, layer_type: str, seq_len: int) -> tuple[Any, float]:
        """``(inv_freq, attention_scaling)`` of a layer type for this forward pass.

        Computed once; again each forward only for the types that depend on the sequence length
        (dynamic NTK, longrope).  inv_freq stays a (read-only) NumPy array: backends build their angle
        tables from it on the host, where float64 angles are cheap (MLX does, for Metal's accuracy).
        """
        entry = self._rope.get(layer_type)
        if entry is None or entry[0].seq_len_dependent:
            p = rope_parameters(self.config.to_dict(), seq_len=seq_len)
            entry = (p, p.inv_freq, p.attention_scaling)
            self._rope[layer_type] = entry
        return entry[1], entry[2]

    def norm(self, x: Any, name: str) -> Any:
        return self.backend.rms_norm(x, self.norms[name], self.config.rms_norm_eps)

    def attention(self, i: int, x: Any, positions: Any, kv_mask: Any, state: DecodeState, seq_len: int) -> Any:
        be, c, w = self.backend, self.config, self.weights
        p = f"model.layers.{i}.self_attn."
        b, s = x.shape[0], x.shape[1]
        hd, heads, kvh = c.head_size, c.num_attention_heads, c.num_key_value_heads

        def heads_first(y: Any, n: int) -> Any:      # (B, S, n*hd) -> (B, n, S, hd)
            return be.transpose(be.reshape(y, (b, s, n, hd)), (0, 2, 1, 3))

        q = heads_first(be.linear_3d(x, w[p + "q_proj.weight"]), heads)
        k = heads_first(be.linear_3d(x, w[p + "k_proj.weight"]), kvh)
        v = heads_first(be.linear_3d(x, w[p + "v_proj.weight"]), kvh)
        layer_type = c.layer_type(i)
        inv_freq, scaling = self.rope(layer_type, seq_len)
        q = be.apply_rope(q, positions, inv_freq, scaling)
        k = be.apply_rope(k, positions, inv_freq, scaling)
        if self.cache_kind == "inplace":
            k, v = state.cache[i].update(k, v)
        else:
            if state.cache[i] is not None:
                k = be.concatenate([state.cache[i][0], k], axis=2)
                v = be.concatenate([state.cache[i][1], v], axis=2)
            state.cache[i] = (k, v)
        window = c.sliding_window if layer_type == "sliding_attention" else None
        o = be.gqa_attention(q, k, v, kvh, True, self.scale, window, c.attn_logit_softcapping, kv_mask)
        o = be.reshape(be.transpose(o, (0, 2, 1, 3)), (b, s, heads * hd))
        return be.linear_3d(o, w[p + "o_proj.weight"])

    def mlp(self, i: int, x: Any) -> Any:
        be, w = self.backend, self.weights
        p = f"model.layers.{i}.mlp."
        gate = be.linear_3d(x, w[p + "gate_proj.weight"])
        gate = be.gelu(gate, "tanh") if self.config.family == "gemma2" else be.silu(gate)
        return be.linear_3d(be.mul(gate, be.linear_3d(x, w[p + "up_proj.weight"])), w[p + "down_proj.weight"])

    def layer(self, i: int, h: Any, positions: Any, kv_mask: Any, state: DecodeState, seq_len: int) -> Any:
        be, p = self.backend, f"model.layers.{i}."
        if self.config.family == "gemma2":
            a = self.attention(i, self.norm(h, p + "input_layernorm.weight"), positions, kv_mask, state, seq_len)
            h = be.add(h, self.norm(a, p + "post_attention_layernorm.weight"))
            m = self.mlp(i, self.norm(h, p + "pre_feedforward_layernorm.weight"))
            return be.add(h, self.norm(m, p + "post_feedforward_layernorm.weight"))
        h = be.add(h, self.attention(i, self.norm(h, p + "input_layernorm.weight"), positions, kv_mask, state, seq_len))
        return be.add(h, self.mlp(i, self.norm(h, p + "post_attention_layernorm.weight")))

    # --- a forward pass -----------------------------------------------------------------------------

    def new_state(self, batch: int) -> DecodeState:
        n = self.config.num_hidden_layers
        cache = (KVCache(self.backend, n, step=self.cache_step) if self.cache_kind == "inplace" else [None] * n)
        return DecodeState(cache, np.zeros((batch, 0), bool))

    def random_state(self, batch: int, length: int, seed: int = 0) -> DecodeState:
        """A state whose cache already holds ``length`` positions of random keys and values (for benchmarks
        of a decode step at a given context length, without a long prefill)."""
        rng = np.random.default_rng(seed)
        c, be = self.config, self.backend
        state = self.new_state(batch)
        shape = (batch, c.num_key_value_heads, length, c.head_size)
        for i in range(c.num_hidden_layers):
            k = be.from_numpy(rng.standard_normal(shape).astype(np.float32))
            v = be.from_numpy(rng.standard_normal(shape).astype(np.float32))
            if self.cache_kind == "inplace":
                state.cache[i].update(k, v)
            else:
                state.cache[i] = (k, v)
        state.mask = np.ones((batch, length), bool)
        return state

    def __call__(self, tokens: np.ndarray, state: DecodeState | None = None,
                 attention_mask: np.ndarray | None = None) -> tuple[np.ndarray, DecodeState]:
        be, c = self.backend, self.config
        tokens = np.asarray(tokens)
        b, s = tokens.shape
        state = state if state is not None else self.new_state(b)
        step_mask = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask, bool)
        state.mask = np.concatenate([state.mask, step_mask], axis=1)
        # Positions as transformers builds them for a padded batch: cumsum(mask) - 1, padding at 1; one
        # (S,) row when every batch row has the same, else (B, S).
        full = np.cumsum(state.mask, axis=1) - 1
        full[~state.mask] = 1
        rows = full[:, -s:]
        positions = rows[0] if (rows == rows[:1]).all() else rows
        kv_mask = None if state.mask.all() else state.mask
        seq_len = int(full.max()) + 1
        h = be.embedding(tokens, self.weights["model.embed_tokens.weight"])
        if self.normalizer is not None:
            h = be.mul(h, self.normalizer)
        for i in range(c.num_hidden_layers):
            h = self.layer(i, h, positions, kv_mask, state, seq_len)
        h = self.norm(h, "model.norm.weight")
        logits = be.logits_from_hidden(h, self.lm_head, c.final_logit_softcapping)
        if self.cache_kind == "inplace":
            be.eval(*state.cache.arrays())        # nothing pending on a lazy device (a no-op elsewhere)
        return logits, state
