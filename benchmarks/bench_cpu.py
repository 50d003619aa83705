"""Benchmarks of the CPU reference backend at Llama-like shapes: ``python benchmarks/bench_cpu.py``.

(For the comparison with torch, one and two threads, each library in its own process, see
``benchmarks/bench_cpu_vs_torch.py``.)

Prints four tables, all measured in one run (best of several repeats; no assertions anywhere):

1. per-op timings of ``get_backend("cpu")`` at H=2048, 32 query / 8 KV heads of 64, MLP 8192, for a
   decode step (S=1, 512-long KV cache) and a prefill (S=128), each beside the same computation
   written as the textbook NumPy expression;
2. the per-call overhead of the backend object (validation + counting + call) against calling the
   kernel function directly, beside a pluggy hook call and a plain bound-method call;
3. decode-size linears that cycle through more weight bytes than the last-level cache holds, as a real
   decode step does (a weight reused in a hot loop stays in cache and looks several times faster);
4. GQA decode against one grouped batched matmul over the same data and against repeating K/V, and
   the exact GELU against SiLU.

The OpenBLAS / OpenMP environment is used as given (print-only); set it before running if you want
another thread count.  Options: ``--quick`` (fewer repeats, smaller weight pool) for a smoke run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
import timeit
import warnings

import numpy as np

import sapient_core
from sapient_backend_cpu import kernels

H, HEADS, KV_HEADS, HEAD_DIM, MLP, CACHE, PREFILL, VOCAB = 2048, 32, 8, 64, 8192, 512, 128, 32000
F32 = np.float32


def best_time(fn, *, budget=0.25, repeat=5):
    """Best per-call seconds over ``repeat`` rounds of about ``budget`` seconds each."""
    fn()                                                   # warm up (allocations, caches, lazy init)
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(budget / one))
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def fmt_us(seconds):
    us = seconds * 1e6
    return f"{us:10.1f}" if us >= 10 else f"{us:10.2f}"


# --- textbook NumPy versions -------------------------------------------------------------------------

_erf64 = np.vectorize(math.erf, otypes=[np.float64])


def np_rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + eps) * w


def np_layer_norm(x, w, b, eps):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_gelu_exact(x):    # NumPy has no erf: the textbook route is math.erf per element
    return (0.5 * x * (1 + _erf64(x / math.sqrt(2)))).astype(F32)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_rope(x, positions, base):
    d = x.shape[-1]
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float32) / d)
    freqs = np.outer(positions.astype(F32), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * np.cos(emb) + rot * np.sin(emb)


def _softmax(s):
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


def np_attention_repeat_kv(q, k, v, n_kv, causal):
    """Hugging Face eager attention: repeat_kv, then per-query-head matmuls."""
    g = q.shape[1] // n_kv
    k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    sq, sk = s.shape[-2:]
    if causal and sq > 1:
        s = np.where(np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq), s, -np.inf)
    return _softmax(s) @ v


def np_attention_grouped(q, k, v, n_kv, causal):
    """One grouped batched matmul per product: the query heads of a group as rows against their K/V."""
    b, h, sq, d = q.shape
    sk = k.shape[2]
    qg = q.reshape(b, n_kv, (h // n_kv) * sq, d)
    s = qg @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
    if causal and sq > 1:
        mask = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        s = np.where(np.tile(mask, (h // n_kv, 1)), s, -np.inf)
    return (_softmax(s) @ v).reshape(b, h, sq, d)


# --- tables ------------------------------------------------------------------------------------------

def op_table(be, rng, quick):
    budget = 0.05 if quick else 0.25
    rows = []

    def row(name, shape, ours, naive, note=""):
        t_ours = best_time(ours, budget=budget)
        t_naive = best_time(naive, budget=budget, repeat=2 if quick else 3) if naive is not None else None
        t_ours = min(t_ours, best_time(ours, budget=budget))   # again after the naive one: same conditions
        rows.append((name, shape, t_ours, t_naive, note))

    w_norm = (1 + 0.1 * rng.standard_normal(H)).astype(F32)
    b_norm = (0.1 * rng.standard_normal(H)).astype(F32)
    wq = (rng.standard_normal((HEADS * HEAD_DIM, H)) / math.sqrt(H)).astype(F32)
    w_up = (rng.standard_normal((MLP, H)) / math.sqrt(H)).astype(F32)
    lm_head = (rng.standard_normal((VOCAB, H)) / math.sqrt(H)).astype(F32)
    for phase, s in (("decode", 1), ("prefill", PREFILL)):
        x = rng.standard_normal((1, s, H)).astype(F32)
        xm = rng.standard_normal((1, s, MLP)).astype(F32)
        q = rng.standard_normal((1, HEADS, s, HEAD_DIM)).astype(F32)
        sk = CACHE if phase == "decode" else s
        k = rng.standard_normal((1, KV_HEADS, sk, HEAD_DIM)).astype(F32)
        v = rng.standard_normal((1, KV_HEADS, sk, HEAD_DIM)).astype(F32)
        pos = np.arange(sk - s, sk)
        tag = f"{phase} S={s}"
        row("rms_norm", f"{tag} x(1,{s},{H})", lambda: be.rms_norm(x, w_norm, 1e-6),
            lambda: np_rms_norm(x, w_norm, 1e-6))
        row("layer_norm", f"{tag} x(1,{s},{H})", lambda: be.layer_norm(x, w_norm, b_norm, 1e-5),
            lambda: np_layer_norm(x, w_norm, b_norm, 1e-5))
        row("silu", f"{tag} x(1,{s},{MLP})", lambda: be.silu(xm), lambda: np_silu(xm))
        row("gelu none", f"{tag} x(1,{s},{MLP})", lambda: be.gelu(xm, "none"),
            (lambda: np_gelu_exact(xm)) if (phase == "decode" or not quick) else None,
            "naive = math.erf per element")
        row("gelu tanh", f"{tag} x(1,{s},{MLP})", lambda: be.gelu(xm, "tanh"), lambda: np_gelu_tanh(xm))
        row("mul", f"{tag} (1,{s},{MLP})^2", lambda: be.mul(xm, xm), lambda: xm * xm)
        row("add", f"{tag} (1,{s},{H})^2", lambda: be.add(x, x), lambda: x + x)
        row("rope", f"{tag} q(1,{HEADS},{s},{HEAD_DIM})", lambda: be.apply_rope_positions(q, pos, 10000.0),
            lambda: np_rope(q, pos, 10000.0))
        row("gqa_attention", f"{tag} Sk={sk}", lambda: be.gqa_attention(q, k, v, KV_HEADS, True),
            lambda: np_attention_repeat_kv(q, k, v, KV_HEADS, True), "naive = repeat_kv")
        if phase == "prefill":   # compute-bound: a reused weight is representative here
            row("linear q_proj", f"{tag} w({HEADS * HEAD_DIM},{H})", lambda: be.linear_3d(x, wq),
                lambda: x @ wq.T)
            row("linear up_proj", f"{tag} w({MLP},{H})", lambda: be.linear_3d(x, w_up), lambda: x @ w_up.T)
        row("logits", f"{tag} lm_head({VOCAB},{H})", lambda: be.logits_from_hidden(x, lm_head),
            lambda: x[:, -1, :] @ lm_head.T, "weight 262 MB > L3 (DRAM)")
    print("\n## Per-op timings, get_backend('cpu') vs textbook NumPy (µs per call; ratio > 1: backend faster)\n")
    print(f"| {'op':<14} | {'shape':<34} | {'backend µs':>10} | {'NumPy µs':>10} | {'NumPy/backend':>13} | note")
    print(f"|{'-' * 16}|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 15}|------")
    for name, shape, t_ours, t_naive, note in rows:
        naive = fmt_us(t_naive) if t_naive is not None else f"{'skipped':>10}"
        ratio = f"{t_naive / t_ours:13.2f}" if t_naive is not None else f"{'':>13}"
        print(f"| {name:<14} | {shape:<34} | {fmt_us(t_ours)} | {naive} | {ratio} | {note}")


def overhead_table(be, quick):
    import pluggy

    from sapient_backend_cpu import plugin
    from sapient_core import hookspecs

    pm = pluggy.PluginManager("sapient_core")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    x = np.ones((1, 1, 8), F32)
    w = np.ones(8, F32)

    class Plain:
        def rms_norm(self, x, weight, eps):
            return x
    plain = Plain()
    n = 20000 if quick else 100000

    def per_call(fn):
        return min(timeit.repeat(fn, number=n, repeat=5)) / n

    from bench_overhead import cases      # the same tiny inputs as benchmarks/bench_overhead.py
    from sapient_core.validate import CHECKS

    print("\n## Per-call overhead of the backend object (tiny inputs; µs per call; overhead = backend - kernel)\n")
    print("Interleaved rounds, best of each; the validation column is CHECKS[op] called alone (part of the overhead).\n")
    print(f"| {'op':<22} | {'kernel µs':>9} | {'backend µs':>10} | {'overhead µs':>11} | {'of which validation':>19}")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 12}|{'-' * 13}|{'-' * 21}")
    from sapient_core import OPS
    for op, args in cases().items():
        direct, via_backend, check = getattr(kernels, op), getattr(be, op), CHECKS[op]
        kargs = OPS[op].with_defaults(args)   # the kernels take every argument
        t_k, t_b, t_c = [], [], []
        for _ in range(3 if quick else 7):
            t_k.append(timeit.timeit(lambda: direct(*kargs), number=n) / n)
            t_b.append(timeit.timeit(lambda: via_backend(*args), number=n) / n)
            t_c.append(timeit.timeit(lambda: check(*args), number=n) / n)
        k_, b_, c_ = min(t_k), min(t_b), min(t_c)
        print(f"| {op:<22} | {k_ * 1e6:9.2f} | {b_ * 1e6:10.2f} | {(b_ - k_) * 1e6:11.2f} | {c_ * 1e6:19.2f}")
    t_k = per_call(lambda: kernels.rms_norm(x, w, 1e-6))
    t_hook = per_call(lambda: pm.hook.rms_norm(x=x, weight=w, eps=1e-6))
    t_plain = per_call(lambda: plain.rms_norm(x, w, 1e-6))
    t_empty = per_call(lambda: None)
    print(f"\n  for scale: pluggy pm.hook.rms_norm(...) costs {(t_hook - t_k) * 1e6:.2f} µs on top of the kernel; "
          f"a plain bound-method call {(t_plain - t_empty) * 1e6:.3f} µs (an empty lambda call {t_empty * 1e6:.3f} µs, "
          f"included in every row above)")


def decode_linear_table(be, rng, quick):
    print("\n## Decode-size linears (x (1,1,in) @ w.T) cycling through distinct weights, as a decode step reads them\n")
    print(f"| {'weights':<38} | {'method':<24} | {'ms / call':>9} | {'GB/s':>6}")
    print(f"|{'-' * 40}|{'-' * 26}|{'-' * 11}|{'-' * 8}")
    configs = [((MLP, H), 4 if quick else 16), ((H, MLP), 4 if quick else 16), ((H, H), 8 if quick else 32)]
    for (out_f, in_f), count in configs:
        pool = [rng.random((out_f, in_f), dtype=F32) for _ in range(count)]
        x = rng.standard_normal((1, 1, in_f)).astype(F32)
        x1 = x.reshape(in_f)
        nbytes = pool[0].nbytes
        label = f"{count} x ({out_f},{in_f}) = {count * nbytes / 2**20:.0f} MiB"
        methods = [
            ("backend.linear_3d", lambda w: be.linear_3d(x, w)),
            ("np.dot(w, x) (sgemv)", lambda w: np.dot(w, x1)),
            ("x @ w.T (np.matmul)", lambda w: x @ w.T),
        ]
        best = {name: math.inf for name, _ in methods}
        for _ in range(3 if quick else 5):               # interleaved rounds: same memory conditions
            for name, f in methods:
                t0 = time.perf_counter()
                for w in pool:
                    f(w)
                best[name] = min(best[name], (time.perf_counter() - t0) / count)
        for name, t in best.items():
            print(f"| {label:<38} | {name:<24} | {t * 1e3:9.3f} | {nbytes / t / 1e9:6.1f}")
        w0 = pool[0]
        t_hot = best_time(lambda: be.linear_3d(x, w0), budget=0.1 if quick else 0.3)
        print(f"| {'1 x (' + str(out_f) + ',' + str(in_f) + ') reused (hot loop)':<38} | {'backend.linear_3d':<24} | "
              f"{t_hot * 1e3:9.3f} | {nbytes / t_hot / 1e9:6.1f}")
        pool = None  # free this pool before the next one is allocated


def attention_and_activation_ratios(be, rng, quick):
    budget = 0.05 if quick else 0.25
    q = rng.standard_normal((1, HEADS, 1, HEAD_DIM)).astype(F32)
    k = rng.standard_normal((1, KV_HEADS, CACHE, HEAD_DIM)).astype(F32)
    v = rng.standard_normal((1, KV_HEADS, CACHE, HEAD_DIM)).astype(F32)
    t_be = best_time(lambda: be.gqa_attention(q, k, v, KV_HEADS, True), budget=budget)
    t_grouped = best_time(lambda: np_attention_grouped(q, k, v, KV_HEADS, True), budget=budget)
    t_repeat = best_time(lambda: np_attention_repeat_kv(q, k, v, KV_HEADS, True), budget=budget)
    print(f"\n## GQA decode (q (1,{HEADS},1,{HEAD_DIM}), K/V (1,{KV_HEADS},{CACHE},{HEAD_DIM}))\n")
    print(f"| {'version':<44} | {'µs':>8} | {'/ backend':>9}")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 11}")
    for name, t in (("backend.gqa_attention", t_be), ("one grouped batched matmul (textbook NumPy)", t_grouped),
                    ("repeat K/V per group (HF eager)", t_repeat)):
        print(f"| {name:<44} | {t * 1e6:8.1f} | {t / t_be:9.2f}")
    print("\n## Exact GELU vs SiLU on the same data\n")
    print(f"| {'x':<14} | {'silu µs':>8} | {'gelu none µs':>12} | {'gelu/silu':>9} | {'gelu tanh µs':>12} | "
          f"{'textbook x/(1+exp(-x)) µs':>25} | {'gelu / textbook silu':>20}")
    print(f"|{'-' * 16}|{'-' * 10}|{'-' * 14}|{'-' * 11}|{'-' * 14}|{'-' * 27}|{'-' * 22}")
    for shape in ((1, 1, MLP), (1, PREFILL, MLP)):
        x = rng.standard_normal(shape).astype(F32)
        t_silu = best_time(lambda: be.silu(x), budget=budget)
        t_gelu = best_time(lambda: be.gelu(x, "none"), budget=budget)
        t_tanh = best_time(lambda: be.gelu(x, "tanh"), budget=budget)
        t_np = best_time(lambda: np_silu(x), budget=budget)
        print(f"| {str(shape):<14} | {t_silu * 1e6:8.1f} | {t_gelu * 1e6:12.1f} | {t_gelu / t_silu:9.2f} | "
              f"{t_tanh * 1e6:12.1f} | {t_np * 1e6:25.1f} | {t_gelu / t_np:20.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller weight pool")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)      # the textbook silu overflows at large -x
    be = sapient_core.get_backend("cpu")
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    print(f"# sapient_core CPU backend benchmark\n\npython {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, {platform.machine()}; BLAS environment: {env or 'unset (library defaults)'}")
    rng = np.random.default_rng(0)
    op_table(be, rng, args.quick)
    overhead_table(be, args.quick)
    attention_and_activation_ratios(be, rng, args.quick)
    decode_linear_table(be, rng, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
