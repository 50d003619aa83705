"""Fused float32 kernels compiled with Numba: the fast path of :mod:`sapient_backend_cpu.kernels`.

Imported lazily, by ``kernels`` on the first op call that can use it (``import sapient_backend_cpu``
never imports Numba).  Every public function here works on C-contiguous float32 arrays that
``kernels`` has already prepared and writes into a caller-provided output (add and mul return a new
array, and the attention kernels read K and V where they lie); most exist twice,
``*_serial`` and ``*_parallel`` (a flat ``prange`` over elements, rows or tasks, on Numba's thread
pool), both calling the same per-element or per-row function, so the two compute bit-identical
results (``tests/test_cpu_paths.py`` checks it).  add/mul exist only in parallel (on one thread
NumPy's own loop is as fast).

Why these choices (measured on the x86-64 machine of ``benchmarks/bench_cpu_vs_torch.py``):

- ``nogil=True``: the kernels may run from several Python threads at once.
- ``cache=True``: the machine code is cached beside this file (or in Numba's user cache directory
  when that is read-only), so only the first process after an install or an upgrade compiles; later
  processes load each kernel in milliseconds.
- ``error_model="numpy"``: a float division by zero gives inf/NaN as in NumPy, instead of a Python
  ``ZeroDivisionError`` check in every loop iteration (which keeps LLVM from vectorising: silu took
  5.9 ms instead of 0.25 ms at [1, 128, 5632]).
- Loops index from 0 (slices, or row functions): an index that may be negative as far as LLVM can
  tell gets Numba's wrap-around test on every access and the loop stays scalar, and a ``prange`` over
  chunks whose inner loop sits in a called function was not vectorised either (2.4-3.3 ms instead of
  0.15 ms for silu); the layouts below are the measured fast ones.
- ``fastmath={"contract"}`` (fused multiply-add) and nothing else, except in the reductions: the
  float64 row sums of the norms and the attention dot products and row sums (``reassoc``: vectorised
  with 8-16 lanes, an order whose error stays within the tested bounds) and the row maximum of the
  softmax (``nnan``: a max is exact in any order; NaN handled by its caller).  No ``nnan``/``ninf``
  elsewhere: inf and NaN keep their IEEE meaning, and the tests check them.
- :func:`_exp2` is written out (Cody-Waite reduction to [-1/2, 1/2], a degree-7 polynomial, the scale
  2**n built from its bits in two halves so that overflow to inf and gradual underflow are exact):
  LLVM cannot vectorise a call to libm's ``expf``, and this vectorises to AVX-512/AVX2/NEON.  Its
  relative error is below 0.6 float32 epsilons on [-150, 130].
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
from llvmlite import binding as _llvm
from llvmlite import ir as _ir
from numba import njit, prange, types
from numba.core import cgutils
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
    """2**z for float32 z: inf above 128, gradual underflow below -126, 0 below -150 and at -inf, NaN
    for NaN (the integer part is taken from a NaN-free copy: converting NaN to an integer is undefined)."""
    z = _F32(-252.0) if z < _F32(-252.0) else z        # comparisons with NaN are False: NaN stays
    z = _F32(252.0) if z > _F32(252.0) else z
    zi = z if z == z else _F32(0.0)
    n = (zi + _ROUND) - _ROUND
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


# add/mul allocate their result themselves: at [1, 128, 2048] on 2 threads that took 20.6 µs against
# 22.4 for np.empty in Python and a kernel writing into it (the allocation, three reshapes and one
# argument less); the flat loop needs no row loop around it.

@njit(parallel=True, **_OPTS)
def add_same_parallel(a, b):
    """a + b, both C-contiguous of one shape, as a new array.  Only parallel: on one thread NumPy's
    loop is as fast."""
    out = np.empty(a.shape, np.float32)
    x = a.reshape(-1)
    y = b.reshape(-1)
    o = out.reshape(-1)
    for i in prange(x.size):
        o[i] = x[i] + y[i]
    return out


@njit(parallel=True, **_OPTS)
def mul_same_parallel(a, b):
    """As :func:`add_same_parallel`, for a * b."""
    out = np.empty(a.shape, np.float32)
    x = a.reshape(-1)
    y = b.reshape(-1)
    o = out.reshape(-1)
    for i in prange(x.size):
        o[i] = x[i] * y[i]
    return out


@njit(parallel=True, **_OPTS)
def add_rows_parallel(a, b):
    """a (rows, m) + b (m,) broadcast over the rows, as a new (rows, m) array."""
    out = np.empty(a.shape, np.float32)
    m = a.shape[1]
    for r in prange(a.shape[0]):
        for j in range(m):
            out[r, j] = a[r, j] + b[j]
    return out


@njit(parallel=True, **_OPTS)
def mul_rows_parallel(a, b):
    """As :func:`add_rows_parallel`, for a * b."""
    out = np.empty(a.shape, np.float32)
    m = a.shape[1]
    for r in prange(a.shape[0]):
        for j in range(m):
            out[r, j] = a[r, j] * b[j]
    return out


# --- norms --------------------------------------------------------------------------------------------
# One pass of float64 row statistics (8 lanes, reassociated freely: at float64 the order cannot change
# the float32 result), around a shift c = the row's first element (so that the one-pass variance
# E[(x-c)^2] - E[x-c]^2 cancels nothing: |mean - c| is of the order of the spread, unlike the mean
# itself, which may be 1e4 times the spread), then one float32 pass for the output.  The mean enters
# that pass as a float32 pair hi + lo, so (x - hi) - lo keeps the float64 mean's accuracy.

@njit(**_SUM_OPTS)
def _shifted_sums64(x, r, c):
    s1 = 0.0
    s2 = 0.0
    for i in range(x.shape[1]):
        z = np.float64(x[r, i]) - c
        s1 += z
        s2 += z * z
    return s1, s2


@njit(**_SUM_OPTS)
def _sumsq64(x, r):
    s = 0.0
    for i in range(x.shape[1]):
        z = np.float64(x[r, i])
        s += z * z
    return s


@njit(**_OPTS)
def _rms_norm_row(x, w, eps, out, r):
    d = x.shape[1]
    inv = np.float32(1.0 / math.sqrt(_sumsq64(x, r) / d + eps))
    for i in range(d):
        out[r, i] = (x[r, i] * inv) * w[i]


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
    c = np.float64(x[r, 0])
    s1, s2 = _shifted_sums64(x, r, c)
    dm = s1 / d
    var = max(s2 / d - dm * dm, 0.0)
    mean = c + dm
    hi = np.float32(mean)
    lo = np.float32(mean - np.float64(hi))
    inv = np.float32(1.0 / math.sqrt(var + eps))
    if has_bias:
        for i in range(d):
            out[r, i] = ((x[r, i] - hi) - lo) * (inv * w[i]) + b[i]
    else:
        for i in range(d):
            out[r, i] = ((x[r, i] - hi) - lo) * (inv * w[i])


@njit(**_OPTS)
def layer_norm_serial(x, w, b, has_bias, eps, out):
    for r in range(x.shape[0]):
        _layer_norm_row(x, w, b, has_bias, eps, out, r)


@njit(parallel=True, **_OPTS)
def layer_norm_parallel(x, w, b, has_bias, eps, out):
    for r in prange(x.shape[0]):
        _layer_norm_row(x, w, b, has_bias, eps, out, r)


# --- rope ---------------------------------------------------------------------------------------------

@njit(**_OPTS)
def _rope_row(x, cos, sin, out, b, r):
    # x, out (B, H*S, D); cos, sin (1 or B, S, R/2); row r of batch b is position r % S.  (Indexing the
    # 3-D arrays directly: slicing six views per row costs more than the rotation, 167 vs 106 µs.)
    d = x.shape[2]
    half = cos.shape[2]
    s = r % cos.shape[1]
    bc = b if cos.shape[0] != 1 else 0
    for i in range(half):
        x1 = x[b, r, i]
        x2 = x[b, r, half + i]
        c = cos[bc, s, i]
        sn = sin[bc, s, i]
        out[b, r, i] = x1 * c - x2 * sn
        out[b, r, half + i] = x2 * c + x1 * sn
    for i in range(2 * half, d):
        out[b, r, i] = x[b, r, i]


@njit(**_OPTS)
def rope_serial(x, cos, sin, out):
    for b in range(x.shape[0]):
        for r in range(x.shape[1]):
            _rope_row(x, cos, sin, out, b, r)


@njit(parallel=True, **_OPTS)
def rope_parallel(x, cos, sin, out):
    rows = x.shape[1]
    for br in prange(x.shape[0] * rows):
        _rope_row(x, cos, sin, out, br // rows, br % rows)


# --- attention ----------------------------------------------------------------------------------------
# The matrix products run in NumPy's BLAS (register-tiled: a Numba loop nest reached a quarter of its
# speed for Q K^T at prefill), called from the kernels where NumPy's BLAS allows it (see "BLAS inside
# the kernels" below) and through NumPy's matmul elsewhere; Numba does what BLAS cannot fuse: the
# masked, soft-capped softmax of each score row, in place, and, without BLAS inside the kernels, a
# decode step's scores themselves (one query per head: a dot product per key, 2.3x faster here than
# NumPy's matmul against the transposed K view).
# Scores are in log2 units: q carries scale * log2(e) (or scale / c with a softcap c, and the capped
# score is multiplied by c log2(e)), so the softmax is exp2(s - max).  A row with no visible key gives
# zero weights (so a zero output row), never 0 / 0.

_NEG_INF = _F32(-np.inf)
_TWO_LOG2E = _F32(2.0 * math.log2(math.e))


@njit(**_OPTS)
def _tanh(z):
    """tanh for float32 z via exp2: absolute error ~ 2 float32 epsilons (what the softcap needs:
    c * tanh(s / c) to float32 precision of c)."""
    a = abs(z)
    e = _exp2(a * -_TWO_LOG2E)                         # exp(-2|z|), in (0, 1]
    t = (_F32(1.0) - e) / (_F32(1.0) + e)
    return -t if z < _F32(0.0) else t


# Each loop of the row softmax is its own small function over a slice (indices from 0): inside one
# large function LLVM stops inlining _exp2 into the loop, and an index lo + t that may be negative as
# far as LLVM knows gets Numba's wrap-around test on every access; either keeps the loop scalar
# (4 ns instead of 0.9 ns per score).

@njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc", "nnan", "nsz"})
def _max_of(a):
    """max(a) (-inf if empty), vectorised: a max is exact in any order.  NaN scores are skipped (the
    vector max returns its other operand); a NaN score still makes its row NaN, through its own weight
    exp2(NaN - max), and a row of NaN only (max -inf) is caught by _softmax_row."""
    m = _NEG_INF
    for t in range(a.shape[0]):
        m = max(m, a[t])
    return m


@njit(**_OPTS)
def _any_true(a):
    for t in range(a.shape[0]):
        if a[t]:
            return True
    return False


@njit(**_SUM_OPTS)
def _sum_of(a):
    """sum(a) in float32, vectorised (16 lanes, unrolled: error ~ (n / 64 + 6) u, below a pairwise
    sum's for the row lengths of attention)."""
    s = _F32(0.0)
    for t in range(a.shape[0]):
        s += a[t]
    return s


@njit(**_OPTS)
def _fill(a, value):
    for t in range(a.shape[0]):
        a[t] = value


@njit(**_OPTS)
def _cap(a, cap):
    for t in range(a.shape[0]):
        a[t] = cap * _tanh(a[t])


@njit(**_OPTS)
def _hide_masked(a, visible):
    for t in range(a.shape[0]):
        if not visible[t]:
            a[t] = _NEG_INF


@njit(**_OPTS)
def _exp2_shifted(a, m):
    for t in range(a.shape[0]):
        a[t] = _exp2(a[t] - m)                        # exp2(-inf) = 0 for masked keys


@njit(**_OPTS)
def _scale(a, factor):
    for t in range(a.shape[0]):
        a[t] *= factor


@njit(**_OPTS)
def _softmax_row(srow, t_lo, t_hi, cap, has_cap, kv_mask, has_mask, b, key0):
    """Replace the scores ``srow`` by their softmax weights over the visible keys: local indices in
    [t_lo, t_hi) whose ``kv_mask[b, key0 + t]`` is True (when has_mask); every other weight is 0."""
    nk = srow.shape[0]
    t_lo = min(max(t_lo, 0), nk)
    t_hi = max(min(t_hi, nk), t_lo)
    _fill(srow[:t_lo], _F32(0.0))
    _fill(srow[t_hi:], _F32(0.0))
    if t_hi == t_lo:
        return
    seg = srow[t_lo:t_hi]
    if has_cap:
        _cap(seg, cap)
    if has_mask:
        _hide_masked(seg, kv_mask[b, key0 + t_lo:key0 + t_hi])
    m = _max_of(seg)
    if m == _NEG_INF:
        # Every key of the range is padding: no weights, a zero row.  Otherwise the visible scores are
        # all -inf (infinite inputs: 0 / 0) or NaN (the vector max skips NaN): a NaN row, as the formula.
        sees = _any_true(kv_mask[b, key0 + t_lo:key0 + t_hi]) if has_mask else True
        _fill(seg, _F32(np.nan) if sees else _F32(0.0))
        return
    _exp2_shifted(seg, m)
    _scale(seg, _F32(1.0) / _sum_of(seg))


@njit(**_OPTS)
def _block_row(s, row, sq, sk, i0, groups, key0, causal, window, cap, has_cap, kv_mask, has_mask):
    # s (B, KV, R, nk): R = (query block) x (query heads of the group), rows in (query, head) order
    nkv = s.shape[1]
    rows = s.shape[2]
    b = row // (nkv * rows)
    r = row % rows
    j = (row // rows) % nkv
    t_lo, t_hi = _visible(i0 + r // groups + sk - sq, key0, s.shape[3], causal, window)
    _softmax_row(s[b, j, r], t_lo, t_hi, cap, has_cap, kv_mask, has_mask, b, key0)


@njit(**_OPTS)
def _visible(p, key0, nk, causal, window):
    """The local range [t_lo, t_hi) of the nk keys key0 ... that the query at absolute position p may
    see (window 0: no window); _softmax_row clips it to [0, nk)."""
    if not causal:
        return 0, nk
    return (p - window + 1 - key0 if window > 0 else 0), p + 1 - key0


@njit(**_OPTS)
def softmax_block_serial(s, sq, sk, i0, groups, key0, causal, window, cap, has_cap, kv_mask, has_mask):
    """In place: the scores of a block of queries (rows i0 ... in (query, head) order, keys key0 ...)
    become softmax weights under the causal / window / padding masks and the softcap."""
    for row in range(s.shape[0] * s.shape[1] * s.shape[2]):
        _block_row(s, row, sq, sk, i0, groups, key0, causal, window, cap, has_cap, kv_mask, has_mask)


@njit(parallel=True, **_OPTS)
def softmax_block_parallel(s, sq, sk, i0, groups, key0, causal, window, cap, has_cap, kv_mask, has_mask):
    for row in prange(s.shape[0] * s.shape[1] * s.shape[2]):
        _block_row(s, row, sq, sk, i0, groups, key0, causal, window, cap, has_cap, kv_mask, has_mask)


@njit(**_SUM_OPTS)
def _dot(q, b, j, g, k, t):
    s = _F32(0.0)
    for e in range(q.shape[3]):
        s += q[b, j, g, e] * k[b, j, t, e]
    return s


@njit(**_OPTS)
def _decode_task(q, k, lo, fold, cap, has_cap, kv_mask, has_mask, p, task):
    # one (batch row, KV head): the scores of every query head of the group, key-major so that each
    # K row is read once for the whole group, then each row's softmax
    nkv = q.shape[1]
    b = task // nkv
    j = task % nkv
    groups = q.shape[2]
    nk = p.shape[3]
    for t in range(nk):
        for g in range(groups):
            p[b, j, g, t] = _dot(q, b, j, g, k, lo + t) * fold
    for g in range(groups):
        _softmax_row(p[b, j, g], 0, nk, cap, has_cap, kv_mask, has_mask, b, lo)


@njit(**_OPTS)
def decode_weights_serial(q, k, lo, fold, cap, has_cap, kv_mask, has_mask, p):
    """A decode step's softmax weights: q (B, KV, G, d), k (B, KV, Sk, d), keys lo ... lo + nk - 1
    (then kv_mask); p (B, KV, G, nk) receives the weights."""
    for task in range(q.shape[0] * q.shape[1]):
        _decode_task(q, k, lo, fold, cap, has_cap, kv_mask, has_mask, p, task)


@njit(parallel=True, **_OPTS)
def decode_weights_parallel(q, k, lo, fold, cap, has_cap, kv_mask, has_mask, p):
    for task in prange(q.shape[0] * q.shape[1]):
        _decode_task(q, k, lo, fold, cap, has_cap, kv_mask, has_mask, p, task)


# --- BLAS inside the kernels -------------------------------------------------------------------------
#
# A decode step's two products are small (per KV head: the group's G query rows times up to a few
# thousand keys of size d).  NumPy's matmul runs them one after another on the calling thread, so on
# two threads the step stayed half serial.  Here each task of the parallel kernel calls NumPy's own
# OpenBLAS (cblas_sgemm, found in NumPy's extension module) on its KV head, in pieces small enough
# that OpenBLAS runs each on the calling thread with its small-matrix kernels (a bigger product from
# two threads at once waits on OpenBLAS's own pool: 9 ms instead of 0.06 ms for 2048 keys; and a
# scores product of more than ~1200 outputs leaves the small-matrix path: 13.5 instead of 1.7 µs for
# 4 x 384 outputs).  Measured at 32/8 heads of 64 on the benchmark machine (AVX-512): the scores 30 /
# 118 µs for 512 / 2048 keys on one thread and 16 / 61 on two, where the Numba dot products took 105 /
# 326 and 66 / 161; the weighted values 21 / 76 and 11 / 40 (NumPy's matmul: 20 / 75 on either).
# A prefill's tasks are (batch row, KV head, block of 8 queries), each multiplying only the keys its
# queries may see, head by head, reading q and writing the output where they lie: a 128-token prefill
# took 1194 / 605 µs on 1 / 2 threads, against 1528 / 1115 with NumPy's matmul between parallel
# softmax kernels.  (Blocks of 16, 32 and 64 queries took 1580, 1512 and 1596 µs on 1 thread: their
# scores pieces leave the small-matrix kernels, and they compute more hidden keys.  The first version,
# rows of the group's heads gathered into a copy of q and an output in that order, took 1454 / 818 µs,
# and up to 3000 on 1 thread when glibc returned its three 1 MiB arrays to the system after every call,
# so that each call faulted them in again.)
#
# NumPy builds without this symbol (Apple's Accelerate on macOS arm64, a distribution's BLAS), and
# Windows (where NumPy's extension module does not expose its DLL's symbols), keep the Numba loops
# (decode_weights_*) and NumPy's matmul.  The symbol is registered with LLVM under a name
# of our own, so that the cached machine code links to it again in every process.

_SGEMM = "sapient_cpu_cblas_sgemm64"


def _find_sgemm():
    """The address of cblas_sgemm with 64-bit integers in NumPy's own BLAS, or 0."""
    try:
        try:
            from numpy._core import _multiarray_umath as umath
        except ImportError:                                        # NumPy 1.x
            from numpy.core import _multiarray_umath as umath
        lib = ctypes.CDLL(umath.__file__)
    except (ImportError, OSError):
        return 0
    for name in ("scipy_cblas_sgemm64_", "cblas_sgemm64_"):         # NumPy >= 2.0, NumPy 1.x wheels
        try:
            return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
        except AttributeError:
            continue
    return 0


#: The address of NumPy's cblas_sgemm (64-bit integers), or 0 when NumPy's BLAS has none.
SGEMM_ADDRESS = _find_sgemm()
if SGEMM_ADDRESS:
    _llvm.add_symbol(_SGEMM, SGEMM_ADDRESS)

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: OpenBLAS runs a product of at most 65536 * 4 multiply-adds on the calling thread (interface/gemm.c:
#: SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD); every product here stays at or below it (it takes
#: one key at the least, so a task whose rows * d exceeds it alone would not: none of a real model).
_ONE_THREAD_MACS = 262144


@intrinsic
def _sgemm(typingctx, trans_b, m, n, k, alpha, a, ia, lda, b, ib, ldb, beta, c, ic, ldc):
    """Row-major ``C = alpha A op(B) + beta C`` (op: transpose when trans_b is _TRANS) on float32
    arrays addressed from their element offsets ia, ib, ic with leading dimensions lda, ldb, ldc."""
    for arr in (a, b, c):
        if not (isinstance(arr, types.Array) and arr.dtype == types.float32):
            return None
    sig = types.void(trans_b, m, n, k, alpha, a, ia, lda, b, ib, ldb, beta, c, ic, ldc)

    def codegen(context, builder, signature, args):
        i32, i64, ptr = _ir.IntType(32), _ir.IntType(64), _ir.IntType(8).as_pointer()
        f32 = _ir.FloatType()
        fnty = _ir.FunctionType(_ir.VoidType(), [i32, i32, i32, i64, i64, i64, f32, ptr, i64, ptr, i64,
                                                 f32, ptr, i64])
        fn = cgutils.get_or_insert_function(builder.module, fnty, _SGEMM)
        tys = signature.args

        def cast(i, ty):
            return context.cast(builder, args[i], tys[i], ty)

        def at(i):
            data = context.make_array(tys[i])(context, builder, args[i]).data
            return builder.bitcast(builder.gep(data, [cast(i + 1, types.int64)]), ptr)

        i = types.int64
        builder.call(fn, [i32(_ROW_MAJOR), i32(_NO_TRANS), cast(0, types.int32), cast(1, i), cast(2, i),
                          cast(3, i), cast(4, types.float32), at(5), cast(7, i), at(8), cast(10, i),
                          cast(11, types.float32), at(12), cast(14, i)])
        return context.get_dummy_value()

    return sig, codegen


@njit(**_OPTS)
def _head_rows(x, b, j, t):
    """Element offset of row t of head j of batch row b in x (B, KV, n, d), and x's row stride."""
    ld = x.strides[2] // 4
    return (b * x.strides[0] + j * x.strides[1]) // 4 + t * ld, ld


@njit(**_OPTS)
def _scores(alpha, q, qo, k, b, j, lo, s, step):
    """s (rows, nk) = alpha * (rows of q from element qo) K^T, K the keys lo ... lo + nk - 1 of head j
    of batch row b in k, in products of at most ``step`` keys."""
    rows, nk = s.shape
    d = k.shape[3]
    ko, ldk = _head_rows(k, b, j, lo)
    for t0 in range(0, nk, step):
        n = min(step, nk - t0)
        _sgemm(_TRANS, rows, n, d, alpha, q, qo, d, k, ko + t0 * ldk, ldk, 0.0, s, t0, nk)


@njit(**_OPTS)
def _weighted_values(w, v, b, j, lo, out, oo, step):
    """The rows of out from element oo = w (rows, nk) V, V the values lo ... lo + nk - 1 of head j of
    batch row b in v, summed over products of at most ``step`` keys."""
    rows, nk = w.shape
    d = v.shape[3]
    vo, ldv = _head_rows(v, b, j, lo)
    for t0 in range(0, nk, step):
        n = min(step, nk - t0)
        _sgemm(_NO_TRANS, rows, d, n, 1.0, w, t0, nk, v, vo + t0 * ldv, ldv, 0.0 if t0 == 0 else 1.0,
               out, oo, d)


@njit(**_OPTS)
def _attend(q, ro, rows, k, v, b, j, lo, nk, p0, dp, causal, window, fold, cap, has_cap, kv_mask, has_mask,
            out):
    """``rows`` consecutive rows of q from element ro (query positions p0, p0 + dp, ...) against the keys
    lo ... lo + nk - 1 of head j of batch row b: scores fold * q K^T, each row's softmax under the
    masks, and the weighted values written to the same rows of out.  Scores in pieces of at most
    ~1200 outputs (OpenBLAS's small-matrix kernels), every product within _ONE_THREAD_MACS."""
    d = q.shape[-1]
    s = np.empty((rows, nk), np.float32)
    _scores(fold, q, ro, k, b, j, lo, s, max(1, min(1024, _ONE_THREAD_MACS // d) // rows))
    for r in range(rows):
        t_lo, t_hi = _visible(p0 + r * dp, lo, nk, causal, window)
        _softmax_row(s[r], t_lo, t_hi, cap, has_cap, kv_mask, has_mask, b, lo)
    _weighted_values(s, v, b, j, lo, out, ro, max(1, _ONE_THREAD_MACS // 2 // (rows * d)))


@njit(**_OPTS)
def _decode_blas_task(q, k, v, nkv, lo, causal, window, fold, cap, has_cap, kv_mask, has_mask, out, task):
    # one (batch row, KV head): its G query heads are G consecutive rows of q (B, H, 1, d), all at the
    # last position
    b = task // nkv
    j = task % nkv
    groups = q.shape[1] // nkv
    sk = k.shape[2]
    _attend(q, (b * nkv + j) * groups * q.shape[3], groups, k, v, b, j, lo, sk - lo, sk - 1, 0, causal, window,
            fold, _F32(cap), has_cap, kv_mask, has_mask, out)


@njit(**_OPTS)
def decode_blas_serial(q, k, v, nkv, lo, causal, window, fold, cap, has_cap, kv_mask, has_mask, out):
    """A decode step with both products in NumPy's BLAS (only when SGEMM_ADDRESS): q and out
    (B, H, 1, d) C-contiguous, k and v (B, nkv, Sk, d) with unit stride along d, rows at least d apart
    and no negative stride (see kernels._attention_blas), keys lo ... Sk - 1 (then kv_mask); window 0
    for none; fold and cap as kernels._score_terms gives them, as Python floats."""
    for task in range(q.shape[0] * nkv):
        _decode_blas_task(q, k, v, nkv, lo, causal, window, fold, cap, has_cap, kv_mask, has_mask, out, task)


@njit(parallel=True, **_OPTS)
def decode_blas_parallel(q, k, v, nkv, lo, causal, window, fold, cap, has_cap, kv_mask, has_mask, out):
    for task in prange(q.shape[0] * nkv):
        _decode_blas_task(q, k, v, nkv, lo, causal, window, fold, cap, has_cap, kv_mask, has_mask, out, task)


@njit(**_OPTS)
def _prefill_blas_task(q, k, v, nkv, qb, causal, window, fold, cap, has_cap, kv_mask, has_mask, out, task):
    # one (batch row, KV head, block of qb queries): for each query head of the group, the block's
    # rows of q (B, H, Sq, d) against the keys some query of the block may see
    h, sq, d = q.shape[1], q.shape[2], q.shape[3]
    groups = h // nkv
    sk = k.shape[2]
    nb = (sq + qb - 1) // qb
    blk = task % nb
    j = (task // nb) % nkv
    b = task // (nb * nkv)
    i0 = blk * qb
    n = min(sq, i0 + qb) - i0
    off = sk - sq
    lo = max(0, i0 + off - window + 1) if window > 0 else 0        # query i0's first key
    hi = i0 + n + off if causal else sk                            # the block's last query's last key + 1
    for g in range(groups):
        ro = ((b * h + j * groups + g) * sq + i0) * d                # q[b, head, i0] and out[b, head, i0]
        _attend(q, ro, n, k, v, b, j, lo, hi - lo, i0 + off, 1, causal, window, fold, _F32(cap), has_cap,
                kv_mask, has_mask, out)


@njit(**_OPTS)
def prefill_blas_serial(q, k, v, nkv, qb, causal, window, fold, cap, has_cap, kv_mask, has_mask, out):
    """A prefill with both products in NumPy's BLAS (only when SGEMM_ADDRESS), one task per batch row,
    KV head and block of ``qb`` queries, head by head: q and out (B, H, Sq, d) C-contiguous; the rest
    as in decode_blas_serial."""
    nb = (q.shape[2] + qb - 1) // qb
    for task in range(q.shape[0] * nkv * nb):
        _prefill_blas_task(q, k, v, nkv, qb, causal, window, fold, cap, has_cap, kv_mask, has_mask, out, task)


@njit(parallel=True, **_OPTS)
def prefill_blas_parallel(q, k, v, nkv, qb, causal, window, fold, cap, has_cap, kv_mask, has_mask, out):
    nb = (q.shape[2] + qb - 1) // qb
    for task in prange(q.shape[0] * nkv * nb):
        _prefill_blas_task(q, k, v, nkv, qb, causal, window, fold, cap, has_cap, kv_mask, has_mask, out, task)
