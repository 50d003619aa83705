"""Fixtures for the CPU plugin's tests: every op is run both through the backend object
(``sapient_core.get_backend("cpu")``: validation + dispatch) and as the raw kernel function, and on
each of the plugin's code paths (fixture ``path``):

- ``numpy``: the NumPy kernels (``SAPIENT_CPU_FUSED=0``);
- ``fused``: the fused Numba kernels on the calling thread (``SAPIENT_CPU_THREADS=1``), attention with
  its products in Numba loops and NumPy's matmul (``SAPIENT_CPU_BLAS_IN_KERNELS=0``: what runs where
  NumPy's BLAS has no 64-bit cblas_sgemm);
- ``parallel``: the fused kernels' parallel versions, forced for every input size (two threads; with
  one CPU, Numba runs the same parallel code on one thread), attention with its products in NumPy's
  BLAS called from the kernels (the default where NumPy has it).

The serial and parallel versions of each kernel compute the same bits (``test_cpu_paths.py``, for
attention with and without BLAS in the kernels), so these three paths cover all four.
"""

from __future__ import annotations

import numpy as np
import pytest

from cpu_numpy_blas import NUMPY_HAS_OPENBLAS
from sapient_backend_cpu import kernels


@pytest.fixture(scope="session")
def cpu_backend():
    import sapient_core

    return sapient_core.get_backend("cpu")


class KernelsWithDefaults:
    """The kernels module, with the v2 arguments defaulted as the backend object defaults them
    (hooks and kernels never take defaults: SPEC §8), so a test can call either the same way."""

    def __getattr__(self, name):
        return getattr(kernels, name)

    @staticmethod
    def gqa_attention(q, k, v, n_kv_heads, causal, scale=None, sliding_window=None, softcap=None, kv_mask=None):
        return kernels.gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask)

    @staticmethod
    def logits_from_hidden(hidden, lm_head, softcap=None):
        return kernels.logits_from_hidden(hidden, lm_head, softcap)

    @staticmethod
    def all_logits_from_hidden(hidden, lm_head, softcap=None):
        return kernels.all_logits_from_hidden(hidden, lm_head, softcap)

    @staticmethod
    def apply_rope(x, positions, inv_freq, attention_scaling=1.0):
        return kernels.apply_rope(x, positions, inv_freq, attention_scaling)


PATHS = {
    "numpy": dict(fused=False, threads=1),
    "fused": dict(fused=True, threads=1, blas_in_kernels=False),
    "parallel": dict(fused=True, threads=2, parallel_min=0),
}


@pytest.fixture(params=list(PATHS))
def path(request):
    """Run the test on one code path (see the module docstring), then restore the defaults."""
    state = kernels.configure(reset=True, **PATHS[request.param])
    # Numba is a dependency of the plugin: a fused path that silently ran NumPy would test nothing,
    # and so would a parallel path without the BLAS kernels where NumPy's BLAS is OpenBLAS
    assert state["fused"] == (request.param != "numpy"), state
    assert state["blas_in_kernels"] == (request.param == "parallel" and NUMPY_HAS_OPENBLAS), state
    yield request.param
    kernels.configure(reset=True)


@pytest.fixture(params=["backend", "kernels"])
def ops(request, cpu_backend, path):
    """Something with one attribute per op: the backend object, or the kernels (v2 arguments defaulted)."""
    return cpu_backend if request.param == "backend" else KernelsWithDefaults()


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)
