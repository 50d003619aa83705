"""The capability and memory reports: every platform's branch with faked facts, and the real report here."""

from __future__ import annotations

import platform

import mlx.core as mx
import pytest

from sapient_backend_mlx import _runtime, plugin
from sapient_backend_mlx.capabilities import (NEEDS_APPLE_SILICON, NOT_MACOS, PlatformFacts, decide,
                                              gather_facts, memory_report)
from sapient_core._plugin import PluginRecord, check_capabilities
from sapient_core.memory import GiB, MemoryInfo

LIBMLX = "ImportError: libmlx.so: cannot open shared object file: No such file or directory"


def full_report(facts):
    report = decide(facts)
    report.update(api_version=2, version="0.2.0", priority=100, thread_safe=False)
    return check_capabilities(PluginRecord(name="mlx", target="test"), report)   # the core accepts it


def ok(system, machine, **kw):
    return PlatformFacts(system, machine, mlx_version="0.32.4", precision="float32", **kw)


# --- the decision, platform by platform ---------------------------------------------------------------

def test_apple_silicon_runs_on_the_apple_gpu():
    caps = full_report(ok("Darwin", "arm64", metal_available=True, cuda_available=False))
    assert (caps.device, caps.available) == ("metal", True)
    assert "metal" not in caps.unavailable_devices
    assert "Linux with an NVIDIA GPU" in caps.unavailable_devices["cuda"]


def test_apple_silicon_without_gpu_access_runs_on_the_cpu_device():
    caps = full_report(ok("Darwin", "arm64", metal_available=False, cuda_available=False))
    assert (caps.device, caps.available) == ("cpu", True)
    assert "mx.metal.is_available() is False" in caps.unavailable_devices["metal"]


def test_intel_mac_is_unavailable_because_mlx_needs_apple_silicon():
    reason = _runtime._describe_failure(ModuleNotFoundError("No module named 'mlx'", name="mlx"),
                                        "Darwin", "x86_64").reason
    caps = full_report(PlatformFacts("Darwin", "x86_64", mlx_error=reason))
    assert (caps.device, caps.available) == ("metal", False)
    assert caps.reason.startswith(NEEDS_APPLE_SILICON)
    assert "Rosetta" in caps.reason and "get_backend('cpu')" in caps.reason


def test_intel_mac_where_mlx_somehow_imports_still_has_no_metal():
    caps = full_report(ok("Darwin", "x86_64", metal_available=False, cuda_available=False))
    assert caps.device == "cpu" and NEEDS_APPLE_SILICON in caps.unavailable_devices["metal"]


def test_linux_with_mlx_cpu_runs_on_the_cpu_device_and_explains_metal_and_cuda():
    caps = full_report(ok("Linux", "x86_64", metal_available=False, cuda_available=False))
    assert (caps.device, caps.available, caps.priority, caps.thread_safe) == ("cpu", True, 100, False)
    assert caps.unavailable_devices["metal"] == NOT_MACOS
    assert "pip install 'sapient-backend-mlx[cuda]'" in caps.unavailable_devices["cuda"]


def test_linux_with_mlx_cuda_and_a_gpu_runs_on_cuda():
    caps = full_report(ok("Linux", "x86_64", metal_available=False, cuda_available=True,
                          cuda_distributions=("mlx-cuda-12",)))
    assert (caps.device, caps.available) == ("cuda", True)
    assert caps.unavailable_devices == {"metal": NOT_MACOS}


def test_linux_with_mlx_cuda_but_no_usable_gpu_says_how_to_fix_the_clobbered_library():
    caps = full_report(ok("Linux", "x86_64", metal_available=False, cuda_available=False,
                          cuda_distributions=("mlx-cuda-12",)))
    assert caps.device == "cpu"
    assert "pip install --force-reinstall --no-deps 'mlx-cuda-12==0.32.4'" in caps.unavailable_devices["cuda"]


@pytest.mark.parametrize("exc,missing,remedy", [
    (ModuleNotFoundError("No module named 'mlx'", name="mlx"), True, "pip install 'mlx[cpu]>=0.32,<0.33'"),
    (ImportError("libmlx.so: cannot open shared object file: No such file or directory"), False,
     "pip install --force-reinstall 'mlx[cpu]"),
    (OSError("libmlx.so: invalid ELF header"), False, "pip install --force-reinstall 'mlx[cpu]"),
    (ModuleNotFoundError("No module named 'mlx.core'", name="mlx.core"), False, "--force-reinstall"),
])
def test_linux_with_mlx_missing_or_broken_is_unavailable_with_the_remedy(exc, missing, remedy):
    failure = _runtime._describe_failure(exc, "Linux", "x86_64")
    assert failure.missing is missing
    caps = full_report(PlatformFacts("Linux", "x86_64", mlx_error=failure.reason))
    assert (caps.device, caps.available) == ("cpu", False)
    assert remedy in caps.reason and str(exc) in caps.reason
    assert caps.unavailable_devices["metal"] == NOT_MACOS


def test_apple_silicon_with_mlx_missing_names_the_metal_wheel():
    failure = _runtime._describe_failure(ModuleNotFoundError("No module named 'mlx'", name="mlx"),
                                         "Darwin", "arm64")
    caps = full_report(PlatformFacts("Darwin", "arm64", mlx_error=failure.reason))
    assert (caps.device, caps.available) == ("metal", False)
    assert "pip install 'mlx>=0.32,<0.33'" in caps.reason


def test_other_systems_without_mlx_are_unavailable():
    failure = _runtime._describe_failure(ModuleNotFoundError("No module named 'mlx'", name="mlx"),
                                         "Windows", "amd64")
    caps = full_report(PlatformFacts("Windows", "amd64", mlx_error=failure.reason))
    assert caps.available is False and caps.unavailable_devices["metal"] == NOT_MACOS


# --- memory ------------------------------------------------------------------------------------------

def test_apple_gpu_memory_uses_the_recommended_working_set_and_reports_both():
    info = {"memory_size": 64 * GiB, "max_recommended_working_set_size": 48 * GiB, "device_name": "Apple M3"}
    rep = memory_report("metal", info, lambda: pytest.fail("system RAM must not be read for metal"))
    assert rep["total_bytes"] == 48 * GiB
    assert "max_recommended_working_set_size" in rep["source"]
    assert rep["details"]["memory_size"] == 64 * GiB and rep["details"]["used_for_fit"] == \
        "max_recommended_working_set_size"


def test_cuda_memory_comes_from_the_gpu_never_the_host_ram():
    assert memory_report("cuda", {"total_memory": 80 * GiB}, None)["total_bytes"] == 80 * GiB
    rep = memory_report("cuda", {"device_name": "H100"}, None)
    assert rep["total_bytes"] is None and "no memory" in rep["reason"]


def test_cpu_device_memory_falls_back_to_the_system_ram():
    rep = memory_report("cpu", {"device_name": "x"}, lambda: MemoryInfo(total_bytes=16 * GiB, source="/proc/meminfo MemTotal"))
    assert rep["total_bytes"] == 16 * GiB and "system RAM is used" in rep["source"]
    rep = memory_report("cpu", {}, lambda: MemoryInfo(total_bytes=None, source="system RAM", reason="unsupported"))
    assert rep["total_bytes"] is None and rep["reason"] == "unsupported"


# --- the real report on this machine -------------------------------------------------------------------

def test_the_report_on_this_machine(registry):
    info = {b.name: b for b in registry.list_backends()}["mlx"]
    caps = info.capabilities
    assert info.status == "available" and caps.version == "0.2.0" and caps.priority == 100
    assert caps.thread_safe is False
    if mx.metal.is_available():
        assert caps.device == "metal"
        assert info.memory.details["used_for_fit"] == "max_recommended_working_set_size"
    elif platform.system() == "Linux":
        assert caps.device in ("cpu", "cuda")
        assert caps.unavailable_devices["metal"] == NOT_MACOS
    if caps.device == "cpu":
        assert "system RAM is used" in info.memory.source
        assert info.memory.total_bytes and info.memory.total_bytes > 0
    assert "float32" in caps.description and mx.__version__ in caps.description


def test_gather_facts_reads_mlx():
    facts = gather_facts()
    assert facts.mlx_error is None and facts.mlx_version == mx.__version__
    assert facts.metal_available == mx.metal.is_available()


# --- a broken MLX in this process ----------------------------------------------------------------------

@pytest.mark.parametrize("error", [OSError("libmlx.so: invalid ELF header"), ImportError("libmlx.so: nope"),
                                   RuntimeError("MLX initialisation failed")])
def test_a_broken_mlx_makes_the_plugin_unavailable_not_broken(monkeypatch, error):
    from sapient_core import BackendUnavailableError
    from sapient_core.registry import Registry

    def failing_import():
        raise error
    monkeypatch.setattr(_runtime, "_state", None)
    monkeypatch.setattr(_runtime, "_import_core", failing_import)
    report = plugin.backend_capabilities()
    assert report["available"] is False and str(error) in report["reason"]
    assert plugin.backend_memory()["total_bytes"] is None
    assert "mlx_error" in plugin.backend_stats()
    reg = Registry()
    assert reg.get_backend("auto").name == "cpu"
    status = {b.name: b.status for b in reg.list_backends()}
    assert (status["cpu"], status["mlx"]) == ("available", "unavailable")
    with pytest.raises(BackendUnavailableError, match="importing mlx.core failed") as exc:
        reg.get_backend("mlx")
    assert "mlx" in exc.value.reasons
