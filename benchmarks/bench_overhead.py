"""Per-call overhead of the backend object: ``python benchmarks/bench_overhead.py``.

The overhead is what ``backend.op(...)`` costs on top of calling the same kernel directly, on tiny
inputs (so the kernel's own time is small and steady): validation, counting, and for a plugin other
than the CPU reference the run-time check of its result (array type, dtype, shape).  Two backends are
measured:

- ``cpu``: the CPU reference itself (trusted: no lock, no result check, no fallback);
- ``checked``: a plugin registered in-process whose ops are the same NumPy kernels, so the difference
  from ``cpu`` is exactly the untrusted path (result check, try/except for the fallback).

The ops of a Llama decode step are called the way ``sapient_core.testing.models.Decoder`` calls them
(e.g. ``apply_rope`` with an ``inv_freq`` table, ``gqa_attention`` with its optional arguments unset);
``layer_norm`` and ``apply_rope_positions``, which it does not call, are timed as well.
The last line weighs the ops by how often one decode step of a 32-layer Llama calls each (counted
from ``stats()`` of a real ``Decoder`` step): the backend object's cost per call of a decode step.

Each figure is the best of interleaved rounds (the direct call, then each backend, repeated), in µs.
No assertion: timings belong here, not in the tests.  Options: ``--quick``, ``--layers N``.
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
        "rms_norm": (x, w, 1e-6), "linear_3d": (x, np.ones((4, 8), F32)),
        "apply_rope": (q, np.array([2]), np.ones(4, F32), 1.0), "gqa_attention": (q, kv, kv, 2, True),
        "silu": (x,), "mul": (x, x), "add": (x, x), "embedding": (np.array([[3]]), np.ones((10, 8), F32)),
        "logits_from_hidden": (x, np.ones((10, 8), F32)),
        "apply_rope_positions": (q, np.array([2]), 10000.0), "layer_norm": (x, w, None, 1e-5),
        "gelu": (x, "tanh"),
    }


def decode_step_calls(layers: int) -> dict[str, int]:
    """How many times one decode step of a ``layers``-layer Llama calls each op (a real Decoder step)."""
    from sapient_core.testing.models import Decoder, DecoderConfig, random_weights
    config = DecoderConfig(num_hidden_layers=layers)
    backend = sapient_core.get_backend("cpu")
    decoder = Decoder(backend, config, random_weights(config))
    _, state = decoder(np.array([[1, 2, 3]]))
    backend.reset_stats()
    decoder(np.array([[4]]), state)
    return {op: s.calls for op, s in backend.stats().ops.items() if s.calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    parser.add_argument("--layers", type=int, default=32, help="layers of the decode step the mean weighs (32)")
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
    overhead = {}
    for op, a in cases().items():
        a = OPS[op].with_defaults(a)   # the kernels take every argument
        direct, via_cpu, via_checked = getattr(kernels, op), getattr(cpu, op), getattr(checked, op)
        t = {"k": [], "c": [], "x": []}
        for _ in range(rounds):
            t["k"].append(timeit.timeit(lambda: direct(*a), number=n) / n)
            t["c"].append(timeit.timeit(lambda: via_cpu(*a), number=n) / n)
            t["x"].append(timeit.timeit(lambda: via_checked(*a), number=n) / n)
        k, c, x = min(t["k"]), min(t["c"]), min(t["x"])
        overhead[op] = (c - k, x - k)
        print(f"| {op:<22} | {k * 1e6:9.2f} | {(c - k) * 1e6:12.2f} | {(x - k) * 1e6:16.2f} |")
    ran = checked.stats().ops["silu"]
    print(f"\nchecked backend: silu ran {ran.calls} times on the plugin, {ran.fallbacks} fallbacks (must be 0)")
    calls = decode_step_calls(args.layers)
    missing = set(calls) - set(overhead)
    if missing:
        raise SystemExit(f"the decode step calls {sorted(missing)}, which this benchmark does not measure")
    total = sum(calls.values())
    mean = [sum(calls[op] * overhead[op][i] for op in calls) / total for i in (0, 1)]
    print(f"\none decode step of a {args.layers}-layer Llama: {total} calls "
          f"({', '.join(f'{op} {k}' for op, k in calls.items())})")
    print(f"mean overhead per call of that step: cpu {mean[0] * 1e6:.2f} µs, checked {mean[1] * 1e6:.2f} µs")


if __name__ == "__main__":
    main()
