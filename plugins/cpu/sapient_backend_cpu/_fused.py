"""Fused float32 kernels compiled with Numba: the fast path of :mod:`sapient_backend_cpu.kernels`.

Imported lazily, by ``kernels`` on the first op call that can use it (``import sapient_backend_cpu``
never imports Numba).  Every function here works on C-contiguous float32 arrays that ``kernels`` has
already prepared, writes into a caller-provided output, and exists twice: ``*_serial`` and
``*_parallel`` (``prange`` over ``nchunks`` blocks of rows or elements, on Numba's thread pool).
Both call the same ``_*_range`` body, so the two paths compute bit-identical results.

Why these choices (measured on the x86-64 machine of ``benchmarks/bench_cpu_vs_torch.py``):

- ``nogil=True``: the kernels may run from several Python threads at once.
- ``cache=True``: the machine code is cached beside this file (or in Numba's user cache directory
  when that is read-only), so only the first process after an install or an upgrade compiles; later
  processes load each kernel in milliseconds.
- ``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy, instead of a Python
  ``ZeroDivisionError`` check in every loop iteration (which keeps LLVM from vectorising: silu took
  5.9 ms instead of 0.25 ms at [1, 128, 5632]).
- ``fastmath={"contract"}`` only (fused multiply-add): no ``nnan``/``ninf`` (inf and NaN must keep
  their IEEE meaning, the tests check them) and no reassociation except in the float64 row sums of
  the norms (``_sum64``, ``_sumsq64``), where the order cannot matter at float32 precision.
- :func:`_exp2` is written out (Cody-Waite reduction to [-1/2, 1/2], a degree-7 polynomial, the scale
  2**n built from its bits in two halves so that overflow to inf and gradual underflow are exact):
  LLVM cannot vectorise a call to libm's ``expf``, and this vectorises to AVX-512/AVX2/NEON.  Its
  relative error is below 0.6 float32 epsilons on [-150, 130].
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.core.extending import intrinsic

_F32 = np.float32
_OPTS = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})
_SUM_OPTS = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract", "reassoc"})


@intrinsic
def _int_bits_as_f32(typingctx, x):
    """The float32 whose bit pattern is the int32 ``x`` (a register bitcast: vectorises)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return sig, codegen


# 2**f = exp(f ln 2) on [-1/2, 1/2]: Taylor coefficients (ln 2)^k / k!, k <= 7 (truncation < 2e-9)
_LN2 = math.log(2.0)
_E1, _E2, _E3, _E4, _E5, _E6, _E7 = (_F32(_LN2 ** k / math.factorial(k)) for k in range(1, 8))
_ROUND = _F32(12582912.0)          # 1.5 * 2**23: (z + _ROUND) - _ROUND rounds |z| < 2**22 to an integer


@njit(**_OPTS)
def _exp2(z):
    """2**z for float32 z: inf above 128, gradual underflow below -126, 0 below -150 (and for NaN:
    the callers' formulas keep NaN through their other operand)."""
    z = z if z > _F32(-252.0) else _F32(-252.0)
    z = z if z < _F32(252.0) else _F32(252.0)
    n = (z + _ROUND) - _ROUND
    f = z - n
    p = _F32(1.0) + f * (_E1 + f * (_E2 + f * (_E3 + f * (_E4 + f * (_E5 + f * (_E6 + f * _E7))))))
    ni = np.int32(n)
    h = ni >> 1                                        # 2**n = 2**h * 2**(n - h), each in range
    s1 = _int_bits_as_f32((h + np.int32(127)) << 23)
    s2 = _int_bits_as_f32((ni - h + np.int32(127)) << 23)
    return (p * s1) * s2


# --- elementwise --------------------------------------------------------------------------------------
# One scalar function per op, and a serial and a parallel loop over it.  (A ``prange`` over chunks that
# each run an inner loop in a called function is not vectorised by Numba 0.68 when the loop divides:
# 2.4-3.3 ms instead of 0.15 ms for silu at [1, 128, 5632]; a flat ``prange`` over the elements is.)

_NEG_LOG2E = _F32(-math.log2(math.e))


@njit(**_OPTS)
def _silu1(v):
    return v / (_F32(1.0) + _exp2(v * _NEG_LOG2E))     # x / inf = -0 for x < -88: exact


@njit(**_OPTS)
def silu_serial(x, out):
    for i in range(x.size):
        out[i] = _silu1(x[i])


@njit(parallel=True, **_OPTS)
def silu_parallel(x, out):
    for i in prange(x.size):
        out[i] = _silu1(x[i])


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_T0 = _F32(-2.0 * _SQRT_2_OVER_PI * math.log2(math.e))
_T1 = _F32(-2.0 * _SQRT_2_OVER_PI * 0.044715 * math.log2(math.e))


@njit(**_OPTS)
def _gelu_tanh1(v):
    # 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), exp(-2u) = exp2(x (T0 + T1 x^2))
    return v / (_F32(1.0) + _exp2(v * (_T0 + _T1 * (v * v))))


@njit(**_OPTS)
def gelu_tanh_serial(x, out):
    for i in range(x.size):
        out[i] = _gelu_tanh1(x[i])


@njit(parallel=True, **_OPTS)
def gelu_tanh_parallel(x, out):
    for i in prange(x.size):
        out[i] = _gelu_tanh1(x[i])


# The exact GELU, x Phi(x) = relu(x) - |x| Q(|x|), with Q(a) = B0 exp(-a^2/2) / T(a) and T the
# continued fraction of kernels.erfc (same coefficients, so the same fit error).
_B0 = _F32(0.39882864903757953)
_C1, _C2, _C3, _C4 = (_F32(c) for c in (-0.012019892008941624, 2.0664574741391224, 4.1844797037591945,
                                         1.2230397441763585))
_BETA1, _BETA2, _BETA3 = (_F32(b) for b in (1.2236257786155562, -10.282636237600679, 17.533390885703046))
_NEG_HALF_LOG2E = _F32(-0.5 * math.log2(math.e))
_INF = _F32(np.inf)
_BIG = _F32(1e4)


@njit(**_OPTS)
def _gelu_erf1(v):
    a = abs(v)
    ac = a if a < _BIG else _BIG                      # T(a) of a finite a: no inf / inf
    t = ac + _C4
    t = _BETA3 / t + ac + _C3
    t = _BETA2 / t + ac + _C2
    t = _BETA1 / t + ac + _C1
    q = a * (_B0 * _exp2((v * v) * _NEG_HALF_LOG2E) / t)   # |x| Q(|x|); x = -inf: inf * 0 = NaN, as the formula
    r = _F32(0.0) if v < _F32(0.0) else v             # relu that keeps NaN
    return v if v == _INF else r - q                  # +inf: the limit, not inf - NaN


@njit(**_OPTS)
def gelu_erf_serial(x, out):
    for i in range(x.size):
        out[i] = _gelu_erf1(x[i])


@njit(parallel=True, **_OPTS)
def gelu_erf_parallel(x, out):
    for i in prange(x.size):
        out[i] = _gelu_erf1(x[i])


@njit(parallel=True, **_OPTS)
def add_parallel(a, b, out):
    """a, out (rows, m); b (rows, m) or (1, m).  Only parallel: on one thread NumPy's loop is as fast."""
    m = a.shape[1]
    step = 0 if b.shape[0] == 1 else 1
    for r in prange(a.shape[0]):
        rb = r * step
        for j in range(m):
            out[r, j] = a[r, j] + b[rb, j]


@njit(parallel=True, **_OPTS)
def mul_parallel(a, b, out):
    """As :func:`add_parallel`, for a * b."""
    m = a.shape[1]
    step = 0 if b.shape[0] == 1 else 1
    for r in prange(a.shape[0]):
        rb = r * step
        for j in range(m):
            out[r, j] = a[r, j] * b[rb, j]


# --- norms --------------------------------------------------------------------------------------------
# Row statistics are summed in float64 (8 lanes, reassociated freely: at float64 the order cannot
# change the float32 result), then each output is computed in float64 and rounded once.

@njit(**_SUM_OPTS)
def _sum64(x, r):
    s = 0.0
    for i in range(x.shape[1]):
        s += np.float64(x[r, i])
    return s


@njit(**_SUM_OPTS)
def _sumsq64(x, r, shift):
    s = 0.0
    for i in range(x.shape[1]):
        d = np.float64(x[r, i]) - shift
        s += d * d
    return s


@njit(**_OPTS)
def _rms_norm_row(x, w, eps, out, r):
    d = x.shape[1]
    inv = 1.0 / math.sqrt(_sumsq64(x, r, 0.0) / d + eps)
    for i in range(d):
        out[r, i] = np.float32(np.float64(x[r, i]) * inv * np.float64(w[i]))


@njit(**_OPTS)
def rms_norm_serial(x, w, eps, out):
    for r in range(x.shape[0]):
        _rms_norm_row(x, w, eps, out, r)


@njit(parallel=True, **_OPTS)
def rms_norm_parallel(x, w, eps, out):
    for r in prange(x.shape[0]):
        _rms_norm_row(x, w, eps, out, r)


@njit(**_OPTS)
def _layer_norm_row(x, w, b, has_bias, eps, out, r):
    d = x.shape[1]
    mean = _sum64(x, r) / d
    inv = 1.0 / math.sqrt(_sumsq64(x, r, mean) / d + eps)
    if has_bias:
        for i in range(d):
            out[r, i] = np.float32((np.float64(x[r, i]) - mean) * inv * np.float64(w[i]) + np.float64(b[i]))
    else:
        for i in range(d):
            out[r, i] = np.float32((np.float64(x[r, i]) - mean) * inv * np.float64(w[i]))


@njit(**_OPTS)
def layer_norm_serial(x, w, b, has_bias, eps, out):
    for r in range(x.shape[0]):
        _layer_norm_row(x, w, b, has_bias, eps, out, r)


@njit(parallel=True, **_OPTS)
def layer_norm_parallel(x, w, b, has_bias, eps, out):
    for r in prange(x.shape[0]):
        _layer_norm_row(x, w, b, has_bias, eps, out, r)
