"""Testing tools for sapient_core backends: the conformance kit, the benchmark, float64 oracles.

A backend's own test suite runs the conformance kit with one import::

    from sapient_core.testing import conformance_tests

    test_conformance = conformance_tests("example")       # one pytest test per case

or with one option, ``pytest --sapient-backend example`` (the pytest plugin of sapient-core collects
the kit's tests).  Elsewhere, :func:`run_conformance` returns a :class:`Report`, and
``sapient-backends check`` / ``sapient-backends bench`` run the kit and the benchmark from the shell.

Modules: :mod:`.cases` (what is run), :mod:`.tolerances` (the published tolerances), :mod:`.conformance`
(the runner), :mod:`.bench` (timings against the CPU reference), :mod:`.oracle` (float64 formulas),
:mod:`.models` (today's decoders composed from the ops: a worked engine).  The names below are imported on first use, so
loading the pytest plugin costs nothing until the kit runs.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "run_conformance", "conformance_tests", "check_case", "run_case", "Report", "CaseResult",
    "PASS", "FAIL", "DECLINED", "NOT_IMPLEMENTED", "ROUTED", "NOT_RUN", "nmse", "max_abs_err",
    "Case", "KitSizes", "KIT_SIZES", "build_cases",
    "Tolerance", "TOLERANCES", "CASE_TOLERANCES", "tolerance_for", "tolerance_table",
    "run_bench", "BenchReport", "BenchSize", "BENCH_SIZES", "parse_sizes",
]

_HOME = {
    **dict.fromkeys(["run_conformance", "conformance_tests", "check_case", "run_case", "Report", "CaseResult",
                     "PASS", "FAIL", "DECLINED", "NOT_IMPLEMENTED", "ROUTED", "NOT_RUN", "nmse", "max_abs_err"],
                    "conformance"),
    **dict.fromkeys(["Case", "KitSizes", "KIT_SIZES", "build_cases"], "cases"),
    **dict.fromkeys(["Tolerance", "TOLERANCES", "CASE_TOLERANCES", "tolerance_for", "tolerance_table"],
                    "tolerances"),
    **dict.fromkeys(["run_bench", "BenchReport", "BenchSize", "BENCH_SIZES", "parse_sizes"], "bench"),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'sapient_core.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
