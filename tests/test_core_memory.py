"""The memory rule (FitPolicy), reading the system's RAM, and what a plugin's memory hook may report."""

from __future__ import annotations

import re
import subprocess

import pytest

from sapient_core import memory
from sapient_core.memory import GiB, FitPolicy, MemoryInfo

from helpers.fakeplugins import caps_dict, namespace_plugin

KNOWN = MemoryInfo(total_bytes=16 * GiB, source="test device")


# --- FitPolicy ------------------------------------------------------------------------------------------

def test_fits_exactly_at_the_boundary_and_not_one_byte_past_it():
    policy = FitPolicy()
    device = MemoryInfo(total_bytes=14 * GiB, source="test device")
    usable = 12 * GiB
    exact = 8 * GiB                              # exact * 1.5 == total - 2 GiB
    at = policy.decide(exact, device)
    assert at.fits and at.needed_bytes == usable and at.usable_bytes == usable
    assert at.explanation == ("8.00 GiB x 1.5 = 12.00 GiB (12884901888 B) <= usable 12.00 GiB (12884901888 B) "
                              "(14.00 GiB from test device - 2.00 GiB reserve)")
    past = policy.decide(exact + 1, device)
    assert not past.fits and past.needed_bytes == usable + 2   # ceil((exact + 1) * 1.5)
    assert "= 12.00 GiB (12884901890 B) > usable 12.00 GiB (12884901888 B)" in past.explanation
    assert policy.decide(exact, MemoryInfo(total_bytes=14 * GiB - 1, source="test device")).fits is False


def test_needed_bytes_rounds_up_so_half_a_byte_over_does_not_fit():
    mem = MemoryInfo(total_bytes=2 * GiB + 3001, source="test")
    d = FitPolicy().decide(2001, mem)           # 2001 * 1.5 = 3001.5 > 3001
    assert (d.fits, d.needed_bytes, d.usable_bytes) == (False, 3002, 3001)


def test_zero_means_unknown_and_always_fits_even_with_unknown_memory():
    d = FitPolicy().decide(0, MemoryInfo(total_bytes=None, source="x", reason="cannot read"))
    assert d.fits and d.explanation == "model size unknown (model_bytes=0): fits by definition"
    assert FitPolicy().decide(0, MemoryInfo(total_bytes=GiB, source="tiny")).fits       # usable is negative: still fits


def test_unknown_memory_never_fits_a_known_model_and_says_why():
    d = FitPolicy().decide(1, MemoryInfo(total_bytes=None, source="x", reason="the driver is silent"))
    assert not d.fits and d.usable_bytes is None
    assert d.explanation == ("device memory unknown (the driver is silent): cannot check a 1 B model, so it is "
                             "not assumed to fit")


def test_devices_smaller_than_the_reserve_fit_nothing():
    d = FitPolicy().decide(1, MemoryInfo(total_bytes=GiB, source="tiny"))
    assert not d.fits and d.usable_bytes == -GiB
    assert "1 B x 1.5 = 2 B > usable -1.00 GiB" in d.explanation


def test_policy_is_configurable_and_validated():
    assert FitPolicy(factor=2.0, reserve_bytes=0).decide(8 * GiB, KNOWN).fits
    assert not FitPolicy(factor=2.0, reserve_bytes=1).decide(8 * GiB, KNOWN).fits
    with pytest.raises(ValueError, match=r"^FitPolicy: factor must be a finite number > 0, got 0$"):
        FitPolicy(factor=0)
    with pytest.raises(ValueError, match=r"^FitPolicy: reserve_bytes must be an int >= 0, got -1$"):
        FitPolicy(reserve_bytes=-1)


def test_set_default_policy_changes_later_resolutions(fake_site):
    fake_site.add_plugin("gpu", device="metal", priority=1, memory=4 * GiB)
    reg = fake_site.registry()
    assert reg.explain("auto", model_bytes=GiB).chosen == "gpu"           # 1.5 GiB <= 2 GiB
    previous = memory.set_default_policy(FitPolicy(factor=3.0))           # restored by conftest
    assert previous == FitPolicy()
    assert reg.explain("auto", model_bytes=GiB).chosen == "cpu"           # 3 GiB > 2 GiB
    assert fake_site.registry(policy=FitPolicy(factor=1.0)).explain("auto", model_bytes=GiB).chosen == "gpu"
    with pytest.raises(TypeError, match="^set_default_policy expects a FitPolicy, got dict$"):
        memory.set_default_policy({})


# --- the system's RAM ----------------------------------------------------------------------------------

def write(tmp_path, text):
    path = tmp_path / "meminfo"
    path.write_text(text)
    return str(path)


def test_proc_meminfo_is_parsed(tmp_path, monkeypatch):
    path = write(tmp_path, "MemFree:         1000 kB\nMemTotal:       24576000 kB\nSwapTotal: 0 kB\n")
    monkeypatch.setattr(memory.platform, "system", lambda: "Linux")
    monkeypatch.setattr(memory, "MEMINFO_PATH", path)
    info = memory.system_memory()
    assert info == MemoryInfo(total_bytes=24576000 * 1024, source=f"{path} MemTotal")


@pytest.mark.parametrize("text, reason", [
    ("MemFree: 1 kB\n", "has no MemTotal line"),
    ("MemTotal: lots kB\n", "could not read .*invalid literal for int"),
    ("MemTotal:\n", "could not read .*list index out of range"),
])
def test_unreadable_meminfo_is_unknown_with_a_reason(tmp_path, text, reason):
    path = write(tmp_path, text)
    info = memory._meminfo(path)
    assert info.total_bytes is None
    assert info.source == f"{path} MemTotal"
    assert re.search(reason, info.reason), info.reason


def test_missing_meminfo_is_unknown_with_a_reason(tmp_path):
    info = memory._meminfo(str(tmp_path / "nope"))
    assert info.total_bytes is None and "could not read" in info.reason and "No such file" in info.reason


def test_the_real_system_memory():
    info = memory.system_memory()
    system = memory.platform.system()
    if system in ("Linux", "Darwin"):
        assert info.source == {"Linux": "/proc/meminfo MemTotal", "Darwin": "sysctl hw.memsize"}[system]
        assert info.total_bytes > 256 * 1024 ** 2 and info.reason == ""
    else:
        assert info.total_bytes is None and system in info.reason


def test_macos_reads_sysctl_hw_memsize(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, stdout="17179869184\n", stderr="")
    monkeypatch.setattr(memory.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    assert memory.system_memory() == MemoryInfo(total_bytes=16 * GiB, source="sysctl hw.memsize")
    assert calls[0][0] == ["sysctl", "-n", "hw.memsize"]
    assert calls[0][1]["timeout"] > 0 and calls[0][1]["check"] is True


@pytest.mark.parametrize("failure, reason", [
    (FileNotFoundError(2, "No such file or directory", "sysctl"), "sysctl hw.memsize failed: .*No such file"),
    (subprocess.CalledProcessError(1, ["sysctl"]), "sysctl hw.memsize failed: .*returned non-zero exit status 1"),
    (subprocess.TimeoutExpired(["sysctl"], 5), "sysctl hw.memsize failed: .*timed out"),
    ("not a number\n", "sysctl hw.memsize failed: invalid literal for int"),
])
def test_macos_sysctl_failure_is_unknown_with_a_reason(monkeypatch, failure, reason):
    def fake_run(cmd, **kw):
        if isinstance(failure, str):
            return subprocess.CompletedProcess(cmd, 0, stdout=failure, stderr="")
        raise failure
    monkeypatch.setattr(memory.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(memory.subprocess, "run", fake_run)
    info = memory.system_memory()
    assert info.total_bytes is None and info.source == "sysctl hw.memsize"
    assert re.match(reason, info.reason), info.reason


def test_other_systems_report_unknown(monkeypatch):
    monkeypatch.setattr(memory.platform, "system", lambda: "Windows")
    info = memory.system_memory()
    assert info == MemoryInfo(total_bytes=None, source="system RAM", reason="reading RAM is not supported on 'Windows'")


# --- a plugin's memory hook ---------------------------------------------------------------------------------

def memory_of(register_plugin, report=None, raises=None):
    def backend_memory():
        if raises:
            raise raises
        return report
    return register_plugin(namespace_plugin(caps_dict(device="metal"), backend_memory=backend_memory))


@pytest.fixture
def register_plugin():
    from sapient_core.registry import Registry

    def register(plugin):
        reg = Registry(entry_points=lambda: [])
        reg.register(plugin, "gpu")
        return reg.get_backend("gpu").memory
    return register


def test_memory_hook_report_is_taken_as_is(register_plugin):
    info = memory_of(register_plugin, {"total_bytes": 8 * GiB, "source": "fake device", "details": {"wired": 1}})
    assert info == MemoryInfo(total_bytes=8 * GiB, source="fake device", reason="", details={"wired": 1})


@pytest.mark.parametrize("report, raises, reason", [
    (None, RuntimeError("driver gone"), r"^backend_memory\(\) raised RuntimeError\('driver gone'\)$"),
    ([1], None, r"^backend_memory\(\) returned list \[1\], not a dict$"),
    ({"source": "x"}, None, r"^the report was refused: backend_memory\(\) lacks the required key 'total_bytes'$"),
    ({"total_bytes": -5, "source": "x"}, None, r"\['total_bytes'\] must be >= 0, got -5 \(int\)$"),
    ({"total_bytes": 1.5e9, "source": "x"}, None, r"\['total_bytes'\] must be an int, got 1500000000\.0 \(float\)$"),
    ({"total_bytes": None, "source": "x"}, None, r"^not reported$"),
])
def test_bad_memory_reports_become_unknown_with_a_reason(register_plugin, report, raises, reason):
    info = memory_of(register_plugin, report, raises)
    assert info.total_bytes is None
    assert re.search(reason, info.reason), info.reason


def test_plugin_without_memory_hook_gets_the_system_ram():
    from sapient_core.registry import Registry
    reg = Registry(entry_points=lambda: [])
    reg.register(namespace_plugin(caps_dict(device="metal")), "gpu")
    assert reg.get_backend("gpu").memory == memory.system_memory()


@pytest.mark.parametrize("unified, says", [
    (True, r"; unified memory \(the host's\): this assumes the weights are handed over \(backend\.from_numpy, host "
           r"copies dropped\) and held once - kept as NumPy arrays and cached on the device they are held twice in "
           r"the same memory, about 4\.00 GiB x 2\.5$"),
    (False, r"; discrete device memory: the device holds the weights; host NumPy copies stay in RAM until dropped$"),
    (None, r"reserve\)$"),
])
def test_the_explanation_says_where_the_weights_are_held(unified, says):
    mem = MemoryInfo(total_bytes=64 * GiB, source="fake", unified_memory=unified)
    d = FitPolicy().decide(4 * GiB, mem)
    assert d.fits and re.search(says, d.explanation), d.explanation
