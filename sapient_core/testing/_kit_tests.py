"""The conformance kit as pytest tests, collected when pytest runs with ``--sapient-backend NAME``.

Not named ``test_*.py`` on purpose: pytest collects it only when the option adds it to the session.
"""

from __future__ import annotations

from sapient_core.testing.cases import build_cases
from sapient_core.testing.conformance import check_case


def pytest_generate_tests(metafunc):
    if "sapient_kit_case" not in metafunc.fixturenames:
        return
    names = metafunc.config.getoption("sapient_backend") or []
    size = metafunc.config.getoption("sapient_size")
    params, ids = [], []
    for name in names:
        for case in build_cases(size):
            params.append((name, case))
            ids.append(f"{name}-{case.id}")
    metafunc.parametrize("sapient_kit_case", params, ids=ids)


def test_conformance(sapient_kit_case):
    name, case = sapient_kit_case
    check_case(name, case)
