"""Finding and loading the plugins, and recording each one's status.

:class:`Discovery` reads the entry-point group ``sapient_core.backends`` (metadata only: no plugin is
imported) the first time a call needs it, honouring ``SAPIENT_PLUGINS`` and
``SAPIENT_DISABLE_PLUGIN_AUTOLOAD`` as they are at that moment.  Each plugin is imported on its own,
only when a call needs it (:meth:`Discovery.ensure_loaded`); one that fails is recorded as
``broken`` with the reason (see :mod:`sapient_core._plugin`) and skipped, and a
:class:`sapient_core.PluginWarning` says so.  Plugins that the switches leave out are recorded as
``disabled`` and never imported.  The CPU reference is always there.

What a kind resolves to is decided elsewhere (:mod:`sapient_core.resolution`), from the
:class:`sapient_core.BackendInfo` records this module produces.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import threading
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from ._plugin import PluginRecord, load_into
from .errors import (BackendNotFoundError, BackendUnavailableError, PluginLoadError, PluginValidationError,
                     PluginWarning, warn)
from .models import BackendInfo

__all__ = ["ENTRY_POINT_GROUP", "REFERENCE", "REFERENCE_DIST", "REFERENCE_MODULE", "Discovery",
           "installed_entry_points"]

logger = logging.getLogger("sapient_core")

ENTRY_POINT_GROUP = "sapient_core.backends"
#: The CPU reference plugin: its entry-point name, distribution and module.
REFERENCE = "cpu"
REFERENCE_DIST = "sapient-backend-cpu"
REFERENCE_MODULE = "sapient_backend_cpu.plugin"
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_entry_points() -> Iterable[Any]:
    """The installed entry points of the group (the function discovery calls; tests may replace it)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Discovery:
    """The plugins of one registry: found through entry points or registered in-process.

    :param entry_points: the function that lists entry points (default: :func:`installed_entry_points`).
    """

    def __init__(self, entry_points: Callable[[], Iterable[Any]] | None = None):
        self._entry_points = entry_points or installed_entry_points
        self.lock = threading.RLock()
        self._discovered = False
        self._records: dict[str, PluginRecord] = {}
        self._extra: list[PluginRecord] = []     # duplicates and invalid names: shown, never used
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # --- finding ------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget everything discovered; the next call discovers again (re-reading the environment)."""
        with self.lock:
            for rec in list(self._records.values()):
                if rec.module is not None and rec.source != "in-process":
                    self.pm.unregister(rec.module)
            self._records = {n: r for n, r in self._records.items() if r.source == "in-process"}
            self._extra = []
            self._discovered = False

    def discover(self) -> None:
        """Read the entry points (once; again after :meth:`refresh`).  Imports no plugin."""
        if self._discovered:
            return
        with self.lock:
            if self._discovered:
                return
            disable = _env_flag("SAPIENT_DISABLE_PLUGIN_AUTOLOAD")
            allow_raw = os.environ.get("SAPIENT_PLUGINS")
            allow = None if allow_raw is None else {p.strip().lower() for p in allow_raw.split(",") if p.strip()}
            try:
                eps = sorted(self._entry_points(), key=lambda e: (e.name, _dist_name(e)))
            except Exception as exc:  # noqa: BLE001 - broken metadata must not break the CPU reference
                logger.warning("reading the entry points of %s failed: %r", ENTRY_POINT_GROUP, exc)
                eps = []
            for ep in eps:
                self._add_entry_point(ep, disable, allow, allow_raw)
            if REFERENCE not in self._records:
                self._records[REFERENCE] = PluginRecord(
                    name=REFERENCE, target=REFERENCE_MODULE, distribution=REFERENCE_DIST,
                    dist_version=_dist_version(REFERENCE_DIST), source="built-in",
                    loader=lambda: importlib.import_module(REFERENCE_MODULE))
            self._discovered = True
            logger.debug("discovered plugins: %s", ", ".join(
                f"{r.name} ({r.status})" for r in self._records.values()))

    def _add_entry_point(self, ep: Any, disable: bool, allow: set[str] | None, allow_raw: str | None) -> None:
        name, dist = ep.name, _dist_name(ep)
        rec = PluginRecord(name=name, target=ep.value, distribution=dist, dist_version=_dist_version_of(ep),
                           loader=ep.load)
        problem = None
        if not _NAME_RE.match(name) or name == "auto":
            problem = (f"entry-point name {name!r} (from {dist or '?'}) is not a valid backend name: use a "
                       f"lowercase identifier other than 'auto'")
        elif name == REFERENCE and (_norm_dist(dist) != REFERENCE_DIST or ep.value != REFERENCE_MODULE):
            problem = (f"entry-point name 'cpu' (from {dist or '?'}, {ep.value}) is reserved for the CPU "
                       f"reference ({REFERENCE_DIST}). To remedy this, rename the entry point")
        elif name in self._records:
            prev = self._records[name]
            problem = (f"duplicate backend name {name!r}: {dist or '?'} ({ep.value}) and "
                       f"{prev.distribution or '?'} ({prev.target}) both declare it; {name!r} is "
                       f"{prev.distribution or '?'}'s (the first by distribution name), {dist or '?'}'s is "
                       f"skipped. To remedy this, uninstall one of them")
        if problem:
            rec.status, rec.error = "broken", PluginLoadError(problem, plugin=name)
            self._extra.append(rec)
            warn(problem, PluginWarning)
            return
        if name != REFERENCE:
            if disable:
                rec.status = "disabled"
                rec.disabled_reason = ("SAPIENT_DISABLE_PLUGIN_AUTOLOAD=1 loads only the CPU reference. To use "
                                       "it, unset SAPIENT_DISABLE_PLUGIN_AUTOLOAD")
            elif allow is not None and name not in allow:
                rec.status = "disabled"
                rec.disabled_reason = (f"not in SAPIENT_PLUGINS={allow_raw!r}. To use it, add it to "
                                       f"SAPIENT_PLUGINS (or unset SAPIENT_PLUGINS)")
        self._records[name] = rec

    # --- loading ------------------------------------------------------------------------------------

    def ensure_loaded(self, rec: PluginRecord) -> PluginRecord:
        """Import and check ``rec``'s plugin if that has not been tried yet; return ``rec``."""
        if rec.status != "pending":
            return rec
        with self.lock:
            if rec.status != "pending":
                return rec
            try:
                load_into(self.pm, rec)
            except PluginLoadError as exc:
                rec.status, rec.error = "broken", exc
                warn(f"{exc}; the plugin is skipped and the others keep working", PluginWarning)
                logger.debug("plugin %r is broken: %s", rec.name, exc, exc_info=exc.__cause__)
            else:
                assert rec.caps is not None
                logger.debug("loaded plugin %r from %s: device=%s available=%s", rec.name, rec.target,
                             rec.caps.device, rec.caps.available)
        return rec

    def names(self) -> tuple[str, ...]:
        """The names of the usable records (loaded or not), the CPU reference included."""
        self.discover()
        return tuple(self._records)

    def get(self, name: str) -> PluginRecord | None:
        """The record named ``name`` (not loaded), or None."""
        self.discover()
        return self._records.get(name)

    def records(self, *, load: bool = True) -> list[PluginRecord]:
        """Every usable record, each loaded first (unless ``load`` is False)."""
        self.discover()
        records = list(self._records.values())
        if load:
            for rec in records:
                self.ensure_loaded(rec)
        return records

    def all_records(self) -> list[PluginRecord]:
        """Every record, loaded, plus the refused entry points (duplicates, invalid names)."""
        with self.lock:
            return self.records() + list(self._extra)

    def reference(self) -> PluginRecord:
        """The CPU reference's record, loaded; BackendUnavailableError when it is broken."""
        self.discover()
        ref = self.ensure_loaded(self._records[REFERENCE])
        if ref.status != "ok":
            raise BackendUnavailableError(
                f"the CPU reference backend is broken: {ref.error}. Every backend needs it for the ops it "
                f"does not implement. To remedy this: pip install --force-reinstall {REFERENCE_DIST}",
                kind=REFERENCE, installed=self.names(), reasons={REFERENCE: str(ref.error)})
        return ref

    # --- in-process registration ----------------------------------------------------------------------

    def register(self, plugin: Any, name: str) -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under ``name``, now.

        For notebooks and tests; raises :class:`PluginValidationError` if the plugin is invalid.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in ("auto", REFERENCE):
            raise PluginValidationError(f"register: {name!r} is not a valid backend name (a lowercase "
                                        f"identifier other than 'auto' and 'cpu')", plugin=name)
        with self.lock:
            self.discover()
            if name in self._records and self._records[name].status != "disabled":
                raise PluginValidationError(f"register: a backend named {name!r} is already registered "
                                            f"({self._records[name].target}); unregister it first",
                                            plugin=name)
            rec = PluginRecord(name=name, target=repr(plugin), source="in-process")
            load_into(self.pm, rec, plugin)
            self._records[name] = rec

    def unregister(self, name: str) -> None:
        """Remove an in-process registered plugin."""
        with self.lock:
            rec = self._records.get(name)
            if rec is None or rec.source != "in-process":
                raise BackendNotFoundError(f"unregister: no in-process backend named {name!r}", kind=name,
                                           installed=tuple(self._records))
            if rec.module is not None:
                self.pm.unregister(rec.module)
            del self._records[name]

    # --- records as the library reports them ---------------------------------------------------------

    @staticmethod
    def status(rec: PluginRecord) -> tuple[str, str]:
        """``(status, reason)`` of a record, as :class:`sapient_core.BackendInfo` reports it."""
        if rec.status == "broken":
            return "broken", str(rec.error)
        if rec.status == "disabled":
            return "disabled", rec.disabled_reason
        if rec.status == "pending" or rec.caps is None:
            return "pending", "not loaded yet"
        if not rec.caps.available:
            return "unavailable", rec.caps.reason
        return "available", ""

    def info(self, rec: PluginRecord) -> BackendInfo:
        """The :class:`sapient_core.BackendInfo` of a record (its memory read if it is loaded)."""
        status, reason = self.status(rec)
        caps = rec.caps
        return BackendInfo(
            name=rec.name, status=status, reason=reason, device=caps.device if caps else None,
            version=caps.version if caps else rec.dist_version, distribution=rec.distribution,
            source=rec.source, target=rec.target, priority=caps.priority if caps else None,
            thread_safe=caps.thread_safe if caps else None, capabilities=caps,
            memory=rec.memory if caps else None,
            implemented_ops=tuple(op for op in hookspecs.OPS if op in rec.impls),
            error=rec.error if rec.status == "broken" else None)


def _dist_name(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or getattr(dist, "metadata", {}).get("Name", "") if dist else ""


def _dist_version_of(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return str(getattr(dist, "version", "") or "") if dist else ""


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""
