"""Contract v2 (SPEC section 8) on MLX, against the float64 oracles of ``sapient_core.testing.oracle``.

Most tests call the kernels directly (``kernels.<op>`` with the hook's exact positional arguments, on
inputs the core's validation accepts); others go through the strict backend object (no fallback can
hide a failure).  Every result is an ``mx.array`` (NumPy for
the logits ops) of float32.  Tolerances, and why (they hold on Metal and CUDA too, not only on the CPU
device where they were measured):

- RoPE: ``ROPE_TOL = 1e-6 * max(1, max|x|) * max(1, attention_scaling)``.  The cos/sin tables are
  float64 values rounded once to float32 (2**-24 relative) on the host, the same on every device; the
  device does two float32 products and a sum of values below sqrt(2) * scaling * max|x|: a few
  roundings, ~3e-7 relative.  Measured on the CPU device: 2e-7 at positions up to 5e5 (``mx.fast.rope``'s
  float32 angles are off by 5e-3 at position 60000: 10000x this bound).
- attention: the conformance kit's ``gqa_attention`` tolerance, ``max|err| <= 1e-4 * max(1, max|oracle|)``
  and NMSE <= 1e-9: two float32 matmuls and a softmax, any reduction order, fused kernels with fast exp
  (Metal's fused SDPA, what a GPU run of this file exercises at head dims 64 and 128).  Measured here:
  ~1e-7.  With softcap at scores of order 1e3 the scores themselves carry ~1e3 * 2**-24 = 6e-5 of
  float32 rounding before the tanh, which squashes them: the same bound holds.
- logits: twice the float32 dot-product bound ``K * 2**-24 * sum|h w|`` (mlx_helpers.dot_tol); the
  softcap's tanh only shrinks errors.
- embedding: exact (a gather of float32 values, or of float16 values converted exactly).
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from sapient_backend_mlx import kernels, plugin
from sapient_backend_mlx.cache import TRANSFERS, WEIGHTS
from mlx_helpers import dot_tol
from sapient_core.testing import TOLERANCES, max_abs_err, nmse, oracle


def f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


def host(y, *, numpy_result=False):
    if numpy_result:
        assert isinstance(y, np.ndarray), type(y)
    else:
        assert isinstance(y, mx.array), type(y)
    out = kernels.to_host(y)
    assert out.dtype == np.float32, out.dtype
    return out


def rope_tol(x, scaling=1.0):
    return 1e-6 * max(1.0, float(np.abs(np.asarray(x, np.float64)).max(initial=0))) * max(1.0, scaling)


def check_attention(got, want):
    """The conformance kit's gqa_attention tolerance (max |err| scaled by max(1, max |want|), and NMSE)."""
    tol = TOLERANCES["gqa_attention"]
    limit = tol.max_err * max(1.0, float(np.abs(want).max(initial=0)))
    assert np.isfinite(got).all(), "a NaN or an infinity in the result"   # the kit's measures skip them
    assert max_abs_err(got, want) <= limit, f"max |err| {max_abs_err(got, want):.3g} > {limit:.3g}"
    assert nmse(got, want) <= tol.nmse, f"NMSE above the kit's {tol.nmse:g}"


# --- apply_rope ---------------------------------------------------------------------------------------

LLAMA3_INV_FREQ = (500000.0 ** (-np.arange(0, 128, 2) / 128) / np.where(np.arange(64) > 40, 8.0, 1.0)).astype(
    np.float32)


@pytest.mark.parametrize("d,r,scaling", [(128, 128, 1.0), (128, 128, 1.2772), (96, 64, 1.0), (64, 32, 0.5)])
def test_apply_rope_with_given_frequencies_and_scaling(rng, d, r, scaling):
    inv = (10000.0 ** (-np.arange(0, r, 2) / r) * rng.uniform(0.5, 1.5, r // 2)).astype(np.float32)
    x = f32(rng, 2, 3, 7, d)
    positions = np.array([0, 1, 2, 3, 40, 41, 4096])
    got = host(kernels.apply_rope(x, positions, inv, scaling))
    np.testing.assert_allclose(got, oracle.apply_rope(x, positions, inv, scaling), rtol=0, atol=rope_tol(x, scaling))
    np.testing.assert_array_equal(got[..., r:], x[..., r:])             # channels R..D untouched


def test_apply_rope_llama3_frequencies_at_long_positions(rng):
    # head dim 128, positions up to 5e5: float32 angles would be off by ~0.03 rad here.
    x = f32(rng, 1, 4, 5, 128)
    positions = np.array([0, 8191, 65535, 131071, 500000])
    got = host(kernels.apply_rope(x, positions, LLAMA3_INV_FREQ, 1.0))
    np.testing.assert_allclose(got, oracle.apply_rope(x, positions, LLAMA3_INV_FREQ), rtol=0, atol=rope_tol(x))


@pytest.mark.parametrize("base,d", [(10000.0, 64), (1e6, 128)])
def test_rope_at_head_dims_64_and_128_and_long_positions(mlx, rng, base, d):
    x = f32(rng, 1, 8, 16, d)
    for positions in (np.arange(16), np.arange(60000, 60016), np.arange(1 << 20, (1 << 20) + 16)):
        got = host(mlx.apply_rope_positions(x, positions, base))
        np.testing.assert_allclose(got, oracle.apply_rope_positions(x, positions, base), rtol=0, atol=rope_tol(x),
                                   err_msg=f"positions from {positions[0]}")


def test_a_reordered_run_of_consecutive_positions_is_not_taken_for_an_offset(mlx, rng):
    # [0, 2, 1, 3] spans 0..3 with no gap: a kernel that passed offset=positions[0] would be wrong.
    x = f32(rng, 1, 2, 4, 16)
    for positions in (np.array([0, 2, 1, 3]), np.array([5, 4, 6, 7]), np.array([3, 2, 1, 0])):
        got = host(mlx.apply_rope_positions(x, positions, 10000.0))
        np.testing.assert_allclose(got, oracle.apply_rope_positions(x, positions, 10000.0), rtol=0, atol=rope_tol(x))
        sorted_rows = host(mlx.apply_rope_positions(x[:, :, np.argsort(positions)], np.sort(positions), 10000.0))
        np.testing.assert_allclose(got[:, :, np.argsort(positions)], sorted_rows, rtol=0, atol=rope_tol(x))


def test_rope_batch_positions_for_left_padded_batches(rng):
    # Row 0 is a full prompt; row 1 is left-padded by 3 (padding positions 1, as transformers fills them).
    x = f32(rng, 2, 4, 6, 32)
    positions = np.array([[0, 1, 2, 3, 4, 5], [1, 1, 1, 0, 1, 2]])
    for pos in (positions, mx.array(positions), positions.astype(np.int32)):
        got = host(kernels.apply_rope_positions(x, pos, 10000.0))
        np.testing.assert_allclose(got, oracle.apply_rope_positions(x, positions, 10000.0), rtol=0, atol=rope_tol(x))
    got = host(kernels.apply_rope_partial(x, positions, 500.0, 8))
    np.testing.assert_allclose(got, oracle.apply_rope_partial(x, positions, 500.0, 8), rtol=0, atol=rope_tol(x))
    np.testing.assert_allclose(host(kernels.apply_rope(x, positions, LLAMA3_INV_FREQ[:16], 1.1)),
                               oracle.apply_rope(x, positions, LLAMA3_INV_FREQ[:16], 1.1), rtol=0, atol=rope_tol(x, 1.1))


def test_rope_inputs_in_every_form(rng):
    x = f32(rng, 1, 2, 3, 16)
    inv = LLAMA3_INV_FREQ[:8]
    pos = np.array([4, 9, 2])
    x16, flipped = x.astype(np.float16), x[..., ::-1]
    for xi, p, f, ref in [(x, [4, 9, 2], inv, x), (mx.array(x), pos, mx.array(inv), x), (x16, pos, inv, x16),
                          (flipped, pos[::-1].copy()[::-1], inv, flipped), (x, mx.array(pos), inv, x)]:
        got = host(kernels.apply_rope(xi, p, f, 1.0))
        np.testing.assert_allclose(got, oracle.apply_rope(ref, pos, inv), rtol=0, atol=rope_tol(x), err_msg=str(type(xi)))
    got = host(kernels.apply_rope(x[:, :, :1], range(7, 8), inv, 1.0))
    np.testing.assert_allclose(got, oracle.apply_rope(x[:, :, :1], [7], inv), rtol=0, atol=rope_tol(x))
    assert kernels.apply_rope(np.zeros((0, 2, 3, 16), np.float32), [1, 2, 3], inv, 1.0).shape == (0, 2, 3, 16)


def test_rope_tables_are_uploaded_once_per_positions_and_shared(rng):
    x = f32(rng, 1, 2, 1, 64)
    positions = np.array([123457])
    kernels.apply_rope_positions(x, positions, 10000.0)
    before = TRANSFERS.stats()["activation_uploads"]
    for _ in range(4):                                  # q and k of two layers: the table is reused
        kernels.apply_rope_positions(mx.array(x), positions, 10000.0)
    assert TRANSFERS.stats()["activation_uploads"] == before


# --- gqa_attention ------------------------------------------------------------------------------------

def attn(q, k, v, kv, causal, scale=None, window=None, softcap=None, kv_mask=None):
    return host(kernels.gqa_attention(q, k, v, kv, causal, scale, window, softcap, kv_mask))


def qkv(rng, b, h, kv, sq, sk, d, scale=1.0):
    return f32(rng, b, h, sq, d, scale=scale), f32(rng, b, kv, sk, d, scale=scale), f32(rng, b, kv, sk, d)


@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("sq,sk", [(1, 1024), (1, 2048), (4, 1030), (1024, 1024)])
def test_attention_at_head_dims_64_and_128_with_long_kv(mlx, rng, d, sq, sk):
    # The fused kernels of a GPU (Metal: head dims 64, 80, 96, 128, 256; 2-pass decode from 1024 keys).
    h, kv = 8 if sq < 1024 else 4, 2
    q, k, v = qkv(rng, 1, h, kv, sq, sk, d)
    got = host(mlx.gqa_attention(q, k, v, kv, True))            # through the v1 core, strict
    check_attention(got, oracle.gqa_attention(q, k, v, kv, True))


@pytest.mark.parametrize("sq,sk,window", [
    (3, 10, 4),       # window with a KV-cache offset
    (5, 5, 100),      # window larger than Sk: plain causal
    (6, 6, 1),        # W = 1: each query sees only itself
    (1, 1500, 256),   # decode step, long cache, window
    (64, 1100, 512),  # a prefill chunk after a long cache
])
def test_sliding_window(rng, sq, sk, window):
    q, k, v = qkv(rng, 2, 4, 2, sq, sk, 64)
    check_attention(attn(q, k, v, 2, True, None, window), oracle.gqa_attention(q, k, v, 2, True, sliding_window=window))


def test_window_one_returns_each_positions_own_value(rng):
    q, k, v = qkv(rng, 1, 2, 1, 6, 6, 16)
    got = attn(q, k, v, 1, True, None, 1)
    np.testing.assert_allclose(got, np.repeat(v, 2, axis=1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scale", [None, 256 ** -0.5, 0.5])
def test_scale(rng, scale):
    q, k, v = qkv(rng, 1, 4, 2, 3, 7, 32)
    check_attention(attn(q, k, v, 2, True, scale), oracle.gqa_attention(q, k, v, 2, True, scale=scale))


@pytest.mark.parametrize("sq,sk,causal,window,masked", [
    (5, 5, True, None, False), (3, 9, True, None, False), (1, 1024, True, None, False),
    (4, 8, False, None, False), (4, 8, True, 3, False), (1, 9, True, 4, False), (4, 8, True, None, True)])
def test_softcap_at_large_scores(rng, sq, sk, causal, window, masked):
    # Scores of order 1e3 squashed to +-50 (Gemma 2 uses 50): without the cap the softmax is one-hot.
    q, k, v = qkv(rng, 2, 4, 2, sq, sk, 64, scale=6.0)
    kv_mask = None
    if masked:
        kv_mask = np.ones((2, sk), bool)
        kv_mask[1, :3] = False
    got = attn(q, k, v, 2, causal, 1 / 16, window, 50.0, kv_mask)
    want = oracle.gqa_attention(q, k, v, 2, causal, 1 / 16, window, 50.0, kv_mask)
    check_attention(got, want)
    uncapped = oracle.gqa_attention(q, k, v, 2, causal, 1 / 16, window, None, kv_mask)
    assert np.abs(uncapped - want).max() > 1e-2, "the cap changed nothing: the case does not test it"


@pytest.mark.parametrize("sq,sk,causal,window", [(6, 6, True, None), (1, 9, True, None), (2, 9, True, 3),
                                                  (4, 7, False, None), (1, 1100, True, None)])
def test_kv_mask_left_padding(rng, sq, sk, causal, window):
    q, k, v = qkv(rng, 3, 4, 2, sq, sk, 64)
    kv_mask = np.ones((3, sk), bool)
    kv_mask[1, :2] = False            # left padding 2
    kv_mask[2, : sk - 1] = False      # only the last key is real
    for mask in (kv_mask, mx.array(kv_mask)):
        got = attn(q, k, v, 2, causal, None, window, None, mask)
        check_attention(got, oracle.gqa_attention(q, k, v, 2, causal, sliding_window=window, kv_mask=kv_mask))


def test_rows_that_see_no_key_are_zeros_never_nan(rng):
    q, k, v = qkv(rng, 2, 4, 2, 4, 6, 32)
    kv_mask = np.ones((2, 6), bool)
    kv_mask[0] = False                          # batch row 0 sees nothing at all
    kv_mask[1, :4] = False                      # causal: queries 0, 1 (positions 2, 3) see only masked keys
    for softcap in (None, 30.0):
        got = attn(q, k, v, 2, True, None, None, softcap, kv_mask)
        assert not np.isnan(got).any()
        np.testing.assert_array_equal(got[0], 0.0)
        np.testing.assert_array_equal(got[1, :, :2], 0.0)
        check_attention(got, oracle.gqa_attention(q, k, v, 2, True, softcap=softcap, kv_mask=kv_mask))
    # Decode step of a fully padded row, and no key at all.
    q1 = q[:, :, :1]
    got = attn(q1, k, v, 2, True, None, None, None, kv_mask)
    np.testing.assert_array_equal(got[0], 0.0)
    assert attn(q1, k[:, :, :0], v[:, :, :0], 2, False).tolist() == np.zeros_like(q1).tolist()


def test_window_padding_and_offset_together(rng):
    q, k, v = qkv(rng, 2, 8, 2, 3, 12, 128)
    kv_mask = np.ones((2, 12), bool)
    kv_mask[0, :5] = False
    check_attention(attn(q, k, v, 2, True, 0.1, 4, None, kv_mask),
                    oracle.gqa_attention(q, k, v, 2, True, 0.1, 4, None, kv_mask))


def test_attention_float16_and_negative_stride_inputs(mlx, rng):
    q, k, v = qkv(rng, 1, 4, 2, 5, 5, 64)
    q16, k16, v16 = q.astype(np.float16), k.astype(np.float16), v.astype(np.float16)
    check_attention(attn(q16, k16, v16, 2, True, None, 3), oracle.gqa_attention(q16, k16, v16, 2, True, sliding_window=3))
    flipped = np.flip(q, axis=-1)                               # negative strides: computed, not declined
    got = host(mlx.gqa_attention(flipped, k[..., ::-1], v, 2, True))
    check_attention(got, oracle.gqa_attention(flipped, k[..., ::-1], v, 2, True))
    assert mlx.stats().ops["gqa_attention"].fallbacks == 0


# --- logits -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("softcap", [None, 30.0])
def test_logits_softcap(rng, softcap):
    hidden, lm_head = f32(rng, 2, 3, 64, scale=4.0), f32(rng, 50, 64)
    got = host(kernels.logits_from_hidden(hidden, lm_head, softcap), numpy_result=True)
    want = oracle.logits_from_hidden(hidden, lm_head, softcap)
    if softcap is not None:
        assert np.abs(oracle.logits_from_hidden(hidden, lm_head)).max() > 2 * softcap     # large logits: the cap matters
    np.testing.assert_allclose(got, want, rtol=0, atol=dot_tol(hidden, lm_head))
    got = host(kernels.all_logits_from_hidden(mx.array(hidden), lm_head, softcap), numpy_result=True)
    np.testing.assert_allclose(got, oracle.all_logits_from_hidden(hidden, lm_head, softcap), rtol=0, atol=dot_tol(hidden, lm_head))
    assert kernels.all_logits_from_hidden(hidden[:, :0], lm_head, softcap).shape == (2, 0, 50)


# --- embedding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_embedding_keeps_the_table_on_the_device(rng, dtype):
    table = f32(rng, 97, 16).astype(dtype)
    ids = np.array([[3, 96, 0, 3], [5, 5, 1, 2]])
    got = host(kernels.embedding(ids, table))
    np.testing.assert_array_equal(got, oracle.embedding(ids, table).astype(np.float32))
    wc0, tr0 = WEIGHTS.stats(), TRANSFERS.stats()
    for form in (ids, ids.astype(np.int32), mx.array(ids)):
        np.testing.assert_array_equal(host(kernels.embedding(form, table)), got)
    wc1, tr1 = WEIGHTS.stats(), TRANSFERS.stats()
    assert wc1["uploads"] == wc0["uploads"] and wc1["hits"] - wc0["hits"] == 3      # the table stayed
    assert tr1["activation_uploads"] - tr0["activation_uploads"] == 2                 # only the NumPy ids
    assert tr1["activation_upload_bytes"] - tr0["activation_upload_bytes"] == 2 * ids.size * 4
    handed = mx.array(table)                                    # a table handed over as a device array
    np.testing.assert_array_equal(host(kernels.embedding(ids, handed)), got)
    assert kernels.embedding(np.zeros((0, 3), np.int64), table).shape == (0, 3, 16)


# --- negative strides everywhere (they used to fall back to the CPU reference) -------------------------

def test_negative_stride_inputs_run_on_mlx(mlx, rng):
    x, w, g = f32(rng, 2, 3, 16), f32(rng, 8, 16), f32(rng, 16)
    fx, fw = x[..., ::-1], np.flip(w, axis=(0, 1))
    np.testing.assert_allclose(host(mlx.linear_3d(fx, fw)), oracle.linear_3d(fx, fw), rtol=0, atol=dot_tol(fx, fw))
    np.testing.assert_allclose(host(mlx.rms_norm(fx, g[::-1], 1e-6)), oracle.rms_norm(fx, g[::-1], 1e-6),
                               rtol=0, atol=5e-6)
    np.testing.assert_array_equal(host(mlx.add(fx, x[::-1])), fx + x[::-1])          # one float32 rounding
    r = f32(rng, 1, 2, 3, 8)[:, ::-1]
    np.testing.assert_allclose(host(mlx.apply_rope_positions(r, np.arange(3)[::-1], 10000.0)),
                               oracle.apply_rope_positions(r, np.arange(3)[::-1], 10000.0), rtol=0, atol=rope_tol(r))
    np.testing.assert_array_equal(kernels.to_host(mlx.from_numpy(fx)), fx)
    assert all(s.fallbacks == 0 and s.routed == 0 for s in mlx.stats().ops.values())


# --- layout helpers and the in-place KV cache ---------------------------------------------------------

def test_layout_helpers(rng):
    x = f32(rng, 2, 3, 4)
    np.testing.assert_array_equal(host(kernels.reshape(x, (3, 8))), x.reshape(3, 8))
    np.testing.assert_array_equal(host(kernels.reshape(mx.array(x), [6, -1])), x.reshape(6, -1))
    np.testing.assert_array_equal(host(kernels.transpose(x, (2, 0, 1))), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(host(kernels.slice(x, 2, 1, 3)), x[:, :, 1:3])
    np.testing.assert_array_equal(host(kernels.slice(x, -1, 0, 2)), x[..., 0:2])
    np.testing.assert_array_equal(host(kernels.concatenate([x, mx.array(x)], 1)), np.concatenate([x, x], 1))
    z = kernels.zeros((2, 5))
    assert z.dtype == mx.float32 and host(z).tolist() == np.zeros((2, 5)).tolist()


def test_write_is_functional_and_fills_a_kv_cache(rng):
    cache = kernels.zeros((1, 2, 6, 4))
    before = cache
    parts = [f32(rng, 1, 2, 2, 4), f32(rng, 1, 2, 1, 4).astype(np.float16), mx.array(f32(rng, 1, 2, 3, 4))]
    start = 0
    for p in parts:
        cache = kernels.write(cache, p, 2, start)
        start += p.shape[2]
    want = np.concatenate([np.asarray(p, np.float32) for p in parts], axis=2)
    np.testing.assert_array_equal(host(cache), want)
    np.testing.assert_array_equal(host(before), np.zeros((1, 2, 6, 4)))     # the old array is unchanged
    np.testing.assert_array_equal(host(kernels.write(kernels.zeros((3, 4)), np.ones((3, 2), np.float32), -1, 1)),
                                  [[0, 1, 1, 0]] * 3)


# --- the v2 hooks of the plugin ----------------------------------------------------------------------

def test_the_v2_plugin_functions_forward_to_the_kernels(rng):
    x = f32(rng, 1, 2, 3, 8)
    inv = LLAMA3_INV_FREQ[:4]
    np.testing.assert_allclose(host(plugin.apply_rope(x, np.arange(3), inv, 1.0)), oracle.apply_rope(x, np.arange(3), inv),
                               rtol=0, atol=rope_tol(x))
    table = f32(rng, 10, 4)
    np.testing.assert_array_equal(host(plugin.embedding(np.array([[1, 9]]), table)), table[[[1, 9]]])
    y = plugin.backend_write(plugin.backend_zeros((2, 3)), np.ones((1, 3), np.float32), 0, 1)
    y = plugin.backend_transpose(plugin.backend_reshape(y, (3, 2)), (1, 0))
    plugin.backend_eval([y])
    np.testing.assert_array_equal(host(plugin.backend_slice(y, 1, 0, 3)),
                                  np.array([[0, 0, 0], [1, 1, 1]], np.float32).reshape(3, 2).T)
    for name in ("apply_rope", "embedding", "backend_eval", "backend_zeros", "backend_write", "backend_slice",
                 "backend_reshape", "backend_transpose"):
        assert hasattr(getattr(plugin, name), "sapient_core_impl"), f"{name} is a hook implementation"
    assert math.isfinite(float(host(plugin.gqa_attention(x, x, x, 2, True, None, 2, 30.0, None)).sum()))


def test_a_left_padded_batch_gives_each_prompt_what_it_gives_alone(rng):
    # Two prompts (lengths 5 and 2) in one left-padded batch: [B, S] positions (transformers'
    # cumsum(mask) - 1, padding at 1) for RoPE, kv_mask for attention.  Each prompt's real rows must equal
    # what the prompt gives unpadded, and the padding rows must be finite.
    h, kv, d, s = 4, 2, 64, 5
    lengths = [5, 2]
    tokens = [(f32(rng, 1, h, n, d), f32(rng, 1, kv, n, d), f32(rng, 1, kv, n, d)) for n in lengths]
    q = np.zeros((2, h, s, d), np.float32)
    k = np.zeros((2, kv, s, d), np.float32)
    v = np.zeros((2, kv, s, d), np.float32)
    mask = np.zeros((2, s), bool)
    for b, (n, (tq, tk, tv)) in enumerate(zip(lengths, tokens)):
        q[b, :, s - n:], k[b, :, s - n:], v[b, :, s - n:] = tq[0], tk[0], tv[0]
        mask[b, s - n:] = True
    positions = np.where(mask, np.cumsum(mask, axis=1) - 1, 1)
    qr = kernels.apply_rope_positions(q, positions, 10000.0)
    kr = kernels.apply_rope_positions(k, positions, 10000.0)
    batch = host(kernels.gqa_attention(qr, kr, v, kv, True, None, None, None, mask))
    assert np.isfinite(batch).all()
    for b, (n, (tq, tk, tv)) in enumerate(zip(lengths, tokens)):
        alone = host(kernels.gqa_attention(kernels.apply_rope_positions(tq, np.arange(n), 10000.0),
                                           kernels.apply_rope_positions(tk, np.arange(n), 10000.0), tv, kv, True,
                                           None, None, None, None))
        # The same float32 arithmetic over the same keys, reduced in another order: ~1e-7 here; 1e-5
        # leaves room for a GPU kernel that tiles the padded and unpadded calls differently.
        np.testing.assert_allclose(batch[b, :, s - n:], alone[0], rtol=0, atol=1e-5, err_msg=f"prompt {b}")
