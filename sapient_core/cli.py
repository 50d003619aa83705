"""``sapient-backends``: list the installed backends and explain how a kind resolves.

    sapient-backends [-v] [--json] list
    sapient-backends explain KIND [--model-bytes N] [--json]
    sapient-backends check [NAME ...] [--size small|llm] [--ops OPS] [--failures-only] [--json]
    sapient-backends bench [NAME ...] [--sizes decode,prefill|...] [--ops OPS] [--min-time S] [--json]
    sapient-backends schema [capabilities|memory]

``-v`` (log every decision) and ``--json`` go before or after the subcommand.  Warnings (a broken
plugin, a bad switch value) are printed as one line each: ``sapient-backends: warning: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Sequence

from .reporting import fmt_bytes, format_table

__all__ = ["main", "build_parser"]


def _gib(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1024 ** 3:.1f} GiB" if n < 1024 ** 5 else fmt_bytes(n)     # no float beyond (10**400 fits)


def cmd_list(args: argparse.Namespace) -> int:
    import sapient_core
    infos = sapient_core.list_backends()
    if args.json:
        print(json.dumps([i.model_dump(mode="json") for i in infos], indent=2))
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
    print(format_table(rows, ["name", "status", "device", "version", "priority", "threads", "memory",
                              "distribution"]))
    notes = [(i.name, i.status, i.reason) for i in infos if i.reason]
    notes += [(i.name, i.status, f"note: {note}") for i in infos for note in i.notes]
    if notes:
        print()
        for name, status, reason in notes:
            print(f"{name} ({status}): {reason}")
    for i in infos:
        caps = i.capabilities
        if caps is not None:
            for device, why in caps.unavailable_devices.items():
                print(f"{i.name} cannot use {device!r} here: {why}")
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
        print(json.dumps(exp.model_dump(mode="json"), indent=2))
    else:
        print(exp)
    return 0 if exp.chosen else 1


class _Progress:
    """A one-line progress display on stderr, shown only when stderr is a terminal."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def __call__(self, i: int, n: int, label: str) -> None:
        if self.enabled:
            self.stream.write(f"\r\x1b[K[{i + 1}/{n}] {label}")
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _ops_arg(text: str | None) -> list[str] | None:
    if not text:
        return None
    from .hookspecs import OPS
    ops = [o.strip() for o in text.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown op(s) {', '.join(unknown)}; the ops are {', '.join(OPS)}")
    return ops


def cmd_check(args: argparse.Namespace) -> int:
    import sapient_core
    from .testing.conformance import TABLE_HEADER, run_conformance
    from .testing.tolerances import CASE_TOLERANCES, TOLERANCES

    infos = sapient_core.list_backends()
    if args.names:
        targets, not_checked = list(dict.fromkeys(args.names)), []
    else:
        targets = [i.name for i in infos if i.status == "available"]
        not_checked = [i for i in infos if i.status != "available"]
    progress = _Progress()
    reports, errors = [], []
    for name in targets:
        try:
            reports.append(run_conformance(name, size=args.size, ops=args.ops,
                                           progress=lambda i, n, case, name=name: progress(i, n, f"{name} {case.id}")))
        except sapient_core.BackendNotFoundError as exc:    # unknown or unavailable, when named
            errors.append((name, str(exc)))
    progress.clear()
    broken = [i for i in not_checked if i.status == "broken"]
    ok = bool(reports) and all(r.ok for r in reports) and not errors and not broken
    if args.json:
        print(json.dumps({
            "ok": ok, "size": args.size,
            "reports": [r.as_dict() for r in reports],
            "not_checked": [{"name": i.name, "status": i.status, "reason": i.reason} for i in not_checked],
            "errors": [{"name": n, "error": e} for n, e in errors],
            "tolerances": {op: t.as_dict() for op, t in TOLERANCES.items()},
            "case_tolerances": {f"{op}:{case}": t.as_dict() for (op, case), t in CASE_TOLERANCES.items()},
        }, indent=2))
        return 0 if ok else 1
    rows = [row for r in reports for row in r.rows(failures_only=args.failures_only)]
    if rows:
        print(format_table(rows, TABLE_HEADER, right=(4, 5, 6, 7)))
        print()
    for r in reports:
        print(r.summary())
    for i in not_checked:
        what = "FAILED - broken" if i.status == "broken" else f"not checked ({i.status})"
        print(f"{i.name}: {what}: {i.reason}")
    for name, err in errors:
        print(f"{name}: FAILED - {err}")
    print("NMSE and max abs err: against the float64 oracle; NMSE vs cpu: against the CPU reference. "
          "Tolerances and their reasons: CONTRIBUTING.md, or sapient_core.testing.tolerance_table().")
    print("result: OK" if ok else "result: FAILED")
    return 0 if ok else 1


def cmd_bench(args: argparse.Namespace) -> int:
    import sapient_core
    from .testing.bench import run_bench

    progress = _Progress()
    try:
        report = run_bench(args.names or None, args.sizes, ops=args.ops, min_time=args.min_time, progress=progress)
    except sapient_core.BackendNotFoundError as exc:
        progress.clear()
        print(f"sapient-backends bench: {exc}", file=sys.stderr)
        return 1
    progress.clear()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.table())
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from .models import CapabilityReport, MemoryInfo
    model = {"capabilities": CapabilityReport, "memory": MemoryInfo}[args.report]
    print(json.dumps(model.model_json_schema(), indent=2))
    return 0


def _sizes_arg(text: str) -> Any:
    from .testing.bench import parse_sizes
    try:
        return parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sapient-backends",
                                     description="Inspect the sapient_core backend plugins installed here.")
    verbose_help = "log every discovery and resolution decision (the sapient_core logger at DEBUG)"
    json_help = "machine-readable output"
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)
    parser.add_argument("--json", action="store_true", help=json_help)
    # The same options after the subcommand (sapient-backends list -v --json): SUPPRESS keeps a value given
    # before the subcommand when the subcommand's own is absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=json_help)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", parents=[common], help="every discovered backend, broken and unavailable ones included")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("explain", parents=[common], help="how a kind resolves, each candidate with why it was taken "
                                                         "or not")
    p.add_argument("kind", nargs="?", default=None, help="auto, cpu, a plugin name or a device name "
                                                          "(default: SAPIENT_BACKEND, else auto)")
    p.add_argument("--model-bytes", type=int, default=0, metavar="N",
                   help="the model's weight bytes, for the memory check (default 0 = unknown)")
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("check", parents=[common], help="run the conformance kit against the installed backends",
                       description="Run the conformance kit (every op, LLM-like shapes and edge cases, against "
                                   "a float64 oracle and the CPU reference, in strict mode) against every "
                                   "available backend, or the named ones. Exits 1 on any failure.")
    p.add_argument("names", nargs="*", metavar="NAME", help="backends to check (default: every available one)")
    p.add_argument("--size", choices=("small", "llm"), default="small",
                   help="case shapes: small (default, seconds) or llm (hidden 2048, 32/8 heads of 64, MLP 8192)")
    p.add_argument("--ops", type=_ops_arg, default=None, metavar="OPS", help="comma-separated ops (default: all)")
    p.add_argument("--failures-only", action="store_true", help="leave the passing cases out of the table")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("bench", parents=[common], help="per-op timings of the installed backends, against the CPU "
                                                       "reference",
                       description="Time every op on every available backend (or the named ones) and on the "
                                   "CPU reference, at decode and prefill shapes; each time is also given as a "
                                   "ratio to the CPU reference's.")
    p.add_argument("names", nargs="*", metavar="NAME", help="backends to time (default: every available one)")
    p.add_argument("--sizes", type=_sizes_arg, default="decode,prefill", metavar="LIST",
                   help="comma-separated sizes: decode, prefill (default), llm-decode, llm-prefill, or custom "
                        "key=value pairs joined by ':' (e.g. seq=32:hidden=512:mlp=1376)")
    p.add_argument("--ops", type=_ops_arg, default=None, metavar="OPS", help="comma-separated ops (default: all)")
    p.add_argument("--min-time", type=float, default=0.05, metavar="S",
                   help="seconds to repeat each measurement for (default 0.05)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("schema", parents=[common], help="the JSON schema of a plugin's capability (or memory) report",
                       description="Print the JSON schema that backend_capabilities() (or backend_memory()) "
                                   "reports are validated against, for plugin authors.")
    p.add_argument("report", nargs="?", choices=("capabilities", "memory"), default="capabilities")
    p.set_defaults(func=cmd_schema)
    return parser


def _setup_logging(verbose: bool) -> None:
    """Show the ``sapient_core`` logger's records on stderr, labelled (``-v``: the debug decisions too)."""
    import logging
    logger = logging.getLogger("sapient_core")
    if verbose:
        logger.setLevel(logging.DEBUG)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        logger.addHandler(handler)


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """A warning as the command shows it: one line, no source location (the user did not write that code)."""
    return f"sapient-backends: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    if getattr(args, "model_bytes", 0) and args.model_bytes < 0:
        parser.error("--model-bytes must be >= 0")
    previous = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        return args.func(args)
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
