"""The Backend object (SPEC §4-§7): binding, validation, fallback, strict mode, threads, data.

Numerics of the kernels are tested elsewhere (against the float64 oracle); here every result is
compared with the CPU reference kernel itself, bit for bit, because what is tested is who computes it.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import pytest

from sapient_core import ArgumentError, BackendOpError, DTypeError, OpDeclined, OpStats, ShapeError
from sapient_core.hookspecs import OPS
from sapient_core.registry import Registry
from sapient_backend_cpu import kernels

from helpers.fakeplugins import (Boxed, caps_dict, delegating_plugin, namespace_plugin, op_function,
                                 sapient_warnings, unbox)
from helpers.samples import INVALID, NUMPY_RESULT_OPS, valid_args

ERRORS = {"ShapeError": ShapeError, "DTypeError": DTypeError, "ArgumentError": ArgumentError}


def registry_with(plugin, name="fake"):
    reg = Registry(entry_points=lambda: [])
    reg.register(plugin, name)
    return reg


def backend_of(plugin, name="fake", **kw):
    return registry_with(plugin, name).get_backend(name, **kw)


def assert_same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


# --- every op, bound to the winning implementation -------------------------------------------------------

@pytest.mark.parametrize("op", list(OPS))
def test_every_op_runs_the_plugins_implementation(op):
    plugin = delegating_plugin()
    b = backend_of(plugin)
    args = valid_args(op)
    result = getattr(b, op)(*args)
    assert [c[0] for c in plugin.calls] == [op]
    assert all(got is want for got, want in zip(plugin.calls[0][1], args))   # the plugin got the very arrays
    assert_same(result, getattr(kernels, op)(*args))
    assert type(result) is np.ndarray
    assert b.stats().ops[op] == OpStats(calls=1, implemented_by="fake")


@pytest.mark.parametrize("op", list(OPS))
def test_every_op_of_the_cpu_backend_is_the_kernel(op):
    b = Registry(entry_points=lambda: []).get_backend("cpu")
    assert_same(getattr(b, op)(*valid_args(op)), getattr(kernels, op)(*valid_args(op)))
    assert b.stats().ops[op].implemented_by == "cpu"


def test_ops_a_plugin_lacks_are_served_by_the_cpu_reference():
    plugin = delegating_plugin(ops=["rms_norm"], caps=caps_dict(device="metal"))
    b = backend_of(plugin)
    assert b.implemented_ops == ("rms_norm",)
    for op in OPS:
        assert_same(getattr(b, op)(*valid_args(op)), getattr(kernels, op)(*valid_args(op)))
    assert [c[0] for c in plugin.calls] == ["rms_norm"]
    stats = b.stats()
    assert stats.backend == "fake" and stats.device == "metal" and stats.strict is False
    assert {op: s.implemented_by for op, s in stats.ops.items()} == {
        op: ("fake" if op == "rms_norm" else "cpu") for op in OPS}
    assert all(s.calls == 1 and s.fallbacks == 0 for s in stats.ops.values())


def test_implementations_may_take_a_subset_of_the_arguments_in_any_order():
    seen = {}

    def linear(weight, x):
        seen["linear_3d"] = (weight, x)
        return kernels.linear_3d(x, weight)

    def gelu(x):
        seen["gelu"] = x
        return kernels.gelu(x, "none")

    plugin = namespace_plugin(caps_dict(), linear_3d=op_function("linear_3d", linear, ["weight", "x"]),
                              gelu=op_function("gelu", gelu, ["x"]))
    b = backend_of(plugin)
    x, w = valid_args("linear_3d")
    assert_same(b.linear_3d(x, w), kernels.linear_3d(x, w))
    assert seen["linear_3d"][0] is w and seen["linear_3d"][1] is x
    b.gelu(x, "none")                                 # the default of the argument it does not take
    assert seen.pop("gelu") is x
    assert_same(b.gelu(x, "tanh"), kernels.gelu(x, "tanh"))   # sets it: the reference computes the call
    assert "gelu" not in seen
    st = b.stats().ops["gelu"]
    assert (st.calls, st.fallbacks, st.routed) == (2, 0, 1)
    assert st.routed_reasons == {"fake's gelu('x',) does not take 'approximate' (added in hook API 1), which this "
                                 "call sets": 1}


def test_gelu_defaults_to_the_exact_form():
    b = Registry(entry_points=lambda: []).get_backend("cpu")
    x = valid_args("silu")[0]
    assert_same(b.gelu(x), kernels.gelu(x, "none"))
    assert b.gelu.__doc__.startswith("Return GELU of x.")


def test_float16_is_accepted_and_computed_in_float32():
    b = Registry(entry_points=lambda: []).get_backend("cpu")
    x = valid_args("silu")[0].astype(np.float16)
    assert_same(b.silu(x), kernels.silu(x.astype(np.float32)))


def test_rope_positions_are_normalised_before_the_plugin_sees_them():
    plugin = delegating_plugin(ops=["apply_rope_positions"])
    b = backend_of(plugin)
    x = valid_args("apply_rope_positions")[0]
    b.apply_rope_positions(x, [0, 5, 9], 10000.0)
    positions = plugin.calls[0][1][1]
    assert isinstance(positions, np.ndarray) and positions.dtype.kind == "i" and positions.tolist() == [0, 5, 9]
    assert_same(b.apply_rope_positions(x, range(3), 10000.0), kernels.apply_rope_positions(x, np.arange(3), 10000.0))


# --- input errors: validated once, in the core, the same on every backend ------------------------------------

@pytest.mark.parametrize("op, args, error, message, shapes", INVALID,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(INVALID)])
def test_bad_input_raises_the_same_error_everywhere_and_never_falls_back(op, args, error, message, shapes):
    cpu = Registry(entry_points=lambda: []).get_backend("cpu")
    plugin = delegating_plugin()
    fake = backend_of(plugin)
    partial = backend_of(delegating_plugin(ops=[]), name="partial")
    raised = []
    for b in (cpu, fake, partial):
        with pytest.raises(ERRORS[error], match=message) as exc:
            getattr(b, op)(*args)
        assert exc.value.op == op and exc.value.shapes == shapes
        raised.append((type(exc.value), str(exc.value)))
    assert raised[0] == raised[1] == raised[2]
    assert isinstance(exc.value, TypeError if error == "DTypeError" else ValueError)
    assert plugin.calls == []                                   # the plugin never saw the bad input
    assert fake.stats().ops[op] == OpStats(calls=0, implemented_by="fake")


@pytest.mark.parametrize("call, error, message", [
    (lambda b: b.rms_norm(*valid_args("rms_norm")[:2], -1.0), ArgumentError, r"^rms_norm: eps must be >= 0, got -1\.0$"),
    (lambda b: b.rms_norm(*valid_args("rms_norm")[:2], "1e-6"), DTypeError,
     r"^rms_norm: eps must be a real number, got str '1e-6'$"),
    (lambda b: b.apply_rope_positions(valid_args("apply_rope_positions")[0], [0, 1, 2], 0.0), ArgumentError,
     r"^apply_rope_positions: base must be > 0, got 0\.0$"),
    (lambda b: b.apply_rope_positions(np.zeros((1, 2, 3, 5), np.float32), [0, 1, 2], 1e4), ShapeError,
     r"^apply_rope_positions: head size D=5 must be even \(x \(1, 2, 3, 5\)\)$"),
    (lambda b: b.apply_rope_partial(valid_args("apply_rope_partial")[0], [0, 1, 2], 1e4, 2.0), DTypeError,
     r"^apply_rope_partial: rotary_dim must be an int, got float 2\.0$"),
    (lambda b: b.gqa_attention(*valid_args("gqa_attention")[:3], 2, "yes"), DTypeError,
     r"^gqa_attention: causal must be a bool, got str 'yes'$"),
    (lambda b: b.gqa_attention(*valid_args("gqa_attention")[:3], 4, False), ShapeError,
     r"^gqa_attention: n_kv_heads=4 but k and v have 2 heads "
     r"\(q \(2, 4, 3, 4\), k \(2, 2, 5, 4\), v \(2, 2, 5, 4\)\)$"),
    (lambda b: b.gqa_attention(*valid_args("gqa_attention")[:3], 2.0, False), DTypeError,
     r"^gqa_attention: n_kv_heads must be an int, got float 2\.0"),
    (lambda b: b.logits_from_hidden(np.zeros((2, 0, 8), np.float32), np.zeros((5, 8), np.float32)), ShapeError,
     r"^logits_from_hidden: hidden has no positions \(S=0\): there is no last position"),
    (lambda b: b.linear_3d(np.zeros((1, 2, 3), np.int64), np.zeros((4, 3), np.float32)), DTypeError,
     r"^linear_3d: x has dtype int64; accepted: float32, float16, bfloat16 \(computed in float32\)\. To remedy this, "
     r"pass x\.astype\(numpy\.float32\) \(x \(1, 2, 3\), weight \(4, 3\)\)$"),
    (lambda b: b.add(None, np.zeros(3, np.float32)), DTypeError,
     r"^add: a must be an array \(NumPy or the backend's array type\), got NoneType \(a NoneType, b \(3,\)\)$"),
])
def test_more_validation_messages(call, error, message):
    b = backend_of(delegating_plugin())
    with pytest.raises(error, match=message):
        call(b)
    assert all(s.calls == 0 for s in b.stats().ops.values())


@pytest.mark.parametrize("q_batch, kv_batch", [(2, 1), (1, 2), (3, 2)])
def test_attention_batches_that_differ_are_refused_not_broadcast(q_batch, kv_batch):
    """float32 contiguous NumPy input: exactly what the checks' fast path sees (a q batch of 2 against k/v of
    1 would otherwise broadcast silently in a NumPy kernel)."""
    from sapient_core import validate
    rng = np.random.default_rng(0)
    q = rng.standard_normal((q_batch, 4, 3, 8)).astype(np.float32)
    k = rng.standard_normal((kv_batch, 2, 5, 8)).astype(np.float32)
    v = rng.standard_normal((kv_batch, 2, 5, 8)).astype(np.float32)
    message = (rf"^gqa_attention: batch sizes differ: q has {q_batch}, k and v have {kv_batch} \(q \({q_batch}, 4, 3, "
               rf"8\), k \({kv_batch}, 2, 5, 8\), v \({kv_batch}, 2, 5, 8\)\)$")
    for causal in (True, False):
        with pytest.raises(ShapeError, match=message):
            validate.check_gqa_attention(q, k, v, 2, causal)
    plugin = delegating_plugin()
    reg = registry_with(plugin)
    mlx = Registry().get_backend("mlx", strict=True)        # the installed MLX plugin (mlx[cpu] on Linux)
    backends = [reg.get_backend("cpu"), reg.get_backend("fake"), reg.get_backend("fake", strict=True), mlx]
    for b in backends:
        with pytest.raises(ShapeError, match=message) as exc:
            b.gqa_attention(q, k, v, 2, True)
        assert exc.value.op == "gqa_attention" and b.stats().ops["gqa_attention"].calls == 0
    assert plugin.calls == []


def test_fast_path_agrees_with_the_full_check():
    """The checks' fast path (float32 NumPy input) accepts exactly what the full check accepts."""
    from sapient_core import validate
    for op, args, *_ in INVALID:
        with pytest.raises((ShapeError, DTypeError, ArgumentError)):
            validate.CHECKS[op](*args)
    for op in OPS:
        validate.CHECKS[op](*valid_args(op))                   # fast path
        as_f16 = tuple(a.astype(np.float16) if isinstance(a, np.ndarray) and a.dtype == np.float32 else a
                       for a in valid_args(op))
        validate.CHECKS[op](*as_f16)                           # full path
    shapes = [(), (1,), (3,), (2, 3), (1, 3), (2, 1), (4, 2, 3), (4, 1, 3), (0,), (0, 3), (2, 0), (3, 2), (1, 1, 1)]
    for sa in shapes:
        for sb in shapes:
            try:
                np.broadcast_shapes(sa, sb)
                ok = True
            except ValueError:
                ok = False
            assert validate._broadcastable(sa, sb) is ok, (sa, sb)
            a, b = np.zeros(sa, np.float32), np.zeros(sb, np.float32)
            if ok:
                validate.check_add(a, b)
            else:
                with pytest.raises(ShapeError, match=r"^add: shapes do not broadcast together"):
                    validate.check_add(a, b)


# --- fallback ----------------------------------------------------------------------------------------------

def flaky_plugin(**caps):
    def before(op, args):
        if op == "silu":
            raise RuntimeError("kernel exploded")
        if op == "gelu" and args[1] == "tanh":
            raise OpDeclined("tanh approximation not supported")
        if op == "add":
            raise ValueError(f"cannot add shape {args[0].shape}")
    return delegating_plugin(ops=["silu", "gelu", "add", "rms_norm"], caps=caps_dict(**caps), before=before)


def test_fallback_gives_the_reference_result_warns_once_and_counts(caplog):
    b = backend_of(flaky_plugin(), name="flaky")
    x = valid_args("silu")[0]
    with caplog.at_level(logging.DEBUG, logger="sapient_core"):
        for _ in range(50):
            assert_same(b.silu(x), kernels.silu(x))
            assert_same(b.gelu(x, "tanh"), kernels.gelu(x, "tanh"))
            assert_same(b.gelu(x, "none"), kernels.gelu(x, "none"))
        for shape in [(3,), (4,), (3,)]:
            a = np.ones(shape, np.float32)
            assert_same(b.add(a, a), kernels.add(a, a))
    assert sapient_warnings(caplog) == [
        "flaky.silu failed (RuntimeError: kernel exploded); the CPU reference computes it instead (logged once per "
        "backend, op and reason; see Backend.stats())",
        "flaky.gelu declined the input (tanh approximation not supported); the CPU reference computes it instead "
        "(logged once per backend, op and reason; see Backend.stats())",
        "flaky.add failed (ValueError: cannot add shape (3,)); the CPU reference computes it instead (logged once "
        "per backend, op and reason; see Backend.stats())",
        "flaky.add failed (ValueError: cannot add shape (4,)); the CPU reference computes it instead (logged once "
        "per backend, op and reason; see Backend.stats())",
    ]
    ops = b.stats().ops
    assert ops["silu"] == OpStats(calls=50, fallbacks=50, fallback_reasons={"RuntimeError: kernel exploded": 50},
                                  implemented_by="flaky")
    assert ops["gelu"] == OpStats(calls=100, fallbacks=50,
                                  fallback_reasons={"tanh approximation not supported": 50}, implemented_by="flaky")
    assert ops["add"].fallback_reasons == {"ValueError: cannot add shape (3,)": 2,
                                           "ValueError: cannot add shape (4,)": 1}
    assert ops["rms_norm"] == OpStats(calls=0, implemented_by="flaky")


def test_fallback_under_threads_warns_once_and_counts_every_call(caplog):
    b = backend_of(flaky_plugin(), name="flaky")
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        hammer([b.silu], threads=8, calls=20)
    assert len(sapient_warnings(caplog)) == 1
    assert b.stats().ops["silu"].calls == b.stats().ops["silu"].fallbacks == 160


def test_reset_stats_zeroes_the_counters_but_does_not_warn_again(caplog):
    b = backend_of(flaky_plugin(), name="flaky")
    x = valid_args("silu")[0]
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        b.silu(x)
        b.rms_norm(*valid_args("rms_norm"))
        b.reset_stats()
        assert all(s.calls == 0 and s.fallbacks == 0 and s.fallback_reasons == {}
                   for s in b.stats().ops.values())
        b.silu(x)
    assert len(sapient_warnings(caplog)) == 1
    assert b.stats().ops["silu"].calls == 1 and b.stats().ops["silu"].fallbacks == 1


def test_the_warning_is_once_per_plugin_not_per_backend_object(caplog):
    reg = registry_with(flaky_plugin(), "flaky")
    x = valid_args("silu")[0]
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        reg.get_backend("flaky").silu(x)
        reg.get_backend("flaky", strict=False).silu(x)
        reg.get_backend("auto").silu(x)
    assert len(sapient_warnings(caplog)) == 1


def test_strict_mode_raises_instead_of_falling_back():
    b = backend_of(flaky_plugin(), name="flaky", strict=True)
    x = valid_args("silu")[0]
    with pytest.raises(BackendOpError, match=r"^flaky\.silu failed \(RuntimeError: kernel exploded\) and strict mode "
                                             r"is on, so the CPU reference was not used\. To allow the fallback: unset "
                                             r"SAPIENT_STRICT or pass strict=False$") as exc:
        b.silu(x)
    e = exc.value
    assert (e.backend, e.op, e.reason, e.declined) == ("flaky", "silu", "RuntimeError: kernel exploded", False)
    assert isinstance(e, RuntimeError) and isinstance(e.__cause__, RuntimeError)
    with pytest.raises(BackendOpError, match=r"^flaky\.gelu declined the input \(tanh approximation not supported\)"
                       ) as exc:
        b.gelu(x, "tanh")
    assert exc.value.declined is True and exc.value.reason == "tanh approximation not supported"
    assert isinstance(exc.value.__cause__, OpDeclined)
    stats = b.stats()
    assert stats.strict is True and stats.ops["silu"].calls == 1 and stats.ops["silu"].fallbacks == 0


def test_sapient_strict_env_and_the_explicit_argument(monkeypatch):
    reg = registry_with(flaky_plugin(), "flaky")
    x = valid_args("silu")[0]
    monkeypatch.setenv("SAPIENT_STRICT", "1")
    b = reg.get_backend("flaky")
    assert b.strict is True
    with pytest.raises(BackendOpError) as exc:
        b.silu(x)
    assert exc.value.op == "silu" and exc.value.backend == "flaky"
    assert reg.get_backend("flaky", strict=False).strict is False      # the argument wins
    assert_same(reg.get_backend("flaky", strict=False).silu(x), kernels.silu(x))
    monkeypatch.setenv("SAPIENT_STRICT", "0")
    assert reg.get_backend("flaky").strict is False


# --- the backend's own array type ----------------------------------------------------------------------------

def boxed_plugin(fail_rms=False):
    def rms_norm(x, weight, eps):
        if fail_rms:
            raise MemoryError("device out of memory")
        return Boxed(kernels.rms_norm(unbox(x), unbox(weight), eps))

    return namespace_plugin(
        caps_dict(device="metal"),
        backend_to_numpy=lambda x: unbox(x),
        backend_from_numpy=lambda x: Boxed(x),
        backend_concatenate=lambda arrays, axis: Boxed(np.concatenate([unbox(a) for a in arrays], axis)),
        rms_norm=rms_norm,
        logits_from_hidden=lambda hidden, lm_head: Boxed(kernels.logits_from_hidden(unbox(hidden), unbox(lm_head),
                                                                                    None)),
    )


@pytest.mark.parametrize("fail_rms", [False, True])
def test_results_stay_in_the_backends_array_type(fail_rms):
    b = backend_of(boxed_plugin(fail_rms))
    x, w, eps = valid_args("rms_norm")
    h = b.rms_norm(Boxed(x), w, eps)                  # the plugin's op, or the fallback's result re-boxed
    assert isinstance(h, Boxed)
    assert_same(h.a, kernels.rms_norm(x, w, eps))
    y = b.silu(h)                                     # not implemented: the reference, on NumPy, re-boxed
    assert isinstance(y, Boxed)
    assert_same(y.a, kernels.silu(x=kernels.rms_norm(x, w, eps)))
    head = valid_args("logits_from_hidden")[1]
    for op in ("logits_from_hidden", "all_logits_from_hidden"):    # the logits ops always return NumPy
        logits = getattr(b, op)(y, head)
        assert type(logits) is np.ndarray
        assert_same(logits, getattr(kernels, op)(y.a, head, None))
    assert b.stats().ops["rms_norm"].fallbacks == (1 if fail_rms else 0)


def test_to_numpy_from_numpy_and_concatenate():
    b = backend_of(boxed_plugin())
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert b.to_numpy(a) is a
    boxed = b.from_numpy(a)
    assert isinstance(boxed, Boxed) and boxed.a is a
    assert type(b.to_numpy(boxed)) is np.ndarray and b.to_numpy(boxed) is a
    cat = b.concatenate([boxed, a], axis=-1)
    assert isinstance(cat, Boxed) and cat.a.tolist() == np.concatenate([a, a], -1).tolist()

    cpu = Registry(entry_points=lambda: []).get_backend("cpu")
    assert cpu.from_numpy(a) is a and cpu.to_numpy(a) is a
    assert cpu.to_numpy([1.0, 2.0]).tolist() == [1.0, 2.0]
    cat = cpu.concatenate((a, a), axis=0)
    assert type(cat) is np.ndarray and cat.shape == (4, 3)
    nb = backend_of(namespace_plugin(caps_dict()), name="plain")       # no array hooks: NumPy throughout
    assert nb.concatenate([a, a], 1).shape == (2, 6) and nb.from_numpy(a) is a


# --- threads --------------------------------------------------------------------------------------------------

class Concurrency:
    """Records how many calls are inside the plugin at once."""

    def __init__(self):
        self.mu = threading.Lock()
        self.active = 0
        self.most = 0

    def enter(self, *_):
        with self.mu:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.002)
        with self.mu:
            self.active -= 1


def hammer(functions, threads=8, calls=8):
    x = valid_args("silu")[0]
    barrier = threading.Barrier(threads)
    errors = []

    def work(i):
        barrier.wait()
        try:
            for j in range(calls):
                functions[(i + j) % len(functions)](x)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []


def concurrency_plugin(thread_safe):
    c = Concurrency()

    def to_numpy(x):
        c.enter()
        return np.asarray(x)
    plugin = delegating_plugin(ops=["silu"], caps=caps_dict(thread_safe=thread_safe), before=c.enter,
                               backend_to_numpy=to_numpy)
    return plugin, c


def test_a_plugin_that_is_not_thread_safe_is_serialised():
    plugin, c = concurrency_plugin(thread_safe=False)
    reg = registry_with(plugin)
    lax, strict = reg.get_backend("fake"), reg.get_backend("fake", strict=True)
    assert lax is not strict and lax.thread_safe is False
    boxed = Boxed(valid_args("silu")[0])
    hammer([lax.silu, strict.silu, lambda x: lax.to_numpy(boxed)])
    assert c.most == 1 and len(plugin.calls) > 0


def test_a_thread_safe_plugin_is_called_concurrently():
    plugin, c = concurrency_plugin(thread_safe=True)
    b = backend_of(plugin)
    assert b.thread_safe is True
    hammer([b.silu])
    assert c.most > 1                                  # proves that the test above could see an overlap
    assert b.stats().ops["silu"].calls == 64     # the counter loses no call under threads


# --- reporting ---------------------------------------------------------------------------------------------------

def test_backend_carries_the_capability_report_and_the_explanation():
    b = backend_of(delegating_plugin(ops=["silu"], caps=caps_dict(device="metal", priority=42, thread_safe=False,
                                                                  version="9.9")))
    caps = b.capabilities
    assert (caps.name, caps.device, caps.priority, caps.version, caps.thread_safe, caps.api_version) == (
        "fake", "metal", 42, "9.9", False, 2)
    assert b.explanation.chosen == "fake"
    assert repr(b) == "<sapient_core.Backend 'fake' device='metal' thread_safe=False strict=False>"


def test_stats_include_the_plugins_own_statistics():
    b = backend_of(namespace_plugin(caps_dict(), backend_stats=lambda: {"weight_uploads": 3}))
    assert b.stats().plugin == {"weight_uploads": 3}
    b = backend_of(namespace_plugin(caps_dict(), backend_stats=lambda: 1 / 0))
    assert b.stats().plugin == {"error": "backend_stats() raised ZeroDivisionError: division by zero"}
    assert backend_of(namespace_plugin(caps_dict())).stats().plugin is None


def test_op_methods_are_real_typed_methods_with_the_hooks_signature():
    import inspect

    from sapient_core import Backend, _ops
    cpu = Registry(entry_points=lambda: []).get_backend("cpu")
    plugin = backend_of(delegating_plugin(ops=["silu"]), name="fake")
    for op, spec in OPS.items():
        assert hasattr(Backend, op), op                             # declared on the class (what mypy reads)
        method = getattr(plugin, op)
        trusted = op != "silu"                                      # the reference serves what fake lacks
        if trusted:      # a trusted route: the instance's closure (no route lookup), with the method's face
            assert not inspect.ismethod(method) and method is vars(plugin)[op]
            assert method.__qualname__ == f"Backend.{op}" and method.__code__ is not getattr(Backend, op).__code__
        else:
            assert inspect.ismethod(method) and method.__func__ is getattr(Backend, op)
        for m in (method, getattr(cpu, op)):
            assert tuple(inspect.signature(m).parameters) == spec.argnames
            assert inspect.getsourcefile(m) == _ops.__file__       # a real file: tracebacks point into it
            assert inspect.getdoc(m) == spec.doc
        assert re.search(rf"def {op}\(\s*self,", inspect.getsource(getattr(Backend, op)))
        assert vars(cpu)[op].__code__.co_name == op                 # the CPU reference: every op trusted
    for b in (cpu, plugin):
        assert str(inspect.signature(b.gelu)) == "(x: 'Array', approximate: 'str' = 'none') -> 'Array'"
    assert str(inspect.signature(Backend.logits_from_hidden)).endswith("-> 'numpy.typing.NDArray[numpy.float32]'")
    assert set(NUMPY_RESULT_OPS) == {op for op, spec in OPS.items() if spec.numpy_result}


class ForeignDtype:
    """Like ``mx.float32``: a new object on every access, equal and hash-equal by name."""

    def __init__(self, name):
        self.name = name

    def __str__(self):
        return f"foreign.core.{self.name}"

    def __eq__(self, other):
        return isinstance(other, ForeignDtype) and other.name == self.name

    def __hash__(self):
        return hash(("foreign", self.name))


class Foreign(Boxed):
    dtype = property(lambda self: ForeignDtype(str(self.a.dtype)))


@pytest.mark.parametrize("repeat", [1, 2])   # the second round takes the fast path (dtype seen before)
def test_other_array_types_are_classified_by_dtype_name(repeat, monkeypatch):
    from sapient_core import validate
    monkeypatch.setattr(validate, "_ARRAY_TYPES", validate._ARRAY_TYPES | {Foreign})   # as a backend registers it
    x, w, eps = valid_args("rms_norm")
    for _ in range(repeat):
        validate.check_rms_norm(Foreign(x), Foreign(w), eps)
        validate.check_rms_norm(Foreign(x.astype(np.float16)), Foreign(w), eps)
        validate.check_gqa_attention(*(Foreign(a) for a in valid_args("gqa_attention")[:3]), 2, True)
        with pytest.raises(DTypeError, match=r"^rms_norm: weight has dtype foreign\.core\.int32; accepted: float32, "
                                             r"float16, bfloat16 \(computed in float32\)"):
            validate.check_rms_norm(Foreign(x), Foreign(w.astype(np.int32)), eps)
        with pytest.raises(ShapeError, match=r"^rms_norm: weight must have shape \(8,\)"):
            validate.check_rms_norm(Foreign(x), Foreign(w[:4]), eps)
    assert ForeignDtype("float32") in validate._F32S and ForeignDtype("float16") not in validate._F32S


def test_only_real_arrays_are_accepted_the_same_way_on_every_backend():
    """An object with .shape and .dtype is not an array unless a backend's own type; masked arrays are refused
    (their mask would be ignored); numpy.memmap (weights loaded with mmap_mode) is accepted."""
    x, w, eps = valid_args("rms_norm")
    cpu = Registry(entry_points=lambda: []).get_backend("cpu")
    plugin = delegating_plugin()
    fake = backend_of(plugin)
    for b in (cpu, fake):
        with pytest.raises(DTypeError, match=r"^rms_norm: x must be an array \(NumPy or the backend's array type\), "
                                             r"got Foreign \(x \(2, 3, 8\), weight \(8,\)\)$"):
            b.rms_norm(Foreign(x), w, eps)
        with pytest.raises(DTypeError, match=r"^rms_norm: x is a masked array, whose mask the op would ignore"):
            b.rms_norm(np.ma.masked_array(x), w, eps)
    assert plugin.calls == [] and fake.stats().ops["rms_norm"].calls == 0


def test_memmap_weights_are_arrays(tmp_path):
    x, w, eps = valid_args("rms_norm")
    np.save(tmp_path / "w.npy", w)
    mm = np.load(tmp_path / "w.npy", mmap_mode="r")
    assert type(mm) is np.memmap
    assert_same(Registry(entry_points=lambda: []).get_backend("cpu").rms_norm(x, mm, eps), kernels.rms_norm(x, w, eps))


@pytest.mark.parametrize("value, message", [(float("inf"), "must be finite, got inf"),
                                            (float("-inf"), "must be finite, got -inf"),
                                            (float("nan"), "must not be NaN")])
def test_non_finite_scalars_are_refused(value, message):
    b = Registry(entry_points=lambda: []).get_backend("cpu")
    x4 = valid_args("apply_rope_positions")[0]
    with pytest.raises(ArgumentError, match=rf"^apply_rope_positions: base {message}$") as exc:
        b.apply_rope_positions(x4, [0, 1, 2], value)
    assert (exc.value.op, exc.value.arg) == ("apply_rope_positions", "base")
    with pytest.raises(ArgumentError, match=rf"^rms_norm: eps {message}$"):
        b.rms_norm(*valid_args("rms_norm")[:2], value)


# --- contract v2: plugins written for v1 keep working and are never silently wrong -----------------------

def v1_plugin():
    """A plugin as written for hook API 1: its hooks do not take the v2 arguments."""
    calls = []

    def attention(q, k, v, n_kv_heads, causal):
        calls.append("gqa_attention")
        return kernels.gqa_attention(q, k, v, n_kv_heads, causal, None, None, None, None)

    def logits(hidden, lm_head):
        calls.append("logits_from_hidden")
        return kernels.logits_from_hidden(hidden, lm_head, None)

    def rope(x, positions, base):
        calls.append("apply_rope_positions")
        return kernels.apply_rope_positions(x, positions, base)

    plugin = namespace_plugin(caps_dict(api_version=1),
                              gqa_attention=op_function("gqa_attention", attention, ["q", "k", "v", "n_kv_heads", "causal"]),
                              logits_from_hidden=op_function("logits_from_hidden", logits, ["hidden", "lm_head"]),
                              apply_rope_positions=op_function("apply_rope_positions", rope, ["x", "positions", "base"]))
    plugin.calls = calls
    return plugin


def test_a_v1_plugin_runs_v1_calls_and_never_sees_a_v2_argument(caplog):
    plugin = v1_plugin()
    b = backend_of(plugin, name="old", strict=True)             # routing is not a failure, even when strict
    q, k, v, kvh, causal = valid_args("gqa_attention")[:5]
    assert_same(b.gqa_attention(q, k, v, kvh, causal), kernels.gqa_attention(q, k, v, kvh, causal, None, None, None, None))
    assert plugin.calls == ["gqa_attention"]
    mask = np.ones((2, 5), bool)
    mask[1, :2] = False
    with caplog.at_level(logging.WARNING, logger="sapient_core"):
        for _ in range(3):
            got = b.gqa_attention(q, k, v, kvh, causal, None, 2, None, mask)
        logits = b.logits_from_hidden(*valid_args("logits_from_hidden")[:2], 30.0)
        x4 = valid_args("apply_rope_positions")[0]
        rope = b.apply_rope_positions(x4, np.array([[0, 1, 2], [5, 6, 7]]), 10000.0)
        b.apply_rope_positions(x4, np.array([0, 1, 2]), 10000.0)
    assert_same(got, kernels.gqa_attention(q, k, v, kvh, causal, None, 2, None, mask))
    assert_same(logits, kernels.logits_from_hidden(*valid_args("logits_from_hidden")[:2], 30.0))
    assert_same(rope, kernels.apply_rope_positions(x4, np.array([[0, 1, 2], [5, 6, 7]]), 10000.0))
    assert plugin.calls == ["gqa_attention", "apply_rope_positions"]      # only the v1 calls reached it
    st = b.stats().ops
    assert (st["gqa_attention"].calls, st["gqa_attention"].routed, st["gqa_attention"].fallbacks) == (4, 3, 0)
    assert st["gqa_attention"].routed_reasons == {
        "old's gqa_attention('q', 'k', 'v', 'n_kv_heads', 'causal') does not take 'sliding_window' (added in hook "
        "API 2), which this call sets": 3}
    assert st["logits_from_hidden"].routed == 1 and st["apply_rope_positions"].routed == 1
    assert st["apply_rope_positions"].routed_reasons == {
        "old was built for hook API 1, whose apply_rope_positions takes (S,) positions only, and this call passes "
        "(B, S) positions": 1}
    logged = sapient_warnings(caplog)
    assert len([m for m in logged if "sliding_window" in m]) == 1            # one log line per reason
    assert len(logged) == 3
    assert b.capabilities.api_version == 1 and st["embedding"].implemented_by == "cpu"


@pytest.mark.parametrize("call, error, message", [
    (lambda b, a: b.gqa_attention(*a[:5], None, 0), ArgumentError,
     r"^gqa_attention: sliding_window must be >= 1 \(the number of keys a query sees, itself included\), got 0$"),
    (lambda b, a: b.gqa_attention(*a[:4], False, None, 3), ArgumentError,
     r"^gqa_attention: sliding_window=3 needs causal=True"),
    (lambda b, a: b.gqa_attention(*a[:5], None, 2.0), DTypeError, r"^gqa_attention: sliding_window must be an int or None, "
     r"got float 2\.0$"),
    (lambda b, a: b.gqa_attention(*a[:5], None, True), DTypeError, r"^gqa_attention: sliding_window must be an int"),
    (lambda b, a: b.gqa_attention(*a[:5], None, None, 0.0), ArgumentError, r"^gqa_attention: softcap must be > 0, got 0\.0$"),
    (lambda b, a: b.gqa_attention(*a[:5], float("inf")), ArgumentError, r"^gqa_attention: scale must be finite, got inf$"),
    (lambda b, a: b.gqa_attention(*a[:5], None, None, None, [[True] * 5] * 2), DTypeError,
     r"^gqa_attention: kv_mask must be a bool array of shape \(B, Sk\) or None, got list"),
    (lambda b, a: b.logits_from_hidden(*valid_args("logits_from_hidden")[:2], -1.0), ArgumentError,
     r"^logits_from_hidden: softcap must be > 0, got -1\.0$"),
    (lambda b, a: b.apply_rope(valid_args("apply_rope")[0], [0, 1, 2], np.ones(2, np.float32), 0.0), ArgumentError,
     r"^apply_rope: attention_scaling must be > 0, got 0\.0$"),
    (lambda b, a: b.embedding(np.array([[0, -3]]), np.zeros((4, 2), np.float32)), ArgumentError,
     r"^embedding: id -3 at \(0, 1\) is outside the vocabulary \[0, 4\) of table \(ids \(1, 2\), table \(4, 2\)\)$"),
    (lambda b, a: b.embedding(np.arange(100).reshape(2, 50) % 4 + np.eye(2, 50, 7, dtype=int) * 5,   # > 64 ids
                              np.zeros((4, 2), np.float32)), ArgumentError,
     r"^embedding: id 8 at \(0, 7\) is outside the vocabulary \[0, 4\) of table \(ids \(2, 50\), table \(4, 2\)\)$"),
    (lambda b, a: b.embedding(np.full((3, 40), 3, np.uint8) - np.eye(3, 40, 2, dtype=np.uint8) * 3,
                              np.zeros((3, 2), np.float32)), ArgumentError,
     r"^embedding: id 3 at \(0, 0\) is outside the vocabulary \[0, 3\) of table \(ids \(3, 40\), table \(3, 2\)\)$"),
    (lambda b, a: b.embedding(np.array([[0.0]]), np.zeros((4, 2), np.float32)), DTypeError,
     r"^embedding: ids must have an integer dtype, got float64"),
    (lambda b, a: b.embedding(np.array([[1, 4]]), np.zeros((4, 2), np.float32)), ArgumentError,   # the fast path's
     r"^embedding: id 4 at \(0, 1\) is outside the vocabulary \[0, 4\) of table \(ids \(1, 2\), table \(4, 2\)\)$"),
    (lambda b, a: b.embedding(np.array([[True]]), np.zeros((4, 2), np.float32)), DTypeError,      # upper bound; bool
     r"^embedding: ids must have an integer dtype, got bool"),
    (lambda b, a: b.embedding(np.array([1, 2]), np.zeros((4, 2), np.float32)), ShapeError,
     r"^embedding: ids must be 2-D \(B, S\), got 1-D"),
])
def test_v2_validation_messages_are_the_same_everywhere(call, error, message):
    a = valid_args("gqa_attention")
    plugin = delegating_plugin()
    raised = []
    for b in (Registry(entry_points=lambda: []).get_backend("cpu"), backend_of(plugin), backend_of(v1_plugin(), "old")):
        with pytest.raises(error, match=message) as exc:
            call(b, a)
        raised.append(str(exc.value))
        assert all(s.calls == 0 for s in b.stats().ops.values())
    assert len(set(raised)) == 1 and plugin.calls == []


def test_a_fallback_that_cannot_read_its_inputs_says_both_errors():
    """A lazy device whose failed evaluation also holds the op's inputs: the fallback cannot convert them."""
    def to_numpy(x):
        raise RuntimeError("the device lost the input's buffer")

    plugin = namespace_plugin(caps_dict(), backend_to_numpy=to_numpy, backend_from_numpy=lambda x: Boxed(x),
                              silu=lambda x: (_ for _ in ()).throw(MemoryError("out of device memory")))
    b = backend_of(plugin)
    with pytest.raises(BackendOpError, match=r"^fake\.silu failed \(MemoryError: out of device memory\), and the CPU "
                                             r"reference could not take over: RuntimeError: the device lost the "
                                             r"input's buffer$") as exc:
        b.silu(Boxed(valid_args("silu")[0]))
    assert isinstance(exc.value.__cause__, RuntimeError) and exc.value.op == "silu"
    assert b.stats().ops["silu"].fallbacks == 1


@pytest.mark.parametrize("raised, strict", [(SystemExit(3), False), (SystemExit(3), True), (GeneratorExit(), False)])
def test_an_op_that_raises_a_base_exception_is_the_plugins_failure(raised, strict):
    def silu(x):
        raise raised
    b = backend_of(namespace_plugin(caps_dict(), silu=op_function("silu", silu)), name="exits", strict=strict)
    x = valid_args("silu")[0]
    if strict:
        with pytest.raises(BackendOpError, match=r"^exits\.silu failed \(SystemExit: 3\) and strict mode is on"):
            b.silu(x)
    else:
        assert_same(b.silu(x), kernels.silu(x))
        assert b.stats().ops["silu"].fallbacks == 1


def test_ctrl_c_in_an_op_reaches_the_user_and_is_not_a_fallback():
    def silu(x):
        raise KeyboardInterrupt
    b = backend_of(namespace_plugin(caps_dict(), silu=op_function("silu", silu)))
    with pytest.raises(KeyboardInterrupt):
        b.silu(valid_args("silu")[0])
    assert b.stats().ops["silu"].fallbacks == 0
