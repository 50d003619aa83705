"""Shared fixtures: a clean environment and untouched module-global state for every test.

- Every test starts without the ``SAPIENT_*`` variables (a developer's shell must not change results).
- The process-wide registry (``sapient_core._registry``) and the default fit policy are restored
  after every test, so a test may replace them (e.g. to run the CLI over fake plugins).
- ``fake_site``: a directory of fake installed distributions on ``sys.path`` (see
  tests/helpers/fakeplugins.py), removed again, with the modules it imported, after the test.
"""

from __future__ import annotations

import pytest

import sapient_core
from sapient_core import memory

from helpers.fakeplugins import FakeSite

SAPIENT_ENV = ("SAPIENT_BACKEND", "SAPIENT_PLUGINS", "SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "SAPIENT_STRICT",
               "SAPIENT_CROSS_CHECK")


@pytest.fixture(autouse=True)
def _clean_sapient_env(monkeypatch):
    for var in SAPIENT_ENV:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(autouse=True)
def _restore_global_state():
    registry, policy = sapient_core._registry, memory.DEFAULT_POLICY
    yield
    sapient_core._registry = registry
    memory.DEFAULT_POLICY = policy


@pytest.fixture
def fake_site(tmp_path):
    """Fake installed distributions under tmp_path/site, on sys.path for the test's duration."""
    with FakeSite(tmp_path / "site") as site:
        yield site


@pytest.fixture
def use_registry(monkeypatch):
    """Make the module-level functions (and the CLI) use the given registry for this test."""
    def use(registry):
        monkeypatch.setattr(sapient_core, "_registry", registry)
        return registry
    return use


def pytest_terminal_summary(terminalreporter):
    """The fuzz's figures (tests/test_fuzz_backends.py), when it ran."""
    import sys
    module = next((m for name, m in list(sys.modules.items()) if name.endswith("test_fuzz_backends")), None)
    figures = getattr(module, "FIGURES", None)
    if figures:
        terminalreporter.section("sapient_core fuzz (cpu vs mlx)")
        examples = getattr(module, "EXAMPLES", "?")
        terminalreporter.line(f"max_examples per op and test: {examples}")
        for key in sorted(figures):
            terminalreporter.line(f"{key}: {figures[key]}")
