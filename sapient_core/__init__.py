"""sapient_core: one set of LLM forward-pass ops, served by installable backend plugins.

>>> import sapient_core
>>> backend = sapient_core.get_backend("auto", model_bytes=weights_nbytes)   # doctest: +SKIP
>>> h = backend.rms_norm(x, w, 1e-6)                                          # doctest: +SKIP

Importing this package is cheap: it imports no plugin, no accelerator library, not NumPy, not pluggy
and not pydantic; the names below are imported on first use, and the registry and the plugins load
on the first call that needs them.

Modules: :mod:`.hookspecs` (the contract with plugins: one declaration per op), :mod:`.discovery`
(finding and loading plugins), :mod:`.resolution` (what a kind resolves to), :mod:`.backend` (the
object ``get_backend`` returns), :mod:`.crosscheck` (comparing a backend with the CPU reference as it
runs), :mod:`.switches` (the ``SAPIENT_*`` variables), :mod:`.validate` (input checks), :mod:`.models` (the reports, as
pydantic models), :mod:`.memory` (the fit rule), :mod:`.errors`, :mod:`.reporting` (text tables),
:mod:`.cli` (``sapient-backends``), :mod:`.rope` (``rope_parameters``: RoPE frequencies of a
transformers config), :mod:`.testing` (the conformance kit).
"""

from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

from ._version import HOOK_API_VERSION, SUPPORTED_API_VERSIONS, __version__
from .errors import (ArgumentError, BackendNotFoundError, BackendOpError, BackendUnavailableError, DTypeError,
                     IncompatiblePluginError, OpDeclined, PluginLoadError, PluginValidationError, PluginWarning,
                     SapientError, SapientWarning, ShapeError, SwitchWarning)

if TYPE_CHECKING:
    from .backend import Backend
    from .hookspecs import OPS, Arg, OpSpec, hookimpl
    from .memory import FitDecision, FitPolicy
    from .models import (BackendInfo, Candidate, Capabilities, CapabilityReport, Explanation, MemoryInfo, OpStats,
                         Stats)
    from .kvcache import KVCache
    from .registry import Registry
    from .rope import RopeParameters, rope_parameters

__all__ = [
    "__version__", "HOOK_API_VERSION", "SUPPORTED_API_VERSIONS", "hookimpl",
    "get_backend", "list_backends", "explain", "register_backend", "unregister_backend", "refresh",
    "default_registry", "rope_parameters",
    # types
    "Backend", "Registry", "BackendInfo", "Candidate", "Explanation", "Capabilities", "CapabilityReport",
    "MemoryInfo", "FitPolicy", "FitDecision", "Stats", "OpStats", "OpSpec", "Arg", "OPS", "RopeParameters", "KVCache",
    # errors and warnings
    "SapientError", "BackendNotFoundError", "BackendUnavailableError", "PluginLoadError",
    "PluginValidationError", "IncompatiblePluginError", "ShapeError", "DTypeError", "ArgumentError", "OpDeclined",
    "BackendOpError", "SapientWarning", "PluginWarning", "SwitchWarning",
]

#: Where each lazily imported public name lives.
_LAZY = {
    "hookimpl": "hookspecs", "OPS": "hookspecs", "OpSpec": "hookspecs", "Arg": "hookspecs",
    "Backend": "backend", "Registry": "registry",
    "BackendInfo": "models", "Candidate": "models", "Explanation": "models", "Capabilities": "models",
    "CapabilityReport": "models", "MemoryInfo": "models", "Stats": "models", "OpStats": "models",
    "FitPolicy": "memory", "FitDecision": "memory",
    "rope_parameters": "rope", "RopeParameters": "rope", "KVCache": "kvcache",
}


def __getattr__(name: str) -> Any:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'sapient_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_registry: "Registry | None" = None
_registry_lock = threading.Lock()


def default_registry() -> "Registry":
    """The process-wide registry the module-level functions use (created on first use)."""
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                from .registry import Registry
                _registry = Registry()
    return _registry


def get_backend(kind: str | None = None, *, model_bytes: int = 0, strict: bool | None = None,
                cross_check: float | None = None) -> "Backend":
    """Return the backend for ``kind``: ``"auto"`` (default, or ``SAPIENT_BACKEND``), ``"cpu"``, a
    plugin name (``"mlx"``) or a device name (``"metal"``, ``"cuda"``).  ``cross_check=0.1`` also runs the
    CPU reference on a tenth of the calls and counts every disagreement (default: ``SAPIENT_CROSS_CHECK``,
    else off).  See :meth:`Registry.get_backend`."""
    return default_registry().get_backend(kind, model_bytes=model_bytes, strict=strict, cross_check=cross_check)


def list_backends() -> "list[BackendInfo]":
    """Every discovered plugin, with its status (available, unavailable, broken, disabled) and reason."""
    return default_registry().list_backends()


def explain(kind: str | None = None, *, model_bytes: int = 0) -> "Explanation":
    """How ``kind`` resolves for a model of ``model_bytes``: each candidate and why it was taken or not."""
    return default_registry().explain(kind, model_bytes=model_bytes)


def register_backend(plugin: Any, name: str) -> None:
    """Register a plugin object or module in-process (notebooks, tests), without an entry point."""
    default_registry().register(plugin, name)


def unregister_backend(name: str) -> None:
    """Remove a plugin registered with :func:`register_backend`."""
    default_registry().unregister(name)


def refresh() -> None:
    """Discover the plugins again on the next call (re-reading ``SAPIENT_PLUGINS`` and friends)."""
    default_registry().refresh()
