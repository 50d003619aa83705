"""A key/value cache that preallocates in steps and appends in place, on any backend.

Growing a cache by concatenation copies every cached key and value on every step (O(length) per token
and layer).  :class:`KVCache` instead keeps, per layer, two buffers of shape ``(B, KV, capacity, d)``
allocated ``step`` positions at a time; each call of :meth:`LayerCache.update` writes the new
positions in place (``Backend.write``: a slice assignment on NumPy, on the device for MLX, as
mlx-lm's cache does) and returns views of the filled prefix (``Backend.slice``).  Only when the
capacity is exceeded are the buffers reallocated, ``step`` positions larger, so the amortised cost of
an append is the size of what is appended.

It uses nothing but the backend object's layout methods, so it works on every backend, whatever its
array type.  Prefill (one update of S positions), decode (S = 1), chunked prefill (several updates)
and left-padded batches (the cache stores the padding positions like any other; the engine masks
them with ``kv_mask``) are all the same call.

>>> cache = KVCache(backend, num_layers=32)                 # doctest: +SKIP
>>> k, v = cache[i].update(k_new, v_new)                     # doctest: +SKIP
>>> out = backend.gqa_attention(q, k, v, n_kv_heads, True)   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Iterator

__all__ = ["KVCache", "LayerCache"]


class LayerCache:
    """The keys and values of one attention layer.

    :ivar offset: the number of positions cached.
    :ivar capacity: the number of positions the buffers hold before they grow.
    """

    def __init__(self, backend: Any, step: int = 256):
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"KVCache: step must be an int >= 1 (positions allocated at a time), got {step!r}")
        self.backend = backend
        self.step = step
        self.keys: Any = None
        self.values: Any = None
        self.offset = 0
        self.capacity = 0
        self.reallocations = 0

    def update(self, k: Any, v: Any) -> tuple[Any, Any]:
        """Append ``k``, ``v`` (B, KV, S, d) and return the cached keys and values (B, KV, offset, d)."""
        be = self.backend
        b, kv, s, d = k.shape
        if tuple(v.shape) != (b, kv, s, d):
            raise ValueError(f"KVCache.update: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
        if self.keys is not None and tuple(self.keys.shape[:2]) + (self.keys.shape[3],) != (b, kv, d):
            raise ValueError(f"KVCache.update: k {tuple(k.shape)} does not match the cache "
                             f"{tuple(self.keys.shape)} (batch, KV heads and head size must stay the same)")
        end = self.offset + s
        if end > self.capacity:
            self._grow(b, kv, d, end)
        self.keys = be.write(self.keys, k, 2, self.offset)
        self.values = be.write(self.values, v, 2, self.offset)
        self.offset = end
        return be.slice(self.keys, 2, 0, end), be.slice(self.values, 2, 0, end)

    def _grow(self, b: int, kv: int, d: int, needed: int) -> None:
        be = self.backend
        capacity = -(-needed // self.step) * self.step
        keys, values = be.zeros((b, kv, capacity, d)), be.zeros((b, kv, capacity, d))
        if self.offset:
            keys = be.write(keys, be.slice(self.keys, 2, 0, self.offset), 2, 0)
            values = be.write(values, be.slice(self.values, 2, 0, self.offset), 2, 0)
            self.reallocations += 1
        self.keys, self.values, self.capacity = keys, values, capacity

    def state(self) -> tuple[Any, Any]:
        """The whole buffers (to evaluate them on a lazy device: ``backend.eval(*layer.state())``)."""
        return self.keys, self.values


class KVCache:
    """One :class:`LayerCache` per layer; ``cache[i].update(k, v)`` in layer ``i``.

    :param backend: the backend object whose layout methods hold the buffers.
    :param num_layers: the number of attention layers.
    :param step: positions allocated at a time (default 256, as mlx-lm).
    """

    def __init__(self, backend: Any, num_layers: int, *, step: int = 256):
        self.layers = [LayerCache(backend, step) for _ in range(num_layers)]

    def __getitem__(self, i: int) -> LayerCache:
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerCache]:
        return iter(self.layers)

    @property
    def offset(self) -> int:
        """Positions cached (the same in every layer after a full forward pass)."""
        return self.layers[0].offset if self.layers else 0

    def arrays(self) -> list[Any]:
        """Every buffer, for ``backend.eval(*cache.arrays())``."""
        return [a for layer in self.layers for a in layer.state() if a is not None]
