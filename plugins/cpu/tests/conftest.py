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


@pytest.fixture(params=["backend", "kernels"])
def ops(request, cpu_backend):
    """Something with one attribute per op: the backend object, or the kernels module itself."""
    return cpu_backend if request.param == "backend" else kernels


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)
