"""The ``SAPIENT_*`` environment variables: the spellings each accepts, and how a bad value is read.

On/off switches (``SAPIENT_STRICT``, ``SAPIENT_DISABLE_PLUGIN_AUTOLOAD``) accept, case-insensitively
and with surrounding spaces ignored, ``1``, ``true``, ``yes``, ``on`` (on) and ``0``, ``false``,
``no``, ``off`` (off); an empty value is the same as unset.  Anything else (``y``, ``2``,
``disable`` ...) is not guessed at: it gives one :class:`sapient_core.SwitchWarning` naming the
variable, the value and what it accepts, and the switch is read the *safe* way, the way that runs no
code and hides no failure the user may have meant to exclude:

- ``SAPIENT_DISABLE_PLUGIN_AUTOLOAD=<bad>`` is read as on (only the CPU reference is loaded): someone
  who set it meant to keep plugins out;
- ``SAPIENT_STRICT=<bad>`` is read as on (a failing op raises): a wrong result must not pass unseen;
- ``SAPIENT_CROSS_CHECK=<bad>`` (a fraction, see :func:`cross_check_fraction`) is read as off: the
  cross-check only observes, so leaving it off changes no result.

``SAPIENT_PLUGINS`` (the allow-list) is parsed by :func:`parse_allow_list`; names in it that match
no installed plugin are warned about by discovery.  Each distinct (variable, value) is warned about
once per registry (again after ``refresh()``).
"""

from __future__ import annotations

import math
import numbers
import os
import re
from typing import NamedTuple

from .errors import SwitchWarning, warn

__all__ = ["TRUE", "FALSE", "ACCEPTED", "on_off", "flag", "cross_check_fraction", "parse_allow_list", "AllowList",
           "check_fraction", "warn_once", "norm_dist", "NAME_RE"]

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
#: The spellings an on/off switch accepts, as the warnings quote them.
ACCEPTED = (f"{', '.join(TRUE)} (on) or {', '.join(FALSE)} (off), case-insensitive; an empty value means "
            f"unset")


def warn_once(warned: set | None, name: str, raw: str, message: str) -> None:
    if warned is not None:
        if (name, raw) in warned:
            return
        warned.add((name, raw))
    warn(message, SwitchWarning)


def on_off(raw: str | None) -> bool | None:
    """An on/off spelling read: True, False (unset and empty too), None when it is neither."""
    value = "" if raw is None else raw.strip().lower()
    if value == "" or value in FALSE:
        return False
    return True if value in TRUE else None


def flag(name: str, *, bad_means: bool, effect: str, warned: set | None = None) -> bool:
    """The on/off switch ``name`` as it is now in the environment (unset or empty: off).

    :param bad_means: how a value outside the accepted spellings is read (the safe reading).
    :param effect: what that reading does, for the warning (``"only the CPU reference is loaded"``).
    :param warned: the (variable, value) pairs already warned about (the caller's; updated).
    """
    raw = os.environ.get(name, "")
    known = on_off(raw)
    if known is not None:
        return known
    reading = "on" if bad_means else "off"
    remedy = f"{name}=1" if bad_means else f"{name}=0"
    warn_once(warned, name, raw,
               f"{name}={raw!r} is not an accepted value: {name} accepts {ACCEPTED}. It is read as {reading} "
               f"({effect}). To remedy this, set {remedy} (or {name}={'0' if bad_means else '1'}), or unset it")
    return bad_means


def check_fraction(value: object, what: str = "cross_check") -> float:
    """``value`` as a fraction in [0, 1] (a bool: 1.0 or 0.0); TypeError / ValueError otherwise."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number between 0 and 1 (the fraction of calls the CPU reference also "
                        f"computes), got {type(value).__name__} {value!r}")
    fraction = float(value)
    if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1 (the fraction of calls the CPU reference also computes; "
                         f"0 = off, 1 = every call), got {value!r}")
    return fraction


def cross_check_fraction(warned: set | None = None) -> float:
    """``SAPIENT_CROSS_CHECK`` as a fraction in [0, 1]: a number (``0.1``), or an on/off spelling
    (on = 1, every call).  Unset, empty or a bad value (warned about): 0, off."""
    name = "SAPIENT_CROSS_CHECK"
    raw = os.environ.get(name, "")
    known = on_off(raw)
    if known is not None:
        return 1.0 if known else 0.0
    try:
        return check_fraction(float(raw.strip()))
    except (TypeError, ValueError):
        pass
    warn_once(warned, name, raw,
               f"{name}={raw!r} is not an accepted value: {name} accepts a fraction between 0 and 1 (the share "
               f"of calls the CPU reference also computes, e.g. 0.1), or {ACCEPTED} (on = every call). It is read "
               f"as off (no call is cross-checked). To remedy this, set e.g. {name}=0.1, or unset it")
    return 0.0


class AllowList(NamedTuple):
    """``SAPIENT_PLUGINS`` parsed: ``None`` when unset (every plugin), else name -> distribution pin."""

    raw: str | None
    entries: dict[str, str | None] | None
    malformed: tuple[str, ...] = ()


#: A valid backend name: a lowercase identifier (entry-point names and allow-list entries alike).
NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")


def norm_dist(name: str) -> str:
    """A distribution name normalised as packaging does (``Sapient_Backend.MLX`` -> ``sapient-backend-mlx``)."""
    return re.sub(r"[-_.]+", "-", name).strip().lower()


def parse_allow_list() -> AllowList:
    """``SAPIENT_PLUGINS``: comma-separated ``name`` or ``name@distribution`` (names case-insensitive,
    distributions compared by their normalised name).  An entry that is not of that form is kept in
    ``malformed`` (discovery warns about it) and allows nothing."""
    raw = os.environ.get("SAPIENT_PLUGINS")
    if raw is None:
        return AllowList(None, None)
    entries: dict[str, str | None] = {}
    malformed = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, at, dist = part.partition("@")
        name, dist = name.strip().lower(), norm_dist(dist)
        if not NAME_RE.match(name) or (at and not dist):
            malformed.append(part)
            continue
        entries[name] = dist if at else None
    return AllowList(raw, entries, tuple(malformed))
