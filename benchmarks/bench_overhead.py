"""Per-call overhead of the backend object: ``python benchmarks/bench_overhead.py``.

The overhead is what ``backend.op(...)`` costs on top of calling the same kernel directly, on tiny
inputs (so the kernel's own time is small and steady): validation, counting, and for a plugin other
than the CPU reference the run-time check of its result (array type, dtype, shape).  Two backends are
measured:

- ``cpu``: the CPU reference itself (trusted: no lock, no result check, no fallback);
- ``checked``: a plugin registered in-process whose ops are the same NumPy kernels, so the difference
  from ``cpu`` is exactly the untrusted path (result check, try/except for the fallback).

Each figure is the best of interleaved rounds (the direct call, then each backend, repeated), in µs.
No assertion: timings belong here, not in the tests.  Options: ``--quick``.
"""

from __future__ import annotations

import argparse
import os
import platform
import timeit

import numpy as np

import sapient_core
from sapient_backend_cpu import kernels

F32 = np.float32


def checked_plugin():
    """A plugin whose ops are the CPU kernels: a non-reference backend with the reference's speed."""
    import types

    from sapient_core import OPS, hookimpl
    ns = {"backend_capabilities": hookimpl(lambda: {"api_version": 2, "device": "cpu", "available": True,
                                                    "thread_safe": True})}
    for op in OPS:
        ns[op] = hookimpl(getattr(kernels, op))
    return types.SimpleNamespace(**ns)


def cases():
    x = np.ones((1, 1, 8), F32)
    w = np.ones(8, F32)
    q = np.ones((1, 4, 1, 8), F32)
    kv = np.ones((1, 2, 3, 8), F32)
    return {
        "rms_norm": (x, w, 1e-6), "silu": (x,), "add": (x, x), "linear_3d": (x, np.ones((4, 8), F32)),
        "apply_rope_positions": (q, np.array([2]), 10000.0), "gqa_attention": (q, kv, kv, 2, True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    args = parser.parse_args()
    n, rounds = (20000, 3) if args.quick else (100000, 7)
    sapient_core.register_backend(checked_plugin(), "checked")
    cpu, checked = sapient_core.get_backend("cpu"), sapient_core.get_backend("checked")
    print(f"sapient_core {sapient_core.__version__}; python {platform.python_version()}; numpy {np.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("\nPer-call overhead of the backend object over a direct kernel call (µs; tiny inputs; best of "
          f"{rounds} interleaved rounds of {n} calls)\n")
    print(f"| {'op':<22} | {'kernel µs':>9} | {'cpu overhead':>12} | {'checked overhead':>16} |")
    print(f"|{'-' * 24}|{'-' * 11}|{'-' * 14}|{'-' * 18}|")
    from sapient_core import OPS
    for op, a in cases().items():
        a = a + tuple(arg.default for arg in OPS[op].args[len(a):])   # the kernels take every argument
        direct, via_cpu, via_checked = getattr(kernels, op), getattr(cpu, op), getattr(checked, op)
        t = {"k": [], "c": [], "x": []}
        for _ in range(rounds):
            t["k"].append(timeit.timeit(lambda: direct(*a), number=n) / n)
            t["c"].append(timeit.timeit(lambda: via_cpu(*a), number=n) / n)
            t["x"].append(timeit.timeit(lambda: via_checked(*a), number=n) / n)
        k, c, x = min(t["k"]), min(t["c"]), min(t["x"])
        print(f"| {op:<22} | {k * 1e6:9.2f} | {(c - k) * 1e6:12.2f} | {(x - k) * 1e6:16.2f} |")
    ran = checked.stats().ops["silu"]
    print(f"\nchecked backend: silu ran {ran.calls} times on the plugin, {ran.fallbacks} fallbacks (must be 0)")


if __name__ == "__main__":
    main()
