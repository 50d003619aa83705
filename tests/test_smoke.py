import numpy as np

import sapient_core
from sapient_core.testing import oracle


def test_auto_resolves_and_computes_rms_norm():
    backend = sapient_core.get_backend("auto")
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    w = np.ones(16, np.float32)
    np.testing.assert_allclose(backend.rms_norm(x, w, 1e-6), oracle.rms_norm(x, w, 1e-6), rtol=1e-6, atol=1e-6)
