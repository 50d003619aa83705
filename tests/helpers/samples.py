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
    """Positional arguments for ``op``: B=2, S=3, hidden 8, 4 query heads and 2 KV heads of 4."""
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
        "gqa_attention": (x4, _rand(2, 2, 5, 4, seed=8), _rand(2, 2, 5, 4, seed=9), 2, True),
        "logits_from_hidden": (x3, _rand(11, 8, seed=10)),
        "all_logits_from_hidden": (x3, _rand(11, 8, seed=10)),
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
     r"^apply_rope_positions: positions must have shape \(3,\), one per sequence position "
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
    ("all_logits_from_hidden", (x3, _rand(2, 11, 8)), "ShapeError",
     r"^all_logits_from_hidden: lm_head must be 2-D \(vocab, h\), got 3-D", {"hidden": (2, 3, 8),
                                                                           "lm_head": (2, 11, 8)}),
]
