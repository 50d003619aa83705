"""pytest plugin of sapient_core (registered through the ``pytest11`` entry point).

Adds ``--sapient-backend NAME`` (placeholder until the conformance kit lands).
"""


def pytest_addoption(parser):
    group = parser.getgroup("sapient_core")
    group.addoption("--sapient-backend", action="append", default=[], metavar="NAME",
                    help="run the sapient_core conformance kit against this backend (repeatable)")
