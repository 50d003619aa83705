"""Fixtures of the MLX plugin's tests.  They run on real MLX (``mlx[cpu]`` on Linux, Metal on a Mac).

Every backend here comes from a fresh :class:`sapient_core.registry.Registry` reading the real entry
points, so the installed plugin is what is tested; ``mlx`` is the strict backend (a kernel that
failed or declined would raise instead of being silently replaced by the CPU reference).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from sapient_core.registry import Registry


@pytest.fixture(scope="module", autouse=True)
def _no_sapient_environment():
    """The tests resolve real backends: SAPIENT_PLUGINS, SAPIENT_BACKEND, SAPIENT_STRICT ... of the
    caller's shell must not change what they see (restored after each module)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("SAPIENT_")]:
            mp.delenv(name)
        yield


@pytest.fixture
def registry():
    return Registry()


@pytest.fixture(scope="module")
def backends(_no_sapient_environment):
    reg = Registry()
    return {"mlx": reg.get_backend("mlx", strict=True), "mlx_lenient": reg.get_backend("mlx", strict=False),
            "cpu": reg.get_backend("cpu")}


@pytest.fixture
def mlx(backends):
    return backends["mlx"]


@pytest.fixture
def cpu(backends):
    return backends["cpu"]


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def weight_cache_limit():
    """Lets a test change the weight cache's limit; restores the default afterwards."""
    from sapient_backend_mlx.cache import WEIGHTS
    yield WEIGHTS
    WEIGHTS.configure(None)
