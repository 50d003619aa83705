"""Every op of the CPU plugin against the float64 oracle, at LLM-like shapes and at the edge cases.

Each test runs twice per code path (fixtures ``ops`` and ``path``): through
``sapient_core.get_backend("cpu")`` and on the raw kernel functions.  Bounds, and why each is what it is: ``cpu_tolerances.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cpu_tolerances import EPS, U, assert_within, attention_bound, dot_bound, f32_result, rope_bound
from sapient_core.testing import oracle

F32 = np.float32


def _randn(rng, *shape, scale=1.0, loc=0.0, dtype=F32):
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


# --- linear and logits -------------------------------------------------------------------------------

@pytest.mark.parametrize("b,s,n,m", [(2, 7, 512, 256), (1, 1, 512, 384), (3, 1, 256, 512)])
def test_linear_3d(ops, rng, b, s, n, m):
    x, w = _randn(rng, b, s, n), _randn(rng, m, n, scale=n ** -0.5)
    y = f32_result(ops.linear_3d(x, w), (b, s, m))
    assert_within(y, oracle.linear_3d(x, w), dot_bound(x, w), "linear_3d")


def test_linear_3d_non_contiguous_input(ops, rng):
    x = _randn(rng, 4, 2, 256).transpose(1, 0, 2)        # (2, 4, 256), not C-contiguous
    w = _randn(rng, 128, 256)
    assert_within(f32_result(ops.linear_3d(x, w), (2, 4, 128)), oracle.linear_3d(x, w), dot_bound(x, w), "linear_3d")


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_3d_bias(ops, rng, with_bias):
    x, w = _randn(rng, 2, 5, 512), _randn(rng, 256, 512, scale=0.05)
    bias = _randn(rng, 256) if with_bias else None
    y = f32_result(ops.linear_3d_bias(x, w, bias), (2, 5, 256))
    assert_within(y, oracle.linear_3d_bias(x, w, bias), dot_bound(x, w, bias), "linear_3d_bias")
    if not with_bias:
        np.testing.assert_array_equal(y, ops.linear_3d(x, w))


def test_logits(ops, rng):
    hidden, head = _randn(rng, 2, 6, 256), _randn(rng, 1000, 256, scale=0.06)
    last = ops.logits_from_hidden(hidden, head)
    every = ops.all_logits_from_hidden(hidden, head)
    assert type(last) is np.ndarray and type(every) is np.ndarray      # logits are NumPy on every backend
    assert last.shape == (2, 1000) and every.shape == (2, 6, 1000)
    assert last.dtype == every.dtype == np.float32
    assert_within(last, oracle.logits_from_hidden(hidden, head), dot_bound(hidden[:, -1], head), "logits")
    assert_within(every, oracle.all_logits_from_hidden(hidden, head), dot_bound(hidden, head), "all_logits")


# --- norms -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 9, 512), (1, 1, 256), (3, 4, 5, 384), (300,)])
def test_rms_norm(ops, rng, shape):
    x, w = _randn(rng, *shape, scale=3.0), _randn(rng, shape[-1], loc=1.0, scale=0.2)
    y = f32_result(ops.rms_norm(x, w, 1e-6), shape)
    ref = oracle.rms_norm(x, w, 1e-6)
    assert_within(y, ref, 8 * EPS * np.abs(ref), "rms_norm")


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (1e4, 1.0), (-3e3, 0.5), (0.0, 1e4), (0.0, 1e-3)])
def test_layer_norm_large_and_small_magnitudes(ops, rng, loc, scale):
    """A mean of 1e4 over values that differ by ~1: the float32 mean's rounding must be corrected."""
    x = _randn(rng, 3, 7, 512, loc=loc, scale=scale)
    w, bias = _randn(rng, 512, loc=1.0, scale=0.2), _randn(rng, 512, scale=0.1)
    y = f32_result(ops.layer_norm(x, w, bias, 1e-5), x.shape)
    ref = oracle.layer_norm(x, w, bias, 1e-5)
    assert_within(y, ref, 8 * EPS * (np.abs(ref) + np.abs(w) + np.abs(bias)), "layer_norm")


def test_layer_norm_without_bias(ops, rng):
    x, w = _randn(rng, 2, 3, 256, loc=2.0), _randn(rng, 256, loc=1.0, scale=0.2)
    ref = oracle.layer_norm(x, w, None, 1e-5)
    assert_within(ops.layer_norm(x, w, None, 1e-5), ref, 8 * EPS * (np.abs(ref) + np.abs(w)), "layer_norm")


def test_norms_large_magnitude(ops, rng):
    x = _randn(rng, 4, 256, scale=1e15)                 # x^2 ~ 1e30: still inside float32
    w = np.ones(256, F32)
    ref = oracle.rms_norm(x, w, 1e-6)
    assert_within(ops.rms_norm(x, w, 1e-6), ref, 8 * EPS * np.abs(ref), "rms_norm at 1e15")


# --- activations -------------------------------------------------------------------------------------

def _activation_grid(rng):
    return np.concatenate([np.linspace(-30, 30, 60001), 3 * rng.standard_normal(20000),
                           np.linspace(-1e-3, 1e-3, 2001)]).astype(F32)


def test_silu(ops, rng):
    x = _activation_grid(rng)
    y = f32_result(ops.silu(x), x.shape)
    ref = oracle.silu(x)
    bound = 3 * EPS * (1 + np.abs(x.astype(np.float64))) * np.abs(ref)
    # below x = -88.7 exp(-x) overflows float32 and the result (< 2e-37 in magnitude) flushes to -0.0
    assert_within(y, ref, np.maximum(bound, 2e-37), "silu")


def test_gelu_exact(ops, rng):
    x = _activation_grid(rng)
    y = f32_result(ops.gelu(x, "none"), x.shape)
    ref = oracle.gelu(x, "none")
    x64 = x.astype(np.float64)
    # relative accuracy all the way into the tail: gelu(-6) = -6e-9, gelu(-12) = -2.1e-32
    assert_within(y, ref, np.maximum(4 * EPS * (1 + x64 ** 2) * np.abs(ref), 1e-37), "gelu exact")
    assert y[np.argmin(np.abs(x64 + 6))] < 0


def test_gelu_tanh(ops, rng):
    x = _activation_grid(rng)
    y = f32_result(ops.gelu(x, "tanh"), x.shape)
    x64 = x.astype(np.float64)
    # The oracle's 0.5 x (1 + tanh(u)) loses relative accuracy once 1 + tanh(u) < 1e-12 (x < -6), so
    # the reference here is the same function written as x * sigmoid(2u), exact in float64 too.
    u2 = 2 * np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)
    with np.errstate(over="ignore"):
        ref = x64 / (1 + np.exp(-u2))
    mid = x64 > -3            # where the oracle's 1 + tanh(u) > 1e-6 still has 1e-10 relative accuracy
    np.testing.assert_allclose(ref[mid], oracle.gelu(x, "tanh")[mid], rtol=1e-9, atol=1e-300)
    bound = 4 * EPS * (1 + np.abs(u2) * np.log2(np.e)) * np.abs(ref)
    assert_within(y, ref, np.maximum(bound, 2e-37), "gelu tanh")


@pytest.mark.parametrize("name", ["silu", "gelu_none", "gelu_tanh"])
def test_activations_do_not_warn_at_huge_inputs(ops, name):
    big = np.array([-3.4e38, -1e30, -1e4, -200.0, -89.0, -0.0, 0.0, 89.0, 200.0, 1e4, 1e30, 3.4e38], F32)
    f = {"silu": ops.silu, "gelu_none": lambda x: ops.gelu(x, "none"),
         "gelu_tanh": lambda x: ops.gelu(x, "tanh")}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = f(big)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y[big >= 89], big[big >= 89])            # x * 1
    np.testing.assert_array_equal(y[big <= -200], 0.0)                      # x * 0


def test_float16_inputs_are_computed_in_float32(ops, rng):
    x16 = _randn(rng, 2, 3, 256, dtype=np.float16)
    w16 = _randn(rng, 128, 256, scale=0.06, dtype=np.float16)
    y = f32_result(ops.linear_3d(x16, w16), (2, 3, 128))
    assert_within(y, oracle.linear_3d(x16, w16), dot_bound(x16, w16), "linear_3d float16")
    g = f32_result(ops.gelu(x16, "none"), x16.shape)
    ref = oracle.gelu(x16)
    assert_within(g, ref, np.maximum(4 * EPS * (1 + x16.astype(float) ** 2) * np.abs(ref), 1e-37), "gelu f16")
    r = f32_result(ops.rms_norm(x16, np.ones(256, np.float16), 1e-6), x16.shape)
    ref = oracle.rms_norm(x16, np.ones(256), 1e-6)
    assert_within(r, ref, 8 * EPS * np.abs(ref), "rms_norm float16")
    s = f32_result(ops.add(x16, x16), x16.shape)
    np.testing.assert_array_equal(s, x16.astype(F32) * 2)


def test_add_mul_broadcast(ops, rng):
    a, b = _randn(rng, 2, 5, 256), _randn(rng, 256)
    for op in ("add", "mul"):
        y = f32_result(getattr(ops, op)(a, b), (2, 5, 256))
        ref = getattr(oracle, op)(a, b)
        assert_within(y, ref, U * np.abs(ref), op)


# --- rope --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("positions", [np.arange(9), np.array([0, 3, 4, 100, 2047, 7, 99999, 5, 1]),
                                       np.array([0, 0, 1, 1, 2, 50000, 3, 3, 8])])
def test_rope_positions(ops, rng, positions):
    x = _randn(rng, 2, 8, 9, 64)
    y = f32_result(ops.apply_rope_positions(x, positions, 10000.0), x.shape)
    assert_within(y, oracle.apply_rope_positions(x, positions, 10000.0), rope_bound(x, 64), "rope")


def test_rope_single_position_and_list_positions(ops, rng):
    x = _randn(rng, 1, 8, 1, 64)
    ref = oracle.apply_rope_positions(x, [511], 500000.0)
    assert_within(ops.apply_rope_positions(x, np.array([511]), 500000.0), ref, rope_bound(x, 64), "rope S=1")


@pytest.mark.parametrize("rotary_dim", [32, 2, 64])
def test_rope_partial(ops, rng, rotary_dim):
    """Phi: RoPE over the first rotary_dim channels (inv_freq uses rotary_dim), the rest copied."""
    x = _randn(rng, 2, 4, 6, 64)
    pos = np.array([5, 6, 7, 20, 21, 1000])
    y = f32_result(ops.apply_rope_partial(x, pos, 10000.0, rotary_dim), x.shape)
    assert_within(y, oracle.apply_rope_partial(x, pos, 10000.0, rotary_dim), rope_bound(x, rotary_dim), "rope partial")
    np.testing.assert_array_equal(y[..., rotary_dim:], x[..., rotary_dim:])
    if rotary_dim == 64:
        np.testing.assert_array_equal(y, ops.apply_rope_positions(x, pos, 10000.0))


def test_rope_non_contiguous_input(ops, rng):
    x = _randn(rng, 1, 5, 8, 64).transpose(0, 2, 1, 3)   # (1, 8, 5, 64) view, as after a reshape/transpose
    pos = np.arange(3, 8)
    assert_within(ops.apply_rope_positions(x, pos, 10000.0), oracle.apply_rope_positions(x, pos, 10000.0),
                  rope_bound(x, 64), "rope on a view")


# --- attention ---------------------------------------------------------------------------------------

ATTENTION_CASES = {
    # name: (B, H, KV, Sq, Sk, causal)
    "gqa prefill": (2, 8, 2, 16, 16, True),
    "gqa kv-cache offset": (1, 8, 2, 5, 37, True),
    "gqa decode S=1": (2, 8, 2, 1, 64, True),
    "mqa": (1, 8, 1, 6, 20, True),
    "mha": (1, 8, 8, 7, 7, True),
    "non-causal Sq > Sk": (1, 4, 2, 9, 5, False),
    # long enough that the BLAS kernels multiply in several pieces of keys (see _fused)
    "long decode": (1, 8, 2, 1, 1100, True),
    "long prefill": (1, 8, 2, 40, 300, True),
    "long non-causal": (1, 4, 1, 9, 700, False),
}


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=list(ATTENTION_CASES))
def test_gqa_attention(ops, rng, case):
    b, h, kv, sq, sk, causal = ATTENTION_CASES[case]
    q, k, v = _randn(rng, b, h, sq, 64), _randn(rng, b, kv, sk, 64), _randn(rng, b, kv, sk, 64)
    y = f32_result(ops.gqa_attention(q, k, v, kv, causal), (b, h, sq, 64))
    ref = oracle.gqa_attention(q, k, v, kv, causal)
    assert_within(y, ref, attention_bound(q, k, v, kv), f"attention ({case})")


def test_attention_large_logits(ops, rng):
    """Logits of +-300: the softmax must subtract the row maximum (exp(300) overflows float32)."""
    q, k, v = _randn(rng, 1, 8, 4, 64, scale=6.0), _randn(rng, 1, 2, 12, 64, scale=6.0), _randn(rng, 1, 2, 12, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ops.gqa_attention(q, k, v, 2, True)
    ref = oracle.gqa_attention(q, k, v, 2, True)
    assert np.abs(oracle.gqa_attention(q, k, v, 2, False)).max() > 0                 # sanity
    assert (np.abs(q.astype(float)) @ np.abs(k[0, 0].astype(float)).T).max() / 8 > 100  # logits really large
    assert_within(y, ref, attention_bound(q, k, v, 2), "attention, large logits")


def test_attention_non_contiguous_q(ops, rng):
    q = _randn(rng, 1, 3, 8, 64).transpose(0, 2, 1, 3)   # (1, 8, 3, 64) view
    k, v = _randn(rng, 1, 2, 10, 64), _randn(rng, 1, 2, 10, 64)
    assert_within(ops.gqa_attention(q, k, v, 2, True), oracle.gqa_attention(q, k, v, 2, True),
                  attention_bound(q, k, v, 2), "attention, q a view")


# --- empty inputs ------------------------------------------------------------------------------------

def test_empty_inputs_give_empty_results_of_the_right_shape(ops):
    e = lambda *s: np.zeros(s, F32)  # noqa: E731
    cases = [
        (ops.linear_3d(e(0, 3, 8), e(5, 8)), (0, 3, 5)),
        (ops.linear_3d(e(2, 0, 8), e(5, 8)), (2, 0, 5)),
        (ops.linear_3d_bias(e(2, 0, 8), e(5, 8), e(5)), (2, 0, 5)),
        (ops.rms_norm(e(2, 0, 8), e(8), 1e-6), (2, 0, 8)),
        (ops.layer_norm(e(0, 4, 8), e(8), e(8), 1e-5), (0, 4, 8)),
        (ops.silu(e(0, 7)), (0, 7)),
        (ops.gelu(e(3, 0), "none"), (3, 0)),
        (ops.gelu(e(3, 0), "tanh"), (3, 0)),
        (ops.add(e(0, 4), e(4)), (0, 4)),
        (ops.mul(e(0, 4), e(4)), (0, 4)),
        (ops.apply_rope_positions(e(1, 2, 0, 8), np.arange(0), 10000.0), (1, 2, 0, 8)),
        (ops.apply_rope_partial(e(0, 2, 3, 8), np.arange(3), 10000.0, 4), (0, 2, 3, 8)),
        (ops.gqa_attention(e(1, 4, 0, 8), e(1, 2, 5, 8), e(1, 2, 5, 8), 2, True), (1, 4, 0, 8)),
        (ops.gqa_attention(e(0, 4, 3, 8), e(0, 2, 5, 8), e(0, 2, 5, 8), 2, True), (0, 4, 3, 8)),
        (ops.all_logits_from_hidden(e(2, 0, 8), e(11, 8)), (2, 0, 11)),
        (ops.logits_from_hidden(e(0, 3, 8), e(11, 8)), (0, 11)),
    ]
    for i, (y, shape) in enumerate(cases):
        assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == shape, (i, y.shape, shape)


@pytest.mark.parametrize("name", ["silu", "gelu_none", "gelu_tanh"])
def test_activations_match_the_formula_at_infinities_without_warnings(ops, name):
    # +inf -> +inf (the limit); -inf -> NaN, as the formula evaluated literally (-inf * 0) and the
    # float64 oracle give; NaN stays NaN.  Two huge finite values check that no internal sum overflows.
    x = np.array([np.inf, -np.inf, np.nan, 3.0e38, 3.0e38, 1.0, -1.0], F32)
    f = {"silu": (ops.silu, oracle.silu), "gelu_none": (lambda a: ops.gelu(a, "none"), oracle.gelu),
         "gelu_tanh": (lambda a: ops.gelu(a, "tanh"), lambda a: oracle.gelu(a, "tanh"))}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = np.asarray(f[0](x))
    with np.errstate(all="ignore"):
        ref = f[1](x.astype(np.float64))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert y[0] == np.inf and y[3] == y[4] == np.float32(3.0e38)
    np.testing.assert_allclose(y[5:], ref[5:], rtol=1e-6)


# --- hardening: 0-d inputs, B = S = 0 logits, negative strides, eps placement -----------------------

@pytest.mark.parametrize("name", ["silu", "gelu_none", "gelu_tanh", "add", "mul"])
@pytest.mark.parametrize("value", [1.5, -3.0, 0.0, -100.0])
def test_elementwise_ops_on_0d_arrays(ops, name, value):
    """Validation accepts 0-d arrays for the elementwise ops: the result is a 0-d float32 ndarray."""
    x = np.array(value, F32)
    f, ref = {"silu": (ops.silu, oracle.silu), "gelu_none": (lambda a: ops.gelu(a, "none"), oracle.gelu),
              "gelu_tanh": (lambda a: ops.gelu(a, "tanh"), lambda a: oracle.gelu(a, "tanh")),
              "add": (lambda a: ops.add(a, a), lambda a: oracle.add(a, a)),
              "mul": (lambda a: ops.mul(a, np.array(2.5, F32)), lambda a: oracle.mul(a, 2.5))}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = f(x)
    f32_result(y, ())
    want = ref(x[None])[0] if name not in ("add", "mul") else ref(x)
    np.testing.assert_allclose(y, want, rtol=4e-6 * (1 + abs(value)), atol=1e-37)


def test_logits_of_an_empty_batch_with_no_positions(ops):
    """B = 0 and S = 0 (validation allows it: there is no row that lacks a last position)."""
    f32_result(ops.logits_from_hidden(np.zeros((0, 0, 8), F32), np.ones((11, 8), F32)), (0, 11))
    f32_result(ops.all_logits_from_hidden(np.zeros((0, 0, 8), F32), np.ones((11, 8), F32)), (0, 0, 11))


def _flips(rng, *shape, **kw):
    """The same kind of data as a C-contiguous array would carry, as three negative-stride views."""
    base = _randn(rng, *shape, **kw)
    return [base[..., ::-1], np.flip(base), base[::-1]]


def test_negative_strides_on_every_op(ops, rng):
    """x[..., ::-1], np.flip(x) and flipped weights: every op gives the oracle's result on the view."""
    for x in _flips(rng, 2, 5, 64):
        w = _randn(rng, 32, 64)[::-1, ::-1]
        bias = _randn(rng, 32)[::-1]
        nw = _randn(rng, 64, loc=1.0, scale=0.2)[::-1]
        nb = _randn(rng, 64, scale=0.1)[::-1]
        assert_within(ops.linear_3d(x, w), oracle.linear_3d(x, w), dot_bound(x, w), "linear_3d flipped")
        assert_within(ops.linear_3d_bias(x, w, bias), oracle.linear_3d_bias(x, w, bias), dot_bound(x, w, bias),
                      "linear_3d_bias flipped")
        ref = oracle.rms_norm(x, nw, 1e-6)
        assert_within(ops.rms_norm(x, nw, 1e-6), ref, 8 * EPS * np.abs(ref), "rms_norm flipped")
        ref = oracle.layer_norm(x, nw, nb, 1e-5)
        assert_within(ops.layer_norm(x, nw, nb, 1e-5), ref, 8 * EPS * (np.abs(ref) + np.abs(nw) + np.abs(nb)),
                      "layer_norm flipped")
        x64 = x.astype(np.float64)
        ref = oracle.silu(x)
        assert_within(ops.silu(x), ref, 3 * EPS * (1 + np.abs(x64)) * np.abs(ref) + 1e-37, "silu flipped")
        ref = oracle.gelu(x)
        assert_within(ops.gelu(x, "none"), ref, 4 * EPS * (1 + x64 ** 2) * np.abs(ref) + 1e-37, "gelu flipped")
        ref = oracle.gelu(x, "tanh")
        u2 = 2 * np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)          # as in test_gelu_tanh
        assert_within(ops.gelu(x, "tanh"), ref, 4 * EPS * (1 + np.abs(u2) * np.log2(np.e)) * np.abs(ref) + 1e-37,
                      "gelu tanh flipped")
        for op in ("add", "mul"):
            for other in (x[::-1], nw, x[:, ::-1]):
                ref = getattr(oracle, op)(x, other)
                assert_within(getattr(ops, op)(x, other), ref, U * np.abs(ref), f"{op} flipped")
        head = _randn(rng, 40, 64, scale=0.1)[::-1]
        assert_within(ops.logits_from_hidden(x, head), oracle.logits_from_hidden(x, head),
                      dot_bound(x[:, -1], head), "logits flipped")
        assert_within(ops.all_logits_from_hidden(x, head), oracle.all_logits_from_hidden(x, head),
                      dot_bound(x, head), "all_logits flipped")
    for x in _flips(rng, 2, 4, 6, 64):
        pos = np.arange(10, 16)[::-1]
        assert_within(ops.apply_rope_positions(x, pos, 10000.0), oracle.apply_rope_positions(x, pos, 10000.0),
                      rope_bound(x, 64), "rope flipped")
        assert_within(ops.apply_rope_partial(x, pos, 10000.0, 16), oracle.apply_rope_partial(x, pos, 10000.0, 16),
                      rope_bound(x, 16), "rope partial flipped")
        k, v = _randn(rng, 2, 2, 9, 64)[:, ::-1, ::-1], np.flip(_randn(rng, 2, 2, 9, 64))
        assert_within(ops.gqa_attention(x, k, v, 2, True), oracle.gqa_attention(x, k, v, 2, True),
                      attention_bound(x, k, v, 2), "attention flipped")


@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-2])
def test_rms_norm_eps_inside_the_square_root(ops, rng, eps):
    """Rows whose mean(x^2) is comparable to eps (and an all-zero row): eps moved outside the square
    root, or dropped, changes these outputs by far more than the 8 EPS bound (zero rows would be NaN)."""
    ms = np.array([1e-3, 1.0, 1e3])[:, None] * eps                      # mean(x^2) / eps = 1e-3, 1, 1e3
    x = (rng.standard_normal((3, 256)) * np.sqrt(ms)).astype(F32)
    x = np.concatenate([x, np.zeros((1, 256), F32)])
    w = _randn(rng, 256, loc=1.0, scale=0.2)
    y = f32_result(ops.rms_norm(x, w, eps), x.shape)
    ref = oracle.rms_norm(x, w, eps)
    assert_within(y, ref, 8 * EPS * np.abs(ref), f"rms_norm eps={eps}")
    np.testing.assert_array_equal(y[3], 0.0)
    x64 = x.astype(np.float64)
    rms = np.sqrt(np.mean(x64 ** 2, axis=-1, keepdims=True))
    # the data tell the formula apart from eps outside the root and from no eps (rows 0-2)
    bound = (8 * EPS * np.abs(ref[:3])).max()
    for wrong in (x64[:3] / (rms[:3] + eps) * w, x64[:3] / rms[:3] * w):
        assert np.abs(wrong - ref[:3]).max() > 100 * bound


@pytest.mark.parametrize("eps", [1e-5, 1e-3])
def test_layer_norm_eps_inside_the_square_root(ops, rng, eps):
    """Rows of tiny variance around a large mean (var / eps = 1e-3 .. 1e3) and a constant row: eps
    outside the square root or dropped would fail the bound (the constant row would be NaN)."""
    var = np.array([1e-3, 1.0, 1e3])[:, None] * eps
    x = (5.0 + rng.standard_normal((3, 512)) * np.sqrt(var)).astype(F32)
    x = np.concatenate([x, np.full((1, 512), 7.0, F32)])
    w, bias = _randn(rng, 512, loc=1.0, scale=0.2), _randn(rng, 512, scale=0.1)
    y = f32_result(ops.layer_norm(x, w, bias, eps), x.shape)
    ref = oracle.layer_norm(x, w, bias, eps)
    assert_within(y, ref, 8 * EPS * (np.abs(ref) + np.abs(w) + np.abs(bias)), f"layer_norm eps={eps}")
    np.testing.assert_array_equal(y[3], bias)                            # (x - mean) = 0 exactly
    x64 = x.astype(np.float64)[:3]
    c = x64 - x64.mean(-1, keepdims=True)
    sd = np.sqrt(np.mean(c ** 2, -1, keepdims=True))
    bound = (8 * EPS * (np.abs(ref[:3]) + np.abs(w) + np.abs(bias))).max()
    for wrong in (c / (sd + eps) * w + bias, c / sd * w + bias):
        assert np.abs(wrong - ref[:3]).max() > 100 * bound
