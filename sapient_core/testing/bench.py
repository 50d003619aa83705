"""Per-op timings of installed backends at decode and prefill shapes, against the CPU reference.

:func:`run_bench` times every op of the contract on each backend at each :class:`BenchSize`, always
including the CPU reference (measured in the same run, so every ratio compares like with like).

How a time is taken: the array arguments are converted once to the backend's own type
(``backend.from_numpy``: a chain of ops in an engine passes device arrays, and device backends keep
their weights), the op runs once to warm up, then repeatedly for at least ``min_time`` seconds and
``min_repeats`` calls (but no longer than :data:`SLOW_OP_SECONDS` in all); each call is followed by
``backend.to_numpy(result)``, which waits for lazy backends (MLX) to finish.  The median is reported;
``ratio`` is the backend's median divided by the CPU reference's (below 1: faster).  Backends run in
their default, non-strict mode: an op the backend declines at a size is timed as the fallback it is
and marked ``fallback``; an op it does not implement is marked ``cpu`` (served by the CPU reference).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Iterable

import numpy as np

from ..hookspecs import OPS
from ..reporting import format_table

__all__ = ["BenchSize", "BENCH_SIZES", "DEFAULT_SIZES", "parse_sizes", "bench_args", "BenchResult",
           "BenchReport", "run_bench"]


@dataclasses.dataclass(frozen=True)
class BenchSize:
    """The dimensions of one benchmark shape.  ``kv_len`` positions are cached before the step; a
    step of ``seq`` positions attends over ``kv_len + seq`` keys."""

    name: str
    batch: int = 1
    seq: int = 64
    hidden: int = 1024
    heads: int = 16
    kv_heads: int = 4
    head_dim: int = 64
    mlp: int = 2816
    vocab: int = 8192
    kv_len: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return (f"B={self.batch} S={self.seq} hidden={self.hidden} heads={self.heads}/{self.kv_heads}x"
                f"{self.head_dim} mlp={self.mlp} vocab={self.vocab} kv_len={self.kv_len}")


_MODEST = dict(hidden=1024, heads=16, kv_heads=4, head_dim=64, mlp=2816, vocab=8192)
_LLM = dict(hidden=2048, heads=32, kv_heads=8, head_dim=64, mlp=8192, vocab=32000)

#: Named sizes: ``decode`` and ``prefill`` (the defaults: a 1B-class layer, seconds on two cores) and
#: ``llm-decode`` / ``llm-prefill`` (a 7B-class layer: hidden 2048, 32 query and 8 key/value heads of
#: 64, MLP 8192, vocabulary 32000; decode over 512 cached positions, prefill of 128 tokens).
BENCH_SIZES: dict[str, BenchSize] = {
    "decode": BenchSize("decode", seq=1, kv_len=256, **_MODEST),
    "prefill": BenchSize("prefill", seq=64, kv_len=0, **_MODEST),
    "llm-decode": BenchSize("llm-decode", seq=1, kv_len=512, **_LLM),
    "llm-prefill": BenchSize("llm-prefill", seq=128, kv_len=0, **_LLM),
}
DEFAULT_SIZES = ("decode", "prefill")
_KEYS = {f.name for f in dataclasses.fields(BenchSize)} - {"name"}
_ALIASES = {"b": "batch", "s": "seq", "h": "hidden", "kv": "kv_len"}


def parse_sizes(text: str | Iterable[str]) -> list[BenchSize]:
    """Sizes from ``"decode,prefill"`` (names of :data:`BENCH_SIZES`) or custom ones written as
    ``key=value`` pairs joined by ``:``, e.g. ``seq=32:hidden=512:mlp=1376`` (unset keys: prefill's;
    keys: batch, seq, hidden, heads, kv_heads, head_dim, mlp, vocab, kv_len; S, B, H, kv are aliases)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not items:
        raise ValueError("no benchmark size given; known sizes: " + ", ".join(BENCH_SIZES))
    sizes = []
    for item in items:
        if item in BENCH_SIZES:
            sizes.append(BENCH_SIZES[item])
            continue
        if "=" not in item:
            raise ValueError(f"unknown benchmark size {item!r}; known: {', '.join(BENCH_SIZES)}, or a custom "
                             f"size such as 'seq=32:hidden=512:mlp=1376'")
        values: dict[str, int] = {}
        for pair in item.split(":"):
            key, _, value = pair.partition("=")
            key = _ALIASES.get(key.strip().lower(), key.strip().lower())
            if key not in _KEYS:
                raise ValueError(f"custom size {item!r}: unknown key {key!r}; keys: {', '.join(sorted(_KEYS))}")
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"custom size {item!r}: {key}={value!r} is not an integer") from None
        size = dataclasses.replace(BENCH_SIZES["prefill"], name=item, **values)
        if size.heads % size.kv_heads or size.head_dim % 2 or min(values.values(), default=1) < 0:
            raise ValueError(f"custom size {item!r}: heads must be divisible by kv_heads, head_dim even, "
                             f"and every value >= 0")
        sizes.append(size)
    return sizes


def bench_args(op: str, size: BenchSize, rng: np.random.Generator | None = None) -> tuple:
    """The arguments of ``op`` at ``size``, as an engine's forward pass would call it (NumPy)."""
    rng = rng or np.random.default_rng(0)
    s = size
    B, S = s.batch, s.seq

    def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def weight(out: int, inp: int) -> np.ndarray:
        return randn(out, inp, scale=1.0 / np.sqrt(inp))

    positions = np.arange(s.kv_len, s.kv_len + S, dtype=np.int64)
    if op == "linear_3d":                       # the MLP's up projection
        return randn(B, S, s.hidden), weight(s.mlp, s.hidden)
    if op == "linear_3d_bias":                  # an attention projection with bias
        return randn(B, S, s.hidden), weight(s.hidden, s.hidden), randn(s.hidden)
    if op == "rms_norm":
        return randn(B, S, s.hidden), 1.0 + randn(s.hidden, scale=0.1), 1e-6
    if op == "layer_norm":
        return randn(B, S, s.hidden), 1.0 + randn(s.hidden, scale=0.1), randn(s.hidden, scale=0.1), 1e-5
    if op == "silu":
        return (randn(B, S, s.mlp, scale=3.0),)
    if op == "gelu":
        return randn(B, S, s.mlp, scale=3.0), "tanh"
    if op == "add":                             # the residual
        return randn(B, S, s.hidden), randn(B, S, s.hidden)
    if op == "mul":                             # gate * up
        return randn(B, S, s.mlp), randn(B, S, s.mlp)
    if op == "apply_rope_positions":
        return randn(B, s.heads, S, s.head_dim), positions, 10000.0
    if op == "apply_rope_partial":
        return randn(B, s.heads, S, s.head_dim), positions, 10000.0, max(2, s.head_dim // 2 // 2 * 2)
    if op == "gqa_attention":
        keys = s.kv_len + S
        return (randn(B, s.heads, S, s.head_dim), randn(B, s.kv_heads, keys, s.head_dim),
                randn(B, s.kv_heads, keys, s.head_dim), s.kv_heads, True)
    if op == "apply_rope":                      # Llama 3.1's frequencies
        from ..rope import rope_parameters
        p = rope_parameters({"rope_theta": 500000.0, "head_dim": s.head_dim, "hidden_size": s.hidden,
                             "num_attention_heads": s.heads, "max_position_embeddings": 131072,
                             "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
        return randn(B, s.heads, S, s.head_dim), positions, np.array(p.inv_freq), p.attention_scaling
    if op in ("logits_from_hidden", "all_logits_from_hidden"):
        return randn(B, S, s.hidden), weight(s.vocab, s.hidden)
    if op == "embedding":                       # the token embedding of a forward pass
        return rng.integers(0, s.vocab, size=(B, S)), randn(s.vocab, s.hidden)
    raise ValueError(f"unknown op {op!r}")


@dataclasses.dataclass
class BenchResult:
    """One op on one backend at one size.

    :ivar served_by: ``"self"`` (the backend ran it), ``"cpu"`` (not implemented: the CPU reference
        served it) or ``"fallback"`` (the backend declined or failed at this size).
    :ivar ratio: median / the CPU reference's median at the same size (None for the reference itself).
    """

    backend: str
    size: str
    op: str
    median_s: float
    min_s: float
    repeats: int
    served_by: str
    ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BenchReport:
    """Every timing of one benchmark run."""

    backends: list[str]
    sizes: list[BenchSize]
    results: list[BenchResult]
    baseline: str = "cpu"

    def get(self, backend: str, size: str, op: str) -> BenchResult | None:
        for r in self.results:
            if (r.backend, r.size, r.op) == (backend, size, op):
                return r
        return None

    def table(self) -> str:
        """One row per (size, op); per backend its milliseconds and, beside the reference, the ratio."""
        header = ["size", "op"]
        right = []
        for b in self.backends:
            right.append(len(header))
            header.append(f"{b} ms")
            if b != self.baseline:
                right.append(len(header))
                header.append(f"{b}/{self.baseline}")
        rows = []
        marks = {"cpu": " (cpu)", "fallback": " (fallback)", "self": ""}
        benched = {r.op for r in self.results}
        for size in self.sizes:
            for op in (op for op in OPS if op in benched):
                row = [size.name, op]
                for b in self.backends:
                    r = self.get(b, size.name, op)
                    if r is None:
                        row += ["-"] if b == self.baseline else ["-", "-"]
                        continue
                    row.append(f"{r.median_s * 1e3:.3f}")
                    if b != self.baseline:
                        row.append(("-" if r.ratio is None else f"{r.ratio:.2f}") + marks[r.served_by])
                rows.append(row)
        notes = [f"{s.name}: {s.describe()}" for s in self.sizes]
        notes.append(f"ms: median time per call, until the result is on the host. NAME/{self.baseline}: that "
                     f"time / the {self.baseline} reference's time (below 1 is faster). (cpu): not implemented, "
                     f"the CPU reference served it. (fallback): the backend declined, the CPU reference ran.")
        return format_table(rows, header, right=right) + "\n\n" + "\n".join(notes)

    def as_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "backends": list(self.backends),
                "sizes": [s.as_dict() for s in self.sizes], "results": [r.as_dict() for r in self.results]}


#: A measurement stops after this many seconds even before ``min_repeats`` (a very slow op).
SLOW_OP_SECONDS = 2.0


def _time(fn: Callable, args: tuple, sync: Callable, min_time: float, min_repeats: int,
          max_repeats: int) -> tuple[float, float, int]:
    sync(fn(*args))                                           # warm-up (uploads, compilation, caches)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats:
        t0 = time.perf_counter()
        sync(fn(*args))
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if (len(times) >= min_repeats and t1 - start >= min_time) or t1 - start >= SLOW_OP_SECONDS:
            break
    return statistics.median(times), min(times), len(times)


def run_bench(names: Iterable[str] | None = None, sizes: Any = DEFAULT_SIZES, *, ops: Iterable[str] | None = None,
              registry: Any = None, min_time: float = 0.05, min_repeats: int = 3, max_repeats: int = 1000,
              progress: Callable[[int, int, str], None] | None = None) -> BenchReport:
    """Time every op on each backend (default: every available one) at each size; see the module doc.

    :param names: backend names; the CPU reference is always added (it is the baseline).
    :param sizes: :class:`BenchSize` objects, names, or a string for :func:`parse_sizes`.
    :param ops: only these ops (default: all).
    :param progress: called as ``progress(i, n, label)`` before each measurement.
    """
    if registry is None:
        import sapient_core
        registry = sapient_core.default_registry()
    if isinstance(sizes, str) or not all(isinstance(s, BenchSize) for s in sizes):
        sizes = parse_sizes(sizes)
    sizes = list(sizes)
    if names is None:
        names = [i.name for i in registry.list_backends() if i.status == "available"]
    backends = {"cpu": registry.get_backend("cpu", strict=False)}
    for n in names:
        be = registry.get_backend(n, strict=False)
        backends.setdefault(be.name, be)          # "metal" and "mlx" may name one backend
    order = list(backends)
    op_list = list(OPS) if ops is None else [op for op in OPS if op in set(ops)]
    total = len(sizes) * len(op_list) * len(order)
    results: list[BenchResult] = []
    i = 0
    for size in sizes:
        for op in op_list:
            host_args = bench_args(op, size, np.random.default_rng(0))
            baseline = None
            for name in order:
                be = backends[name]
                if progress is not None:
                    progress(i, total, f"{size.name} {op} on {be.name}")
                i += 1
                args = tuple(be.from_numpy(a) if isinstance(a, np.ndarray) else a for a in host_args)
                fn = getattr(be, op)
                be.reset_stats()
                med, best, n = _time(fn, args, be.to_numpy, min_time, min_repeats, max_repeats)
                st = be.stats().ops[op]
                served = "cpu" if st.implemented_by != be.name else ("fallback" if st.fallbacks or st.routed else "self")
                r = BenchResult(be.name, size.name, op, med, best, n, served)
                if name == "cpu":
                    baseline = med
                elif baseline:
                    r.ratio = med / baseline
                results.append(r)
    return BenchReport(order, sizes, results)
