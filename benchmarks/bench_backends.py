#!/usr/bin/env python
"""Every op on the CPU reference and on MLX at LLM shapes, and a Llama-shaped decode step on each.

    python benchmarks/bench_backends.py                 # the issue's shapes (a few minutes on 2 cores)
    python benchmarks/bench_backends.py --small         # small shapes, seconds
    python benchmarks/bench_backends.py --skip-ops      # only the decode step (or --skip-decode)

Part 1, per op (``sapient_core.testing.bench.run_bench``): each op at ``llm-decode`` (S=1 over a
512-position KV cache) and ``llm-prefill`` (S=128): hidden 2048, 32 query and 8 key/value heads of 64,
MLP 8192, vocabulary 32000.  Inputs are converted once to each backend's array type; each call is
timed until its result is on the host; ``mlx/cpu`` is MLX's median time over the CPU reference's
(below 1: MLX is faster).

Part 2, a decode step of ``sapient_core.testing.models.Decoder`` (hidden 2048, 32 heads, 8 KV heads,
MLP 5632, 4 layers, vocabulary 32000), one token over a KV cache of 512 positions, on each backend:

- ms/token: the median over ``--steps`` steps after one warm-up step;
- host copies/step: device -> host copies per step (MLX; the logits, which the contract returns as
  NumPy, are one), and host -> device uploads per step other than weights (the token ids, the step's
  RoPE cos/sin rows and the KV cache's write offset);
- weight uploads after step 1: how many weights were uploaded again after the first step (target 0);
- weight bytes/token: the bytes of every weight a step reads (all but the embedding table, plus one
  embedding row); GB/s = those bytes / the step time; % of bandwidth = that / the memory read
  bandwidth measured in the same run (the better of a sum and a dot product over arrays far larger
  than the last-level cache; a copy is shown too).  A CPU decode step is bound by reading the
  weights, so this says how close the step is to the machine's limit.

Part 3, the same decode step with ``sapient_core.KVCache`` (preallocated, appended in place) and with a
cache grown by concatenation, alternately, twice each: the better of the two medians of each, and their
ratio.

No numbers are asserted: this prints tables.  On a machine with two cores and other work running,
OpenBLAS's two-thread matrix-vector products wait for the busy core (about 8 ms per call here), which
dominates the CPU decode step; ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_backends.py
--skip-ops`` measures it without that.  MLX's Linux build (``mlx[cpu]``) runs on MLX's CPU
device with a reference BLAS, several times slower than NumPy's; on Apple Silicon MLX runs on the GPU.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import sapient_core
from sapient_core.reporting import format_table
from sapient_core.testing.bench import run_bench
from sapient_core.testing.models import Decoder as Llama
from sapient_core.testing.models import DecoderConfig as LlamaConfig
from sapient_core.testing.models import random_weights

ISSUE_MODEL = LlamaConfig(hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                          intermediate_size=5632, num_hidden_layers=4, vocab_size=32000)
SMALL_MODEL = LlamaConfig(hidden_size=256, num_attention_heads=8, num_key_value_heads=2,
                          intermediate_size=704, num_hidden_layers=2, vocab_size=2048)


def table(header: list[str], rows: list[list[str]]) -> str:
    return format_table(rows, header, right=range(1, len(header)))


# --- memory bandwidth ------------------------------------------------------------------------------

def memory_bandwidth(nbytes: int, repeats: int = 5) -> dict[str, float]:
    """Bytes per second of streaming kernels over arrays of ``nbytes`` (far beyond the last-level cache).

    Read-only, like a decode step reading its weights: ``sum`` (``a.sum()``, one thread) and ``dot``
    (``np.dot`` of the two halves of ``a``, BLAS with all its threads); ``read`` is the better of the
    two and is what "% of bandwidth" divides by.  ``copy`` (``np.copyto``, read + write counted as
    2 x nbytes) is shown for reference.
    """
    n = nbytes // 4
    a = np.ones(n, np.float32)
    b = np.full(n, 2.0, np.float32)
    half = n // 2

    def best(fn, moved):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return moved / min(times)
    out = {"sum": best(a.sum, a.nbytes), "dot": best(lambda: np.dot(a[:half], a[half:]), a.nbytes)}
    out["read"] = max(out["sum"], out["dot"])
    out["copy"] = best(lambda: np.copyto(b, a), 2 * a.nbytes)
    return out


# --- the decode step -------------------------------------------------------------------------------

def step_weight_bytes(config: LlamaConfig, weights: dict[str, np.ndarray]) -> int:
    """Bytes of weights one decode step reads: everything but the embedding table, plus one row."""
    total = sum(w.nbytes for name, w in weights.items() if name != "model.embed_tokens.weight")
    return total + config.hidden_size * 4


def decode_step(backend, config: LlamaConfig, weights: dict[str, np.ndarray], kv_len: int, steps: int,
                seed: int = 0, cache: str = "inplace") -> dict:
    model = Llama(backend, config, weights, cache=cache)
    cache = model.random_state(1, kv_len, seed)
    backend.reset_stats()
    t0 = time.perf_counter()
    logits, cache = model(np.array([[1]]), cache)              # step 1: uploads the weights
    first_s = time.perf_counter() - t0
    first_logits = logits
    before = backend.stats()
    times = []
    token = np.argmax(logits, axis=-1)[:, None]
    for _ in range(steps):
        t0 = time.perf_counter()
        logits, cache = model(token, cache)
        times.append(time.perf_counter() - t0)
        token = np.argmax(logits, axis=-1)[:, None]
    after = backend.stats()
    fallbacks = sum(s.fallbacks + s.routed for s in after.ops.values())
    out = {"backend": backend.name, "device": backend.device, "first_s": first_s,
           "median_s": statistics.median(times), "min_s": min(times), "steps": steps,
           "fallbacks": fallbacks, "first_logits": first_logits}
    p0, p1 = before.plugin, after.plugin
    if p0 and p1 and "transfers" in p1:
        out["d2h_per_step"] = (p1["transfers"]["device_to_host"] - p0["transfers"]["device_to_host"]) / steps
        out["uploads_per_step"] = (p1["transfers"]["activation_uploads"]
                                   - p0["transfers"]["activation_uploads"]) / steps
        out["weight_uploads_after_first"] = p1["weight_cache"]["uploads"] - p0["weight_cache"]["uploads"]
    return out


def print_decode(results: list[dict], config: LlamaConfig, weights: dict, kv_len: int, bw: dict) -> None:
    nbytes = step_weight_bytes(config, weights)
    peak = bw["read"]
    print(f"\nDecode step: Llama hidden={config.hidden_size} heads={config.num_attention_heads}/"
          f"{config.num_key_value_heads}x{config.head_size} mlp={config.intermediate_size} "
          f"layers={config.num_hidden_layers} vocab={config.vocab_size}, 1 token over a KV cache of {kv_len}")
    print("memory bandwidth (same run, arrays of {:.0f} MiB): ".format(BW_BYTES / 2 ** 20)
          + ", ".join(f"{k} {v / 1e9:.1f} GB/s" for k, v in bw.items() if k != "read")
          + f"; read bandwidth (best read-only) {peak / 1e9:.1f} GB/s")
    ref = next((r["first_logits"] for r in results if r["backend"] == "cpu"), None)
    rows = []
    for r in results:
        gbs = nbytes / r["median_s"]
        host = ("-" if "d2h_per_step" not in r else
                f"{r['d2h_per_step']:g} out, {r['uploads_per_step']:g} in")
        wup = "-" if "weight_uploads_after_first" not in r else str(r["weight_uploads_after_first"])
        diff = "-" if ref is None or r["backend"] == "cpu" else \
            f"{float(np.abs(np.asarray(r['first_logits']) - ref).max()):.1e}"
        rows.append([f"{r['backend']} ({r['device']})", f"{r['median_s'] * 1e3:.1f}", f"{r['first_s'] * 1e3:.0f}",
                     host, wup, f"{nbytes / 2 ** 20:.0f} MiB", f"{gbs / 1e9:.1f}", f"{100 * gbs / peak:.0f} %",
                     str(r["fallbacks"]), diff])
    print(table(["backend", "ms/token", "step 1 ms", "host copies/step", "weight uploads after step 1",
                 "weight bytes/token", "GB/s", "% of bandwidth", "fallbacks", "max|logits-cpu|"], rows))
    print("host copies/step: device->host copies (the logits, NumPy by contract) and host->device "
          "activation uploads (the token ids, the step's RoPE table rows, the KV write offset); '-' for a "
          "backend whose arrays are NumPy.  % of bandwidth: weight bytes/token / ms/token over the best "
          "read bandwidth above.")


# --- main ------------------------------------------------------------------------------------------

BW_BYTES = 512 * 2 ** 20


def main(argv: list[str] | None = None) -> int:
    global BW_BYTES
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="small shapes (seconds instead of minutes)")
    ap.add_argument("--sizes", help="per-op sizes (default llm-decode,llm-prefill; --small: decode,prefill); "
                                    "see sapient_core.testing.bench.parse_sizes")
    ap.add_argument("--backend", default="mlx", help="the backend compared with the CPU reference (default mlx)")
    ap.add_argument("--steps", type=int, default=8, help="decode steps timed after the warm-up step")
    ap.add_argument("--kv-len", type=int, default=None, help="KV cache length of the decode step (default 512)")
    ap.add_argument("--min-time", type=float, default=0.2, help="per-op: seconds of repeats at least")
    ap.add_argument("--min-repeats", type=int, default=2, help="per-op: repeats at least (after a warm-up)")
    ap.add_argument("--skip-ops", action="store_true", help="skip the per-op table")
    ap.add_argument("--skip-decode", action="store_true", help="skip the decode step")
    args = ap.parse_args(argv)

    registry = sapient_core.default_registry()
    other = registry.get_backend(args.backend, strict=False)
    cpu = registry.get_backend("cpu", strict=False)
    print(f"sapient_core {sapient_core.__version__}; {other.name} on {other.device} "
          f"({other.capabilities.description}); numpy {np.__version__}; {os.cpu_count()} CPUs, load "
          f"average {os.getloadavg()[0]:.2f} (other processes slow multi-threaded BLAS calls down); "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")

    if not args.skip_ops:
        sizes = args.sizes or ("decode,prefill" if args.small else "llm-decode,llm-prefill")
        print(f"\nPer op ({sizes}), {other.name} against the CPU reference:")
        report = run_bench([other.name], sizes, registry=registry, min_time=args.min_time,
                           min_repeats=args.min_repeats,
                           progress=None if not sys.stderr.isatty() else
                           lambda i, n, label: print(f"  [{i + 1}/{n}] {label}", end="\r",
                                                              file=sys.stderr, flush=True))
        print(" " * 70, end="\r", file=sys.stderr)
        print(report.table())

    if not args.skip_decode:
        config = SMALL_MODEL if args.small else ISSUE_MODEL
        kv_len = args.kv_len if args.kv_len is not None else (64 if args.small else 512)
        if args.small:
            BW_BYTES = 64 * 2 ** 20
        weights = random_weights(config, seed=0)
        results = [decode_step(be, config, weights, kv_len, args.steps) for be in (cpu, other)]
        bw = memory_bandwidth(BW_BYTES)
        print_decode(results, config, weights, kv_len, bw)
        print(f"\nKV cache, decode step over {kv_len} cached positions: sapient_core.KVCache (preallocated, "
              f"appended in place) against growing the cache by concatenation (ms/token, the better of two medians "
              f"of {args.steps} steps, measured alternately):")
        rows = []
        for be in (cpu, other):
            runs = {kind: [] for kind in ("inplace", "concat")}
            for _ in range(2):
                for kind in runs:
                    runs[kind].append(decode_step(be, config, weights, kv_len, args.steps, cache=kind)["median_s"])
            inplace, concat = min(runs["inplace"]), min(runs["concat"])
            rows.append([be.name, f"{inplace * 1e3:.2f}", f"{concat * 1e3:.2f}", f"{concat / inplace:.3f}"])
        print(table(["backend", "in place ms", "concatenated ms", "concatenated / in place"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
