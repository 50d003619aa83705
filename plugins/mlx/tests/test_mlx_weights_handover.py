"""Weights handed over once (issue 10, item 7): held once, in their dtype, and accounted for.

The weight cache keeps a device copy of each host array, keyed by and evicted with the host array, so
on unified memory (Apple GPUs, MLX's CPU device) a model passed as NumPy is held twice.  An engine can
instead hand each weight over (``backend.from_numpy``), drop the host array and pass the device array
to the ops: then the weight exists once, on the device.  The memory report says whether the memory is
unified and what the plugin holds.
"""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np

from sapient_backend_mlx import device, plugin
from sapient_core.testing import oracle


def cache(backend):
    return backend.stats().plugin["weight_cache"]


def test_weights_handed_over_are_held_once_in_their_dtype(mlx, rng):
    host = {"w32": rng.standard_normal((48, 32)).astype(np.float32),
            "w16": rng.standard_normal((48, 32)).astype(np.float16),
            "g": (1 + 0.1 * rng.standard_normal(48)).astype(np.float32)}
    exact = {k: v.astype(np.float64) for k, v in host.items()}
    dev = {k: mlx.from_numpy(v) for k, v in host.items()}
    assert dev["w16"].dtype == mx.float16 and dev["w32"].dtype == mx.float32     # no float32 copy of float16
    del host
    gc.collect()
    c0 = cache(mlx)
    x = rng.standard_normal((2, 3, 32)).astype(np.float32)
    for _ in range(3):
        y32 = mlx.to_numpy(mlx.rms_norm(mlx.linear_3d(x, dev["w32"]), dev["g"], 1e-6))
        y16 = mlx.to_numpy(mlx.linear_3d(x, dev["w16"]))
    c1 = cache(mlx)
    assert (c1["uploads"], c1["hits"], c1["bytes"]) == (c0["uploads"], c0["hits"], c0["bytes"])   # no copy
    np.testing.assert_allclose(y32, oracle.rms_norm(oracle.linear_3d(x, exact["w32"]), exact["g"], 1e-6),
                               rtol=0, atol=5e-5)
    np.testing.assert_allclose(y16, oracle.linear_3d(x, exact["w16"]), rtol=0, atol=5e-5)


def test_the_memory_report_says_whether_memory_is_unified_and_what_is_held(mlx, rng):
    report = plugin.backend_memory()
    assert report["unified_memory"] is (device.device_name() in ("metal", "cpu"))
    details = report["details"]
    assert details["unified_memory"] is report["unified_memory"]
    assert {"weight_cache_bytes", "weight_cache_max_bytes", "mlx_active_bytes"} <= set(details)
    w = mlx.from_numpy(rng.standard_normal((1024, 1024)).astype(np.float32))      # 4 MiB handed over
    mx.eval(w)
    after = plugin.backend_memory()["details"]["mlx_active_bytes"]
    assert after - details["mlx_active_bytes"] >= 4 * 2 ** 20 - 4096
    del w


def test_unified_memory_by_device():
    assert device.unified_memory("metal", {}) and device.unified_memory("cpu", {})
    assert not device.unified_memory("cuda", {"total_memory": 80 * 2 ** 30})
    assert device.unified_memory("cuda", {"integrated": 1})                   # if MLX ever reports it
