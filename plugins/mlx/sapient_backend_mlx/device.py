"""Where the plugin runs: its device, its own stream, the lock its evaluations hold, and its memory.

Every op of the plugin is built on **one stream owned by the plugin**, on the device the plugin reports
(``metal`` / ``cuda``: ``mx.gpu``; ``cpu``: ``mx.cpu``), whatever the process default is:

- Since MLX 0.31.2 every thread has its own default stream, and a graph built on one thread's stream
  cannot be evaluated on another ("There is no Stream(cpu, 0) in current thread").  An engine that runs
  ops on a worker thread and reads the results on another (a server, a prefetching loader) needs one
  stream that every thread can use: ``mx.new_thread_unsafe_stream`` (MLX 0.32).  MLX leaves it to the
  caller to never evaluate on such a stream from two threads at once, so every evaluation of the
  plugin holds :data:`LOCK`.
- An engine that calls ``mx.set_default_device(mx.cpu)`` (or sets its own default stream) does not move
  the plugin: the kernels enter ``mx.stream(stream())`` themselves, and ``mx.device_info`` is asked
  about :func:`mx_device`, never about the process default.

The plugin never changes MLX's default device or stream.  Importing this module imports nothing
heavy; MLX is imported by the first call that needs it.
"""

from __future__ import annotations

import threading
from typing import Any

from . import _runtime

__all__ = ["LOCK", "device_name", "mx_device", "stream", "memory", "unified_memory"]

#: Held by every evaluation the plugin runs (``mx.eval`` and host copies): the plugin's stream may be
#: used from any thread, but never by two evaluations at once.  Re-entrant.
LOCK = threading.RLock()

_state: tuple[str, Any] | None = None          # (device name, mx.Device), decided once per process
_stream: Any = None


def _init() -> tuple[str, Any]:
    global _state
    state = _state
    if state is None:
        with LOCK:
            state = _state
            if state is None:
                mx = _runtime.import_mlx()
                from .capabilities import decide, gather_facts
                name = decide(gather_facts())["device"]
                state = _state = (name, mx.Device(mx.gpu if name in ("metal", "cuda") else mx.cpu))
    return state


def device_name() -> str:
    """The device the plugin reports and runs on: ``"metal"``, ``"cuda"`` or ``"cpu"``."""
    return _init()[0]


def mx_device() -> Any:
    """The ``mx.Device`` of :func:`device_name`."""
    return _init()[1]


def stream() -> Any:
    """The plugin's own stream on :func:`mx_device`: every op is built on it, from whatever thread."""
    global _stream
    if _stream is None:
        with LOCK:
            if _stream is None:
                _stream = _runtime.import_mlx().new_thread_unsafe_stream(mx_device())
    return _stream


def unified_memory(device: str, info: dict[str, Any]) -> bool:
    """Whether host arrays and device arrays share one memory (so both copies of a weight count).

    Apple GPUs and MLX's CPU device: yes.  CUDA: no, unless MLX's device info says the GPU is
    integrated (a key ``integrated`` or ``unified_memory``; MLX 0.32 reports neither, so a discrete GPU
    is assumed).
    """
    if device in ("metal", "cpu"):
        return True
    for key in ("unified_memory", "integrated"):
        if key in info:
            return bool(info[key])
    return False


def memory() -> dict[str, Any]:
    """The memory report of the plugin's device (``backend_memory``), from ``mx.device_info(device)``."""
    from sapient_core.memory import system_memory

    from .capabilities import memory_report
    try:
        mx = _runtime.import_mlx()
    except _runtime.MLXUnavailable as exc:
        return {"total_bytes": None, "source": "mlx.core.device_info()", "unified_memory": False,
                "reason": f"MLX did not import ({exc.error})"}
    name, dev = _init()
    try:
        info = dict(mx.device_info(dev))
    except Exception as exc:  # noqa: BLE001 - an old or odd MLX: say so, use what can be known
        info = {"device_info_error": f"{type(exc).__name__}: {exc}"}
    report = memory_report(name, info, system_memory)
    unified = unified_memory(name, info)
    report["unified_memory"] = unified
    report.setdefault("details", {})["unified_memory"] = unified
    return report
