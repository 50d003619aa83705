"""Finding and loading the plugins, and recording each one's status.

:class:`Discovery` reads the entry-point group ``sapient_core.backends`` (metadata only: no plugin is
imported) the first time a call needs it, honouring ``SAPIENT_PLUGINS`` and
``SAPIENT_DISABLE_PLUGIN_AUTOLOAD`` as they are at that moment.  Each plugin is imported on its own,
only when a call needs it (:meth:`Discovery.ensure_loaded`); one that fails is recorded as
``broken`` with the reason (see :mod:`sapient_core._plugin`) and skipped, and a
:class:`sapient_core.PluginWarning` says so.  Plugins that the switches leave out are recorded as
``disabled`` and never imported.  The CPU reference is always there.

Names (:meth:`Discovery._add_name`): the official names (:data:`OFFICIAL_NAMES`: ``cpu``, ``mlx``) are
used only from their own distributions, any other distribution's entry point of that name is refused;
a name two or more distributions declare is refused for all of them unless ``SAPIENT_PLUGINS`` picks one
(``name@distribution``).  The switches are read by :mod:`sapient_core.switches` (accepted spellings,
one :class:`sapient_core.SwitchWarning` for anything else or for an allow-list entry that matches
nothing).

What a kind resolves to is decided elsewhere (:mod:`sapient_core.resolution`), from the
:class:`sapient_core.BackendInfo` records this module produces.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
import threading
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs, switches
from ._plugin import PluginRecord, load_into
from .errors import (BackendNotFoundError, BackendUnavailableError, PluginLoadError, PluginValidationError,
                     PluginWarning, warn)
from .models import BackendInfo

__all__ = ["ENTRY_POINT_GROUP", "REFERENCE", "REFERENCE_DIST", "REFERENCE_MODULE", "OFFICIAL_NAMES", "Discovery",
           "installed_entry_points"]

logger = logging.getLogger("sapient_core")

ENTRY_POINT_GROUP = "sapient_core.backends"
#: The CPU reference plugin: its entry-point name, distribution and module.
REFERENCE = "cpu"
REFERENCE_DIST = "sapient-backend-cpu"
REFERENCE_MODULE = "sapient_backend_cpu.plugin"
#: The backend names that belong to a distribution of this project: an entry point of that name from any
#: other distribution is refused (listed as broken), whatever the order of the distributions.
OFFICIAL_NAMES = {REFERENCE: REFERENCE_DIST, "mlx": "sapient-backend-mlx"}
_NAME_RE = switches.NAME_RE


_norm_dist = switches.norm_dist


def installed_entry_points() -> Iterable[Any]:
    """The installed entry points of the group (the function discovery calls; tests may replace it)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


class Discovery:
    """The plugins of one registry: found through entry points or registered in-process.

    :param entry_points: the function that lists entry points (default: :func:`installed_entry_points`).
    """

    def __init__(self, entry_points: Callable[[], Iterable[Any]] | None = None):
        self._entry_points = entry_points or installed_entry_points
        self.lock = threading.RLock()
        self._discovered = False
        self._records: dict[str, PluginRecord] = {}
        self._extra: list[PluginRecord] = []     # refused entry points (contested, reserved, invalid names)
        self._disable_raw = ""
        #: (variable, value) pairs already warned about (see sapient_core.switches); cleared by refresh().
        self.warned: set[tuple[str, str]] = set()
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
            self.warned.clear()
            self._discovered = False

    def discover(self) -> None:
        """Read the entry points (once; again after :meth:`refresh`).  Imports no plugin."""
        if self._discovered:
            return
        with self.lock:
            if self._discovered:
                return
            disable = switches.flag("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", bad_means=True, warned=self.warned,
                                    effect="no plugin but the CPU reference is loaded")
            self._disable_raw = os.environ.get("SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "") if disable else ""
            allow = switches.parse_allow_list()
            try:
                eps = sorted(self._entry_points(), key=lambda e: (e.name, _dist_name(e)))
            except Exception as exc:  # noqa: BLE001 - broken metadata must not break the CPU reference
                logger.warning("reading the entry points of %s failed: %r", ENTRY_POINT_GROUP, exc)
                eps = []
            claims: dict[str, list[Any]] = {}
            for ep in eps:
                claims.setdefault(ep.name, []).append(ep)
            for name, claimants in claims.items():
                self._add_name(name, claimants, disable, allow)
            if REFERENCE not in self._records:
                self._records[REFERENCE] = PluginRecord(
                    name=REFERENCE, target=REFERENCE_MODULE, distribution=REFERENCE_DIST,
                    dist_version=_dist_version(REFERENCE_DIST), source="built-in",
                    loader=lambda: importlib.import_module(REFERENCE_MODULE))
            if not disable:
                self._check_allow_list(allow, claims)
            self._discovered = True
            logger.debug("discovered plugins: %s", ", ".join(
                f"{r.name} ({r.status})" for r in self._records.values()))

    def _refuse(self, rec: PluginRecord, problem: str, *, status: str = "broken", warn_now: bool = True) -> None:
        """Record ``rec`` as refused (shown by ``list``, never loaded)."""
        if status == "broken":
            rec.status, rec.error = "broken", PluginLoadError(problem, plugin=rec.name)
        else:
            rec.status, rec.disabled_reason = status, problem
        self._extra.append(rec)
        if warn_now:
            warn(problem, PluginWarning)

    def _add_name(self, name: str, claimants: list[Any], disable: bool, allow: switches.AllowList) -> None:
        """Decide what the entry points declaring ``name`` become: at most one usable record."""
        recs = [PluginRecord(name=name, target=ep.value, distribution=_dist_name(ep),
                             dist_version=_dist_version_of(ep), loader=ep.load) for ep in claimants]
        if not _NAME_RE.match(name) or name == "auto":
            for rec in recs:
                self._refuse(rec, f"entry-point name {name!r} (from {rec.distribution or '?'}) is not a valid "
                                  f"backend name: use a lowercase identifier other than 'auto'")
            return
        official = OFFICIAL_NAMES.get(name)
        if official is not None:
            owners = [r for r in recs if _norm_dist(r.distribution) == official
                      and (name != REFERENCE or r.target == REFERENCE_MODULE)]
            for rec in recs:
                if rec not in owners[:1]:
                    what = "the CPU reference" if name == REFERENCE else "the official backend"
                    self._refuse(rec, f"entry-point name {name!r} (from {rec.distribution or '?'}, {rec.target}) "
                                      f"is reserved for {what} ({official}). To remedy this, rename the entry point")
            if not owners:
                return
            recs = owners[:1]
        elif len(recs) > 1:
            pin = (allow.entries or {}).get(name)
            picked = [r for r in recs if pin is not None and _norm_dist(r.distribution) == pin]
            if not picked:
                listed = " and ".join(f"{r.distribution or '?'} ({r.target})" for r in recs)
                problem = (f"backend name {name!r} is claimed by {len(recs)} distributions: {listed}; none of them "
                           f"is used, since any could be an impostor. To remedy this, uninstall all but one, or "
                           f"pick one with SAPIENT_PLUGINS={name}@{recs[0].distribution or 'DISTRIBUTION'}")
                warn(problem, PluginWarning)
                for i, rec in enumerate(recs):
                    rec.status, rec.error = "broken", PluginLoadError(problem, plugin=name)
                    if i:
                        self._extra.append(rec)
                self._records[name] = recs[0]
                return
            for rec in recs:
                if rec is not picked[0]:
                    self._refuse(rec, f"SAPIENT_PLUGINS={allow.raw!r} picks {picked[0].distribution}'s {name!r}, "
                                      f"not {rec.distribution or '?'}'s", status="disabled", warn_now=False)
            recs = picked[:1]
        rec = recs[0]
        if name != REFERENCE:
            self._apply_switches(rec, disable, allow)
        self._records[name] = rec

    def _apply_switches(self, rec: PluginRecord, disable: bool, allow: switches.AllowList) -> None:
        if disable:
            raw = self._disable_raw.strip()
            shown = raw if switches.on_off(raw) else f"{raw!r} (an unrecognised value, read as on)"
            rec.status = "disabled"
            rec.disabled_reason = (f"SAPIENT_DISABLE_PLUGIN_AUTOLOAD={shown} loads only the CPU reference. To use "
                                   f"it, unset SAPIENT_DISABLE_PLUGIN_AUTOLOAD")
            return
        if allow.entries is None:
            return
        if rec.name not in allow.entries:
            rec.status = "disabled"
            rec.disabled_reason = (f"not in SAPIENT_PLUGINS={allow.raw!r}. To use it, add it to SAPIENT_PLUGINS "
                                   f"(or unset SAPIENT_PLUGINS)")
            return
        pin = allow.entries[rec.name]
        if pin is not None and _norm_dist(rec.distribution) != pin:
            rec.status = "disabled"
            rec.disabled_reason = (f"SAPIENT_PLUGINS={allow.raw!r} asks for {rec.name!r} from {pin}, but the "
                                   f"installed {rec.name!r} comes from {rec.distribution or '?'}. To use it, write "
                                   f"{rec.name}@{rec.distribution or '?'} (or {rec.name}) in SAPIENT_PLUGINS")

    def _check_allow_list(self, allow: switches.AllowList, claims: dict[str, list[Any]]) -> None:
        """One SwitchWarning for the entries of SAPIENT_PLUGINS that match no installed plugin."""
        if allow.entries is None:
            return
        known = set(claims) | set(self._records)
        problems = [f"{entry!r} is not of the form NAME or NAME@DISTRIBUTION" for entry in allow.malformed]
        for name, pin in allow.entries.items():
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                problems.append(f"{name!r} matches no installed plugin"
                                + (f" (did you mean {close[0]!r}?)" if close else ""))
            elif pin is not None and name != REFERENCE:
                dists = [_dist_name(ep) for ep in claims.get(name, ())]
                if not any(_norm_dist(d) == pin for d in dists):
                    problems.append(f"'{name}@{pin}': no installed distribution {pin} declares {name!r} (it comes "
                                    f"from {', '.join(dists) or 'in-process registration'})")
            elif pin is not None and pin != REFERENCE_DIST:
                problems.append(f"'{name}@{pin}': {name!r} is always the CPU reference ({REFERENCE_DIST})")
        if not problems:
            return
        installed = ", ".join(repr(n) for n in sorted(known))
        raw = allow.raw
        switches.warn_once(
            self.warned, "SAPIENT_PLUGINS", raw or "",
            f"SAPIENT_PLUGINS={raw!r}: {'; '.join(problems)}. Installed plugins: {installed}. Those entries allow "
            f"nothing: only the plugins it names that are installed are loaded (the CPU reference always is). To "
            f"remedy this, correct the entries (NAME or NAME@DISTRIBUTION, comma-separated), or unset SAPIENT_PLUGINS "
            f"to load every plugin")

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
        if name in OFFICIAL_NAMES:
            raise PluginValidationError(f"register: {name!r} is reserved for {OFFICIAL_NAMES[name]}. To remedy "
                                        f"this, register it under another name", plugin=name)
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
            implemented_ops=rec.implemented_ops, notes=tuple(rec.notes),
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
