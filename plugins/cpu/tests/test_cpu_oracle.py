"""The float64 oracle itself, against values computed by hand: the numerics tests are only as good as
the oracle they compare with."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sapient_core.testing import oracle


def test_rope_at_position_zero_is_the_identity():
    x = np.random.default_rng(0).standard_normal((1, 2, 1, 8))
    np.testing.assert_array_equal(oracle.apply_rope_positions(x, [0], 10000.0), x)


def test_rope_hand_computed():
    # D = 4, base 100: inv_freq = [1, 100 ** (-2/4)] = [1, 0.1]; position 2 -> angles [2, 0.2];
    # rotate-half pairs channel i with channel i + 2: (x0, x2) and (x1, x3).
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    c0, s0, c1, s1 = math.cos(2), math.sin(2), math.cos(0.2), math.sin(0.2)
    want = [1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 3 * c0 + 1 * s0, 4 * c1 + 2 * s1]
    np.testing.assert_allclose(oracle.apply_rope_positions(x, [2], 100.0).ravel(), want, rtol=1e-15)
    # partial (Phi): rotary_dim 2 of D 4 -> inv_freq [1] on channels (0, 1); channels 2, 3 unchanged
    want = [1 * c0 - 2 * s0, 2 * c0 + 1 * s0, 3.0, 4.0]
    np.testing.assert_allclose(oracle.apply_rope_partial(x, [2], 100.0, 2).ravel(), want, rtol=1e-15)


def test_rope_variants_agree_with_each_other():
    """apply_rope with the default frequencies is apply_rope_partial exactly, and each RoPE's (B, S)
    positions rotate every batch row as its own (S,) row does."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 6, 64))
    pos = np.array([[0, 1, 2, 3, 4, 5], [1, 1, 0, 1, 2, 3], [1, 1, 1, 1, 1, 0]])
    inv = oracle.rope_inv_freq(10000.0, 32)
    np.testing.assert_array_equal(oracle.apply_rope(x, pos[0], inv, 1.0),
                                  oracle.apply_rope_partial(x, pos[0], 10000.0, 32))
    for rope in (lambda x_, p: oracle.apply_rope_positions(x_, p, 10000.0),
                 lambda x_, p: oracle.apply_rope_partial(x_, p, 10000.0, 48),
                 lambda x_, p: oracle.apply_rope(x_, p, inv[:20] / 3, 1.1)):
        whole = rope(x, pos)
        for i in range(3):
            np.testing.assert_array_equal(whole[i:i + 1], rope(x[i:i + 1], pos[i]))


def test_attention_with_one_key_returns_its_value():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 4, 1, 8)), rng.standard_normal((1, 2, 1, 8)), rng.standard_normal((1, 2, 1, 8))
    out = oracle.gqa_attention(q, k, v, 2, True)
    np.testing.assert_allclose(out, np.repeat(v, 2, axis=1), rtol=1e-15)


def test_attention_causal_offset_and_uniform_weights():
    # q = 0: every visible key gets the same weight, so the output is the mean of the visible values.
    # Sq = 2, Sk = 5: query 0 sees keys 0..3 (offset 3), query 1 sees keys 0..4.
    v = np.arange(5.0).reshape(1, 1, 5, 1) * np.ones((1, 1, 5, 2))
    out = oracle.gqa_attention(np.zeros((1, 1, 2, 2)), np.ones((1, 1, 5, 2)), v, 1, True)
    np.testing.assert_allclose(out[0, 0, :, 0], [1.5, 2.0], rtol=1e-15)


def test_attention_uses_hugging_face_repeat_kv_order():
    # 4 query heads, 2 KV heads whose values are 10 and 20: repeat_kv maps heads (0, 1) -> kv 0 and
    # (2, 3) -> kv 1 (np.repeat), not (0, 2) -> kv 0 (np.tile).
    v = np.array([10.0, 20.0]).reshape(1, 2, 1, 1) * np.ones((1, 2, 3, 4))
    out = oracle.gqa_attention(np.ones((1, 4, 3, 4)), np.ones((1, 2, 3, 4)), v, 2, True)
    np.testing.assert_allclose(out[0, :, 0, 0], [10, 10, 20, 20], rtol=1e-15)


@pytest.mark.parametrize("fn,x,want", [
    (lambda x: oracle.gelu(x, "none"), 1.0, 0.8413447460685429),          # Phi(1)
    (lambda x: oracle.gelu(x, "none"), -2.0, -2 * 0.022750131948179195),  # -2 Phi(-2)
    (lambda x: oracle.gelu(x, "tanh"), 1.0, 0.5 * (1 + math.tanh(math.sqrt(2 / math.pi) * 1.044715))),
    (oracle.silu, 1.0, 1 / (1 + math.exp(-1))),
    (oracle.silu, -800.0, -800 * math.exp(-800)),                         # 0: no overflow
])
def test_activation_values(fn, x, want):
    np.testing.assert_allclose(fn(np.array([x])), [want], rtol=1e-14, atol=1e-300)


def test_norms_hand_computed():
    np.testing.assert_allclose(oracle.rms_norm(np.array([3.0, 4.0]), np.array([1.0, 2.0]), 0.0),
                               [3 / math.sqrt(12.5), 8 / math.sqrt(12.5)], rtol=1e-15)
    np.testing.assert_allclose(oracle.layer_norm(np.array([1.0, 2.0, 3.0]), np.ones(3), np.array([0.0, 1.0, 0.0]), 0.0),
                               [-math.sqrt(1.5), 1.0, math.sqrt(1.5)], rtol=1e-15)


def test_linear_and_logits_hand_computed():
    x = np.array([1.0, 2.0]).reshape(1, 1, 2)
    w = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(oracle.linear_3d_bias(x, w, np.array([0.5, 0, 0])), [[[1.5, 2.0, 3.0]]])
    h = np.array([[[1.0, 0.0], [1.0, 2.0]]])
    np.testing.assert_array_equal(oracle.logits_from_hidden(h, w), [[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(oracle.all_logits_from_hidden(h, w)[0, 0], [1.0, 0.0, 1.0])


# --- contract v2 (SPEC §8) ---------------------------------------------------------------------------

def test_visible_keys_window_offset_and_padding_by_hand():
    # Sq = 2, Sk = 5, W = 2: query 0 is at p = 3 (sees keys 2, 3), query 1 at p = 4 (keys 3, 4)
    vis = oracle.visible_keys(1, 2, 5, True, 2)[0, 0]
    np.testing.assert_array_equal(vis, [[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    # W = 1: only the key at the query's own position; W >= Sk: plain causal
    np.testing.assert_array_equal(oracle.visible_keys(1, 3, 3, True, 1)[0, 0], np.eye(3, dtype=bool))
    np.testing.assert_array_equal(oracle.visible_keys(1, 3, 3, True, 9)[0, 0], np.tril(np.ones((3, 3), bool)))
    # padding hides keys per batch row
    vis = oracle.visible_keys(2, 1, 3, True, None, np.array([[True, True, True], [False, True, False]]))
    np.testing.assert_array_equal(vis[:, 0, 0], [[1, 1, 1], [0, 1, 0]])


def test_attention_scale_softcap_by_hand():
    # one query, two keys with q.k = 4 and 0; values 1 and 0: the output is the weight of key 0
    q = np.array([2.0, 0.0]).reshape(1, 1, 1, 2)
    k = np.array([[2.0, 0.0], [0.0, 3.0]]).reshape(1, 1, 2, 2)
    v = np.array([[1.0], [0.0]]).reshape(1, 1, 2, 1)
    s = 4.0 * 0.5                                      # scale 0.5
    np.testing.assert_allclose(oracle.gqa_attention(q, k, v, 1, False, scale=0.5)[0, 0, 0, 0],
                               1 / (1 + math.exp(-s)), rtol=1e-15)
    c = 1.5                                            # softcap after scaling: c tanh(2 / c)
    np.testing.assert_allclose(oracle.gqa_attention(q, k, v, 1, False, scale=0.5, softcap=c)[0, 0, 0, 0],
                               1 / (1 + math.exp(-c * math.tanh(s / c))), rtol=1e-15)
    # default scale is 1 / sqrt(d)
    np.testing.assert_allclose(oracle.gqa_attention(q, k, v, 1, False)[0, 0, 0, 0],
                               1 / (1 + math.exp(-4 / math.sqrt(2))), rtol=1e-15)


def test_attention_row_with_no_visible_key_is_zero():
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((2, 1, 3, 4))
    mask = np.array([[True, True, True], [False, False, True]])
    out = oracle.gqa_attention(q, k, v, 1, True, kv_mask=mask)
    np.testing.assert_array_equal(out[1, :, :2], 0.0)    # row 1, queries 0 and 1 see only padding
    np.testing.assert_allclose(out[1, :, 2], np.repeat(v[1, :, 2], 2, axis=0), rtol=1e-15)
    np.testing.assert_allclose(out[0], oracle.gqa_attention(q[:1], k[:1], v[:1], 1, True)[0], rtol=1e-15)


def test_apply_rope_scaling_and_batch_positions_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 1, 4)
    # position 0: cos = 1, sin = 0 times the scaling: the rotated channels are scaled, the rest copied
    np.testing.assert_array_equal(oracle.apply_rope(x, [0], np.array([0.5]), 2.0).ravel(), [2.0, 4.0, 3.0, 4.0])
    # R = 2 of D = 4, inv_freq [0.5], position 2 -> angle 1; [B, S] positions give each row its own
    xb = np.concatenate([x, x])
    out = oracle.apply_rope(xb, np.array([[0], [2]]), np.array([0.5]), 1.0)
    c, s = math.cos(1.0), math.sin(1.0)
    np.testing.assert_allclose(out[1].ravel(), [1 * c - 2 * s, 2 * c + 1 * s, 3.0, 4.0], rtol=1e-15)
    np.testing.assert_array_equal(out[0].ravel(), x.ravel())


def test_softcap_logits_and_embedding_by_hand():
    h = np.array([[[1.0, 0.0], [3.0, 4.0]]])
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(oracle.logits_from_hidden(h, w, 2.0), [[2 * math.tanh(1.5), 2 * math.tanh(2.0)]],
                               rtol=1e-15)
    np.testing.assert_allclose(oracle.all_logits_from_hidden(h, w, 2.0)[0, 0], [2 * math.tanh(0.5), 0.0], rtol=1e-15)
    table = np.arange(6.0).reshape(3, 2)
    np.testing.assert_array_equal(oracle.embedding(np.array([[2, 0]]), table), [[[4.0, 5.0], [0.0, 1.0]]])
