"""Errors raised when MLX *evaluates* (issue 10, item 2): they fall back (strict: raise) like build errors.

MLX is lazy: an op returns a graph node, and a device failure (an allocation that fails, a kernel the
device cannot run, a stream the thread cannot see) only shows when the graph is evaluated, long after
the op returned and the core's fallback stopped watching.  The plugin therefore:

- evaluates an op's result once, inside the op, the first time it sees the op with inputs of that
  kind (dtype and shape class): a failure there is the op's own and the core falls back or, in strict
  mode, raises ``BackendOpError``, exactly as for an error raised while building the graph.  Later
  calls stay lazy;
- makes the logits ops evaluate their input before their own product, so that a failure of the
  product falls back with an evaluated input (the CPU reference can read it);
- reports a failure at an evaluation point (``evaluate``, ``to_numpy``, a logits op's input) as
  :class:`MLXEvaluationError` naming the ops that were pending, after one retry with MLX's buffer
  cache released when the error is an allocation failure.

Planted failures are real MLX evaluation errors: an op of the plugin's module builds its product on a
stream owned by a thread that has ended, which MLX refuses to evaluate ("There is no Stream(cpu, N) in
current thread").  The first five tests failed on the plugin before this change.
"""

from __future__ import annotations

import threading

import mlx.core as mx
import numpy as np
import pytest

from sapient_backend_mlx import MLXEvaluationError, kernels
from sapient_core import BackendOpError
from sapient_core.registry import Registry
from sapient_core.testing import oracle


@pytest.fixture(scope="module")
def dead_stream():
    box = {}
    th = threading.Thread(target=lambda: box.setdefault("s", mx.new_stream(mx.cpu)))
    th.start()
    th.join()
    return box["s"]


class MLXWith:
    """``mlx.core`` with some entry points replaced (patched into the plugin's kernels module only)."""

    def __init__(self, **overrides):
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(mx, name)


@pytest.fixture
def fresh_probes(monkeypatch):
    """Forget which (op, input kind) pairs were already checked, so that the next call is checked."""
    monkeypatch.setattr(kernels, "_PROBED", set(), raising=False)
    monkeypatch.setattr(kernels, "_SEEN", set(), raising=False)


@pytest.fixture
def lenient():
    return Registry().get_backend("mlx", strict=False)


def failing(name, stream, *, after=0):
    """``mx.<name>`` whose product fails at evaluation, from call number ``after`` on."""
    calls = {"n": 0}
    real = getattr(mx, name)

    def fn(*args, **kw):
        calls["n"] += 1
        if calls["n"] > after:
            kw["stream"] = stream
        return real(*args, **kw)
    return fn


def test_an_op_whose_product_fails_on_the_device_falls_back(monkeypatch, fresh_probes, lenient, dead_stream):
    monkeypatch.setattr(kernels, "mx", MLXWith(sigmoid=failing("sigmoid", dead_stream)))
    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(2, 6)
    y = lenient.silu(x)
    assert isinstance(y, mx.array)
    np.testing.assert_allclose(lenient.to_numpy(y), oracle.silu(x), rtol=0, atol=1e-6)
    st = lenient.stats().ops["silu"]
    assert st.fallbacks == 1
    assert any("There is no Stream" in reason for reason in st.fallback_reasons), st


def test_in_strict_mode_the_op_itself_raises(monkeypatch, fresh_probes, mlx, dead_stream):
    monkeypatch.setattr(kernels, "mx", MLXWith(sigmoid=failing("sigmoid", dead_stream)))
    with pytest.raises(BackendOpError, match="There is no Stream") as exc:
        mlx.silu(np.ones((2, 3), np.float32))
    assert exc.value.op == "silu" and not exc.value.declined


def test_a_later_failure_is_reported_with_the_pending_ops(monkeypatch, fresh_probes, mlx, lenient, dead_stream):
    # The first call is checked and fine; the second (same kind, so not checked again) fails at evaluation.
    monkeypatch.setattr(kernels, "mx", MLXWith(sigmoid=failing("sigmoid", dead_stream, after=1)))
    x, lm = np.ones((1, 2, 8), np.float32), np.ones((5, 8), np.float32)
    mlx.to_numpy(mlx.silu(x))
    y = mlx.silu(x)
    with pytest.raises(MLXEvaluationError, match=r"silu") as exc:
        mlx.to_numpy(y)
    assert exc.value.pending.get("silu", 0) >= 1 and "There is no Stream" in str(exc.value)
    with pytest.raises(BackendOpError, match=r"input.*pending.*silu"):
        mlx.logits_from_hidden(y, lm)                   # strict: the input's failure, named
    with pytest.raises(BackendOpError, match=r"^mlx\.logits_from_hidden failed \(MLXEvaluationError: .*silu.*\), "
                       r"and the CPU reference could not take over: MLXEvaluationError: to_numpy") as exc:
        lenient.logits_from_hidden(y, lm)               # lenient: nothing to fall back on; both errors said
    assert isinstance(exc.value.__cause__, MLXEvaluationError)


def test_evaluate_reports_failures_with_the_op_context(monkeypatch, fresh_probes, dead_stream):
    monkeypatch.setattr(kernels, "mx", MLXWith(sigmoid=failing("sigmoid", dead_stream, after=1)))
    x = np.ones((3, 4), np.float32)
    kernels.evaluate([kernels.silu(x)])
    y = kernels.add(kernels.silu(x), x)
    with pytest.raises(MLXEvaluationError, match="evaluate") as exc:
        kernels.evaluate([y])
    assert {"silu", "add"} <= set(exc.value.pending)
    assert "There is no Stream" in str(exc.value)


def test_an_allocation_failure_is_retried_once_with_mlx_buffer_cache_released(monkeypatch):
    state = {"fail": 1, "cleared": 0}

    def flaky_eval(*arrays):
        if state["fail"]:
            state["fail"] -= 1
            raise RuntimeError("[metal::malloc] Unable to allocate 1073741824 bytes")
        return mx.eval(*arrays)

    def clear_cache():
        state["cleared"] += 1
        mx.clear_cache()
    monkeypatch.setattr(kernels, "mx", MLXWith(eval=flaky_eval, clear_cache=clear_cache))
    before = kernels.evaluation_stats()
    x = np.arange(6, dtype=np.float32)
    y = kernels.mul(x, x)
    kernels.evaluate([y])
    np.testing.assert_array_equal(kernels.to_host(y), x * x)
    after = kernels.evaluation_stats()
    assert state == {"fail": 0, "cleared": 1}
    assert after["retries"] - before["retries"] == 1 and after["failures"] == before["failures"]


def test_a_non_allocation_failure_is_not_retried(monkeypatch, fresh_probes, dead_stream):
    monkeypatch.setattr(kernels, "mx", MLXWith(sigmoid=failing("sigmoid", dead_stream, after=1)))
    kernels.evaluate([kernels.silu(np.ones(3, np.float32))])
    before = kernels.evaluation_stats()
    with pytest.raises(MLXEvaluationError):
        kernels.evaluate([kernels.silu(np.ones(3, np.float32))])
    after = kernels.evaluation_stats()
    assert after["retries"] == before["retries"] and after["failures"] == before["failures"] + 1


def test_logits_fall_back_with_an_evaluated_input_when_their_own_product_fails(monkeypatch, fresh_probes,
                                                                                lenient, dead_stream, rng):
    # (This one passed before the change too: the logits ops always evaluated inside the op.)
    hidden = lenient.rms_norm(rng.standard_normal((2, 3, 8)).astype(np.float32), np.ones(8, np.float32), 1e-6)
    lm = rng.standard_normal((7, 8)).astype(np.float32)
    monkeypatch.setattr(kernels, "mx", MLXWith(matmul=failing("matmul", dead_stream)))
    want = oracle.logits_from_hidden(lenient.to_numpy(hidden), lm)
    got = lenient.logits_from_hidden(hidden, lm)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert lenient.stats().ops["logits_from_hidden"].fallbacks == 1


def test_an_op_checked_once_stays_lazy_afterwards(monkeypatch, fresh_probes):
    calls = {"n": 0}

    def counting_eval(*arrays):
        calls["n"] += 1
        return mx.eval(*arrays)
    monkeypatch.setattr(kernels, "mx", MLXWith(eval=counting_eval))
    x = np.ones((2, 5), np.float32)
    kernels.silu(x)
    first = calls["n"]
    for _ in range(5):
        kernels.silu(x)
    assert first >= 1 and calls["n"] == first          # no evaluation after the first call of that kind
    kernels.silu(np.ones((2, 500), np.float32))        # another shape class: checked once more
    assert calls["n"] > first
