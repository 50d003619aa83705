"""Thread safety (the core serialises the MLX plugin) and fallback / strict mode on real MLX."""

from __future__ import annotations

import logging
import threading
import time

import mlx.core as mx
import numpy as np
import pytest

from sapient_backend_mlx import kernels
from sapient_core import BackendOpError
from sapient_core.registry import Registry
from sapient_core.testing import oracle

N_THREADS = 8


def _block(backend, x, w, g, q, k, v):
    h = backend.rms_norm(x, g, 1e-6)
    h = backend.silu(backend.linear_3d(h, w))
    o = backend.gqa_attention(q, k, v, 2, True)
    return backend.to_numpy(h), backend.to_numpy(o)


def test_many_threads_calling_mlx_at_once_get_correct_results(mlx):
    rng = np.random.default_rng(5)
    jobs = []
    for t in range(N_THREADS):
        s = 1 + t % 4
        x = rng.standard_normal((1, s, 16)).astype(np.float32)
        w = rng.standard_normal((24, 16)).astype(np.float32)
        g = rng.standard_normal(16).astype(np.float32)
        q = rng.standard_normal((1, 4, s, 8)).astype(np.float32)
        k = rng.standard_normal((1, 2, s + 2, 8)).astype(np.float32)
        v = rng.standard_normal((1, 2, s + 2, 8)).astype(np.float32)
        want = (oracle.silu(oracle.linear_3d(oracle.rms_norm(x, g, 1e-6), w)), oracle.gqa_attention(q, k, v, 2, True))
        jobs.append(((x, w, g, q, k, v), want))
    errors, barrier = [], threading.Barrier(N_THREADS)

    def worker(args, want):
        try:
            barrier.wait()
            for _ in range(25):
                h, o = _block(mlx, *args)
                np.testing.assert_allclose(h, want[0], atol=1e-5)
                np.testing.assert_allclose(o, want[1], atol=1e-5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=job) for job in jobs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors[0]


def _concurrency_probe(monkeypatch_target, name):
    """Wrap ``monkeypatch_target.name`` so that it records how many calls run at the same time."""
    state = {"active": 0, "max": 0}
    lock = threading.Lock()
    inner = getattr(monkeypatch_target, name)

    def probe(*args):
        with lock:
            state["active"] += 1
            state["max"] = max(state["max"], state["active"])
        time.sleep(0.002)
        try:
            return inner(*args)
        finally:
            with lock:
                state["active"] -= 1
    return probe, state


def _hammer(fn, x):
    barrier = threading.Barrier(N_THREADS)

    def worker():
        barrier.wait()
        for _ in range(5):
            fn(x)
    threads = [threading.Thread(target=worker) for _ in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def test_the_dispatcher_never_runs_two_mlx_kernels_at_once(mlx, monkeypatch):
    probe, state = _concurrency_probe(kernels, "silu")
    monkeypatch.setattr(kernels, "silu", probe)
    _hammer(mlx.silu, np.ones((2, 3), np.float32))
    assert state["max"] == 1


def test_the_probe_does_see_concurrency_in_a_thread_safe_plugin(monkeypatch):
    # The same probe on a plugin that declares thread_safe=True: calls overlap, so the test above
    # would notice if the MLX plugin's calls were not serialised.
    import types

    from sapient_core import hookimpl

    @hookimpl
    def backend_capabilities():
        return {"api_version": 1, "device": "cpu", "available": True, "thread_safe": True}

    def silu(x):
        return x

    probe, state = _concurrency_probe(types.SimpleNamespace(silu=silu), "silu")

    @hookimpl
    def silu_impl(x):
        return probe(x)

    reg = Registry()
    reg.register(types.SimpleNamespace(backend_capabilities=backend_capabilities, silu=silu_impl), "parallel")
    _hammer(reg.get_backend("parallel").silu, np.ones((2, 3), np.float32))
    assert state["max"] > 1


# --- fallback and strict ------------------------------------------------------------------------------

FAR = np.array([0, 2 ** 24 + 5])             # beyond float32's integers: MLX computes it anyway (float64 angles)


def _declining(x, positions, base):
    from sapient_core import OpDeclined
    raise OpDeclined("simulated: positions this kernel does not handle")


def test_a_declined_input_falls_back_to_the_cpu_reference_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(kernels, "apply_rope_positions", _declining)
    backend = Registry().get_backend("mlx", strict=False)
    x = np.random.default_rng(0).standard_normal((1, 2, 2, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        for _ in range(3):
            y = backend.apply_rope_positions(x, FAR, 10000.0)
    assert isinstance(y, mx.array)                               # still the backend's array type
    np.testing.assert_allclose(backend.to_numpy(y), oracle.apply_rope_positions(x, FAR, 10000.0), atol=1e-5)
    warnings = [r for r in caplog.records if "apply_rope_positions" in r.getMessage()]
    assert len(warnings) <= 1                                     # once per (backend, op, reason) per process
    st = backend.stats().ops["apply_rope_positions"]
    assert st.calls == 3 and st.fallbacks == 3
    assert any("simulated" in reason for reason in st.fallback_reasons)


def test_strict_mode_raises_instead_of_falling_back(mlx, monkeypatch):
    monkeypatch.setattr(kernels, "apply_rope_positions", _declining)
    x = np.zeros((1, 1, 2, 8), np.float32)
    with pytest.raises(BackendOpError, match="declined the input") as exc:
        mlx.apply_rope_positions(x, FAR, 10000.0)
    assert exc.value.declined and exc.value.op == "apply_rope_positions" and exc.value.backend == "mlx"


def test_positions_beyond_float32_integers_run_on_mlx(mlx):
    # The angle is computed in float64 on the host: nothing to decline (the plugin declined these before).
    x = np.random.default_rng(1).standard_normal((1, 2, 2, 8)).astype(np.float32)
    y = mlx.to_numpy(mlx.apply_rope_positions(x, FAR, 10000.0))
    np.testing.assert_allclose(y, oracle.apply_rope_positions(x, FAR, 10000.0), rtol=0, atol=2e-6)
    assert mlx.stats().ops["apply_rope_positions"].fallbacks == 0


def test_a_kernel_that_raises_falls_back(monkeypatch):
    def broken(a, b):
        raise RuntimeError("simulated MLX failure")
    monkeypatch.setattr(kernels, "mul", broken)
    backend = Registry().get_backend("mlx", strict=False)
    a = np.full((2, 2), 3.0, np.float32)
    y = backend.mul(a, a)
    np.testing.assert_array_equal(backend.to_numpy(y), np.full((2, 2), 9.0, np.float32))
    assert backend.stats().ops["mul"].fallback_reasons == {"RuntimeError: simulated MLX failure": 1}
