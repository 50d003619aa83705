"""Every op of the MLX backend against the float64 oracle and the CPU reference, on real MLX.

The backend is strict, so each result below was computed by the MLX kernel (a failure or a decline
would raise, not fall back).  Tolerances, and why:

- matmuls (linear, logits): float32 accumulation of K products: |error| <= K * 2**-24 * sum|x_k w_k|;
  the bound used is twice that (``dot_tol``).
- elementwise add / mul: one correctly rounded float32 operation, identical to NumPy's: exact.
- silu, gelu, norms, attention: a few float32 roundings of O(1) values: 5e-6 absolute (measured
  1e-7 .. 7e-7 with MLX 0.32).
- RoPE: 1e-6 + |p| * 2**-22 * max|x| for position p, the bound of float32 angles as Hugging Face computes
  them (the float32 rounding of p * inv_freq is |p| * 2**-24, with a 4x margin).  The plugin does better
  (its cos/sin tables are float64 values rounded once, on the host; test_mlx_v2.py checks that tighter
  bound), so this one only has to hold for any correct kernel.
- float16 input: the result equals the float32 computation on the float16 values, so the oracle is fed
  the float16 values and the tolerances are the float32 ones.

These were measured on MLX's CPU device.  On a GPU (Metal, CUDA) the kernels use fast exp / sigmoid /
rsqrt and fused reductions, and MLX's own GPU tests allow much wider float32 bounds: there
:func:`device_atol` raises each tolerance to the contract's, the conformance kit's
``max_err * max(1, max|oracle|)`` (``sapient_core.testing.tolerances``), where that is larger.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_helpers import ON_CPU_DEVICE, dot_tol
from sapient_core.testing import oracle


def rope_tol(x, positions):
    p = float(np.abs(np.asarray(positions)).max(initial=0))
    return 1e-6 + p * 2.0 ** -22 * float(np.abs(x).max(initial=0))


def device_atol(op, atol, want):
    """``atol`` on MLX's CPU device; on a GPU, at least the kit's tolerance for ``op``."""
    if ON_CPU_DEVICE:
        return atol
    from sapient_core.testing.tolerances import TOLERANCES
    return max(atol, TOLERANCES[op].max_err * max(1.0, float(np.nanmax(np.abs(want), initial=0))))


def run(backend, op, *args):
    """Call ``op`` and return the result as NumPy, checking the array type and dtype on the way."""
    y = getattr(backend, op)(*args)
    if op in ("logits_from_hidden", "all_logits_from_hidden"):
        assert isinstance(y, np.ndarray), f"{op} must return NumPy, got {type(y)}"
    else:
        assert isinstance(y, mx.array), f"{op} must return mx.array, got {type(y)}"
    out = backend.to_numpy(y)
    assert out.dtype == np.float32, f"{op} returned {out.dtype}"
    return out


def check(mlx, cpu, op, args, *, atol, why):
    got = run(mlx, op, *args)
    want = getattr(oracle, op)(*args)
    ref = getattr(cpu, op)(*args)
    atol = device_atol(op, atol, want)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=f"{op} vs the float64 oracle ({why})")
    np.testing.assert_allclose(got, cpu.to_numpy(ref), rtol=0, atol=2 * atol,
                               err_msg=f"{op} vs the CPU reference ({why})")
    return got


def f32(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


# --- every op is implemented by MLX ------------------------------------------------------------------

def test_every_op_is_implemented_by_the_plugin(mlx):
    from sapient_core.hookspecs import OPS
    assert set(mlx.implemented_ops) == set(OPS)
    assert mlx.device == ("metal" if mx.metal.is_available() else
                          "cuda" if mx.cuda.is_available() else "cpu")
    assert mlx.thread_safe is False


# --- linear ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("b,s,n_in,n_out", [(2, 5, 32, 48), (1, 1, 64, 16), (3, 2, 1, 4)])
def test_linear_3d(mlx, cpu, rng, b, s, n_in, n_out):
    x, w = f32(rng, b, s, n_in), f32(rng, n_out, n_in)
    check(mlx, cpu, "linear_3d", (x, w), atol=dot_tol(x, w), why="float32 dot products")


def test_linear_3d_bias_with_and_without_bias(mlx, cpu, rng):
    x, w, bias = f32(rng, 2, 3, 24), f32(rng, 10, 24), f32(rng, 10)
    check(mlx, cpu, "linear_3d_bias", (x, w, bias), atol=dot_tol(x, w) + 1e-6, why="dot + one add")
    got = run(mlx, "linear_3d_bias", x, w, None)
    np.testing.assert_allclose(got, oracle.linear_3d(x, w), rtol=0, atol=dot_tol(x, w))


def test_linear_on_non_contiguous_and_device_inputs(mlx, rng):
    base = f32(rng, 3, 24, 2)
    x = base.transpose(2, 0, 1)                     # (2, 3, 24), not C-contiguous
    w = f32(rng, 24, 16).T                          # (16, 24), a transposed view
    got = run(mlx, "linear_3d", x, w)
    np.testing.assert_allclose(got, oracle.linear_3d(x, w), rtol=0, atol=dot_tol(x, w))
    got2 = run(mlx, "linear_3d", mx.array(np.ascontiguousarray(x)), mx.array(np.ascontiguousarray(w)))
    np.testing.assert_allclose(got2, got, rtol=0, atol=dot_tol(x, w))


def test_linear_float16_and_bfloat16_inputs_compute_in_float32(mlx, rng):
    x16, w16 = f32(rng, 2, 3, 32).astype(np.float16), f32(rng, 8, 32).astype(np.float16)
    got = run(mlx, "linear_3d", x16, w16)
    np.testing.assert_allclose(got, oracle.linear_3d(x16, w16), rtol=0, atol=dot_tol(x16, w16))
    xb = mx.array(x16).astype(mx.bfloat16)
    got_b = run(mlx, "linear_3d", xb, w16)
    xb_values = np.array(xb.astype(mx.float32))
    np.testing.assert_allclose(got_b, oracle.linear_3d(xb_values, w16), rtol=0, atol=dot_tol(xb_values, w16))


# --- norms -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 64), (5, 7), (33,)])
def test_rms_norm(mlx, cpu, rng, shape):
    x, w = f32(rng, *shape), f32(rng, shape[-1])
    check(mlx, cpu, "rms_norm", (x, w, 1e-6), atol=5e-6, why="a few float32 roundings")


@pytest.mark.parametrize("scale", [1e-15, 1e15])
def test_rms_norm_at_large_and_small_magnitudes(mlx, cpu, rng, scale):
    x, w = f32(rng, 2, 4, 64, scale=scale), f32(rng, 64)
    check(mlx, cpu, "rms_norm", (x, w, 0.0), atol=5e-6, why="scale-invariant; squares stay in range")


@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(mlx, cpu, rng, with_bias):
    x, w, b = f32(rng, 2, 3, 48), f32(rng, 48), (f32(rng, 48) if with_bias else None)
    check(mlx, cpu, "layer_norm", (x, w, b, 1e-5), atol=5e-6, why="a few float32 roundings")


def test_layer_norm_with_a_large_mean_keeps_the_variance(mlx, cpu, rng):
    # mx.fast.layer_norm alone is off by 1e-3 here (the kernel loses the variance to the mean);
    # the plugin centres first.
    x = (1e4 + rng.standard_normal((3, 256))).astype(np.float32)
    w, b = f32(rng, 256), f32(rng, 256)
    check(mlx, cpu, "layer_norm", (x, w, b, 1e-5), atol=2e-5,
          why="x - mean(x) carries the float32 rounding of 1e4 (4e-4 ulp), divided by std 1")


# --- activations -------------------------------------------------------------------------------------

def test_silu_and_gelu_on_a_wide_range_without_warnings(mlx, cpu):
    x = np.concatenate([np.linspace(-30, 30, 601), [-1e4, -100.0, 100.0, 1e4, 0.0]]).astype(np.float32)
    x = x.reshape(2, 3, -1)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        check(mlx, cpu, "silu", (x,), atol=5e-6, why="float32 exp and division")
        check(mlx, cpu, "gelu", (x, "none"), atol=5e-6, why="erfc fit (1.2e-7) + float32 roundings")
        check(mlx, cpu, "gelu", (x, "tanh"), atol=5e-6, why="float32 sigmoid of a cubic")


def test_gelu_exact_keeps_the_negative_tail(mlx):
    # 0.5 x (1 + erf(x / sqrt 2)) cancels to 0 below x = -5.5 in float32; the plugin's erfc does not.
    x = np.array([-6.0, -8.0, -10.0], np.float32)
    got = run(mlx, "gelu", x, "none")
    want = oracle.gelu(x)
    assert np.all(got < 0)
    np.testing.assert_allclose(got, want, rtol=5e-5, atol=0, err_msg="relative error of the erfc fit in float32")


def test_silu_float16_input(mlx, rng):
    x = f32(rng, 4, 8, scale=3).astype(np.float16)
    got = run(mlx, "silu", x)
    np.testing.assert_allclose(got, oracle.silu(x), rtol=0, atol=5e-6)


# --- elementwise -------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["add", "mul"])
def test_add_mul_broadcast_exactly_like_numpy(mlx, cpu, rng, op):
    a, b = f32(rng, 2, 3, 8), f32(rng, 3, 1)
    got = run(mlx, op, a, b)
    np.testing.assert_array_equal(got, cpu.to_numpy(getattr(cpu, op)(a, b)))   # one rounding: exact
    got2 = run(mlx, op, b, mx.array(a))
    np.testing.assert_array_equal(got2, getattr(np, {"add": "add", "mul": "multiply"}[op])(b, a))


# --- rope --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("positions", [np.arange(7), np.arange(1000, 1007), np.array([5]),
                                       np.array([3, 0, 9, 9, 100, 2, 1]), np.arange(-3, 4)])
def test_apply_rope_positions(mlx, cpu, rng, positions):
    x = f32(rng, 2, 3, len(positions), 16)
    check(mlx, cpu, "apply_rope_positions", (x, positions, 10000.0), atol=rope_tol(x, positions),
          why="the float32-angle bound")


@pytest.mark.parametrize("rotary_dim,positions", [(8, np.arange(4, 9)), (2, np.arange(5)),
                                                  (16, np.arange(5)), (6, np.array([7, 1, 30, 2, 2]))])
def test_apply_rope_partial(mlx, cpu, rng, rotary_dim, positions):
    x = f32(rng, 1, 2, len(positions), 16)
    got = check(mlx, cpu, "apply_rope_partial", (x, positions, 500.0, rotary_dim),
                atol=rope_tol(x, positions), why="the float32-angle bound")
    np.testing.assert_array_equal(got[..., rotary_dim:], x[..., rotary_dim:])   # copied, untouched


def test_rope_positions_given_as_an_mx_array(mlx, rng):
    x = f32(rng, 1, 2, 4, 8)
    positions = np.array([9, 2, 4, 4])
    got = run(mlx, "apply_rope_positions", x, mx.array(positions), 10000.0)
    np.testing.assert_allclose(got, oracle.apply_rope_positions(x, positions, 10000.0), rtol=0,
                               atol=rope_tol(x, positions))


def test_rope_rows_follow_their_positions_in_any_order(mlx, rng):
    # Shuffling the rows and their positions together shuffles the result: each row is rotated by its own
    # position, whatever the order the positions come in.
    x = f32(rng, 1, 2, 6, 32)
    order = np.array([3, 0, 5, 1, 4, 2])
    whole = run(mlx, "apply_rope_positions", x, np.arange(20, 26), 10000.0)
    rows = run(mlx, "apply_rope_positions", x[:, :, order], np.arange(20, 26)[order], 10000.0)
    np.testing.assert_allclose(rows, whole[:, :, order], rtol=0, atol=rope_tol(x, [26]))


# --- attention ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,kv,sq,sk,causal", [
    (8, 2, 5, 5, True),     # GQA prefill
    (8, 2, 3, 9, True),     # GQA with a KV-cache offset (Sq < Sk)
    (8, 2, 1, 9, True),     # decode step (S=1)
    (4, 1, 4, 6, True),     # MQA
    (4, 4, 4, 6, True),     # MHA
    (6, 3, 4, 7, False),    # not causal
])
def test_gqa_attention(mlx, cpu, rng, h, kv, sq, sk, causal):
    q, k, v = f32(rng, 2, h, sq, 16), f32(rng, 2, kv, sk, 16), f32(rng, 2, kv, sk, 16)
    check(mlx, cpu, "gqa_attention", (q, k, v, kv, causal), atol=5e-6, why="float32 softmax and sums")


def test_gqa_attention_head_order_is_repeat_kv(mlx, rng):
    # Make each kv head's values a constant j: query head i must read kv head i // (H / KV).
    q, k = f32(rng, 1, 6, 2, 8), f32(rng, 1, 3, 4, 8)
    v = np.broadcast_to(np.arange(3, dtype=np.float32)[None, :, None, None], (1, 3, 4, 8)).copy()
    got = run(mlx, "gqa_attention", q, k, v, 3, False)
    np.testing.assert_allclose(got[0, :, 0, 0], [0, 0, 1, 1, 2, 2], atol=1e-6)


def test_gqa_attention_with_large_scores(mlx, cpu, rng):
    q, k, v = f32(rng, 1, 4, 5, 32, scale=30), f32(rng, 1, 2, 5, 32, scale=30), f32(rng, 1, 2, 5, 32)
    check(mlx, cpu, "gqa_attention", (q, k, v, 2, True), atol=5e-5,
          why="scores of order 1e3: the softmax is nearly one-hot, rounding of the scores is ~1e-4 relative")


# --- logits ------------------------------------------------------------------------------------------

def test_logits(mlx, cpu, rng):
    hidden, lm_head = f32(rng, 2, 4, 32), f32(rng, 50, 32)
    check(mlx, cpu, "logits_from_hidden", (hidden, lm_head), atol=dot_tol(hidden, lm_head), why="float32 dots")
    check(mlx, cpu, "all_logits_from_hidden", (hidden, lm_head), atol=dot_tol(hidden, lm_head),
          why="float32 dots")
    got = run(mlx, "logits_from_hidden", mx.array(hidden), lm_head)
    np.testing.assert_allclose(got, oracle.logits_from_hidden(hidden, lm_head), rtol=0,
                               atol=dot_tol(hidden, lm_head))


# --- zero-length inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("b,s", [(0, 3), (2, 0)])
def test_zero_length_batch_or_sequence(mlx, rng, b, s):
    d, h, kv = 8, 4, 2
    x = np.zeros((b, s, d), np.float32)
    w = f32(rng, 6, d)
    assert run(mlx, "linear_3d", x, w).shape == (b, s, 6)
    assert run(mlx, "linear_3d_bias", x, w, f32(rng, 6)).shape == (b, s, 6)
    assert run(mlx, "rms_norm", x, f32(rng, d), 1e-6).shape == (b, s, d)
    assert run(mlx, "layer_norm", x, f32(rng, d), None, 1e-6).shape == (b, s, d)
    assert run(mlx, "silu", x).shape == (b, s, d)
    assert run(mlx, "gelu", x, "tanh").shape == (b, s, d)
    assert run(mlx, "add", x, f32(rng, d)).shape == (b, s, d)
    assert run(mlx, "mul", x, f32(rng, d)).shape == (b, s, d)
    q = np.zeros((b, h, s, d), np.float32)
    assert run(mlx, "apply_rope_positions", q, np.arange(s), 10000.0).shape == q.shape
    assert run(mlx, "apply_rope_partial", q, np.arange(s), 10000.0, 4).shape == q.shape
    kk = np.zeros((b, kv, s, d), np.float32)
    assert run(mlx, "gqa_attention", q, kk, kk, kv, True).shape == q.shape
    assert run(mlx, "all_logits_from_hidden", x, f32(rng, 11, d)).shape == (b, s, 11)
    if s > 0:
        assert run(mlx, "logits_from_hidden", x, f32(rng, 11, d)).shape == (b, 11)


def test_zero_input_features(mlx):
    got = run(mlx, "linear_3d", np.zeros((2, 3, 0), np.float32), np.zeros((5, 0), np.float32))
    np.testing.assert_array_equal(got, np.zeros((2, 3, 5), np.float32))


# --- a chain of ops stays on the device --------------------------------------------------------------

def test_a_chain_of_ops_makes_no_host_copy(mlx, rng):
    from sapient_backend_mlx.cache import TRANSFERS
    x, w1, w2, g = f32(rng, 1, 4, 16), f32(rng, 32, 16), f32(rng, 16, 32), f32(rng, 16)
    mlx.linear_3d(x, w1)                                  # warm the weight cache
    before = TRANSFERS.stats()
    h = mlx.rms_norm(x, g, 1e-6)
    h = mlx.silu(mlx.linear_3d(h, w1))
    h = mlx.add(mlx.linear_3d(h, w2), h[..., :16])
    after = TRANSFERS.stats()
    assert isinstance(h, mx.array)
    assert after["device_to_host"] == before["device_to_host"]          # nothing came back
    assert after["activation_uploads"] == before["activation_uploads"] + 1   # only x went up
    want = oracle.add(oracle.linear_3d(oracle.silu(oracle.linear_3d(oracle.rms_norm(x, g, 1e-6), w1)), w2),
                      oracle.silu(oracle.linear_3d(oracle.rms_norm(x, g, 1e-6), w1))[..., :16])
    np.testing.assert_allclose(mlx.to_numpy(h), want, rtol=0, atol=1e-4)


# --- input errors are the core's, identical on every backend -----------------------------------------

def test_bad_input_raises_the_same_error_as_on_cpu(mlx, cpu, rng):
    q, k = f32(rng, 1, 6, 2, 8), f32(rng, 1, 4, 2, 8)
    msgs = []
    for backend in (mlx, cpu):
        with pytest.raises(ValueError, match="not divisible by n_kv_heads=4") as exc:
            backend.gqa_attention(q, k, k, 4, True)
        msgs.append(str(exc.value))
    assert msgs[0] == msgs[1]
    with pytest.raises(TypeError, match="dtype int64"):
        mlx.silu(np.arange(3))
    assert mlx.stats().ops["gqa_attention"].fallbacks == 0


def test_math_constants_match_the_contract():
    from sapient_backend_mlx import kernels
    assert kernels._TWO_SQRT_2_OVER_PI == pytest.approx(2 * math.sqrt(2 / math.pi), rel=1e-15)


# --- the core's conformance kit ----------------------------------------------------------------------

def test_the_conformance_kit_passes_with_every_case_run_by_mlx(registry):
    from sapient_core.testing.conformance import run_conformance
    report = run_conformance("mlx", registry=registry)
    not_passed = [(r.op, r.case, r.status, r.reason) for r in report.results if r.status != "pass"]
    assert not not_passed, report.table()          # no failure, no decline, no op left to the CPU
    assert len(report.results) > 100


def test_nan_and_inf_follow_the_oracle(mlx):
    x = np.array([[np.nan, np.inf, -np.inf, 1.0]], np.float32)
    with np.errstate(invalid="ignore"):
        for op, args in [("silu", (x,)), ("gelu", (x, "none")), ("gelu", (x, "tanh"))]:
            got = run(mlx, op, *args)
            want = getattr(oracle, op)(*args)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{op}{args[1:]} NaN")
            finite = ~np.isnan(want)
            np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6 if ON_CPU_DEVICE else 1e-5, atol=0)
