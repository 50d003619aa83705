"""The ``example`` backend: three ops done its own way, the rest left to the CPU reference.

- ``linear_3d``: a blocked matmul (output features in blocks of :data:`BLOCK`); declines float16 and
  bfloat16 input.
- ``rms_norm``: multiplies by the reciprocal square root; declines a non-contiguous ``x``.
- ``silu``: ``x * sigmoid(x)`` from ``exp(-|x|)``, so it never overflows.

Every other op (attention, RoPE, logits ...) is served by the CPU reference: a backend implements the
ops it can do better and nothing else.  A declined input is served by the CPU reference too (and
reported by ``sapient-backends check`` as "declined").
"""

import numpy as np

from sapient_core import OpDeclined, hookimpl

#: Output features computed per block of the matmul.
BLOCK = 64


@hookimpl
def backend_capabilities():
    return {
        "api_version": 1,              # the hook API this plugin was written for: a literal
        "device": "cpu",
        "available": True,
        "thread_safe": True,
        "priority": 10,
        "description": "example: blocked NumPy matmul, rms_norm, silu",
    }


@hookimpl
def linear_3d(x, weight):
    if x.dtype != np.float32 or weight.dtype != np.float32:
        other = x.dtype if x.dtype != np.float32 else weight.dtype
        raise OpDeclined(f"{other} input: the example's matmul is float32 only")
    b, s, n = x.shape
    rows = x.reshape(b * s, n)
    out = np.empty((b * s, weight.shape[0]), np.float32)
    for start in range(0, weight.shape[0], BLOCK):
        block = weight[start:start + BLOCK]
        np.matmul(rows, block.T, out=out[:, start:start + BLOCK])
    return out.reshape(b, s, weight.shape[0])


@hookimpl
def rms_norm(x, weight, eps):
    if not x.flags.c_contiguous:
        raise OpDeclined("non-contiguous x: the example's rms_norm reads rows in place")
    x = x.astype(np.float32, copy=False)
    mean_square = np.mean(np.square(x), axis=-1, keepdims=True)
    return x * (1.0 / np.sqrt(mean_square + np.float32(eps))) * weight.astype(np.float32, copy=False)


@hookimpl
def silu(x):
    x = x.astype(np.float32, copy=False)
    e = np.exp(-np.abs(x))                     # in (0, 1]: no overflow for any x
    return np.where(x >= 0, x / (1 + e), x * e / (1 + e)).astype(np.float32, copy=False)
