"""Meta-tests (datasette style): the hook specifications, the op tables and the tests stay in step.

A new op must be added everywhere at once: a hookspec with a complete docstring, OPS, a check in
sapient_core.validate, a float64 oracle, a CPU kernel, and sample arguments (valid and invalid) in
tests/helpers/samples.py, which makes tests/test_core_backend.py call it through the dispatcher.
"""

from __future__ import annotations

import inspect
import re

import pytest

import sapient_core
from sapient_core import errors, hookspecs, validate
from sapient_core.testing import oracle
from sapient_backend_cpu import kernels, plugin as cpu_plugin

from helpers import samples

SPEC_ATTR = f"{hookspecs.PROJECT}_spec"
ARRAY_ARGS = {"x", "weight", "bias", "a", "b", "positions", "q", "k", "v", "hidden", "lm_head"}
SPECS = {name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, SPEC_ATTR)}


def test_the_hookspecs_are_exactly_the_ops_and_the_meta_hooks():
    assert set(SPECS) == set(hookspecs.OPS) | set(hookspecs.META_HOOKS)
    assert not set(hookspecs.OPS) & set(hookspecs.META_HOOKS)


@pytest.mark.parametrize("hook", sorted(SPECS))
def test_each_hookspec_signature_matches_its_table_and_has_no_defaults(hook):
    params = inspect.signature(SPECS[hook]).parameters
    table = hookspecs.OPS.get(hook, hookspecs.META_HOOKS.get(hook))
    assert tuple(params) == table
    assert all(p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values())


@pytest.mark.parametrize("hook", sorted(SPECS))
def test_each_hookspec_is_documented_in_the_fixed_shape(hook):
    doc = inspect.getdoc(SPECS[hook])
    assert doc, f"{hook} has no docstring"
    summary = doc.splitlines()[0]
    assert summary.endswith(".") and (summary.startswith(("Return", "Report", "Apply", "Concatenate"))), summary
    assert ":returns:" in doc, f"{hook}: say what it returns"
    for arg in hookspecs.OPS.get(hook, hookspecs.META_HOOKS.get(hook, ())):
        assert re.search(rf":param {arg}: \S", doc), f"{hook}: document the argument {arg!r}"
    if hook in hookspecs.OPS:
        # shapes and dtypes written out for every array argument and the result, e.g. "(B, S, D) float32"
        for arg in set(hookspecs.OPS[hook]) & ARRAY_ARGS:
            line = re.search(rf":param {arg}: (.*)", doc).group(1)
            assert re.search(r"float32|integer", line) and re.search(r"\(.*\)|any shape", line), (hook, line)
        returns = re.search(r":returns: (.*)", doc).group(1)
        assert "float32" in returns and re.search(r"\(.*\)|shape", returns), (hook, returns)
        assert "Optional." not in doc


def test_the_module_docstring_says_how_to_implement_and_decline():
    doc = hookspecs.__doc__
    for phrase in ("backend_capabilities", "OpDeclined", "default value", "positional arguments",
                   "Calling convention", "How to decline"):
        assert phrase in doc, phrase


def test_required_and_optional_hooks_are_marked():
    assert "Required." in inspect.getdoc(SPECS["backend_capabilities"])
    for hook in set(hookspecs.META_HOOKS) - {"backend_capabilities"}:
        assert "Optional." in inspect.getdoc(SPECS[hook]), hook


def test_every_op_has_a_check_an_oracle_a_kernel_and_samples():
    ops = set(hookspecs.OPS)
    assert set(validate.CHECKS) == ops
    assert {name for name in oracle.__all__ if name in ops} == ops
    assert all(callable(getattr(oracle, op)) for op in ops)
    assert {op for op in ops if hasattr(getattr(cpu_plugin, op, None), SPEC_ATTR.replace("_spec", "_impl"))} == ops
    assert {op for op in ops if callable(getattr(kernels, op, None))} == ops
    for op in ops:
        samples.valid_args(op)                                      # raises KeyError for a missing op
    assert {case[0] for case in samples.INVALID} == ops             # every op has a bad-input case


def test_kernel_signatures_are_the_hooks():
    for op, args in hookspecs.OPS.items():
        assert tuple(inspect.signature(getattr(kernels, op)).parameters) == args, op


def test_every_check_accepts_the_hooks_arguments():
    for op, args in hookspecs.OPS.items():
        assert tuple(inspect.signature(validate.CHECKS[op]).parameters) == args, op


def test_every_op_is_called_by_the_dispatcher_tests():
    """tests/test_core_backend.py is parametrized over OPS; make sure it still is."""
    from pathlib import Path
    source = (Path(__file__).parent / "test_core_backend.py").read_text()
    assert source.count('@pytest.mark.parametrize("op", list(OPS))') >= 2


def test_public_api_is_importable_and_errors_derive_from_the_right_builtins():
    for name in sapient_core.__all__:
        assert hasattr(sapient_core, name), name
    assert issubclass(errors.BackendNotFoundError, LookupError)
    assert issubclass(errors.BackendUnavailableError, errors.BackendNotFoundError)
    assert issubclass(errors.ShapeError, ValueError) and issubclass(errors.DTypeError, TypeError)
    assert issubclass(errors.BackendOpError, RuntimeError)
    assert issubclass(errors.PluginValidationError, errors.PluginLoadError)
    assert issubclass(errors.IncompatiblePluginError, errors.PluginLoadError)
    assert issubclass(errors.PluginWarning, errors.SapientWarning) and issubclass(errors.SapientWarning, UserWarning)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.__doc__, name
        if issubclass(cls, Exception) and not issubclass(cls, Warning):
            assert issubclass(cls, errors.SapientError), name
    assert sapient_core.HOOK_API_VERSION == hookspecs.HOOK_API_VERSION == cpu_plugin.HOOK_API_VERSION


def test_every_op_argument_is_known_as_an_array_or_a_scalar():
    """The fallback converts array arguments to NumPy by name: a new array argument must be listed."""
    from sapient_core import backend
    scalars = {"eps", "approximate", "base", "rotary_dim", "n_kv_heads", "causal"}
    names = {a for args in hookspecs.OPS.values() for a in args}
    assert backend._ARRAY_ARGS == ARRAY_ARGS
    assert names == (names & ARRAY_ARGS) | (names & scalars) and not ARRAY_ARGS & scalars
