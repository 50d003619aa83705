"""Meta-tests (datasette style): the one declaration per op, and everything derived from it, stay in step.

An op is declared once, in sapient_core/hookspecs.py (``@op(...)`` over its hook specification).  From
that declaration come the backend object's typed method (sapient_core/_ops.py, generated), the
validation table, the fallback's argument conversion and the conformance kit's case list.  What must
still be written by hand for a new op: its check in sapient_core/validate.py, its float64 oracle, its
CPU kernel, its kit cases (@cases_for) and its sample arguments in tests/helpers/samples.py.  These
tests say which one is missing.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import sapient_core
from sapient_core import _codegen, errors, hookspecs, validate
from sapient_core.testing import cases as kit_cases
from sapient_core.testing import oracle
from sapient_backend_cpu import kernels, plugin as cpu_plugin

from helpers import samples

REPO = Path(__file__).resolve().parents[1]
SPEC_ATTR = f"{hookspecs.PROJECT}_spec"
SPECS = {name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, SPEC_ATTR)}


def test_the_hookspecs_are_exactly_the_ops_and_the_meta_hooks():
    assert set(SPECS) == set(hookspecs.OPS) | set(hookspecs.META_HOOKS)
    assert not set(hookspecs.OPS) & set(hookspecs.META_HOOKS)
    assert all(SPECS[name] is spec.spec for name, spec in hookspecs.OPS.items())


@pytest.mark.parametrize("hook", sorted(SPECS))
def test_each_hookspec_signature_matches_its_declaration_and_has_no_defaults(hook):
    params = inspect.signature(SPECS[hook]).parameters
    spec = hookspecs.OPS.get(hook)
    assert tuple(params) == (spec.argnames if spec else hookspecs.META_HOOKS[hook])
    assert all(p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values())


@pytest.mark.parametrize("hook", sorted(SPECS))
def test_each_hookspec_is_documented_in_the_fixed_shape(hook):
    doc = inspect.getdoc(SPECS[hook])
    assert doc, f"{hook} has no docstring"
    summary = doc.splitlines()[0]
    assert summary.endswith(".") and summary.startswith(("Return", "Report", "Apply", "Concatenate", "Evaluate",
                                                         "Write")), summary
    assert ":returns:" in doc, f"{hook}: say what it returns"
    spec = hookspecs.OPS.get(hook)
    for arg in (spec.argnames if spec else hookspecs.META_HOOKS[hook]):
        assert re.search(rf":param {arg}: \S", doc), f"{hook}: document the argument {arg!r}"
    if spec:
        # shapes and dtypes written out for every array argument and the result, e.g. "(B, S, D) float32"
        for arg in spec.args:
            assert arg.doc, (hook, arg.name)
            if arg.is_array:
                assert re.search(r"float32|integer|bool", arg.doc) and re.search(r"\(.*\)|any shape", arg.doc), (hook, arg)
        returns = re.search(r":returns: (.*)", doc).group(1)
        assert "float32" in returns and re.search(r"\(.*\)|shape", returns), (hook, returns)
        assert "Optional." not in doc


def test_the_module_docstring_says_how_to_implement_and_decline():
    doc = hookspecs.__doc__
    for phrase in ("backend_capabilities", "OpDeclined", "default value", "positional arguments",
                   "Calling convention", "How to decline", "routed"):
        assert phrase in doc, phrase


def test_required_and_optional_hooks_are_marked():
    assert "Required." in inspect.getdoc(SPECS["backend_capabilities"])
    for hook in set(hookspecs.META_HOOKS) - {"backend_capabilities"}:
        assert "Optional." in inspect.getdoc(SPECS[hook]), hook


def test_every_argument_has_one_kind_and_later_arguments_have_defaults():
    for spec in hookspecs.OPS.values():
        for arg in spec.args:
            assert arg.kind in (hookspecs.ARRAY, hookspecs.OPTIONAL_ARRAY, hookspecs.POSITIONS, hookspecs.INT_ARRAY,
                                hookspecs.OPTIONAL_MASK, hookspecs.SCALAR)
            assert 1 <= arg.since <= hookspecs.HOOK_API_VERSION, (spec.name, arg.name)
            if arg.since > spec.since:
                assert arg.has_default, (spec.name, arg.name)
        assert spec.since in hookspecs.SUPPORTED_API_VERSIONS


def test_the_declaration_refuses_an_argument_without_a_kind_and_a_late_argument_without_a_default():
    def f(x, y):
        """Return x."""

    def g(x, late):
        """Return x."""
    with pytest.raises(TypeError, match=r"^op f: every argument needs exactly one kind"):
        hookspecs.op(arrays=("x",), result_shape="x.shape")(f)
    with pytest.raises(TypeError, match=r"^op g: argument 'late' was added in API 2, so it needs a default"):
        hookspecs.op(arrays=("x",), scalars={"late": "int"}, since={"late": 2}, result_shape="x.shape")(g)
    assert "f" not in hookspecs.OPS and "g" not in hookspecs.OPS


def test_the_generated_op_methods_are_up_to_date():
    """sapient_core/_ops.py is generated from the declarations: regenerate it after changing one."""
    assert _codegen.generate() == Path(_codegen.TARGET).read_text(encoding="utf-8"), \
        "run: python -m sapient_core._codegen"
    assert _codegen.main(["--check"]) == 0


def test_the_fast_paths_are_inlined_from_validate_and_odd_ones_are_refused():
    """Every check has a fast path, and the methods carry a copy of it taken from validate.py's
    source; a fast path the generator cannot copy faithfully stops it with the reason."""
    fast = _codegen.fast_paths()
    assert set(fast) == {spec.check_name for spec in hookspecs.OPS.values()}
    source = Path(_codegen.TARGET).read_text(encoding="utf-8")
    assert source.count("ok = " + fast["check_rms_norm"].test) == 2      # the method and the trusted closure
    head = "def check_x(x):\n    try:\n"
    tail = "    except (AttributeError, TypeError, ValueError):\n        pass\n"
    bad = [
        ("assigns ['r'], which the method uses", "        r = x.shape\n        if r:\n            return\n"),
        ("assigns ['x'], which the method uses", "        x = x.shape\n        if x:\n            return\n"),
        ("returns None or one of its arguments", "        if x:\n            return 1\n"),
        ("is not a fast path this generator can inline", "        for i in x:\n            pass\n        if x:\n"
                                                        "            return\n"),
        ("is not a fast path this generator can inline", "        if x:\n            y = x.shape\n            return\n"),
    ]
    for why, body in bad:
        with pytest.raises(ValueError, match=r"^validate\.check_x: .*" + re.escape(why)):
            _codegen.fast_paths(head + body + tail)
    narrow = head + "        if x.shape:\n            return\n    except AttributeError:\n        pass\n"
    with pytest.raises(ValueError, match="not a fast path this generator can inline"):
        _codegen.fast_paths(narrow)
    ok = _codegen.fast_paths(head + "        s = x.shape\n        if s:\n            return x\n" + tail)["check_x"]
    assert ok.setup == ["s = x.shape"] and ok.test == "s"


def test_every_op_has_a_check_an_oracle_a_kernel_kit_cases_and_samples():
    ops = set(hookspecs.OPS)
    assert set(validate.CHECKS) == ops
    assert all(validate.CHECKS[op] is getattr(validate, hookspecs.OPS[op].check_name) for op in ops)
    assert {name for name in oracle.__all__ if name in ops} == ops
    assert all(callable(getattr(oracle, op)) for op in ops)
    assert {op for op in ops if hasattr(getattr(cpu_plugin, op, None), SPEC_ATTR.replace("_spec", "_impl"))} == ops
    assert {op for op in ops if callable(getattr(kernels, op, None))} == ops
    assert set(kit_cases.CASE_BUILDERS) == ops
    assert {c.op for c in kit_cases.build_cases()} == ops
    for op in ops:
        samples.valid_args(op)                                      # raises KeyError for a missing op
    assert {case[0] for case in samples.INVALID} == ops             # every op has a bad-input case


def test_an_op_without_kit_cases_is_an_error_not_a_gap(monkeypatch):
    monkeypatch.delitem(kit_cases.CASE_BUILDERS, "silu")
    with pytest.raises(LookupError, match=r"^no conformance cases for op\(s\) silu: add a builder decorated with "
                                          r"@cases_for\('silu'\)"):
        kit_cases.build_cases()


def test_kernel_signatures_are_the_hooks():
    for op, spec in hookspecs.OPS.items():
        assert tuple(inspect.signature(getattr(kernels, op)).parameters) == spec.argnames, op


def test_every_check_accepts_the_hooks_arguments():
    for op, spec in hookspecs.OPS.items():
        assert tuple(inspect.signature(validate.CHECKS[op]).parameters) == spec.argnames, op


def test_every_op_is_called_by_the_dispatcher_tests():
    """tests/test_core_backend.py is parametrized over OPS; make sure it still is."""
    source = (Path(__file__).parent / "test_core_backend.py").read_text()
    assert source.count('@pytest.mark.parametrize("op", list(OPS))') >= 2


def test_public_api_is_importable_and_errors_derive_from_the_right_builtins():
    for name in sapient_core.__all__:
        assert getattr(sapient_core, name) is not None, name
    for name in ("Backend", "BackendInfo", "Explanation", "Capabilities", "FitPolicy", "MemoryInfo", "Stats"):
        assert name in sapient_core.__all__ and inspect.getdoc(getattr(sapient_core, name)), name
    assert issubclass(errors.BackendNotFoundError, LookupError)
    assert issubclass(errors.BackendUnavailableError, errors.BackendNotFoundError)
    assert issubclass(errors.ShapeError, ValueError) and issubclass(errors.DTypeError, TypeError)
    assert issubclass(errors.ArgumentError, ValueError) and not issubclass(errors.ArgumentError, errors.ShapeError)
    assert issubclass(errors.BackendOpError, RuntimeError)
    assert issubclass(errors.PluginValidationError, errors.PluginLoadError)
    assert issubclass(errors.IncompatiblePluginError, errors.PluginLoadError)
    assert issubclass(errors.PluginWarning, errors.SapientWarning) and issubclass(errors.SapientWarning, UserWarning)
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.__doc__, name
        if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, Warning):
            assert issubclass(cls, errors.SapientError), name
    assert sapient_core.HOOK_API_VERSION == hookspecs.HOOK_API_VERSION
    assert sapient_core.HOOK_API_VERSION in sapient_core.SUPPORTED_API_VERSIONS


def test_plugins_declare_their_api_version_as_a_literal():
    """A plugin that imports the core's HOOK_API_VERSION always matches it: the check could never fire."""
    for path in (REPO / "plugins" / "cpu" / "sapient_backend_cpu" / "plugin.py",
                 REPO / "plugins" / "mlx" / "sapient_backend_mlx" / "plugin.py",
                 REPO / "examples" / "sapient-backend-example" / "sapient_backend_example" / "plugin.py"):
        text = path.read_text()
        assert "import HOOK_API_VERSION" not in text and "sapient_core.HOOK_API_VERSION" not in text, path
        assert re.search(r'"api_version": \d+|HOOK_API_VERSION = \d+', text), path


@pytest.mark.parametrize("op", list(hookspecs.OPS))
def test_the_fallback_converts_exactly_the_array_arguments(op):
    """The CPU reference gets NumPy for every argument declared as an array, and scalars as they are."""
    from sapient_core.registry import Registry

    from helpers.fakeplugins import Boxed, caps_dict, namespace_plugin, unbox

    converted = []
    plugin = namespace_plugin(caps_dict(), backend_to_numpy=lambda x: converted.append(x) or unbox(x),
                              backend_from_numpy=lambda x: Boxed(x))
    reg = Registry(entry_points=lambda: [])
    reg.register(plugin, "boxed")
    b = reg.get_backend("boxed")
    spec = hookspecs.OPS[op]
    args = tuple(Boxed(a) if arg.is_array and hasattr(a, "dtype") else a for arg, a in zip(spec.args, samples.valid_args(op)))
    numpy_args = b._numpy_args(spec, args)
    boxed = [a for a in args if isinstance(a, Boxed)]
    assert len(converted) == len(boxed) and all(c is a for c, a in zip(converted, boxed))
    for arg, before, after in zip(spec.args, args, numpy_args):
        if isinstance(before, Boxed):
            assert arg.is_array and after is before.a
        else:
            assert after is before


def test_no_private_module_is_imported_across_packages():
    """Only sapient_core itself may import its private modules; plugins, benchmarks, examples and the
    kit use the public names."""
    private = re.compile(r"^\s*(?:(?:from|import)\s+sapient_core(?:\.\w+)*\._(?!_)\w+"     # sapient_core._x
                         r"|from\s+\.\.+(?:\w+\.)*_(?!_)\w+\s+import"                     # from .._x (the kit)
                         r"|from\s+sapient_core(?:\.\w+)*\s+import\s+\(?\s*(?:\w+\s*,\s*)*_(?!_)\w+)", re.M)
    for line in ("from sapient_core._ops import x", "import sapient_core._codegen", "from .._plugin import y",
                 "from sapient_core import _ops", "from sapient_core import (OPS, _ops)"):
        assert private.search(line), line
    for line in ("from sapient_core import OPS", "from .oracle import x", "from sapient_core.testing import nmse"):
        assert not private.search(line), line
    offenders = []
    for folder in ("plugins", "benchmarks", "examples", "sapient_core/testing"):
        for path in (REPO / folder).rglob("*.py"):
            if "tests" in path.parts and folder == "plugins":
                continue
            if private.search(path.read_text()):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
