"""The records that cross the plugin boundary and the library's reports, as pydantic models.

- What a plugin reports: :class:`CapabilityReport` (``backend_capabilities()``, validated on load; its
  JSON schema is what ``sapient-backends schema`` prints) and :class:`MemoryInfo`
  (``backend_memory()``).
- What the library reports: :class:`Capabilities` (a checked report, completed with the plugin's
  name and distribution), :class:`BackendInfo` (``list_backends()``), :class:`Candidate` and
  :class:`Explanation` (``explain()``), :class:`OpStats` and :class:`Stats` (``Backend.stats()``).

Every ``--json`` output of the ``sapient-backends`` command is ``model_dump(mode="json")`` of these.
This module imports pydantic, so nothing imports it before a call needs it: ``import sapient_core``
stays cheap, and the per-call path of the ops never touches a model.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError,
                      field_serializer, field_validator, model_validator)

from .reporting import fmt_bytes, fmt_int

__all__ = ["CapabilityReport", "Capabilities", "MemoryInfo", "BackendInfo", "Candidate", "Explanation",
           "OpStats", "Stats", "Status", "describe_validation_error", "ValidationError"]

#: The status of a discovered plugin.
Status = Literal["available", "unavailable", "broken", "disabled", "pending"]


class CapabilityReport(BaseModel):
    """What a plugin's ``backend_capabilities()`` returns (see that hook's docstring for each key).

    Types are strict (``"yes"`` is not a bool, ``"1"`` not an int) and unknown keys are refused, so a
    misspelt key fails loudly instead of being ignored.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_version: StrictInt = Field(description="the hook API version the plugin was built for (a literal)")
    device: StrictStr = Field(description="the device it runs on here, lowercase: cpu, metal, cuda ...")
    available: StrictBool = Field(description="whether it can run here")
    thread_safe: StrictBool = Field(description="whether its ops may run in several threads at once")
    reason: StrictStr = Field("", description="why it is unavailable, with the remedy (required when not available)")
    priority: StrictInt = Field(0, description="higher wins among available accelerator plugins (CPU reference: 0)")
    version: Optional[StrictStr] = Field(None, description="the plugin's version (default: its distribution's)")
    unavailable_devices: dict[StrictStr, StrictStr] = Field(
        default_factory=dict, description="other devices it could drive elsewhere, each with why not here")
    description: StrictStr = Field("", description="one line for listings")

    @field_validator("device")
    @classmethod
    def _device_is_a_lowercase_name(cls, value: str) -> str:
        if not value or value != value.lower() or value != value.strip():
            raise ValueError("must be a non-empty lowercase device name such as 'cpu', 'metal' or 'cuda'")  # noqa: TRY003
        return value

    @model_validator(mode="after")
    def _unavailable_needs_a_reason(self) -> "CapabilityReport":
        if not self.available and not self.reason:
            raise ValueError("available is False, so 'reason' must say why (and how to remedy it)")
        return self


class Capabilities(BaseModel):
    """A plugin's capability report, checked and completed by the core.

    :ivar name: the entry-point name (what ``get_backend`` takes).
    :ivar distribution: the installed distribution it came from ("" for in-process plugins).
    """

    model_config = ConfigDict(frozen=True)

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


class MemoryInfo(BaseModel):
    """The memory a plugin can use, as it reported it (``backend_memory()``), or the system's RAM.

    :ivar total_bytes: the figure the fit decision uses, or None when unknown.
    :ivar source: where the figure came from.
    :ivar reason: why it is unknown (empty when known).
    :ivar details: other figures the plugin reported.
    :ivar unified_memory: True when the device shares the host's memory (None: not reported).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    total_bytes: Optional[StrictInt] = Field(..., ge=0)
    source: StrictStr
    reason: StrictStr = ""
    details: dict[str, Any] = Field(default_factory=dict)
    unified_memory: Optional[StrictBool] = Field(
        None, description="whether the device shares the host's memory (Apple GPUs, CPU devices): a host "
                          "weight array and its device copy are then two copies in one memory")


class BackendInfo(BaseModel):
    """One discovered plugin, as ``list_backends()`` shows it.

    :ivar status: ``"available"``, ``"unavailable"``, ``"broken"`` or ``"disabled"`` (not allowed by
        ``SAPIENT_PLUGINS`` / ``SAPIENT_DISABLE_PLUGIN_AUTOLOAD``: never imported).
    :ivar reason: why it is unavailable, broken or disabled ("" when available).
    :ivar capabilities: the full report, for loaded plugins.
    :ivar memory: the device memory it reports, for loaded plugins.
    :ivar implemented_ops: the ops it implements itself.
    :ivar notes: hints for the plugin's author (e.g. a function named like a hook but not marked
        ``@hookimpl``); the plugin works, but maybe not as meant.
    :ivar error: for a broken plugin, the :class:`sapient_core.PluginLoadError` (or subclass) that
        refused it (in JSON: the exception's class name).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    status: Status
    reason: str
    device: Optional[str]
    version: str
    distribution: str
    source: str
    target: str
    priority: Optional[int]
    thread_safe: Optional[bool]
    capabilities: Optional[Capabilities]
    memory: Optional[MemoryInfo]
    implemented_ops: tuple[str, ...]
    notes: tuple[str, ...] = ()
    error: Optional[Exception] = Field(default=None, repr=False)

    @field_serializer("error")
    def _error_as_class_name(self, error: Optional[Exception]) -> str:
        return type(error).__name__ if error is not None else ""


class Candidate(BaseModel):
    """One plugin considered by a resolution, and why it was taken or passed over.

    :ivar memory: the memory arithmetic, when the memory check was made.
    :ivar fits: the memory check's verdict (None when it was not made).
    """

    name: str
    status: Status
    device: Optional[str]
    priority: Optional[int]
    chosen: bool
    reason: str
    memory: str = ""
    fits: Optional[bool] = None


class Explanation(BaseModel):
    """How a kind resolves for a model size: the rule applied, each candidate, the result.

    ``chosen`` is the plugin ``get_backend`` returns, or None; then ``exception`` is the error
    ``get_backend`` raises (a :class:`sapient_core.BackendNotFoundError` or
    :class:`sapient_core.BackendUnavailableError` instance) and ``error`` its message.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    source: str
    rule: str
    model_bytes: int
    chosen: Optional[str]
    candidates: list[Candidate]
    error: Optional[str] = None
    exception: Optional[Exception] = Field(default=None, exclude=True, repr=False)

    def __str__(self) -> str:
        size = f" ({fmt_bytes(self.model_bytes)})" if self.model_bytes >= 1024 else ""
        lines = [f"kind {self.kind!r} (from {self.source}), model_bytes={fmt_int(self.model_bytes)}{size}: {self.rule}"]
        for c in self.candidates:
            mark = "->" if c.chosen else "  "
            lines.append(f" {mark} {c.name:<12} {c.status:<11} device={c.device or '-':<6} {c.reason}")
            if c.memory:
                lines.append(f"    {'':<12} memory: {c.memory}")
        lines.append(f"result: {self.chosen!r}" if self.chosen else f"error: {self.error}")
        return "\n".join(lines)


class OpStats(BaseModel):
    """The counters of one op of a backend.

    :ivar calls: calls that passed validation.
    :ivar fallbacks: calls the plugin failed (raised, declined, or returned a wrong result) and the CPU
        reference computed instead.
    :ivar fallback_reasons: ``{reason: count}`` for those.
    :ivar routed: calls handed to the CPU reference because the plugin's implementation does not take an
        argument the call sets (it was built for an earlier hook API); not failures.
    :ivar routed_reasons: ``{reason: count}`` for those.
    :ivar cross_checked: calls the CPU reference also computed, to compare (cross-check mode; see
        :mod:`sapient_core.crosscheck`).
    :ivar disagreements: cross-checked calls whose result disagreed with the reference's beyond the kit's
        tolerances (or that modified an input); the caller still got the plugin's result.
    :ivar disagreement_reasons: ``{kind of disagreement: count}`` (a call may show several kinds).
    :ivar implemented_by: the plugin that implements the op (``"cpu"`` when the reference serves it).
    """

    calls: int = 0
    fallbacks: int = 0
    fallback_reasons: dict[str, int] = Field(default_factory=dict)
    routed: int = 0
    routed_reasons: dict[str, int] = Field(default_factory=dict)
    cross_checked: int = 0
    disagreements: int = 0
    disagreement_reasons: dict[str, int] = Field(default_factory=dict)
    implemented_by: str


class Stats(BaseModel):
    """``Backend.stats()``: who serves each op, calls and fallbacks per op, the plugin's own figures.

    :ivar cross_check: the fraction of calls cross-checked against the CPU reference (0: off).
    """

    backend: str
    device: str
    strict: bool
    cross_check: float = 0.0
    ops: dict[str, OpStats]
    plugin: Optional[dict[str, Any]] = None


_EXPECTED = {"bool_type": "must be a bool", "int_type": "must be an int", "string_type": "must be a str",
             "dict_type": "must be a dict", "float_type": "must be a float", "bool_parsing": "must be a bool",
             "int_parsing": "must be an int", "none_required": "must be None"}


def describe_validation_error(exc: ValidationError, what: str) -> str:
    """The problems of a pydantic error, each as ``what['field'] must be a bool, got 'yes' (str)``."""
    problems = []
    for err in exc.errors():
        loc = "".join(f"[{part!r}]" for part in err.get("loc", ()))
        kind = err.get("type", "")
        if kind == "missing":
            problems.append(f"{what} lacks the required key {loc[1:-1]}")
            continue
        if kind == "extra_forbidden":
            problems.append(f"{what}{loc} is not a known key")
            continue
        value = err.get("input")
        ctx = err.get("ctx") or {}
        if kind in _EXPECTED:
            expected = _EXPECTED[kind]
        elif kind == "greater_than_equal":
            expected = f"must be >= {ctx.get('ge')}"
        else:
            expected = err.get("msg", "is invalid").replace("Value error, ", "")
        if loc:
            problems.append(f"{what}{loc} {expected}, got {f'{value!r}'[:80]} ({type(value).__name__})")
        else:
            problems.append(f"{what}: {expected}")
    return "; ".join(problems)
