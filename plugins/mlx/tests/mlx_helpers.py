"""What several MLX test modules share: the float32 dot-product bound and whether MLX runs on its CPU
device here (no Metal, no CUDA)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np

EPS32 = 2.0 ** -24

#: True on MLX's CPU device (Linux CI): no Apple or NVIDIA GPU is available.
ON_CPU_DEVICE = not mx.metal.is_available() and not mx.cuda.is_available()


def dot_tol(x, w):
    """Twice the float32 error bound of x @ w.T (K * 2**-24 * sum |x_k w_k|), elementwise max."""
    x = np.abs(np.asarray(x, np.float64))
    w = np.abs(np.asarray(w, np.float64))
    k = x.shape[-1]
    return 2 * k * EPS32 * float((x @ w.T).max(initial=0.0)) + 1e-30
