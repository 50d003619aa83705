"""Results cross threads, and every op runs on the plugin's own device and stream (issue 10, items 1, 5).

Since MLX 0.31.2 each thread has its own default stream, and an array built on one thread's stream
cannot be evaluated on another ("There is no Stream(cpu, 0) in current thread"), whatever lock the
core holds.  The plugin builds every op on one stream of its own (``mx.new_thread_unsafe_stream``)
and evaluates under its own lock, so an engine may run ops on a worker thread and read or extend the
results on any other.  These tests failed on the plugin before that change (each with the error above).
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import textwrap
import threading

import mlx.core as mx
import numpy as np
import pytest

from sapient_core.testing import oracle

ATOL = 1e-4          # a few chained float32 ops of O(1) values (the values, not the threads, are checked)


def in_thread(fn):
    """Run ``fn`` on a new thread that then ends (its thread-local MLX streams die with it)."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc
    th = threading.Thread(target=run)
    th.start()
    th.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_a_result_made_on_a_worker_thread_is_read_and_extended_on_the_main_thread(mlx, rng):
    x, w, g, lm = f32(rng, 2, 3, 16), f32(rng, 24, 16), f32(rng, 24), f32(rng, 11, 24)
    y = in_thread(lambda: mlx.silu(mlx.linear_3d(x, w)))         # left lazy on the worker
    want = oracle.silu(oracle.linear_3d(x, w))
    z = mlx.rms_norm(y, g, 1e-6)                                 # the next op, on the main thread
    np.testing.assert_allclose(mlx.to_numpy(z), oracle.rms_norm(want, g, 1e-6), rtol=0, atol=ATOL)
    np.testing.assert_allclose(mlx.to_numpy(y), want, rtol=0, atol=ATOL)
    y2 = in_thread(lambda: mlx.silu(mlx.linear_3d(x, w)))
    logits = mlx.logits_from_hidden(y2, lm)                      # strict backend: no CPU fallback allowed
    np.testing.assert_allclose(logits, oracle.logits_from_hidden(want, lm), rtol=0, atol=ATOL)
    assert mlx.stats().ops["logits_from_hidden"].fallbacks == 0


def test_a_pipeline_of_threads_hands_lazy_results_along(mlx, rng):
    # A prefetching loader: stage 1 on one thread, stage 2 on another, the reader on a third.
    x, w1, w2 = f32(rng, 1, 4, 16), f32(rng, 16, 16), f32(rng, 8, 16)
    q1, q2, out = queue.Queue(), queue.Queue(), {}

    def stage1():
        for i in range(5):
            q1.put(mlx.linear_3d(x * (i + 1), w1))
        q1.put(None)

    def stage2():
        while (h := q1.get()) is not None:
            q2.put(mlx.linear_3d(mlx.silu(h), w2))
        q2.put(None)

    def reader():
        out["values"] = []
        while (h := q2.get()) is not None:
            out["values"].append(mlx.to_numpy(h))
    threads = [threading.Thread(target=f) for f in (stage1, stage2, reader)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(out.get("values", [])) == 5
    for i, got in enumerate(out["values"]):
        want = oracle.linear_3d(oracle.silu(oracle.linear_3d(x * (i + 1), w1)), w2)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"item {i}")


def test_ops_use_the_plugin_stream_whatever_the_callers_default_stream(mlx, rng):
    x, w = f32(rng, 1, 2, 8), f32(rng, 4, 8)

    def work():
        mx.set_default_stream(mx.new_stream(mx.cpu))   # the caller's own stream, unusable elsewhere
        # Every step through the backend (its layout methods too): an mx op the caller runs itself would be
        # on the caller's stream, which dies with its thread (only a first-use check would evaluate it in
        # time, so whether it showed depended on which tests ran before).
        return mlx.gqa_attention(mlx.reshape(mlx.linear_3d(x, w), (1, 1, 2, 4)), mlx.from_numpy(np.ones((1, 1, 3, 4),
                                 np.float32)), np.ones((1, 1, 3, 4), np.float32), 1, True)
    y = in_thread(work)
    assert mlx.to_numpy(y).shape == (1, 1, 2, 4)
    np.testing.assert_allclose(mlx.to_numpy(y), np.ones((1, 1, 2, 4), np.float32), rtol=0, atol=1e-6)


def test_the_layout_helpers_and_evaluate_also_cross_threads(rng):
    from sapient_backend_mlx import kernels
    x = f32(rng, 2, 3, 4)
    y = in_thread(lambda: kernels.transpose(kernels.reshape(kernels.silu(x), (3, 2, 4)), (2, 0, 1)))
    kernels.evaluate([y])
    np.testing.assert_allclose(kernels.to_host(y), oracle.silu(x).reshape(3, 2, 4).transpose(2, 0, 1),
                               rtol=0, atol=1e-6)


def test_the_plugin_stream_is_on_the_device_the_plugin_reports():
    from sapient_backend_mlx import device
    want = mx.cpu if device.device_name() == "cpu" else mx.gpu
    assert device.stream().device == mx.Device(want)
    assert device.mx_device() == mx.Device(want)


def test_device_info_is_asked_about_the_plugin_device_not_the_process_default(monkeypatch):
    from sapient_backend_mlx import device, plugin
    asked = []
    real = mx.device_info

    def spy(*args):
        asked.append(args)
        return real(*args)
    monkeypatch.setattr(mx, "device_info", spy)
    report = plugin.backend_memory()
    assert asked and all(args == (device.mx_device(),) for args in asked), asked
    assert isinstance(report["unified_memory"], bool)


def test_the_global_mlx_state_the_plugin_changes_is_reported(tmp_path):
    # MLX_ENABLE_TF32=0 (true float32 matmuls) is the one global change: said in the stats and logged.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAPIENT_", "MLX_ENABLE_TF32"))}
    code = textwrap.dedent("""
        import logging, os, sys
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s %(message)s")
        import sapient_core
        be = sapient_core.get_backend("mlx")
        print("STATS", be.stats().plugin["global_state"])
        print("ENV", os.environ.get("MLX_ENABLE_TF32"))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ENV 0" in out.stdout
    assert "STATS ['MLX_ENABLE_TF32=0" in out.stdout
    assert "sapient_core sapient-backend-mlx set MLX_ENABLE_TF32=0" in out.stdout   # logged at INFO
    env["MLX_ENABLE_TF32"] = "1"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "STATS []" in out.stdout and "ENV 1" in out.stdout


@pytest.mark.parametrize("order", ["write-then-read", "read-then-write"])
def test_an_in_place_kv_cache_written_on_one_thread_is_read_on_another(order, rng):
    from sapient_backend_mlx import kernels
    cache = kernels.zeros((1, 2, 8, 4))
    chunks = [f32(rng, 1, 2, 1, 4) for _ in range(5)]
    for i, c in enumerate(chunks):
        if order == "write-then-read":
            cache = in_thread(lambda c=c, i=i, cache=cache: kernels.write(cache, c, 2, i))
        else:
            cache = kernels.write(cache, c, 2, i)
            in_thread(lambda cache=cache: kernels.evaluate([cache]))
    got = kernels.to_host(kernels.slice(cache, 2, 0, 5))
    np.testing.assert_array_equal(got, np.concatenate(chunks, axis=2))
