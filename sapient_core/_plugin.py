"""Loading one plugin and checking it against the hook specifications.

Every check that can refuse a plugin lives here, and each refusal becomes a :class:`PluginLoadError`
(or subclass) that discovery records beside the plugin; nothing here raises past discovery.  The
capability and memory reports are validated with the pydantic models of :mod:`sapient_core.models`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import threading
import types
from typing import Any, Callable

import pluggy

from . import hookspecs
from ._version import HOOK_API_VERSION, SUPPORTED_API_VERSIONS, __version__
from .errors import (IncompatiblePluginError, PluginLoadError, PluginValidationError, PluginWarning, is_interrupt,
                     warn)
from .memory import system_memory
from .models import (Capabilities, CapabilityReport, MemoryInfo, ValidationError,
                     describe_validation_error)

__all__ = ["PluginRecord", "load_into", "check_hooks", "check_capabilities", "unmarked_hooks", "ALL_HOOKS"]

ALL_HOOKS: dict[str, tuple[str, ...]] = {**{n: s.argnames for n, s in hookspecs.OPS.items()},
                                         **hookspecs.META_HOOKS}
_IMPL_ATTR = f"{hookspecs.PROJECT}_impl"


@dataclasses.dataclass(eq=False)
class PluginRecord:
    """Everything discovery knows about one plugin, loaded or not."""

    name: str
    target: str                      # "module.path" of the entry point, or repr of the object
    distribution: str = ""
    dist_version: str = ""
    source: str = "entry point"      # "entry point", "in-process", "built-in"
    loader: Callable[[], Any] | None = None
    status: str = "pending"          # pending | ok | broken | disabled
    error: PluginLoadError | None = None
    disabled_reason: str = ""
    module: Any = None
    impls: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    caps: Capabilities | None = None
    _memory: MemoryInfo | None = None
    lock: Any = dataclasses.field(default_factory=threading.RLock)
    warned: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    notes: list[str] = dataclasses.field(default_factory=list)   # hints shown by list (unmarked hooks)

    @property
    def implemented_ops(self) -> tuple[str, ...]:
        """The ops this plugin implements, in the contract's order."""
        return tuple(op for op in hookspecs.OPS if op in self.impls)

    @property
    def memory(self) -> MemoryInfo:
        """The device memory the plugin reports (system RAM when it has no memory hook); cached."""
        if self._memory is None:
            self._memory = _read_memory(self)
        return self._memory


def _read_memory(rec: PluginRecord) -> MemoryInfo:
    hook = rec.impls.get("backend_memory")
    if hook is None:
        return system_memory()
    where = f"{rec.name}.backend_memory()"
    try:
        report = hook[0]()
    except BaseException as exc:  # a plugin's failure (SystemExit included) must not take the caller down
        if is_interrupt(exc):
            raise
        return MemoryInfo(total_bytes=None, source=where, reason=f"backend_memory() raised {exc!r}")
    if not isinstance(report, dict):
        return MemoryInfo(total_bytes=None, source=where,
                          reason=f"backend_memory() returned {type(report).__name__} {report!r:.80}, not a dict")
    try:
        info = MemoryInfo.model_validate(report)
    except ValidationError as exc:
        return MemoryInfo(total_bytes=None, source=where,
                          reason=f"the report was refused: {describe_validation_error(exc, 'backend_memory()')}")
    if info.total_bytes is None and not info.reason:
        info = info.model_copy(update={"reason": "not reported"})
    return info


def _hookimpls(plugin: Any) -> dict[str, Any]:
    """Every attribute of ``plugin`` marked with ``@hookimpl``, by hook name."""
    found = {}
    for attr in dir(plugin):
        try:
            obj = getattr(plugin, attr)
        except BaseException as exc:  # noqa: BLE001 - a property that raises is simply not a hook
            if is_interrupt(exc):
                raise
            continue
        opts = getattr(obj, _IMPL_ATTR, None)
        if isinstance(opts, dict):
            found[opts.get("specname") or attr] = obj
    return found


def check_hooks(name: str, plugin: Any) -> None:
    """Refuse hook names no spec has, unknown or defaulted arguments, and wrappers."""
    impls = _hookimpls(plugin)
    for hook, fn in sorted(impls.items()):
        if hook not in ALL_HOOKS:
            close = difflib.get_close_matches(hook, ALL_HOOKS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise PluginValidationError(
                f"plugin {name!r}: {hook!r} is marked @hookimpl but no hook spec has that name{hint}. "
                f"To remedy this, rename it; the hooks are listed in sapient_core.hookspecs", plugin=name)
        opts = getattr(fn, _IMPL_ATTR)
        if opts.get("hookwrapper") or opts.get("wrapper"):
            raise PluginValidationError(f"plugin {name!r}: {hook} is a hook wrapper; sapient_core calls "
                                        f"each plugin's implementation directly, so wrappers are not "
                                        f"supported", plugin=name)
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise PluginValidationError(f"plugin {name!r}: cannot read the signature of {hook}: {exc}",
                                        plugin=name) from exc
        spec_args = ALL_HOOKS[hook]
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                stars = "*" if p.kind is p.VAR_POSITIONAL else "**"
                raise PluginValidationError(
                    f"plugin {name!r}: {hook}{sig} takes {stars}{p.name}. To remedy this, name the "
                    f"arguments it uses, from {spec_args}", plugin=name)
            if p.kind is p.KEYWORD_ONLY:
                raise PluginValidationError(
                    f"plugin {name!r}: {hook}{sig} takes {p.name!r} as keyword-only, but hooks are called "
                    f"with positional arguments. To remedy this, remove the '*'", plugin=name)
            if p.name not in spec_args:
                raise PluginValidationError(
                    f"plugin {name!r}: {hook}{sig} has argument {p.name!r}, which the spec does not have. "
                    f"To remedy this, use (a subset of) the spec's arguments {spec_args}", plugin=name)
            if p.default is not p.empty:
                raise PluginValidationError(
                    f"plugin {name!r}: {hook}{sig} gives {p.name!r} a default value ({p.default!r}); "
                    f"pluggy would never pass the caller's value. To remedy this, remove the default",
                    plugin=name)


def check_capabilities(rec: PluginRecord, report: Any) -> Capabilities:
    """Validate a plugin's capability report (refusing it with the field, the value and what was
    expected) and complete it with the plugin's name, version and distribution."""
    name = rec.name
    if not isinstance(report, dict):
        raise PluginValidationError(f"plugin {name!r}: backend_capabilities() returned "
                                    f"{type(report).__name__} {report!r:.80}, not a dict", plugin=name)
    api = report.get("api_version")
    if isinstance(api, int) and not isinstance(api, bool) and api not in SUPPORTED_API_VERSIONS:
        pkg = rec.distribution or name
        supported = ", ".join(map(str, SUPPORTED_API_VERSIONS))
        if api < min(SUPPORTED_API_VERSIONS):
            remedy = f"pip install --upgrade {pkg} (a release built for hook API {HOOK_API_VERSION})"
        else:
            remedy = f"pip install --upgrade sapient-core (to a release that speaks hook API {api})"
        raise IncompatiblePluginError(
            f"plugin {name!r} ({pkg} {rec.dist_version or '?'}) was built for hook API version {api}, but "
            f"sapient-core {__version__} speaks version {HOOK_API_VERSION} (and accepts {supported}). To "
            f"remedy this: {remedy}", plugin=name)
    try:
        checked = CapabilityReport.model_validate(report)
    except ValidationError as exc:
        text = describe_validation_error(exc, "backend_capabilities()")
        if any(e.get("type") == "extra_forbidden" for e in exc.errors()):
            text += f" (the known keys are {', '.join(CapabilityReport.model_fields)})"
        raise PluginValidationError(f"plugin {name!r}: {text}. The report's schema: sapient-backends schema",
                                    plugin=name) from None
    return Capabilities(
        name=name,
        version=checked.version if checked.version is not None else (rec.dist_version or "0"),
        api_version=checked.api_version,
        device=checked.device,
        available=checked.available,
        reason="" if checked.available else checked.reason,
        priority=checked.priority,
        thread_safe=checked.thread_safe,
        unavailable_devices={k.lower(): v for k, v in checked.unavailable_devices.items()},
        description=checked.description,
        distribution=rec.distribution,
    )


def load_into(pm: pluggy.PluginManager, rec: PluginRecord, plugin: Any = None) -> None:
    """Import (unless ``plugin`` is given), check and register ``rec``; raise PluginLoadError on failure."""
    name = rec.name
    if plugin is None:
        try:
            plugin = rec.loader()
        except BaseException as exc:  # sys.exit() or any BaseException at import: the plugin is broken
            if is_interrupt(exc):
                raise
            raise PluginLoadError(f"plugin {name!r}: importing {rec.target} failed: "
                                  f"{type(exc).__name__}: {exc}", plugin=name) from exc
    check_hooks(name, plugin)
    try:
        pm.register(plugin, name=name)
    except BaseException as exc:
        if is_interrupt(exc):
            raise
        raise PluginValidationError(f"plugin {name!r}: {type(exc).__name__}: {exc}", plugin=name) from exc
    try:
        impls = {}
        for caller in pm.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    impls[caller.name] = (impl.function, tuple(impl.argnames))
        if "backend_capabilities" not in impls:
            raise PluginValidationError(f"plugin {name!r} does not implement backend_capabilities, which "
                                        f"every plugin must", plugin=name)
        try:
            report = impls["backend_capabilities"][0]()
        except BaseException as exc:  # SystemExit and the like are the plugin's fault too
            if is_interrupt(exc):
                raise
            raise PluginLoadError(f"plugin {name!r}: backend_capabilities() raised "
                                  f"{type(exc).__name__}: {exc}", plugin=name) from exc
        rec.caps = check_capabilities(rec, report)
    except BaseException:
        pm.unregister(plugin)
        raise
    rec.module = plugin
    rec.impls = impls
    rec.status = "ok"
    rec.notes = unmarked_hooks(plugin, impls)
    for note in rec.notes:
        warn(f"plugin {name!r}: {note}", PluginWarning)


def unmarked_hooks(plugin: Any, impls: dict[str, Any]) -> list[str]:
    """A note for each function of ``plugin`` named like a hook it does not implement but not marked
    ``@hookimpl`` (pluggy ignores it, so the CPU reference serves that op): the one-line fix."""
    module = plugin.__name__ if isinstance(plugin, types.ModuleType) else None
    notes = []
    for hook in ALL_HOOKS:
        if hook in impls:
            continue
        try:
            obj = getattr(plugin, hook, None)
        except BaseException as exc:  # noqa: BLE001 - a property that raises is not a function
            if is_interrupt(exc):
                raise
            continue
        if not inspect.isfunction(obj) or isinstance(getattr(obj, _IMPL_ATTR, None), dict):
            continue
        if module is not None and getattr(obj, "__module__", None) != module:
            continue                     # imported from elsewhere (a kernel module): not meant as the hook
        served = (f"the CPU reference serves {hook}" if hook in hookspecs.OPS
                  else "its default is used")
        notes.append(f"{hook}() is named like a hook but not marked @hookimpl, so sapient_core never calls it "
                     f"({served}). To remedy this, decorate it with @sapient_core.hookimpl")
    return notes
