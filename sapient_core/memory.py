"""Device memory and the rule that decides whether a model fits.

The rule lives here and only here (:class:`FitPolicy`): a model of ``model_bytes`` fits a device of
``total_bytes`` when ``model_bytes * factor <= total_bytes - reserve_bytes``.  The default is the
contract's: ``factor=1.5`` (weights plus activations, KV cache and framework overhead) and
``reserve_bytes=2 GiB`` (left to the OS and other programs).  ``model_bytes == 0`` means "unknown" and
always fits.  When the device memory is unknown and ``model_bytes > 0``, the model does *not* fit:
``get_backend("auto")`` passes over that backend (and says so) rather than guess.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import subprocess

from .models import MemoryInfo
from .reporting import GiB
from .reporting import fmt_bytes as _fmt

__all__ = ["GiB", "FitPolicy", "FitDecision", "MemoryInfo", "system_memory", "DEFAULT_POLICY",
           "set_default_policy", "MEMINFO_PATH"]
#: Where Linux reports the machine's RAM (a module attribute so that tests can point it elsewhere).
MEMINFO_PATH = "/proc/meminfo"


@dataclasses.dataclass(frozen=True)
class FitDecision:
    """Whether a model fits, and the arithmetic that says so."""

    fits: bool
    explanation: str
    usable_bytes: int | None
    needed_bytes: int


@dataclasses.dataclass(frozen=True)
class FitPolicy:
    """``fits`` when ``model_bytes * factor <= total_bytes - reserve_bytes``.

    The comparison is exact (``factor`` is taken as the fraction its float stands for), so a model fits
    at the boundary and not one byte past it; ``needed_bytes`` is ``model_bytes * factor`` rounded up.
    """

    factor: float = 1.5
    reserve_bytes: int = 2 * GiB

    def __post_init__(self) -> None:
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not self.factor > 0 \
                or not math.isfinite(self.factor):
            raise ValueError(f"FitPolicy: factor must be a finite number > 0, got {self.factor!r}")
        if isinstance(self.reserve_bytes, bool) or not isinstance(self.reserve_bytes, int) \
                or self.reserve_bytes < 0:
            raise ValueError(f"FitPolicy: reserve_bytes must be an int >= 0, got {self.reserve_bytes!r}")

    def decide(self, model_bytes: int, memory: MemoryInfo) -> FitDecision:
        # Exact: ceil(model_bytes * factor) <= usable  <=>  model_bytes * factor <= usable (usable is an int).
        num, den = float(self.factor).as_integer_ratio()
        needed = -(-model_bytes * num // den)
        if model_bytes == 0:
            usable = None if memory.total_bytes is None else memory.total_bytes - self.reserve_bytes
            return FitDecision(True, "model size unknown (model_bytes=0): fits by definition", usable, 0)
        if memory.total_bytes is None:
            return FitDecision(
                False,
                f"device memory unknown ({memory.reason or 'no reason given'}): cannot check a "
                f"{_fmt(model_bytes)} model, so it is not assumed to fit",
                None, needed)
        usable = memory.total_bytes - self.reserve_bytes
        ok = needed <= usable
        need_s, usable_s = _fmt(needed), _fmt(usable)
        if need_s == usable_s and not need_s.endswith(" B"):  # rounded alike: show the exact bytes
            need_s, usable_s = f"{need_s} ({needed} B)", f"{usable_s} ({usable} B)"
        return FitDecision(
            ok,
            f"{_fmt(model_bytes)} x {self.factor:g} = {need_s} {'<=' if ok else '>'} usable {usable_s} "
            f"({_fmt(memory.total_bytes)} from {memory.source} - {_fmt(self.reserve_bytes)} reserve)"
            + _held_where(memory, model_bytes),
            usable, needed)


def _held_where(memory: MemoryInfo, model_bytes: int) -> str:
    """Where the weights are held, when the plugin says whether its memory is the host's."""
    if memory.unified_memory is True:
        return (f"; unified memory (the host's): this assumes the weights are handed over (backend.from_numpy, "
                f"host copies dropped) and held once - kept as NumPy arrays and cached on the device they are "
                f"held twice in the same memory, about {_fmt(model_bytes)} x 2.5")
    if memory.unified_memory is False:
        return ("; discrete device memory: the device holds the weights; host NumPy copies stay in RAM until "
                "dropped")
    return ""


DEFAULT_POLICY = FitPolicy()


def set_default_policy(policy: FitPolicy) -> FitPolicy:
    """Replace the default fit policy (for every later resolution); returns the previous one."""
    global DEFAULT_POLICY
    if not isinstance(policy, FitPolicy):
        raise TypeError(f"set_default_policy expects a FitPolicy, got {type(policy).__name__}")
    previous, DEFAULT_POLICY = DEFAULT_POLICY, policy
    return previous


def system_memory() -> MemoryInfo:
    """The machine's RAM: ``/proc/meminfo`` on Linux, ``sysctl hw.memsize`` on macOS."""
    system = platform.system()
    if system == "Linux":
        return _meminfo(MEMINFO_PATH)
    if system == "Darwin":
        return _sysctl_memsize()
    return MemoryInfo(total_bytes=None, source="system RAM", reason=f"reading RAM is not supported on {system!r}")


def _meminfo(path: str) -> MemoryInfo:
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    parts = line.split()
                    unit = parts[2].lower() if len(parts) > 2 else "kb"
                    scale = {"kb": 1024, "mb": 1024 ** 2, "gb": GiB}.get(unit, 1)
                    return MemoryInfo(total_bytes=int(parts[1]) * scale, source=f"{path} MemTotal")
    except (OSError, ValueError, IndexError) as exc:
        return MemoryInfo(total_bytes=None, source=f"{path} MemTotal", reason=f"could not read {path}: {exc}")
    return MemoryInfo(total_bytes=None, source=f"{path} MemTotal", reason=f"{path} has no MemTotal line")


def _sysctl_memsize() -> MemoryInfo:
    try:
        out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                             timeout=5, check=True).stdout
        return MemoryInfo(total_bytes=int(out.strip()), source="sysctl hw.memsize")
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return MemoryInfo(total_bytes=None, source="sysctl hw.memsize", reason=f"sysctl hw.memsize failed: {exc}")
