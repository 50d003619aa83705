"""The conformance kit's cases: every op of the contract at LLM-like shapes and at its edge cases.

A :class:`Case` builds its positional arguments (NumPy, in the order of ``hookspecs.OPS[op].args``) from a
random generator seeded by the case's id, so every run sees the same data.  Value cases are compared
with the float64 oracle and the CPU reference; bad-input cases (``expect`` set) must raise that error
type before the backend is called.

Shapes come from :class:`KitSizes`: ``"small"`` (the default: every case runs in well under a second
on a laptop) or ``"llm"`` (a 7B-class layer: hidden 2048, 32 query heads and 8 key/value heads of 64,
MLP 8192, vocabulary 32000, 512 cached positions, 128-token prefill).
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Callable

import numpy as np

from ..errors import ArgumentError, DTypeError, ShapeError
from ..hookspecs import OPS

__all__ = ["KitSizes", "KIT_SIZES", "Case", "build_cases", "kit_sizes", "cases_for", "CASE_BUILDERS", "bfloat16",
           "missing_need"]

F32 = np.float32
F16 = np.float16


@dataclasses.dataclass(frozen=True)
class KitSizes:
    """The dimensions the cases are built from."""

    name: str
    batch: int
    seq: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    kv_len: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Named sizes.  ``small`` uses odd sequence lengths and sizes that are not powers of two, so blocked
#: kernels meet partial blocks.
KIT_SIZES: dict[str, KitSizes] = {
    "small": KitSizes("small", batch=2, seq=7, hidden=256, heads=8, kv_heads=2, head_dim=32, mlp=688,
                      vocab=1000, kv_len=40),
    "llm": KitSizes("llm", batch=1, seq=128, hidden=2048, heads=32, kv_heads=8, head_dim=64, mlp=8192,
                    vocab=32000, kv_len=512),
}


def kit_sizes(size: str | KitSizes) -> KitSizes:
    """``size`` as :class:`KitSizes` (a name of :data:`KIT_SIZES` or an instance)."""
    if isinstance(size, KitSizes):
        return size
    try:
        return KIT_SIZES[size]
    except KeyError:
        raise ValueError(f"unknown conformance size {size!r}; known: {', '.join(KIT_SIZES)}") from None


@dataclasses.dataclass(frozen=True)
class Case:
    """One call of one op.

    :ivar op: the op's name.
    :ivar name: the case's name, unique within the op (``"prefill"``, ``"float16"``, ``"bad-rank"`` ...).
    :ivar build: ``build(rng) -> args``, the positional arguments as NumPy arrays and Python values.
    :ivar expect: for a bad-input case, the error type the call must raise (``ShapeError`` or
        ``DTypeError``); None for a value case.
    :ivar native: pass the array arguments through ``backend.from_numpy`` first (a chain of ops).
    :ivar no_warnings: fail if the call emits a NumPy overflow/invalid/divide warning.
    :ivar needs: a module the case's inputs need (``"ml_dtypes"``: NumPy has no bfloat16 of its own); when
        it is not installed the case is reported as not run, with the ``pip install`` that runs it.
    """

    op: str
    name: str
    build: Callable[[np.random.Generator], tuple]
    expect: type | None = None
    native: bool = False
    no_warnings: bool = False
    needs: str | None = None

    @property
    def id(self) -> str:
        return f"{self.op}:{self.name}"

    def args(self) -> tuple:
        """Build the arguments (deterministic: the generator is seeded by the case's id)."""
        return self.build(np.random.default_rng(zlib.crc32(self.id.encode())))


#: op -> the function that builds its cases (registered with :func:`cases_for`).
CASE_BUILDERS: dict[str, Callable[[KitSizes], list[Case]]] = {}


def cases_for(*ops: str) -> Callable[[Callable[[KitSizes], list[Case]]], Callable[[KitSizes], list[Case]]]:
    """Register a function ``(sizes) -> [Case, ...]`` as the case builder of ``ops``."""
    def register(builder: Callable[[KitSizes], list[Case]]) -> Callable[[KitSizes], list[Case]]:
        for op in ops:
            CASE_BUILDERS[op] = builder
        return builder
    return register


# --- array helpers -------------------------------------------------------------------------------------

def _randn(rng: np.random.Generator, shape: tuple, scale: float = 1.0, dtype: Any = F32) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(dtype)


def _weight(rng: np.random.Generator, out: int, inp: int, dtype: Any = F32) -> np.ndarray:
    return _randn(rng, (out, inp), 1.0 / np.sqrt(inp), dtype)


def _norm_weight(rng: np.random.Generator, d: int, dtype: Any = F32) -> np.ndarray:
    return (1.0 + 0.1 * rng.standard_normal(d)).astype(dtype)


def _noncontig(rng: np.random.Generator, shape: tuple, perm: tuple, scale: float = 1.0) -> np.ndarray:
    """A non-contiguous float32 view of ``shape``: built as the permuted shape, then transposed back
    (as an engine's ``reshape(...).transpose(...)`` produces it)."""
    inv = tuple(np.argsort(perm))
    view = _randn(rng, tuple(shape[p] for p in perm), scale).transpose(inv)
    if view.flags.c_contiguous:   # size-1 axes make the transpose contiguous: take every other column
        view = _randn(rng, (*shape[:-1], 2 * shape[-1]), scale)[..., ::2]
    assert view.shape == tuple(shape) and (view.size == 0 or not view.flags.c_contiguous)
    return view


def _with_specials(x: np.ndarray, specials: dict[tuple, float]) -> np.ndarray:
    x = x.copy()
    for idx, val in specials.items():
        x[idx] = val
    return x


# --- cases per op --------------------------------------------------------------------------------------

@cases_for("linear_3d", "linear_3d_bias")
def _linear_cases(s: KitSizes) -> list[Case]:
    B, S, D, M = s.batch, s.seq, s.hidden, s.mlp
    op = "linear_3d"
    c = [
        Case(op, "prefill", lambda r: (_randn(r, (B, S, D)), _weight(r, M, D)), no_warnings=True),
        Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, D)), _weight(r, D, D))),
        Case(op, "odd-sizes", lambda r: (_randn(r, (3, 5, 77)), _weight(r, 131, 77))),
        Case(op, "float16", lambda r: (_randn(r, (B, S, D), dtype=F16), _weight(r, M, D, F16))),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, S, D), (1, 0, 2)), _weight(r, M, D))),
        Case(op, "noncontig-weight", lambda r: (_randn(r, (B, S, D)), _weight(r, D, M).T)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, 0, D)), _weight(r, M, D))),
        Case(op, "zero-batch", lambda r: (_randn(r, (0, S, D)), _weight(r, M, D))),
        Case(op, "nan-inf", lambda r: (_with_specials(_randn(r, (B, S, D)),
                                                      {(0, 1, 3): np.nan, (B - 1, S - 1, 0): np.inf}),
                                       _weight(r, M, D))),
        Case(op, "large", lambda r: (_randn(r, (B, S, D), 1e4), _weight(r, M, D)), no_warnings=True),
    ]
    c.append(dataclasses.replace(c[0], name="native", native=True))
    c += [
        Case(op, "bad-rank", lambda r: (_randn(r, (S, D)), _weight(r, M, D)), expect=ShapeError),
        Case(op, "bad-features", lambda r: (_randn(r, (B, S, D)), _weight(r, M, D + 1)), expect=ShapeError),
        Case(op, "bad-dtype", lambda r: (np.ones((B, S, D), np.int32), _weight(r, M, D)), expect=DTypeError),
    ]
    op = "linear_3d_bias"
    b = [
        Case(op, "prefill", lambda r: (_randn(r, (B, S, D)), _weight(r, M, D), _randn(r, (M,)))),
        Case(op, "no-bias", lambda r: (_randn(r, (B, S, D)), _weight(r, M, D), None)),
        Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, D)), _weight(r, D, D), _randn(r, (D,)))),
        Case(op, "float16", lambda r: (_randn(r, (B, S, D), dtype=F16), _weight(r, M, D, F16),
                                       _randn(r, (M,), dtype=F16))),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, S, D), (1, 0, 2)), _weight(r, M, D),
                                           _randn(r, (M,)))),
        Case(op, "zero-S", lambda r: (_randn(r, (B, 0, D)), _weight(r, M, D), _randn(r, (M,)))),
        Case(op, "nan-inf", lambda r: (_with_specials(_randn(r, (B, S, D)), {(0, 1, 3): np.nan}), _weight(r, M, D),
                                       _with_specials(_randn(r, (M,)), {5: np.inf}))),
    ]
    b.append(dataclasses.replace(b[0], name="native", native=True))
    b.append(Case(op, "bad-bias", lambda r: (_randn(r, (B, S, D)), _weight(r, M, D), _randn(r, (M + 1,))),
                  expect=ShapeError))
    return c + b


@cases_for("rms_norm", "layer_norm")
def _norm_cases(s: KitSizes) -> list[Case]:
    B, S, D, H, d = s.batch, s.seq, s.hidden, s.heads, s.head_dim

    def large_rows(r: np.random.Generator) -> np.ndarray:
        x = _randn(r, (B, S, D))
        scales = np.array([1e4, 1e-3, 1e12, 0.0, 1.0, 1e-20, 3e7][:S] + [1.0] * max(0, S - 7), F32)
        return (x * scales[None, :S, None]).astype(F32)

    op = "rms_norm"
    eps = 1e-6
    c = [
        Case(op, "prefill", lambda r: (_randn(r, (B, S, D)), _norm_weight(r, D), eps), no_warnings=True),
        Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, D)), _norm_weight(r, D), eps)),
        Case(op, "per-head-4d", lambda r: (_randn(r, (B, H, S, d)), _norm_weight(r, d), eps)),
        Case(op, "1d", lambda r: (_randn(r, (D,)), _norm_weight(r, D), eps)),
        Case(op, "float16", lambda r: (_randn(r, (B, S, D), dtype=F16), _norm_weight(r, D, F16), eps)),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, S, D), (1, 0, 2)), _norm_weight(r, D), eps)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, 0, D)), _norm_weight(r, D), eps)),
        Case(op, "nan-row", lambda r: (_with_specials(_randn(r, (B, S, D)), {(0, 1, 5): np.nan,
                                                                              (B - 1, 0, 2): np.inf}),
                                       _norm_weight(r, D), eps)),
        Case(op, "large", lambda r: (large_rows(r), _norm_weight(r, D), eps), no_warnings=True),
        Case(op, "eps-1e-5", lambda r: (_randn(r, (B, S, D), 1e-3), _norm_weight(r, D), 1e-5)),
    ]
    c.append(dataclasses.replace(c[0], name="native", native=True))
    c += [
        Case(op, "bad-weight", lambda r: (_randn(r, (B, S, D)), _norm_weight(r, D - 1), eps), expect=ShapeError),
        Case(op, "bad-dtype", lambda r: (_randn(r, (B, S, D), dtype=np.float64), _norm_weight(r, D), eps),
             expect=DTypeError),
        Case(op, "bad-eps", lambda r: (_randn(r, (B, S, D)), _norm_weight(r, D), -1.0), expect=ArgumentError),
    ]
    op = "layer_norm"
    eps = 1e-5
    ln = [
        Case(op, "prefill", lambda r: (_randn(r, (B, S, D)), _norm_weight(r, D), _randn(r, (D,), 0.1), eps),
             no_warnings=True),
        Case(op, "no-bias", lambda r: (_randn(r, (B, S, D)), _norm_weight(r, D), None, eps)),
        Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, D)), _norm_weight(r, D), _randn(r, (D,), 0.1), eps)),
        Case(op, "float16", lambda r: (_randn(r, (B, S, D), dtype=F16), _norm_weight(r, D, F16),
                                       _randn(r, (D,), 0.1, F16), eps)),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, S, D), (1, 0, 2)), _norm_weight(r, D),
                                           _randn(r, (D,), 0.1), eps)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, 0, D)), _norm_weight(r, D), _randn(r, (D,), 0.1), eps)),
        Case(op, "nan-row", lambda r: (_with_specials(_randn(r, (B, S, D)), {(0, 1, 5): np.nan}),
                                       _norm_weight(r, D), _randn(r, (D,), 0.1), eps)),
        Case(op, "large-offset", lambda r: ((1000.0 + _randn(r, (B, S, D))).astype(F32), _norm_weight(r, D),
                                            _randn(r, (D,), 0.1), eps)),
        Case(op, "large-scale", lambda r: (_randn(r, (B, S, D), 1e4), _norm_weight(r, D), _randn(r, (D,), 0.1),
                                           eps), no_warnings=True),
    ]
    ln.append(dataclasses.replace(ln[0], name="native", native=True))
    ln += [
        Case(op, "bad-bias", lambda r: (_randn(r, (B, S, D)), _norm_weight(r, D), _randn(r, (D + 1,)), eps),
             expect=ShapeError),
        Case(op, "bad-dtype", lambda r: (np.ones((B, S, D), np.int64), _norm_weight(r, D), None, eps),
             expect=DTypeError),
    ]
    return c + ln


_EXTREMES = np.array([0.0, -0.0, 1e-30, -1e-30, 20.0, -20.0, 88.0, -88.0, 88.8, -88.8, 100.0, -100.0,
                      1e3, -1e3, 3e4, -3e4, 1e38, -1e38], F32)


@cases_for("silu", "gelu")
def _activation_cases(s: KitSizes) -> list[Case]:
    B, S, M, H, d = s.batch, s.seq, s.mlp, s.heads, s.head_dim

    def large(r: np.random.Generator, limit: float = np.inf) -> np.ndarray:
        x = _randn(r, (B, S, M), 1e4)
        extremes = _EXTREMES[np.abs(_EXTREMES) <= limit]
        flat = x.reshape(-1)
        flat[:extremes.size] = extremes
        return x

    def specials(r: np.random.Generator) -> np.ndarray:
        return _with_specials(_randn(r, (B, S, M)), {(0, 0, 0): np.nan, (0, 0, 1): np.inf,
                                                     (0, 0, 2): -np.inf, (B - 1, S - 1, M - 1): np.nan})

    out = []
    op = "silu"
    c = [
        Case(op, "mlp", lambda r: (_randn(r, (B, S, M), 3.0),), no_warnings=True),
        Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, M), 3.0),)),
        Case(op, "4d", lambda r: (_randn(r, (B, H, S, d), 3.0),)),
        Case(op, "float16", lambda r: (_randn(r, (B, S, M), 3.0, F16),)),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, S, M), (2, 0, 1), 3.0),)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, 0, M)),)),
        Case(op, "nan-inf", lambda r: (specials(r),)),
        Case(op, "large", lambda r: (large(r),), no_warnings=True),
    ]
    c.append(dataclasses.replace(c[0], name="native", native=True))
    c += [
        Case(op, "bad-dtype", lambda r: (np.arange(12, dtype=np.int32).reshape(3, 4),), expect=DTypeError),
        Case(op, "bad-type", lambda r: ([1.0, 2.0],), expect=DTypeError),
    ]
    out += c
    op = "gelu"
    g = []
    for approx in ("none", "tanh"):
        tag = "erf" if approx == "none" else "tanh"
        g += [
            Case(op, f"mlp-{tag}", lambda r, a=approx: (_randn(r, (B, S, M), 3.0), a), no_warnings=True),
            Case(op, f"float16-{tag}", lambda r, a=approx: (_randn(r, (B, S, M), 3.0, F16), a)),
            Case(op, f"nan-inf-{tag}", lambda r, a=approx: (specials(r), a)),
            # |x| <= 1e12: beyond, x**3 in the tanh form overflows float32 in any implementation
            Case(op, f"large-{tag}", lambda r, a=approx: (large(r, 1e12), a), no_warnings=True),
        ]
    g += [
        Case(op, "decode-S1-tanh", lambda r: (_randn(r, (1, 1, M), 3.0), "tanh")),
        Case(op, "noncontig-x-erf", lambda r: (_noncontig(r, (B, S, M), (2, 0, 1), 3.0), "none")),
        Case(op, "zero-S", lambda r: (_randn(r, (B, 0, M)), "tanh")),
    ]
    g.append(dataclasses.replace(g[0], name="native", native=True))
    g.append(Case(op, "bad-approximate", lambda r: (_randn(r, (B, S, M)), "fast"), expect=ArgumentError))
    return out + g


@cases_for("add", "mul")
def _binary_cases(s: KitSizes) -> list[Case]:
    B, S, D = s.batch, s.seq, s.hidden
    out = []
    for op in ("add", "mul"):
        def specials(r: np.random.Generator) -> tuple:
            a = _with_specials(_randn(r, (B, S, D)), {(0, 0, 0): np.nan, (0, 0, 1): np.inf,
                                                      (0, 0, 2): -np.inf, (0, 0, 3): np.inf})
            b = _with_specials(_randn(r, (B, S, D)), {(0, 0, 1): -np.inf, (0, 0, 3): 0.0,
                                                      (B - 1, S - 1, D - 1): np.nan})
            return a, b
        c = [
            Case(op, "same-shape", lambda r: (_randn(r, (B, S, D)), _randn(r, (B, S, D))), no_warnings=True),
            Case(op, "broadcast-row", lambda r: (_randn(r, (B, S, D)), _randn(r, (D,)))),
            Case(op, "broadcast-both", lambda r: (_randn(r, (B, 1, D)), _randn(r, (S, D)))),
            Case(op, "broadcast-scalar", lambda r: (_randn(r, (B, S, D)), _randn(r, (1,)))),
            Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, D)), _randn(r, (1, 1, D)))),
            Case(op, "float16-mixed", lambda r: (_randn(r, (B, S, D), dtype=F16), _randn(r, (B, S, D)))),
            Case(op, "noncontig", lambda r: (_noncontig(r, (B, S, D), (2, 1, 0)), _randn(r, (B, S, D)))),
            Case(op, "zero-S", lambda r: (_randn(r, (B, 0, D)), _randn(r, (D,)))),
            Case(op, "nan-inf", specials),
            Case(op, "large", lambda r: (_randn(r, (B, S, D), 1e18), _randn(r, (B, S, D), 1e18)),
                 no_warnings=True),
        ]
        c.append(dataclasses.replace(c[0], name="native", native=True))
        c += [
            Case(op, "bad-broadcast", lambda r: (_randn(r, (B, S, D)), _randn(r, (D + 1,))), expect=ShapeError),
            Case(op, "bad-dtype", lambda r: (_randn(r, (B, S, D)), np.ones((D,), np.int32)), expect=DTypeError),
        ]
        out += c
    return out


@cases_for("apply_rope_positions", "apply_rope_partial")
def _rope_cases(s: KitSizes) -> list[Case]:
    B, S, H, d, K = s.batch, s.seq, s.heads, s.head_dim, s.kv_len
    base = 10000.0

    def ar(lo: int, n: int, dtype: Any = np.int64) -> np.ndarray:
        return np.arange(lo, lo + n, dtype=dtype)

    def scattered(r: np.random.Generator, n: int, high: int = 1024) -> np.ndarray:
        return r.choice(high, size=n, replace=False).astype(np.int64)

    def large_positions(r: np.random.Generator, n: int) -> np.ndarray:
        p = r.choice(8192, size=n, replace=False).astype(np.int64)
        p[0] = 8191
        return p

    op = "apply_rope_positions"
    c = [
        Case(op, "prefill", lambda r: (_randn(r, (B, H, S, d)), ar(0, S), base), no_warnings=True),
        Case(op, "decode-S1", lambda r: (_randn(r, (B, H, 1, d)), ar(K, 1), base)),
        Case(op, "kv-offset", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), base)),
        Case(op, "noncontig-positions", lambda r: (_randn(r, (B, H, S, d)), scattered(r, S), base)),
        Case(op, "large-positions", lambda r: (_randn(r, (B, H, S, d)), large_positions(r, S), base)),
        Case(op, "base-500000", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), 500000.0)),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, H, S, d), (0, 2, 1, 3)), ar(K, S), base)),
        Case(op, "float16", lambda r: (_randn(r, (B, H, S, d), dtype=F16), ar(K, S), base)),
        Case(op, "int32-positions", lambda r: (_randn(r, (B, H, S, d)), ar(K, S, np.int32), base)),
        Case(op, "batch-positions", lambda r: (_randn(r, (B, H, S, d)), left_padded_positions(B, S, K), base)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, H, 0, d)), ar(0, 0), base)),
        Case(op, "nan", lambda r: (_with_specials(_randn(r, (B, H, S, d)), {(0, 1, S - 1, 3): np.nan}),
                                   ar(K, S), base)),
    ]
    c.append(dataclasses.replace(c[0], name="native", native=True))
    c += [
        Case(op, "bad-odd-D", lambda r: (_randn(r, (B, H, S, d - 1)), ar(0, S), base), expect=ShapeError),
        Case(op, "bad-positions-dtype", lambda r: (_randn(r, (B, H, S, d)), ar(0, S).astype(F32), base),
             expect=DTypeError),
        Case(op, "bad-positions-length", lambda r: (_randn(r, (B, H, S, d)), ar(0, S + 1), base),
             expect=ShapeError),
    ]
    op = "apply_rope_partial"
    half = d // 2
    p = [
        Case(op, "half", lambda r: (_randn(r, (B, H, S, d)), ar(0, S), base, half), no_warnings=True),
        Case(op, "full", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), base, d)),
        Case(op, "min-2", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), base, 2)),
        Case(op, "phi-80-32", lambda r: (_randn(r, (B, 4, S, 80)), ar(K, S), base, 32)),
        Case(op, "decode-S1", lambda r: (_randn(r, (B, H, 1, d)), ar(K, 1), base, half)),
        Case(op, "kv-offset", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), base, half)),
        Case(op, "batch-positions", lambda r: (_randn(r, (B, H, S, d)), left_padded_positions(B, S, K), base,
                                               half)),
        Case(op, "noncontig-positions", lambda r: (_randn(r, (B, H, S, d)), scattered(r, S), base, half)),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, H, S, d), (0, 2, 1, 3)), ar(K, S), base, half)),
        Case(op, "float16", lambda r: (_randn(r, (B, H, S, d), dtype=F16), ar(K, S), base, half)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, H, 0, d)), ar(0, 0), base, half)),
        Case(op, "nan", lambda r: (_with_specials(_randn(r, (B, H, S, d)), {(0, 1, S - 1, 3): np.nan,
                                                                             (0, 0, 0, d - 1): np.nan}),
                                   ar(K, S), base, half)),
    ]
    p.append(dataclasses.replace(p[0], name="native", native=True))
    p += [
        Case(op, "bad-odd-rotary", lambda r: (_randn(r, (B, H, S, d)), ar(0, S), base, half - 1),
             expect=ShapeError),
        Case(op, "bad-rotary-too-large", lambda r: (_randn(r, (B, H, S, d)), ar(0, S), base, d + 2),
             expect=ShapeError),
        Case(op, "bad-rotary-type", lambda r: (_randn(r, (B, H, S, d)), ar(0, S), base, float(half)),
             expect=DTypeError),
    ]
    return c + p


def left_padded_positions(b: int, s: int, offset: int = 0) -> np.ndarray:
    """(B, S) positions of a left-padded batch as Hugging Face builds them (``cumsum(mask) - 1``, padding
    set to 1): batch row i has ``i`` padding tokens (capped at S - 1), then its positions from ``offset``."""
    pos = np.ones((b, s), np.int64)
    for i in range(b):
        pad = min(i, s - 1)
        pos[i, pad:] = np.arange(offset, offset + s - pad)
    return pos


def _inv_freq(config: dict) -> tuple[np.ndarray, float]:
    from ..rope import rope_parameters
    p = rope_parameters(config)
    return np.array(p.inv_freq), p.attention_scaling


@cases_for("apply_rope")
def _apply_rope_cases(s: KitSizes) -> list[Case]:
    B, S, H, d, K = s.batch, s.seq, s.heads, s.head_dim, s.kv_len
    op = "apply_rope"
    common = {"hidden_size": H * d, "num_attention_heads": H, "max_position_embeddings": 131072}
    llama3 = {**common, "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}
    yarn = {**common, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}}
    inv_l3, _ = _inv_freq(llama3)
    inv_yarn, yarn_scaling = _inv_freq(yarn)
    quarter = (10000.0 ** (-np.arange(0, d // 2, 2) / (d // 2))).astype(F32)     # R = D/2 (partial)

    def ar(lo: int, n: int) -> np.ndarray:
        return np.arange(lo, lo + n, dtype=np.int64)

    c = [
        Case(op, "llama3", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), inv_l3, 1.0), no_warnings=True),
        Case(op, "yarn-scaling", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), inv_yarn, yarn_scaling)),
        Case(op, "partial-R", lambda r: (_randn(r, (B, H, S, d)), ar(K, S), quarter, 1.0)),
        Case(op, "batch-positions", lambda r: (_randn(r, (B, H, S, d)), left_padded_positions(B, S, K), inv_l3,
                                               1.0)),
        Case(op, "decode-S1", lambda r: (_randn(r, (B, H, 1, d)), ar(K, 1), inv_l3, 1.0)),
        Case(op, "long-positions", lambda r: (_randn(r, (B, H, S, d)), ar(100000, S), inv_l3, 1.0)),
        Case(op, "noncontig-x", lambda r: (_noncontig(r, (B, H, S, d), (0, 2, 1, 3)), ar(K, S), inv_l3, 1.0)),
        Case(op, "float16", lambda r: (_randn(r, (B, H, S, d), dtype=F16), ar(K, S), inv_l3, 1.0)),
        Case(op, "zero-S", lambda r: (_randn(r, (B, H, 0, d)), ar(0, 0), inv_l3, 1.0)),
        Case(op, "nan", lambda r: (_with_specials(_randn(r, (B, H, S, d)), {(0, 1, S - 1, 3): np.nan}), ar(K, S),
                                   inv_l3, 1.0)),
    ]
    c.append(dataclasses.replace(c[1], name="native", native=True))
    c += [
        Case(op, "bad-inv-freq-too-long", lambda r: (_randn(r, (B, H, S, d)), ar(0, S),
                                                     np.ones(d // 2 + 1, F32), 1.0), expect=ShapeError),
        Case(op, "bad-inv-freq-float64", lambda r: (_randn(r, (B, H, S, d)), ar(0, S),
                                                    inv_l3.astype(np.float64), 1.0), expect=DTypeError),
        Case(op, "bad-scaling", lambda r: (_randn(r, (B, H, S, d)), ar(0, S), inv_l3, 0.0), expect=ArgumentError),
        Case(op, "bad-positions-shape", lambda r: (_randn(r, (B, H, S, d)), np.zeros((B + 1, S), np.int64),
                                                   inv_l3, 1.0), expect=ShapeError),
    ]
    return c


@cases_for("gqa_attention")
def _attention_cases(s: KitSizes) -> list[Case]:
    B, S, H, KV, d, K = s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, s.kv_len
    op = "gqa_attention"

    def qkv(r: np.random.Generator, b: int, h: int, kv: int, sq: int, sk: int, dtype: Any = F32,
            qscale: float = 1.0) -> tuple:
        return (_randn(r, (b, h, sq, d), qscale, dtype), _randn(r, (b, kv, sk, d), 1.0, dtype),
                _randn(r, (b, kv, sk, d), 1.0, dtype))

    def noncontig(r: np.random.Generator) -> tuple:
        perm = (0, 2, 1, 3)     # (B, S, heads, d) as an engine's projections produce it, transposed
        return (_noncontig(r, (B, H, S, d), perm), _noncontig(r, (B, KV, K + S, d), perm),
                _noncontig(r, (B, KV, K + S, d), perm))

    def nan_query(r: np.random.Generator) -> tuple:
        q, k, v = qkv(r, B, H, KV, S, K + S)
        return _with_specials(q, {(0, 1, S - 1, 4): np.nan}), k, v

    c = [
        Case(op, "prefill-gqa", lambda r: (*qkv(r, B, H, KV, S, S), KV, True), no_warnings=True),
        Case(op, "decode-S1", lambda r: (*qkv(r, B, H, KV, 1, K + 1), KV, True)),
        Case(op, "kv-offset", lambda r: (*qkv(r, B, H, KV, S, K + S), KV, True)),
        Case(op, "mha", lambda r: (*qkv(r, B, H, H, S, K + S), H, True)),
        Case(op, "mqa", lambda r: (*qkv(r, B, H, 1, S, K + S), 1, True)),
        Case(op, "non-causal", lambda r: (*qkv(r, B, H, KV, S, K), KV, False)),
        Case(op, "float16", lambda r: (*qkv(r, B, H, KV, S, K + S, F16), KV, True)),
        Case(op, "noncontig", lambda r: (*noncontig(r), KV, True)),
        Case(op, "zero-Sq", lambda r: (*qkv(r, B, H, KV, 0, K), KV, True)),
        Case(op, "zero-batch", lambda r: (*qkv(r, 0, H, KV, S, S), KV, True)),
        Case(op, "nan-query", lambda r: (*nan_query(r), KV, True)),
        Case(op, "large-scores", lambda r: (*qkv(r, B, H, KV, S, K + S, qscale=30.0), KV, True),
             no_warnings=True),
    ]
    c.append(dataclasses.replace(c[0], name="native", native=True))

    def padding_mask(b: int, sk: int, pad_of_row: Any = None) -> np.ndarray:
        """(B, Sk) bool: batch row i has ``i`` padding keys at the front (left padding)."""
        m = np.ones((b, sk), bool)
        for i in range(b):
            m[i, :min(i if pad_of_row is None else pad_of_row(i), sk)] = False
        return m

    W = max(2, S // 2)
    gemma_scale = float(2.0 * d) ** -0.5     # query_pre_attn_scalar = 2d: a scale other than 1/sqrt(d)
    c += [                                   # contract v2: scale, softcap, sliding window, padding mask
        Case(op, "scale", lambda r: (*qkv(r, B, H, KV, S, K + S), KV, True, gemma_scale)),
        Case(op, "softcap", lambda r: (*qkv(r, B, H, KV, S, K + S, qscale=30.0), KV, True, None, None, 5.0),
             no_warnings=True),
        Case(op, "sliding-window-kv-offset", lambda r: (*qkv(r, B, H, KV, S, K + S), KV, True, None, W)),
        Case(op, "sliding-window-prefill", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, W)),
        Case(op, "sliding-window-1", lambda r: (*qkv(r, B, H, KV, S, K + S), KV, True, None, 1)),
        Case(op, "sliding-window-decode", lambda r: (*qkv(r, B, H, KV, 1, K + 1), KV, True, None, W)),
        Case(op, "sliding-window-larger-than-sk", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, K + 10 * S)),
        Case(op, "kv-mask-left-padding", lambda r: (*qkv(r, B, H, KV, S, K + S), KV, True, None, None, None,
                                                    padding_mask(B, K + S))),
        Case(op, "kv-mask-fully-masked-rows", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, None, None,
                                                         padding_mask(B, S, lambda i: i * 3)), no_warnings=True),
        Case(op, "kv-mask-non-causal", lambda r: (*qkv(r, B, H, KV, S, S), KV, False, None, None, None,
                                                  padding_mask(B, S))),
        Case(op, "kv-mask-window-leaves-nothing", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, 2, None,
                                                             padding_mask(B, S, lambda i: S - 1)),
             no_warnings=True),
        Case(op, "gemma2-all", lambda r: (*qkv(r, B, H, KV, S, K + S, qscale=10.0), KV, True, gemma_scale, W, 50.0,
                                          padding_mask(B, K + S))),
    ]
    c.append(dataclasses.replace(c[-1], name="gemma2-native", native=True))
    c += [
        Case(op, "bad-window-0", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, 0), expect=ArgumentError),
        Case(op, "bad-window-non-causal", lambda r: (*qkv(r, B, H, KV, S, S), KV, False, None, W),
             expect=ArgumentError),
        Case(op, "bad-softcap", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, None, -1.0), expect=ArgumentError),
        Case(op, "bad-scale-nan", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, float("nan")), expect=ArgumentError),
        Case(op, "bad-mask-shape", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, None, None,
                                              np.ones((B, S + 1), bool)), expect=ShapeError),
        Case(op, "bad-mask-dtype", lambda r: (*qkv(r, B, H, KV, S, S), KV, True, None, None, None,
                                              np.ones((B, S), np.float32)), expect=DTypeError),
        Case(op, "bad-batch", lambda r: (_randn(r, (2, H, S, d)), _randn(r, (1, KV, S, d)), _randn(r, (1, KV, S, d)),
                                         KV, True), expect=ShapeError),
    ]
    c += [
        Case(op, "bad-heads", lambda r: (*qkv(r, B, H, 3, S, S), 3, True), expect=ShapeError),
        Case(op, "bad-n-kv-heads", lambda r: (*qkv(r, B, H, KV, S, S), KV * 2, True), expect=ShapeError),
        Case(op, "bad-causal-Sq-gt-Sk", lambda r: (*qkv(r, B, H, KV, S + 1, S), KV, True), expect=ShapeError),
    ]
    return c


@cases_for("logits_from_hidden", "all_logits_from_hidden")
def _logits_cases(s: KitSizes) -> list[Case]:
    B, S, D, V = s.batch, s.seq, s.hidden, s.vocab
    out = []
    for op in ("logits_from_hidden", "all_logits_from_hidden"):
        nan_at = {(0, 0, 3): np.nan} if op == "logits_from_hidden" else {(0, 1, 3): np.nan}
        nan_at[(B - 1, S - 1, 7)] = np.nan       # the last position of the last batch row: its logits
        c = [
            Case(op, "prefill", lambda r: (_randn(r, (B, S, D)), _weight(r, V, D)), no_warnings=True),
            Case(op, "decode-S1", lambda r: (_randn(r, (1, 1, D)), _weight(r, V, D))),
            Case(op, "float16", lambda r: (_randn(r, (B, S, D), dtype=F16), _weight(r, V, D, F16))),
            Case(op, "noncontig-hidden", lambda r: (_noncontig(r, (B, S, D), (1, 0, 2)), _weight(r, V, D))),
            Case(op, "zero-batch", lambda r: (_randn(r, (0, S, D)), _weight(r, V, D))),
            Case(op, "nan", lambda r, n=nan_at: (_with_specials(_randn(r, (B, S, D)), n), _weight(r, V, D))),
        ]
        c.append(Case(op, "softcap", lambda r: (_randn(r, (B, S, D), 10.0), _weight(r, V, D), 30.0)))
        if op == "all_logits_from_hidden":
            c.append(Case(op, "zero-S", lambda r: (_randn(r, (B, 0, D)), _weight(r, V, D))))
        c.append(dataclasses.replace(c[0], name="native", native=True))
        if op == "logits_from_hidden":
            c.append(Case(op, "bad-S0", lambda r: (_randn(r, (B, 0, D)), _weight(r, V, D)), expect=ShapeError))
        c += [
            Case(op, "bad-hidden-size", lambda r: (_randn(r, (B, S, D)), _weight(r, V, D + 1)), expect=ShapeError),
            Case(op, "bad-dtype", lambda r: (np.ones((B, S, D), np.int16), _weight(r, V, D)), expect=DTypeError),
            Case(op, "bad-softcap", lambda r: (_randn(r, (B, S, D)), _weight(r, V, D), 0.0), expect=ArgumentError),
        ]
        out += c
    return out


@cases_for("embedding")
def _embedding_cases(s: KitSizes) -> list[Case]:
    B, S, D, V = s.batch, s.seq, s.hidden, s.vocab
    op = "embedding"

    def ids(r: np.random.Generator, b: int, n: int, dtype: Any = np.int64) -> np.ndarray:
        out = r.integers(0, V, size=(b, n)).astype(dtype)
        if out.size:
            out.flat[0], out.flat[-1] = 0, V - 1           # both ends of the table
        return out

    c = [
        Case(op, "prefill", lambda r: (ids(r, B, S), _randn(r, (V, D)))),
        Case(op, "decode-S1", lambda r: (ids(r, B, 1), _randn(r, (V, D)))),
        Case(op, "float16-table", lambda r: (ids(r, B, S), _randn(r, (V, D), dtype=F16))),
        Case(op, "int32-ids", lambda r: (ids(r, B, S, np.int32), _randn(r, (V, D)))),
        Case(op, "repeated-ids", lambda r: (np.full((B, S), 7, np.int64), _randn(r, (V, D)))),
        Case(op, "noncontig-table", lambda r: (ids(r, B, S), _randn(r, (D, V)).T)),
        Case(op, "nan-table", lambda r: (np.full((B, S), 5, np.int64), _with_specials(_randn(r, (V, D)),
                                                                                    {(5, 1): np.nan, (5, 2): np.inf}))),
        Case(op, "zero-S", lambda r: (ids(r, B, 0), _randn(r, (V, D)))),
    ]
    c.append(dataclasses.replace(c[0], name="native", native=True))
    c += [
        Case(op, "bad-id-too-large", lambda r: (np.full((B, S), V, np.int64), _randn(r, (V, D))),
             expect=ArgumentError),
        Case(op, "bad-negative-id", lambda r: (np.full((B, S), -1, np.int64), _randn(r, (V, D))),
             expect=ArgumentError),
        Case(op, "bad-ids-dtype", lambda r: (np.zeros((B, S), np.float32), _randn(r, (V, D))), expect=DTypeError),
        Case(op, "bad-ids-rank", lambda r: (np.zeros((B * S,), np.int64), _randn(r, (V, D))), expect=ShapeError),
    ]
    return c


def bfloat16() -> Any:
    """NumPy's bfloat16 dtype, from ``ml_dtypes`` (the package JAX and TensorFlow use); None without it."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


#: What each ``Case.needs`` is for and how to get it.
NEEDS = {"ml_dtypes": "bfloat16 input needs ml_dtypes (NumPy has no bfloat16 of its own): pip install ml_dtypes"}


def missing_need(case: Case) -> str | None:
    """Why ``case`` cannot be built here (what to install), or None when it can."""
    if case.needs == "ml_dtypes" and bfloat16() is None:
        return NEEDS["ml_dtypes"]
    return None


def _as_bfloat16(build: Callable[[np.random.Generator], tuple]) -> Callable[[np.random.Generator], tuple]:
    def bf16_build(rng: np.random.Generator) -> tuple:
        bf16 = bfloat16()
        return tuple(a.astype(F32).astype(bf16) if isinstance(a, np.ndarray) and a.dtype == F16 else a
                     for a in build(rng))
    return bf16_build


def _with_bfloat16(cases: list[Case]) -> list[Case]:
    """Each float16 value case followed by its bfloat16 twin (the same arrays, in bfloat16): a backend must
    compute bfloat16 input in float32 and return float32 (a bfloat16 result is a wrong result)."""
    out = []
    for case in cases:
        out.append(case)
        if "float16" in case.name and case.expect is None:
            out.append(dataclasses.replace(case, name=case.name.replace("float16", "bfloat16"),
                                           build=_as_bfloat16(case.build), needs="ml_dtypes"))
    return out


def build_cases(size: str | KitSizes = "small", ops: Any = None) -> list[Case]:
    """Every case, in the order of the contract's ops (optionally only ``ops``).

    The list is derived from :data:`sapient_core.hookspecs.OPS`: every declared op must have a case
    builder (:func:`cases_for`), and an op without one is an error, not a silent gap.
    """
    s = kit_sizes(size)
    wanted = list(OPS) if ops is None else list(dict.fromkeys(ops))
    unknown = set(wanted) - set(OPS)
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(sorted(unknown))}; the ops are {', '.join(OPS)}")
    missing = [op for op in wanted if op not in CASE_BUILDERS]
    if missing:
        raise LookupError(f"no conformance cases for op(s) {', '.join(missing)}: add a builder decorated with "
                          f"@cases_for({', '.join(map(repr, missing))}) to sapient_core/testing/cases.py")
    built: dict[Callable[[KitSizes], list[Case]], list[Case]] = {}
    cases = []
    for op in (op for op in OPS if op in wanted):
        builder = CASE_BUILDERS[op]
        if builder not in built:
            built[builder] = _with_bfloat16(builder(s))
        cases += [c for c in built[builder] if c.op == op]
    return cases
