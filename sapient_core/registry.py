"""Discovery of plugins through entry points, and resolution of a kind to a backend.

Discovery reads the entry-point group ``sapient_core.backends`` (metadata only: no plugin is imported)
the first time a call needs it, honouring ``SAPIENT_PLUGINS`` and ``SAPIENT_DISABLE_PLUGIN_AUTOLOAD``
as they are at that moment.  Each plugin is imported on its own, only when a call needs it; one that
fails is recorded with the reason (see :mod:`sapient_core._plugin`) and skipped.

Resolution (``get_backend`` / ``explain``) follows the contract's table: ``"cpu"``, a plugin name, a
device name, or ``"auto"``.  Every decision is explained by an :class:`Explanation` and logged at
``debug`` level on the ``sapient_core`` logger.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
import operator
import os
import re
import threading
import warnings
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from ._plugin import Capabilities, PluginRecord, load_into
from .backend import Backend
from .errors import (BackendNotFoundError, BackendUnavailableError, PluginLoadError, PluginValidationError,
                     PluginWarning)
from .memory import FitPolicy, MemoryInfo
from .memory import _fmt as _fmt_bytes

__all__ = ["ENTRY_POINT_GROUP", "REFERENCE", "Registry", "BackendInfo", "Candidate", "Explanation"]

logger = logging.getLogger("sapient_core")

ENTRY_POINT_GROUP = "sapient_core.backends"
#: The CPU reference plugin: its entry-point name, distribution and module.
REFERENCE = "cpu"
REFERENCE_DIST = "sapient-backend-cpu"
REFERENCE_MODULE = "sapient_backend_cpu.plugin"
#: Remedies for well-known devices that no installed plugin provides.
DEVICE_REMEDIES = {
    "metal": "pip install sapient-backend-mlx (on an Apple Silicon Mac)",
    "cuda": "pip install 'sapient-backend-mlx[cuda]' (Linux with an NVIDIA GPU)",
}
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed_entry_points() -> Iterable[Any]:
    """The installed entry points of the group (the function the registry calls; tests may replace it)."""
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """One discovered plugin, as ``list_backends()`` shows it.

    :ivar status: ``"available"``, ``"unavailable"``, ``"broken"`` or ``"disabled"`` (not allowed by
        ``SAPIENT_PLUGINS`` / ``SAPIENT_DISABLE_PLUGIN_AUTOLOAD``: never imported).
    :ivar reason: why it is unavailable, broken or disabled ("" when available).
    :ivar capabilities: the full report, for loaded plugins.
    :ivar memory: the device memory it reports, for loaded plugins.
    :ivar implemented_ops: the ops it implements itself.
    :ivar error: for a broken plugin, the :class:`PluginLoadError` (or subclass) that refused it.
    """

    name: str
    status: str
    reason: str
    device: str | None
    version: str
    distribution: str
    source: str
    target: str
    priority: int | None
    thread_safe: bool | None
    capabilities: Capabilities | None
    memory: MemoryInfo | None
    implemented_ops: tuple[str, ...]
    error: PluginLoadError | None = dataclasses.field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict; ``error`` becomes the exception's class name ("" when not broken)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["capabilities"] = self.capabilities.as_dict() if self.capabilities else None
        d["memory"] = self.memory.as_dict() if self.memory else None
        d["implemented_ops"] = list(self.implemented_ops)
        d["error"] = type(self.error).__name__ if self.error is not None else ""
        return d


@dataclasses.dataclass
class Candidate:
    """One plugin considered by a resolution, and why it was taken or passed over."""

    name: str
    status: str
    device: str | None
    priority: int | None
    chosen: bool
    reason: str
    memory: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Explanation:
    """How a kind resolves for a model size: the rule applied, each candidate, the result.

    ``chosen`` is the plugin ``get_backend`` returns, or None when it would raise ``error``.
    """

    kind: str
    source: str
    rule: str
    model_bytes: int
    chosen: str | None
    candidates: list[Candidate]
    error: str | None = None
    error_type: type | None = dataclasses.field(default=None, repr=False)
    error_reasons: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "rule": self.rule, "model_bytes": self.model_bytes,
                "chosen": self.chosen, "error": self.error,
                "candidates": [c.as_dict() for c in self.candidates]}

    def __str__(self) -> str:
        size = f" ({_fmt_bytes(self.model_bytes)})" if self.model_bytes >= 1024 else ""
        lines = [f"kind {self.kind!r} (from {self.source}), model_bytes={self.model_bytes}{size}: {self.rule}"]
        for c in self.candidates:
            mark = "->" if c.chosen else "  "
            lines.append(f" {mark} {c.name:<12} {c.status:<11} device={c.device or '-':<6} {c.reason}")
            if c.memory:
                lines.append(f"    {'':<12} memory: {c.memory}")
        lines.append(f"result: {self.chosen!r}" if self.chosen else f"error: {self.error}")
        return "\n".join(lines)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


class Registry:
    """Discovers plugins and resolves kinds to backends.

    :param entry_points: the function that lists entry points (default: the installed ones of
        ``sapient_core.backends``, read through ``importlib.metadata``).
    :param policy: the memory fit policy (default: :data:`sapient_core.memory.DEFAULT_POLICY` at call
        time).
    """

    def __init__(self, *, entry_points: Callable[[], Iterable[Any]] | None = None,
                 policy: FitPolicy | None = None):
        self._entry_points = entry_points or _installed_entry_points
        self._policy = policy
        self._lock = threading.RLock()
        self._discovered = False
        self._records: dict[str, PluginRecord] = {}
        self._extra: list[PluginRecord] = []     # duplicates and invalid names: shown, never used
        self._backends: dict[tuple[str, bool], Backend] = {}
        self._allow_desc = ""
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)

    # --- discovery ----------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget everything discovered; the next call discovers again (re-reading the environment)."""
        with self._lock:
            for rec in list(self._records.values()):
                if rec.module is not None and rec.source != "in-process":
                    self.pm.unregister(rec.module)
            self._records = {n: r for n, r in self._records.items() if r.source == "in-process"}
            self._extra = []
            self._backends.clear()
            self._discovered = False

    def _discover(self) -> None:
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            disable = _env_flag("SAPIENT_DISABLE_PLUGIN_AUTOLOAD")
            allow_raw = os.environ.get("SAPIENT_PLUGINS")
            allow = None if allow_raw is None else {p.strip().lower() for p in allow_raw.split(",") if p.strip()}
            if disable:
                self._allow_desc = "SAPIENT_DISABLE_PLUGIN_AUTOLOAD=1 loads only the CPU reference"
            elif allow is not None:
                self._allow_desc = f"not in SAPIENT_PLUGINS={allow_raw!r}"
            try:
                eps = sorted(self._entry_points(), key=lambda e: (e.name, _dist_name(e)))
            except Exception as exc:  # noqa: BLE001 - broken metadata must not break the CPU reference
                logger.warning("reading the entry points of %s failed: %r", ENTRY_POINT_GROUP, exc)
                eps = []
            for ep in eps:
                self._add_entry_point(ep, disable, allow)
            if REFERENCE not in self._records:
                self._records[REFERENCE] = PluginRecord(
                    name=REFERENCE, target=REFERENCE_MODULE, distribution=REFERENCE_DIST,
                    dist_version=_dist_version(REFERENCE_DIST), source="built-in",
                    loader=lambda: importlib.import_module(REFERENCE_MODULE))
            self._discovered = True
            logger.debug("discovered plugins: %s", ", ".join(
                f"{r.name} ({r.status})" for r in self._records.values()))

    def _add_entry_point(self, ep: Any, disable: bool, allow: set[str] | None) -> None:
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
            warnings.warn(problem, PluginWarning, stacklevel=4)
            return
        if name != REFERENCE and (disable or (allow is not None and name not in allow)):
            rec.status = "disabled"
        self._records[name] = rec

    def _ensure_loaded(self, rec: PluginRecord) -> None:
        if rec.status != "pending":
            return
        with self._lock:
            if rec.status != "pending":
                return
            try:
                load_into(self.pm, rec)
            except PluginLoadError as exc:
                rec.status, rec.error = "broken", exc
                warnings.warn(f"{exc}; the plugin is skipped and the others keep working", PluginWarning,
                              stacklevel=4)
                logger.debug("plugin %r is broken: %s", rec.name, exc, exc_info=exc.__cause__)
            else:
                logger.debug("loaded plugin %r from %s: device=%s available=%s", rec.name, rec.target,
                             rec.caps.device, rec.caps.available)

    def _all(self) -> list[PluginRecord]:
        self._discover()
        for rec in list(self._records.values()):
            self._ensure_loaded(rec)
        return list(self._records.values())

    # --- in-process registration ----------------------------------------------------------------------

    def register(self, plugin: Any, name: str) -> None:
        """Register ``plugin`` (a module or object with ``@hookimpl`` functions) under ``name``, now.

        For notebooks and tests; raises :class:`PluginValidationError` if the plugin is invalid.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in ("auto", REFERENCE):
            raise PluginValidationError(f"register: {name!r} is not a valid backend name (a lowercase "
                                        f"identifier other than 'auto' and 'cpu')", plugin=name)
        with self._lock:
            self._discover()
            if name in self._records and self._records[name].status != "disabled":
                raise PluginValidationError(f"register: a backend named {name!r} is already registered "
                                            f"({self._records[name].target}); unregister it first",
                                            plugin=name)
            rec = PluginRecord(name=name, target=repr(plugin), source="in-process")
            load_into(self.pm, rec, plugin)
            self._records[name] = rec
            self._backends.clear()

    def unregister(self, name: str) -> None:
        """Remove an in-process registered plugin."""
        with self._lock:
            rec = self._records.get(name)
            if rec is None or rec.source != "in-process":
                raise BackendNotFoundError(f"unregister: no in-process backend named {name!r}", kind=name,
                                           installed=tuple(self._records))
            if rec.module is not None:
                self.pm.unregister(rec.module)
            del self._records[name]
            self._backends.clear()

    # --- listing ------------------------------------------------------------------------------------

    def list_backends(self) -> list[BackendInfo]:
        """Every discovered plugin (loading the allowed ones), broken and unavailable ones included."""
        with self._lock:
            records = self._all() + list(self._extra)
        return [self._info(r) for r in records]

    def _status(self, rec: PluginRecord) -> tuple[str, str]:
        if rec.status == "broken":
            return "broken", str(rec.error)
        if rec.status == "disabled":
            return "disabled", self._allow_desc
        if rec.status == "pending":
            return "pending", "not loaded yet"
        if not rec.caps.available:
            return "unavailable", rec.caps.reason
        return "available", ""

    def _info(self, rec: PluginRecord) -> BackendInfo:
        status, reason = self._status(rec)
        caps = rec.caps
        return BackendInfo(
            name=rec.name, status=status, reason=reason, device=caps.device if caps else None,
            version=caps.version if caps else rec.dist_version, distribution=rec.distribution,
            source=rec.source, target=rec.target, priority=caps.priority if caps else None,
            thread_safe=caps.thread_safe if caps else None, capabilities=caps,
            memory=rec.memory if caps else None,
            implemented_ops=tuple(op for op in hookspecs.OPS if op in rec.impls),
            error=rec.error if rec.status == "broken" else None)

    # --- resolution ---------------------------------------------------------------------------------

    def explain(self, kind: str | None = None, *, model_bytes: int = 0) -> Explanation:
        """How ``kind`` resolves for a model of ``model_bytes``: each candidate and why."""
        kind, source = _resolve_kind_arg(kind)
        model_bytes = _check_model_bytes(model_bytes)
        policy = self._policy
        if policy is None:
            from . import memory
            policy = memory.DEFAULT_POLICY
        with self._lock:
            self._discover()
            if kind == "auto":
                exp = self._explain_auto(kind, source, model_bytes, policy)
            elif kind in self._records:
                exp = self._explain_name(kind, source, model_bytes, policy)
            else:
                exp = self._explain_device(kind, source, model_bytes, policy)
        for c in exp.candidates:
            logger.debug("resolve %r: %s %s - %s %s", kind, "took" if c.chosen else "passed over", c.name,
                         c.reason, c.memory)
        if exp.chosen:
            logger.debug("resolve %r (model_bytes=%d) -> %r", kind, model_bytes, exp.chosen)
        return exp

    def _candidate(self, rec: PluginRecord, chosen: bool, reason: str, memory: str = "") -> Candidate:
        status, _ = self._status(rec)
        return Candidate(rec.name, status, rec.caps.device if rec.caps else None,
                         rec.caps.priority if rec.caps else None, chosen, reason, memory)

    def _explain_name(self, kind: str, source: str, model_bytes: int, policy: FitPolicy) -> Explanation:
        rec = self._records[kind]
        self._ensure_loaded(rec)
        rule = "the plugin of that name, on its best available device"
        status, reason = self._status(rec)
        if status != "available":
            if status == "disabled":
                msg = (f"backend {kind!r} is installed but not loaded: {reason}. To remedy this, add it to "
                       f"SAPIENT_PLUGINS (or unset SAPIENT_PLUGINS / SAPIENT_DISABLE_PLUGIN_AUTOLOAD)")
            elif status == "broken":
                msg = (f"backend {kind!r} is installed but broken: {reason}. `sapient-backends list` shows every "
                       f"plugin's status; get_backend('auto') uses the ones that work")
            else:
                msg = (f"backend {kind!r} is not available here: {reason}. get_backend('auto') picks the best "
                       f"available backend")
            cand = self._candidate(rec, False, reason)
            return Explanation(kind, source, rule, model_bytes, None, [cand], msg,
                               BackendUnavailableError, {kind: reason})
        fit = policy.decide(model_bytes, rec.memory)
        note = "asked for by name"
        if not fit.fits:
            note += "; the model may not fit (used anyway, because it was asked for by name)"
            logger.warning("backend %r was asked for by name, but a %d-byte model may not fit: %s", kind,
                           model_bytes, fit.explanation)
        return Explanation(kind, source, rule, model_bytes, kind,
                           [self._candidate(rec, True, note, fit.explanation)])

    def _explain_device(self, kind: str, source: str, model_bytes: int, policy: FitPolicy) -> Explanation:
        records = self._all()
        rule = f"the highest-priority available plugin whose device is {kind!r}"
        providers = [r for r in records if r.status == "ok" and r.caps.device == kind and r.caps.available]
        providers.sort(key=lambda r: (-r.caps.priority, r.name))
        cands, reasons = [], {}
        for r in records:
            status, why = self._status(r)
            if r in providers:
                chosen = r is providers[0]
                fit = policy.decide(model_bytes, r.memory)
                text = (f"provides {kind!r} (priority {r.caps.priority})" if chosen else
                        f"provides {kind!r}, but {providers[0].name!r} has a higher priority")
                if chosen and not fit.fits:
                    text += "; the model may not fit (used anyway, because the device was asked for)"
                    logger.warning("device %r was asked for, but a %d-byte model may not fit on %r: %s", kind,
                                   model_bytes, r.name, fit.explanation)
                cands.append(self._candidate(r, chosen, text, fit.explanation))
            elif r.status == "ok" and r.caps.device == kind:
                reasons[r.name] = why
                cands.append(self._candidate(r, False, f"would provide {kind!r} but is unavailable: {why}"))
            elif r.status == "ok" and kind in r.caps.unavailable_devices:
                reasons[r.name] = r.caps.unavailable_devices[kind]
                cands.append(self._candidate(r, False, f"can provide {kind!r} elsewhere, not here: "
                                                       f"{r.caps.unavailable_devices[kind]}"))
            elif status in ("broken", "disabled"):
                cands.append(self._candidate(r, False, f"{status}: {why}"))
            else:
                cands.append(self._candidate(r, False, f"runs on {r.caps.device!r}, not {kind!r}"))
        if providers:
            return Explanation(kind, source, rule, model_bytes, providers[0].name, cands)
        installed = tuple(self._records)
        broken = [r.name for r in records if r.status in ("broken", "disabled")]
        tail = f" (not asked, because broken or disabled: {', '.join(broken)})" if broken else ""
        if reasons:
            detail = "; ".join(f"{n}: {w}" for n, w in reasons.items())
            msg = (f"no available backend provides {kind!r}: {detail}{tail}. get_backend('auto') picks the best "
                   f"available backend")
            return Explanation(kind, source, rule, model_bytes, None, cands, msg, BackendUnavailableError,
                               reasons)
        if kind in DEVICE_REMEDIES:
            msg = (f"no installed plugin provides {kind!r} (installed: {', '.join(map(repr, installed))}){tail}. "
                   f"To get it: {DEVICE_REMEDIES[kind]}; or use get_backend('auto')")
            return Explanation(kind, source, rule, model_bytes, None, cands, msg, BackendNotFoundError)
        devices = sorted({r.caps.device for r in records if r.status == "ok"}
                         | {d for r in records if r.status == "ok" for d in r.caps.unavailable_devices})
        msg = (f"unknown backend kind {kind!r}. Installed plugins: {', '.join(map(repr, installed))}; "
               f"devices they know: {', '.join(map(repr, devices))}{tail}. Valid kinds: 'auto', a plugin "
               f"name or a device name; see `sapient-backends list`")
        return Explanation(kind, source, "unknown kind", model_bytes, None, cands, msg, BackendNotFoundError)

    def _explain_auto(self, kind: str, source: str, model_bytes: int, policy: FitPolicy) -> Explanation:
        records = self._all()
        rule = ("the highest-priority available accelerator plugin (device other than cpu) whose memory "
                "check passes; otherwise the CPU reference")
        eligible, cands = [], {}
        for r in records:
            status, why = self._status(r)
            if r.name == REFERENCE:
                continue
            if status != "available":
                cands[r.name] = self._candidate(r, False, f"{status}: {why}")
            elif r.caps.device == "cpu":
                cands[r.name] = self._candidate(r, False, "runs on the CPU; auto picks accelerators only "
                                                          "(ask for it by name to use it)")
            else:
                fit = policy.decide(model_bytes, r.memory)
                if fit.fits:
                    eligible.append((r, fit))
                else:
                    cands[r.name] = self._candidate(r, False, "the model does not fit", fit.explanation)
                    logger.debug("auto: %r passed over: %s", r.name, fit.explanation)
        eligible.sort(key=lambda rf: (-rf[0].caps.priority, rf[0].name))
        for i, (r, fit) in enumerate(eligible):
            text = (f"highest-priority accelerator that fits (priority {r.caps.priority})" if i == 0 else
                    f"fits, but {eligible[0][0].name!r} has a higher priority")
            cands[r.name] = self._candidate(r, i == 0, text, fit.explanation)
        ref = self._records[REFERENCE]
        self._ensure_loaded(ref)
        order = [self._candidate(ref, False, "")] + [cands[r.name] for r in records if r.name in cands]
        if eligible:
            order[0].reason = "the fallback; not needed"
            return Explanation(kind, source, rule, model_bytes, eligible[0][0].name, order)
        ref_status, ref_why = self._status(ref)
        if ref_status != "available":
            order[0].reason = f"{ref_status}: {ref_why}"
            msg = (f"no accelerator is available and the CPU reference is {ref_status}: {ref_why}. To remedy "
                   f"this: pip install --force-reinstall {REFERENCE_DIST}")
            return Explanation(kind, source, rule, model_bytes, None, order, msg, BackendUnavailableError,
                               {REFERENCE: ref_why})
        fit = policy.decide(model_bytes, ref.memory)
        order[0].chosen = True
        order[0].reason = "no accelerator is available and fits, so the CPU reference"
        order[0].memory = fit.explanation
        if not fit.fits:
            logger.warning("auto chose the CPU reference, but a %d-byte model may not fit in RAM either: %s",
                           model_bytes, fit.explanation)
        return Explanation(kind, source, rule, model_bytes, REFERENCE, order)

    def get_backend(self, kind: str | None = None, *, model_bytes: int = 0,
                    strict: bool | None = None) -> Backend:
        """Resolve ``kind`` (see the contract's table) and return its :class:`Backend`.

        :param kind: ``"auto"``, ``"cpu"``, a plugin name or a device name; None reads
            ``SAPIENT_BACKEND`` (default ``"auto"``).
        :param model_bytes: the model's weight bytes, for the memory check (0 = unknown, always fits).
        :param strict: raise instead of falling back to the CPU reference; None reads ``SAPIENT_STRICT``.
        :raises BackendNotFoundError: the kind names nothing installed (lists what is).
        :raises BackendUnavailableError: the kind is known but unusable here (says why).
        """
        exp = self.explain(kind, model_bytes=model_bytes)
        if exp.chosen is None:
            raise exp.error_type(exp.error, kind=exp.kind, installed=tuple(self._records),
                                 **({"reasons": exp.error_reasons}
                                    if issubclass(exp.error_type, BackendUnavailableError) else {}))
        if strict is None:
            strict = _env_flag("SAPIENT_STRICT")
        key = (exp.chosen, bool(strict))
        with self._lock:
            backend = self._backends.get(key)
            if backend is None:
                backend = Backend(self._records[exp.chosen], self._reference(), strict=bool(strict),
                                  explanation=exp)
                self._backends[key] = backend
            else:  # the same (cached) object: it carries the latest resolution's explanation
                backend.explanation = exp
        return backend

    def _reference(self) -> PluginRecord:
        ref = self._records[REFERENCE]
        self._ensure_loaded(ref)
        if ref.status != "ok":
            raise BackendUnavailableError(
                f"the CPU reference backend is broken: {ref.error}. Every backend needs it for the ops it "
                f"does not implement. To remedy this: pip install --force-reinstall {REFERENCE_DIST}",
                kind=REFERENCE, installed=tuple(self._records), reasons={REFERENCE: str(ref.error)})
        return ref


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
            return model_bytes
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
