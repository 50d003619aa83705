"""The CPU plugin's fast-path switches: whether the fused Numba kernels run, and on how many threads.

Read once, when the first op that can use a fused kernel runs (importing this module reads nothing
and imports no Numba):

- ``SAPIENT_CPU_FUSED``: ``1`` (default) uses the fused kernels of :mod:`._fused` when Numba imports;
  ``0`` runs the NumPy kernels only.
- ``SAPIENT_CPU_BLAS_IN_KERNELS``: ``1`` (default) lets the fused attention call NumPy's own
  OpenBLAS from its threads (its two products, in decode and prefill), where NumPy's BLAS exports
  ``cblas_sgemm`` with 64-bit integers (NumPy's OpenBLAS wheels); ``0``, or a NumPy without it: a
  decode step's scores in Numba loops, every other product through NumPy's matmul.
- ``SAPIENT_CPU_THREADS``: the threads a fused kernel may use (an integer >= 1).  Unset: the first
  entry of ``OMP_NUM_THREADS`` when that is set (as torch and OpenBLAS read it, so that a process
  told ``OMP_NUM_THREADS=1`` runs one thread here too), else the CPUs this process may run on
  (``os.sched_getaffinity``, else ``os.cpu_count()``).  Large inputs only:
  below the per-op sizes in :data:`PARALLEL_MIN` a kernel runs on the calling thread, since waking a
  second thread costs more than it saves.  Matrix products are NumPy's BLAS, whose own thread count
  (``OPENBLAS_NUM_THREADS`` ...) this does not change.

:func:`configure` changes the same settings at run time (the tests use it to run every kernel on
every path).  :func:`run_parallel` and :func:`call_parallel` run a ``parallel=True`` Numba kernel on
Numba's thread pool (OpenMP, TBB or its own workqueue); waking it costs 5-10 µs from sleep, ~1.7 µs
while its threads still spin after a kernel (see GOMP_SPINCOUNT below).  One parallel kernel runs at a time (a
second thread calling an op meanwhile runs the serial kernel, so the plugin stays thread-safe with
every Numba threading layer), and none runs in a child process forked after the pool started (GNU
OpenMP is not fork-safe): the child uses the serial kernels.  Matrix products run on BLAS's threads;
GOMP_SPINCOUNT (below) keeps the two pools from fighting for the cores.

(Measured and dropped: splitting a long attention prefill over the KV heads between Python threads.
With BLAS on two threads as well, it was slower than BLAS's threads plus the parallel softmax: 1456
against 1285 µs for a 128-token prefill on 2 cores.)

(Attention on two threads: with the Numba dot products and NumPy's matmul, a decode step was the
parallel weights kernel (KV 2048: 352 µs on 1 thread, 184 on 2) plus one BLAS product of the weights
with V per KV head, which OpenBLAS does not split at these sizes (75 µs on 1 or 2 threads): the step
gained ~1.65x from a second thread where torch gains ~2x.  Products in Numba loops were 2-3x slower
than BLAS, and np.dot inside ``prange`` needs SciPy's cython_blas (a second OpenBLAS, whose pool
nested in Numba's: KV 2048 450 µs on 2 threads).  So the kernels call NumPy's own cblas_sgemm
(``_fused``, "BLAS inside the kernels"), in pieces that OpenBLAS runs on the calling thread: KV 512 /
2048 69 / 250 µs on 1 thread and 40 / 133 on 2, against 112 / 416 and 74 / 268 before; a 128-token
prefill 1194 on 1 and 605 on 2, against 1528 and 1115-1172 (benchmarks/bench_cpu_vs_torch.py).)

(Why add and mul gain less than torch does, [1, 128, 2048] on 2 threads: the kernel, allocating its
result itself, takes 20.5-21.7 µs called straight from Python (NumPy's one-thread loop 33-35 µs): a
flat loop, two halves or 8-32 blocks per call all measured the same, and so did inputs and output
aligned to 64 bytes.  Launching a Numba parallel loop costs ~1.9 µs (8 empty tasks), and the Python
from the backend object to the kernel ~1.8 µs: 22.3 µs in all, where torch's whole call takes
19.9-20.7 µs (its kernel, into an existing output, 19.9-22.0).  benchmarks/bench_two_threads.py
measures, per op, the call against the kernel it runs on 1 and 2 threads: the fixed cost per call
(1-6 µs: checks, Python, allocation, launching the pool) is what a second thread cannot share.)
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger("sapient_core")

__all__ = ["configure", "info", "fused", "call_parallel", "run_parallel", "PARALLEL_MIN"]

_UNLOADED = object()

#: The fused-kernel module once loaded, None when the NumPy kernels are to run, or _UNLOADED.
FUSED = _UNLOADED
#: Why the fused kernels are off (when they are).
REASON = ""
#: Threads a parallel kernel may use (resolved on first use).
THREADS = 0
#: Where THREADS came from: "configure", "SAPIENT_CPU_THREADS", "OMP_NUM_THREADS" or "cpus".
THREADS_FROM = ""
#: Whether the fused kernels may call NumPy's BLAS from their threads (resolved on first use; they do
#: only where ``FUSED.SGEMM_ADDRESS`` is set as well).
BLAS_IN_KERNELS = True
#: Element counts from which a kernel runs in parallel (when THREADS > 1), per kind of kernel.
#: Measured on 2 cores (benchmarks/bench_cpu_vs_torch.py): below these, waking the second thread
#: (~5-10 µs with Numba's OpenMP pool) costs more than half the kernel.
PARALLEL_MIN = {"elementwise": 1 << 16, "activation": 1 << 15, "norm": 1 << 15, "rope": 1 << 15,
                "attention": 1 << 17}
_DEFAULT_MIN = dict(PARALLEL_MIN)

_parallel_ok = True                  # False in a child forked after the thread pool started
_pool_started = False
_lock = threading.Lock()             # one parallel kernel at a time
_load_lock = threading.Lock()
_tls = threading.local()
_fused_setting = None                # None: from the environment; True / False: configure()
_threads_setting = None
_blas_setting = None                 # None: from the environment; True / False: configure()


def _default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _positive_int(raw):
    """``raw`` as an integer >= 1, or None."""
    try:
        n = int(raw)
    except ValueError:
        return None
    return n if n >= 1 else None


def _env_threads():
    """(threads, where the number came from): ``SAPIENT_CPU_THREADS``, else ``OMP_NUM_THREADS`` (its
    first entry, the outermost level's count, as OpenMP reads it), else the CPUs available."""
    raw = os.environ.get("SAPIENT_CPU_THREADS", "").strip()
    if raw:
        n = _positive_int(raw)
        if n is not None:
            return n, "SAPIENT_CPU_THREADS"
        logger.warning("SAPIENT_CPU_THREADS=%r is not an integer >= 1; ignoring it. To remedy this, set it "
                       "to e.g. 1 or 2", raw)
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if raw:
        n = _positive_int(raw.split(",")[0].strip())
        if n is not None:
            return n, "OMP_NUM_THREADS"
        logger.warning("OMP_NUM_THREADS=%r does not start with an integer >= 1; ignoring it. To remedy "
                       "this, set it (or SAPIENT_CPU_THREADS) to e.g. 1 or 2", raw)
    return _default_threads(), "cpus"


def _env_on(name, setting):
    """A 0/1 switch: ``setting`` when configure() set it, else the environment variable (default 1)."""
    if setting is not None:
        return setting
    raw = os.environ.get(name, "1").strip().lower()
    if raw in ("0", "false", "off", "no"):
        return False
    if raw not in ("1", "true", "on", "yes", ""):
        logger.warning("%s=%r is not 0 or 1; using 1", name, raw)
    return True


def load():
    """Resolve the settings and import the fused kernels if they are wanted: the module or None."""
    global FUSED, REASON, THREADS, THREADS_FROM, BLAS_IN_KERNELS
    with _load_lock:
        if FUSED is not _UNLOADED:
            return FUSED
        if _threads_setting:
            THREADS, THREADS_FROM = _threads_setting, "configure"
        else:
            THREADS, THREADS_FROM = _env_threads()
        BLAS_IN_KERNELS = _env_on("SAPIENT_CPU_BLAS_IN_KERNELS", _blas_setting)
        if not _env_on("SAPIENT_CPU_FUSED", _fused_setting):
            REASON = "switched off (SAPIENT_CPU_FUSED=0 or configure(fused=False))"
            FUSED = None
            return None
        try:
            from . import _fused
        except Exception as exc:  # noqa: BLE001 - Numba missing or broken: the NumPy kernels serve
            REASON = f"Numba unavailable ({type(exc).__name__}: {exc})"
            logger.warning("sapient-backend-cpu: the fused kernels are off: %s; the NumPy kernels run "
                           "instead (slower). To remedy this: pip install numba", REASON)
            FUSED = None
            return None
        REASON = ""
        FUSED = _fused
        pool = _pool_size()
        if THREADS > pool and THREADS_FROM == "SAPIENT_CPU_THREADS":    # OMP_NUM_THREADS: a shared hint
            logger.warning("sapient-backend-cpu: SAPIENT_CPU_THREADS asks for %d threads, but Numba's pool "
                           "has %d (NUMBA_NUM_THREADS, by default the CPU count): %d run. To remedy this, "
                           "set NUMBA_NUM_THREADS=%d before Python starts, or ask for fewer threads",
                           THREADS, pool, pool, THREADS)
        return _fused


def _pool_size():
    """The most threads Numba's pool runs (NUMBA_NUM_THREADS; imports Numba)."""
    import numba

    return numba.config.NUMBA_NUM_THREADS


def fused():
    """The fused-kernel module, or None when the NumPy kernels are to run."""
    fz = FUSED
    return load() if fz is _UNLOADED else fz


def _acquire():
    """True, holding the parallel lock with Numba's pool ready, when a parallel kernel may run now;
    False when it must not (one thread configured, a forked child, or another thread's parallel
    kernel running)."""
    global _pool_started
    if THREADS < 2 or not _parallel_ok or not _lock.acquire(blocking=False):
        return False
    try:
        if not _pool_started:
            _tame_openmp_spinning()
            _pool_started = True
        if getattr(_tls, "threads", 0) != THREADS:      # Numba's thread count is per calling thread
            import numba
            numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
            _tls.threads = THREADS
    except BaseException:
        _lock.release()
        raise
    return True


def run_parallel(kernel, *args):
    """Run ``kernel(*args)`` (a ``parallel=True`` Numba kernel that writes into its arguments) on
    THREADS threads and return True; return False without running it when it must not run in
    parallel now (see :func:`_acquire`): the caller then runs the serial one."""
    if not _acquire():
        return False
    try:
        kernel(*args)
    finally:
        _lock.release()
    return True


def call_parallel(kernel, *args):
    """``kernel(*args)`` (a ``parallel=True`` Numba kernel that returns an array) on THREADS threads,
    or None without running it when it must not run in parallel now."""
    if not _acquire():
        return None
    try:
        return kernel(*args)
    finally:
        _lock.release()


#: GNU OpenMP's spin count for Numba's pool, unless the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT.
#: libgomp's default (300000 spins, milliseconds) keeps a core busy after every parallel kernel while
#: the next op, often a BLAS product with its own threads, needs it: one Llama layer on 2 threads took
#: 114 ms (prefill) and 10.4 ms (decode, KV 512) instead of 77 and 5.7 ms; 2000 spins (tens of µs)
#: keep the pool awake between back-to-back kernels (add stays 23 µs; a passive pool makes it 45 µs).
GOMP_SPINCOUNT = "2000"


def _tame_openmp_spinning():
    """Set GOMP_SPINCOUNT before Numba starts its OpenMP pool (libgomp reads it when it loads), if the
    user has not chosen a wait policy.  It also applies to any other GNU OpenMP runtime loaded into
    this process later; set OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself to opt out."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT


def configure(*, fused=None, threads=None, parallel_min=None, blas_in_kernels=None, reset=False):
    """Change the fast-path settings at run time (thread-unsafe: call it while no op runs).

    :param fused: True: fused kernels (if Numba imports); False: NumPy kernels only.
    :param threads: threads for the parallel kernels (>= 1).
    :param parallel_min: one element count from which every kind of kernel runs in parallel (0: always,
        for tests), instead of the measured :data:`PARALLEL_MIN`.
    :param blas_in_kernels: True: the fused kernels may call NumPy's BLAS (where it has cblas_sgemm
        with 64-bit integers); False: Numba loops and NumPy's matmul instead.
    :param reset: back to the environment's settings and the measured thresholds first.
    :returns: :func:`info` after the change.
    """
    global FUSED, _fused_setting, _threads_setting, _blas_setting
    with _load_lock:
        if reset:
            _fused_setting = _threads_setting = _blas_setting = None
            PARALLEL_MIN.update(_DEFAULT_MIN)
        if fused is not None:
            _fused_setting = bool(fused)
        if threads is not None:
            if int(threads) < 1:
                raise ValueError(f"configure: threads must be >= 1, got {threads!r}")
            _threads_setting = int(threads)
        if blas_in_kernels is not None:
            _blas_setting = bool(blas_in_kernels)
        if parallel_min is not None:
            for key in PARALLEL_MIN:
                PARALLEL_MIN[key] = int(parallel_min)
        FUSED = _UNLOADED                                # resolved again on the next op
    return info()


def info():
    """What runs now: ``{"fused": bool, "reason": str, "threads": int, "threads_from": str,
    "threading_layer": str|None, "blas_in_kernels": bool, "parallel_min": dict}``.

    ``threads`` is the most threads a parallel kernel runs on: the count asked for, capped by Numba's
    pool (``NUMBA_NUM_THREADS``) when the fused kernels run.  ``threads_from`` says where the count
    came from: ``"configure"``, ``"SAPIENT_CPU_THREADS"``, ``"OMP_NUM_THREADS"`` or ``"cpus"`` (the
    CPUs available).  ``blas_in_kernels``: the fused kernels call NumPy's BLAS from their threads;
    False when switched off or when NumPy's BLAS has no 64-bit cblas_sgemm."""
    fz = fused()
    layer = None
    if fz is not None:
        try:
            import numba
            layer = numba.threading_layer()
        except Exception:  # noqa: BLE001 - no parallel kernel has run yet
            layer = None
    threads = THREADS if fz is None else min(THREADS, _pool_size())
    return {"fused": fz is not None, "reason": REASON, "threads": threads, "threads_from": THREADS_FROM,
            "threading_layer": layer,
            "blas_in_kernels": bool(fz is not None and fz.SGEMM_ADDRESS and BLAS_IN_KERNELS),
            "parallel_min": dict(PARALLEL_MIN)}


def _after_fork_in_child():
    global _parallel_ok
    if _pool_started:
        _parallel_ok = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
