"""The registry: discovery (:mod:`.discovery`), resolution (:mod:`.resolution`) and the backend objects.

A :class:`Registry` owns one :class:`~sapient_core.discovery.Discovery`, resolves kinds with
:func:`sapient_core.resolution.resolve` over the records discovery produces, logs every decision at
``debug`` level on the ``sapient_core`` logger, and caches one :class:`sapient_core.Backend` per
(plugin, strict, cross-check fraction).  The module-level functions of :mod:`sapient_core` use the
process-wide registry.
"""

from __future__ import annotations

import logging
import operator
import os
from typing import Any, Callable, Iterable

from .backend import Backend
from . import switches
from .discovery import ENTRY_POINT_GROUP, REFERENCE, Discovery
from .memory import FitPolicy
from .models import BackendInfo, Explanation
from .reporting import fmt_int
from .resolution import resolve

__all__ = ["Registry", "ENTRY_POINT_GROUP", "REFERENCE"]

logger = logging.getLogger("sapient_core")


class Registry:
    """Discovers plugins and resolves kinds to backends.

    :param entry_points: the function that lists entry points (default: the installed ones of
        ``sapient_core.backends``, read through ``importlib.metadata``).
    :param policy: the memory fit policy (default: :data:`sapient_core.memory.DEFAULT_POLICY` at call
        time).
    """

    def __init__(self, *, entry_points: Callable[[], Iterable[Any]] | None = None,
                 policy: FitPolicy | None = None):
        self.discovery = Discovery(entry_points)
        self._policy = policy
        self._backends: dict[tuple[str, bool, float], Backend] = {}

    @property
    def pm(self) -> Any:
        """The pluggy plugin manager holding the loaded plugins."""
        return self.discovery.pm

    def refresh(self) -> None:
        """Forget everything discovered; the next call discovers again (re-reading the environment)."""
        with self.discovery.lock:
            self.discovery.refresh()
            self._backends.clear()

    def register(self, plugin: Any, name: str) -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under ``name``, now.

        For notebooks and tests; raises :class:`sapient_core.PluginValidationError` if it is invalid.
        """
        with self.discovery.lock:
            self.discovery.register(plugin, name)
            self._backends.clear()

    def unregister(self, name: str) -> None:
        """Remove an in-process registered plugin."""
        with self.discovery.lock:
            self.discovery.unregister(name)
            self._backends.clear()

    def list_backends(self) -> list[BackendInfo]:
        """Every discovered plugin (loading the allowed ones), broken and unavailable ones included."""
        d = self.discovery
        return [d.info(r) for r in d.all_records()]

    def explain(self, kind: str | None = None, *, model_bytes: int = 0) -> Explanation:
        """How ``kind`` resolves for a model of ``model_bytes``: each candidate and why."""
        kind, source = _resolve_kind_arg(kind)
        model_bytes = _check_model_bytes(model_bytes)
        policy = self._policy
        if policy is None:
            from . import memory
            policy = memory.DEFAULT_POLICY
        d = self.discovery
        with d.lock:
            named = d.get(kind) if kind != "auto" else None
            # A plugin name needs only that plugin loaded (and the reference, for its ops); anything else
            # (auto, a device) looks at every plugin.
            records = [d.ensure_loaded(named)] if named is not None else d.records()
            infos = [d.info(r) for r in records]
        exp = resolve(kind, model_bytes, infos, policy, source=source, reference=REFERENCE)
        for c in exp.candidates:
            logger.debug("resolve %r: %s %s - %s %s", kind, "took" if c.chosen else "passed over", c.name,
                         c.reason, c.memory)
            if c.chosen and c.fits is False:
                logger.warning("%r resolves to %r, but a %s-byte model may not fit: %s", kind, c.name,
                               fmt_int(model_bytes), c.memory)
        if exp.chosen:
            logger.debug("resolve %r (model_bytes=%s) -> %r", kind, fmt_int(model_bytes), exp.chosen)
        return exp

    def get_backend(self, kind: str | None = None, *, model_bytes: int = 0,
                    strict: bool | None = None, cross_check: float | None = None) -> Backend:
        """Resolve ``kind`` (see the contract's table) and return its :class:`sapient_core.Backend`.

        :param kind: ``"auto"``, ``"cpu"``, a plugin name or a device name; None reads
            ``SAPIENT_BACKEND`` (default ``"auto"``).
        :param model_bytes: the model's weight bytes, for the memory check (0 = unknown, always fits).
        :param strict: raise instead of falling back to the CPU reference; None reads ``SAPIENT_STRICT``.
        :param cross_check: the fraction of calls (0 to 1) the CPU reference also computes, to compare with
            the plugin's result (see :mod:`sapient_core.crosscheck`); None reads ``SAPIENT_CROSS_CHECK``
            (unset: 0, off).
        :raises BackendNotFoundError: the kind names nothing installed (lists what is).
        :raises BackendUnavailableError: the kind is known but unusable here (says why).
        """
        fraction = None if cross_check is None else switches.check_fraction(cross_check)
        exp = self.explain(kind, model_bytes=model_bytes)
        if exp.chosen is None:
            assert exp.exception is not None
            raise exp.exception
        if strict is None:
            strict = switches.flag("SAPIENT_STRICT", bad_means=True, warned=self.discovery.warned,
                                   effect="a failing op raises BackendOpError instead of falling back")
        if fraction is None:
            fraction = switches.cross_check_fraction(self.discovery.warned)
        key = (exp.chosen, bool(strict), fraction)
        d = self.discovery
        with d.lock:
            backend = self._backends.get(key)
            if backend is None:
                rec = d.get(exp.chosen)
                assert rec is not None
                backend = Backend(rec, d.reference(), strict=bool(strict), explanation=exp, cross_check=fraction)
                self._backends[key] = backend
        return backend


def _check_model_bytes(model_bytes: Any) -> int:
    """``model_bytes`` as an int (NumPy integers accepted); TypeError / ValueError otherwise."""
    if not isinstance(model_bytes, bool):
        try:
            model_bytes = operator.index(model_bytes)
        except TypeError:
            pass
        else:
            if model_bytes < 0:
                raise ValueError(f"model_bytes must be >= 0 (the model's weight bytes; 0 = unknown), got "
                                 f"{model_bytes}")
            return int(model_bytes)
    raise TypeError(f"model_bytes must be an int, the model's weight bytes (0 = unknown), got "
                    f"{type(model_bytes).__name__} {model_bytes!r}. To remedy this, pass e.g. "
                    f"sum(w.nbytes for w in weights)")


def _resolve_kind_arg(kind: str | None) -> tuple[str, str]:
    if kind is None:
        env = os.environ.get("SAPIENT_BACKEND", "").strip()
        if env:
            return env.lower(), "SAPIENT_BACKEND"
        return "auto", "default"
    if not isinstance(kind, str):
        raise TypeError(f"get_backend: kind must be a str such as 'auto', 'cpu', 'mlx' or 'metal', got "
                        f"{type(kind).__name__} {kind!r}")
    return kind.strip().lower(), "argument"
