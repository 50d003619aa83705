"""How a kind resolves to a plugin: a pure function of the kind, the model size and the plugins.

:func:`resolve` reads no environment, imports nothing and calls no plugin: it takes the
:class:`sapient_core.BackendInfo` records discovery produced (their memory already read) and a
:class:`sapient_core.FitPolicy`, and returns an :class:`sapient_core.Explanation`: the rule applied,
every candidate with why it was taken or passed over, and either the chosen plugin or the exception
``get_backend`` raises.  The contract's table (SPEC §2):

==================  =====================================================================
kind                resolves to
==================  =====================================================================
``"cpu"``           the CPU reference plugin (it is a plugin name, like any other)
a plugin name       that plugin on its best available device, a CPU device included
a device name       the highest-priority available plugin on that device; else an error
                    that says why (each plugin's reason, or what to ``pip install``)
``"auto"``          see :func:`_resolve_auto`; never raises while the CPU reference works
==================  =====================================================================

Only ``auto`` enforces the memory check; a backend asked for by name or device is used even when the
model may not fit (the candidate's ``fits`` is False and the registry logs a warning).
"""

from __future__ import annotations

from typing import Sequence

from .errors import BackendNotFoundError, BackendUnavailableError
from .memory import FitPolicy
from .models import BackendInfo, Candidate, Explanation

__all__ = ["resolve", "DEVICE_REMEDIES", "AUTO_RULE"]

#: Remedies for well-known devices that no installed plugin provides.
DEVICE_REMEDIES = {
    "metal": "pip install sapient-backend-mlx (on an Apple Silicon Mac)",
    "cuda": "pip install 'sapient-backend-mlx[cuda]' (Linux with an NVIDIA GPU)",
}
#: What a well-known plugin name means when it is not installed.
NAME_REMEDIES = {
    "mlx": "pip install sapient-backend-mlx",
}
AUTO_RULE = ("the highest-priority available accelerator plugin (device other than cpu) whose memory check "
             "passes; otherwise the CPU reference")


def _candidate(p: BackendInfo, chosen: bool, reason: str, memory: str = "", fits: bool | None = None) -> Candidate:
    return Candidate(name=p.name, status=p.status, device=p.device, priority=p.priority, chosen=chosen,
                     reason=reason, memory=memory, fits=fits)


def resolve(kind: str, model_bytes: int, plugins: Sequence[BackendInfo], policy: FitPolicy, *,
            source: str = "argument", reference: str = "cpu") -> Explanation:
    """Resolve ``kind`` (lowercase) for a model of ``model_bytes`` among ``plugins``.

    :param plugins: the usable plugins' records (for a plugin name, that plugin's record suffices).
    :param source: where the kind came from (``"argument"``, ``"SAPIENT_BACKEND"``, ``"default"``).
    :param reference: the CPU reference's name.
    """
    by_name = {p.name: p for p in plugins}
    if kind == "auto":
        return _resolve_auto(kind, source, model_bytes, plugins, policy, reference)
    if kind in by_name:
        return _resolve_name(kind, source, model_bytes, by_name[kind], policy)
    return _resolve_device(kind, source, model_bytes, plugins, policy)


def _explanation(kind: str, source: str, rule: str, model_bytes: int, chosen: str | None,
                 candidates: list[Candidate], exception: Exception | None = None) -> Explanation:
    return Explanation(kind=kind, source=source, rule=rule, model_bytes=model_bytes, chosen=chosen,
                       candidates=candidates, error=None if exception is None else str(exception),
                       exception=exception)


def _resolve_name(kind: str, source: str, model_bytes: int, p: BackendInfo, policy: FitPolicy) -> Explanation:
    rule = "the plugin of that name, on its best available device"
    if p.status != "available":
        if p.status == "disabled":
            msg = f"backend {kind!r} is installed but not loaded: {p.reason}"
        elif p.status == "broken":
            msg = (f"backend {kind!r} is installed but broken: {p.reason}. `sapient-backends list` shows every "
                   f"plugin's status; get_backend('auto') uses the ones that work")
        else:
            msg = (f"backend {kind!r} is not available here: {p.reason}. get_backend('auto') picks the best "
                   f"available backend")
        exc = BackendUnavailableError(msg, kind=kind, installed=(p.name,), reasons={kind: p.reason})
        return _explanation(kind, source, rule, model_bytes, None, [_candidate(p, False, p.reason)], exc)
    assert p.memory is not None
    fit = policy.decide(model_bytes, p.memory)
    note = "asked for by name"
    if not fit.fits:
        note += "; the model may not fit (used anyway, because it was asked for by name)"
    return _explanation(kind, source, rule, model_bytes, kind, [_candidate(p, True, note, fit.explanation, fit.fits)])


def _resolve_device(kind: str, source: str, model_bytes: int, plugins: Sequence[BackendInfo],
                    policy: FitPolicy) -> Explanation:
    rule = f"the highest-priority available plugin whose device is {kind!r}"
    providers = sorted((p for p in plugins if p.status == "available" and p.device == kind),
                       key=lambda p: (-(p.priority or 0), p.name))
    cands, reasons = [], {}
    for p in plugins:
        caps = p.capabilities
        if p in providers:
            chosen = p is providers[0]
            assert p.memory is not None
            fit = policy.decide(model_bytes, p.memory)
            text = (f"provides {kind!r} (priority {p.priority})" if chosen else
                    f"provides {kind!r}, but {providers[0].name!r} has a higher priority")
            if chosen and not fit.fits:
                text += "; the model may not fit (used anyway, because the device was asked for)"
            cands.append(_candidate(p, chosen, text, fit.explanation, fit.fits))
        elif p.status == "unavailable" and p.device == kind:
            reasons[p.name] = p.reason
            cands.append(_candidate(p, False, f"would provide {kind!r} but is unavailable: {p.reason}"))
        elif caps is not None and kind in caps.unavailable_devices:
            reasons[p.name] = caps.unavailable_devices[kind]
            cands.append(_candidate(p, False, f"can provide {kind!r} elsewhere, not here: "
                                              f"{caps.unavailable_devices[kind]}"))
        elif p.status in ("broken", "disabled"):
            cands.append(_candidate(p, False, f"{p.status}: {p.reason}"))
        else:
            cands.append(_candidate(p, False, f"runs on {p.device!r}, not {kind!r}"))
    if providers:
        return _explanation(kind, source, rule, model_bytes, providers[0].name, cands)
    installed = tuple(p.name for p in plugins)
    skipped = [p.name for p in plugins if p.status in ("broken", "disabled")]
    tail = f" (not asked, because broken or disabled: {', '.join(skipped)})" if skipped else ""
    if reasons:
        detail = "; ".join(f"{n}: {w}" for n, w in reasons.items())
        msg = f"no available backend provides {kind!r}: {detail}{tail}. get_backend('auto') picks the best available backend"
        return _explanation(kind, source, rule, model_bytes, None, cands,
                            BackendUnavailableError(msg, kind=kind, installed=installed, reasons=reasons))
    if kind in DEVICE_REMEDIES:
        msg = (f"no installed plugin provides {kind!r} (installed: {', '.join(map(repr, installed))}){tail}. "
               f"To get it: {DEVICE_REMEDIES[kind]}; or use get_backend('auto')")
        return _explanation(kind, source, rule, model_bytes, None, cands,
                            BackendNotFoundError(msg, kind=kind, installed=installed))
    if kind in NAME_REMEDIES:
        msg = (f"no backend named {kind!r} is installed (installed: {', '.join(map(repr, installed))}){tail}. "
               f"To get it: {NAME_REMEDIES[kind]}; or use get_backend('auto')")
        return _explanation(kind, source, "unknown kind", model_bytes, None, cands,
                            BackendNotFoundError(msg, kind=kind, installed=installed))
    devices = sorted({p.device for p in plugins if p.device}
                     | {d for p in plugins if p.capabilities for d in p.capabilities.unavailable_devices})
    msg = (f"unknown backend kind {kind!r}. Installed plugins: {', '.join(map(repr, installed))}; "
           f"devices they know: {', '.join(map(repr, devices))}{tail}. Valid kinds: 'auto', a plugin "
           f"name or a device name; see `sapient-backends list`")
    return _explanation(kind, source, "unknown kind", model_bytes, None, cands,
                        BackendNotFoundError(msg, kind=kind, installed=installed))


def _resolve_auto(kind: str, source: str, model_bytes: int, plugins: Sequence[BackendInfo], policy: FitPolicy,
                  reference: str) -> Explanation:
    """``auto``, top to bottom:

    1. every plugin other than the CPU reference that is available, runs on an accelerator (a device
       other than ``cpu``) and whose memory check passes for ``model_bytes`` is eligible;
    2. the eligible plugin with the highest priority wins (ties: by name);
    3. if none is eligible, the CPU reference, whatever the model size (a warning is logged when the
       model may not fit in RAM either);
    4. if the CPU reference is broken too, the error says how to reinstall it.
    """
    eligible, passed = [], {}
    for p in plugins:
        if p.name == reference:
            continue
        if p.status != "available":
            passed[p.name] = _candidate(p, False, f"{p.status}: {p.reason}")
        elif p.device == "cpu":
            passed[p.name] = _candidate(p, False, "runs on the CPU; auto picks accelerators only (ask for it by "
                                                  "name to use it)")
        else:
            assert p.memory is not None
            fit = policy.decide(model_bytes, p.memory)
            if fit.fits:
                eligible.append((p, fit))
            else:
                passed[p.name] = _candidate(p, False, "the model does not fit", fit.explanation, False)
    eligible.sort(key=lambda pf: (-(pf[0].priority or 0), pf[0].name))
    for i, (p, fit) in enumerate(eligible):
        text = (f"highest-priority accelerator that fits (priority {p.priority})" if i == 0 else
                f"fits, but {eligible[0][0].name!r} has a higher priority")
        passed[p.name] = _candidate(p, i == 0, text, fit.explanation, True)
    ref = next(p for p in plugins if p.name == reference)
    others = [passed[p.name] for p in plugins if p.name in passed]
    if eligible:
        order = [_candidate(ref, False, "the fallback; not needed")] + others
        return _explanation(kind, source, AUTO_RULE, model_bytes, eligible[0][0].name, order)
    if ref.status != "available":
        order = [_candidate(ref, False, f"{ref.status}: {ref.reason}")] + others
        msg = (f"no accelerator is available and the CPU reference is {ref.status}: {ref.reason}. To remedy "
               f"this: pip install --force-reinstall sapient-backend-cpu")
        return _explanation(kind, source, AUTO_RULE, model_bytes, None, order,
                            BackendUnavailableError(msg, kind=kind, installed=tuple(p.name for p in plugins),
                                                    reasons={reference: ref.reason}))
    assert ref.memory is not None
    fit = policy.decide(model_bytes, ref.memory)
    order = [_candidate(ref, True, "no accelerator is available and fits, so the CPU reference", fit.explanation,
                        fit.fits)] + others
    return _explanation(kind, source, AUTO_RULE, model_bytes, reference, order)
