"""The weight cache and the host <-> device transfer counters.  Imports neither MLX nor NumPy.

Weights (the ``weight`` / ``bias`` of linears and norms, ``lm_head``, the embedding table) may arrive
as NumPy arrays on every call.  Uploading them every time would make a decode step copy the whole
model to the device, so each one is uploaded once and cached **by the identity of the host array**:

- the key is ``id(array)``, and every hit is validated with a weak reference to the array: a new
  array that reuses a freed array's address is never served the old array's upload;
- a ``weakref.finalize`` on the array evicts its entry when the array is freed (if the cache's lock
  is busy at that moment, for instance when the array is freed inside the cache's own critical
  section, the entry is queued and dropped at the cache's next use);
- uploads keep the weight's dtype (float16 stays float16 on the device, half the memory of a float32
  copy); the kernels convert to float32 inside the op;
- the cache holds at most ``max_bytes`` of device memory.  **When it is full it keeps what it holds and
  streams the rest**: a weight that does not fit is uploaded for that call and not cached.  A forward
  pass uses its weights in the same order every step, and least-recently-used eviction would evict
  each weight just before its next use (0 hits per step as soon as the model exceeds the limit by
  one weight); keeping a fixed resident set hits on every weight that fits.  So that a new working
  set (another model, the first one no longer used) still gets cached, an entry that has not been
  used for more than two passes over the weights the cache knows (``2 x`` the live weights it has
  seen, cached or streamed, counted in cache accesses) is evicted to make room;
- the default limit is the largest model ``get_backend("auto")`` accepts on the device (the core's
  fit policy: ``(memory - 2 GiB) / 1.5`` by default), so a model auto accepts always fits whole;
  ``SAPIENT_MLX_WEIGHT_CACHE_BYTES`` or :func:`sapient_backend_mlx.configure_weight_cache` change it;
- a cached upload is a copy: modifying a weight array in place after its first use is not seen by
  the cache (call :func:`sapient_backend_mlx.clear_weight_cache`).  On unified memory (Apple GPUs,
  MLX's CPU device) the host array and its upload are two copies in the same memory: hand the weights
  over instead (``backend.from_numpy(w)``, then drop the host array; see README.md).

Activations (everything else) are converted afresh on every call.  :data:`TRANSFERS` counts every
host -> device upload (weights and activations apart) and every device -> host copy, so that a
benchmark can report the copies of a decode step; both appear in ``backend.stats().plugin``.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Any, Callable

__all__ = ["WeightCache", "Transfers", "WEIGHTS", "TRANSFERS", "ENV_LIMIT", "FALLBACK_LIMIT"]

ENV_LIMIT = "SAPIENT_MLX_WEIGHT_CACHE_BYTES"
FALLBACK_LIMIT = 4 * 1024 ** 3


class _Entry:
    __slots__ = ("key", "ref", "value", "nbytes", "finalizer", "last")

    def __init__(self, key: int, ref: Any, value: Any, nbytes: int):
        self.key = key
        self.ref = ref
        self.value = value
        self.nbytes = nbytes
        self.finalizer: Any = None
        self.last = 0


class WeightCache:
    """Device copies of host weight arrays, keyed by identity, bounded in bytes; keeps what fits.

    :param max_bytes: the limit; None means the default, resolved on first use: the environment variable
        ``SAPIENT_MLX_WEIGHT_CACHE_BYTES``, else ``default_limit()`` (a callable returning ``(bytes,
        source)``; for :data:`WEIGHTS`, the largest model ``auto`` accepts on the device), else 4 GiB.
    """

    def __init__(self, max_bytes: int | None = None):
        self._lock = threading.Lock()
        self._entries: "collections.OrderedDict[int, _Entry]" = collections.OrderedDict()   # LRU first
        self._streamed: dict[int, _Entry] = {}         # live weights seen that did not fit (no value)
        self._dead: collections.deque = collections.deque()
        self._bytes = 0
        self._tick = 0
        self._max_bytes = max_bytes
        self._limit_source = "argument" if max_bytes is not None else ""
        self.default_limit: Callable[[], tuple[int, str]] | None = None
        self.uploads = 0
        self.upload_bytes = 0
        self.hits = 0
        self.evictions = 0
        self.freed = 0
        self.streamed = 0
        self.streamed_bytes = 0

    # --- configuration ----------------------------------------------------------------------------

    def _resolve_limit(self) -> int:
        if self._max_bytes is None:
            env = os.environ.get(ENV_LIMIT, "").strip()
            if env:
                try:
                    value = int(env)
                    if value < 0:
                        raise ValueError
                except ValueError:
                    raise ValueError(f"{ENV_LIMIT}={env!r} is not a byte count (a non-negative int). To remedy "
                                     f"this, set it to e.g. 8589934592 (8 GiB) or unset it") from None
                self._max_bytes, self._limit_source = value, ENV_LIMIT
            elif self.default_limit is not None:
                self._max_bytes, self._limit_source = self.default_limit()
            else:
                self._max_bytes, self._limit_source = FALLBACK_LIMIT, "fallback (4 GiB)"
        return self._max_bytes

    def configure(self, max_bytes: int | None = None) -> int:
        """Set the limit (None: back to the default); evict down to it at once; return it."""
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes < 0):
            raise ValueError(f"configure_weight_cache: max_bytes must be a non-negative int or None, got "
                             f"{max_bytes!r}")
        with self._lock:
            self._max_bytes = max_bytes
            self._limit_source = "configure_weight_cache()" if max_bytes is not None else ""
            limit = self._resolve_limit()
            while self._bytes > limit and self._entries:          # least recently used first
                self._remove_locked(next(iter(self._entries.values())))
                self.evictions += 1
            return limit

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            for entry in list(self._entries.values()) + list(self._streamed.values()):
                self._remove_locked(entry)

    # --- the hot path -----------------------------------------------------------------------------

    def get(self, host: Any, upload: Callable[[Any], Any]) -> Any:
        """The device copy of ``host``: cached, or ``upload(host)`` (then cached if it fits)."""
        key = id(host)
        with self._lock:
            if self._dead:
                self._purge_locked()
            self._tick += 1
            entry = self._entries.get(key)
            if entry is not None:
                if entry.ref() is host:
                    self._entries.move_to_end(key)
                    entry.last = self._tick
                    self.hits += 1
                    return entry.value
                # The address was reused by a new array before the old one's finalizer was processed.
                self._remove_locked(entry)
                self.freed += 1
            value = upload(host)
            nbytes = int(getattr(value, "nbytes", 0))
            self.uploads += 1
            self.upload_bytes += nbytes
            limit = self._resolve_limit()
            if self._bytes + nbytes > limit and nbytes <= limit:
                self._evict_idle_locked(self._bytes + nbytes - limit)
            if self._bytes + nbytes > limit:
                self._stream_locked(key, host, nbytes)
                return value
            seen = self._streamed.get(key)
            if seen is not None:
                self._remove_locked(seen)
            self._entries[key] = self._track(key, host, value, nbytes)
            self._bytes += nbytes
            return value

    def _track(self, key: int, host: Any, value: Any, nbytes: int) -> _Entry:
        """A new entry for ``host``, used now, forgotten when ``host`` is freed."""
        entry = _Entry(key, weakref.ref(host), value, nbytes)
        entry.last = self._tick
        entry.finalizer = weakref.finalize(host, self._on_free, entry)
        entry.finalizer.atexit = False
        return entry

    def _stream_locked(self, key: int, host: Any, nbytes: int) -> None:
        """Record that ``host`` was used but not cached (it counts among the weights the cache knows)."""
        self.streamed += 1
        self.streamed_bytes += nbytes
        seen = self._streamed.get(key)
        if seen is not None and seen.ref() is host:
            seen.last = self._tick
            return
        if seen is not None:
            self._remove_locked(seen)
        self._streamed[key] = self._track(key, host, None, nbytes)

    def _evict_idle_locked(self, needed: int) -> None:
        """Evict least recently used entries idle for more than two passes over the known weights."""
        horizon = 2 * (len(self._entries) + len(self._streamed) + 1)
        freed = 0
        while freed < needed and self._entries:
            oldest = next(iter(self._entries.values()))
            if self._tick - oldest.last <= horizon:
                break
            freed += oldest.nbytes
            self._remove_locked(oldest)
            self.evictions += 1

    def _on_free(self, entry: _Entry) -> None:
        # Runs when the host array is freed, in whatever thread freed it.  Never block here: if the lock
        # is busy (maybe held by this very thread), queue the entry for the next cache operation.
        if self._lock.acquire(blocking=False):
            try:
                self._forget_locked(entry)
            finally:
                self._lock.release()
        else:
            self._dead.append(entry)

    def _forget_locked(self, entry: _Entry) -> None:
        if self._entries.get(entry.key) is entry:
            self.freed += 1
        self._remove_locked(entry)

    def _purge_locked(self) -> None:
        while self._dead:
            self._forget_locked(self._dead.popleft())

    def _remove_locked(self, entry: _Entry) -> None:
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
            self._bytes -= entry.nbytes
        elif self._streamed.get(entry.key) is entry:
            del self._streamed[entry.key]
        if entry.finalizer is not None:
            entry.finalizer.detach()
        entry.value = None

    # --- reporting --------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            self._purge_locked()
            return len(self._entries)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._purge_locked()
            limit = self._resolve_limit()
            return {"entries": len(self._entries), "bytes": self._bytes, "max_bytes": limit,
                    "max_bytes_source": self._limit_source, "uploads": self.uploads,
                    "upload_bytes": self.upload_bytes, "hits": self.hits, "evictions": self.evictions,
                    "freed": self.freed, "streamed": self.streamed, "streamed_bytes": self.streamed_bytes,
                    "known_weights": len(self._entries) + len(self._streamed)}


class Transfers:
    """Counts of host -> device uploads and device -> host copies (calls are serialised by the core)."""

    def __init__(self) -> None:
        self.activation_uploads = 0
        self.activation_upload_bytes = 0
        self.device_to_host = 0
        self.device_to_host_bytes = 0

    def upload(self, nbytes: int) -> None:
        self.activation_uploads += 1
        self.activation_upload_bytes += nbytes

    def download(self, nbytes: int) -> None:
        self.device_to_host += 1
        self.device_to_host_bytes += nbytes

    def stats(self) -> dict[str, int]:
        return {"activation_uploads": self.activation_uploads,
                "activation_upload_bytes": self.activation_upload_bytes,
                "device_to_host": self.device_to_host, "device_to_host_bytes": self.device_to_host_bytes}


def _device_default_limit() -> tuple[int, str]:
    """The weight cache's default limit: the largest model ``get_backend("auto")`` accepts here.

    ``auto`` takes a device when ``model_bytes * factor <= total - reserve`` (the core's fit policy,
    1.5 and 2 GiB by default), so every model it accepts fits the cache whole.  4 GiB when the memory is
    unknown.
    """
    from .device import memory      # lazy: imports MLX; device.py does not import this module
    total = memory().get("total_bytes")
    if not isinstance(total, int) or total <= 0:
        return FALLBACK_LIMIT, "4 GiB (device memory unknown)"
    from sapient_core import memory as core_memory
    policy = core_memory.DEFAULT_POLICY
    usable = total - policy.reserve_bytes
    if usable <= 0:
        return 0, f"0: the device memory ({total} B) is below the fit policy's reserve"
    num, den = float(policy.factor).as_integer_ratio()
    largest = usable * den // num                 # the largest m with ceil(m * factor) <= usable
    return largest, (f"the largest model get_backend('auto') accepts: (memory - {policy.reserve_bytes} B "
                     f"reserve) / {policy.factor:g}")


#: The process-wide weight cache and transfer counters of the MLX plugin.
WEIGHTS = WeightCache()
WEIGHTS.default_limit = _device_default_limit
TRANSFERS = Transfers()
