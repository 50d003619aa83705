"""The MLX plugin: the entry point ``mlx`` in the group ``sapient_core.backends``.

Importing this module imports neither MLX nor NumPy: MLX is imported by the first hook that needs it
(``backend_capabilities``, when the registry loads the plugin), through :mod:`._runtime`, which turns
any import failure into ``available=False`` with the reason and the remedy.  The op hooks forward to
:mod:`.kernels` (imported on the first op); the core serialises every call into this plugin
(``thread_safe=False``: MLX's evaluation is not safe to drive from several threads at once), falls
back to the CPU reference when a kernel raises or declines, and validates all input first.
"""

from __future__ import annotations

from typing import Any

from sapient_core import hookimpl

from . import __version__, _runtime

#: The hook API version this plugin is built for: a literal, so that a core that no longer speaks it
#: refuses the plugin instead of taking it for its own version.
HOOK_API_VERSION = 1
#: Higher than the CPU reference (0): ``auto`` prefers MLX whenever it runs on a GPU and the model fits.
PRIORITY = 100

_K: Any = None


def _kernels() -> Any:
    global _K
    if _K is None:
        from . import kernels
        _K = kernels
    return _K


def _default_cache_limit() -> tuple[int, str]:
    from .cache import FALLBACK_LIMIT
    total = backend_memory().get("total_bytes")
    if isinstance(total, int) and total > 0:
        return total // 2, "half the device memory of backend_memory()"
    return FALLBACK_LIMIT, "4 GiB (device memory unknown)"


def _device() -> str:
    from .capabilities import decide, gather_facts
    return decide(gather_facts())["device"]


# --- capability, memory and array hooks ------------------------------------------------------------

@hookimpl
def backend_capabilities() -> dict[str, Any]:
    from .capabilities import decide, gather_facts
    report = decide(gather_facts())
    report.update(api_version=HOOK_API_VERSION, version=__version__, priority=PRIORITY, thread_safe=False)
    return report


@hookimpl
def backend_memory() -> dict[str, Any]:
    from sapient_core.memory import system_memory

    from .capabilities import memory_report
    try:
        mx = _runtime.import_mlx()
    except _runtime.MLXUnavailable as exc:
        return {"total_bytes": None, "source": "mlx.core.device_info()",
                "reason": f"MLX did not import ({exc.error})"}
    try:
        info = dict(mx.device_info())
    except Exception as exc:  # noqa: BLE001 - an old or odd MLX: say so, use what can be known
        info = {"device_info_error": f"{type(exc).__name__}: {exc}"}
    return memory_report(_device(), info, system_memory)


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
                           "matmul_precision": _runtime.precision()}
    try:
        mx = _runtime.import_mlx()
        out["mlx_version"] = str(mx.__version__)
        out["mlx_device"] = str(mx.default_device())
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
def gqa_attention(q, k, v, n_kv_heads, causal):
    return (_K or _kernels()).gqa_attention(q, k, v, n_kv_heads, causal)


@hookimpl
def logits_from_hidden(hidden, lm_head):
    return (_K or _kernels()).logits_from_hidden(hidden, lm_head)


@hookimpl
def all_logits_from_hidden(hidden, lm_head):
    return (_K or _kernels()).all_logits_from_hidden(hidden, lm_head)
