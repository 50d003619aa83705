"""Fixtures for the CPU plugin's tests: every op is run both through the backend object
(``sapient_core.get_backend("cpu")``: validation + dispatch) and as the raw kernel function."""

from __future__ import annotations

import numpy as np
import pytest

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


@pytest.fixture(params=["backend", "kernels"])
def ops(request, cpu_backend):
    """Something with one attribute per op: the backend object, or the kernels (v2 arguments defaulted)."""
    return cpu_backend if request.param == "backend" else KernelsWithDefaults()


@pytest.fixture
def k2():
    """The kernels with the contract-v2 arguments (the running core's hookspecs are still v1, so the
    v2 semantics are tested on the kernels directly; once the v2 core lands, run these through the
    backend object as well)."""
    return KernelsWithDefaults()


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)
