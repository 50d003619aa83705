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


@hookimpl
def backend_capabilities():
    return {
        "api_version": 2,               # the hook API these kernels implement: a literal, never imported
        "version": __version__,
        "device": "cpu",
        "available": True,
        "priority": 0,
        "thread_safe": True,
        "description": "CPU reference kernels (float32; NumPy, fused with Numba)",
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
apply_rope = hookimpl(kernels.apply_rope)
gqa_attention = hookimpl(kernels.gqa_attention)
logits_from_hidden = hookimpl(kernels.logits_from_hidden)
all_logits_from_hidden = hookimpl(kernels.all_logits_from_hidden)
embedding = hookimpl(kernels.embedding)
