"""The MLX plugin: the entry point ``mlx`` in the group ``sapient_core.backends``.

Importing this module imports neither MLX nor NumPy: MLX is imported by the first hook that needs it
(``backend_capabilities``, when the registry loads the plugin), through :mod:`._runtime`, which turns
any import failure into ``available=False`` with the reason and the remedy.  The op hooks forward to
:mod:`.kernels` (imported on the first op); the core serialises every call into this plugin
(``thread_safe=False``), falls back to the CPU reference when a kernel raises or declines, and validates
all input first.  The kernels build every graph on the plugin's own stream and evaluate under the
plugin's own lock (:mod:`.device`), so results may cross threads.  It implements hook API 2: every op
of contract v2, ``backend_eval`` and the layout hooks an engine and ``sapient_core.KVCache`` use.

Imports inside the plugin form no cycle: ``plugin`` -> ``cache``, ``device``, ``kernels``;
``kernels`` -> ``cache``, ``device``; ``cache`` -> ``device`` (lazily, for its default limit);
``device`` -> ``capabilities`` -> ``_runtime``.
"""

from __future__ import annotations

from typing import Any

from sapient_core import hookimpl

from . import __version__, _runtime

#: The hook API version this plugin is built for: a literal, so that a core that no longer speaks it
#: refuses the plugin instead of taking it for its own version.
HOOK_API_VERSION = 2
#: Higher than the CPU reference (0): ``auto`` prefers MLX whenever it runs on a GPU and the model fits.
PRIORITY = 100

_K: Any = None


def _kernels() -> Any:
    global _K
    if _K is None:
        from . import kernels
        _K = kernels
    return _K


# --- capability, memory and array hooks ------------------------------------------------------------

@hookimpl
def backend_capabilities() -> dict[str, Any]:
    from .capabilities import decide, gather_facts
    report = decide(gather_facts())
    report.update(api_version=HOOK_API_VERSION, version=__version__, priority=PRIORITY, thread_safe=False)
    return report


@hookimpl
def backend_memory() -> dict[str, Any]:
    """The device's memory, whether it is unified with the host's, and what the plugin holds there now.

    ``unified_memory`` (top level and in ``details``): True on Apple GPUs and MLX's CPU device, where a
    host weight array and its device copy are two copies in one memory.  ``details`` also carries
    ``weight_cache_bytes`` / ``weight_cache_max_bytes`` (device copies of host weights, held by the
    plugin) and ``mlx_active_bytes`` (every MLX buffer alive: the cache, weights handed over with
    ``from_numpy``, activations, KV caches).
    """
    from .device import memory
    report = memory()
    if "details" not in report:                     # MLX did not import: nothing more to add
        return report
    details = report["details"]
    try:
        from .cache import WEIGHTS
        stats = WEIGHTS.stats()
        details["weight_cache_bytes"] = stats["bytes"]
        details["weight_cache_max_bytes"] = stats["max_bytes"]
        details["mlx_active_bytes"] = int(_runtime.import_mlx().get_active_memory())
    except Exception as exc:  # noqa: BLE001 - the figures are extras; the report stands without them
        details["held_error"] = f"{type(exc).__name__}: {exc}"
    return report


@hookimpl
def backend_to_numpy(x):
    return _kernels().to_host(x)


@hookimpl
def backend_from_numpy(x):
    return _kernels().to_device(x)


@hookimpl
def backend_concatenate(arrays, axis):
    return _kernels().concatenate(arrays, axis)


@hookimpl
def backend_stats() -> dict[str, Any]:
    from .cache import TRANSFERS, WEIGHTS
    out: dict[str, Any] = {"weight_cache": WEIGHTS.stats(), "transfers": TRANSFERS.stats(),
                           "matmul_precision": _runtime.precision(), "global_state": _runtime.global_state()}
    try:
        mx = _runtime.import_mlx()
        from . import device
        out["mlx_version"] = str(mx.__version__)
        out["mlx_device"] = str(device.mx_device())
        out["mlx_stream"] = str(device.stream())
        if _K is not None:
            out["evaluation"] = _K.evaluation_stats()
    except _runtime.MLXUnavailable as exc:
        out["mlx_error"] = exc.reason
    return out


# --- ops: each forwards to the kernel of the same name ----------------------------------------------

@hookimpl
def linear_3d(x, weight):
    return (_K or _kernels()).linear_3d(x, weight)


@hookimpl
def linear_3d_bias(x, weight, bias):
    return (_K or _kernels()).linear_3d_bias(x, weight, bias)


@hookimpl
def rms_norm(x, weight, eps):
    return (_K or _kernels()).rms_norm(x, weight, eps)


@hookimpl
def layer_norm(x, weight, bias, eps):
    return (_K or _kernels()).layer_norm(x, weight, bias, eps)


@hookimpl
def silu(x):
    return (_K or _kernels()).silu(x)


@hookimpl
def gelu(x, approximate):
    return (_K or _kernels()).gelu(x, approximate)


@hookimpl
def add(a, b):
    return (_K or _kernels()).add(a, b)


@hookimpl
def mul(a, b):
    return (_K or _kernels()).mul(a, b)


@hookimpl
def apply_rope_positions(x, positions, base):
    return (_K or _kernels()).apply_rope_positions(x, positions, base)


@hookimpl
def apply_rope_partial(x, positions, base, rotary_dim):
    return (_K or _kernels()).apply_rope_partial(x, positions, base, rotary_dim)


@hookimpl
def apply_rope(x, positions, inv_freq, attention_scaling):
    return (_K or _kernels()).apply_rope(x, positions, inv_freq, attention_scaling)


@hookimpl
def gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask):
    return (_K or _kernels()).gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask)


@hookimpl
def logits_from_hidden(hidden, lm_head, softcap):
    return (_K or _kernels()).logits_from_hidden(hidden, lm_head, softcap)


@hookimpl
def all_logits_from_hidden(hidden, lm_head, softcap):
    return (_K or _kernels()).all_logits_from_hidden(hidden, lm_head, softcap)


@hookimpl
def embedding(ids, table):
    return (_K or _kernels()).embedding(ids, table)


# --- evaluation and layout: what an engine and sapient_core.KVCache need between ops, on the device ------

@hookimpl
def backend_eval(arrays):
    """Evaluate results on the device, no host copy (``Backend.eval(*arrays)``)."""
    return _kernels().evaluate(arrays)


@hookimpl
def backend_reshape(x, shape):
    return _kernels().reshape(x, shape)


@hookimpl
def backend_transpose(x, axes):
    return _kernels().transpose(x, axes)


@hookimpl
def backend_zeros(shape):
    """A float32 array of zeros of ``shape`` on the device (a preallocated KV cache)."""
    return _kernels().zeros(shape)


@hookimpl
def backend_write(dst, src, axis, start):
    """``dst`` with ``src`` written along ``axis`` from ``start``; returns the updated array."""
    return _kernels().write(dst, src, axis, start)


@hookimpl
def backend_slice(x, axis, start, stop):
    return _kernels().slice(x, axis, start, stop)
