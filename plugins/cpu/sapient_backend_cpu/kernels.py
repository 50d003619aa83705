"""The CPU reference kernels, one function per op of the sapient_core contract (v2, SPEC §8).

Each function has its hook's exact signature and assumes validated input (the core checks shapes and
dtypes before calling).  Inputs may be float16 or anything NumPy converts; everything is computed and
returned in float32 NumPy arrays.  Every op has two implementations, checked against the same float64
oracles (``sapient_core.testing.oracle``) with the same bounds (``plugins/cpu/tests``, which run every
test on both, and on the parallel versions of the fused kernels):

- **fused** (default): the kernels of :mod:`._fused`, compiled by Numba, one pass over the data per op
  where NumPy needs four to twenty, vectorised (AVX-512/AVX2/NEON) and, for large inputs, spread over
  ``SAPIENT_CPU_THREADS`` threads (see :mod:`._runtime`);
- **NumPy** (``SAPIENT_CPU_FUSED=0``, or where Numba does not import): plain NumPy, chunked to stay in
  cache, for platforms without Numba and as a second, independent implementation.

Matrix products (linear, logits, the attention products) are NumPy's BLAS on both paths.

Why Numba, measured on the project's 2-core AMD EPYC (Zen 4, AVX-512) machines, one thread unless
said, best of many samples (``benchmarks/bench_cpu_vs_torch.py`` prints the whole table, with torch
2.13 beside; figures of one run at load average 0.5-1.3):

- silu [1, 128, 5632]: the NumPy kernel (4 passes) 342 µs; numexpr 2.14 ``x/(1+exp(-x))`` 2538 µs
  (numexpr calls scalar libm ``exp`` per element, NumPy uses SIMD); Numba 252 µs; torch 292 µs.
  Exact GELU: NumPy kernel 1521 µs, Numba 446 µs, torch 330 µs.  layer_norm [1, 128, 2048]: NumPy
  kernel 427 µs, Numba 61 µs, torch 76 µs.  numexpr has no erf and no fused row reductions either.
- Two threads: a Python thread pool splitting NumPy calls costs 21-58 µs per hand-off here (more than
  a whole 1 MiB add, 34 µs), so only Numba's ``prange`` on its OpenMP pool (5-10 µs to wake)
  parallelises ops of this size: add [1, 128, 2048] 35 -> 24 µs, layer_norm 61 -> 34 µs.
- The price: a dependency (numba and llvmlite: 4 + 60 MB of wheels, 210 MB installed; PyPI wheels
  for Linux, macOS and Windows; numba bounds NumPy from above, e.g. 0.68 needs numpy<2.6), its import
  on the first op (~0.3 s; ``import sapient_backend_cpu`` imports no Numba), and a one-time
  compilation per machine (~20 s for every kernel on a loaded 2-core machine, 0.5-1.5 s per op,
  cached on disk; a warm process loads them all in ~0.4 s; ``python -m sapient_backend_cpu
  --compile`` does it ahead).

The numerical choices, each measured against the float64 oracles:

- **Norm statistics**: fused: one float64 pass of row sums shifted by the row's first element (the
  one-pass variance cancels nothing: |mean - shift| is of the order of the spread), the mean handed to
  the float32 output pass as a hi + lo pair; measured error ~1 float32 eps (test bound 8 eps), also at
  a mean of 1e4 over values that differ by 1.  NumPy: pairwise float32 sums; ``layer_norm`` subtracts the
  float32 mean, then removes what that mean's rounding left behind (the corrected two-pass algorithm).
- **Exponentials** are ``exp2`` with ``log2(e)`` folded into a multiplication the kernel does anyway.
  NumPy's float32 ``exp2`` is within 3 ulp; the fused kernels' own ``_exp2`` (degree-7 polynomial on
  [-1/2, 1/2], exponent built from its bits) is within 0.6 eps.  Where an exponential may overflow to
  ``inf`` and ``inf`` is the right intermediate (``x / (1 + inf) == -0.0`` in ``silu`` for very negative
  ``x``), the overflow is expected (and silenced on the NumPy path).
- **erf** (for the exact GELU, never a tanh substitute) is a (3, 4) rational minimax fit of the Mills
  ratio in continued-fraction form, shared by both paths: no SciPy, *relative* accuracy in the far tail
  (GELU of -6 is -6e-9, not 0), no overflow; see :func:`erfc` for the measured error.
- **RoPE angles** are ``positions * inv_freq`` in float64 (position 100000 times a frequency near 1 has
  no float32-accurate cosine), rounded to float32 only as cos/sin (times the attention scaling); the
  tables are cached on the bytes of the positions and of inv_freq (every layer's q and k share them).
- **Attention** never repeats K/V: the query heads of a group are rows against their KV head.  Scores
  are in log2 units (scale and log2 e folded into q; with a softcap c, q carries scale / c and tanh's
  result is multiplied by c log2 e).  Causal, sliding-window and padding masks hide keys; a row with no
  visible key gets zero weights, so a zero output (never 0 / 0); masks replace scores by -inf rather
  than add to them, so a NaN in a hidden key never leaks.  Fused prefill works in blocks of queries
  that multiply only the keys they may see (a causal prefill skips ~40% of the products), with a
  fused masked softmax between two BLAS products.  Where NumPy's BLAS exports a 64-bit cblas_sgemm
  (its OpenBLAS wheels), the fused kernels call it themselves: one task per (batch row, KV head) of a
  decode step, or per (batch row, KV head, block of 8 queries) of a prefill, computes its scores,
  softmax and output, so that both products run on every thread, and q, K, V and the output are read
  and written where they lie (a KV cache's view is not copied).  Elsewhere a decode step
  computes its weights (scores, softcap, masks, softmax) in one Numba kernel and its output in one
  NumPy matmul, and a prefill runs its BLAS products through NumPy's matmul.

NumPy kernels write into their output buffer in place wherever they can (``out=``, ``*=``); the two
that need scratch space (the exact GELU, layer_norm's sum of squares) work through the input in chunks
of ``_CHUNK`` elements, so their scratch buffers stay in the L2 cache.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import _runtime
from ._runtime import configure, info

_fused = _runtime.fused
_run_parallel = _runtime.run_parallel
_call_parallel = _runtime.call_parallel
_PAR_MIN = _runtime.PARALLEL_MIN

__all__ = [
    "linear_3d", "linear_3d_bias", "rms_norm", "layer_norm", "silu", "gelu", "add", "mul",
    "apply_rope_positions", "apply_rope_partial", "apply_rope", "gqa_attention", "logits_from_hidden",
    "all_logits_from_hidden", "embedding", "erf", "erfc", "configure", "info",
]

_F32 = np.dtype(np.float32)
_ndarray = np.ndarray
_f32c = np.float32
_ONE = _f32c(1.0)
_LOG2E = math.log2(math.e)

#: Elements per chunk in the kernels that need scratch buffers: 64 Ki float32 = 256 KiB per buffer,
#: so the three or four buffers in flight fit a 1 MiB L2 cache.
_CHUNK = 1 << 16


def _f32(x):
    """``x`` as a float32 ndarray (no copy when it already is one)."""
    if x.__class__ is _ndarray and x.dtype is _F32:
        return x
    return np.asarray(x, dtype=np.float32)


def _f32_flat(x):
    """``x`` as a C-contiguous float32 ndarray (copied only when needed), for the chunked kernels."""
    x = _f32(x)
    return x if x.flags.c_contiguous else np.ascontiguousarray(x)


# --- linear ------------------------------------------------------------------------------------------

def linear_3d(x, weight):
    x = _f32(x)
    w = _f32(weight)
    b, s, n = x.shape
    if x.flags.c_contiguous:
        # One BLAS sgemm on (B*S, in) x (in, out); w.T is a view, so the weight is read once, in place.
        # For a decode step (B*S = 1) this is as fast as np.dot(w, x) (sgemv): both stream the weight
        # at DRAM bandwidth (see benchmarks/bench_cpu.py).
        return np.dot(x.reshape(b * s, n), w.T).reshape(b, s, w.shape[0])
    return np.matmul(x, w.T)


def linear_3d_bias(x, weight, bias):
    y = linear_3d(x, weight)
    if bias is not None:
        y += _f32(bias)
    return y


# --- norms -------------------------------------------------------------------------------------------

def _row_sum_of_squares(y):
    """Sum of ``y**2`` over the last axis (pairwise, float32), shape ``y.shape[:-1] + (1,)``.

    The squares go through a scratch buffer of at most ``_CHUNK`` elements, a block of rows at a time
    (the pairwise sum of a separate squares array is 4-8x more accurate than ``einsum``'s running sum).
    """
    d = y.shape[-1]
    if y.size <= _CHUNK:
        return np.square(y).sum(axis=-1, keepdims=True)
    rows = y.reshape(-1, d)
    out = np.empty((rows.shape[0], 1), np.float32)
    step = max(1, _CHUNK // d)
    buf = np.empty((step, d), np.float32)
    for r in range(0, rows.shape[0], step):
        block = rows[r:r + step]
        sq = buf[:block.shape[0]]
        np.square(block, out=sq)
        np.sum(sq, axis=-1, keepdims=True, out=out[r:r + step])
    return out.reshape(y.shape[:-1] + (1,))


def _rows(x):
    """``x`` as a C-contiguous (rows, D) float32 array (a view when it already is contiguous)."""
    x = _f32_flat(x)
    return x.reshape(-1, x.shape[-1]) if x.ndim != 2 else x


def rms_norm(x, weight, eps):
    x = _f32(x)
    if x.size == 0:
        return np.empty(x.shape, np.float32)
    fz = _fused()
    if fz is not None:
        x2 = _rows(x)
        w = _f32_flat(weight)
        out = np.empty(x.shape, np.float32)
        o2 = out.reshape(x2.shape)
        if x.size < _PAR_MIN["norm"] or not _run_parallel(fz.rms_norm_parallel, x2, w, float(eps), o2):
            fz.rms_norm_serial(x2, w, float(eps), o2)
        return out
    return _rms_norm_numpy(x, _f32(weight), eps)


def _rms_norm_numpy(x, w, eps):
    out = np.square(x)                               # the output buffer holds the squares first
    rms = out.sum(axis=-1, keepdims=True)            # pairwise: error ~ log2(D) ulp, not D
    rms *= _f32c(1.0 / x.shape[-1])
    rms += _f32c(eps)
    np.sqrt(rms, out=rms)
    np.divide(x, rms, out=out)
    out *= w
    return out


def layer_norm(x, weight, bias, eps):
    x = _f32(x)
    if x.size == 0:
        return np.empty(x.shape, np.float32)
    fz = _fused()
    if fz is not None:
        x2 = _rows(x)
        w = _f32_flat(weight)
        b = w if bias is None else _f32_flat(bias)       # not read when has_bias is False
        has_bias = bias is not None
        out = np.empty(x.shape, np.float32)
        o2 = out.reshape(x2.shape)
        if x.size < _PAR_MIN["norm"] or not _run_parallel(fz.layer_norm_parallel, x2, w, b, has_bias, float(eps), o2):
            fz.layer_norm_serial(x2, w, b, has_bias, float(eps), o2)
        return out
    return _layer_norm_numpy(x, _f32(weight), bias, eps)


def _layer_norm_numpy(x, w, bias, eps):
    inv_d = _f32c(1.0 / x.shape[-1])
    mean = x.sum(axis=-1, keepdims=True)
    mean *= inv_d
    out = np.subtract(x, mean)                       # exact where x is within 2x of the mean (Sterbenz)
    # The float32 mean is off by a few ulp of |mean|; the mean of the centred values measures that
    # error, and var = mean(c^2) - corr^2 is the variance of c - corr.  Without this, a mean of 1e4
    # over values that differ by 1 would leave errors of 1e-3 in the output.
    corr = out.sum(axis=-1, keepdims=True)
    corr *= inv_d
    var = _row_sum_of_squares(out)
    var *= inv_d
    var -= corr * corr
    np.maximum(var, _f32c(0.0), out=var)             # rounding can leave -0.0-ish values when var ~ 0
    var += _f32c(eps)
    np.sqrt(var, out=var)
    out -= corr
    out /= var
    out *= w
    if bias is not None:
        out += _f32(bias)
    return out


# --- activations -------------------------------------------------------------------------------------

def _activation(x, serial, parallel):
    """Run a fused activation kernel over ``x`` (any shape) into a new float32 array."""
    xf = _f32_flat(x)
    out = np.empty(xf.shape, np.float32)
    xr, outr = xf.reshape(-1), out.reshape(-1)
    if xr.size < _PAR_MIN["activation"] or not _run_parallel(parallel, xr, outr):
        serial(xr, outr)
    return out


def silu(x):
    x = _f32(x)
    fz = _fused()
    if fz is not None:
        return _activation(x, fz.silu_serial, fz.silu_parallel)
    return _silu_numpy(x)


def _silu_numpy(x):
    # x * sigmoid(x) = x / (1 + exp(-x)), exp(-x) = exp2(-x * log2 e).  For x < -88 exp overflows to
    # inf and x / inf = -0.0, the correctly rounded result, so that overflow is expected and silenced.
    out = np.empty(x.shape, np.float32)              # explicit: a 0-d x would otherwise give a scalar
    with np.errstate(over="ignore", invalid="ignore"):   # invalid: x = -inf gives -inf/inf = NaN, as the formula
        np.multiply(x, _f32c(-_LOG2E), out=out)
        np.exp2(out, out=out)
        out += _ONE
        np.divide(x, out, out=out)
    return out


# erfc / the exact GELU.  With Q(a) = P(N(0,1) > a) = erfc(a / sqrt 2) / 2, the Mills-ratio form
#     Q(a) = exp(-a^2 / 2) * R(a),   R(a) = _B0 / T(a)   for a >= 0,
# where T is the continued fraction
#     T(a) = a + c1 + b1 / (a + c2 + b2 / (a + c3 + b3 / (a + c4))),
# a (3, 4) rational minimax fit of R on [0, 16] with relative error <= 6.4e-8 * (1 + a^2 / 2) (the
# growing allowance matches the float32 rounding of a^2 / 2 in the exponent).  Evaluating it takes
# four divisions and seven additions, no multiplications, and T(a) ~ a never overflows.
_B0 = _f32c(0.39882864903757953)
_C1, _C2, _C3, _C4 = (_f32c(c) for c in (-0.012019892008941624, 2.0664574741391224, 4.1844797037591945,
                                          1.2230397441763585))
_BETA1, _BETA2, _BETA3 = (_f32c(b) for b in (1.2236257786155562, -10.282636237600679, 17.533390885703046))
_HALF_LOG2E = _f32c(0.5 * _LOG2E)


def _mills_denominator(a, out):
    """``out <- T(a)`` (float32, a >= 0), so that ``Q(a) = _B0 * exp(-a^2/2) / T(a)``."""
    np.add(a, _C4, out=out)
    for beta, c in ((_BETA3, _C3), (_BETA2, _C2), (_BETA1, _C1)):
        np.divide(beta, out, out=out)
        out += a
        out += c
    return out


def erfc(x):
    """Complementary error function, float32 in and out (any float array accepted).

    Relative error, measured against ``math.erfc`` on a grid of 2e6 points over [-10, 10]: at most
    2.7 float32 epsilons (3.3e-7) for |x| <= 1 and 2.4 eps * (1 + x^2) everywhere (9.2e-6 at x = 9;
    the growth is the float32 rounding of x^2 in exp(-x^2)); ``plugins/cpu/tests/test_cpu_erf.py`` checks
    these bounds.  Results below the float32 range (x > 9.2) are 0.
    """
    z = _f32(x)
    with np.errstate(over="ignore"):                 # exp(z^2) -> inf beyond |z| ~ 9.4: erfc 0
        a = np.abs(z)
        a *= _f32c(math.sqrt(2.0))                   # erfc(|z|) = 2 Q(a), a = sqrt(2) |z|
        t = _mills_denominator(a, np.empty_like(a))
        e = np.square(z)
        e *= _f32c(_LOG2E)
        np.exp2(e, out=e)
        e *= t
    np.divide(_f32c(2.0) * _B0, e, out=e)            # erfc(|z|)
    neg = z < 0
    e[neg] = _f32c(2.0) - e[neg]                     # erfc(-y) = 2 - erfc(y)
    return e


# erf(z) = 2/sqrt(pi) * sum_n (-1)^n z^(2n+1) / (n! (2n+1)); for |z| < 0.5 eight terms leave < 1e-11.
_ERF_SERIES = tuple(_f32c(2.0 / math.sqrt(math.pi) * (-1) ** n / (math.factorial(n) * (2 * n + 1)))
                    for n in range(8))


def erf(x):
    """Error function, float32 in and out: ``1 - erfc(|x|)`` with the sign of ``x``, and for |x| < 0.5
    its Taylor series (so that erf keeps its relative accuracy near 0: erf(0) is 0).

    Absolute error at most 1.3 float32 epsilons (1.5e-7), measured against ``math.erf`` on a grid of
    2e6 points over [-10, 10]; see :func:`erfc`.
    """
    z = _f32(x)
    y = erfc(np.abs(z))
    np.subtract(_ONE, y, out=y)
    np.copysign(y, z, out=y)
    small = np.abs(z) < 0.5
    if small.any():
        zs = z[small]
        z2 = zs * zs
        p = np.full_like(zs, _ERF_SERIES[-1])
        for c in _ERF_SERIES[-2::-1]:
            p *= z2
            p += c
        y[small] = zs * p
    return y


def _gelu_erf(x):
    """0.5 x (1 + erf(x / sqrt 2)) = x Phi(x) = relu(x) - |x| Q(|x|), in float32 chunks."""
    x = _f32_flat(x)
    out = np.empty(x.shape, np.float32)
    xf = x.reshape(-1)
    of = out.reshape(-1)
    n = xf.size
    if n == 0:
        return out
    m = min(n, _CHUNK)
    a, t, e = np.empty(m, np.float32), np.empty(m, np.float32), np.empty(m, np.float32)
    zero = np.zeros(m, np.float32)   # np.maximum(x, 0-array) is several times faster than with a scalar
    # over: exp(x^2/2) -> inf for |x| > 13.3, where |x| Q(|x|) is 0; invalid: only for infinite x.
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, m):
            xs = xf[start:start + m]
            os = of[start:start + m]
            if xs.size != m:
                k = xs.size
                a, t, e, zero = a[:k], t[:k], e[:k], zero[:k]
            np.abs(xs, out=a)
            _mills_denominator(a, t)
            np.square(xs, out=e)
            e *= _HALF_LOG2E
            np.exp2(e, out=e)                        # exp(a^2 / 2)
            e *= t
            np.divide(a, e, out=e)
            e *= _B0                                 # |x| Q(|x|)
            np.maximum(xs, zero, out=os)
            os -= e
        # x = +inf gives inf - inf/inf = NaN above; the limit (and the formula's value) is +inf.  One
        # cheap reduction tells whether such an input may be present (the sum is NaN or inf only then;
        # it may also overflow for huge finite values, which the errstate above keeps quiet).
        if not np.isfinite(np.add.reduce(of)):
            of[xf == np.inf] = np.inf
    return out


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_tanh(x):
    # 0.5 x (1 + tanh(u)) == x sigmoid(2u) == x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3):
    # no cancellation in the negative tail, and exp(-2u) = exp2(x * (c0 + c1 x^2)) with the constants
    # folded.  Overflow to inf for very negative x gives x / inf = -0.0, as for silu.
    c0 = _f32c(-2.0 * _SQRT_2_OVER_PI * _LOG2E)
    c1 = _f32c(-2.0 * _SQRT_2_OVER_PI * 0.044715 * _LOG2E)
    out = np.empty(x.shape, np.float32)              # explicit: a 0-d x would otherwise give a scalar
    with np.errstate(over="ignore", invalid="ignore"):   # invalid: only for infinite x, as the formula
        np.square(x, out=out)
        out *= c1
        out += c0
        out *= x
        np.exp2(out, out=out)
        out += _ONE
        np.divide(x, out, out=out)
    return out


def gelu(x, approximate):
    x = _f32(x)
    fz = _fused()
    if fz is not None:
        if approximate == "tanh":
            return _activation(x, fz.gelu_tanh_serial, fz.gelu_tanh_parallel)
        return _activation(x, fz.gelu_erf_serial, fz.gelu_erf_parallel)
    if approximate == "tanh":
        return _gelu_tanh(x)
    return _gelu_erf(x)


# --- elementwise -------------------------------------------------------------------------------------

def _binary_parallel(a, b, same, rows):
    """A parallel fused add or mul (``same`` for operands of one shape, ``rows`` for a trailing row
    (D,) broadcast over the other operand), as a new array; None when the shapes or layouts do not
    allow it, or when no parallel kernel may run now (one thread ...): the caller then runs NumPy's
    own loop.  Either operand may be the big one (a + b == b + a and a * b == b * a exactly in IEEE
    arithmetic).  Kept lean: at [1, 128, 2048] on 2 threads the kernel takes ~20 µs, and each µs of
    Python around it shows."""
    if _runtime.THREADS < 2:
        return None
    if a.shape == b.shape:
        if a.flags.c_contiguous and b.flags.c_contiguous:
            return _call_parallel(same, a, b)
        return None
    if a.size < b.size:
        a, b = b, a
    if a.ndim == 0 or b.ndim > a.ndim or not a.flags.c_contiguous or not b.flags.c_contiguous:
        return None
    d = a.shape[-1]
    if b.ndim < 1 or b.size != d or b.shape[-1] != d:
        return None
    r = _call_parallel(rows, a.reshape(-1, d), b.reshape(d))
    return None if r is None else r.reshape(a.shape)


def add(a, b):
    a = _f32(a)
    b = _f32(b)
    if a.size >= _PAR_MIN["elementwise"] or b.size >= _PAR_MIN["elementwise"]:
        fz = _fused()
        if fz is not None:
            r = _binary_parallel(a, b, fz.add_same_parallel, fz.add_rows_parallel)
            if r is not None:
                return r
    r = np.add(a, b)              # one thread: NumPy's own loop is as fast as a fused one
    return r if r.__class__ is _ndarray else np.asarray(r)     # 0-d inputs: an array, not a NumPy scalar


def mul(a, b):
    a = _f32(a)
    b = _f32(b)
    if a.size >= _PAR_MIN["elementwise"] or b.size >= _PAR_MIN["elementwise"]:
        fz = _fused()
        if fz is not None:
            r = _binary_parallel(a, b, fz.mul_same_parallel, fz.mul_rows_parallel)
            if r is not None:
                return r
    r = np.multiply(a, b)
    return r if r.__class__ is _ndarray else np.asarray(r)


# --- rope --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _default_inv_freq(base, rotary_dim):
    """base ** (-2i / rotary_dim), i = 0 .. rotary_dim/2 - 1, float64 (read-only, cached)."""
    inv = float(base) ** (-(np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
    inv.setflags(write=False)
    return inv


def _rope_tables_uncached(positions, inv_freq, scaling):
    """float32 (cos, sin), each ([B,] S, R/2), for int64 ``positions`` ([S] or [B, S]) and float64
    ``inv_freq`` [R/2]: angles and the scaling in float64, rounded to float32 once.  Read-only."""
    angles = np.multiply.outer(positions.astype(np.float64), inv_freq)            # (..., S, R/2)
    cos = np.cos(angles)
    sin = np.sin(angles)
    if scaling != 1.0:
        cos *= scaling
        sin *= scaling
    cos = cos.astype(np.float32)
    sin = sin.astype(np.float32)
    cos.setflags(write=False)
    sin.setflags(write=False)
    return cos, sin


@functools.lru_cache(maxsize=16)
def _rope_tables_cached(position_bytes, position_shape, inv_bytes, scaling):
    positions = np.frombuffer(position_bytes, np.int64).reshape(position_shape)
    return _rope_tables_uncached(positions, np.frombuffer(inv_bytes, np.float64), scaling)


def _rope_tables(positions, inv_freq, scaling):
    """float32 cos/sin tables for these positions and frequencies.  The q and k of every layer of one
    forward pass use the same ones, so tables up to 256 Ki entries are cached, keyed on the bytes of the
    positions and of inv_freq (the float64 cos/sin of a 128-token prefill cost more than the rotation)."""
    positions = np.asarray(positions).astype(np.int64, copy=False)
    if positions.size * inv_freq.size <= 1 << 18:
        return _rope_tables_cached(positions.tobytes(), positions.shape, inv_freq.tobytes(), scaling)
    return _rope_tables_uncached(positions, inv_freq, scaling)


def _rope(x, positions, inv_freq, scaling):
    # out = x * cos + rotate_half(x) * sin over the first R = 2 len(inv_freq) channels, with
    # rotate_half(x) = [-x2, x1] (Hugging Face / NeoX layout); channels R.. are copied.
    x = _f32(x)
    if x.size == 0:
        return np.empty(x.shape, np.float32)
    cos, sin = _rope_tables(positions, inv_freq, scaling)
    fz = _fused()
    if fz is not None:
        b, h, s, d = x.shape
        xc = _f32_flat(x)
        out = np.empty(x.shape, np.float32)
        c3 = cos.reshape(-1, s, cos.shape[-1])         # (1 or B, S, R/2)
        s3 = sin.reshape(c3.shape)
        args = (xc.reshape(b, h * s, d), c3, s3, out.reshape(b, h * s, d))
        if x.size < _PAR_MIN["rope"] or not _run_parallel(fz.rope_parallel, *args):
            fz.rope_serial(*args)
        return out
    return _rope_numpy(x, cos, sin)


def _rope_numpy(x, cos, sin):
    d = x.shape[-1]
    half = cos.shape[-1]
    rotary_dim = 2 * half
    cos2 = np.concatenate([cos, cos], axis=-1)        # ([B,] S, R): cos over both halves
    sin2 = np.stack([-sin, sin], axis=-2)             # ([B,] S, 2, R/2): the sign of rotate_half folded in
    if cos.ndim == 3:                                 # [B, S] positions: broadcast over the heads
        cos2, sin2 = cos2[:, None], sin2[:, None]
    xr = x[..., :rotary_dim]
    pairs = xr.reshape(x.shape[:-1] + (2, half))     # a view when x is contiguous: (x1, x2) on axis -2
    # [x2, x1] * [-sin, sin] in one pass over the swapped view (no concatenated copy of x)
    rotated = np.multiply(pairs[..., ::-1, :], sin2).reshape(xr.shape)
    if rotary_dim == d:
        out = np.multiply(x, cos2)                   # full-width: the fast path
        out += rotated
        return out
    out = np.empty(x.shape, np.float32)
    head = out[..., :rotary_dim]
    np.multiply(xr, cos2, out=head)
    head += rotated
    out[..., rotary_dim:] = x[..., rotary_dim:]
    return out


def apply_rope(x, positions, inv_freq, attention_scaling):
    """RoPE with given frequencies (YaRN, longrope, llama3 ...): angle = position * inv_freq (float64),
    cos and sin multiplied by ``attention_scaling``; R = 2 len(inv_freq) <= D channels rotated."""
    inv = np.asarray(inv_freq, dtype=np.float64).reshape(-1)
    return _rope(x, positions, inv, float(attention_scaling))


def apply_rope_positions(x, positions, base):
    return _rope(x, positions, _default_inv_freq(float(base), x.shape[-1]), 1.0)


def apply_rope_partial(x, positions, base, rotary_dim):
    return _rope(x, positions, _default_inv_freq(float(base), int(rotary_dim)), 1.0)


# --- attention ---------------------------------------------------------------------------------------

_NEG_INF32 = np.float32(-np.inf)


@functools.lru_cache(maxsize=64)
def _hidden_keys(sq, sk, first_key, causal, window):
    """(Sq, Sk - first_key) bool: True where query i (absolute position p = i + Sk - Sq) may not see
    key first_key + j; None when every key is visible."""
    if not causal:
        return None
    i = np.arange(sq)[:, None]
    j = np.arange(first_key, sk)[None, :]
    p = i + (sk - sq)
    visible = j <= p
    if window is not None:
        visible &= j > p - window
    if visible.all():
        return None
    hidden = ~visible
    hidden.setflags(write=False)
    return hidden


_NO_MASK = np.ones((1, 1), bool)


def gqa_attention(q, k, v, n_kv_heads, causal, scale, sliding_window, softcap, kv_mask):
    q = _f32(q)
    k = _f32(k)
    v = _f32(v)
    b, h, sq, d = q.shape
    kv, sk = k.shape[1], k.shape[2]
    if q.size == 0 or sk == 0:
        return np.zeros((b, h, sq, d), np.float32)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    window = None if sliding_window is None or not causal else int(sliding_window)
    fz = _fused()
    if fz is None:
        return _attention_numpy(q, k, v, kv, causal, scale, window, softcap, kv_mask)
    if fz.SGEMM_ADDRESS and _runtime.BLAS_IN_KERNELS:
        return _attention_blas(fz, q, k, v, kv, bool(causal), scale, window, softcap, kv_mask)
    return _attention_fused(fz, q, k, v, kv, bool(causal), scale, window, softcap, kv_mask)


def _score_terms(scale, softcap, kv_mask):
    """What the fused kernels take for the scores and masks: (fold, cap, has_cap, mask, has_mask).
    Scores are in log2 units: q K^T times fold = scale * log2(e), or scale / c with a softcap c, whose
    capped score is then multiplied by cap = c * log2(e); mask is kv_mask as C-contiguous bools (a
    placeholder when there is none)."""
    if softcap is None:
        fold, cap = scale * _LOG2E, 0.0
    else:
        fold, cap = scale / float(softcap), float(softcap) * _LOG2E
    if kv_mask is None:
        return fold, cap, softcap is not None, _NO_MASK, False
    return fold, cap, softcap is not None, np.ascontiguousarray(kv_mask, dtype=bool), True


def _attention_blas(fz, q, k, v, kv, causal, scale, window, softcap, kv_mask):
    """Both products in NumPy's BLAS, called from the kernel's tasks (see _fused), so that they run on
    every thread; K and V are read in place (a KV cache's view is not copied), and so are q and the
    output.  Kept lean: a decode step at KV 512 takes ~65 µs on one thread and each µs of Python around
    it shows (benchmarks/bench_two_threads.py)."""
    fold, cap, has_cap, mask, has_mask = _score_terms(scale, softcap, kv_mask)
    if not q.flags.c_contiguous:
        q = np.ascontiguousarray(q)
    b, h, sq, d = q.shape
    sk = k.shape[2]
    # BLAS reads K and V where they lie when it can: unit stride along d, rows at least d apart, no
    # negative stride (else a C-contiguous copy)
    ks, vs = k.strides, v.strides
    if not (ks[3] == 4 and ks[2] >= 4 * d and ks[1] >= 0 and ks[0] >= 0):
        k = np.ascontiguousarray(k)
    if not (vs[3] == 4 and vs[2] >= 4 * d and vs[1] >= 0 and vs[0] >= 0):
        v = np.ascontiguousarray(v)
    out = np.empty_like(q)
    if sq == 1:
        lo = max(0, sk - window) if window is not None else 0
        args = (q, k, v, kv, lo, causal, window or 0, fold, cap, has_cap, mask, has_mask, out)
        if (_runtime.THREADS < 2 or b * h * (sk - lo) * d < _PAR_MIN["attention"]
                or not _run_parallel(fz.decode_blas_parallel, *args)):
            fz.decode_blas_serial(*args)
        return out
    # prefill: one task per block of 8 queries, which multiply only the keys some query of the block
    # may see, head by head
    args = (q, k, v, kv, 8, causal, window or 0, fold, cap, has_cap, mask, has_mask, out)
    if (_runtime.THREADS < 2 or b * h * sq * sk * d < _PAR_MIN["attention"]
            or not _run_parallel(fz.prefill_blas_parallel, *args)):
        fz.prefill_blas_serial(*args)
    return out


def _attention_fused(fz, q, k, v, kv, causal, scale, window, softcap, kv_mask):
    """The products in NumPy's matmul and Numba loops (a NumPy without a 64-bit cblas_sgemm, or
    SAPIENT_CPU_BLAS_IN_KERNELS=0)."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    g = h // kv
    fold, cap, has_cap, mask, has_mask = _score_terms(scale, softcap, kv_mask)
    fold, cap = _f32c(fold), _f32c(cap)
    par = _PAR_MIN["attention"]
    if sq == 1:
        # decode: every query sees the same key range; weights from one fused kernel, then one BLAS
        # product per KV head with its group's rows
        lo = max(0, sk - window) if window is not None else 0
        qc = _f32_flat(q).reshape(b, kv, g, d)
        p = np.empty((b, kv, g, sk - lo), np.float32)
        args = (qc, _f32_flat(k), lo, fold, cap, has_cap, mask, has_mask, p)
        if b * h * (sk - lo) * d < par or not _run_parallel(fz.decode_weights_parallel, *args):
            fz.decode_weights_serial(*args)
        return np.matmul(p, v[:, :, lo:]).reshape(b, h, 1, d)
    # prefill: q reordered to (query, head) rows so that a block of queries is a block of rows; each
    # block multiplies only the keys some query of it may see (a causal prefill skips ~40% of the
    # products), its scores become weights in place, and its output rows are one more product.
    q2 = np.empty((b, kv, sq, g, d), np.float32)
    np.multiply(q.reshape(b, kv, g, sq, d).transpose(0, 1, 3, 2, 4), fold, out=q2)
    q2 = q2.reshape(b, kv, sq * g, d)
    out2 = np.empty((b, kv, sq * g, d), np.float32)
    kt = k.transpose(0, 1, 3, 2)
    off = sk - sq
    qb = sq if not causal else max(32, -(-sq // 8))   # at most 8 query blocks of >= 32 queries
    blocks = []                                        # (first query, end, first key, end key)
    for i0 in range(0, sq, qb):
        i1 = min(sq, i0 + qb)
        lo = max(0, i0 + off - window + 1) if window is not None else 0           # query i0's first key
        hi = i1 + off if causal else sk                                           # query i1-1's last
        blocks.append((i0, i1, lo, hi))
    # In phases over groups of blocks whose scores fit _PHASE_BYTES: every block's scores product,
    # then every softmax, then every output product.  On 2 threads, BLAS's threads and the parallel
    # softmax's then hand the cores over twice per group instead of twice per block (a softmax that
    # follows a BLAS product at once ran at half speed): a 128-token prefill took 1130 instead of
    # 1274 µs (benchmarks/bench_cpu_vs_torch.py; on 1 thread, the same 1532).
    for group in _phase_groups(blocks, b * kv * g * 4):
        scores = [np.matmul(q2[:, :, i0 * g:i1 * g], kt[:, :, :, lo:hi]) for i0, i1, lo, hi in group]
        for (i0, _, lo, _), s in zip(group, scores):
            args = (s, sq, sk, i0, g, lo, causal, window or 0, cap, has_cap, mask, has_mask)
            if s.size * d < par or not _run_parallel(fz.softmax_block_parallel, *args):
                fz.softmax_block_serial(*args)
        for (i0, i1, lo, hi), s in zip(group, scores):
            np.matmul(s, v[:, :, lo:hi], out=out2[:, :, i0 * g:i1 * g])
    return np.ascontiguousarray(out2.reshape(b, kv, sq, g, d).transpose(0, 1, 3, 2, 4)).reshape(b, h, sq, d)


#: The most bytes of attention scores a prefill keeps at once, unless one block alone needs more.
_PHASE_BYTES = 8 << 20


def _phase_groups(blocks, row_bytes):
    """Consecutive groups of query blocks ``(i0, i1, lo, hi)`` whose scores (``row_bytes`` per query and
    key) fit :data:`_PHASE_BYTES` together; a block that alone does not fit is a group of its own."""
    groups, group, size = [], [], 0
    for block in blocks:
        i0, i1, lo, hi = block
        need = row_bytes * (i1 - i0) * (hi - lo)
        if group and size + need > _PHASE_BYTES:
            groups.append(group)
            group, size = [], 0
        group.append(block)
        size += need
    if group:
        groups.append(group)
    return groups


def _attention_numpy(q, k, v, kv, causal, scale, window, softcap, kv_mask):
    b, h, sq, d = q.shape
    sk = k.shape[2]
    g = h // kv
    # Keys before the first query's window never get weight: drop them (a decode step with a
    # 4096-window over a longer cache reads only the window).
    first_key = max(0, sk - sq - window + 1) if window is not None else 0
    if first_key:
        k, v = k[:, :, first_key:], v[:, :, first_key:]
        if kv_mask is not None:
            kv_mask = kv_mask[:, first_key:]
    skw = sk - first_key
    # Query heads j*g ... (j+1)*g-1 share KV head j (Hugging Face repeat_kv order), so (B, H, Sq, d)
    # viewed as (B, KV, g*Sq, d) puts each group in the rows of one matmul against its K and V: no
    # repeated K/V.  The scale and log2(e) (the softmax uses exp2) go into this copy of q; with a
    # softcap c, q carries scale / c, tanh runs on the scores and c log2(e) multiplies them after.
    fold = scale / softcap if softcap is not None else scale * _LOG2E
    qg = np.multiply(q.reshape(b, kv, g * sq, d), _f32c(fold))
    scores = np.matmul(qg, k.transpose(0, 1, 3, 2))  # (B, KV, g*Sq, Skw), in log2 units
    if softcap is not None:
        np.tanh(scores, out=scores)
        scores *= _f32c(softcap * _LOG2E)
    s5 = scores.reshape(b, kv, g, sq, skw)           # a view: the group's query heads on axis 2
    # Hidden scores are replaced by -inf, not added to: a NaN key that a mask hides must not leak
    hidden = _hidden_keys(sq, sk, first_key, bool(causal), window)
    if hidden is not None:
        np.copyto(s5, _NEG_INF32, where=hidden)
    sees = None
    if kv_mask is not None:
        visible = np.asarray(kv_mask, dtype=bool).reshape(b, 1, 1, 1, skw)
        np.copyto(s5, _NEG_INF32, where=~visible)
        if hidden is not None:
            visible = visible & ~hidden
        # whether each query row sees a key at all (the masks alone decide; a row of -inf scores that
        # sees keys is 0 / 0, NaN, as the formula): shaped to broadcast over (B, KV, g*Sq, 1)
        sees = np.broadcast_to(visible.any(axis=-1, keepdims=True), (b, 1, g, sq, 1)).reshape(b, 1, g * sq, 1)
    row_max = scores.max(axis=-1, keepdims=True)
    if sees is not None:
        row_max = np.where(sees, row_max, np.float32(0.0))   # a row that sees no key: exp2(-inf - 0) = 0
    scores -= row_max
    np.exp2(scores, out=scores)
    denom = scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v)                       # (B, KV, g*Sq, d)
    if sees is not None:
        denom = np.where(sees, denom, np.float32(1.0))       # ... and its output 0 / 1 = 0, never 0 / 0
    out /= denom
    return out.reshape(b, h, sq, d)


# --- logits ------------------------------------------------------------------------------------------

def _softcap_logits(logits, softcap):
    """``logits <- c tanh(logits / c)`` in place (Gemma 2's final_logit_softcapping)."""
    if softcap is not None:
        c = _f32c(softcap)
        logits /= c
        np.tanh(logits, out=logits)
        logits *= c
    return logits


def logits_from_hidden(hidden, lm_head, softcap):
    hidden = _f32(hidden)
    w = _f32(lm_head)
    if hidden.shape[1] == 0:                         # B = 0 (the core refuses S = 0 for B > 0)
        return np.zeros((hidden.shape[0], w.shape[0]), np.float32)
    return _softcap_logits(np.dot(hidden[:, -1, :], w.T), softcap)


def all_logits_from_hidden(hidden, lm_head, softcap):
    return _softcap_logits(linear_3d(hidden, lm_head), softcap)


# --- embedding ---------------------------------------------------------------------------------------

def embedding(ids, table):
    """Row ``ids[b, s]`` of ``table`` (ids already range-checked by the core); only the gathered rows
    are converted to float32, never the whole table."""
    rows = np.take(table, ids, axis=0)
    return rows if rows.dtype is _F32 else rows.astype(np.float32)
