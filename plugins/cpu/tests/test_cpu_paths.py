"""The plugin's code paths (``sapient_backend_cpu._runtime``): the fused kernels' serial and parallel
versions agree bit for bit, calls from several threads at once are safe, a forked child works, the
switches are read as documented, and importing the plugin imports no Numba."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from cpu_numpy_blas import NUMPY_HAS_OPENBLAS
from sapient_backend_cpu import _runtime, kernels

F32 = np.float32


@pytest.fixture(autouse=True)
def _restore():
    yield
    kernels.configure(reset=True)


def _inputs(rng):
    f = lambda *s: rng.standard_normal(s).astype(F32)  # noqa: E731
    return {"x": f(3, 37, 512) * 3, "w": f(512), "b": f(512), "q": f(2, 8, 37, 32), "q1": f(2, 8, 1, 32),
            "k": f(2, 2, 40, 32), "v": f(2, 2, 40, 32), "pos": np.arange(3, 40), "mask": rng.random((2, 40)) > 0.2,
            "q64": f(2, 8, 40, 64), "kbuf": f(2, 2, 1200, 64), "vbuf": f(2, 2, 1200, 64),
            "mask700": rng.random((2, 700)) > 0.1}


CALLS = {
    "rms_norm": lambda a: kernels.rms_norm(a["x"], a["w"], 1e-6),
    "layer_norm": lambda a: kernels.layer_norm(a["x"], a["w"], a["b"], 1e-5),
    "layer_norm no bias": lambda a: kernels.layer_norm(a["x"], a["w"], None, 1e-5),
    "silu": lambda a: kernels.silu(a["x"]),
    "gelu": lambda a: kernels.gelu(a["x"], "none"),
    "gelu tanh": lambda a: kernels.gelu(a["x"], "tanh"),
    "add": lambda a: kernels.add(a["x"], a["x"][::-1].copy()),
    "add row": lambda a: kernels.add(a["w"], a["x"]),
    "mul row": lambda a: kernels.mul(a["x"], a["b"]),
    "rope": lambda a: kernels.apply_rope_positions(a["q"], a["pos"], 10000.0),
    "rope [B, S]": lambda a: kernels.apply_rope(a["q"], np.stack([a["pos"], a["pos"] * 2]),
                                                 np.geomspace(1, 1e-4, 12).astype(F32), 1.1),
    "attention decode": lambda a: kernels.gqa_attention(a["q1"], a["k"], a["v"], 2, True, None, 7, 20.0, a["mask"]),
    "attention prefill": lambda a: kernels.gqa_attention(a["q"], a["k"], a["v"], 2, True, 0.3, 9, None, a["mask"]),
    "attention decode, long cache view": lambda a: kernels.gqa_attention(
        a["q64"][:, :, -1:], a["kbuf"][:, :, :1100], a["vbuf"][:, :, :1100], 2, True, None, None, 30.0, None),
    "attention prefill, long cache view": lambda a: kernels.gqa_attention(
        a["q64"], a["kbuf"][:, :, :700], a["vbuf"][:, :, :700], 2, True, None, 600, None, a["mask700"]),
}


def _blas_settings(op):
    return [True, False] if op.startswith("attention") else [True]


@pytest.mark.parametrize("op,blas", [(op, blas) for op in CALLS for blas in _blas_settings(op)])
def test_serial_and_parallel_fused_kernels_agree_bit_for_bit(op, blas):
    a = _inputs(np.random.default_rng(1))
    state = kernels.configure(reset=True, fused=True, threads=1, blas_in_kernels=blas)
    assert state["blas_in_kernels"] == (blas and NUMPY_HAS_OPENBLAS), state
    serial = CALLS[op](a)
    kernels.configure(threads=2, parallel_min=0)
    parallel = CALLS[op](a)
    np.testing.assert_array_equal(serial, parallel)
    kernels.configure(fused=False)
    reference = CALLS[op](a)                        # the NumPy path: the same values at float32 rounding
    np.testing.assert_allclose(parallel, reference, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_prefill_gives_the_same_result_in_any_grouping_of_its_query_blocks(monkeypatch, threads):
    """The fused prefill without BLAS inside its kernels runs its query blocks in phases (every scores
    product, every softmax, every output product) over groups that fit _PHASE_BYTES: the grouping
    changes the order, never a value."""
    rng = np.random.default_rng(3)
    f = lambda *s: rng.standard_normal(s).astype(F32)  # noqa: E731
    q, k, v = f(2, 8, 200, 16), f(2, 2, 230, 16), f(2, 2, 230, 16)    # 200 queries: 7 blocks of 32
    mask = rng.random((2, 230)) > 0.1
    kernels.configure(reset=True, fused=True, threads=threads, parallel_min=0, blas_in_kernels=False)
    calls = [lambda: kernels.gqa_attention(q, k, v, 2, True, None, None, None, None),
             lambda: kernels.gqa_attention(q, k, v, 2, True, 0.2, 50, 30.0, mask)]
    whole = [call() for call in calls]
    row_bytes = 2 * 2 * 4 * 4
    blocks = [(i0, min(200, i0 + 32), 0, min(200, i0 + 32) + 30) for i0 in range(0, 200, 32)]
    assert len(kernels._phase_groups(blocks, row_bytes)) == 1                 # all 7 blocks at once
    for budget, n_groups in [(0, 7), (row_bytes * 32 * 300, 4)]:                # 62+94+126 | 158 | 190 | 222+58
        monkeypatch.setattr(kernels, "_PHASE_BYTES", budget)
        groups = kernels._phase_groups(blocks, row_bytes)
        assert len(groups) == n_groups and [blk for grp in groups for blk in grp] == blocks
        assert all(len(grp) == 1 or sum(row_bytes * (i1 - i0) * (hi - lo) for i0, i1, lo, hi in grp) <= budget
                   for grp in groups)
        for call, expected in zip(calls, whole):
            np.testing.assert_array_equal(call(), expected)


def test_concurrent_calls_from_several_threads_are_safe_and_exact():
    """Eight Python threads hammer the ops with the parallel kernels forced, and a ninth NumPy's BLAS:
    each result equals the serial one (a thread that finds a parallel kernel running runs the serial
    kernel instead; the attention kernels' own BLAS calls share NumPy's OpenBLAS)."""
    a = _inputs(np.random.default_rng(2))
    kernels.configure(reset=True, fused=True, threads=1)
    want = {op: f(a) for op, f in CALLS.items()}
    kernels.configure(threads=2, parallel_min=0)
    errors = []

    def worker():
        try:
            for _ in range(20):
                for op, f in CALLS.items():
                    np.testing.assert_array_equal(f(a), want[op], err_msg=op)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    big = np.random.default_rng(5).standard_normal((256, 256)).astype(F32)
    big_want = big @ big

    def matmul_worker():            # NumPy's own (threaded) OpenBLAS calls meanwhile, as an engine makes
        try:
            for _ in range(200):
                np.testing.assert_array_equal(big @ big, big_want)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)] + [threading.Thread(target=matmul_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]


def _child(queue):
    a = _inputs(np.random.default_rng(3))
    queue.put((kernels.silu(a["x"]), _runtime._parallel_ok))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork exists on POSIX only; elsewhere there is nothing to test")
def test_a_child_forked_after_parallel_kernels_ran_uses_the_serial_kernels():
    a = _inputs(np.random.default_rng(3))
    kernels.configure(reset=True, fused=True, threads=2, parallel_min=0)
    want = kernels.silu(a["x"])                     # starts Numba's thread pool in this process
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    got, parallel_ok = queue.get(timeout=120)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert parallel_ok is False
    np.testing.assert_array_equal(got, want)


def _threads(state):
    return state["threads"], state["threads_from"]


def test_switches_from_the_environment(monkeypatch, caplog):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SAPIENT_CPU_BLAS_IN_KERNELS", raising=False)
    cpus = _runtime._default_threads()
    monkeypatch.setenv("SAPIENT_CPU_FUSED", "0")
    monkeypatch.setenv("SAPIENT_CPU_THREADS", "3")
    state = kernels.configure(reset=True)
    assert state["fused"] is False and _threads(state) == (3, "SAPIENT_CPU_THREADS")
    assert "SAPIENT_CPU_FUSED=0" in state["reason"]
    monkeypatch.setenv("SAPIENT_CPU_FUSED", "1")
    monkeypatch.setenv("SAPIENT_CPU_THREADS", "lots")
    with caplog.at_level("WARNING", logger="sapient_core"):
        state = kernels.configure(reset=True)
    assert state["fused"] is True and _threads(state) == (cpus, "cpus")
    assert "SAPIENT_CPU_THREADS='lots' is not an integer >= 1" in caplog.text
    monkeypatch.delenv("SAPIENT_CPU_THREADS")
    assert _threads(kernels.configure(reset=True)) == (cpus, "cpus")
    assert _threads(kernels.configure(threads=5)) == (min(5, _runtime._pool_size()), "configure")   # what Numba's pool runs
    assert kernels.configure(reset=True)["blas_in_kernels"] is NUMPY_HAS_OPENBLAS
    monkeypatch.setenv("SAPIENT_CPU_BLAS_IN_KERNELS", "0")
    assert kernels.configure(reset=True)["blas_in_kernels"] is False
    monkeypatch.setenv("SAPIENT_CPU_BLAS_IN_KERNELS", "maybe")
    with caplog.at_level("WARNING", logger="sapient_core"):
        assert kernels.configure(reset=True)["blas_in_kernels"] is NUMPY_HAS_OPENBLAS
    assert "SAPIENT_CPU_BLAS_IN_KERNELS='maybe' is not 0 or 1" in caplog.text
    assert kernels.configure(blas_in_kernels=False)["blas_in_kernels"] is False   # configure() wins
    with pytest.raises(ValueError, match="threads must be >= 1"):
        kernels.configure(threads=0)


@pytest.mark.parametrize("omp,mine,want", [("1", None, (1, "OMP_NUM_THREADS")),
                                            (" 3, 2", None, (3, "OMP_NUM_THREADS")),
                                            ("1", "2", (2, "SAPIENT_CPU_THREADS")),
                                            ("0", None, (None, "cpus")), ("two", "0", (None, "cpus"))])
def test_omp_num_threads_is_the_default_thread_count(monkeypatch, caplog, omp, mine, want):
    """Unless SAPIENT_CPU_THREADS says otherwise, the fused kernels take the thread count torch and
    OpenBLAS take: OMP_NUM_THREADS's first entry (a process told OMP_NUM_THREADS=1 runs one thread);
    a value that is not a count is ignored with a warning naming it."""
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    if mine is None:
        monkeypatch.delenv("SAPIENT_CPU_THREADS", raising=False)
    else:
        monkeypatch.setenv("SAPIENT_CPU_THREADS", mine)
    with caplog.at_level("WARNING", logger="sapient_core"):
        got = _threads(kernels.configure(reset=True))
    assert got == (min(want[0] or _runtime._default_threads(), _runtime._pool_size()), want[1])
    assert _runtime.THREADS == (want[0] or _runtime._default_threads())
    assert (f"OMP_NUM_THREADS={omp!r}" in caplog.text) is (want[1] == "cpus")


def _python(code, env=None, timeout=300):
    """Run ``code`` in a fresh interpreter with the fused kernels on (``env``: the whole environment,
    default this one's); its output, after checking that it exited 0."""
    env = dict(os.environ if env is None else env, SAPIENT_CPU_FUSED="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


def test_importing_the_plugin_imports_no_numba():
    code = ("import sys, numpy as np, sapient_core, sapient_backend_cpu.plugin, sapient_backend_cpu.kernels as k; "
            "assert 'numba' not in sys.modules; "
            "k.rms_norm(np.ones((2, 4), np.float32), np.ones(4, np.float32), 1e-6); "
            "assert 'numba' in sys.modules")
    _python(code)


def test_without_numba_the_numpy_kernels_serve_with_a_warning():
    """A platform without Numba wheels: the plugin still works, on the NumPy kernels, and says why."""
    code = ("import sys, logging; sys.modules['numba'] = None; logging.basicConfig(); "
            "import numpy as np, sapient_backend_cpu.kernels as k; "
            "y = k.silu(np.array([1.0, -1.0], np.float32)); s = k.info(); "
            "assert not s['fused'] and 'Numba unavailable' in s['reason'], s; print(y)")
    out = _python(code)
    assert "pip install numba" in out.stderr
    np.testing.assert_allclose([float(v) for v in out.stdout.strip(" []\n").split()], [0.7310586, -0.26894143],
                               rtol=1e-6)


@pytest.mark.parametrize("user_env,want", [({}, "2000"), ({"GOMP_SPINCOUNT": "77"}, "77"),
                                           ({"OMP_WAIT_POLICY": "PASSIVE"}, None)])
def test_openmp_spin_count_is_tamed_unless_the_user_chose(user_env, want):
    """Before Numba's pool starts, GOMP_SPINCOUNT is set to _runtime.GOMP_SPINCOUNT (libgomp's default
    spinning slows the BLAS products between fused kernels 1.5-2x on 2 cores), never over the user's."""
    code = ("import os, numpy as np, sapient_backend_cpu.kernels as k; "
            "k.configure(threads=2, parallel_min=0); k.silu(np.ones(100, np.float32)); "
            "print(os.environ.get('GOMP_SPINCOUNT'))")
    env = {key: v for key, v in os.environ.items() if key not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(user_env)
    assert _python(code, env).stdout.strip() == str(want)


def test_more_threads_than_numbas_pool_are_reported_as_what_runs():
    """Asking for more threads than Numba's pool holds (NUMBA_NUM_THREADS) through SAPIENT_CPU_THREADS
    warns, naming both counts and the remedy; info() reports the pool's count, what the parallel
    kernels run on, whichever variable asked."""
    code = ("import logging, numpy as np; logging.basicConfig(); from sapient_backend_cpu import kernels; "
            "x = np.ones((1, 128, 2048), np.float32); np.testing.assert_allclose(kernels.silu(x), 1 / (1 + np.exp(-1.0)), rtol=1e-6); "
            "s = kernels.info(); assert s['threads'] == 1 and s['threads_from'] == 'SAPIENT_CPU_THREADS', s; print('ok')")
    out = _python(code, dict(os.environ, SAPIENT_CPU_THREADS="3", NUMBA_NUM_THREADS="1"))
    assert out.stdout.strip() == "ok"
    assert "SAPIENT_CPU_THREADS asks for 3 threads, but Numba's pool has 1" in out.stderr
    assert "NUMBA_NUM_THREADS=3" in out.stderr
    # OMP_NUM_THREADS is a hint shared with every OpenMP runtime: capped to the pool without a warning
    env = {key: v for key, v in os.environ.items() if key != "SAPIENT_CPU_THREADS"}
    out = _python(code.replace("'SAPIENT_CPU_THREADS'", "'OMP_NUM_THREADS'"),
                  dict(env, OMP_NUM_THREADS="3", NUMBA_NUM_THREADS="1"))
    assert out.stdout.strip() == "ok" and "asks for" not in out.stderr


def test_omp_num_threads_1_keeps_the_fused_kernels_on_one_thread():
    """In a fresh process given OMP_NUM_THREADS=1 (and no SAPIENT_CPU_THREADS), a large add runs NumPy's
    one-thread loop and no parallel kernel starts Numba's pool."""
    code = ("import numpy as np, sapient_core; from sapient_backend_cpu import _runtime, kernels; "
            "x = np.ones((1, 128, 2048), np.float32); "
            "y = sapient_core.get_backend('cpu').add(x, x); s = kernels.info(); "
            "assert float(y.sum()) == 2 * x.size and s['threads'] == 1 and s['threads_from'] == 'OMP_NUM_THREADS', s; "
            "assert _runtime._pool_started is False; print('ok')")
    env = {key: v for key, v in os.environ.items() if key != "SAPIENT_CPU_THREADS"}
    assert _python(code, dict(env, OMP_NUM_THREADS="1")).stdout.strip() == "ok"


@pytest.mark.parametrize("blas", [True, False])
def test_attention_runs_the_kernels_its_settings_name(monkeypatch, blas):
    """With BLAS in the kernels (where NumPy has it) a decode step and a prefill run decode_blas_* and
    prefill_blas_*; without, the Numba dot products and NumPy's matmul."""
    fz = _runtime.fused()
    state = kernels.configure(reset=True, fused=True, threads=1, blas_in_kernels=blas)
    calls = []
    for name in ("decode_blas_serial", "prefill_blas_serial", "decode_weights_serial", "softmax_block_serial"):
        kernel = getattr(fz, name)
        monkeypatch.setattr(fz, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
    a = _inputs(np.random.default_rng(4))
    CALLS["attention decode"](a)
    CALLS["attention prefill"](a)
    if state["blas_in_kernels"]:
        assert calls == ["decode_blas_serial", "prefill_blas_serial"]
    else:
        assert calls[0] == "decode_weights_serial" and set(calls[1:]) == {"softmax_block_serial"}
    assert state["blas_in_kernels"] == (blas and NUMPY_HAS_OPENBLAS)


@pytest.mark.skipif(not NUMPY_HAS_OPENBLAS, reason="NumPy's BLAS has no 64-bit cblas_sgemm here: no BLAS kernels")
@pytest.mark.parametrize("sq", [1, 4])
def test_blas_attention_reads_a_kv_cache_view_in_place(monkeypatch, sq):
    """A KV cache hands attention a view of its longer buffer: the BLAS kernels get that view itself.
    A view BLAS cannot read (a reversed or strided head dimension, rows closer than d, a negative
    stride) reaches them as a C-contiguous copy, and gives the bits the copy gives."""
    fz = _runtime.fused()
    kernels.configure(reset=True, fused=True, threads=1, blas_in_kernels=True)
    seen = []
    for name in ("decode_blas_serial", "prefill_blas_serial"):
        kernel = getattr(fz, name)
        monkeypatch.setattr(fz, name, lambda *a, _k=kernel: (seen.append(a), _k(*a))[1])
    rng = np.random.default_rng(11)
    kbuf, vbuf = (rng.standard_normal((2, 2, 300, 64)).astype(F32) for _ in range(2))
    q = rng.standard_normal((2, 4, sq, 64)).astype(F32)
    kview, vview = kbuf[:, :, :257], vbuf[:, :, :257]
    got = kernels.gqa_attention(q, kview, vview, 2, True, None, None, None, None)
    assert seen[-1][1] is kview and seen[-1][2] is vview
    np.testing.assert_array_equal(got, kernels.gqa_attention(q, kview.copy(), vview.copy(), 2, True, None, None,
                                                             None, None))
    for cut in (np.s_[::-1], np.s_[:, :, :, ::2], np.s_[:, :, :, ::-1]):
        k, v = kbuf[cut][:, :, :257], vbuf[cut][:, :, :257]
        qc = q[..., :k.shape[3]].copy()
        got = kernels.gqa_attention(qc, k, v, 2, True, None, None, None, None)
        for passed, view, buf in ((seen[-1][1], k, kbuf), (seen[-1][2], v, vbuf)):
            assert passed.flags.c_contiguous and not np.shares_memory(passed, buf)
            np.testing.assert_array_equal(passed, view)
        np.testing.assert_array_equal(got, kernels.gqa_attention(qc, k.copy(), v.copy(), 2, True, None, None, None,
                                                                 None))
    rows = np.broadcast_to(kbuf[:, :, :1], (2, 2, 9, 64))       # stride 0 between rows: copied
    kernels.gqa_attention(q, rows, rows, 2, False, None, None, None, None)
    assert seen[-1][1].flags.c_contiguous and not np.shares_memory(seen[-1][1], kbuf)


def test_compiling_ahead_compiles_every_fused_kernel():
    """``python -m sapient_backend_cpu --compile`` (warm_up) leaves no public fused kernel uncompiled,
    in a fresh process: attention's with and without BLAS inside them included."""
    code = ("import json, numba, sapient_backend_cpu._fused as fz; from sapient_backend_cpu.__main__ import main; "
            "main(['--compile']); "
            "kernels = {n: d for n, d in vars(fz).items() if isinstance(d, numba.core.dispatcher.Dispatcher) "
            "and not n.startswith('_') and (fz.SGEMM_ADDRESS or 'blas' not in n)}; "
            "print(json.dumps(sorted(n for n, d in kernels.items() if not d.signatures)), len(kernels))")
    out = _python(code, timeout=600).stdout
    missing, count = out.strip().splitlines()[-1].rsplit(" ", 1)
    assert missing == "[]" and int(count) >= 20, out
