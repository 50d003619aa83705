"""The erf behind the exact GELU, against math.erf / math.erfc on a dense grid.

Measured (this grid, NumPy 2.4, x86-64): max |erf - math.erf| = 1.5e-7 (1.26 float32 eps);
erfc relative error 3.3e-7 (2.7 eps) for |x| <= 1 and at most 2.31 eps * (1 + x^2) everywhere the
result is a normal float32 (x < 9.1; the growth is the float32 rounding of x^2 inside exp(-x^2)).
The bounds below leave a margin of about 1.5x over those numbers.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from sapient_backend_cpu import kernels

EPS = 2.0 ** -23
_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _grid():
    # float32 points, so the comparison is against erf of exactly the value the kernel saw
    return np.concatenate([np.linspace(-10, 10, 400001), np.linspace(-1, 1, 100001),
                           np.geomspace(1e-30, 1e-2, 2001)]).astype(np.float32)


def test_erf_absolute_error():
    z = _grid()
    got = kernels.erf(z)
    assert got.dtype == np.float32 and got.shape == z.shape
    err = np.abs(got - _erf(z.astype(np.float64)))
    assert err.max() <= 2 * EPS, err.max()


def test_erf_is_odd_and_relatively_accurate_near_zero():
    z = np.geomspace(1e-30, 0.4, 3001).astype(np.float32)
    got = kernels.erf(z).astype(np.float64)
    ref = _erf(z.astype(np.float64))
    assert (np.abs(got - ref) / ref).max() <= 2 * EPS
    np.testing.assert_array_equal(kernels.erf(-z), -kernels.erf(z))
    assert kernels.erf(np.zeros(1, np.float32))[0] == 0.0


def test_erfc_relative_error():
    z = _grid()
    z64 = z.astype(np.float64)
    ref = _erfc(z64)
    got = kernels.erfc(z).astype(np.float64)
    normal = ref > np.finfo(np.float32).tiny
    rel = np.abs(got - ref)[normal] / ref[normal]
    assert rel[np.abs(z64[normal]) <= 1].max() <= 4 * EPS
    assert (rel / (1 + z64[normal] ** 2)).max() <= 3.5 * EPS
    assert np.all(got[~normal] < 2e-38)                  # underflow to 0 (or a subnormal), never garbage


def test_erf_erfc_extremes_without_warnings():
    z = np.array([-3.4e38, -1e4, -30, -9.5, 9.5, 30, 1e4, 3.4e38], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        e, c = kernels.erf(z), kernels.erfc(z)
    np.testing.assert_array_equal(e, np.sign(z))
    np.testing.assert_array_equal(c, np.where(z < 0, 2.0, 0.0))
