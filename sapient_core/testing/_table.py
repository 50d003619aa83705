"""Plain-text tables for the kit's and the benchmark's reports (no dependency, no colours)."""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["format_table", "fmt_sci"]


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
