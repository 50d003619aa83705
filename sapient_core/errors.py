"""Exceptions and warnings raised by sapient_core.

Every exception derives from :class:`SapientError`, and also from the builtin that a caller would
naturally catch (``LookupError`` for "no such backend", ``ValueError``/``TypeError`` for bad input), so
``except ValueError`` keeps working for code that does not know about this library.  Exceptions carry
their context as attributes (``.backend``, ``.op``, ``.kind`` ...) as well as in the message.
"""

from __future__ import annotations

__all__ = [
    "SapientError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "PluginLoadError",
    "PluginValidationError",
    "IncompatiblePluginError",
    "ShapeError",
    "DTypeError",
    "ArgumentError",
    "OpDeclined",
    "BackendOpError",
    "SapientWarning",
    "PluginWarning",
    "SwitchWarning",
]


class SapientError(Exception):
    """Base class of every error this library raises."""


class BackendNotFoundError(SapientError, LookupError):
    """The requested kind names no installed plugin and no device any plugin provides.

    :ivar kind: the kind that was asked for.
    :ivar installed: names of the discovered plugins.
    """

    def __init__(self, message: str, *, kind: str | None = None, installed: tuple[str, ...] = ()):
        super().__init__(message)
        self.kind = kind
        self.installed = tuple(installed)


class BackendUnavailableError(BackendNotFoundError):
    """The requested kind is known but cannot be used here (plugin broken, disabled or unavailable).

    :ivar reasons: ``{plugin name: reason}`` for every plugin that could have served the kind.
    """

    def __init__(self, message: str, *, kind: str | None = None, installed: tuple[str, ...] = (),
                 reasons: dict[str, str] | None = None):
        super().__init__(message, kind=kind, installed=installed)
        self.reasons = dict(reasons or {})


class PluginLoadError(SapientError):
    """A plugin could not be loaded; it is recorded with this error and skipped.

    :ivar plugin: the plugin's entry-point name.
    """

    def __init__(self, message: str, *, plugin: str | None = None):
        super().__init__(message)
        self.plugin = plugin


class PluginValidationError(PluginLoadError):
    """A plugin's hook implementations do not match the hook specifications."""


class IncompatiblePluginError(PluginLoadError):
    """A plugin was built for another hook API version."""


class ShapeError(SapientError, ValueError):
    """An op was called with arguments whose shapes or values do not fit together.

    :ivar op: the op's name.
    :ivar shapes: ``{argument name: shape}`` of the array arguments involved.
    """

    def __init__(self, message: str, *, op: str | None = None, shapes: dict | None = None):
        super().__init__(message)
        self.op = op
        self.shapes = dict(shapes or {})


class DTypeError(SapientError, TypeError):
    """An op was called with an argument of a type or dtype it does not accept.

    :ivar op: the op's name.
    """

    def __init__(self, message: str, *, op: str | None = None, shapes: dict | None = None):
        super().__init__(message)
        self.op = op
        self.shapes = dict(shapes or {})


class ArgumentError(SapientError, ValueError):
    """An op was called with a scalar argument whose value it does not accept (``eps < 0``, a window
    of 0, a softcap that is not positive, a non-finite scale, an id outside the vocabulary ...).

    :ivar op: the op's name.
    :ivar arg: the argument's name.
    :ivar value: the value that was refused.
    :ivar shapes: ``{argument name: shape}`` of the array arguments involved (often empty).
    """

    def __init__(self, message: str, *, op: str | None = None, arg: str | None = None, value: object = None,
                 shapes: dict | None = None):
        super().__init__(message)
        self.op = op
        self.arg = arg
        self.value = value
        self.shapes = dict(shapes or {})


class OpDeclined(SapientError):
    """Raised by a plugin's op implementation to decline an input it does not handle.

    The dispatcher then runs the CPU reference for that call (or raises in strict mode) and reports
    the reason given here.  Declining is not an error of the caller: use it for inputs that are valid
    under the contract but that your kernel does not support, e.g. ``raise OpDeclined("non-contiguous
    positions")``.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class BackendOpError(SapientError, RuntimeError):
    """In strict mode: a backend's op raised or declined instead of computing the result.

    :ivar backend: the backend's name.
    :ivar op: the op's name.
    :ivar reason: the backend's reason (its exception, or the text it declined with).
    :ivar declined: True when the backend declined the input on purpose.
    """

    def __init__(self, message: str, *, backend: str, op: str, reason: str, declined: bool = False):
        super().__init__(message)
        self.backend = backend
        self.op = op
        self.reason = reason
        self.declined = declined


class SapientWarning(UserWarning):
    """Base class of the warnings this library issues; filter it to silence them all."""


class PluginWarning(SapientWarning):
    """Something a person can fix was skipped: a broken plugin, a duplicate entry-point name."""


class SwitchWarning(SapientWarning):
    """A ``SAPIENT_*`` environment variable has a value outside its documented spellings, or the
    allow-list ``SAPIENT_PLUGINS`` names something no installed plugin matches.  The message says how
    the value was read (see :mod:`sapient_core.switches`)."""


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` must reach the user as it is (Ctrl-C), rather than be recorded as a plugin's fault.

    Everything else a plugin raises while loading or reporting, ``SystemExit`` and other
    ``BaseException`` subclasses included, is the plugin's fault: it is recorded (or reported) and the
    caller goes on.  A ``KeyboardInterrupt`` is the user's, so it propagates, once, and is not
    remembered as the plugin's state (the next call tries the plugin again).
    """
    return isinstance(exc, KeyboardInterrupt)


def warn(message: str, category: type[Warning] = PluginWarning) -> None:
    """Issue ``message`` as a warning attributed to the first caller outside sapient_core.

    A fixed ``stacklevel`` would point into the library (``registry.py``) whenever the call chain is
    deeper than expected; walking the stack to the first frame outside the package points at the
    user's line (``get_backend(...)``, ``list_backends()``), which is what ``warnings`` shows.
    """
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(1)          # stacklevel=2 is warn()'s caller
    while frame is not None and (frame.f_code.co_filename.startswith(package)
                                 or frame.f_code.co_filename.startswith("<frozen importlib")):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
