"""SPEC §3: discovery, broken plugins, the allow-list variables, in-process registration.

Every broken-plugin case is a real installed distribution (see tests/helpers/fakeplugins.py) beside a
good one: the broken one is recorded with its reason, a PluginWarning is issued, it shows in
list_backends(), and the good one and the CPU reference keep working.
"""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest

import sapient_core
from sapient_core import (BackendNotFoundError, BackendOpError, BackendUnavailableError, IncompatiblePluginError,
                          PluginLoadError, PluginValidationError, PluginWarning)
from sapient_core.registry import Registry

from helpers.broken_plugins import BROKEN, MOD
from helpers.fakeplugins import Boxed, FakeEntryPoint, caps_dict, namespace_plugin, plugin_source


@pytest.mark.parametrize("source, error_type, message", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_plugin_is_recorded_and_skipped(fake_site, source, error_type, message):
    fake_site.add_plugin("bad", source, version="0.3")
    fake_site.add_plugin("good", device="metal", priority=1, ops=["silu"])
    reg = fake_site.registry()
    with pytest.warns(PluginWarning, match=rf"^plugin 'bad'.*{message}.*; the plugin is skipped and the others "
                                           rf"keep working$"):
        infos = {i.name: i for i in reg.list_backends()}
    bad = infos["bad"]
    assert bad.status == "broken" and bad.distribution == "fake-bad" and bad.version == "0.3"
    assert bad.target == MOD and bad.capabilities is None and bad.device is None
    assert type(bad.error) is error_type and bad.error.plugin == "bad"
    assert bad.reason == str(bad.error)
    assert bad.reason.startswith("plugin 'bad'") and re.search(message, bad.reason)
    assert bad.model_dump(mode="json")["error"] == error_type.__name__
    # the others keep working
    assert infos["good"].status == "available" and infos["cpu"].status == "available"
    assert reg.get_backend("auto").name == "good"
    x = np.linspace(-3, 3, 12, dtype=np.float32)
    np.testing.assert_array_equal(reg.get_backend("good").silu(x), reg.get_backend("cpu").silu(x))
    with pytest.raises(BackendUnavailableError, match=r"^backend 'bad' is installed but broken: plugin 'bad'.*\. "
                       r"`sapient-backends list` shows every plugin's status; get_backend\('auto'\) uses the ones "
                       r"that work$") as exc:
        reg.get_backend("bad")
    assert exc.value.kind == "bad" and exc.value.reasons == {"bad": bad.reason}


def test_a_broken_plugin_warns_once_and_is_not_imported_again(fake_site):
    fake_site.add_plugin("bad", plugin_source(header="raise RuntimeError('boom')"))
    reg = fake_site.registry()
    with pytest.warns(PluginWarning, match="boom") as record:
        reg.list_backends()
        reg.list_backends()
        reg.explain("auto")
    assert len([w for w in record if issubclass(w.category, PluginWarning)]) == 1


def test_broken_reason_keeps_the_original_exception_as_cause(fake_site):
    fake_site.add_plugin("bad", plugin_source(header="raise KeyError('cuda_home')"))
    with pytest.warns(PluginWarning):
        info = next(i for i in fake_site.registry().list_backends() if i.name == "bad")
    assert isinstance(info.error.__cause__, KeyError)


# --- entry-point names -------------------------------------------------------------------------------------

def contested(site):
    site.add_dist("fake-alpha", entry_points={"dup": "sapient_fake_alpha"},
                  modules={"sapient_fake_alpha": plugin_source(device="metal", priority=1)})
    site.add_dist("fake-beta", entry_points={"dup": "sapient_fake_beta"},
                  modules={"sapient_fake_beta": plugin_source(device="cuda", priority=1)})
    return site.registry()


def test_a_name_two_distributions_claim_is_refused_for_both(fake_site):
    reg = contested(fake_site)
    message = (r"^backend name 'dup' is claimed by 2 distributions: fake-alpha \(sapient_fake_alpha\) and fake-beta "
               r"\(sapient_fake_beta\); none of them is used, since any could be an impostor\. To remedy this, "
               r"uninstall all but one, or pick one with SAPIENT_PLUGINS=dup@fake-alpha$")
    with pytest.warns(PluginWarning, match=message) as record:
        infos = reg.list_backends()
    assert len([w for w in record if issubclass(w.category, PluginWarning)]) == 1      # one warning per conflict
    dups = [i for i in infos if i.name == "dup"]
    assert [(i.status, i.distribution) for i in dups] == [("broken", "fake-alpha"), ("broken", "fake-beta")]
    assert all(re.search(message, i.reason) for i in dups)
    assert reg.get_backend("auto").name == "cpu"
    with pytest.raises(BackendUnavailableError, match=r"^backend 'dup' is installed but broken: backend name 'dup' is "
                                                      r"claimed by 2 distributions"):
        reg.get_backend("dup")
    assert "sapient_fake_alpha" not in sys.modules and "sapient_fake_beta" not in sys.modules   # no code ran


@pytest.mark.parametrize("pick, picked, device, other", [("fake-beta", "fake-beta", "cuda", "fake-alpha"),
                                                           ("Fake_Alpha", "fake-alpha", "metal", "fake-beta")])
def test_the_user_picks_one_of_two_claimants_with_name_at_distribution(fake_site, monkeypatch, pick, picked, device,
                                                                        other):
    monkeypatch.setenv("SAPIENT_PLUGINS", f"dup@{pick}")
    reg = contested(fake_site)
    infos = no_plugin_warnings(lambda: reg.list_backends())
    dups = {i.distribution: i for i in infos if i.name == "dup"}
    assert (dups[picked].status, dups[other].status) == ("available", "disabled")
    assert dups[other].reason == f"SAPIENT_PLUGINS='dup@{pick}' picks {picked}'s 'dup', not {other}'s"
    assert reg.get_backend("dup").device == device and reg.get_backend("auto").name == "dup"
    assert f"sapient_fake_{other.split('-')[1]}" not in sys.modules


def official_mlx(site, marker):
    """A stand-in for the real sapient-backend-mlx (same distribution name), and an impostor sorted before it."""
    site.add_dist("sapient-backend-mlx", entry_points={"mlx": "sapient_fake_official_mlx"},
                  modules={"sapient_fake_official_mlx": plugin_source(device="metal", priority=100)})
    site.add_dist("aaa-impostor", entry_points={"mlx": "sapient_fake_impostor_mlx"},
                  modules={"sapient_fake_impostor_mlx": plugin_source(
                      header=f"open({str(marker)!r}, 'a').write('impostor ran')", device="metal", priority=10 ** 6)})
    return site.registry()


@pytest.mark.parametrize("allow", [None, "mlx", "cpu,mlx"])
def test_the_name_mlx_belongs_to_sapient_backend_mlx(fake_site, tmp_path, monkeypatch, allow):
    if allow is not None:
        monkeypatch.setenv("SAPIENT_PLUGINS", allow)
    marker = tmp_path / "impostor-ran"
    reg = official_mlx(fake_site, marker)
    with pytest.warns(PluginWarning, match=r"^entry-point name 'mlx' \(from aaa-impostor, sapient_fake_impostor_mlx\) "
                                           r"is reserved for the official backend \(sapient-backend-mlx\)\. To remedy "
                                           r"this, rename the entry point$"):
        infos = reg.list_backends()
    assert sorted((i.status, i.distribution) for i in infos if i.name == "mlx") == [
        ("available", "sapient-backend-mlx"), ("broken", "aaa-impostor")]
    assert reg.get_backend("mlx").capabilities.distribution == "sapient-backend-mlx"
    assert reg.get_backend("auto").name == "mlx" and reg.get_backend("auto").capabilities.priority == 100
    assert not marker.exists() and "sapient_fake_impostor_mlx" not in sys.modules


def test_an_impostor_mlx_is_refused_even_when_the_real_one_is_not_installed(fake_site, tmp_path):
    marker = tmp_path / "impostor-ran"
    fake_site.add_dist("aaa-impostor", entry_points={"mlx": "sapient_fake_impostor_mlx"},
                       modules={"sapient_fake_impostor_mlx": plugin_source(
                           header=f"open({str(marker)!r}, 'a').write('impostor ran')", device="metal")})
    reg = fake_site.registry()
    with pytest.warns(PluginWarning, match=r"is reserved for the official backend \(sapient-backend-mlx\)"):
        with pytest.raises(BackendNotFoundError, match=r"^no backend named 'mlx' is installed \(installed: 'cpu'\)\. "
                                                       r"To get it: pip install sapient-backend-mlx"):
            reg.get_backend("mlx")
    assert reg.get_backend("auto").name == "cpu" and not marker.exists()


def test_register_refuses_the_official_names():
    reg = Registry(entry_points=lambda: [])
    with pytest.raises(PluginValidationError, match=r"^register: 'mlx' is reserved for sapient-backend-mlx\. To "
                                                    r"remedy this, register it under another name$"):
        reg.register(namespace_plugin(caps_dict()), "mlx")


def test_entry_point_named_cpu_from_another_distribution_is_refused(fake_site):
    fake_site.add_dist("fake-impostor", entry_points={"cpu": "sapient_fake_impostor"},
                       modules={"sapient_fake_impostor": plugin_source(device="cpu", ops=["silu"])})
    reg = fake_site.registry()
    with pytest.warns(PluginWarning, match=r"^entry-point name 'cpu' \(from fake-impostor, sapient_fake_impostor\) is "
                                           r"reserved for the CPU reference \(sapient-backend-cpu\)\. To remedy this, "
                                           r"rename the entry point$"):
        infos = reg.list_backends()
    assert [(i.status, i.distribution) for i in infos if i.name == "cpu"] == [
        ("available", "sapient-backend-cpu"), ("broken", "fake-impostor")]
    b = reg.get_backend("cpu")
    assert b.capabilities.distribution == "sapient-backend-cpu"
    assert "sapient_fake_impostor" not in sys.modules


@pytest.mark.parametrize("name", ["Fake-GPU", "auto", "9lives", "has space"])
def test_invalid_entry_point_names_are_refused(fake_site, name):
    fake_site.add_dist("fake-oddname", entry_points={name: "sapient_fake_oddname"},
                       modules={"sapient_fake_oddname": plugin_source(device="metal")})
    reg = fake_site.registry()
    with pytest.warns(PluginWarning, match=rf"^entry-point name '{name}' \(from fake-oddname\) is not a valid backend "
                                           rf"name: use a lowercase identifier other than 'auto'$"):
        infos = reg.list_backends()
    assert [i.status for i in infos if i.name == name] == ["broken"]
    assert reg.get_backend("auto").name == "cpu"
    assert "sapient_fake_oddname" not in sys.modules


def test_unreadable_entry_points_leave_the_cpu_reference(caplog):
    def explode():
        raise OSError("corrupt metadata")
    reg = Registry(entry_points=explode)
    assert reg.get_backend("auto").name == "cpu"
    assert "reading the entry points of sapient_core.backends failed: OSError('corrupt metadata')" in caplog.text


# --- lazy loading and the allow-list -------------------------------------------------------------------------

@pytest.fixture
def spied(fake_site, tmp_path):
    """'spy' writes a marker file when imported; 'bomb' raises when imported."""
    marker = tmp_path / "spy-imported"
    fake_site.add_plugin("spy", header=f"open({str(marker)!r}, 'a').write('imported\\n')", device="metal",
                         priority=3)
    fake_site.add_plugin("bomb", header="raise RuntimeError('bomb went off at import')")
    return fake_site, marker


def no_plugin_warnings(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn()
    assert [str(w.message) for w in record if issubclass(w.category, PluginWarning)] == []
    return result


def test_plugins_load_lazily(spied):
    site, marker = spied
    reg = site.registry()
    assert reg.get_backend("cpu").name == "cpu"          # needs only the reference
    assert not marker.exists() and "sapient_fake_spy" not in sys.modules
    assert reg.get_backend("spy").name == "spy"           # needs only spy
    assert marker.read_text() == "imported\n" and "sapient_fake_bomb" not in sys.modules
    with pytest.warns(PluginWarning, match="bomb went off at import"):
        assert reg.get_backend("auto").name == "spy"      # needs them all


def test_sapient_plugins_empty_means_only_cpu_and_disabled_code_never_runs(spied, monkeypatch):
    site, marker = spied
    monkeypatch.setenv("SAPIENT_PLUGINS", "")
    reg = site.registry()
    infos = no_plugin_warnings(lambda: {i.name: i for i in reg.list_backends()})
    assert {n: i.status for n, i in infos.items()} == {"cpu": "available", "spy": "disabled", "bomb": "disabled"}
    assert infos["spy"].reason == ("not in SAPIENT_PLUGINS=''. To use it, add it to SAPIENT_PLUGINS (or unset "
                                   "SAPIENT_PLUGINS)")
    assert not marker.exists() and "sapient_fake_spy" not in sys.modules and "sapient_fake_bomb" not in sys.modules
    assert reg.get_backend("auto").name == "cpu"
    with pytest.raises(BackendUnavailableError, match=r"^backend 'spy' is installed but not loaded: not in "
                       r"SAPIENT_PLUGINS=''\. To use it, add it to SAPIENT_PLUGINS"):
        reg.get_backend("spy")
    assert not marker.exists()


def test_sapient_plugins_lists_the_allowed_ones(spied, monkeypatch):
    site, marker = spied
    monkeypatch.setenv("SAPIENT_PLUGINS", " Spy , cpu ")
    reg = site.registry()
    infos = no_plugin_warnings(lambda: {i.name: i.status for i in reg.list_backends()})
    assert infos == {"cpu": "available", "spy": "available", "bomb": "disabled"}
    assert marker.exists() and "sapient_fake_bomb" not in sys.modules
    assert reg.get_backend("auto").name == "spy"


def test_sapient_plugins_without_cpu_still_loads_the_reference(spied, monkeypatch):
    site, _ = spied
    monkeypatch.setenv("SAPIENT_PLUGINS", "spy")
    reg = site.registry()
    assert {i.name: i.status for i in reg.list_backends()} == {"cpu": "available", "spy": "available",
                                                               "bomb": "disabled"}


def test_sapient_plugins_unset_means_all(spied):
    site, marker = spied
    with pytest.warns(PluginWarning, match="bomb went off"):
        infos = {i.name: i.status for i in site.registry().list_backends()}
    assert infos == {"cpu": "available", "spy": "available", "bomb": "broken"}


def test_disable_autoload_loads_only_the_cpu_reference(spied, monkeypatch):
    site, marker = spied
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("SAPIENT_PLUGINS", "spy,bomb")    # the disable switch wins
    reg = site.registry()
    infos = no_plugin_warnings(lambda: {i.name: i for i in reg.list_backends()})
    assert {n: i.status for n, i in infos.items()} == {"cpu": "available", "spy": "disabled", "bomb": "disabled"}
    assert infos["spy"].reason == ("SAPIENT_DISABLE_PLUGIN_AUTOLOAD=1 loads only the CPU reference. To use it, "
                                   "unset SAPIENT_DISABLE_PLUGIN_AUTOLOAD")
    assert not marker.exists()
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "0")
    monkeypatch.delenv("SAPIENT_PLUGINS")
    reg.refresh()
    assert no_plugin_warnings(lambda: reg.get_backend("spy")).name == "spy"


def test_the_variables_are_read_when_discovery_runs(spied, monkeypatch):
    site, marker = spied
    reg = site.registry()                                 # created before the variable is set
    monkeypatch.setenv("SAPIENT_PLUGINS", "")
    assert no_plugin_warnings(lambda: [i.status for i in reg.list_backends() if i.name == "spy"]) == ["disabled"]
    monkeypatch.delenv("SAPIENT_PLUGINS")                 # discovery already ran: no change ...
    assert [i.status for i in reg.list_backends() if i.name == "spy"] == ["disabled"]
    reg.refresh()                                         # ... until refresh()
    with pytest.warns(PluginWarning, match="bomb"):
        assert [i.status for i in reg.list_backends() if i.name == "spy"] == ["available"]
    assert marker.exists()


def test_module_level_refresh_rereads_the_environment(spied, monkeypatch, use_registry):
    site, marker = spied
    use_registry(site.registry())
    monkeypatch.setenv("SAPIENT_PLUGINS", "")
    assert sapient_core.get_backend("auto").name == "cpu"
    monkeypatch.setenv("SAPIENT_PLUGINS", "spy")
    sapient_core.refresh()
    assert sapient_core.get_backend("auto").name == "spy"


# --- unit level: the entry-point function replaced -----------------------------------------------------------

def test_registry_reads_the_entry_point_function_it_was_given():
    ep = FakeEntryPoint("unit", namespace_plugin(caps_dict(device="metal", priority=7)), dist="fake-unit")
    reg = Registry(entry_points=lambda: [ep])
    assert ep.loads == 0                                  # nothing is loaded before a call needs it
    b = reg.get_backend("metal")
    assert (b.name, b.capabilities.distribution, b.capabilities.version) == ("unit", "fake-unit", "0.1")
    reg.list_backends()
    assert ep.loads == 1                                  # loaded once


def test_entry_point_without_distribution_metadata():
    ep = FakeEntryPoint("nodist", namespace_plugin(caps_dict(device="metal")), dist="")
    info = next(i for i in Registry(entry_points=lambda: [ep]).list_backends() if i.name == "nodist")
    assert (info.status, info.distribution, info.version) == ("available", "", "0")


# --- in-process registration ---------------------------------------------------------------------------------

def silu_plus_one(x):
    return np.asarray(x) + np.float32(1)


def test_register_in_process(monkeypatch):
    monkeypatch.setenv("SAPIENT_PLUGINS", "")             # explicit registration is not subject to the allow-list
    reg = Registry(entry_points=lambda: [])
    plugin = namespace_plugin(caps_dict(device="metal", priority=5), silu=silu_plus_one)
    reg.register(plugin, "mine")
    b = reg.get_backend("auto")
    assert (b.name, b.implemented_ops) == ("mine", ("silu",))
    np.testing.assert_array_equal(b.silu(np.zeros(3, np.float32)), np.ones(3, np.float32))
    info = next(i for i in reg.list_backends() if i.name == "mine")
    assert (info.source, info.status, info.distribution) == ("in-process", "available", "")
    reg.refresh()                                         # refresh keeps in-process plugins
    assert reg.get_backend("mine").name == "mine"
    reg.unregister("mine")
    with pytest.raises(BackendNotFoundError, match="^unknown backend kind 'mine'"):
        reg.get_backend("mine")
    assert reg.get_backend("auto").name == "cpu"


def test_register_validates_the_plugin():
    reg = Registry(entry_points=lambda: [])
    typo = namespace_plugin(caps_dict(), rms_norn=lambda x, weight, eps: x)
    with pytest.raises(PluginValidationError, match=r"^plugin 'mine': 'rms_norn' is marked @hookimpl but no hook spec "
                                                    r"has that name \(did you mean 'rms_norm'\?\)") as exc:
        reg.register(typo, "mine")
    assert exc.value.plugin == "mine"
    with pytest.raises(IncompatiblePluginError, match=r"hook API version 7.*pip install --upgrade sapient-core"):
        reg.register(namespace_plugin(caps_dict(api_version=7)), "mine")
    with pytest.raises(PluginLoadError, match=r"^plugin 'mine': backend_capabilities\(\) raised ZeroDivisionError"):
        reg.register(namespace_plugin(None, backend_capabilities=lambda: 1 / 0), "mine")
    assert [i.name for i in reg.list_backends()] == ["cpu"]   # nothing half-registered
    reg.register(namespace_plugin(caps_dict()), "mine")        # the name is still free
    assert reg.get_backend("mine").name == "mine"


@pytest.mark.parametrize("name", ["cpu", "auto", "Mine", "my-plugin", "", 3])
def test_register_refuses_reserved_and_invalid_names(name):
    reg = Registry(entry_points=lambda: [])
    with pytest.raises(PluginValidationError, match=rf"^register: {name!r} is not a valid backend name \(a lowercase "
                                                    rf"identifier other than 'auto' and 'cpu'\)$"):
        reg.register(namespace_plugin(caps_dict()), name)


def test_register_refuses_a_taken_name_and_unregister_only_in_process(fake_site):
    fake_site.add_plugin("gpu", device="metal")
    reg = fake_site.registry()
    with pytest.raises(PluginValidationError, match=r"^register: a backend named 'gpu' is already registered "
                                                    r"\(sapient_fake_gpu\); unregister it first$"):
        reg.register(namespace_plugin(caps_dict()), "gpu")
    with pytest.raises(BackendNotFoundError, match=r"^unregister: no in-process backend named 'gpu'$") as exc:
        reg.unregister("gpu")
    assert set(exc.value.installed) == {"cpu", "gpu"}


def test_register_backend_module_functions(use_registry):
    reg = use_registry(Registry(entry_points=lambda: []))
    sapient_core.register_backend(namespace_plugin(caps_dict(device="metal"), silu=silu_plus_one), "mine")
    assert sapient_core.get_backend("metal").name == "mine"
    assert reg.get_backend("mine") is sapient_core.get_backend("mine")
    sapient_core.unregister_backend("mine")
    assert [i.name for i in sapient_core.list_backends()] == ["cpu"]


def test_default_registry_is_created_once(monkeypatch):
    monkeypatch.setattr(sapient_core, "_registry", None)
    first = sapient_core.default_registry()
    assert isinstance(first, Registry) and sapient_core.default_registry() is first


def test_a_plugin_warning_points_at_the_callers_line_not_into_the_library(fake_site):
    fake_site.add_plugin("bad", plugin_source(header="raise RuntimeError('boom')"))
    reg = fake_site.registry()
    with pytest.warns(PluginWarning, match="boom") as record:
        reg.list_backends()                                # the line the warning must point at
    warning = next(w for w in record if issubclass(w.category, PluginWarning))
    assert warning.filename == __file__, warning.filename
    fake_site.add_plugin("bad", dist="fake-bad-again")
    with pytest.warns(PluginWarning, match="backend name 'bad' is claimed by 2 distributions") as record:
        fake_site.registry().get_backend("cpu")            # discovery runs here, deep inside the library
    assert [w.filename for w in record if issubclass(w.category, PluginWarning)] == [__file__]


def test_an_explanation_that_fails_carries_the_exception_get_backend_raises():
    reg = Registry(entry_points=lambda: [])
    exp = reg.explain("nosuchkind")
    assert exp.chosen is None and isinstance(exp.exception, BackendNotFoundError)
    assert exp.error == str(exp.exception) and exp.exception.kind == "nosuchkind"
    assert "exception" not in exp.model_dump(mode="json")             # JSON shows the message, not the object
    with pytest.raises(BackendNotFoundError) as raised:
        reg.get_backend("nosuchkind")
    assert str(raised.value) == exp.error and raised.value.installed == ("cpu",)


# --- BaseException from a plugin: its fault, recorded; KeyboardInterrupt: the user's, once --------------------

EXITS = {name: next(case[1] for case in BROKEN if case[0] == name)          # StopIteration if one is renamed
         for name in ("import-exits", "import-base-exception", "caps-exit")}


@pytest.mark.parametrize("case", list(EXITS))
def test_a_base_exception_from_a_plugin_is_recorded_not_raised_again(fake_site, tmp_path, case, capsys,
                                                                      use_registry):
    from sapient_core import cli
    counter = tmp_path / "imports"
    fake_site.add_plugin("bad", f"open({str(counter)!r}, 'a').write('x')\n" + EXITS[case])
    fake_site.add_plugin("good", device="metal", priority=1)
    use_registry(fake_site.registry())
    with pytest.warns(PluginWarning, match=r"^plugin 'bad': .*(SystemExit: [34]|GPUPanic: the driver panicked)") as record:
        for _ in range(3):
            infos = {i.name: i for i in sapient_core.list_backends()}
            assert sapient_core.get_backend("auto").name == "good"
    assert len([w for w in record if issubclass(w.category, PluginWarning)]) == 1
    assert counter.read_text() == "x"                         # imported once, not again on every call
    assert infos["bad"].status == "broken" and isinstance(infos["bad"].error, PluginLoadError)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        assert cli.main(["list"]) == 0                        # not the plugin's exit status
        out = capsys.readouterr().out
        assert re.search(r"^bad \(broken\): plugin 'bad': .*(SystemExit: [34]|GPUPanic: the driver panicked)$", out, re.M)
        assert cli.main(["check", "--ops", "silu"]) == 1
        out = capsys.readouterr().out
        assert re.search(r"^bad: FAILED - broken: plugin 'bad': .*(SystemExit: [34]|GPUPanic: the driver panicked)$", out, re.M)
        assert out.endswith("result: FAILED\n")


def test_a_keyboard_interrupt_reaches_the_user_once_and_is_not_remembered(fake_site, tmp_path):
    flag = tmp_path / "interrupted-once"
    fake_site.add_plugin("slow", plugin_source(device="metal", header=(
        f"import os\nif not os.path.exists({str(flag)!r}):\n    open({str(flag)!r}, 'w').close()\n"
        f"    raise KeyboardInterrupt")))
    reg = fake_site.registry()
    with pytest.raises(KeyboardInterrupt):
        reg.list_backends()                                   # Ctrl-C during the plugin's import: the user's
    infos = no_plugin_warnings(lambda: {i.name: i for i in reg.list_backends()})
    assert infos["slow"].status == "available"                # tried again, not recorded as broken
    assert reg.get_backend("auto").name == "slow"


def test_a_keyboard_interrupt_in_the_capability_hook_propagates_and_leaves_nothing_registered(fake_site, tmp_path):
    flag = tmp_path / "interrupted-once"
    fake_site.add_plugin("slow", (
        "import os\nfrom sapient_core import hookimpl\n@hookimpl\ndef backend_capabilities():\n"
        f"    if not os.path.exists({str(flag)!r}):\n        open({str(flag)!r}, 'w').close()\n"
        "        raise KeyboardInterrupt\n"
        "    return {'api_version': 1, 'device': 'metal', 'available': True, 'thread_safe': True}\n"))
    reg = fake_site.registry()
    with pytest.raises(KeyboardInterrupt):
        reg.get_backend("slow")
    assert reg.get_backend("slow").device == "metal"


def test_memory_stats_and_conversion_hooks_that_raise_base_exceptions():
    def exit_now():
        raise SystemExit(7)

    def exit_on_x(x):
        raise SystemExit(7)

    plugin = namespace_plugin(caps_dict(device="metal"), backend_memory=exit_now, backend_stats=exit_now,
                              backend_to_numpy=exit_on_x, backend_from_numpy=lambda x: Boxed(x),
                              logits_from_hidden=lambda hidden, lm_head: Boxed(np.zeros((1, 2), np.float32)))
    reg = Registry(entry_points=lambda: [])
    reg.register(plugin, "exits")
    info = next(i for i in reg.list_backends() if i.name == "exits")
    assert info.memory.total_bytes is None and info.memory.reason == "backend_memory() raised SystemExit(7)"
    exp = reg.explain("auto", model_bytes=10)
    assert exp.chosen == "cpu" and "device memory unknown (backend_memory() raised SystemExit(7))" in str(exp)
    b = reg.get_backend("exits")
    assert b.stats().plugin == {"error": "backend_stats() raised SystemExit: 7"}
    with pytest.raises(BackendOpError, match=r"^exits\.backend_to_numpy\(\) raised SystemExit: 7; a plugin's hook must "
                                             r"not end the program, so it is reported as this error$") as exc:
        b.to_numpy(Boxed(np.ones(2, np.float32)))
    assert isinstance(exc.value.__cause__, SystemExit) and exc.value.op == "backend_to_numpy"
    # in an op whose result must be NumPy, the failed conversion is the op's failure: the CPU reference computes it
    hidden, head = np.ones((1, 3, 4), np.float32), np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(b.logits_from_hidden(hidden, head), np.full((1, 2), 4, np.float32))
    assert b.stats().ops["logits_from_hidden"].fallback_reasons == {
        "BackendOpError: exits.backend_to_numpy() raised SystemExit: 7; a plugin's hook must not end the program, so "
        "it is reported as this error": 1}
    with pytest.raises(BackendOpError, match=r"^exits\.logits_from_hidden failed \(BackendOpError: exits\."
                                             r"backend_to_numpy\(\) raised SystemExit: 7"):
        reg.get_backend("exits", strict=True).logits_from_hidden(hidden, head)


def test_stats_of_a_plugin_that_returns_no_dict():
    reg = Registry(entry_points=lambda: [])
    reg.register(namespace_plugin(caps_dict(), backend_stats=lambda: [1, 2]), "odd")
    assert reg.get_backend("odd").stats().plugin == {"error": "backend_stats() returned list [1, 2], not a dict"}


# --- a function named like a hook but not marked -------------------------------------------------------------

def test_a_function_named_like_a_hook_without_hookimpl_gets_a_hint(fake_site, use_registry, capsys):
    from sapient_core import cli
    fake_site.add_plugin("forgot", plugin_source(device="metal", ops=["silu"], extra=(
        "def rms_norm(x, weight, eps):\n    return x\n\n"
        "def backend_memory():\n    return {'total_bytes': 1, 'source': 'x'}\n\n"
        "from math import gamma as gelu   # imported, not defined here: not meant as the hook\n")))
    reg = use_registry(fake_site.registry())
    with pytest.warns(PluginWarning) as record:
        info = next(i for i in reg.list_backends() if i.name == "forgot")
    messages = [str(w.message) for w in record if issubclass(w.category, PluginWarning)]
    assert messages == [
        "plugin 'forgot': rms_norm() is named like a hook but not marked @hookimpl, so sapient_core never calls "
        "it (the CPU reference serves rms_norm). To remedy this, decorate it with @sapient_core.hookimpl",
        "plugin 'forgot': backend_memory() is named like a hook but not marked @hookimpl, so sapient_core never "
        "calls it (its default is used). To remedy this, decorate it with @sapient_core.hookimpl"]
    assert info.status == "available" and info.implemented_ops == ("silu",)
    assert list(info.notes) == [m.removeprefix("plugin 'forgot': ") for m in messages]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert ("forgot (available): note: rms_norm() is named like a hook but not marked @hookimpl, so sapient_core "
            "never calls it (the CPU reference serves rms_norm). To remedy this, decorate it with "
            "@sapient_core.hookimpl\n") in out
    assert no_plugin_warnings(lambda: reg.get_backend("cpu")).name == "cpu"     # the reference has no such hint


def test_the_shipped_plugins_have_no_unmarked_hooks():
    from sapient_core._plugin import unmarked_hooks
    import sapient_backend_cpu.plugin as cpu_plugin
    import sapient_backend_mlx.plugin as mlx_plugin         # importing it imports no MLX (cheap everywhere)
    assert unmarked_hooks(cpu_plugin, {}) == [] and unmarked_hooks(mlx_plugin, {}) == []
