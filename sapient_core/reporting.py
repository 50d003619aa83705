"""Plain-text formatting shared by the CLI, the conformance kit, the benchmarks and the reports.

No dependency and no colours: tables padded to their widest cell, numbers in scientific notation,
byte counts in binary units.  Public, so a plugin's or an engine's own tools print the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["format_table", "fmt_sci", "fmt_bytes", "fmt_int", "GiB"]

GiB = 1024 ** 3


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str], *, right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; column indices in ``right`` are right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def fmt_sci(x: float | None) -> str:
    """``1.2e-09``; ``-`` for None."""
    return "-" if x is None else f"{x:.1e}"


def fmt_int(n: int) -> str:
    """``str(n)`` for an int of up to 30 digits; beyond, ``~1.23e+400`` (computed without a float, so any int,
    however large, formats: neither float's range nor Python's int-to-str digit limit applies)."""
    n = int(n)
    if -10 ** 30 < n < 10 ** 30:
        return str(n)
    sign, n = ("-" if n < 0 else ""), abs(n)
    exp = n.bit_length() * 30103 // 100000          # log10(2) = 0.30103: within one of floor(log10(n))
    while 10 ** exp > n:
        exp -= 1
    while 10 ** (exp + 1) <= n:
        exp += 1
    lead = n // 10 ** (exp - 2)                     # the three leading digits
    return f"~{sign}{lead // 100}.{lead % 100:02d}e+{exp}"


def fmt_bytes(n: int) -> str:
    """``1.50 GiB``, ``12.0 MiB`` or ``512 B``; for any int, however large (``~9.31e+390 GiB``)."""
    sign = "-" if n < 0 else ""
    n = abs(int(n))
    if n >= 1024 ** 5:                      # no float conversion: model_bytes may exceed float's range
        return f"{sign}{fmt_int(n // GiB)} GiB"
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    if n >= 1024 ** 2:
        return f"{sign}{n / 1024 ** 2:.1f} MiB"
    return f"{sign}{n} B"
