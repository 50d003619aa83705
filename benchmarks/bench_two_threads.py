"""Where the CPU backend's time goes on 1 and 2 threads: each op's whole call against the one kernel it
runs, and the issue's two-thread rule on both.

    python benchmarks/bench_two_threads.py --torch-python /work/benchvenv/bin/python --rounds 3
    python benchmarks/bench_two_threads.py --only add,decode

The rule (the CPU performance issue's last target) asks that no op be worse against torch with two
threads than with one: ``(sapient_2 / torch_2) / (sapient_1 / torch_1) <= 1`` (1.05 here, as in
``bench_cpu_vs_torch.py``: measuring slack).  A call is its kernel plus a fixed cost (validation,
dispatch, Python around the kernel, launching the thread pool) that a second thread cannot share, so
an op much faster than torch on one thread has little kernel to split and meets the rule less easily.
This prints, per op and thread count, the backend call, the kernel it runs (captured from that call
and timed alone with the same arguments: a fused Numba kernel, or NumPy's ``add``/``multiply`` where
one thread uses those), their difference, and torch's call; then the rule on whole calls, the rule on
kernels alone, and the largest fixed cost, the same on both thread counts, with which these kernels
would meet the rule.

Shapes, inputs, torch's calls and the timing are ``bench_cpu_vs_torch.py``'s; each family and thread
count runs in its own process, in alternating rounds, keeping the best time.  Ops that run no single
kernel (a Llama layer, NumPy code on one thread) show no kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cpu_vs_torch import (OPS, SLACK, best_time, inputs, run_child, sapient_ops, select_ops,  # noqa: E402
                                torch_ops, torch_python_or_notice)

CASES = [op for op in OPS if not op.startswith("layer ")]


def _spy(kernel, name, calls):
    def spied(*args):
        calls.append((name, kernel, args))
        return kernel(*args)
    return spied


def _capture(call):
    """Run ``call`` once with every public fused kernel spied on: [(name, kernel, args)] it ran."""
    import numba
    from sapient_backend_cpu import _runtime

    fz = _runtime.fused()
    calls, saved = [], {}
    for name, kernel in list(vars(fz).items()):
        if isinstance(kernel, numba.core.registry.CPUDispatcher) and not name.startswith("_"):
            saved[name] = kernel
            setattr(fz, name, _spy(kernel, name, calls))
    try:
        call()
    finally:
        for name, kernel in saved.items():
            setattr(fz, name, kernel)
    return calls


def sapient_child(ops, sample_s, budget_s):
    a = inputs()
    calls = sapient_ops(a)
    numpy_kernels = {"add prefill": lambda: np.add(a["x"], a["y"]),
                     "mul prefill": lambda: np.multiply(a["x"], a["y"])}
    res = {}
    for op in ops:
        res[op] = {"call": best_time(calls[op], sample_s, budget_s)}
        ran = _capture(calls[op])
        if len(ran) == 1:
            name, kernel, args = ran[0]
            res[op].update(kernel=best_time(lambda: kernel(*args), sample_s, budget_s), name=name)
        elif not ran and op in numpy_kernels:
            res[op].update(kernel=best_time(numpy_kernels[op], sample_s, budget_s), name="numpy")
    return res


def torch_child(ops, sample_s, budget_s):
    calls = torch_ops(inputs())
    return {op: {"call": best_time(calls[op], sample_s, budget_s)} for op in ops}


def _keep_best(into, res):
    for op, r in res.items():
        mine = into.setdefault(op, {})
        for key, value in r.items():
            mine[key] = value if key == "name" else min(value, mine.get(key, value))


def largest_fixed_cost(k1, k2, t1, t2):
    """The largest X with ``(k2 + X) / (k1 + X) <= SLACK * t2 / t1`` (None: the kernels alone miss)."""
    q = SLACK * t2 / t1
    if q >= 1:
        return float("inf")
    x = (q * k1 - k2) / (1 - q)
    return x if x >= 0 else None


def report(best, has_torch):
    us = lambda s: f"{s * 1e6:.1f}" if s is not None else "–"  # noqa: E731
    print("## µs per call (best of all rounds); fixed = call - kernel\n")
    print("| op | threads | call | kernel | fixed | torch call |")
    print("|---|---|---|---|---|---|")
    for op in CASES:
        for t in (1, 2):
            r = best.get(("sapient", t), {}).get(op)
            if r is None:
                continue
            k = r.get("kernel")
            tc = best.get(("torch", t), {}).get(op, {}).get("call")
            name = f" ({r['name']})" if "name" in r else ""
            print(f"| {op} | {t} | {us(r['call'])} | {us(k)}{name} | {us(r['call'] - k) if k else '–'} | {us(tc)} |")
    if not has_torch:
        return
    print(f"\n## The two-thread rule: (sapient_2 / torch_2) / (sapient_1 / torch_1) <= {SLACK}\n")
    print("| op | on calls | on kernels | largest fixed cost that meets it (µs) | fixed cost now, 1T / 2T (µs) |")
    print("|---|---|---|---|---|")
    for op in CASES:
        try:
            s1, s2 = best[("sapient", 1)][op], best[("sapient", 2)][op]
            t1, t2 = best[("torch", 1)][op]["call"], best[("torch", 2)][op]["call"]
        except KeyError:
            continue
        calls = (s2["call"] / t2) / (s1["call"] / t1)
        row = f"| {op} | {calls:.3f} {'ok' if calls <= SLACK else 'WORSE'} |"
        if "kernel" in s1 and "kernel" in s2:
            k1, k2 = s1["kernel"], s2["kernel"]
            kern = (k2 / t2) / (k1 / t1)
            x = largest_fixed_cost(k1, k2, t1, t2)
            bound = "none: the kernels alone miss" if x is None else ("any" if x == float("inf") else us(x))
            row += f" {kern:.3f} {'ok' if kern <= SLACK else 'WORSE'} | {bound} | {us(s1['call'] - k1)} / {us(s2['call'] - k2)} |"
        else:
            row += " – | – | – |"
        print(row)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["sapient", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of every child (default 3)")
    ap.add_argument("--sample-ms", type=float, default=3.0, help="length of one timed batch of calls")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of samples per timing per round")
    ap.add_argument("--torch-python", default=None, help="interpreter with torch (default: this one, if it has torch)")
    ap.add_argument("--only", default=None, help="comma-separated words: only the ops whose name contains one")
    args = ap.parse_args(argv)
    ops, error = select_ops(args.only, CASES)
    if error:
        ap.error(error)
    ops = ops or CASES
    if args.child:
        child = sapient_child if args.child == "sapient" else torch_child
        print(json.dumps(child(ops, args.sample_ms / 1e3, args.budget)))
        return 0
    families = {"sapient": sys.executable}
    torch_python = torch_python_or_notice(args.torch_python or sys.executable, "no torch column and no rule")
    if torch_python:
        families["torch"] = torch_python
    best = {}
    for _ in range(args.rounds):
        for t in (1, 2):
            for fam, python in families.items():
                res = run_child(python, __file__, fam, t, ["--sample-ms", str(args.sample_ms), "--budget",
                                                           str(args.budget), "--only", ",".join(ops)])
                if res is None:
                    return 1
                _keep_best(best.setdefault((fam, t), {}), res)
    report(best, "torch" in families)
    return 0


if __name__ == "__main__":
    sys.exit(main())
