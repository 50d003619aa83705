"""Figures for issue 10 ("MLX ready for the GPU it is for"), measured on whatever device MLX runs on.

    python benchmarks/mlx_issue10.py            # ~1-2 minutes on MLX's CPU device
    python benchmarks/mlx_issue10.py --quick    # tiny sizes, seconds (what the test runs)

Sections (each prints a table; nothing here is asserted: timings belong to benchmarks, not tests):

1. decode step: ms per token of a Llama-style model, host copies per step, weight uploads after the
   first step, for the portable test engine (``sapient_core.testing.models``: NumPy weights through the
   weight cache, ``sapient_core.KVCache`` appended in place) and the device engine (``benchmarks/mlx_engine.py``:
   weights handed over, in-place KV cache, embedding on the device, ``eval`` every step); with the
   plugin's first-use check and the logits ops' separate input evaluation switched off, to show what
   they cost;
2. pending steps: peak MLX memory of a decode loop that reads nothing back for N steps, against the
   same loop evaluating every step (``kernels.evaluate``);
3. weight cache: hits and uploads per step, and ms per step, when the cache limit is 95% of the weights;
4. RoPE: the host-table RoPE against ``mx.fast.rope`` (time per call, and the error at large positions).

Parts that need the current plugin (``evaluate``, the device engine) print "n/a" on an older one, so
the same script measures a checkout from before issue 10 (``PYTHONPATH=<old>/plugins/mlx``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import pathlib
import statistics
import sys
import time
from unittest import mock

import numpy as np

from sapient_core.reporting import format_table

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def plugin_stats(backend):
    return backend.stats().plugin or {}


def run_steps(step, steps, backend):
    """Time ``step()`` ``steps`` times after a first call; host copies and weight uploads per step."""
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    p0 = plugin_stats(backend)
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    p1 = plugin_stats(backend)
    tr0, tr1 = p0["transfers"], p1["transfers"]
    return {"ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times),
            "cpu_ms": 1e3 * statistics.median(cpu), "first_ms": 1e3 * first,
            "out": (tr1["device_to_host"] - tr0["device_to_host"]) / steps,
            "in": (tr1["activation_uploads"] - tr0["activation_uploads"]) / steps,
            "weight_uploads": p1["weight_cache"]["uploads"] - p0["weight_cache"]["uploads"]}


def decode_section(config, steps, prompt_len):
    import sapient_core
    from sapient_backend_mlx import kernels
    from sapient_core.testing.models import Decoder as Llama, random_weights
    be = sapient_core.get_backend("mlx", strict=True)
    weights = random_weights(config, seed=0)
    prompt = np.arange(prompt_len)[None] % config.vocab_size
    rows = []

    def portable():
        model = Llama(be, config, weights)
        state = {"cache": model(prompt)[1]}

        def step():
            logits, state["cache"] = model(np.array([[7]]), state["cache"])
        return step

    def device_engine():
        from mlx_engine import DeviceLlama
        model = DeviceLlama(be, config, weights, max_len=prompt_len + steps + 2)
        model(prompt)
        return lambda: model(np.array([[7]]))

    engines = [("portable (testing.models)", portable)]
    if hasattr(kernels, "evaluate"):
        engines.append(("device (mlx_engine)", device_engine))
    for name, make in engines:
        variants = [("as shipped", {})]
        if hasattr(kernels, "PROBE"):
            variants += [("no first-use check", {"PROBE": False}),
                         ("logits: no separate input eval", {"_evaluated_input": lambda x, op: None})]
        for label, patches in variants:
            with contextlib.ExitStack() as stack:
                for attr, value in patches.items():
                    stack.enter_context(mock.patch.object(kernels, attr, value))
                if "PROBE" in patches:
                    stack.enter_context(mock.patch.object(kernels, "_PROBED", set()))
                    stack.enter_context(mock.patch.object(kernels, "_SEEN", set()))
                if hasattr(kernels, "_ROPE_TABLES"):
                    kernels._ROPE_TABLES.clear()      # each variant uploads its own tables, as a fresh run
                r = run_steps(make(), steps, be)
            rows.append([name, label, f"{r['ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['cpu_ms']:.2f}",
                         f"{r['first_ms']:.1f}", f"{r['out']:g} out, {r['in']:g} in", str(r["weight_uploads"])])
    print(f"\n1. Decode step ({config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{config.num_attention_heads}/{config.num_key_value_heads} heads, vocab {config.vocab_size}, "
          f"prompt {prompt_len}, {steps} steps, device {be.device})")
    print(format_table(rows, ["engine", "variant", "ms/token (median)", "min", "CPU ms/token", "first step ms",
                              "host copies/step", "weight uploads after step 1"]))
    print("(CPU ms: process time of all threads per step, less sensitive than wall time to other load)")


def pending_section(steps):
    import mlx.core as mx
    from sapient_backend_mlx import kernels
    if not hasattr(kernels, "evaluate"):
        print("\n2. Pending steps: n/a (this plugin has no evaluate)")
        return
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "plugins" / "mlx" / "tests"))
    from test_mlx_pending import decode
    rows = []
    for in_place in (False, True):
        for evaluate_each in (False, True):
            gc.collect()
            mx.clear_cache()
            _, peak = decode(steps, evaluate_each_step=evaluate_each, in_place=in_place)
            rows.append(["write (in place)" if in_place else "concatenate",
                         "every step" if evaluate_each else f"never ({steps} pending)", f"{peak / 2 ** 20:.1f}"])
    print(f"\n2. Pending steps: peak MLX memory of a {steps}-step decode loop (KV heads 2, head dim 64)")
    print(format_table(rows, ["KV cache", "evaluate", "peak MB"]))


def cache_section(config, steps):
    import sapient_core
    import sapient_backend_mlx
    from sapient_core.testing.models import Decoder as Llama, random_weights
    be = sapient_core.get_backend("mlx", strict=True)
    weights = random_weights(config, seed=1)
    used = sum(w.nbytes for k, w in weights.items() if k != "model.embed_tokens.weight")
    rows = []
    for label, limit in [("fits whole", None), ("95% of the weights", int(0.95 * used))]:
        sapient_backend_mlx.clear_weight_cache()
        sapient_backend_mlx.configure_weight_cache(limit)
        model = Llama(be, config, weights)
        state = {"cache": model(np.array([[1, 2, 3]]))[1]}

        def step():
            state["cache"] = model(np.array([[5]]), state["cache"])[1]
        w0 = plugin_stats(be)["weight_cache"]
        r = run_steps(step, steps, be)
        w1 = plugin_stats(be)["weight_cache"]
        hits = (w1["hits"] - w0["hits"]) / (steps + 1)
        ups = (w1["uploads"] - w0["uploads"]) / (steps + 1)
        rows.append([label, f"{hits:.1f}", f"{ups:.1f}", f"{r['ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['cpu_ms']:.2f}"])
    sapient_backend_mlx.configure_weight_cache(None)
    n_weights = len(weights) - 1
    print(f"\n3. Weight cache ({n_weights} weights used per step, {used / 2 ** 20:.1f} MB, {steps} steps)")
    print(format_table(rows, ["cache limit", "hits/step", "uploads/step", "ms/step (median)", "min", "CPU ms/step"]))


def rope_section(repeats):
    import mlx.core as mx
    from sapient_backend_mlx import kernels
    from sapient_core.testing import oracle
    rng = np.random.default_rng(0)
    rows = []
    for s, p0 in [(1, 60000), (512, 0), (512, 60000)]:
        x = rng.standard_normal((1, 8, s, 128)).astype(np.float32)
        pos = np.arange(p0, p0 + s)
        xd = mx.array(x)
        mx.eval(xd)
        want = oracle.apply_rope_positions(x, pos, 10000.0)

        def fast():
            return mx.fast.rope(xd, 128, traditional=False, base=10000.0, scale=1.0, offset=int(pos[0]))

        def tables():
            return kernels.apply_rope_positions(xd, pos, 10000.0)
        out = []
        for fn in (fast, tables):
            mx.eval(fn())
            t0 = time.perf_counter()
            for _ in range(repeats):
                mx.eval(fn())
            out.append((1e6 * (time.perf_counter() - t0) / repeats, float(np.abs(np.array(fn()) - want).max())))
        rows.append([f"S={s}, positions {p0}..{p0 + s - 1}", f"{out[0][0]:.0f}", f"{out[0][1]:.1e}",
                     f"{out[1][0]:.0f}", f"{out[1][1]:.1e}"])
    print("\n4. RoPE, x (1, 8, S, 128): mx.fast.rope (float32 angles) vs the plugin (float64 host tables)")
    print(format_table(rows, ["case", "fast.rope us", "fast.rope max err", "plugin us", "plugin max err"]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    ap.add_argument("--only", default="1234", help="sections to run, e.g. 13")
    args = ap.parse_args(argv)
    from sapient_core.testing.models import DecoderConfig as LlamaConfig
    if args.quick:
        config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                             num_hidden_layers=2, vocab_size=101)
        steps, prompt, pending, repeats = 3, 4, 40, 2
    else:
        config = LlamaConfig(hidden_size=512, num_attention_heads=8, num_key_value_heads=2,
                             intermediate_size=1408, num_hidden_layers=4, vocab_size=4096)
        steps, prompt, pending, repeats = 40, 128, 2000, 20
    import sapient_backend_mlx
    import mlx.core as mx
    print(f"sapient_backend_mlx from {pathlib.Path(sapient_backend_mlx.__file__).parent}, MLX {mx.__version__}, "
          f"{os.cpu_count()} CPUs")
    if "1" in args.only:
        decode_section(config, steps, prompt)
    if "2" in args.only:
        pending_section(pending)
    if "3" in args.only:
        cache_section(config, steps)
    if "4" in args.only:
        rope_section(repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
