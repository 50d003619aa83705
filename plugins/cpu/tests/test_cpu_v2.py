"""The contract-v2 semantics (SPEC §8) of the CPU kernels against the float64 oracle.

Each test runs through the backend object (validation and dispatch) and on the kernels with the v2
arguments defaulted as the backend object defaults them (fixture ``ops``), on every code path (fixture
``path``).  Bounds and why: ``cpu_tolerances.py``.  The checks wrapped in ``no_warnings()`` run with
warnings as errors and NumPy floating-point errors raising, so a NaN, an overflow or an invalid
operation anywhere in those kernels fails them.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np
import pytest

from cpu_tolerances import EPS, U, assert_within, attention_bound, dot_bound, f32_result, rope_bound
from sapient_core.testing import oracle

F32 = np.float32


def _randn(rng, *shape, scale=1.0, dtype=F32):
    return (scale * rng.standard_normal(shape)).astype(dtype)


@contextlib.contextmanager
def no_warnings():
    """Warnings are errors and so is every floating-point exception NumPy would warn about by default
    (overflow, invalid, division by zero; underflow to 0 is expected and harmless, as NumPy's default
    says); the kernels silence the ones they expect themselves, so these only catch the unexpected."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            yield


# --- rope --------------------------------------------------------------------------------------------

def _yarn_like_inv_freq(rotary_dim, base=1e6, factor=8.0):
    """Frequencies as YaRN / llama3 make them: the default ones, the low frequencies divided by a
    factor with a ramp in between (any float32 vector is valid input; this one is realistic)."""
    inv = oracle.rope_inv_freq(base, rotary_dim)
    ramp = np.clip(np.linspace(-0.5, 1.5, inv.size), 0.0, 1.0)
    return (inv * (1 - ramp) + inv / factor * ramp).astype(F32)


@pytest.mark.parametrize("rotary_dim,scaling", [(64, 1.0), (64, 1.2079), (32, 0.8), (2, 1.0)])
def test_apply_rope_with_given_frequencies(ops, rng, rotary_dim, scaling):
    x = _randn(rng, 2, 4, 7, 64)
    pos = np.array([0, 1, 2, 3, 4096, 70000, 131071])
    inv = _yarn_like_inv_freq(rotary_dim)
    with no_warnings():
        y = f32_result(ops.apply_rope(x, pos, inv, scaling), x.shape)
    assert_within(y, oracle.apply_rope(x, pos, inv, scaling), rope_bound(x, rotary_dim, scaling), "apply_rope")
    np.testing.assert_array_equal(y[..., rotary_dim:], x[..., rotary_dim:])


def test_apply_rope_is_apply_rope_partial_with_default_frequencies(ops, rng):
    x = _randn(rng, 1, 3, 5, 64)
    pos = np.array([3, 9, 27, 81, 243])
    inv = oracle.rope_inv_freq(10000.0, 32)
    got = ops.apply_rope(x, pos, inv.astype(F32), 1.0)
    # the float32 inv_freq differs from the float64 one by < 1 ulp: same result within the bound
    assert_within(got, ops.apply_rope_partial(x, pos, 10000.0, 32), 2 * rope_bound(x, 32) + 243 * EPS * np.abs(x),
                  "apply_rope vs partial")


def _left_padded_positions(lengths, s):
    """[B, S] positions of a left-padded batch, as transformers builds them (cumsum of the attention
    mask minus one, padding filled with 1)."""
    mask = np.arange(s)[None, :] >= (s - np.asarray(lengths))[:, None]
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask, pos, 1), mask


@pytest.mark.parametrize("op", ["positions", "partial", "rope"])
def test_rope_batch_positions(ops, rng, op):
    """[B, S] positions: each batch row rotated with its own positions, the same as doing it row by row."""
    b, s = 3, 6
    pos, _ = _left_padded_positions([6, 4, 1], s)
    x = _randn(rng, b, 4, s, 64)
    call = {"positions": lambda x_, p: ops.apply_rope_positions(x_, p, 10000.0),
            "partial": lambda x_, p: ops.apply_rope_partial(x_, p, 10000.0, 48),
            "rope": lambda x_, p: ops.apply_rope(x_, p, _yarn_like_inv_freq(40), 1.1)}[op]
    ref = {"positions": lambda x_, p: oracle.apply_rope_positions(x_, p, 10000.0),
           "partial": lambda x_, p: oracle.apply_rope_partial(x_, p, 10000.0, 48),
           "rope": lambda x_, p: oracle.apply_rope(x_, p, _yarn_like_inv_freq(40), 1.1)}[op]
    rdim = {"positions": 64, "partial": 48, "rope": 40}[op]
    with no_warnings():
        y = f32_result(call(x, pos), x.shape)
    assert_within(y, ref(x, pos), rope_bound(x, rdim, 1.1), f"rope {op} [B, S] positions")
    for i in range(b):
        np.testing.assert_array_equal(y[i:i + 1], call(x[i:i + 1], pos[i]))


def test_rope_float16_views_negative_strides_and_empty_batches(ops, rng):
    x16 = _randn(rng, 2, 4, 5, 64, dtype=np.float16)
    pos = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]], dtype=np.int32)
    inv = _yarn_like_inv_freq(64)
    assert_within(f32_result(ops.apply_rope(x16, pos, inv, 1.0), x16.shape), oracle.apply_rope(x16, pos, inv, 1.0),
                  rope_bound(x16, 64), "apply_rope float16")
    base = _randn(rng, 2, 5, 4, 64)
    for x in (base.transpose(0, 2, 1, 3), base[::-1, ::-1].transpose(0, 2, 1, 3), base[..., ::-1].transpose(0, 2, 1, 3)):
        p = pos[:, ::-1]                                       # negative-stride positions too
        assert_within(ops.apply_rope(x, p, inv[::-1], 1.0), oracle.apply_rope(x, p, inv[::-1], 1.0),
                      rope_bound(x, 64), "apply_rope on a view")
        assert_within(ops.apply_rope_partial(x, p, 500000.0, 16), oracle.apply_rope_partial(x, p, 500000.0, 16),
                      rope_bound(x, 16), "apply_rope_partial on a view")
    for x, p in ((np.zeros((0, 4, 5, 64), F32), np.zeros((0, 5), np.int64)), (np.zeros((2, 4, 0, 64), F32), np.zeros((2, 0), np.int64))):
        f32_result(ops.apply_rope(x, p, inv, 1.0), x.shape)
        f32_result(ops.apply_rope_positions(x, p, 10000.0), x.shape)


# --- attention ---------------------------------------------------------------------------------------

def _qkv(rng, b, h, kv, sq, sk, d=32, scale=1.0, dtype=F32):
    return (_randn(rng, b, h, sq, d, scale=scale, dtype=dtype), _randn(rng, b, kv, sk, d, scale=scale, dtype=dtype),
            _randn(rng, b, kv, sk, d, dtype=dtype))


def _check_attention(ops, q, k, v, kv, causal, what, **kw):
    with no_warnings():
        y = ops.gqa_attention(q, k, v, kv, causal, **kw)
    f32_result(y, q.shape)
    assert np.all(np.isfinite(y)), what
    ref = oracle.gqa_attention(q, k, v, kv, causal, **kw)
    assert_within(y, ref, attention_bound(q, k, v, kv, kw.get("scale"), kw.get("softcap")), what)
    return y


WINDOW_CASES = {
    # name: (B, H, KV, Sq, Sk, W)
    "prefill W=4": (2, 4, 2, 12, 12, 4),
    "kv-cache offset Sq<Sk W=5": (1, 4, 2, 3, 20, 5),
    "decode W=8 Sk=40": (2, 8, 2, 1, 40, 8),
    "W=1 (only itself)": (1, 4, 1, 6, 9, 1),
    "W > Sk (no effect)": (1, 4, 2, 5, 7, 100),
    "W = Sk": (1, 2, 2, 7, 7, 7),
}


@pytest.mark.parametrize("case", WINDOW_CASES, ids=list(WINDOW_CASES))
def test_sliding_window(ops, rng, case):
    b, h, kv, sq, sk, w = WINDOW_CASES[case]
    q, k, v = _qkv(rng, b, h, kv, sq, sk)
    y = _check_attention(ops, q, k, v, kv, True, f"window ({case})", sliding_window=w)
    if w >= sk:
        np.testing.assert_allclose(y, ops.gqa_attention(q, k, v, kv, True), rtol=0, atol=1e-6)
    if w == 1:                                  # each query sees exactly its own key: the output is its v
        g = h // kv
        own = np.repeat(v, g, axis=1)[:, :, sk - sq:]
        np.testing.assert_allclose(y, own, rtol=4 * EPS, atol=0)


def test_sliding_window_matches_the_definition_key_by_key(ops, rng):
    """Moving one key outside the window must not change the output; inside the window it must."""
    q, k, v = _qkv(rng, 1, 2, 1, 1, 10)
    w = 4                                       # decode at p = 9 sees keys 6, 7, 8, 9
    y = ops.gqa_attention(q, k, v, 1, True, sliding_window=w)
    for j, inside in ((5, False), (6, True), (0, False), (9, True)):
        v2 = v.copy()
        v2[0, 0, j] += 10.0
        y2 = ops.gqa_attention(q, k, v2, 1, True, sliding_window=w)
        assert (np.abs(y2 - y).max() > 1e-3) == inside, (j, inside)


@pytest.mark.parametrize("scale,softcap,mag", [(0.0625, None, 1.0), (None, 50.0, 8.0), (0.125, 20.0, 12.0),
                                               (1.0, 30.0, 40.0), (None, 1.0, 1.0)])
def test_scale_and_softcap(ops, rng, scale, softcap, mag):
    """Softcap after scaling, before masking (Gemma 2); raw scores up to ~ +-2e4 at mag 40."""
    q, k, v = _qkv(rng, 2, 8, 2, 6, 11, scale=mag)
    y = _check_attention(ops, q, k, v, 2, True, f"scale={scale} softcap={softcap}", scale=scale, softcap=softcap)
    if softcap is not None and mag > 1:
        # really large: uncapped raw scores far beyond the cap, and the cap changes the result
        raw = np.abs(q.astype(float) @ np.repeat(k, 4, axis=1).astype(float).transpose(0, 1, 3, 2)).max()
        assert raw * (scale or 1 / math.sqrt(32)) > 3 * softcap
        assert np.abs(y - ops.gqa_attention(q, k, v, 2, True, scale=scale)).max() > 1e-3


def test_padding_mask_and_fully_masked_rows(ops, rng):
    """kv_mask False keys are never attended; a query row that sees no key gives exact zeros."""
    b, h, kv, s = 3, 4, 2, 6
    q, k, v = _qkv(rng, b, h, kv, s, s)
    _, mask = _left_padded_positions([6, 3, 0], s)          # row 2: every key is padding
    y = _check_attention(ops, q, k, v, kv, True, "left padding", kv_mask=mask)
    np.testing.assert_array_equal(y[2], 0.0)                # all-False row
    np.testing.assert_array_equal(y[1, :, :3], 0.0)         # padded queries of row 1 see only padding
    assert np.all(np.abs(y[1, :, 3:]).max(axis=-1) > 0)
    # changing a masked key's value changes nothing, exactly
    v2 = v.copy()
    v2[1, :, :3] = 1e6
    np.testing.assert_array_equal(ops.gqa_attention(q, k, v2, kv, True, kv_mask=mask)[1], y[1])
    # non-causal with a mask (an encoder over a padded batch)
    _check_attention(ops, q, k, v, kv, False, "non-causal padding", kv_mask=mask)


def test_window_and_padding_leaving_nothing(ops, rng):
    """A window of 2 whose two keys are padding: that row has no key at all and gives zeros."""
    q, k, v = _qkv(rng, 1, 4, 2, 4, 8)
    mask = np.ones((1, 8), bool)
    mask[0, 4:6] = False                                    # query 1 (p = 5) would see keys 4, 5 only
    y = _check_attention(ops, q, k, v, 2, True, "window + padding", sliding_window=2, kv_mask=mask)
    np.testing.assert_array_equal(y[0, :, 1], 0.0)
    assert np.all(np.abs(y[0, :, [0, 2, 3]]).max(axis=-1) > 0)
    # with softcap and scale as well, and a decode step whose only window key is padding
    _check_attention(ops, q, k, v, 2, True, "window + padding + softcap", sliding_window=2, kv_mask=mask,
                     softcap=30.0, scale=0.2)
    q1 = q[:, :, :1]
    mask1 = np.ones((1, 8), bool)
    mask1[0, 7] = False
    y1 = _check_attention(ops, q1, k, v, 2, True, "decode, window key masked", sliding_window=1, kv_mask=mask1)
    np.testing.assert_array_equal(y1, 0.0)


def test_left_padded_batch_end_to_end(ops, rng):
    """RoPE with [B, S] positions, then attention with the padding mask: each row equals the same
    prompt run alone without padding (what batching prompts of different lengths must give)."""
    b, h, kv, s, d = 2, 4, 2, 7, 32
    lengths = [7, 4]
    pos, mask = _left_padded_positions(lengths, s)
    q, k, v = _qkv(rng, b, h, kv, s, s, d=d)
    qr, kr = ops.apply_rope_positions(q, pos, 10000.0), ops.apply_rope_positions(k, pos, 10000.0)
    y = ops.gqa_attention(qr, kr, v, kv, True, kv_mask=mask)
    for i, n in enumerate(lengths):
        p = np.arange(n)
        qa = ops.apply_rope_positions(q[i:i + 1, :, s - n:], p, 10000.0)
        ka = ops.apply_rope_positions(k[i:i + 1, :, s - n:], p, 10000.0)
        alone = ops.gqa_attention(qa, ka, v[i:i + 1, :, s - n:], kv, True)
        np.testing.assert_allclose(y[i:i + 1, :, s - n:], alone, rtol=0, atol=2e-6)


def test_attention_float16_views_negative_strides_and_empty(ops, rng):
    q, k, v = _qkv(rng, 2, 4, 2, 5, 9, dtype=np.float16)
    mask = np.ones((2, 9), bool)
    mask[1, :3] = False
    _check_attention(ops, q, k, v, 2, True, "float16", sliding_window=3, softcap=20.0, kv_mask=mask, scale=0.3)
    q, k, v = _qkv(rng, 2, 4, 2, 5, 9)
    views = (q[::-1, :, ::-1], k[:, :, ::-1], v[..., ::-1])              # negative strides everywhere
    _check_attention(ops, *views, 2, True, "negative strides", sliding_window=4, kv_mask=mask[::-1])
    tq = _randn(rng, 2, 5, 4, 32).transpose(0, 2, 1, 3)
    _check_attention(ops, tq, k, v, 2, True, "transposed q", kv_mask=mask[:, ::1])
    for qs, ks in (((0, 4, 5, 32), (0, 2, 9, 32)), ((2, 4, 0, 32), (2, 2, 9, 32))):
        e_q, e_k = np.zeros(qs, F32), np.zeros(ks, F32)
        y = ops.gqa_attention(e_q, e_k, e_k, 2, True, sliding_window=2, softcap=5.0, kv_mask=np.ones((ks[0], ks[2]), bool))
        f32_result(y, qs)


# --- logits ------------------------------------------------------------------------------------------

def _softcap_bound(hidden, head, ref_uncapped, c):
    """dot_bound (tanh' <= 1 passes it on) + U |z| (rounding z / c, times c) + 10 U c (tanh <= 4 ulp of a
    value below 1, times c, and the multiplication by c)."""
    return dot_bound(hidden, head) + U * np.abs(ref_uncapped) + 10 * U * c


@pytest.mark.parametrize("c", [30.0, 5.0])
def test_logits_softcap(ops, rng, c):
    hidden, head = _randn(rng, 2, 3, 128, scale=8.0), _randn(rng, 500, 128, scale=0.5)
    with no_warnings():
        last = f32_result(ops.logits_from_hidden(hidden, head, c), (2, 500))
        every = f32_result(ops.all_logits_from_hidden(hidden, head, c), (2, 3, 500))
    raw = oracle.all_logits_from_hidden(hidden, head)
    assert np.abs(raw).max() > 3 * c                        # the cap really bites
    assert_within(every, oracle.all_logits_from_hidden(hidden, head, c), _softcap_bound(hidden, head, raw, c), "softcap")
    assert_within(last, oracle.logits_from_hidden(hidden, head, c),
                  _softcap_bound(hidden[:, -1], head, raw[:, -1], c), "softcap last")
    assert np.abs(every).max() <= c
    # softcap None: the plain product of the last position, exactly
    np.testing.assert_array_equal(ops.logits_from_hidden(hidden, head, None), np.dot(hidden[:, -1], head.T))


# --- embedding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_embedding(ops, rng, dtype):
    table = _randn(rng, 50, 16, dtype=dtype)
    ids = rng.integers(0, 50, size=(3, 7))
    with no_warnings():
        y = f32_result(ops.embedding(ids, table), (3, 7, 16))
    np.testing.assert_array_equal(y, oracle.embedding(ids, table))      # a gather is exact
    y[0, 0] += 1                                                        # the result is not a view of the table
    np.testing.assert_array_equal(table[ids[0, 0]].astype(F32) + 1, y[0, 0])
    for ids_ in (ids[::-1, ::-1], ids.astype(np.int32).T, ids[:, ::2]):
        np.testing.assert_array_equal(ops.embedding(ids_, table[::1]), oracle.embedding(ids_, table))
    np.testing.assert_array_equal(ops.embedding(ids, table[::-1]), oracle.embedding(ids, table[::-1]))
    f32_result(ops.embedding(np.zeros((0, 4), np.int64), table), (0, 4, 16))
    f32_result(ops.embedding(np.zeros((2, 0), np.int64), table), (2, 0, 16))


# --- NaN: where the formula has it, and nowhere a mask hides it ---------------------------------------

@pytest.mark.parametrize("sq", [1, 5])
def test_attention_nan_query_makes_its_row_nan_only(ops, rng, sq):
    q, k, v = _qkv(rng, 2, 4, 2, sq, 9)
    q[1, 2, sq - 1, 3] = np.nan                               # one query row of one head
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.gqa_attention(q, k, v, 2, True, kv_mask=np.ones((2, 9), bool))
    with np.errstate(invalid="ignore"):
        ref = oracle.gqa_attention(q, k, v, 2, True)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y[1, 2, sq - 1]).all() and np.isnan(y).sum() == y.shape[-1]


def test_attention_nan_in_hidden_keys_does_not_leak(ops, rng):
    """A NaN key that padding, causality or the window hides never reaches that query's output (the
    oracle only ever weighs visible keys; masks must replace scores, not add to them); where the key is
    visible, the row is NaN, as in the oracle."""
    q, k, v = _qkv(rng, 2, 4, 2, 4, 10)                       # queries at p = 6, 7, 8, 9
    mask = np.ones((2, 10), bool)
    mask[1, 5] = False
    k[1, :, 5] = np.nan                                       # padding (batch row 1)
    k[:, :, 8] = np.nan                                       # hidden from p = 6, 7 by causality
    k[:, :, 1] = np.nan                                       # outside every window of 4 (p - 4 < j)
    for sq in (4, 1):
        qq, want_nan_rows = q[:, :, 4 - sq:], (2, 3) if sq == 4 else (0,)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = ops.gqa_attention(qq, k, v, 2, True, sliding_window=4, kv_mask=mask)
        with np.errstate(invalid="ignore"):
            ref = oracle.gqa_attention(qq, k, v, 2, True, sliding_window=4, kv_mask=mask)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        nan_rows = sorted({int(i) for i in np.argwhere(np.isnan(y).any(axis=-1))[:, 2]})
        assert nan_rows == list(want_nan_rows), nan_rows
        fin = np.isfinite(ref)
        bound = attention_bound(qq, np.nan_to_num(k), v, 2)
        assert_within(np.where(fin, y, 0), np.where(fin, ref, 0), bound, f"hidden NaN keys, Sq={sq}")


@pytest.mark.parametrize("decode", [False, True])
def test_a_row_of_minus_infinite_scores_is_nan_but_a_row_that_sees_nothing_is_zero(ops, decode):
    """0 / 0 where a query sees keys whose scores are all -inf (an infinity in the query); zeros where the masks
    hide every key; on every path (the NumPy, fused and parallel ones: fixture ``path``)."""
    rng = np.random.default_rng(7)
    sq = 1 if decode else 3
    q = rng.standard_normal((2, 2, sq, 4)).astype(np.float32)
    k = rng.standard_normal((2, 1, 3, 4)).astype(np.float32)
    v = rng.standard_normal((2, 1, 3, 4)).astype(np.float32)
    k[..., 0] = -np.abs(k[..., 0]) - 0.5               # every key's first component < 0 ...
    q[0, 0, -1, 0] = np.inf                            # ... so this query row scores -inf on every key
    mask = np.ones((2, 3), bool)
    mask[1] = False                                    # batch row 1 sees no key at all
    with np.errstate(all="ignore"):
        out = np.asarray(ops.gqa_attention(q, k, v, 1, True, None, None, None, mask))
    assert np.isnan(out[0, 0, -1]).all()               # sees keys, all -inf: NaN
    assert np.isfinite(out[0, 1]).all() and np.isfinite(out[0, 0, :-1]).all()
    assert (out[1] == 0).all()                         # sees nothing: zeros (the infinity is not seen either)
