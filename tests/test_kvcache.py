"""sapient_core.KVCache and the backend object's layout methods it is built on."""

from __future__ import annotations

import numpy as np
import pytest

import sapient_core
from sapient_core import KVCache, ShapeError
from sapient_core.registry import Registry

from helpers.fakeplugins import opaque_plugin


def kv(rng, s, b=2, heads=2, d=4):
    return (rng.standard_normal((b, heads, s, d)).astype(np.float32),
            rng.standard_normal((b, heads, s, d)).astype(np.float32))


@pytest.fixture
def cpu():
    return Registry(entry_points=lambda: []).get_backend("cpu")


def test_appends_in_place_within_the_capacity_and_returns_views(cpu):
    rng = np.random.default_rng(0)
    cache = KVCache(cpu, 2, step=8)
    layer = cache[0]
    k0, v0 = kv(rng, 5)
    keys, values = layer.update(k0, v0)
    buffer = layer.keys
    assert (layer.offset, layer.capacity, buffer.shape) == (5, 8, (2, 2, 8, 4))
    np.testing.assert_array_equal(keys, k0)
    history_k, history_v = [k0], [v0]
    for _ in range(3):                                   # decode steps: written into the same buffer
        k, v = kv(rng, 1)
        keys, values = layer.update(k, v)
        history_k.append(k)
        history_v.append(v)
        assert layer.keys is buffer and np.shares_memory(keys, buffer)
    np.testing.assert_array_equal(keys, np.concatenate(history_k, axis=2))
    np.testing.assert_array_equal(values, np.concatenate(history_v, axis=2))
    assert layer.reallocations == 0 and cache[1].offset == 0    # only layer 0 was updated


def test_grows_by_step_and_keeps_what_it_had(cpu):
    rng = np.random.default_rng(1)
    layer = KVCache(cpu, 1, step=4)[0]
    parts = [kv(rng, n) for n in (3, 1, 1, 6, 1)]
    for k, v in parts:
        keys, values = layer.update(k, v)
    assert layer.offset == 12 and layer.capacity == 12 and layer.reallocations == 2
    np.testing.assert_array_equal(keys, np.concatenate([k for k, _ in parts], axis=2))
    np.testing.assert_array_equal(values, np.concatenate([v for _, v in parts], axis=2))


def test_refuses_what_does_not_fit(cpu):
    rng = np.random.default_rng(2)
    layer = KVCache(cpu, 1)[0]
    layer.update(*kv(rng, 2))
    with pytest.raises(ValueError, match=r"^KVCache\.update: k \(3, 2, 1, 4\) does not match the cache "
                                         r"\(2, 2, 256, 4\)"):
        layer.update(*kv(rng, 1, b=3))
    with pytest.raises(ValueError, match=r"^KVCache\.update: k \(2, 2, 1, 4\) and v \(2, 2, 2, 4\) must have"):
        layer.update(kv(rng, 1)[0], kv(rng, 2)[1])
    with pytest.raises(ValueError, match=r"^KVCache: step must be an int >= 1"):
        KVCache(cpu, 1, step=0)


@pytest.mark.parametrize("name", ["cpu", "mlx", "opaque"])
def test_the_cache_stays_in_the_backends_type_on_every_backend(name):
    reg = Registry()
    reg.register(opaque_plugin(), "opaque")
    be = reg.get_backend(name)
    rng = np.random.default_rng(3)
    layer = KVCache(be, 1, step=4)[0]
    parts = [kv(rng, n) for n in (3, 1, 2)]
    for k, v in parts:
        keys, values = layer.update(be.from_numpy(k), be.from_numpy(v))
    own = type(be.from_numpy(np.zeros(1, np.float32)))
    assert type(keys) is own and type(layer.keys) is own
    np.testing.assert_array_equal(be.to_numpy(keys), np.concatenate([k for k, _ in parts], axis=2))
    np.testing.assert_array_equal(be.to_numpy(values), np.concatenate([v for _, v in parts], axis=2))
    be.eval(*layer.state())


def test_on_mlx_an_append_moves_nothing_through_the_host_but_its_offset():
    be = Registry().get_backend("mlx")
    stats = lambda: be.stats().plugin["transfers"]                       # noqa: E731
    layer = KVCache(be, 1, step=16)[0]
    rng = np.random.default_rng(4)
    k, v = (be.from_numpy(a) for a in kv(rng, 3))
    layer.update(k, v)
    k1, v1 = (be.from_numpy(a) for a in kv(rng, 1))
    before = stats()
    for _ in range(5):
        keys, values = layer.update(k1, v1)
        be.eval(keys, values)
    after = stats()
    assert after["device_to_host"] == before["device_to_host"]
    # at most the write's start index per new offset: one int32 (4 bytes), shared by every layer's writes
    assert after["activation_uploads"] - before["activation_uploads"] <= 5
    assert after["activation_upload_bytes"] - before["activation_upload_bytes"] <= 5 * 4
    assert layer.offset == 8 and layer.reallocations == 0


# --- the layout methods ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cpu", "mlx", "opaque"])
def test_layout_methods_agree_with_numpy_on_every_backend(name):
    reg = Registry()
    reg.register(opaque_plugin(), "opaque")
    be = reg.get_backend(name)
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    x = be.from_numpy(a)
    np.testing.assert_array_equal(be.to_numpy(be.reshape(x, (4, -1))), a.reshape(4, 6))
    np.testing.assert_array_equal(be.to_numpy(be.transpose(x, (2, 0, 1))), a.transpose(2, 0, 1))
    np.testing.assert_array_equal(be.to_numpy(be.slice(x, -1, 1, 3)), a[..., 1:3])
    np.testing.assert_array_equal(be.to_numpy(be.concatenate([x, x], 1)), np.concatenate([a, a], 1))
    z = be.zeros((2, 3, 6))
    z = be.write(z, x, 2, 2)
    want = np.zeros((2, 3, 6), np.float32)
    want[..., 2:6] = a
    np.testing.assert_array_equal(be.to_numpy(z), want)
    assert be.to_numpy(z).dtype == np.float32
    assert be.eval(z, None) is None


@pytest.mark.parametrize("call, message", [
    (lambda be, x: be.slice(x, 1, 2, 5), r"^slice: need 0 <= start <= stop <= 3 on axis 1, got start=2, stop=5"),
    (lambda be, x: be.slice(x, 3, 0, 1), r"^slice: axis 3 is out of range for 3 dimensions"),
    (lambda be, x: be.write(x, np.zeros((2, 3, 5), np.float32), 2, 0),
     r"^write: src \(2, 3, 5\) does not fit into dst \(2, 3, 4\) at 0 along axis 2"),
    (lambda be, x: be.write(x, np.zeros((2, 2, 1), np.float32), 2, 0),
     r"^write: src \(2, 2, 1\) does not fit into dst \(2, 3, 4\)"),
])
@pytest.mark.parametrize("name", ["cpu", "mlx"])
def test_layout_errors_are_the_same_everywhere(name, call, message):
    be = Registry().get_backend(name)
    x = be.from_numpy(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ShapeError, match=message):
        call(be, x)


def test_kvcache_is_public():
    assert sapient_core.KVCache is KVCache and "KVCache" in sapient_core.__all__
