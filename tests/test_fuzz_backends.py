"""Fuzz (hypothesis): the CPU reference and the MLX backend behave the same on every input of every op.

- A valid input gives results that agree (the conformance kit's tolerances against the CPU reference, as
  cross-check mode compares them: NMSE, max abs error, NaN/+Inf/-Inf placement; same shape, float32, the
  backend's array type), computed by MLX itself: zero fallbacks.
- An invalid input raises the same error on both (type and message), before any plugin code runs: zero
  calls and zero fallbacks counted.

Inputs: every op; shapes with 0-size and 1-size (broadcast) dimensions; float32, float16, bfloat16
(ml_dtypes) and mixed dtypes; contiguous, transposed and strided views; NaN and infinities in the data;
RoPE positions as arrays of several integer dtypes, lists and ranges; scalars as Python and NumPy numbers.
Invalid inputs corrupt one argument of a valid call: float64/int/bool/complex dtypes, non-arrays (lists,
tuples, None, strings, numbers, an object with .shape and .dtype, a masked array), wrong ranks and sizes,
bad scalars (NaN, inf, negative, zero, bool, str, None, wrong types).  A corrupted call the CPU reference
accepts (it can happen: a size that still broadcasts) is checked as a valid one.

Some input classes have tests of their own: negative-stride views (every op, run by MLX itself: no
fallback), 0-d arrays for the elementwise ops, logits_from_hidden of an empty batch with no positions, a
NaN or an infinity in a key that the causal mask hides (a CPU reference bug this fuzz found, fixed), and a
causal attention query whose visible scores are all -inf (an MLX bug this fuzz found, fixed).  Attention is otherwise fuzzed with NaN only,
and with non-finite values only where every key is visible (docs/contract.md: a non-finite value of a
hidden key leaves the result undefined).

Default run: a few dozen examples per op and test, derandomized (the same inputs on every run, as CI
needs), no example database.  A big run: ``SAPIENT_FUZZ_EXAMPLES=2000 python -m pytest -p no:cacheprovider
tests/test_fuzz_backends.py``; ``SAPIENT_FUZZ_RANDOM=1`` draws new inputs each run.  The figures (inputs
tried, agreements, errors compared) are printed at the end of the session.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sapient_core import ArgumentError, DTypeError, SapientError, ShapeError
from sapient_core.crosscheck import compare
from sapient_core.hookspecs import OPS
from sapient_core.registry import Registry

EXAMPLES = int(os.environ.get("SAPIENT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("SAPIENT_FUZZ_RANDOM"),
                database=None, suppress_health_check=list(HealthCheck))
#: What the fuzz did, for the session's summary (tests/conftest.py prints it).
FIGURES: Counter = Counter()

F32, F16 = np.float32, np.float16


def _bf16() -> Any:
    import ml_dtypes                     # in the test extra: the kit's bfloat16 cases need it too
    return np.dtype(ml_dtypes.bfloat16)


@pytest.fixture(scope="module")
def backends():
    reg = Registry()
    return reg.get_backend("cpu"), reg.get_backend("mlx", strict=False)


# --- drawing arrays -----------------------------------------------------------------------------------------

class Draw:
    """Draws the pieces of one input: sizes through hypothesis (they shrink), values from a seeded NumPy
    generator (fast), layouts and dtypes through hypothesis."""

    def __init__(self, data: Any, *, negative: bool = False):
        self.data = data
        self.rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
        self.negative = negative

    def __call__(self, strategy: Any, label: str | None = None) -> Any:
        return self.data.draw(strategy, label=label)

    def dim(self, lo: int = 0, hi: int = 4) -> int:
        return self(st.integers(lo, hi))

    def array(self, shape: tuple, *, scale: float = 1.0, specials: tuple = (np.nan, np.inf, -np.inf),
              dtypes: tuple = (F32, F16, "bf16")) -> np.ndarray:
        x = np.asarray(self.rng.standard_normal(shape) * scale).astype(F32)
        if specials and x.size and self(st.integers(0, 4), label="specials?") == 0:
            for _ in range(self(st.integers(1, 3))):
                x.flat[int(self.rng.integers(x.size))] = self(st.sampled_from(specials))
        dtype = self(st.sampled_from(dtypes), label="dtype")
        x = x.astype(_bf16() if dtype == "bf16" else dtype)
        if self.negative:
            return negative_view(x)
        layout = self(st.sampled_from(["contiguous", "transposed", "strided"]), label="layout")
        return view(x, layout)


def view(x: np.ndarray, layout: str) -> np.ndarray:
    """``x``'s values in a view of another layout (positive strides)."""
    if layout == "transposed" and x.ndim >= 2:
        return np.ascontiguousarray(x.swapaxes(0, -1)).swapaxes(0, -1)
    if layout == "strided" and x.ndim >= 1:
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    return x


def negative_view(x: np.ndarray) -> np.ndarray:
    """``x``'s values in a view with a negative stride on its last axis (as ``a[..., ::-1]`` makes)."""
    if x.ndim == 0:
        return x
    out = x[..., ::-1].copy()[..., ::-1]
    assert out.strides[-1] <= 0 and np.array_equal(out, x, equal_nan=True)
    return out


# --- valid calls, per op -----------------------------------------------------------------------------------

def valid_call(draw: Draw, op: str) -> tuple:
    """Positional arguments of a valid call of ``op`` (no 0-d array; see the module docstring)."""
    d, A = draw, draw.array
    if op in ("linear_3d", "linear_3d_bias"):
        B, S, n_in, n_out = d.dim(0, 3), d.dim(0, 4), d.dim(0, 9), d.dim(0, 7)
        x, w = A((B, S, n_in), scale=d(st.sampled_from([1.0, 100.0]))), A((n_out, n_in), scale=1 / math.sqrt(n_in or 1))
        if op == "linear_3d":
            return x, w
        return x, w, (A((n_out,)) if d(st.booleans()) else None)
    if op in ("rms_norm", "layer_norm"):
        shape = tuple(d.dim(0, 4) for _ in range(d.dim(0, 3))) + (d.dim(0, 9),)
        eps = d(st.sampled_from([0.0, 1e-6, 1e-5, 0.1, 1, np.float32(1e-5), np.float64(1e-6)]))
        x, w = A(shape, scale=d(st.sampled_from([1.0, 1e3]))), A(shape[-1:])
        if op == "rms_norm":
            return x, w, eps
        return x, w, (A(shape[-1:]) if d(st.booleans()) else None), eps
    if op in ("silu", "gelu"):
        x = A(tuple(d.dim(0, 5) for _ in range(d.dim(1, 4))), scale=d(st.sampled_from([1.0, 10.0, 1e4])))
        return (x,) if op == "silu" else (x, d(st.sampled_from(["none", "tanh"])))
    if op in ("add", "mul"):
        full = tuple(d.dim(0, 4) for _ in range(d.dim(1, 4)))

        def operand() -> tuple:
            rank = d.dim(1, len(full))                 # 0-d operands: a test of their own, below
            return tuple(1 if d(st.integers(0, 3)) == 0 else n for n in full[len(full) - rank:])
        return A(operand()), A(operand())
    if op in ("apply_rope_positions", "apply_rope_partial", "apply_rope"):
        B, H, S, D = d.dim(0, 2), d.dim(1, 3), d.dim(0, 5), 2 * d.dim(1, 8)
        x = A((B, H, S, D))
        values = [int(p) for p in draw.rng.integers(0, 1100, size=S)]
        form = d(st.sampled_from(["int64", "int32", "uint16", "list", "range", "per-row"]), label="positions")
        if form == "per-row":            # (B, S): each batch row its own positions (left-padded batches)
            positions = draw.rng.integers(0, 1100, size=(B, S)).astype(np.int64)
        else:
            positions = (values if form == "list" else range(values[0] if values else 0, (values[0] if values else 0) + S)
                         if form == "range" else np.asarray(values, dtype=form))
        if op == "apply_rope":
            half = d.dim(1, D // 2)
            inv_freq = (10000.0 ** (-np.arange(half) / half) * draw.rng.uniform(0.5, 1.5, half)).astype(F32)
            return x, positions, inv_freq, d(st.sampled_from([1.0, 0.5, 1.2, 2.0]))
        base = d(st.sampled_from([10000.0, 500000.0, 10000, np.float64(1e4)]))
        if op == "apply_rope_positions":
            return x, positions, base
        return x, positions, base, 2 * d.dim(1, D // 2)
    if op == "gqa_attention":
        B, KV, groups, hd = d.dim(0, 2), d.dim(1, 3), d.dim(1, 3), d.dim(1, 8)
        causal = d(st.sampled_from([True, False, np.bool_(True)]))
        Sk = d.dim(1, 6) if B else d.dim(0, 6)
        Sq = d.dim(0, Sk) if causal else d.dim(0, 6)
        n_kv = d(st.sampled_from([KV, np.int64(KV)]))
        # contract v2: a scale, a softcap, a window (causal only) and a padding mask, each maybe
        scale = d(st.sampled_from([None, None, 0.125, 1.0, np.float32(0.3)]), label="scale")
        softcap = d(st.sampled_from([None, None, 1.0, 50.0]), label="softcap")
        window = d(st.sampled_from([None, None, 1, 2, 5, 100]), label="sliding_window") if causal else None
        kv_mask = draw.rng.random((B, Sk)) > 0.3 if d(st.booleans()) else None
        # Infinities in attention, and NaN in the keys of causal attention: tests of their own, below.  NaN in
        # a value only where every key is visible: a hidden key's value meets a weight of exactly 0, and
        # 0 x NaN is NaN in a matrix product (transformers and fused kernels alike); the contract leaves the
        # result undefined then (docs/contract.md), and a kernel that skips hidden keys (the CPU reference's
        # sliding window) is as right as one that reads them.
        hidden_keys = causal or kv_mask is not None
        return (A((B, KV * groups, Sq, hd), scale=d(st.sampled_from([1.0, 10.0])), specials=(np.nan,)),
                A((B, KV, Sk, hd), specials=() if causal else (np.nan,)),
                A((B, KV, Sk, hd), specials=() if hidden_keys else (np.nan,)),
                n_kv, causal, scale, window, softcap, kv_mask)
    if op in ("logits_from_hidden", "all_logits_from_hidden"):
        B, h, V = d.dim(0, 3), d.dim(0, 8), d.dim(0, 9)
        S = d.dim(1, 4) if op == "logits_from_hidden" else d.dim(0, 4)
        softcap = d(st.sampled_from([None, None, 0.5, 30.0]), label="softcap")
        return A((B, S, h), scale=d(st.sampled_from([1.0, 10.0]))), A((V, h), scale=1 / math.sqrt(h or 1)), softcap
    if op == "embedding":
        B, S, V, D = d.dim(0, 3), d.dim(0, 4), d.dim(1, 9), d.dim(1, 6)
        ids = draw.rng.integers(0, V, size=(B, S)).astype(d(st.sampled_from(["int64", "int32", "uint8"])))
        return ids, A((V, D))
    raise AssertionError(f"no fuzz generator for op {op!r}: add one to valid_call")


# --- invalid calls ------------------------------------------------------------------------------------------

class Shaped:
    """Has .shape and .dtype like an array, but is none: must be refused as a non-array."""

    def __init__(self, a: np.ndarray):
        self.shape, self.dtype = a.shape, a.dtype


BAD_SCALARS = [float("nan"), float("inf"), float("-inf"), -1.0, -1, 0, 0.0, True, False, "1e-6", None, 1j,
               np.float32("nan"), 3.5, 2 ** 70]


def corrupt(draw: Draw, op: str, args: tuple) -> tuple:
    """``args`` with one argument replaced by something most likely invalid."""
    spec = OPS[op]
    i = draw(st.integers(0, len(args) - 1), label="argument")
    arg, value = spec.args[i], args[i]
    d = draw
    if arg.is_array and isinstance(value, np.ndarray):
        how = d(st.sampled_from(["dtype", "non-array", "rank", "size", "masked"]), label="corruption")
        if how == "dtype":
            bad = d(st.sampled_from([np.float64, np.int32, np.int64, np.uint8, np.bool_, np.complex64]))
            if arg.kind in ("positions", "int array") and np.dtype(bad).kind in "iub":
                bad = np.float32
            if arg.kind == "optional mask" and np.dtype(bad).kind == "b":
                bad = np.int8
            with np.errstate(invalid="ignore"):                 # NaN to int: whatever the cast gives
                new = (value.astype(bad) if arg.kind in ("positions", "int array", "optional mask")
                       else np.asarray(value, dtype=np.float32).astype(bad))
        elif how == "non-array":
            new = d(st.sampled_from([value.tolist(), tuple(np.ravel(value).tolist()), None, "x", 1.0, 3,
                                     Shaped(value)]))
            if arg.kind == "positions" and isinstance(new, (list, tuple)) and value.ndim == 1:
                new = [float(v) + 0.5 for v in np.ravel(value)] or "x"      # a list of floats is refused
        elif how == "rank":
            if d(st.booleans()) or value.ndim < 2:
                new = value[None]
            else:                              # the last two axes merged (no -1: sizes may be 0)
                new = value.reshape(value.shape[:-2] + (value.shape[-2] * value.shape[-1],))
        elif how == "size":
            if value.ndim == 0:
                new = value[None]
            else:
                axis = d(st.integers(0, value.ndim - 1))
                shape = list(value.shape)
                shape[axis] += d(st.sampled_from([1, 2])) if shape[axis] else 1
                new = np.zeros(shape, value.dtype)
        else:
            new = np.ma.masked_array(value)
    elif arg.is_array:                          # None (an optional bias), a list or range of positions
        new = d(st.sampled_from(["x", 1.0, [0.5], np.zeros((2, 2), np.int64), np.ones((7, 3), np.float32)]))
    else:
        new = d(st.sampled_from(BAD_SCALARS + {"approximate": ["fast", "NONE", ""], "rotary_dim": [3, 0, 1000, 2.0],
                                               "n_kv_heads": [0, -2, 2.0, 100], "causal": ["yes", 1, None],
                                               "sliding_window": [0, -3, 2.0, True],
                                               "softcap": [0.0, -1.0, float("nan")]}.get(arg.name, [])))
    return args[:i] + (new,) + args[i + 1:]


# --- the checks ---------------------------------------------------------------------------------------------

def check_same_behaviour(backends: tuple, op: str, args: tuple, *, expect_valid: bool, count: bool = True) -> None:
    cpu, mlx = backends
    cpu.reset_stats()
    mlx.reset_stats()
    figures = FIGURES if count else Counter()
    figures["inputs tried"] += 1
    try:
        with np.errstate(all="ignore"):
            want = getattr(cpu, op)(*args)
    except SapientError as exc:
        assert not expect_valid, f"the CPU reference refused a valid input: {exc!r}"
        assert isinstance(exc, (ShapeError, DTypeError, ArgumentError)) and exc.op == op, repr(exc)
        with pytest.raises(type(exc)) as raised:
            with np.errstate(all="ignore"):
                getattr(mlx, op)(*args)
        assert type(raised.value) is type(exc) and str(raised.value) == str(exc)
        st_mlx = mlx.stats().ops[op]
        figures["invalid: same error on both"] += 1
        assert (st_mlx.calls, st_mlx.fallbacks, st_mlx.routed) == (0, 0, 0)
        return
    figures["valid"] += 1
    with np.errstate(all="ignore"):
        got = getattr(mlx, op)(*args)
    st_mlx = mlx.stats().ops[op]
    c, m = np.asarray(cpu.to_numpy(want)), np.asarray(mlx.to_numpy(got))
    assert type(want) is np.ndarray, f"the CPU reference returned {type(want).__name__}, not a NumPy array"
    expected_type = np.ndarray if OPS[op].numpy_result else type(mlx.from_numpy(np.zeros(1, F32)))
    assert type(got) is expected_type, f"MLX returned {type(got).__name__}"
    assert c.shape == m.shape and c.dtype == m.dtype == F32, (c.shape, m.shape, c.dtype, m.dtype)
    disagreements = compare(op, m, c)
    assert disagreements == {}, disagreements
    figures["valid: agreed"] += 1
    assert st_mlx.calls == 1 and st_mlx.fallbacks == 0, st_mlx.fallback_reasons


# --- the tests ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", list(OPS))
@FUZZ
@given(data=st.data())
def test_valid_inputs_agree_and_run_on_mlx_itself(backends, op, data):
    check_same_behaviour(backends, op, valid_call(Draw(data), op), expect_valid=True)


@pytest.mark.parametrize("op", list(OPS))
@FUZZ
@given(data=st.data())
def test_invalid_inputs_raise_the_same_error_on_both_before_any_plugin_code(backends, op, data):
    draw = Draw(data)
    args = corrupt(draw, op, valid_call(draw, op))
    check_same_behaviour(backends, op, args, expect_valid=False)


ARRAY_OPS = [op for op, spec in OPS.items() if any(a.kind in ("array", "optional array") for a in spec.args)]


@pytest.mark.parametrize("op", ARRAY_OPS)
@FUZZ
@given(data=st.data())
def test_negative_stride_views_agree_and_run_on_mlx_itself(backends, op, data):
    FIGURES["negative-stride inputs"] += 1
    check_same_behaviour(backends, op, valid_call(Draw(data, negative=True), op), expect_valid=True, count=False)
    FIGURES["negative-stride: agreed"] += 1


@pytest.mark.parametrize("op", ["silu", "gelu", "add", "mul"])
def test_zero_d_arrays_in_elementwise_ops(backends, op):
    x = np.array(1.5, F32)
    args = {"silu": (x,), "gelu": (x, "tanh"), "add": (x, x), "mul": (x, x)}[op]
    check_same_behaviour(backends, op, args, expect_valid=True, count=False)


@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
def test_a_special_value_in_a_key_the_causal_mask_hides(backends, special):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 3, 4)).astype(F32) for _ in range(3))
    k[0, 0, 2, 1] = special                   # key 2: seen by query 2 only
    check_same_behaviour(backends, "gqa_attention", (q, k, v, 2, True), expect_valid=True, count=False)


@pytest.mark.parametrize("special", [np.inf, -np.inf])
def test_a_query_whose_visible_scores_are_all_minus_infinity(backends, special):
    q, k, v = (np.random.default_rng(seed).standard_normal((1, 1, 2, 4)).astype(F32) for seed in (1, 2, 3))
    q[0, 0, 0, 0] = special
    k[0, 0, 0, 0] = -1.0 if special > 0 else 1.0      # query 0 sees key 0 only: its score is -inf
    check_same_behaviour(backends, "gqa_attention", (q, k, v, 1, True), expect_valid=True, count=False)


def test_logits_of_an_empty_batch_with_no_positions(backends):
    check_same_behaviour(backends, "logits_from_hidden", (np.zeros((0, 0, 4), F32), np.ones((3, 4), F32)),
                         expect_valid=True, count=False)
