"""The hook specifications: the whole contract between sapient_core and a backend plugin.

A backend plugin is a module (named by an entry point in the group ``sapient_core.backends``) whose
functions are marked with :data:`sapient_core.hookimpl` and named after the hooks below.  It must
implement :func:`backend_capabilities`; every op is optional (an op a plugin lacks is served by the CPU
reference), and so are the array and memory hooks.

Calling convention, the same for every op hook: the core validates the arguments (shapes, dtypes,
values) *before* calling the hook, so an implementation may assume the documented shapes and dtypes.
Array arguments are NumPy arrays or the backend's own array type (a result of an earlier op of the
same backend).  float16 (and bfloat16, where the array type has it) are accepted and computed in
float32; the result is float32.  The hook is called with positional arguments; it may accept a
subset of the arguments, but must not give any of them a default value (pluggy would then never pass
the caller's value, and the plugin is refused).

How to decline: raise :class:`sapient_core.OpDeclined` ("reason") for a valid input the kernel does
not handle.  The dispatcher then runs the CPU reference for that call and logs the reason once (in
strict mode it raises :class:`sapient_core.BackendOpError`).  Any other exception raised by an op hook
is treated the same way.  Do not validate arguments yourself: bad input never reaches a hook.
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["HOOK_API_VERSION", "PROJECT", "hookspec", "hookimpl", "OPS", "OP_DEFAULTS", "META_HOOKS",
           "ARRAY_ARGS", "NUMPY_RESULT_OPS"]

#: The version of this hook API.  A plugin reports the version it was built for as
#: ``backend_capabilities()["api_version"]``; a plugin built for another version is refused.
HOOK_API_VERSION = 1

#: The pluggy project name; hook implementations are marked with ``pluggy.HookimplMarker(PROJECT)``.
PROJECT = "sapient_core"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marker for hook implementations: ``@hookimpl`` above each function of a plugin module.
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------------
# Capability, memory and array hooks
# ---------------------------------------------------------------------------------------------------

@hookspec
def backend_capabilities() -> dict[str, Any]:
    """Report what this plugin is and whether it can run here.  Required.

    Called once, when the plugin is loaded.  Must be cheap and must not raise for an expected
    condition (accelerator library missing, wrong OS): report ``available=False`` with the reason.

    :returns: a dict with these keys:

        - ``api_version`` (int, required): the hook API version the plugin was built for; must equal
          :data:`HOOK_API_VERSION`.
        - ``device`` (str, required): the device the plugin runs on here, lowercase: ``"cpu"``,
          ``"metal"``, ``"cuda"`` ... (when unavailable: the device it would run on).
        - ``available`` (bool, required): whether the plugin can run here.
        - ``reason`` (str): why it is unavailable, with the remedy; required when ``available`` is
          False.
        - ``thread_safe`` (bool, required): whether its ops may be called from several threads at once.
          If False, the dispatcher serialises every call into the plugin.
        - ``priority`` (int, default 0): higher wins when several available accelerator plugins
          could serve a request.  The CPU reference reports 0; MLX reports 100.
        - ``version`` (str, default: the distribution's version): the plugin's version.
        - ``unavailable_devices`` (dict[str, str], default {}): other devices the plugin can drive
          elsewhere, each with the reason it cannot here (e.g. ``{"metal": "MLX GPU execution is only
          available on macOS"}``); used to explain a request for such a device.
        - ``description`` (str, default ""): one line shown by ``sapient-backends list``.

    How to implement: build the dict from cheap checks (``platform``, ``importlib.util.find_spec``, a
    guarded import of your accelerator library inside this function, never at module import).
    """


@hookspec
def backend_memory() -> dict[str, Any]:
    """Report the memory of the device the plugin runs on.  Optional.

    The core decides whether a model fits (``sapient_core.memory.FitPolicy``); the plugin only says
    how much memory there is.  A plugin without this hook is given the system's RAM.

    :returns: a dict with these keys:

        - ``total_bytes`` (int or None, required): the device memory the fit decision should use, or
          None when it cannot be read.
        - ``source`` (str, required): where the number came from, e.g. ``"mlx.device_info()
          max_recommended_working_set_size"`` or ``"/proc/meminfo MemTotal"``.
        - ``reason`` (str): why the memory is unknown, when ``total_bytes`` is None.
        - ``details`` (dict, default {}): other figures worth showing (e.g. both the memory size and
          the recommended working set of an Apple GPU).
    """


@hookspec
def backend_to_numpy(x: Any) -> Any:
    """Return ``x`` (an array of this backend's type, or NumPy) as a NumPy array.  Optional.

    Default: ``numpy.asarray(x)``.  Used by ``Backend.to_numpy`` and to hand inputs to the CPU
    reference when an op falls back.

    :param x: an array of this backend's type (any shape and dtype), or a NumPy array.
    :returns: a NumPy array with the same shape and values (float32 stays float32).
    """


@hookspec
def backend_from_numpy(x: Any) -> Any:
    """Return the NumPy array ``x`` as this backend's array type.  Optional.

    Default: ``x`` unchanged.  Used to return the CPU reference's result of a fallback in the
    backend's own type, so that a chain of ops keeps one array type.

    :param x: a NumPy array (any shape; float32 for op results).
    :returns: the same values in this backend's array type.
    """


@hookspec
def backend_concatenate(arrays: Any, axis: int) -> Any:
    """Concatenate arrays of this backend's type along ``axis``, on the device.  Optional.

    Not an op of the contract but what an engine's KV cache needs to stay on the device: without it
    ``Backend.concatenate`` brings the arrays to NumPy.

    :param arrays: a list of arrays (this backend's type or NumPy) of equal rank.
    :param axis: the axis (may be negative).
    :returns: the concatenation, in this backend's array type.
    """


@hookspec
def backend_stats() -> dict[str, Any]:
    """Return plugin-specific statistics (e.g. weight-cache size and uploads).  Optional.

    The dict is shown under ``"plugin"`` in ``Backend.stats()``; keep its values JSON-serialisable.

    :returns: a dict of plugin-specific counters, e.g. ``{"weight_uploads": 3}``.  If the hook raises,
        ``Backend.stats()`` shows ``{"error": ...}`` instead.
    """


# ---------------------------------------------------------------------------------------------------
# Ops.  Shapes: B batch, S / Sq / Sk sequence lengths, D / h / in / out / d feature sizes,
# H query heads, KV key/value heads.  All arrays float32 unless stated (see the module docstring).
# ---------------------------------------------------------------------------------------------------

@hookspec
def linear_3d(x: Any, weight: Any) -> Any:
    """Return ``x @ weight.T``.

    :param x: (B, S, in) float32.
    :param weight: (out, in) float32.
    :returns: (B, S, out) float32, in the backend's array type.
    """


@hookspec
def linear_3d_bias(x: Any, weight: Any, bias: Any) -> Any:
    """Return ``x @ weight.T + bias``.

    :param x: (B, S, in) float32.
    :param weight: (out, in) float32.
    :param bias: (out,) float32, or None (then the result equals ``linear_3d``).
    :returns: (B, S, out) float32.
    """


@hookspec
def rms_norm(x: Any, weight: Any, eps: float) -> Any:
    """Return ``x / sqrt(mean(x**2, axis=-1) + eps) * weight``.

    :param x: (..., D) float32, at least one dimension.
    :param weight: (D,) float32.
    :param eps: float >= 0.
    :returns: same shape as x, float32.
    """


@hookspec
def layer_norm(x: Any, weight: Any, bias: Any, eps: float) -> Any:
    """Return ``(x - mean) / sqrt(var + eps) * weight + bias`` over the last axis (biased variance).

    :param x: (..., D) float32.
    :param weight: (D,) float32.
    :param bias: (D,) float32 or None (no bias).
    :param eps: float >= 0.
    :returns: same shape as x, float32.
    """


@hookspec
def silu(x: Any) -> Any:
    """Return ``x * sigmoid(x)``, with no overflow warning at large ``|x|``.

    :param x: any shape, float32.
    :returns: same shape, float32.
    """


@hookspec
def gelu(x: Any, approximate: str) -> Any:
    """Return GELU of x.

    ``approximate="none"``: ``0.5 x (1 + erf(x / sqrt(2)))``; ``"tanh"``: ``0.5 x (1 + tanh(sqrt(2/pi)
    (x + 0.044715 x**3)))`` (GPT-2, Phi, Gemma).

    :param x: any shape, float32.
    :param approximate: ``"none"`` or ``"tanh"`` (validated by the core).
    :returns: same shape, float32.
    """


@hookspec
def add(a: Any, b: Any) -> Any:
    """Return ``a + b`` with NumPy broadcasting.

    :param a: float32, any shape.
    :param b: float32, a shape that broadcasts with a's (e.g. (D,) against (B, S, D)).
    :returns: the broadcast shape, float32.
    """


@hookspec
def mul(a: Any, b: Any) -> Any:
    """Return ``a * b`` with NumPy broadcasting.

    :param a: float32, any shape.
    :param b: float32, a shape that broadcasts with a's (e.g. (D,) against (B, S, D)).
    :returns: the broadcast shape, float32.
    """


@hookspec
def apply_rope_positions(x: Any, positions: Any, base: float) -> Any:
    """Apply rotate-half (NeoX / Hugging Face) rotary embeddings.

    ``inv_freq[i] = base ** (-2i / D)`` for i < D/2; ``angle[s, i] = positions[s] * inv_freq[i]``;
    ``out = x * cos + rotate_half(x) * sin`` with cos/sin repeated over both halves of the last axis and
    ``rotate_half(x) = concat(-x[..., D/2:], x[..., :D/2])``.

    :param x: (B, H, S, D) float32, D even.
    :param positions: (S,) integer array (NumPy or the backend's type): the position of each row;
        need not be contiguous or sorted.
    :param base: float > 0 (e.g. 10000.0).
    :returns: (B, H, S, D) float32.
    """


@hookspec
def apply_rope_partial(x: Any, positions: Any, base: float, rotary_dim: int) -> Any:
    """Apply rotate-half RoPE to the first ``rotary_dim`` channels only (Phi); the rest are copied.

    As :func:`apply_rope_positions` with D replaced by ``rotary_dim`` in ``inv_freq`` and in the halves.

    :param x: (B, H, S, D) float32.
    :param positions: (S,) integer array.
    :param base: float > 0.
    :param rotary_dim: int, even, 2 <= rotary_dim <= D.
    :returns: (B, H, S, D) float32.
    """


@hookspec
def gqa_attention(q: Any, k: Any, v: Any, n_kv_heads: int, causal: bool) -> Any:
    """Return grouped-query scaled dot-product attention ``softmax(q k^T / sqrt(d)) v``.

    Key/value head j serves query heads ``j*H/KV ... (j+1)*H/KV - 1`` (Hugging Face ``repeat_kv``
    order).  With ``causal``, query i sees keys ``<= i + (Sk - Sq)`` (the KV-cache offset).

    :param q: (B, H, Sq, d) float32.
    :param k: (B, KV, Sk, d) float32.
    :param v: (B, KV, Sk, d) float32.
    :param n_kv_heads: KV; H is divisible by it.
    :param causal: bool; when True, Sq <= Sk.
    :returns: (B, H, Sq, d) float32.
    """


@hookspec
def logits_from_hidden(hidden: Any, lm_head: Any) -> Any:
    """Return the logits of the last position: ``hidden[:, -1] @ lm_head.T``.

    :param hidden: (B, S, h) float32, S >= 1.
    :param lm_head: (vocab, h) float32.
    :returns: (B, vocab) float32 **NumPy** array.
    """


@hookspec
def all_logits_from_hidden(hidden: Any, lm_head: Any) -> Any:
    """Return the logits of every position: ``hidden @ lm_head.T``.

    :param hidden: (B, S, h) float32.
    :param lm_head: (vocab, h) float32.
    :returns: (B, S, vocab) float32 **NumPy** array.
    """


#: Every op, in the order of the contract, with its hook's argument names.
OPS: dict[str, tuple[str, ...]] = {
    "linear_3d": ("x", "weight"),
    "linear_3d_bias": ("x", "weight", "bias"),
    "rms_norm": ("x", "weight", "eps"),
    "layer_norm": ("x", "weight", "bias", "eps"),
    "silu": ("x",),
    "gelu": ("x", "approximate"),
    "add": ("a", "b"),
    "mul": ("a", "b"),
    "apply_rope_positions": ("x", "positions", "base"),
    "apply_rope_partial": ("x", "positions", "base", "rotary_dim"),
    "gqa_attention": ("q", "k", "v", "n_kv_heads", "causal"),
    "logits_from_hidden": ("hidden", "lm_head"),
    "all_logits_from_hidden": ("hidden", "lm_head"),
}

#: The op arguments that carry arrays (the others are scalars): what the dispatcher converts to NumPy
#: when the CPU reference takes over, and what the conformance kit hands over in the backend's type.
ARRAY_ARGS = frozenset({"x", "weight", "bias", "a", "b", "positions", "q", "k", "v", "hidden", "lm_head"})

#: The ops whose result is a NumPy array whatever the backend (the others return the backend's type).
NUMPY_RESULT_OPS = frozenset({"logits_from_hidden", "all_logits_from_hidden"})

#: Defaults of the backend object's methods (hooks themselves never take defaults).
OP_DEFAULTS: dict[str, dict[str, Any]] = {"gelu": {"approximate": "none"}}

#: The hooks that are not ops, with their argument names.
META_HOOKS: dict[str, tuple[str, ...]] = {
    "backend_capabilities": (),
    "backend_memory": (),
    "backend_to_numpy": ("x",),
    "backend_from_numpy": ("x",),
    "backend_concatenate": ("arrays", "axis"),
    "backend_stats": (),
}
