"""A small engine step written against sapient_core's public API, for the type checker.

tests/test_typing.py runs mypy on this file: every op method must be visible on ``Backend`` with its
signature, so correct engine code passes and a wrong call fails.  It is never imported by the tests.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import sapient_core
from sapient_core import Backend, Stats


def mlp_step(backend: Backend, x: npt.NDArray[np.float32], w_norm: npt.NDArray[np.float32],
             w_gate: npt.NDArray[np.float32], w_up: npt.NDArray[np.float32],
             w_down: npt.NDArray[np.float32]) -> object:
    h = backend.rms_norm(x, w_norm, 1e-6)
    gate = backend.silu(backend.linear_3d(h, w_gate))
    up = backend.linear_3d(h, w_up)
    y = backend.linear_3d(backend.mul(gate, up), w_down)
    y = backend.gelu(y)                                   # the default approximation
    y = backend.gelu(y, approximate="tanh")
    return backend.add(x, y)


def logits(backend: Backend, h: object, lm_head: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return backend.logits_from_hidden(h, lm_head)       # NumPy whatever the backend


def main() -> None:
    backend = sapient_core.get_backend("auto", model_bytes=0)
    stats: Stats = backend.stats()
    print(backend.name, stats.ops["rms_norm"].calls)
    o = backend.gqa_attention(np.zeros((1, 4, 1, 8), np.float32), np.zeros((1, 2, 3, 8), np.float32),
                              np.zeros((1, 2, 3, 8), np.float32), 2, True)
    print(backend.to_numpy(o).shape)
