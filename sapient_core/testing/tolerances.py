"""The conformance kit's tolerances: one per op (and a few per case), each with its reason.

Two error measures, as llama.cpp's ``test-backend-ops`` reports them, computed over the elements that
are finite in both the result and the float64 oracle:

- **NMSE**, the normalised mean squared error ``sum((result - oracle)**2) / sum(oracle**2)``;
- **max abs error**, ``max |result - oracle|``, checked against ``max_err * max(1, max |oracle|)`` so
  that one wrong element in a large tensor is caught even when the NMSE hides it.

The numbers are set from what a correct float32 kernel can reach (summation order, fused or fast
transcendental functions, float32 angles), with headroom, and tight enough that a kernel that is wrong
by a relative 1e-3 (NMSE 1e-6) fails every op.  The result is also compared with the CPU reference,
with ``4 * nmse`` (two results each within ``nmse`` of the oracle are within ``4 * nmse`` of each
other).  ``tolerance_table()`` renders this module as the table published in CONTRIBUTING.md.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Tolerance", "TOLERANCES", "CASE_TOLERANCES", "tolerance_for", "tolerance_table"]


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """The largest errors a result may have against the float64 oracle.

    :ivar nmse: largest normalised mean squared error.
    :ivar max_err: largest ``max |result - oracle|``, relative to ``max(1, max |oracle|)``.
    :ivar reason: why these numbers.
    """

    nmse: float
    max_err: float
    reason: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


_MATMUL = Tolerance(
    1e-9, 1e-4,
    "float32 products summed over `in` terms in any order (blocked, tree, fused multiply-add): the "
    "relative error grows like sqrt(in) * 2^-24, NMSE ~1e-11 at in=2048; TF32 or float16 "
    "accumulation (NMSE ~1e-7) fails, as the contract asks for true float32")

#: op -> tolerance against the float64 oracle.
TOLERANCES: dict[str, Tolerance] = {
    "linear_3d": _MATMUL,
    "linear_3d_bias": _MATMUL,
    "rms_norm": Tolerance(
        1e-10, 1e-5,
        "a float32 sum of squares and one division per element: a few ulp (NMSE ~1e-14); 1e-10 "
        "allows any summation order and rsqrt approximations good to 1e-6"),
    "layer_norm": Tolerance(
        1e-10, 1e-5,
        "as rms_norm, plus the mean: a few ulp when the mean is small against the spread; the "
        "large-offset case has its own tolerance"),
    "silu": Tolerance(
        1e-10, 1e-5,
        "one exp and one division: a few ulp; allows fast exp/sigmoid good to ~1e-6 relative"),
    "gelu": Tolerance(
        1e-10, 1e-5,
        "erf (or tanh) in float32: a few ulp; allows polynomial erf approximations good to ~1e-6"),
    "add": Tolerance(
        1e-12, 1e-6,
        "one correctly rounded float32 operation: NMSE <= 2^-48 ~ 3.6e-15"),
    "mul": Tolerance(
        1e-12, 1e-6,
        "one correctly rounded float32 operation: NMSE <= 2^-48 ~ 3.6e-15"),
    "apply_rope_positions": Tolerance(
        1e-8, 1e-3,
        "angles position * inv_freq may be computed in float32: at position p the angle is off by "
        "~p * 2^-24 rad (NMSE ~1e-10 at p = 1000); the kit's positions stay below 1100 except in the "
        "large-positions case"),
    "apply_rope_partial": Tolerance(
        1e-8, 1e-3,
        "as apply_rope_positions"),
    "gqa_attention": Tolerance(
        1e-9, 1e-4,
        "two float32 matmuls and a softmax (exp of max-subtracted scores, any reduction order, "
        "flash-style online softmax): ~1e-6 relative, NMSE ~1e-12"),
    "logits_from_hidden": _MATMUL,
    "all_logits_from_hidden": _MATMUL,
    "apply_rope": Tolerance(
        1e-8, 1e-3,
        "as apply_rope_positions; the frequencies are given, and cos/sin times attention_scaling round once"),
    "embedding": Tolerance(
        0.0, 0.0,
        "a copy of table rows (float16 widened to float32 exactly): any difference is a wrong row"),
}

#: (op, case) -> a tolerance that replaces the op's for that case.
CASE_TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("layer_norm", "large-offset"): Tolerance(
        1e-6, 1e-2,
        "x = 1000 + N(0, 1): a float32 mean is off by ~1000 * 2^-24 * sqrt(D), which shifts every "
        "normalised value by ~1e-3 of the spread unless the kernel corrects it (the CPU reference "
        "does, NMSE ~1e-14); a textbook E[x^2] - E[x]^2 variance (NMSE ~1e-1) still fails"),
    ("apply_rope", "long-positions"): Tolerance(
        1e-8, 1e-3,
        "positions near 100000: float32 angles (position * inv_freq rounded to 2^-24 relative) would be off "
        "by up to 6e-3 rad (NMSE ~1e-5) and fail; angles computed in float64 (or split into an exact "
        "integer part) pass, as a long-context engine needs"),
    ("apply_rope_positions", "large-positions"): Tolerance(
        1e-6, 1e-2,
        "positions up to 8192: a float32 angle is off by up to 8192 * 2^-24 = 5e-4 rad (NMSE ~1e-8); "
        "a wrong rotation convention or frequency (NMSE ~1) still fails"),
}


def tolerance_for(op: str, case: str) -> Tolerance:
    """The tolerance that applies to ``case`` of ``op``."""
    return CASE_TOLERANCES.get((op, case), TOLERANCES[op])


def _fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def tolerance_table() -> str:
    """The tolerances as a Markdown table (published in CONTRIBUTING.md, checked by a test)."""
    lines = ["| op | case | NMSE | max abs err / max(1, max abs oracle) | why |",
             "| --- | --- | --- | --- | --- |"]
    for op, tol in TOLERANCES.items():
        lines.append(f"| `{op}` | all | {_fmt(tol.nmse)} | {_fmt(tol.max_err)} | {tol.reason} |")
    for (op, case), tol in CASE_TOLERANCES.items():
        lines.append(f"| `{op}` | `{case}` | {_fmt(tol.nmse)} | {_fmt(tol.max_err)} | {tol.reason} |")
    return "\n".join(lines)
