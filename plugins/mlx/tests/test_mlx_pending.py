"""Evaluating pending results on the device (issue 10, item 4).

MLX is lazy: an engine that reads results rarely keeps every step's graph alive, and a KV cache that
grows by one position per step then holds every intermediate cache: memory grows with the square of
the number of pending steps.  ``kernels.evaluate(arrays)`` (the plugin side of ``Backend.eval``)
evaluates results on the device without copying anything to the host, so an engine can call it every
step, as mlx-lm does.  These tests failed before the change (there was no way to evaluate without a
host copy).  Memory is compared, never time.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from sapient_backend_mlx import kernels, plugin
from sapient_backend_mlx.cache import TRANSFERS
from sapient_core.testing import oracle

KV, D, H = 2, 64, 4
STEPS = 300


def decode(steps, *, evaluate_each_step, in_place, seed=0):
    """A teacher-forced decode loop that reads nothing back until the end; returns (output, peak bytes)."""
    rng = np.random.default_rng(seed)
    wq = (rng.standard_normal((H * D, D)) / 8).astype(np.float32)
    wk = (rng.standard_normal((KV * D, D)) / 8).astype(np.float32)
    xs = rng.standard_normal((steps, 1, 1, D)).astype(np.float32)
    cache = kernels.zeros((1, KV, steps, D)) if in_place else None
    kernels.evaluate([kernels.linear_3d(xs[0], wq), kernels.linear_3d(xs[0], wk)])   # weights uploaded
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    out = None
    for t in range(steps):
        q = kernels.transpose(kernels.reshape(kernels.linear_3d(xs[t], wq), (1, 1, H, D)), (0, 2, 1, 3))
        k = kernels.transpose(kernels.reshape(kernels.linear_3d(xs[t], wk), (1, 1, KV, D)), (0, 2, 1, 3))
        if in_place:
            cache = kernels.write(cache, k, 2, t)
            keys = kernels.slice(cache, 2, 0, t + 1)
        else:
            cache = k if cache is None else kernels.concatenate([cache, k], 2)
            keys = cache
        o = kernels.gqa_attention(q, keys, keys, KV, True, None, None, None, None)
        out = o if out is None else kernels.add(out, o)
        if evaluate_each_step:
            kernels.evaluate([cache, out])
    result = kernels.to_host(out)
    return result, mx.get_peak_memory() - base


@pytest.mark.parametrize("in_place", [False, True], ids=["concatenate", "write"])
def test_evaluating_each_step_keeps_memory_flat(in_place):
    t0 = TRANSFERS.stats()["device_to_host"]
    got_lazy, peak_lazy = decode(STEPS, evaluate_each_step=False, in_place=in_place)
    t1 = TRANSFERS.stats()["device_to_host"]
    got_eval, peak_eval = decode(STEPS, evaluate_each_step=True, in_place=in_place)
    t2 = TRANSFERS.stats()["device_to_host"]
    np.testing.assert_allclose(got_eval, got_lazy, rtol=0, atol=1e-5)
    assert t2 - t1 == t1 - t0 == 1                  # evaluate copied nothing to the host: one read at the end
    cache_bytes = KV * STEPS * D * 4
    # Pending: every step's cache is alive (~STEPS/2 caches); evaluated: a few caches at most.
    assert peak_eval < 8 * cache_bytes, (peak_eval, cache_bytes)
    assert peak_lazy > 4 * peak_eval, (peak_lazy, peak_eval)


def test_evaluate_gives_the_same_values_as_reading_and_accepts_numpy_and_nothing(rng):
    x, w = rng.standard_normal((2, 3, 8)).astype(np.float32), rng.standard_normal((5, 8)).astype(np.float32)
    y = kernels.silu(kernels.linear_3d(x, w))
    before = TRANSFERS.stats()["device_to_host"]
    assert kernels.evaluate([y, x]) is None
    kernels.evaluate([])
    assert TRANSFERS.stats()["device_to_host"] == before
    np.testing.assert_allclose(kernels.to_host(y), oracle.silu(oracle.linear_3d(x, w)), rtol=0, atol=1e-5)


def test_the_plugin_function_for_backend_eval_forwards(rng):
    y = kernels.silu(rng.standard_normal((2, 3)).astype(np.float32))
    before = kernels.evaluation_stats()["evaluations"]
    plugin.backend_eval([y])
    assert kernels.evaluation_stats()["evaluations"] == before + 1
    assert hasattr(plugin.backend_eval, "sapient_core_impl")
