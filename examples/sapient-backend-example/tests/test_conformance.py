"""The example backend's own tests: the sapient_core conformance kit, with one import."""

from sapient_core.testing import conformance_tests

test_conformance = conformance_tests("example")
