"""Small valid arguments for every op, and invalid ones with the error they must raise.

``valid_args(op)`` gives positional arguments (float32, tiny LLM-like shapes) for each op of
``sapient_core.hookspecs.OPS``; the meta-tests check that every op has an entry here, so every op hook
is called by at least one test (tests/test_core_backend.py calls them all through the dispatcher).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def _rand(*shape, seed=0):
    return np.random.default_rng(seed + len(shape)).standard_normal(shape).astype(F32)


def valid_args(op: str) -> tuple:
    """Positional arguments for ``op`` (every argument of the hook, defaults filled in): B=2, S=3, hidden 8,
    4 query heads and 2 KV heads of 4."""
    from sapient_core import OPS
    args = _valid_args(op)
    return OPS[op].with_defaults(args)


def _valid_args(op: str) -> tuple:
    x3 = _rand(2, 3, 8)
    x4 = _rand(2, 4, 3, 4, seed=1)
    table = {
        "linear_3d": (x3, _rand(5, 8, seed=2)),
        "linear_3d_bias": (x3, _rand(5, 8, seed=2), _rand(5, seed=3)),
        "rms_norm": (x3, _rand(8, seed=4), 1e-6),
        "layer_norm": (x3, _rand(8, seed=4), _rand(8, seed=5), 1e-5),
        "silu": (x3,),
        "gelu": (x3, "tanh"),
        "add": (x3, _rand(8, seed=6)),
        "mul": (x3, _rand(3, 1, seed=7)),
        "apply_rope_positions": (x4, np.array([0, 5, 9]), 10000.0),
        "apply_rope_partial": (x4, np.array([3, 4, 5]), 10000.0, 2),
        "apply_rope": (x4, np.array([[0, 1, 2], [1, 0, 1]]), np.array([1.0, 0.01], np.float32), 1.25),
        "gqa_attention": (x4, _rand(2, 2, 5, 4, seed=8), _rand(2, 2, 5, 4, seed=9), 2, True),
        "logits_from_hidden": (x3, _rand(11, 8, seed=10)),
        "all_logits_from_hidden": (x3, _rand(11, 8, seed=10)),
        "embedding": (np.array([[0, 3, 10], [2, 2, 1]]), _rand(11, 8, seed=11)),
    }
    return table[op]


#: Ops whose result is always a NumPy array (SPEC §4).
NUMPY_RESULT_OPS = frozenset({"logits_from_hidden", "all_logits_from_hidden"})

x3, w8 = _rand(2, 3, 8), _rand(8, seed=4)
q = _rand(1, 32, 4, 64)
k6 = _rand(1, 6, 9, 64)
x4 = _rand(1, 4, 3, 8)

#: (op, args, exception type, regex the message must match, shapes the error must carry).
#: Every op appears at least once (checked by the meta-tests).
INVALID = [
    ("linear_3d", (x3, _rand(5, 7)), "ShapeError",
     r"^linear_3d: x has 8 input features but weight expects 7 \(x \(2, 3, 8\), weight \(5, 7\)\)$",
     {"x": (2, 3, 8), "weight": (5, 7)}),
    ("linear_3d", (_rand(3, 8), _rand(5, 8)), "ShapeError",
     r"^linear_3d: x must be 3-D \(B, S, in\), got 2-D \(x \(3, 8\), weight \(5, 8\)\)$",
     {"x": (3, 8), "weight": (5, 8)}),
    ("linear_3d_bias", (x3, _rand(5, 8), _rand(4)), "ShapeError",
     r"^linear_3d_bias: bias must have shape \(5,\) to match weight \(x \(2, 3, 8\), weight \(5, 8\), "
     r"bias \(4,\)\)$", {"x": (2, 3, 8), "weight": (5, 8), "bias": (4,)}),
    ("rms_norm", (x3, _rand(7), 1e-6), "ShapeError",
     r"^rms_norm: weight must have shape \(8,\) to match x's last dimension \(x \(2, 3, 8\), weight \(7,\)\)$",
     {"x": (2, 3, 8), "weight": (7,)}),
    ("rms_norm", (x3.astype(np.float64), w8, 1e-6), "DTypeError",
     r"^rms_norm: x has dtype float64; accepted: float32, float16, bfloat16 \(computed in float32\)\. "
     r"To remedy this, pass x\.astype\(numpy\.float32\) \(x \(2, 3, 8\), weight \(8,\)\)$",
     {"x": (2, 3, 8), "weight": (8,)}),
    ("layer_norm", (x3, w8, _rand(3), 1e-5), "ShapeError",
     r"^layer_norm: bias must have shape \(8,\) to match x's last dimension "
     r"\(x \(2, 3, 8\), weight \(8,\), bias \(3,\)\)$", {"x": (2, 3, 8), "weight": (8,), "bias": (3,)}),
    ("silu", (np.arange(6, dtype=np.int32),), "DTypeError",
     r"^silu: x has dtype int32; accepted: float32, float16, bfloat16", {"x": (6,)}),
    ("silu", ([1.0, 2.0],), "DTypeError",
     r"^silu: x must be an array \(NumPy or the backend's array type\), got list \(x list\)$", {"x": None}),
    ("gelu", (x3, "exact"), "ArgumentError", r"^gelu: approximate must be 'none' or 'tanh', got 'exact'$",
     {"x": (2, 3, 8)}),
    ("add", (x3, _rand(4)), "ShapeError",
     r"^add: shapes do not broadcast together \(a \(2, 3, 8\), b \(4,\)\)$", {"a": (2, 3, 8), "b": (4,)}),
    ("mul", (x3, np.ones(8, np.float64)), "DTypeError", r"^mul: b has dtype float64",
     {"a": (2, 3, 8), "b": (8,)}),
    ("apply_rope_positions", (x4, np.arange(4), 10000.0), "ShapeError",
     r"^apply_rope_positions: positions must have shape \(3,\), one per sequence position, or \(1, 3\), one row "
     r"per batch row "
     r"\(x \(1, 4, 3, 8\), positions \(4,\)\)$", {"x": (1, 4, 3, 8), "positions": (4,)}),
    ("apply_rope_positions", (x4, np.array([0.0, 1.0, 2.0]), 10000.0), "DTypeError",
     r"^apply_rope_positions: positions must have an integer dtype, got float64 "
     r"\(x \(1, 4, 3, 8\), positions \(3,\)\)$", {"x": (1, 4, 3, 8), "positions": (3,)}),
    ("apply_rope_positions", (_rand(4, 3, 8), np.arange(3), 10000.0), "ShapeError",
     r"^apply_rope_positions: x must be 4-D \(B, H, S, D\), got 3-D \(x \(4, 3, 8\)\)$", {"x": (4, 3, 8)}),
    ("apply_rope_partial", (x4, np.arange(3), 10000.0, 3), "ShapeError",
     r"^apply_rope_partial: rotary_dim=3 must be even and between 2 and the head size D=8 "
     r"\(x \(1, 4, 3, 8\)\)$", {"x": (1, 4, 3, 8)}),
    ("apply_rope_partial", (x4, np.arange(3), 10000.0, 10), "ShapeError",
     r"^apply_rope_partial: rotary_dim=10 must be even and between 2 and the head size D=8", {"x": (1, 4, 3, 8)}),
    ("gqa_attention", (q, k6, k6, 6, False), "ShapeError",
     r"^gqa_attention: 32 query heads are not divisible by n_kv_heads=6 \(q \(1, 32, 4, 64\), "
     r"k \(1, 6, 9, 64\), v \(1, 6, 9, 64\)\)$", {"q": (1, 32, 4, 64), "k": (1, 6, 9, 64), "v": (1, 6, 9, 64)}),
    ("gqa_attention", (q[:, :12], k6[:, :, :2], k6[:, :, :2], 6, True), "ShapeError",
     r"^gqa_attention: causal attention needs Sq <= Sk \(query i sees keys <= i \+ Sk - Sq\), got Sq=4 > Sk=2 "
     r"\(q \(1, 12, 4, 64\), k \(1, 6, 2, 64\), v \(1, 6, 2, 64\)\)$",
     {"q": (1, 12, 4, 64), "k": (1, 6, 2, 64), "v": (1, 6, 2, 64)}),
    ("gqa_attention", (q, k6, k6[..., :32], 6, False), "ShapeError",
     r"^gqa_attention: k and v must have the same shape \(q \(1, 32, 4, 64\), k \(1, 6, 9, 64\), "
     r"v \(1, 6, 9, 32\)\)$", {"q": (1, 32, 4, 64), "k": (1, 6, 9, 64), "v": (1, 6, 9, 32)}),
    ("logits_from_hidden", (x3, _rand(11, 7)), "ShapeError",
     r"^logits_from_hidden: hidden size 8 does not match lm_head's 7 \(hidden \(2, 3, 8\), lm_head \(11, 7\)\)$",
     {"hidden": (2, 3, 8), "lm_head": (11, 7)}),
    ("apply_rope", (x4, np.arange(3), np.ones(5, np.float32), 1.0), "ShapeError",
     r"^apply_rope: inv_freq must have shape \(R/2,\) with 1 <= R/2 <= D/2 = 4 \(R = 2 \* len\(inv_freq\) channels "
     r"are rotated\) \(x \(1, 4, 3, 8\), inv_freq \(5,\)\)$", {"x": (1, 4, 3, 8), "inv_freq": (5,)}),
    ("apply_rope", (x4, np.zeros((2, 3), np.int64), np.ones(2, np.float32), 1.0), "ShapeError",
     r"^apply_rope: positions must have shape \(3,\), one per sequence position, or \(1, 3\), one row per batch "
     r"row \(x \(1, 4, 3, 8\), positions \(2, 3\)\)$", {"x": (1, 4, 3, 8), "positions": (2, 3)}),
    ("gqa_attention", (q[:, :12], k6[:, :, :2], k6[:, :, :2], 6, False, None, None, None, np.ones((1, 3), bool)),
     "ShapeError", r"^gqa_attention: kv_mask must have shape \(B, Sk\) = \(1, 2\) \(q \(1, 12, 4, 64\), "
     r"k \(1, 6, 2, 64\), v \(1, 6, 2, 64\), kv_mask \(1, 3\)\)$",
     {"q": (1, 12, 4, 64), "k": (1, 6, 2, 64), "v": (1, 6, 2, 64), "kv_mask": (1, 3)}),
    ("gqa_attention", (q[:, :12], k6[:, :, :5], k6[:, :, :5], 6, True, None, None, None, np.ones((1, 5), np.int8)),
     "DTypeError", r"^gqa_attention: kv_mask must have a bool dtype \(False: a key never to attend\), got int8\. "
     r"To remedy this, pass kv_mask != 0", {"q": (1, 12, 4, 64), "k": (1, 6, 5, 64), "v": (1, 6, 5, 64),
                                           "kv_mask": (1, 5)}),
    ("embedding", (np.array([[0, 11]]), _rand(11, 8)), "ArgumentError",
     r"^embedding: id 11 at \(0, 1\) is outside the vocabulary \[0, 11\) of table \(ids \(1, 2\), table \(11, 8\)\)$",
     {"ids": (1, 2), "table": (11, 8)}),
    ("embedding", (np.array([0, 1]), _rand(11, 8)), "ShapeError",
     r"^embedding: ids must be 2-D \(B, S\), got 1-D \(ids \(2,\), table \(11, 8\)\)$", {"ids": (2,), "table": (11, 8)}),
    ("all_logits_from_hidden", (x3, _rand(2, 11, 8)), "ShapeError",
     r"^all_logits_from_hidden: lm_head must be 2-D \(vocab, h\), got 3-D", {"hidden": (2, 3, 8),
                                                                           "lm_head": (2, 11, 8)}),
]
