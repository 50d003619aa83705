"""The CPU reference plugin: the entry point ``cpu`` in the group ``sapient_core.backends``.

This module is what a backend author copies: a capability hook, a memory hook (omitted here: the core
then uses the system's RAM) and one ``@hookimpl`` function per op.  The kernels in :mod:`.kernels` already have the
hooks' exact signatures (no defaults), so they are marked directly: the dispatcher then calls the
kernel itself, with no wrapper frame in between.  It imports only pluggy and NumPy,
and does not import sapient_core (sapient-core depends on this distribution, not the reverse).
"""

from __future__ import annotations

import pluggy

from . import __version__, kernels

hookimpl = pluggy.HookimplMarker("sapient_core")

HOOK_API_VERSION = 1


@hookimpl
def backend_capabilities():
    return {
        "api_version": HOOK_API_VERSION,
        "version": __version__,
        "device": "cpu",
        "available": True,
        "priority": 0,
        "thread_safe": True,
        "description": "NumPy reference kernels (float32)",
    }



# One line per op: the kernel, marked as the implementation of the hook of the same name.
linear_3d = hookimpl(kernels.linear_3d)
linear_3d_bias = hookimpl(kernels.linear_3d_bias)
rms_norm = hookimpl(kernels.rms_norm)
layer_norm = hookimpl(kernels.layer_norm)
silu = hookimpl(kernels.silu)
gelu = hookimpl(kernels.gelu)
add = hookimpl(kernels.add)
mul = hookimpl(kernels.mul)
apply_rope_positions = hookimpl(kernels.apply_rope_positions)
apply_rope_partial = hookimpl(kernels.apply_rope_partial)


# Contract v2 (SPEC §8) grows three of the ops by trailing arguments, and adds ``apply_rope`` and
# ``embedding``.  The kernels already have the v2 signatures; until the core's hookspecs are v2 (it
# refuses hook implementations with unknown names or arguments), these v1 hooks pass the v1
# behaviour's values (None: no scale override, window, softcap or padding mask), and the two new
# kernels are not marked.  When the v2 hookspecs land, replace the three wrappers by
#     gqa_attention = hookimpl(kernels.gqa_attention)
#     logits_from_hidden = hookimpl(kernels.logits_from_hidden)
#     all_logits_from_hidden = hookimpl(kernels.all_logits_from_hidden)
#     apply_rope = hookimpl(kernels.apply_rope)
#     embedding = hookimpl(kernels.embedding)

@hookimpl
def gqa_attention(q, k, v, n_kv_heads, causal):
    return kernels.gqa_attention(q, k, v, n_kv_heads, causal, None, None, None, None)


@hookimpl
def logits_from_hidden(hidden, lm_head):
    return kernels.logits_from_hidden(hidden, lm_head, None)


@hookimpl
def all_logits_from_hidden(hidden, lm_head):
    return kernels.all_logits_from_hidden(hidden, lm_head, None)
