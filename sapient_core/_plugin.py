"""Loading one plugin and checking it against the hook specifications.

Every check that can refuse a plugin lives here, and each refusal becomes a :class:`PluginLoadError`
(or subclass) that the registry records beside the plugin; nothing here raises past the registry.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import threading
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import IncompatiblePluginError, PluginLoadError, PluginValidationError
from .memory import MemoryInfo, system_memory

__all__ = ["Capabilities", "PluginRecord", "load_into", "ALL_HOOKS"]

ALL_HOOKS: dict[str, tuple[str, ...]] = {**hookspecs.OPS, **hookspecs.META_HOOKS}
_IMPL_ATTR = f"{hookspecs.PROJECT}_impl"


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """A plugin's capability report, checked and completed by the core.

    :ivar name: the entry-point name (what ``get_backend`` takes).
    :ivar version: the plugin's version.
    :ivar api_version: the hook API version it was built for.
    :ivar device: the device it runs on (``"cpu"``, ``"metal"``, ``"cuda"`` ...).
    :ivar available: whether it can run here.
    :ivar reason: why not, when unavailable.
    :ivar priority: higher wins among available accelerator plugins.
    :ivar thread_safe: False means the dispatcher serialises every call into it.
    :ivar unavailable_devices: other devices it could drive elsewhere, with the reason it cannot here.
    :ivar description: one line for listings.
    :ivar distribution: the installed distribution it came from ("" for in-process plugins).
    """

    name: str
    version: str
    api_version: int
    device: str
    available: bool
    reason: str
    priority: int
    thread_safe: bool
    unavailable_devices: dict[str, str]
    description: str
    distribution: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(eq=False)
class PluginRecord:
    """Everything the registry knows about one plugin, loaded or not."""

    name: str
    target: str                      # "module.path" of the entry point, or repr of the object
    distribution: str = ""
    dist_version: str = ""
    source: str = "entry point"      # "entry point", "in-process", "built-in"
    loader: Callable[[], Any] | None = None
    status: str = "pending"          # pending | ok | broken | disabled
    error: PluginLoadError | None = None
    module: Any = None
    impls: dict[str, tuple[Callable, tuple[str, ...]]] = dataclasses.field(default_factory=dict)
    caps: Capabilities | None = None
    _memory: MemoryInfo | None = None
    lock: Any = dataclasses.field(default_factory=threading.RLock)
    warned: set = dataclasses.field(default_factory=set)

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
    try:
        report = hook[0]()
    except Exception as exc:  # a plugin's failure must not take the caller down
        return MemoryInfo(None, f"{rec.name}.backend_memory()", f"backend_memory() raised {exc!r}")
    if not isinstance(report, dict) or "total_bytes" not in report:
        return MemoryInfo(None, f"{rec.name}.backend_memory()",
                          f"backend_memory() returned {report!r}, not a dict with 'total_bytes'")
    total = report.get("total_bytes")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
        return MemoryInfo(None, f"{rec.name}.backend_memory()",
                          f"backend_memory() returned total_bytes={total!r}, not a non-negative int")
    details = report.get("details") or {}
    return MemoryInfo(total, str(report.get("source") or f"{rec.name}.backend_memory()"),
                      str(report.get("reason") or ("" if total is not None else "not reported")),
                      dict(details) if isinstance(details, dict) else {"details": details})


def _hookimpls(plugin: Any) -> dict[str, Any]:
    """Every attribute of ``plugin`` marked with ``@hookimpl``, by hook name."""
    found = {}
    for attr in dir(plugin):
        try:
            obj = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 - a property that raises is simply not a hook
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


def _string(name: str, report: dict, key: str, default: str | None = None) -> str:
    value = report.get(key, default)
    if not isinstance(value, str):
        raise PluginValidationError(f"plugin {name!r}: backend_capabilities()[{key!r}] must be a str, got "
                                    f"{value!r}", plugin=name)
    return value


def check_capabilities(rec: PluginRecord, report: Any) -> Capabilities:
    name = rec.name
    if not isinstance(report, dict):
        raise PluginValidationError(f"plugin {name!r}: backend_capabilities() returned "
                                    f"{type(report).__name__} {report!r:.80}, not a dict", plugin=name)
    missing = [k for k in ("api_version", "device", "available", "thread_safe") if k not in report]
    if missing:
        raise PluginValidationError(f"plugin {name!r}: backend_capabilities() lacks the required key(s) "
                                    f"{', '.join(missing)}", plugin=name)
    api = report["api_version"]
    if isinstance(api, bool) or not isinstance(api, int):
        raise PluginValidationError(f"plugin {name!r}: api_version must be an int, got {api!r}", plugin=name)
    if api != hookspecs.HOOK_API_VERSION:
        from . import __version__
        pkg = rec.distribution or name
        remedy = (f"pip install --upgrade {pkg}" if api < hookspecs.HOOK_API_VERSION
                  else "pip install --upgrade sapient-core")
        raise IncompatiblePluginError(
            f"plugin {name!r} ({pkg} {rec.dist_version or '?'}) was built for hook API version {api}, but "
            f"sapient-core {__version__} speaks version {hookspecs.HOOK_API_VERSION}. To remedy this: "
            f"{remedy}", plugin=name)
    for key in ("available", "thread_safe"):
        if not isinstance(report[key], bool):
            raise PluginValidationError(f"plugin {name!r}: backend_capabilities()[{key!r}] must be a bool, "
                                        f"got {report[key]!r}", plugin=name)
    device = _string(name, report, "device")
    if not device or device != device.lower():
        raise PluginValidationError(f"plugin {name!r}: device must be a non-empty lowercase name, got "
                                    f"{device!r}", plugin=name)
    reason = _string(name, report, "reason", "")
    if not report["available"] and not reason:
        raise PluginValidationError(f"plugin {name!r}: reports available=False without a reason",
                                    plugin=name)
    priority = report.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise PluginValidationError(f"plugin {name!r}: priority must be an int, got {priority!r}", plugin=name)
    others = report.get("unavailable_devices", {})
    if not isinstance(others, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in others.items()):
        raise PluginValidationError(f"plugin {name!r}: unavailable_devices must map device names to reasons, "
                                    f"got {others!r}", plugin=name)
    return Capabilities(
        name=name,
        version=_string(name, report, "version", rec.dist_version or "0"),
        api_version=api,
        device=device,
        available=report["available"],
        reason="" if report["available"] else reason,
        priority=priority,
        thread_safe=report["thread_safe"],
        unavailable_devices={k.lower(): v for k, v in others.items()},
        description=_string(name, report, "description", ""),
        distribution=rec.distribution,
    )


def load_into(pm: pluggy.PluginManager, rec: PluginRecord, plugin: Any = None) -> None:
    """Import (unless ``plugin`` is given), check and register ``rec``; raise PluginLoadError on failure."""
    name = rec.name
    if plugin is None:
        try:
            plugin = rec.loader()
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() at import is broken, too
            raise PluginLoadError(f"plugin {name!r}: importing {rec.target} failed: "
                                  f"{type(exc).__name__}: {exc}", plugin=name) from exc
    check_hooks(name, plugin)
    try:
        pm.register(plugin, name=name)
    except Exception as exc:
        raise PluginValidationError(f"plugin {name!r}: {exc}", plugin=name) from exc
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
        except Exception as exc:
            raise PluginLoadError(f"plugin {name!r}: backend_capabilities() raised "
                                  f"{type(exc).__name__}: {exc}", plugin=name) from exc
        rec.caps = check_capabilities(rec, report)
    except BaseException:
        pm.unregister(plugin)
        raise
    rec.module = plugin
    rec.impls = impls
    rec.status = "ok"
