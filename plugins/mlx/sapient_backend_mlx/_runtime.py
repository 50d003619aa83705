"""The one place that imports MLX: lazily, once, and without ever raising past the plugin.

:func:`import_mlx` returns ``mlx.core`` or raises :class:`MLXUnavailable` carrying the reason and the
exact remedy.  Any exception of the import counts (``ModuleNotFoundError`` when MLX is missing;
``ImportError`` or ``OSError`` when it is broken, e.g. the plain ``mlx`` wheel on Linux, whose
``libmlx.so`` comes only from the ``cpu`` / ``cuda`` extras), and the outcome is remembered so
that a broken MLX is not re-imported on every call.

Before the import, ``MLX_ENABLE_TF32`` is set to ``0`` unless the environment already sets it:
MLX otherwise runs float32 matmul-family operations (matmul, attention) at reduced TF32-class
precision on hardware that has it (NVIDIA Ampere and later, Apple M5-class GPUs), and the contract
asks for float32.  MLX reads the variable once, when it first needs it (a static in
``mlx/utils.h``), so this works as long as no float32 matmul ran in the process before;
:func:`precision` says what is in force.  It is the one piece of process-wide state the plugin
changes, and it says so: :func:`global_state` lists it (``backend.stats().plugin["global_state"]``),
an INFO record on the ``sapient_core`` logger announces it, and child processes inherit the
variable (set ``MLX_ENABLE_TF32`` yourself, to 0 or 1, to decide for the whole process tree).  The
plugin never calls ``mx.set_default_device`` / ``mx.set_default_stream``, never changes MLX's memory
or cache limits, and only releases MLX's buffer cache (``mx.clear_cache()``) to retry an evaluation
that failed to allocate memory.

:class:`MLXEvaluationError` is raised when MLX fails to *evaluate* a result at one of the plugin's
evaluation points (``evaluate``, ``to_numpy``, a logits op's input); it names the ops that were
pending.  It lives here, with no MLX import, so that ``sapient_backend_mlx`` can export it cheaply.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys
import threading
from typing import Any

__all__ = ["MLXUnavailable", "MLXEvaluationError", "import_mlx", "precision", "global_state",
           "install_remedy", "MLX_REQUIREMENT"]

logger = logging.getLogger("sapient_core")

#: The MLX versions this plugin is built and tested against (kept in step with pyproject.toml).
MLX_REQUIREMENT = ">=0.32,<0.33"

_lock = threading.Lock()
_state: tuple[str, Any] | None = None          # ("ok", mlx.core) or ("error", MLXUnavailable)
_precision: str = "not determined yet (MLX not imported by the plugin)"
_global_state: list[str] = []


class MLXUnavailable(Exception):
    """MLX cannot be imported here.

    :ivar reason: the whole message: what failed, why, and the remedy.
    :ivar missing: True when MLX is not installed at all, False when it is installed but broken.
    :ivar error: the original exception, as ``"Type: message"``.
    """

    def __init__(self, reason: str, *, missing: bool, error: str):
        super().__init__(reason)
        self.reason = reason
        self.missing = missing
        self.error = error


class MLXEvaluationError(RuntimeError):
    """MLX failed to evaluate a result on the device (allocation, command buffer, stream ...).

    :ivar pending: op name -> how many results of that op were built since the plugin's last
        successful evaluation (what the failed graph may contain).
    :ivar error: the original exception, as ``"Type: message"``.
    """

    def __init__(self, message: str, *, pending: dict[str, int] | None = None, error: str = ""):
        super().__init__(message)
        self.pending = dict(pending or {})
        self.error = error


def install_remedy(system: str, machine: str, *, broken: bool, version: str | None = None) -> str:
    """The exact command that installs a working MLX on this platform."""
    pin = f"=={version}" if version else MLX_REQUIREMENT
    force = "--force-reinstall " if broken else ""
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        extra = f" 'mlx-metal{pin}'" if broken else ""
        return f"pip install {force}'mlx{pin}'{extra}"
    if system == "Linux":
        return (f"pip install {force}'mlx[cpu]{pin}' (or 'sapient-backend-mlx[cuda]' for an NVIDIA GPU); "
                f"on Linux the plain 'mlx' wheel has no libmlx.so")
    return f"pip install {force}'mlx{pin}'"


def _describe_failure(exc: BaseException, system: str, machine: str) -> MLXUnavailable:
    error = f"{type(exc).__name__}: {exc}"
    missing = isinstance(exc, ModuleNotFoundError) and exc.name == "mlx"
    if system == "Darwin" and machine not in ("arm64", "aarch64"):
        reason = (f"MLX needs Apple Silicon: this Mac runs {machine}, for which no MLX is built ({error}). "
                  f"If this is an Apple Silicon Mac, use a native arm64 Python instead of one running "
                  f"under Rosetta; otherwise use get_backend('cpu')")
        return MLXUnavailable(reason, missing=missing, error=error)
    version = None
    if not missing:
        try:
            import importlib.metadata as md
            version = md.version("mlx")
        except Exception:  # noqa: BLE001 - only used to pin the remedy
            version = None
    remedy = install_remedy(system, machine, broken=not missing, version=version)
    if missing:
        reason = f"MLX is not installed ({error}). To remedy this: {remedy}"
    else:
        reason = f"MLX is installed but importing mlx.core failed ({error}). To remedy this: {remedy}"
    return MLXUnavailable(reason, missing=missing, error=error)


def _import_core() -> Any:
    return importlib.import_module("mlx.core")


def import_mlx() -> Any:
    """Return ``mlx.core``; raise :class:`MLXUnavailable` (with reason and remedy) if it cannot load."""
    global _state, _precision
    state = _state
    if state is None:
        with _lock:
            state = _state
            if state is None:
                already = "mlx.core" in sys.modules
                env = os.environ.get("MLX_ENABLE_TF32")
                if env is None:
                    os.environ["MLX_ENABLE_TF32"] = "0"
                    _global_state.append("MLX_ENABLE_TF32=0 (os.environ, set by sapient-backend-mlx before "
                                         "importing MLX; child processes inherit it)")
                    logger.info("sapient-backend-mlx set MLX_ENABLE_TF32=0 in this process's environment "
                                "(child processes inherit it) so that float32 matmuls and attention run in "
                                "true float32 on NVIDIA Ampere+ and Apple M5-class GPUs; set "
                                "MLX_ENABLE_TF32 before starting Python to decide otherwise")
                try:
                    mx = _import_core()
                except BaseException as exc:  # noqa: BLE001 - any import failure means "unavailable"
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    state = ("error", _describe_failure(exc, platform.system(), platform.machine().lower()))
                else:
                    state = ("ok", mx)
                    _precision = _precision_note(env, already)
                _state = state
    if state[0] == "ok":
        return state[1]
    raise state[1]


def _precision_note(env: str | None, already_imported: bool) -> str:
    if env is None:
        note = "float32 (MLX_ENABLE_TF32=0, set by sapient-backend-mlx)"
        if already_imported:
            note += ("; MLX was imported before the plugin: if a float32 matmul already ran, MLX may "
                     "have fixed TF32 on (start the process with MLX_ENABLE_TF32=0 to be sure)")
        return note
    if env.strip() == "0":
        return "float32 (MLX_ENABLE_TF32=0, set by the environment)"
    return (f"reduced precision allowed: MLX_ENABLE_TF32={env!r} was set by the environment, so float32 "
            f"matmuls and attention may run at TF32 precision on NVIDIA Ampere+ and Apple M5-class GPUs")


def precision() -> str:
    """What MLX does with float32 matmuls in this process (for stats and listings)."""
    return _precision


def global_state() -> list[str]:
    """The process-wide state the plugin changed (empty when it changed none)."""
    return list(_global_state)
