"""The weight cache: uploaded once per host array, never stale, bounded, visible in the stats."""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest

from sapient_backend_mlx.cache import ENV_LIMIT, WEIGHTS, WeightCache
from sapient_core.testing import oracle


def cache_stats(backend):
    return backend.stats().plugin["weight_cache"]


def test_a_weight_is_uploaded_once_and_then_served_from_the_cache(mlx, rng):
    x = rng.standard_normal((1, 2, 16)).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    s0 = cache_stats(mlx)
    for _ in range(5):
        y = mlx.to_numpy(mlx.linear_3d(x, w))
    s1 = cache_stats(mlx)
    assert s1["uploads"] - s0["uploads"] == 1
    assert s1["hits"] - s0["hits"] == 4
    assert s1["entries"] == s0["entries"] + 1 and s1["bytes"] == s0["bytes"] + w.nbytes
    np.testing.assert_allclose(y, oracle.linear_3d(x, w), atol=1e-5)


def test_activations_are_never_cached(mlx, rng):
    x = rng.standard_normal((1, 2, 16)).astype(np.float32)
    s0 = cache_stats(mlx)
    t0 = mlx.stats().plugin["transfers"]["activation_uploads"]
    for _ in range(3):
        mlx.silu(x)
    assert cache_stats(mlx)["uploads"] == s0["uploads"]
    assert mlx.stats().plugin["transfers"]["activation_uploads"] - t0 == 3


def test_freed_and_reallocated_weights_never_see_a_stale_upload(mlx, rng):
    # New arrays of the same shape very often land at the address of the one just freed; a cache keyed
    # by id() alone would then return the previous weight's upload and the result would be wrong.
    x = rng.standard_normal((1, 1, 8)).astype(np.float32)
    entries0 = cache_stats(mlx)["entries"]
    freed0 = cache_stats(mlx)["freed"]
    ids = []
    for i in range(300):
        w = np.full((4, 8), float(i), np.float32) + rng.standard_normal((4, 8)).astype(np.float32)
        ids.append(id(w))
        got = mlx.to_numpy(mlx.linear_3d(x, w))
        np.testing.assert_allclose(got, oracle.linear_3d(x, w), atol=1e-4, err_msg=f"weight {i}")
        del w
    assert len(set(ids)) < len(ids), "no address was reused: the test did not exercise the hazard"
    s = cache_stats(mlx)
    assert s["entries"] <= entries0 + 1            # freed weights left the cache
    assert s["freed"] - freed0 >= 299


def test_the_entry_leaves_when_the_host_array_is_freed(mlx, rng):
    x = rng.standard_normal((1, 1, 8)).astype(np.float32)
    w = rng.standard_normal((4, 8)).astype(np.float32)
    mlx.linear_3d(x, w)
    n = cache_stats(mlx)["entries"]
    del w
    gc.collect()
    assert cache_stats(mlx)["entries"] == n - 1


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(mlx, rng, weight_cache_limit):
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    ws = [rng.standard_normal((16, 16)).astype(np.float32) for _ in range(6)]   # 1 KiB each
    WEIGHTS.clear()
    weight_cache_limit.configure(3 * ws[0].nbytes)
    s0 = cache_stats(mlx)
    for w in ws[:3]:
        mlx.linear_3d(x, w)
    mlx.linear_3d(x, ws[0])                        # ws[0] is now the most recently used
    mlx.linear_3d(x, ws[3])                        # evicts ws[1], the least recently used
    s1 = cache_stats(mlx)
    assert s1["entries"] == 3 and s1["bytes"] == 3 * ws[0].nbytes and s1["max_bytes"] == 3 * ws[0].nbytes
    assert s1["evictions"] - s0["evictions"] == 1
    uploads = s1["uploads"]
    mlx.linear_3d(x, ws[0])                        # still cached
    assert cache_stats(mlx)["uploads"] == uploads
    y = mlx.to_numpy(mlx.linear_3d(x, ws[1]))      # evicted: uploaded again, still correct
    assert cache_stats(mlx)["uploads"] == uploads + 1
    np.testing.assert_allclose(y, oracle.linear_3d(x, ws[1]), atol=1e-5)
    for w in ws:
        mlx.linear_3d(x, w)
        assert cache_stats(mlx)["bytes"] <= 3 * ws[0].nbytes


def test_a_weight_larger_than_the_limit_is_used_but_not_cached(mlx, rng, weight_cache_limit):
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    weight_cache_limit.configure(100)
    s0 = cache_stats(mlx)
    for _ in range(2):
        y = mlx.to_numpy(mlx.linear_3d(x, w))
    s1 = cache_stats(mlx)
    assert s1["uncached"] - s0["uncached"] == 2 and s1["uploads"] - s0["uploads"] == 2
    assert s1["bytes"] <= 100
    np.testing.assert_allclose(y, oracle.linear_3d(x, w), atol=1e-5)


def test_float16_weights_are_cached_as_float32(mlx, rng):
    w16 = rng.standard_normal((8, 16)).astype(np.float16)
    x = rng.standard_normal((1, 1, 16)).astype(np.float32)
    b0 = cache_stats(mlx)["bytes"]
    y = mlx.to_numpy(mlx.linear_3d(x, w16))
    assert cache_stats(mlx)["bytes"] - b0 == w16.size * 4
    np.testing.assert_allclose(y, oracle.linear_3d(x, w16), atol=1e-5)


def test_the_stats_show_the_cache_and_the_transfers(mlx):
    plugin = mlx.stats().plugin
    assert set(plugin["weight_cache"]) >= {"entries", "bytes", "max_bytes", "uploads", "hits", "evictions",
                                           "freed", "uncached"}
    assert set(plugin["transfers"]) >= {"activation_uploads", "device_to_host"}
    assert plugin["matmul_precision"].startswith("float32")
    assert plugin["mlx_version"] == mx.__version__


# --- the cache on its own (no MLX; uploads are fakes that count) -------------------------------------

class FakeUpload:
    def __init__(self):
        self.calls = 0

    def __call__(self, host):
        self.calls += 1
        return host.copy()                         # has .nbytes, like an mx.array


def test_a_finalizer_that_finds_the_lock_busy_defers_the_eviction():
    cache = WeightCache(max_bytes=1 << 20)
    up = FakeUpload()
    a = np.ones(4, np.float32)
    cache.get(a, up)
    with cache._lock:                              # e.g. the array is freed inside a cache operation
        del a
        gc.collect()
        assert len(cache._entries) == 1 and len(cache._dead) == 1
    assert len(cache) == 0                         # processed at the next use
    assert cache.stats()["freed"] == 1


def test_an_entry_whose_array_died_is_never_served_to_a_new_array_at_its_address():
    # Simulate the worst case directly: the new array's id() finds the old entry before the old
    # array's finalizer ran.  The weak reference tells them apart.
    cache = WeightCache(max_bytes=1 << 20)
    up = FakeUpload()
    old = np.zeros(4, np.float32)
    cache.get(old, up)
    new = np.ones(4, np.float32)
    entry = cache._entries.pop(id(old))
    entry.key = id(new)
    cache._entries[id(new)] = entry               # as if `new` had been allocated at old's address
    got = cache.get(new, up)
    np.testing.assert_array_equal(got, new)
    assert up.calls == 2 and cache.stats()["freed"] == 1


def test_the_limit_comes_from_the_environment_or_the_default(monkeypatch):
    monkeypatch.setenv(ENV_LIMIT, "12345")
    cache = WeightCache()
    assert cache.stats()["max_bytes"] == 12345 and cache.stats()["max_bytes_source"] == ENV_LIMIT
    monkeypatch.setenv(ENV_LIMIT, "lots")
    with pytest.raises(ValueError, match="SAPIENT_MLX_WEIGHT_CACHE_BYTES='lots' is not a byte count"):
        WeightCache().stats()
    monkeypatch.delenv(ENV_LIMIT)
    cache = WeightCache()
    cache.default_limit = lambda: (999, "test default")
    assert cache.stats()["max_bytes"] == 999
    with pytest.raises(ValueError, match="max_bytes must be a non-negative int"):
        cache.configure(-1)


def test_the_default_limit_is_half_the_reported_device_memory(mlx, weight_cache_limit):
    limit = weight_cache_limit.configure(None)
    assert limit == mlx.memory.total_bytes // 2
