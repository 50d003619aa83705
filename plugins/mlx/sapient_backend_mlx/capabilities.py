"""What the MLX plugin can do on this machine: platform facts in, capability and memory reports out.

:func:`gather_facts` is the only impure part (it imports MLX through :mod:`._runtime` and asks it
about its devices).  :func:`decide` and :func:`memory_report` are pure functions of those facts, so
every platform's branch (Apple Silicon, Intel Mac, Linux with ``mlx[cpu]`` or ``mlx[cuda]``, MLX
missing or broken) is unit-tested on any machine with faked facts.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import platform
from typing import Any, Callable

from . import _runtime

__all__ = ["PlatformFacts", "gather_facts", "decide", "memory_report", "CUDA_DISTRIBUTIONS",
           "NOT_MACOS", "NEEDS_APPLE_SILICON", "CUDA_REMEDY"]

#: The distributions that carry MLX's CUDA build (``mlx[cuda]`` / ``[cuda12]`` / ``[cuda13]``).
CUDA_DISTRIBUTIONS = ("mlx-cuda-12", "mlx-cuda-13", "mlx-cuda")

NOT_MACOS = "MLX GPU execution is only available on macOS (Apple Silicon)"
NEEDS_APPLE_SILICON = "MLX needs Apple Silicon"
CUDA_REMEDY = "pip install 'sapient-backend-mlx[cuda]'"


@dataclasses.dataclass(frozen=True)
class PlatformFacts:
    """Everything :func:`decide` looks at.

    :ivar system: ``platform.system()`` (``"Darwin"``, ``"Linux"``, ``"Windows"`` ...).
    :ivar machine: ``platform.machine()``, lowercase (``"arm64"``, ``"x86_64"`` ...).
    :ivar mlx_version: ``mlx.core.__version__``, or None when MLX did not import.
    :ivar mlx_error: the reason MLX did not import (with the remedy), or None.
    :ivar metal_available: ``mx.metal.is_available()`` (None when MLX did not import).
    :ivar cuda_available: ``mx.cuda.is_available()`` (None when MLX did not import or has no
        ``mx.cuda``).
    :ivar cuda_distributions: the installed distributions of MLX's CUDA build.
    :ivar precision: what MLX does with float32 matmuls (see :func:`._runtime.precision`).
    """

    system: str
    machine: str
    mlx_version: str | None = None
    mlx_error: str | None = None
    metal_available: bool | None = None
    cuda_available: bool | None = None
    cuda_distributions: tuple[str, ...] = ()
    precision: str = ""

    @property
    def apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.machine in ("arm64", "aarch64")


def _installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - broken metadata only weakens a hint
        return None


def _ask(fn: Callable[[], Any]) -> bool | None:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - a device probe that fails means "not available"
        return False


def gather_facts() -> PlatformFacts:
    """The facts of this machine (imports MLX if it is not imported yet; never raises)."""
    system = platform.system()
    machine = platform.machine().lower()
    try:
        mx = _runtime.import_mlx()
    except _runtime.MLXUnavailable as exc:
        return PlatformFacts(system, machine, mlx_error=exc.reason)
    cuda = getattr(mx, "cuda", None)
    cuda_dists = tuple(d for d in CUDA_DISTRIBUTIONS if _installed(d))
    return PlatformFacts(
        system, machine,
        mlx_version=str(getattr(mx, "__version__", "?")),
        metal_available=_ask(mx.metal.is_available),
        cuda_available=None if cuda is None else _ask(cuda.is_available),
        cuda_distributions=cuda_dists,
        precision=_runtime.precision(),
    )


def _metal_reason(f: PlatformFacts) -> str:
    if f.system != "Darwin":
        return NOT_MACOS
    if not f.apple_silicon:
        return f"{NEEDS_APPLE_SILICON} (this Mac runs {f.machine})"
    if f.mlx_error:
        return f.mlx_error
    return ("mx.metal.is_available() is False on this Apple Silicon Mac (e.g. a virtual machine without "
            "GPU access); MLX runs on its CPU device instead")


def _cuda_reason(f: PlatformFacts) -> str:
    if f.system != "Linux":
        return f"MLX's CUDA backend needs Linux with an NVIDIA GPU ({CUDA_REMEDY} there), not {f.system}"
    if f.mlx_error:
        return f.mlx_error
    if f.cuda_distributions:
        dist = f.cuda_distributions[0]
        pin = f"=={f.mlx_version}" if f.mlx_version else ""
        return (f"{dist} is installed but mx.cuda.is_available() is False: no usable NVIDIA GPU or driver, "
                f"or mlx-cpu's libmlx.so replaced the CUDA build (both ship mlx/lib/libmlx.so). To remedy "
                f"the latter: pip install --force-reinstall --no-deps '{dist}{pin}'")
    return f"MLX's CUDA build is not installed: it needs {CUDA_REMEDY} on Linux with an NVIDIA GPU"


def decide(f: PlatformFacts) -> dict[str, Any]:
    """The device, availability, reason, other devices and description for these facts (pure)."""
    if f.mlx_error is not None:
        device = "metal" if f.system == "Darwin" else "cpu"
        others = {"metal": _metal_reason(f), "cuda": _cuda_reason(f)}
        others.pop(device, None)
        if f.system == "Darwin" and not f.apple_silicon:
            reason = f.mlx_error if NEEDS_APPLE_SILICON in f.mlx_error else \
                f"{NEEDS_APPLE_SILICON} (this Mac runs {f.machine}): {f.mlx_error}"
        else:
            reason = f.mlx_error
        return {"device": device, "available": False, "reason": reason, "unavailable_devices": others,
                "description": "MLX kernels (unavailable: see reason)"}
    if f.metal_available:
        device = "metal"
    elif f.cuda_available:
        device = "cuda"
    else:
        device = "cpu"
    others = {}
    if device != "metal":
        others["metal"] = _metal_reason(f)
    if device != "cuda":
        others["cuda"] = _cuda_reason(f)
    where = {"metal": "the Apple GPU", "cuda": "an NVIDIA GPU", "cpu": "MLX's CPU device"}[device]
    return {"device": device, "available": True, "reason": "", "unavailable_devices": others,
            "description": f"MLX {f.mlx_version} kernels on {where}; matmuls: {f.precision or 'float32'}"}


def memory_report(device: str, info: dict[str, Any], system_memory: Callable[[], Any]) -> dict[str, Any]:
    """The ``backend_memory`` report for ``device`` from ``mx.device_info()`` (pure but for the fallback).

    - Apple GPU: ``device_info`` has ``memory_size`` (the unified memory) and
      ``max_recommended_working_set_size`` (what Metal recommends one process keep resident).  The fit
      decision uses the **recommended working set**: a model that fits the memory but not the working
      set pages and crawls.  Both figures are in ``details``.
    - CUDA GPU: the GPU's own memory (``total_memory`` or ``memory_size``); unknown if MLX gives none
      (never the host RAM, which is not where the weights live).
    - MLX's CPU device: ``device_info`` reports no memory, so the system RAM
      (``sapient_core.memory.system_memory()``) is used, and the source says so.
    """
    details = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}
    if device == "metal":
        ws = info.get("max_recommended_working_set_size")
        size = info.get("memory_size")
        if isinstance(ws, int) and ws > 0:
            details["used_for_fit"] = "max_recommended_working_set_size"
            return {"total_bytes": ws, "source": "mlx.core.device_info() max_recommended_working_set_size "
                    "(the recommended working set; memory_size is in details)", "details": details}
        if isinstance(size, int) and size > 0:
            details["used_for_fit"] = "memory_size"
            return {"total_bytes": size, "source": "mlx.core.device_info() memory_size (MLX reported no "
                    "recommended working set)", "details": details}
        return {"total_bytes": None, "source": "mlx.core.device_info()",
                "reason": f"MLX reported no memory for the Apple GPU: {sorted(info)}", "details": details}
    if device == "cuda":
        for key in ("total_memory", "memory_size"):
            value = info.get(key)
            if isinstance(value, int) and value > 0:
                details["used_for_fit"] = key
                return {"total_bytes": value, "source": f"mlx.core.device_info() {key}", "details": details}
        return {"total_bytes": None, "source": "mlx.core.device_info()",
                "reason": f"MLX reported no memory for the CUDA GPU: {sorted(info)}", "details": details}
    sysmem = system_memory()
    details["used_for_fit"] = "system RAM"
    report = {"total_bytes": sysmem.total_bytes,
              "source": f"{sysmem.source} (MLX's CPU device reports no memory in mlx.core.device_info(), "
                        f"so the system RAM is used)",
              "details": details}
    if sysmem.total_bytes is None:
        report["reason"] = sysmem.reason
    return report
