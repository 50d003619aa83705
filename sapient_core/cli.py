"""``sapient-backends``: list the installed backends and explain how a kind resolves.

    sapient-backends list [--json]
    sapient-backends explain KIND [--model-bytes N] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

__all__ = ["main", "build_parser"]


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1024 ** 3:.1f} GiB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    import sapient_core
    infos = sapient_core.list_backends()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2, default=str))
        return 0
    rows = []
    for i in infos:
        mem = ""
        if i.memory is not None:
            mem = _gib(i.memory.total_bytes)
            if i.memory.total_bytes is None and i.memory.reason:
                mem += f" ({i.memory.reason})"
        rows.append([i.name, i.status, i.device or "-", i.version or "-",
                     "-" if i.priority is None else str(i.priority),
                     "-" if i.thread_safe is None else ("yes" if i.thread_safe else "no"),
                     mem or "-", i.distribution or i.source])
    print(_table(rows, ["name", "status", "device", "version", "priority", "threads", "memory", "distribution"]))
    notes = [(i.name, i.status, i.reason) for i in infos if i.reason]
    if notes:
        print()
        for name, status, reason in notes:
            print(f"{name} ({status}): {reason}")
    for i in infos:
        if i.memory is not None and i.memory.total_bytes is not None:
            print(f"{i.name} memory from {i.memory.source}"
                  + (f"; {', '.join(f'{k}={v}' for k, v in i.memory.details.items())}" if i.memory.details else ""))
    auto = sapient_core.explain("auto")
    print(f"\nauto resolves to: {auto.chosen!r}" if auto.chosen else f"\nauto: {auto.error}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    import sapient_core
    exp = sapient_core.explain(args.kind, model_bytes=args.model_bytes)
    if args.json:
        print(json.dumps(exp.as_dict(), indent=2, default=str))
    else:
        print(exp)
    return 0 if exp.chosen else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sapient-backends",
                                     description="Inspect the sapient_core backend plugins installed here.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="every discovered backend, broken and unavailable ones included")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("explain", help="how a kind resolves, each candidate with why it was taken or not")
    p.add_argument("kind", nargs="?", default=None, help="auto, cpu, a plugin name or a device name "
                                                          "(default: SAPIENT_BACKEND, else auto)")
    p.add_argument("--model-bytes", type=int, default=0, metavar="N",
                   help="the model's weight bytes, for the memory check (default 0 = unknown)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_explain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "model_bytes", 0) and args.model_bytes < 0:
        parser.error("--model-bytes must be >= 0")
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
