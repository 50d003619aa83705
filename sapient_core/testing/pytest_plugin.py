"""pytest plugin of sapient_core (registered through the ``pytest11`` entry point of sapient-core).

``pytest --sapient-backend NAME`` (repeatable) adds the conformance kit's tests for the backend NAME
to the session: one test per case, ``test_conformance[NAME-op:case]``, from
:mod:`sapient_core.testing._kit_tests`.  ``--sapient-size llm`` runs them at a 7B-class layer's shapes
instead of the small default.  Without the option the plugin does nothing (and imports nothing heavy).
"""

from __future__ import annotations

from pathlib import Path

KIT_TESTS = Path(__file__).with_name("_kit_tests.py")


def pytest_addoption(parser):
    group = parser.getgroup("sapient_core")
    group.addoption("--sapient-backend", action="append", default=[], metavar="NAME",
                    help="run the sapient_core conformance kit against this backend (repeatable)")
    group.addoption("--sapient-size", default="small", choices=("small", "llm"),
                    help="shapes of the conformance kit's cases: small (default, seconds) or llm "
                         "(hidden 2048, 32/8 heads of 64, MLP 8192, vocab 32000)")


def pytest_configure(config):
    if config.getoption("sapient_backend", None):
        # Collected like a file named on the command line (whatever python_files says).
        if str(KIT_TESTS) not in config.args:
            config.args.append(str(KIT_TESTS))
