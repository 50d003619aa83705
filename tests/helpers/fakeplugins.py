"""Fake backend plugins for the core's tests.

Two levels, as STYLE.md asks:

- **Integration** (:class:`FakeSite`): real installed distributions.  ``FakeSite.add_plugin`` writes a
  ``<dist>-<version>.dist-info/`` (``METADATA`` + ``entry_points.txt``) and the plugin's module into a
  directory on ``sys.path``, so the real ``importlib.metadata`` finds the entry point and the real
  import system loads the module.  ``FakeSite.registry()`` is a fresh ``Registry`` reading the real
  entry points, restricted to this site plus the CPU reference (so that other plugins installed in the
  test environment, e.g. sapient-backend-mlx, do not change the expected results).
- **Unit** (:class:`FakeEntryPoint`): objects with the attributes the registry reads from an entry
  point, for ``Registry(entry_points=lambda: [...])``.

:func:`plugin_source` writes the source of a configurable plugin module (capabilities, memory, which
ops it implements, hooks that misbehave); tests pass raw source for the odd cases.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import numpy as np

from sapient_core.hookspecs import OPS
from sapient_core.registry import ENTRY_POINT_GROUP, Registry

GiB = 1024 ** 3
_MISSING = object()


def caps_dict(*, device: str = "metal", available: bool = True, reason: str = "", priority: int = 10,
              thread_safe: bool = True, api_version: int = 2, **extra: Any) -> dict[str, Any]:
    caps = {"api_version": api_version, "device": device, "available": available, "priority": priority,
            "thread_safe": thread_safe, "description": f"fake {device} plugin"}
    if reason:
        caps["reason"] = reason
    caps.update(extra)
    return caps


def plugin_source(*, caps: dict | None = None, caps_expr: str | None = None, memory: Any = _MISSING,
                  memory_expr: str | None = None, ops: Iterable[str] = (), op_body: str | None = None,
                  header: str = "", extra: str = "", **caps_kw: Any) -> str:
    """The source of a plugin module.

    :param caps: the capability dict (default: :func:`caps_dict` of ``caps_kw``).
    :param caps_expr: an expression returned by backend_capabilities instead (e.g. ``"[1, 2]"``), or
        ``"RAISE"`` to make it raise.
    :param memory: ``total_bytes`` reported by backend_memory (int or None); omitted: no memory hook.
    :param ops: ops implemented by delegating to the CPU kernels; each call is appended to ``CALLS``.
    :param op_body: replaces the delegation (``{op}`` / ``{args}`` are filled in).
    :param header: code at the top of the module (runs at import).
    :param extra: code appended to the module.
    """
    caps = caps if caps is not None else caps_dict(**caps_kw)
    if caps_expr == "RAISE":
        caps_body = "raise RuntimeError('the fake driver crashed while probing the device')"
    else:
        caps_body = f"return {caps_expr if caps_expr is not None else repr(caps)}"
    lines = [header, "from sapient_core import hookimpl",
             "from sapient_backend_cpu import kernels as _kernels", "CALLS = []", "",
             "@hookimpl", "def backend_capabilities():", f"    {caps_body}", ""]
    if memory is not _MISSING or memory_expr is not None:
        body = memory_expr or (
            f"{{'total_bytes': {memory!r}, 'source': 'fake device info'"
            + (", 'reason': 'the fake driver does not report memory'}" if memory is None else "}"))
        lines += ["@hookimpl", "def backend_memory():", f"    return {body}", ""]
    for op in ops:
        args = ", ".join(OPS[op].argnames)
        body = (op_body or "CALLS.append({op!r})\n    return _kernels.{op}({args})").format(op=op, args=args)
        lines += ["@hookimpl", f"def {op}({args}):", f"    {body}", ""]
    lines.append(extra)
    return "\n".join(lines) + "\n"


class FakeSite:
    """A directory on ``sys.path`` holding fake installed distributions (see the module docstring)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.modules: set[str] = set()
        self._entered = False

    # --- lifetime (used by the fixture) -------------------------------------------------------------

    def __enter__(self) -> "FakeSite":
        sys.path.insert(0, str(self.root))
        importlib.invalidate_caches()
        self._entered = True
        return self

    def __exit__(self, *exc: Any) -> None:
        while str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        for name in list(sys.modules):
            mod_file = getattr(sys.modules[name], "__file__", None) or ""
            if name in self.modules or mod_file.startswith(str(self.root)):
                del sys.modules[name]
        importlib.invalidate_caches()

    # --- writing distributions ----------------------------------------------------------------------

    def add_dist(self, dist: str, *, entry_points: dict[str, str], modules: dict[str, str] | None = None,
                 version: str = "0.1") -> Path:
        """Write an installed distribution ``dist`` declaring ``entry_points`` ({name: "module"})."""
        info = self.root / f"{re.sub(r'[-_.]+', '_', dist)}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{n} = {v}\n" for n, v in entry_points.items()))
        for mod, source in (modules or {}).items():
            (self.root / f"{mod}.py").write_text(textwrap.dedent(source))
            self.modules.add(mod)
        importlib.invalidate_caches()
        return info

    def add_plugin(self, name: str, source: str | None = None, *, dist: str | None = None,
                   module: str | None = None, version: str = "0.1", **kw: Any) -> str:
        """Install a one-plugin distribution ``fake-<name>`` with entry point ``name``; returns the module."""
        module = module or f"sapient_fake_{re.sub(r'[^a-z0-9_]', '_', name.lower())}"
        self.add_dist(dist or f"fake-{name.lower()}", entry_points={name: module},
                      modules={module: source if source is not None else plugin_source(**kw)}, version=version)
        return module

    # --- reading them back --------------------------------------------------------------------------

    def entry_points(self) -> list[Any]:
        """The real installed entry points of the group that come from this site, plus the CPU reference."""
        keep = []
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            location = str(ep.dist.locate_file("")) if ep.dist is not None else ""
            if location.startswith(str(self.root)) or ep.name == "cpu" and ep.value == "sapient_backend_cpu.plugin":
                keep.append(ep)
        return keep

    def registry(self, **kw: Any) -> Registry:
        """A fresh registry over this site's distributions (and the real CPU reference)."""
        return Registry(entry_points=self.entry_points, **kw)

    def module(self, name: str) -> Any:
        return sys.modules[name]


class FakeEntryPoint:
    """What the registry reads from an entry point: name, value, dist, load()."""

    def __init__(self, name: str, obj: Any = None, *, value: str | None = None, dist: str = "fake-dist",
                 version: str = "0.1", load: Callable[[], Any] | None = None):
        self.name = name
        self.value = value or f"fake_module_{name}"
        self.group = ENTRY_POINT_GROUP
        self.dist = SimpleNamespace(name=dist, version=version) if dist else None
        self._obj = obj
        self._load = load
        self.loads = 0

    def load(self) -> Any:
        self.loads += 1
        if self._load is not None:
            return self._load()
        return self._obj


def namespace_plugin(caps: dict | None = None, **hooks: Callable) -> Any:
    """A plugin object whose attributes are the given functions, each marked as a hook implementation."""
    from sapient_core import hookimpl

    ns = SimpleNamespace()
    ns.backend_capabilities = hookimpl(lambda: dict(caps if caps is not None else caps_dict()))
    for hook, fn in hooks.items():
        setattr(ns, hook, hookimpl(fn))
    return ns


def op_function(op: str, body: Callable[..., Any], argnames: Iterable[str] | None = None) -> Callable:
    """A function named ``op`` with the hook's exact argument names that returns ``body(*args)``."""
    names = tuple(argnames) if argnames is not None else OPS[op].argnames
    ns: dict[str, Any] = {"body": body}
    exec(f"def {op}({', '.join(names)}):\n    return body({', '.join(names)})\n", ns)  # noqa: S102
    return ns[op]


def delegating_plugin(ops: Iterable[str] = tuple(OPS), caps: dict | None = None,
                      before: Callable[[str, tuple], None] | None = None, **hooks: Callable) -> Any:
    """A plugin implementing ``ops`` with the CPU kernels; every call is appended to ``plugin.calls``.

    ``before(op, args)`` runs first on each call (to raise, decline or record concurrency).
    """
    from sapient_backend_cpu import kernels

    calls: list[tuple[str, tuple]] = []

    def make(op: str) -> Callable:
        kernel = getattr(kernels, op)

        def body(*args: Any) -> Any:
            calls.append((op, args))
            if before is not None:
                before(op, args)
            return kernel(*args)
        return op_function(op, body)

    plugin = namespace_plugin(caps, **{op: make(op) for op in ops}, **hooks)
    plugin.calls = calls
    return plugin


class Boxed:
    """A stand-in for a device array type (mx.array): has .shape and .dtype, is not a NumPy array."""

    def __init__(self, a: Any):
        self.a = np.asarray(a)

    shape = property(lambda self: self.a.shape)
    dtype = property(lambda self: self.a.dtype)


def unbox(x: Any) -> Any:
    """The NumPy array inside a :class:`Boxed` (NumPy arrays as they are)."""
    return x.a if isinstance(x, Boxed) else np.asarray(x)


class Opaque:
    """A device array stand-in like a torch tensor seen from NumPy code: ``.shape`` and ``.dtype`` only."""

    __slots__ = ("_data", "shape", "dtype")

    def __init__(self, data: Any):
        self._data = np.asarray(data)
        self.shape = self._data.shape
        self.dtype = self._data.dtype


def opaque_plugin() -> Any:
    """A plugin whose arrays are :class:`Opaque` (no NumPy method at all): the ops a decoder needs, as the
    CPU kernels on the unwrapped data; no layout hook, so the core's NumPy defaults serve those."""
    from sapient_core import hookimpl
    from sapient_backend_cpu import kernels

    def box(fn: Callable) -> Callable:
        def op(*args: Any) -> Any:
            return Opaque(fn(*[a._data if isinstance(a, Opaque) else a for a in args]))
        op.__name__ = fn.__name__
        return op

    ns = {
        "backend_capabilities": hookimpl(lambda: {"api_version": 2, "device": "opaque", "available": True,
                                                  "thread_safe": True}),
        "backend_to_numpy": hookimpl(lambda x: x._data if isinstance(x, Opaque) else np.asarray(x)),
        "backend_from_numpy": hookimpl(lambda x: Opaque(x)),
    }
    for op in ("linear_3d", "rms_norm", "silu", "gelu", "mul", "add", "apply_rope", "gqa_attention", "embedding"):
        fn = getattr(kernels, op)
        wrapped = box(fn)
        wrapped.__wrapped__ = fn                  # the hook's signature, for pluggy
        ns[op] = hookimpl(wrapped)
    return SimpleNamespace(**ns)


def sapient_warnings(caplog: Any) -> list[str]:
    """The messages logged at WARNING on the ``sapient_core`` logger."""
    return [r.getMessage() for r in caplog.records if r.name == "sapient_core" and r.levelno == logging.WARNING]


def build_wheel(out_dir: Path, dist: str, version: str, files: dict[str, str],
                entry_points: dict[str, str], requires: Iterable[str] = ()) -> Path:
    """Write a pure-Python wheel (no build backend needed), ready for ``pip install``."""
    import base64
    import hashlib
    import zipfile

    norm = re.sub(r"[-_.]+", "_", dist)
    info = f"{norm}-{version}.dist-info"
    contents = dict(files)
    contents[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                                    + "".join(f"Requires-Dist: {r}\n" for r in requires))
    contents[f"{info}/WHEEL"] = ("Wheel-Version: 1.0\nGenerator: sapient-core-tests\nRoot-Is-Purelib: true\n"
                                 "Tag: py3-none-any\n")
    contents[f"{info}/entry_points.txt"] = (f"[{ENTRY_POINT_GROUP}]\n"
                                            + "".join(f"{n} = {v}\n" for n, v in entry_points.items()))
    record = []
    for path, text in contents.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = "\n".join(record) + "\n"
    wheel = Path(out_dir) / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in contents.items():
            zf.writestr(path, text)
    return wheel
