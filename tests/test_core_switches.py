"""SPEC §3: the SAPIENT_* switches accept their documented spellings only; anything else, and allow-list
names that match nothing installed, give one SwitchWarning and are read the safe way.

Plugins are real installed distributions (tests/helpers/fakeplugins.py): 'spy' records its import in a
marker file, so "loaded" and "not loaded" are facts, not statuses.
"""

from __future__ import annotations

import re
import warnings

import pytest

from sapient_core import BackendOpError, BackendUnavailableError, SapientWarning, SwitchWarning
from sapient_core.registry import Registry

from helpers.fakeplugins import delegating_plugin, plugin_source

ACCEPTED = (r"1, true, yes, on \(on\) or 0, false, no, off \(off\), case-insensitive; an empty value means unset")


@pytest.fixture
def spy(fake_site, tmp_path):
    marker = tmp_path / "spy-imported"
    fake_site.add_plugin("spy", header=f"open({str(marker)!r}, 'a').write('imported')", device="metal", priority=3)
    return fake_site, marker


def switch_warnings(fn):
    """Run ``fn``; return its result and the SapientWarnings it issued (every one, not deduplicated)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn()
    return result, [w for w in record if issubclass(w.category, SapientWarning)]


@pytest.mark.parametrize("value", ["1", "true", "TRUE", " Yes ", "on", "On"])
def test_disable_autoload_accepts_the_true_spellings(spy, monkeypatch, value):
    site, marker = spy
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", value)
    reg = site.registry()
    infos, caught = switch_warnings(lambda: {i.name: i for i in reg.list_backends()})
    assert caught == [] and infos["spy"].status == "disabled" and not marker.exists()


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF", "", "  "])
def test_disable_autoload_accepts_the_false_spellings_and_empty(spy, monkeypatch, value):
    site, marker = spy
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", value)
    infos, caught = switch_warnings(lambda: {i.name: i for i in site.registry().list_backends()})
    assert caught == [] and infos["spy"].status == "available" and marker.exists()


@pytest.mark.parametrize("value", ["y", "2", "disable", "enabled", "1.0"])
def test_a_bad_autoload_value_warns_once_and_is_read_as_on(spy, monkeypatch, value):
    site, marker = spy
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", value)
    reg = site.registry()

    def calls():
        reg.list_backends()
        reg.get_backend("auto")
        return {i.name: i for i in reg.list_backends()}
    infos, caught = switch_warnings(calls)
    assert [type(w.message) for w in caught] == [SwitchWarning]
    assert re.fullmatch(rf"SAPIENT_DISABLE_PLUGIN_AUTOLOAD={re.escape(repr(value))} is not an accepted value: "
                        rf"SAPIENT_DISABLE_PLUGIN_AUTOLOAD accepts {ACCEPTED}\. It is read as on \(no plugin but the "
                        rf"CPU reference is loaded\)\. To remedy this, set SAPIENT_DISABLE_PLUGIN_AUTOLOAD=1 \(or "
                        rf"SAPIENT_DISABLE_PLUGIN_AUTOLOAD=0\), or unset it", str(caught[0].message))
    assert caught[0].filename == __file__                    # points at the caller's line
    assert infos["spy"].status == "disabled" and not marker.exists()
    assert infos["spy"].reason == (f"SAPIENT_DISABLE_PLUGIN_AUTOLOAD={value!r} (an unrecognised value, read as on) "
                                   f"loads only the CPU reference. To use it, unset SAPIENT_DISABLE_PLUGIN_AUTOLOAD")
    reg.refresh()                                            # a new discovery warns again (the value is still bad)
    assert len(switch_warnings(reg.list_backends)[1]) == 1


def test_with_autoload_off_the_remedy_is_to_unset_it_not_the_allow_list(spy, monkeypatch):
    site, _ = spy
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("SAPIENT_PLUGINS", "spy")
    with pytest.raises(BackendUnavailableError, match=r"^backend 'spy' is installed but not loaded: "
                                                      r"SAPIENT_DISABLE_PLUGIN_AUTOLOAD=1 loads only the CPU "
                                                      r"reference\. To use it, unset "
                                                      r"SAPIENT_DISABLE_PLUGIN_AUTOLOAD$") as exc:
        site.registry().get_backend("spy")
    assert "add it to SAPIENT_PLUGINS" not in str(exc.value)


def test_with_autoload_off_get_backend_mlx_says_to_unset_it(monkeypatch):
    """The real installed MLX plugin (the test environment installs it, as the README's command does)."""
    monkeypatch.setenv("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "1")
    with pytest.raises(BackendUnavailableError) as exc:
        Registry().get_backend("mlx")
    assert str(exc.value) == ("backend 'mlx' is installed but not loaded: SAPIENT_DISABLE_PLUGIN_AUTOLOAD=1 loads "
                              "only the CPU reference. To use it, unset SAPIENT_DISABLE_PLUGIN_AUTOLOAD")


# --- SAPIENT_STRICT ------------------------------------------------------------------------------------------

def failing_registry():
    def before(op, args):
        raise RuntimeError("kernel exploded")
    reg = Registry(entry_points=lambda: [])
    reg.register(delegating_plugin(ops=["silu"], before=before), "flaky")
    return reg


@pytest.mark.parametrize("value, strict", [("1", True), ("yes", True), ("ON", True), ("0", False), ("no", False),
                                           ("", False)])
def test_strict_accepts_the_documented_spellings(monkeypatch, value, strict):
    monkeypatch.setenv("SAPIENT_STRICT", value)
    backend, caught = switch_warnings(lambda: failing_registry().get_backend("flaky"))
    assert caught == [] and backend.strict is strict


@pytest.mark.parametrize("value", ["2", "strict", "y", "-1"])
def test_a_bad_strict_value_warns_once_and_is_read_as_on(monkeypatch, value):
    import numpy as np
    monkeypatch.setenv("SAPIENT_STRICT", value)
    reg = failing_registry()
    backends, caught = switch_warnings(lambda: [reg.get_backend("flaky"), reg.get_backend("flaky"),
                                                reg.get_backend("auto")])
    assert all(b.strict for b in backends)
    assert len(caught) == 1 and type(caught[0].message) is SwitchWarning
    assert str(caught[0].message) == (
        f"SAPIENT_STRICT={value!r} is not an accepted value: SAPIENT_STRICT accepts 1, true, yes, on (on) or 0, false, "
        f"no, off (off), case-insensitive; an empty value means unset. It is read as on (a failing op raises "
        f"BackendOpError instead of falling back). To remedy this, set SAPIENT_STRICT=1 (or SAPIENT_STRICT=0), or "
        f"unset it")
    with pytest.raises(BackendOpError, match="kernel exploded"):
        backends[0].silu(np.ones(3, np.float32))


# --- SAPIENT_PLUGINS ------------------------------------------------------------------------------------------

def test_an_allow_list_name_that_matches_nothing_warns_once_with_a_suggestion(spy, monkeypatch):
    site, marker = spy
    monkeypatch.setenv("SAPIENT_PLUGINS", "cpu,spz")
    reg = site.registry()
    infos, caught = switch_warnings(lambda: [reg.list_backends(), reg.get_backend("auto"), reg.list_backends()][0])
    assert len(caught) == 1 and type(caught[0].message) is SwitchWarning
    assert str(caught[0].message) == (
        "SAPIENT_PLUGINS='cpu,spz': 'spz' matches no installed plugin (did you mean 'spy'?). Installed plugins: "
        "'cpu', 'spy'. Those entries allow nothing: only the plugins it names that are installed are loaded (the CPU "
        "reference always is). To remedy this, correct the entries (NAME or NAME@DISTRIBUTION, comma-separated), or "
        "unset SAPIENT_PLUGINS to load every plugin")
    assert {i.name: i.status for i in infos} == {"cpu": "available", "spy": "disabled"} and not marker.exists()


def test_the_allow_list_pins_a_name_to_a_distribution(spy, monkeypatch):
    site, marker = spy
    monkeypatch.setenv("SAPIENT_PLUGINS", "spy@fake-spy")
    infos, caught = switch_warnings(lambda: {i.name: i for i in site.registry().list_backends()})
    assert caught == [] and infos["spy"].status == "available" and marker.exists()


def test_a_pin_to_another_distribution_disables_the_plugin_and_warns(spy, monkeypatch):
    site, marker = spy
    monkeypatch.setenv("SAPIENT_PLUGINS", "spy@sapient-backend-spy, bad@, 9x")
    reg = site.registry()
    infos, caught = switch_warnings(lambda: {i.name: i for i in reg.list_backends()})
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("SAPIENT_PLUGINS='spy@sapient-backend-spy, bad@, 9x': 'bad@' is not of the form NAME or "
                              "NAME@DISTRIBUTION; '9x' is not of the form NAME or NAME@DISTRIBUTION; "
                              "'spy@sapient-backend-spy': no installed distribution sapient-backend-spy declares 'spy' "
                              "(it comes from fake-spy). Installed plugins: 'cpu', 'spy'.")
    assert infos["spy"].status == "disabled" and not marker.exists()
    assert infos["spy"].reason == ("SAPIENT_PLUGINS='spy@sapient-backend-spy, bad@, 9x' asks for 'spy' from "
                                   "sapient-backend-spy, but the installed 'spy' comes from fake-spy. To use it, write "
                                   "spy@fake-spy (or spy) in SAPIENT_PLUGINS")


def test_allow_list_entries_that_exist_do_not_warn(spy, monkeypatch):
    site, _ = spy
    monkeypatch.setenv("SAPIENT_PLUGINS", " SPY , cpu,, cpu@sapient-backend-cpu")
    infos, caught = switch_warnings(lambda: {i.name: i.status for i in site.registry().list_backends()})
    assert caught == [] and infos == {"cpu": "available", "spy": "available"}


def test_switch_warning_is_a_sapient_warning_exported_at_the_top():
    import sapient_core
    assert issubclass(sapient_core.SwitchWarning, sapient_core.SapientWarning)
    assert "SwitchWarning" in sapient_core.__all__


def test_switch_values_are_read_case_insensitively_but_plugins_are_never_guessed(fake_site, monkeypatch):
    fake_site.add_plugin("gpu", plugin_source(device="metal"))
    monkeypatch.setenv("SAPIENT_PLUGINS", "GPU")
    infos, caught = switch_warnings(lambda: {i.name: i.status for i in fake_site.registry().list_backends()})
    assert caught == [] and infos["gpu"] == "available"
