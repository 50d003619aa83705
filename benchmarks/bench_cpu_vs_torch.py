"""The CPU backend against plain NumPy and torch, op by op and for one Llama layer, on 1 and 2 threads.

    python benchmarks/bench_cpu_vs_torch.py                       # torch from this interpreter, if any
    python benchmarks/bench_cpu_vs_torch.py --torch-python /work/benchvenv/bin/python --rounds 5
    python benchmarks/bench_cpu_vs_torch.py --quick --threads 1   # a smoke run

Shapes are those of the CPU performance issue: hidden 2048, MLP 5632, 32 query / 8 KV heads of 64,
prefill S=128, decode with a KV cache of 512 and 2048.  Three families, each in its own process per
thread count, so that thread pools never disturb each other (OpenBLAS, Numba's and torch's OpenMP):

- ``sapient``: ``sapient_core.get_backend("cpu")`` (validation and dispatch included);
- ``numpy``: the textbook NumPy expression of each op (what a user would write without the backend);
- ``torch``: torch's CPU ops (``F.rms_norm``, ``F.gelu``, ``F.scaled_dot_product_attention`` ...), run
  by ``--torch-python`` (an interpreter with torch, e.g. a separate benchmark venv; torch is never a
  dependency of the project).  Skipped, and said so, when no interpreter has torch.

A child gets ``SAPIENT_CPU_THREADS``, ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` set to the thread count (and torch ``set_num_threads``).  The parent runs the
children in alternating rounds and keeps, per op, the best of all samples of all rounds (each sample
a batch of calls of about ``--sample-ms``); ratios compare times from the same run.  The targets are
the issue's (sapient / torch at the same thread count); "2T ok" (for each thread count after the
first) is the issue's last target: that ratio no worse than the first thread count's (5% measuring
slack).  Also printed: decode GEMV
bandwidth of the backend's ``linear_3d`` against NumPy's own ``np.dot`` (sgemv) over weights that do
not fit the cache.  (The backend object's per-call overhead: ``benchmarks/bench_overhead.py``.)

On a shared machine the minimum is what the code costs; say what else was running when you quote it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

H, NH, NKV, HD, MLP, S = 2048, 32, 8, 64, 5632, 128
F32 = np.float32

#: op -> (shape label, target ratio sapient / torch or None)
OPS = {
    "rms_norm prefill": (f"x(1,{S},{H})", 1.5),
    "layer_norm prefill": (f"x(1,{S},{H})", 1.5),
    "silu prefill": (f"x(1,{S},{MLP})", 1.5),
    "gelu_none prefill": (f"x(1,{S},{MLP})", 2.5),
    "gelu_tanh prefill": (f"x(1,{S},{MLP})", 1.5),
    "add prefill": (f"(1,{S},{H})^2", 1.5),
    "mul prefill": (f"(1,{S},{H})^2", 1.5),
    "rope prefill": (f"q(1,{NH},{S},{HD})", 1.5),
    "attention prefill": (f"{S}x{S} causal", 1.5),
    "attention decode kv512": ("Sq=1 Sk=512", 1.2),
    "attention decode kv2048": ("Sq=1 Sk=2048", 1.2),
    "rms_norm decode": (f"x(1,1,{H})", None),
    "layer_norm decode": (f"x(1,1,{H})", 2.5),
    "gelu_none decode": (f"x(1,1,{MLP})", 2.0),
    "silu decode": (f"x(1,1,{MLP})", None),
    "rope decode": (f"q(1,{NH},1,{HD})", None),
    "layer prefill": (f"Llama layer, {S} tokens", 1.1),
    "layer decode kv512": ("Llama layer, 1 token, KV 512", None),
    "layer decode kv2048": ("Llama layer, 1 token, KV 2048", None),
}


def inputs():
    r = np.random.default_rng(0)
    f = lambda *s: r.standard_normal(s).astype(F32)  # noqa: E731
    a = {
        "x": f(1, S, H), "y": f(1, S, H), "xm": f(1, S, MLP), "w": 1 + 0.1 * f(H), "b": 0.1 * f(H),
        "x1": f(1, 1, H), "xm1": f(1, 1, MLP),
        "q": f(1, NH, S, HD), "k": f(1, NKV, S, HD), "v": f(1, NKV, S, HD), "q1": f(1, NH, 1, HD),
        "wq": f(H, H) * 0.02, "wk": f(NKV * HD, H) * 0.02, "wv": f(NKV * HD, H) * 0.02, "wo": f(H, H) * 0.02,
        "wg": f(MLP, H) * 0.02, "wu": f(MLP, H) * 0.02, "wd": f(H, MLP) * 0.02,
    }
    for n in (512, 2048):
        a[f"k{n}"], a[f"v{n}"] = f(1, NKV, n, HD), f(1, NKV, n, HD)
    return a


# --- the three families ------------------------------------------------------------------------------

def sapient_ops(a):
    import sapient_core

    bk = sapient_core.get_backend("cpu")
    pos = np.arange(S)

    def attn_block(h, positions, k_cache, v_cache):
        s = h.shape[1]
        q = bk.linear_3d(h, a["wq"]).reshape(1, s, NH, HD).transpose(0, 2, 1, 3)
        k = bk.linear_3d(h, a["wk"]).reshape(1, s, NKV, HD).transpose(0, 2, 1, 3)
        v = bk.linear_3d(h, a["wv"]).reshape(1, s, NKV, HD).transpose(0, 2, 1, 3)
        q = bk.apply_rope_positions(np.ascontiguousarray(q), positions, 10000.0)
        k = bk.apply_rope_positions(np.ascontiguousarray(k), positions, 10000.0)
        if k_cache is not None:   # the new token's K/V go into a cache that already holds the others
            k_cache[:, :, -1:] = k
            v_cache[:, :, -1:] = v
            k, v = k_cache, v_cache
        o = bk.gqa_attention(q, k, np.ascontiguousarray(v), NKV, True)
        return bk.linear_3d(np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(1, s, H), a["wo"])

    def layer(x, positions, k_cache=None, v_cache=None):
        h = bk.add(x, attn_block(bk.rms_norm(x, a["w"], 1e-6), positions, k_cache, v_cache))
        n = bk.rms_norm(h, a["w"], 1e-6)
        m = bk.mul(bk.silu(bk.linear_3d(n, a["wg"])), bk.linear_3d(n, a["wu"]))
        return bk.add(h, bk.linear_3d(m, a["wd"]))

    caches = {n: (a[f"k{n}"].copy(), a[f"v{n}"].copy()) for n in (512, 2048)}
    ops = {
        "rms_norm prefill": lambda: bk.rms_norm(a["x"], a["w"], 1e-6),
        "layer_norm prefill": lambda: bk.layer_norm(a["x"], a["w"], a["b"], 1e-5),
        "silu prefill": lambda: bk.silu(a["xm"]),
        "gelu_none prefill": lambda: bk.gelu(a["xm"], "none"),
        "gelu_tanh prefill": lambda: bk.gelu(a["xm"], "tanh"),
        "add prefill": lambda: bk.add(a["x"], a["y"]),
        "mul prefill": lambda: bk.mul(a["x"], a["y"]),
        "rope prefill": lambda: bk.apply_rope_positions(a["q"], pos, 10000.0),
        "attention prefill": lambda: bk.gqa_attention(a["q"], a["k"], a["v"], NKV, True),
        "rms_norm decode": lambda: bk.rms_norm(a["x1"], a["w"], 1e-6),
        "layer_norm decode": lambda: bk.layer_norm(a["x1"], a["w"], a["b"], 1e-5),
        "gelu_none decode": lambda: bk.gelu(a["xm1"], "none"),
        "silu decode": lambda: bk.silu(a["xm1"]),
        "rope decode": lambda: bk.apply_rope_positions(a["q1"], np.array([511]), 10000.0),
        "layer prefill": lambda: layer(a["x"], pos),
    }
    for n in (512, 2048):
        kc, vc = caches[n]
        ops[f"attention decode kv{n}"] = (lambda kc=kc, vc=vc: bk.gqa_attention(a["q1"], kc, vc, NKV, True))
        ops[f"layer decode kv{n}"] = (lambda kc=kc, vc=vc, n=n: layer(a["x1"], np.array([n - 1]), kc, vc))
    return ops


def _np_softmax(s):
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    return s / s.sum(axis=-1, keepdims=True)


def numpy_ops(a):
    pos = np.arange(S)

    def rms(x, w, eps):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    def ln(x, w, b, eps):
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b

    def silu(x):
        with np.errstate(over="ignore"):
            return x / (1 + np.exp(-x))

    try:   # the exact GELU needs erf: SciPy's when installed, else math.erf per element (textbook slow)
        from scipy.special import erf
    except ImportError:
        erf = np.vectorize(math.erf, otypes=[F32])

    def gelu(x):
        return (0.5 * x * (1 + erf(x / F32(math.sqrt(2))))).astype(F32)

    def gelu_tanh(x):
        return 0.5 * x * (1 + np.tanh(F32(math.sqrt(2 / math.pi)) * (x + F32(0.044715) * x ** 3)))

    inv = (10000.0 ** (-np.arange(0, HD, 2) / HD)).astype(F32)

    def tables(p):                       # computed once per forward pass, as transformers does
        e = np.outer(p.astype(F32), inv)
        e = np.concatenate([e, e], -1)
        return np.cos(e), np.sin(e)

    tabs = {S: tables(pos), 1: tables(np.array([511]))}

    def rope(x):
        c, s_ = tabs[x.shape[2]]
        return x * c + np.concatenate([-x[..., HD // 2:], x[..., :HD // 2]], -1) * s_

    def attention(q, k, v, causal):      # transformers' eager attention: repeat_kv, masked softmax
        g = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / F32(math.sqrt(HD))
        sq, sk = s.shape[-2:]
        if causal and sq > 1:
            s = np.where(np.arange(sk)[None] <= np.arange(sq)[:, None] + (sk - sq), s, F32(-np.inf))
        return _np_softmax(s) @ v

    def layer(x, k_cache=None, v_cache=None):
        s = x.shape[1]
        h = rms(x, a["w"], 1e-6)
        q = rope((h @ a["wq"].T).reshape(1, s, NH, HD).transpose(0, 2, 1, 3))
        k = rope((h @ a["wk"].T).reshape(1, s, NKV, HD).transpose(0, 2, 1, 3))
        v = (h @ a["wv"].T).reshape(1, s, NKV, HD).transpose(0, 2, 1, 3)
        if k_cache is not None:
            k_cache[:, :, -1:] = k
            v_cache[:, :, -1:] = v
            k, v = k_cache, v_cache
        o = attention(q, k, v, True).transpose(0, 2, 1, 3).reshape(1, s, H) @ a["wo"].T
        h = x + o
        n = rms(h, a["w"], 1e-6)
        return h + (silu(n @ a["wg"].T) * (n @ a["wu"].T)) @ a["wd"].T

    caches = {n: (a[f"k{n}"].copy(), a[f"v{n}"].copy()) for n in (512, 2048)}
    ops = {
        "rms_norm prefill": lambda: rms(a["x"], a["w"], 1e-6),
        "layer_norm prefill": lambda: ln(a["x"], a["w"], a["b"], 1e-5),
        "silu prefill": lambda: silu(a["xm"]),
        "gelu_none prefill": lambda: gelu(a["xm"]),
        "gelu_tanh prefill": lambda: gelu_tanh(a["xm"]),
        "add prefill": lambda: a["x"] + a["y"],
        "mul prefill": lambda: a["x"] * a["y"],
        "rope prefill": lambda: rope(a["q"]),
        "attention prefill": lambda: attention(a["q"], a["k"], a["v"], True),
        "rms_norm decode": lambda: rms(a["x1"], a["w"], 1e-6),
        "layer_norm decode": lambda: ln(a["x1"], a["w"], a["b"], 1e-5),
        "gelu_none decode": lambda: gelu(a["xm1"]),
        "silu decode": lambda: silu(a["xm1"]),
        "rope decode": lambda: rope(a["q1"]),
        "layer prefill": lambda: layer(a["x"]),
    }
    for n in (512, 2048):
        kc, vc = caches[n]
        ops[f"attention decode kv{n}"] = (lambda kc=kc, vc=vc: attention(a["q1"], kc, vc, True))
        ops[f"layer decode kv{n}"] = (lambda kc=kc, vc=vc: layer(a["x1"], kc, vc))
    return ops


def torch_ops(a):
    import torch
    import torch.nn.functional as F

    torch.set_grad_enabled(False)
    torch.set_num_threads(int(os.environ["SAPIENT_BENCH_THREADS"]))
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    inv = 1.0 / (10000.0 ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD))

    def tables(p):                       # once per forward pass, as transformers' rotary embedding does
        e = torch.outer(p.float(), inv)
        e = torch.cat([e, e], -1)
        return e.cos(), e.sin()

    tabs = {S: tables(torch.arange(S)), 1: tables(torch.tensor([511]))}

    def rope(x):
        c, s_ = tabs[x.shape[2]]
        return x * c + torch.cat([-x[..., HD // 2:], x[..., :HD // 2]], -1) * s_

    sdpa = F.scaled_dot_product_attention

    def layer(x, k_cache=None, v_cache=None):
        s = x.shape[1]
        h = F.rms_norm(x, (H,), t["w"], 1e-6)
        q = rope(F.linear(h, t["wq"]).view(1, s, NH, HD).transpose(1, 2))
        k = rope(F.linear(h, t["wk"]).view(1, s, NKV, HD).transpose(1, 2))
        v = F.linear(h, t["wv"]).view(1, s, NKV, HD).transpose(1, 2)
        if k_cache is not None:
            k_cache[:, :, -1:] = k
            v_cache[:, :, -1:] = v
            k, v = k_cache, v_cache
        o = sdpa(q, k, v, is_causal=s > 1, enable_gqa=True)
        h = x + F.linear(o.transpose(1, 2).reshape(1, s, H), t["wo"])
        n = F.rms_norm(h, (H,), t["w"], 1e-6)
        return h + F.linear(F.silu(F.linear(n, t["wg"])) * F.linear(n, t["wu"]), t["wd"])

    caches = {n: (t[f"k{n}"].clone(), t[f"v{n}"].clone()) for n in (512, 2048)}
    ops = {
        "rms_norm prefill": lambda: F.rms_norm(t["x"], (H,), t["w"], 1e-6),
        "layer_norm prefill": lambda: F.layer_norm(t["x"], (H,), t["w"], t["b"], 1e-5),
        "silu prefill": lambda: F.silu(t["xm"]),
        "gelu_none prefill": lambda: F.gelu(t["xm"]),
        "gelu_tanh prefill": lambda: F.gelu(t["xm"], approximate="tanh"),
        "add prefill": lambda: t["x"] + t["y"],
        "mul prefill": lambda: t["x"] * t["y"],
        "rope prefill": lambda: rope(t["q"]),
        "attention prefill": lambda: sdpa(t["q"], t["k"], t["v"], is_causal=True, enable_gqa=True),
        "rms_norm decode": lambda: F.rms_norm(t["x1"], (H,), t["w"], 1e-6),
        "layer_norm decode": lambda: F.layer_norm(t["x1"], (H,), t["w"], t["b"], 1e-5),
        "gelu_none decode": lambda: F.gelu(t["xm1"]),
        "silu decode": lambda: F.silu(t["xm1"]),
        "rope decode": lambda: rope(t["q1"]),
        "layer prefill": lambda: layer(t["x"]),
    }
    for n in (512, 2048):
        kc, vc = caches[n]
        ops[f"attention decode kv{n}"] = (lambda kc=kc, vc=vc: sdpa(t["q1"], kc, vc, enable_gqa=True))
        ops[f"layer decode kv{n}"] = (lambda kc=kc, vc=vc: layer(t["x1"], kc, vc))
    return ops


# --- measuring ---------------------------------------------------------------------------------------

def best_time(fn, sample_s, budget_s):
    """Best per-call seconds over samples of ~sample_s each (a batch of calls), for budget_s."""
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    fn()
    n = max(1, int(sample_s / max(time.perf_counter() - t0, 1e-7)))
    best, end = math.inf, time.perf_counter() + budget_s
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
        if time.perf_counter() > end:
            return best


def gemv_bandwidth(family, budget_s):
    """Decode-size linear (1,1,H) x (MLP,H)^T over 8 distinct weights (>= 369 MB, beyond any L3):
    GB/s of the family's linear, and (sapient only) of NumPy's np.dot(w, x) sgemv in the same process,
    in interleaved rounds."""
    r = np.random.default_rng(1)
    pool = [r.standard_normal((MLP, H)).astype(F32) for _ in range(8)]
    x = r.standard_normal((1, 1, H)).astype(F32)
    if family == "torch":
        import torch
        import torch.nn.functional as F
        tp, tx = [torch.from_numpy(w) for w in pool], torch.from_numpy(x)
        fns = {"torch": lambda w: F.linear(tx, w)}
        pool = tp
    elif family == "sapient":
        import sapient_core
        bk = sapient_core.get_backend("cpu")
        x1 = x.reshape(H)
        fns = {"sapient": lambda w: bk.linear_3d(x, w), "np.dot sgemv": lambda w: np.dot(w, x1)}
    else:
        fns = {"numpy": lambda w: x @ w.T}
    best = dict.fromkeys(fns, math.inf)
    end = time.perf_counter() + budget_s
    while time.perf_counter() < end:
        for name, f in fns.items():
            t0 = time.perf_counter()
            for w in pool:
                f(w)
            best[name] = min(best[name], (time.perf_counter() - t0) / len(pool))
    return {f"gemv {k}": MLP * H * 4 / v / 1e9 for k, v in best.items()}


def child(family, sample_ms, budget_s, quick, only=None):
    a = inputs()
    if family == "sapient":
        ops = sapient_ops(a)
    elif family == "numpy":
        ops = numpy_ops(a)
    else:
        ops = torch_ops(a)
    res = {op: best_time(fn, sample_ms / 1e3, budget_s) for op, fn in ops.items() if op in (only or ops)}
    if not only:
        res.update(gemv_bandwidth(family, 0.5 if quick else 2.0))
    if family == "sapient":
        from sapient_backend_cpu import kernels
        res["info"] = kernels.info()
    print(json.dumps(res))


# --- the parent --------------------------------------------------------------------------------------

#: Measuring slack of the two-thread rule: an op passes when its ratio on N threads is at most SLACK times
#: its ratio on the first thread count.
SLACK = 1.05


def select_ops(spec, names):
    """The names that contain one of the comma-separated words of ``spec`` (None: no spec), or an error
    message when none does."""
    if not spec:
        return None, None
    chosen = [name for name in names if any(w in name for w in spec.split(","))]
    if not chosen:
        return None, f"--only {spec}: no op matches; the ops: {', '.join(names)}"
    return chosen, None


def run_child(python, script, family, threads, args):
    """Run ``script --child family args`` by ``python`` with every library's thread count set to
    ``threads``: its JSON result, or None after printing why it failed."""
    env = dict(os.environ, SAPIENT_BENCH_THREADS=str(threads), SAPIENT_CPU_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([python, os.path.abspath(script), "--child", family, *args], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        print(f"{family} child ({threads} threads) failed:\n{out.stderr[-3000:]}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_python_or_notice(torch_python, without):
    """``torch_python`` when it imports torch, else None after saying what is skipped (``without``)."""
    if _has_torch(torch_python):
        return torch_python
    print(f"(torch not importable by {torch_python}: {without}; pass --torch-python PATH to an interpreter "
          "with torch==2.13.0)")
    return None


def _has_torch(python):
    try:
        return subprocess.run([python, "-c", "import torch"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["sapient", "numpy", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", default="1,2", help="thread counts to compare (default 1,2)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of every child (default 3)")
    ap.add_argument("--sample-ms", type=float, default=3.0, help="length of one timed batch of calls")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of samples per op per round")
    ap.add_argument("--torch-python", default=None, help="interpreter with torch (default: this one, if it has torch)")
    ap.add_argument("--quick", action="store_true", help="one round, short budgets (a smoke run)")
    ap.add_argument("--json", default=None, help="also write the raw best figures (times, and the GEMV lines' GB/s) to this file")
    ap.add_argument("--only", default=None, help="comma-separated words: time only the ops whose name contains "
                                                  "one (e.g. add,mul,attention), and no GEMV lines")
    args = ap.parse_args(argv)
    only, error = select_ops(args.only, list(OPS))
    if error:
        ap.error(error)
    if args.child:
        child(args.child, args.sample_ms, args.budget, args.quick, only)
        return 0
    if args.quick:
        args.rounds, args.budget = 1, 0.05
    threads = [int(t) for t in args.threads.split(",")]
    families = {"sapient": sys.executable, "numpy": sys.executable}
    torch_python = torch_python_or_notice(args.torch_python or sys.executable, "the torch column is skipped")
    if torch_python:
        families["torch"] = torch_python
    best = {(f, t): {} for f in families for t in threads}
    info = {}
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    for _ in range(args.rounds):
        for t in threads:
            for fam, python in families.items():
                res = run_child(python, __file__, fam, t, ["--sample-ms", str(args.sample_ms), "--budget",
                                                           str(args.budget)] + (["--quick"] if args.quick else [])
                                + (["--only", ",".join(only)] if only else []))
                if res is None:
                    return 1
                if "info" in res:
                    info[t] = res.pop("info")
                for k, v in res.items():
                    keep = max if k.startswith("gemv") else min
                    best[(fam, t)][k] = keep(v, best[(fam, t)].get(k, v))
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    report(best, families, threads, info, args, load, load_after, only)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({f"{f} {t}": v for (f, t), v in best.items()}, fh, indent=1)
    return 0


def report(best, families, threads, info, args, load, load_after, only=None):
    have_torch = "torch" in families
    print(f"# CPU backend vs NumPy{' vs torch' if have_torch else ''}\n")
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs "
          f"({platform.machine()}); rounds {args.rounds}, samples of {args.sample_ms} ms, "
          f"{args.budget} s per op per round; load average before {load}, after {load_after}")
    for t, i in info.items():
        print(f"sapient with {t} thread(s): {i}")
    print()
    for t in threads:
        print(f"## {t} thread{'s' if t > 1 else ''} (µs per call; ratio = sapient / other)\n")
        hdr = "| op | shape | sapient | numpy | sapient/numpy |"
        if have_torch:
            hdr += " torch | sapient/torch | target | ok |"
            if t != threads[0]:
                hdr += f" ratio at {threads[0]}T | {t}T ok |"
        print(hdr)
        print("|" + "---|" * (hdr.count("|") - 1))
        for op, (shape, target) in OPS.items():
            if only and op not in only:
                continue
            s, n = best[("sapient", t)][op], best[("numpy", t)][op]
            row = f"| {op} | {shape} | {s * 1e6:.1f} | {n * 1e6:.1f} | {s / n:.2f} |"
            if have_torch:
                tt = best[("torch", t)][op]
                r = s / tt
                ok = "" if target is None else ("ok" if r <= target else "SHORT")
                row += f" {tt * 1e6:.1f} | {r:.2f} | {target or ''} | {ok} |"
                if t != threads[0]:
                    r1 = best[("sapient", threads[0])][op] / best[("torch", threads[0])][op]
                    row += f" {r1:.2f} | {'ok' if r <= SLACK * r1 else 'WORSE'} |"
            print(row)
        gs = best[("sapient", t)]
        if only:
            print()
            continue
        line = (f"\ndecode GEMV (1,1,{H})x({MLP},{H}) over 8 weights: sapient linear_3d {gs['gemv sapient']:.1f} GB/s, "
                f"np.dot sgemv {gs['gemv np.dot sgemv']:.1f} GB/s in the same process "
                f"({gs['gemv sapient'] / gs['gemv np.dot sgemv']:.0%}), numpy x@w.T {best[('numpy', t)]['gemv numpy']:.1f} GB/s")
        if have_torch:
            line += f", torch F.linear {best[('torch', t)]['gemv torch']:.1f} GB/s"
        print(line + "\n")
    print("(the backend object's per-call overhead, op by op and per decode-step call: "
          "python benchmarks/bench_overhead.py)")


if __name__ == "__main__":
    sys.exit(main())
