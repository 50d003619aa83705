"""RoPE inverse frequencies of today's checkpoints, as Hugging Face transformers computes them.

>>> from sapient_core.rope import rope_parameters
>>> p = rope_parameters(config.to_dict(), seq_len=int(positions.max()) + 1)   # doctest: +SKIP
>>> q = backend.apply_rope(q, positions, p.inv_freq, p.attention_scaling)     # doctest: +SKIP

:func:`rope_parameters` reads a transformers config *as a dict* (``config.to_dict()``, or the
``config.json`` of a checkpoint) and returns a :class:`RopeParameters`: ``inv_freq`` (float32, read-only,
``rotary_dim // 2`` entries) and ``attention_scaling`` (the factor cos and sin are multiplied by), for the
rope types ``default``, ``linear``, ``dynamic``, ``yarn``, ``longrope`` and ``llama3``.  It imports NumPy and
the standard library only: no torch, no transformers.

Both config forms are read:

- 4.x: top-level ``rope_theta`` (and ``partial_rotary_factor``) plus a ``rope_scaling`` dict
  (``{"rope_type": "yarn", "factor": 4.0, ...}``, or the legacy ``{"type": ...}`` spelling);
- 5.x: a ``rope_parameters`` dict that carries ``rope_theta`` itself, possibly one dict per layer type
  (Gemma 3: ``rope_parameters["sliding_attention"]`` and ``["full_attention"]``), picked with
  ``layer_type``.

How the values are computed
---------------------------
transformers computes in torch float32 (int64 for the ``arange``) with Python-float scalars.  This module
replays the same operations in the same order in NumPy float32, with every Python scalar rounded to
float32 where torch rounds it, so that every add, multiply, divide and compare is the same correctly
rounded IEEE operation.  Two details matter and are reproduced: torch evaluates ``scalar / tensor`` as
``tensor.reciprocal() * scalar`` (two roundings), and ``base ** tensor`` rounds ``base`` to float32
first.  The only operation that is not bit-identical is ``pow``: here it is computed in float64 and
rounded once to float32 (correctly rounded); torch's CPU kernel (SLEEF ``powf``, 1-ulp bound) and its
CUDA kernel may differ from that, and from each other, by one unit in the last place.  The golden
fixture ``tests/fixtures/rope_golden.json`` holds what transformers itself returned; the tests bound
the difference (see ``tests/test_rope_parameters.py``).  Scalars that transformers computes in Python
(the YaRN correction range and ``mscale``, the longrope attention factor, the dynamic-NTK base up to
``max_position_embeddings``) are computed here in Python floats, in the same order.  With torch's own
``pow`` results substituted (the fixture records them), every golden config is reproduced bit for bit.

Decisions (where transformers' versions disagree, or its source leaves a case open)
----------------------------------------------------------------------------------
Checked against transformers 4.57 (last 4.x) and 5.x (``modeling_rope_utils.py`` and the models'
rotary modules).  Where 4.x and 5.x differ, this module follows 5.x unless said otherwise.

1. **Keys whose value is None count as absent.** ``to_dict()`` of a 5.x config writes ``rope_theta:
   None``, ``rope_scaling: None``, ``head_dim: None`` and so on at the top level.
2. **Which dict.** ``rope_parameters`` (5.x) if it is set, else ``rope_scaling`` (4.x), else none
   (type ``default``).  If both are set and differ, that is a ``ValueError`` (transformers 5.x lets
   ``rope_scaling`` win silently; a dict with both is hand-edited and ambiguous).
3. **rope_type.** ``rope_type``, else the legacy ``type``, else ``"default"`` (as 5.x standardises); if
   both are set, ``rope_type`` wins.  The Phi-3 legacy name ``"su"`` is read as ``"longrope"``, as 4.x's
   Phi-3 config renames it (5.x renames it too late and then refuses the config for want of
   ``original_max_position_embeddings``).
   Phi-3's other rename (a ``"yarn"`` dict with ``short_factor``/``long_factor`` read as longrope) is
   *not* applied: ``yarn`` is always YaRN.
4. **rope_theta.** From the rope dict, else the top level.  Missing is a ``ValueError``: transformers
   falls back to a per-model class default (10000, but 1e6 for Gemma 3 global layers) that a dict does
   not carry, and guessing would silently give wrong frequencies.
5. **head_dim.** An explicit ``head_dim`` (not None) wins, else ``qk_rope_head_dim`` (DeepSeek's
   multi-head latent attention, whose ``config.json`` has no ``head_dim``: transformers' DeepSeek configs
   set ``head_dim`` from it), else ``hidden_size // num_attention_heads``.  transformers 4.x and 5.x use
   ``getattr(config, "head_dim", fallback)`` for dynamic/yarn/longrope, which fails on
   ``head_dim=None``; here None falls back for every type.
6. **partial_rotary_factor** is honoured for every type, ``default`` included (5.x's Llama-family
   default ignores it; Phi-3's honours it): ``R = int(head_dim * factor)``, from the rope dict, else the
   top level (4.x keeps it at the top level, 5.x moves it into ``rope_parameters``).  As in
   transformers, an odd ``R`` gives ``(R + 1) // 2`` frequencies with exponents ``2i / R``, so
   ``rotary_dim = 2 * len(inv_freq) = R + 1``; that must fit in the head (else ``ValueError``, as 5.x's
   validation says).
7. **original_max_position_embeddings** (llama3, yarn, longrope), flat dicts: the top-level key wins
   over the rope dict's (5.x: Phi-3 keeps the pretraining length at the top level), else the rope
   dict's, else ``max_position_embeddings``.  4.x's yarn ignored the top-level key, and 4.x's longrope
   ignored the rope dict's (it used the top-level key, else ``max_position_embeddings``): the versions
   differ when only the rope dict gives it for longrope (fixture case ``llama_longrope_explicit``) or
   when both places give different values.  Per-layer (nested) dicts: the entry's own key, else
   ``max_position_embeddings`` (5.x).
8. **longrope factor.** The rope dict's ``factor`` if set, else ``max_position_embeddings /
   original_max_position_embeddings`` (5.x).  4.x replaced an explicit ``factor`` by that ratio whenever
   a top-level ``original_max_position_embeddings`` existed; the two differ only for a config that sets
   both to disagreeing values.
9. **longrope short/long.** Long factors when ``seq_len > original_max_position_embeddings``, short
   otherwise and when ``seq_len`` is None; ``attention_scaling`` does not depend on ``seq_len`` (the
   rotary module computes it once).  ``short_factor``/``long_factor`` must have exactly
   ``len(inv_freq)`` positive entries (transformers only warns, then fails or broadcasts).
10. **dynamic.** Stateless: the frequencies for ``max(seq_len, max_position_embeddings)``.  For
    ``seq_len`` None or ``<= max_position_embeddings`` they are the ``default`` ones (computed through
    the same Python-float expression transformers uses at init).  Above, they are what the rotary
    module computes when a forward's max position + 1 is ``seq_len``: it passes ``seq_len`` as an
    int64 tensor, so the new base is computed in float32, and so it is here (transformers' init
    function called with a Python int computes it in float64; fixture case ``llama2_dynamic`` at 4118
    shows the two differ).  The module itself keeps the largest frequencies it has grown to until a
    forward strictly shorter than ``max_position_embeddings`` resets it; an engine that wants that
    history passes the largest ``seq_len`` since the last such forward.
11. **yarn.** ``truncate`` (added to transformers for gpt-oss, whose config sets it to False; before
    it, the range was always truncated) defaults to True and is read from the selected dict (5.x reads
    it from the top-level ``rope_parameters``, which for a per-layer config is the outer dict, so a
    per-layer ``truncate: False`` would be lost).  ``beta_fast``/``beta_slow`` default
    to 32/1 when missing, None or 0 (transformers' ``or``); ``mscale`` and ``mscale_all_dim`` are used
    only when both are non-zero (``mscale and mscale_all_dim``), else ``0.1 * ln(factor) + 1``; an
    explicit ``attention_factor`` wins.  ``factor`` None means ``max_position_embeddings /
    original_max_position_embeddings`` (5.x); a missing ``factor`` key is an error, as 5.x's
    validation says.  The correction range is clamped to ``[0, R - 1]`` as transformers does (not to
    ``R/2 - 1``).
12. **Validation.** transformers only *warns* for several impossible values; here they are
    ``ValueError``s naming the key, the value and what was expected: scaling ``factor <= 0``,
    ``rope_theta <= 1``, ``high_freq_factor <= low_freq_factor``, ``beta_fast < beta_slow``,
    ``attention_factor <= 0``, wrong ``short_factor``/``long_factor`` lengths, non-numbers (``bool``
    included), ``partial_rotary_factor`` outside ``(0, 1]``, a rotary dim of 0 (or 2 for dynamic,
    whose exponent ``R / (R - 2)`` needs ``R > 2``).  A ``factor`` between 0 and 1 is accepted
    (transformers warns; it compresses rather than extends).
13. **Layer types.** ``layer_type`` picks the entry of a per-layer dict; with a per-layer dict it is
    required.  A flat dict applies to every layer type (5.x duplicates it), except in the 4.x Gemma 3
    form: with ``layer_type="sliding_attention"`` and a top-level ``rope_local_base_freq``, the sliding
    layers use ``default`` RoPE with that base (what 4.x's Gemma 3 model and 5.x's Gemma 3 config
    conversion do); a Gemma 3 dict (``model_type`` starting with ``gemma3``) without that key is a
    ``ValueError`` for the sliding layers rather than a guess of the class default (as for
    ``rope_theta``).  A per-layer entry of None (a layer without RoPE) is a ``ValueError``.  When the
    config lists ``layer_types``, a ``layer_type`` not among them is a ``ValueError``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RopeParameters", "rope_parameters", "SUPPORTED_ROPE_TYPES"]

#: The rope types :func:`rope_parameters` computes (transformers' ``ROPE_INIT_FUNCTIONS`` names).
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
_LEGACY_TYPE_NAMES = {"su": "longrope"}
_SEQ_LEN_DEPENDENT = ("dynamic", "longrope")
# Keys that only ever appear in a flat (not per-layer) rope dict.
_FLAT_KEYS = {"rope_type", "type", "rope_theta", "factor", "partial_rotary_factor",
              "original_max_position_embeddings", "short_factor", "long_factor", "low_freq_factor",
              "high_freq_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "attention_factor", "truncate"}

_F32 = np.float32


@dataclass(frozen=True, eq=False)
class RopeParameters:
    """What an engine needs to apply RoPE for one config (and layer type, and sequence length).

    :ivar rope_type: ``"default"``, ``"linear"``, ``"dynamic"``, ``"yarn"``, ``"longrope"`` or ``"llama3"``.
    :ivar inv_freq: ``(rotary_dim // 2,)`` float32, read-only: angle = position * inv_freq.
    :ivar attention_scaling: cos and sin are multiplied by this (YaRN, longrope; 1.0 otherwise).
    :ivar rotary_dim: R = ``2 * len(inv_freq)``, even, ``<= head_dim``: channels ``R..head_dim`` are not rotated.
    :ivar head_dim: the attention head size the config gives.
    :ivar rope_theta: the config's RoPE base (for dynamic past ``max_position_embeddings``, the base
        before it grows).
    :ivar seq_len_dependent: True when another ``seq_len`` may give other values (dynamic, longrope):
        an engine may compute any other type once per model (and layer type).

    Two results are equal when every field is, ``inv_freq`` bit for bit: ``if p != last: upload(p)``
    is a valid cache test.  Pickling and copying keep ``inv_freq`` read-only.
    """

    rope_type: str
    inv_freq: np.ndarray = field(repr=False)
    attention_scaling: float
    rotary_dim: int
    head_dim: int
    rope_theta: float
    seq_len_dependent: bool = False

    def __post_init__(self) -> None:
        # A read-only view of an immutable bytes object: nobody can turn WRITEABLE back on.
        data = np.ascontiguousarray(self.inv_freq, dtype=np.float32)
        if data.ndim != 1:
            raise ValueError(f"RopeParameters: inv_freq must be 1-D, got shape {data.shape}")
        frozen = np.frombuffer(data.tobytes(), dtype=np.float32)
        object.__setattr__(self, "inv_freq", frozen)
        object.__setattr__(self, "attention_scaling", float(self.attention_scaling))
        if self.rotary_dim != 2 * frozen.shape[0]:
            raise ValueError(f"RopeParameters: rotary_dim={self.rotary_dim} is not 2 * len(inv_freq) "
                             f"= {2 * frozen.shape[0]}")

    def _key(self) -> tuple:
        return (self.rope_type, self.inv_freq.tobytes(), self.attention_scaling, self.rotary_dim,
                self.head_dim, self.rope_theta, self.seq_len_dependent)

    def __reduce__(self):
        return (type(self), (self.rope_type, self.inv_freq, self.attention_scaling, self.rotary_dim,
                             self.head_dim, self.rope_theta, self.seq_len_dependent))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RopeParameters):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        freqs = (f"[{self.inv_freq[0]:.7g} .. {self.inv_freq[-1]:.7g}]" if len(self.inv_freq) else "[]")
        return (f"RopeParameters(rope_type={self.rope_type!r}, rotary_dim={self.rotary_dim}, "
                f"head_dim={self.head_dim}, rope_theta={self.rope_theta!r}, "
                f"attention_scaling={self.attention_scaling!r}, "
                f"seq_len_dependent={self.seq_len_dependent!r}, inv_freq={freqs})")


def rope_parameters(config: Any, seq_len: int | None = None,
                    layer_type: str | None = None) -> RopeParameters:
    """The RoPE inverse frequencies and attention scaling of a transformers config.

    :param config: the model config as a dict: ``config.to_dict()`` of transformers 4.x (``rope_theta`` +
        ``rope_scaling``) or 5.x (``rope_parameters``, possibly per layer type), or a checkpoint's
        ``config.json`` loaded with :func:`json.load`.  An object with a ``to_dict()`` method (a
        transformers config) is accepted too.  For a composite config (Gemma 3 multimodal), pass its
        ``text_config``.
    :param seq_len: the max position + 1 of the current forward.  Only ``dynamic`` (which uses
        ``max(seq_len, max_position_embeddings)``) and ``longrope`` (long factors when ``seq_len >
        original_max_position_embeddings``) read it; None means "not beyond the pretraining length".
    :param layer_type: the layer type (``"sliding_attention"``, ``"full_attention"``...) where the config
        gives RoPE parameters per layer type; required then.
    :returns: a frozen :class:`RopeParameters` with ``inv_freq`` (float32, read-only, shape
        ``(rotary_dim // 2,)``) and ``attention_scaling``.
    :raises ValueError: unknown rope type (the message lists the supported ones), a missing or bad key
        (the message names the key, the value and what was expected), a bad ``seq_len`` or ``layer_type``.
    :raises TypeError: ``config`` is not a mapping.

    The decisions taken where transformers' versions disagree are listed in this module's docstring.
    """
    cfg = _as_mapping(config)
    seq_len = _check_seq_len(seq_len)
    rope, where, nested = _select(cfg, layer_type)

    raw_type = rope.get("rope_type")
    if raw_type is None:
        raw_type = rope.get("type", "default") or "default"
    if not isinstance(raw_type, str):
        raise ValueError(f"rope_parameters: {where}['rope_type'] is {raw_type!r}; expected one of "
                         f"{', '.join(map(repr, SUPPORTED_ROPE_TYPES))}")
    rope_type = _LEGACY_TYPE_NAMES.get(raw_type, raw_type)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_parameters: unknown rope type {raw_type!r} in {where}; supported: "
                         f"{', '.join(map(repr, SUPPORTED_ROPE_TYPES))}")

    r = _Reader(cfg, rope, where, rope_type)
    base = r.theta()
    head_dim = r.head_dim()
    prf = r.number("partial_rotary_factor", default=1.0, also_top_level=True,
                   expect="a number in (0, 1]", ok=lambda v: 0 < v <= 1)
    dim = int(head_dim * prf)
    n_freq = (dim + 1) // 2
    if dim < 1:
        raise ValueError(f"rope_parameters: partial_rotary_factor={prf!r} with head_dim={head_dim} "
                         f"gives rotary dim int({head_dim} * {prf!r}) = {dim}; expected at least 1 rotated "
                         f"pair. Fix 'partial_rotary_factor' or 'head_dim' in the config.")
    if 2 * n_freq > head_dim:
        raise ValueError(f"rope_parameters: rotary dim {dim} (head_dim={head_dim}, partial_rotary_factor="
                         f"{prf!r}) is odd and rotates the whole head; RoPE needs an even rotary dim "
                         f"<= head_dim.")

    if rope_type == "default":
        inv_freq, scaling = _default(base, dim), 1.0
    elif rope_type == "linear":
        factor = r.factor()
        inv_freq, scaling = _default(base, dim) / _F32(factor), 1.0
    elif rope_type == "dynamic":
        factor = r.factor()
        if dim <= 2:
            raise ValueError(f"rope_parameters: dynamic NTK scaling needs a rotary dim > 2 (its base "
                             f"exponent is R / (R - 2)); {where} gives rotary dim {dim} "
                             f"(head_dim={head_dim}, partial_rotary_factor={prf!r}).")
        mpe = r.max_position_embeddings("dynamic NTK scaling")
        inv_freq, scaling = _dynamic(base, dim, factor, mpe, seq_len), 1.0
    elif rope_type == "yarn":
        inv_freq, scaling = _yarn(r, base, dim, nested)
    elif rope_type == "longrope":
        inv_freq, scaling = _longrope(r, base, dim, n_freq, nested, seq_len)
    else:
        inv_freq, scaling = _llama3(r, base, dim, nested), 1.0

    return RopeParameters(rope_type=rope_type, inv_freq=inv_freq, attention_scaling=scaling,
                          rotary_dim=2 * n_freq, head_dim=head_dim, rope_theta=float(base),
                          seq_len_dependent=rope_type in _SEQ_LEN_DEPENDENT)


# -- reading the config --------------------------------------------------------------------------

def _as_mapping(config: Any) -> Mapping:
    if isinstance(config, Mapping):
        return config
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return out
    raise TypeError(f"rope_parameters: config must be a dict (a transformers config's .to_dict()), "
                    f"got {type(config).__name__}")


def _check_seq_len(seq_len: Any) -> int | None:
    if seq_len is None:
        return None
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 1:
        raise ValueError(f"rope_parameters: seq_len={seq_len!r}; expected None or an int >= 1 (the max "
                         f"position + 1 of the current forward)")
    return int(seq_len)


def _present(mapping: Mapping, key: str) -> Any:
    """The value of ``key``, None when the key is absent or None (5.x ``to_dict()`` writes Nones)."""
    return mapping.get(key)


def _is_nested(rope: Mapping, layer_types: Any) -> bool:
    if not rope:
        return False
    if isinstance(layer_types, (list, tuple)) and any(k in layer_types for k in rope):
        return True
    return (not any(k in _FLAT_KEYS for k in rope)
            and all(v is None or isinstance(v, Mapping) for v in rope.values()))


def _select(cfg: Mapping, layer_type: str | None) -> tuple[dict, str, bool]:
    """The rope dict that applies to ``layer_type`` (a copy; top-level fallbacks are read by _Reader).

    Returns (dict, where it came from for messages, whether it was one entry of a per-layer dict).
    """
    if layer_type is not None and not isinstance(layer_type, str):
        raise ValueError(f"rope_parameters: layer_type={layer_type!r}; expected None or a layer type name "
                         f"such as 'full_attention'")
    new, old = _present(cfg, "rope_parameters"), _present(cfg, "rope_scaling")
    for key, value in (("rope_parameters", new), ("rope_scaling", old)):
        if value is not None and not isinstance(value, Mapping):
            raise ValueError(f"rope_parameters: config[{key!r}] is {value!r}; expected a dict or None")
    if new is not None and old is not None and dict(new) != dict(old):
        raise ValueError("rope_parameters: config has both 'rope_parameters' (transformers 5.x) and "
                         "'rope_scaling' (4.x), and they differ; pass the config of one version "
                         "(set the other to None).")
    if new is not None:
        source, where = new, "config['rope_parameters']"
    elif old is not None:
        source, where = old, "config['rope_scaling']"
    else:
        source, where = {}, "config"
    layer_types = _present(cfg, "layer_types")

    if _is_nested(source, layer_types):
        available = sorted(source)
        if layer_type is None:
            raise ValueError(f"rope_parameters: {where} gives RoPE parameters per layer type "
                             f"({', '.join(map(repr, available))}); pass layer_type=, e.g. "
                             f"rope_parameters(config, layer_type={available[0]!r})")
        if layer_type not in source:
            raise ValueError(f"rope_parameters: layer_type={layer_type!r} is not in {where} (it has "
                             f"{', '.join(map(repr, available))})")
        entry = source[layer_type]
        where = f"{where}[{layer_type!r}]"
        if entry is None:
            raise ValueError(f"rope_parameters: {where} is None: layers of type {layer_type!r} use no RoPE")
        return dict(entry), where, True

    if layer_type is not None and isinstance(layer_types, (list, tuple)) and layer_type not in layer_types:
        raise ValueError(f"rope_parameters: layer_type={layer_type!r} is not among config['layer_types'] "
                         f"({', '.join(map(repr, sorted(set(layer_types))))})")
    local_base = _present(cfg, "rope_local_base_freq")
    if layer_type == "sliding_attention" and local_base is not None:
        # transformers 4.x Gemma 3: sliding layers use default RoPE with the local base.
        rope: dict = {"rope_type": "default", "rope_theta": local_base}
        prf = _present(source, "partial_rotary_factor")
        if prf is not None:
            rope["partial_rotary_factor"] = prf
        return rope, "config (rope_local_base_freq, for 'sliding_attention')", False
    model_type = _present(cfg, "model_type")
    if layer_type == "sliding_attention" and isinstance(model_type, str) and model_type.startswith("gemma3"):
        raise ValueError(f"rope_parameters: this {model_type!r} config gives one set of RoPE parameters "
                         f"({where}) and no 'rope_local_base_freq', the base of its sliding layers; "
                         f"expected 'rope_local_base_freq' (Gemma 3: 10000.0) or per-layer "
                         f"'rope_parameters' (transformers 5.x)")
    return dict(source), where, False


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class _Reader:
    """Reads and checks the keys one rope type needs; every error names the key, value and expectation."""

    def __init__(self, cfg: Mapping, rope: Mapping, where: str, rope_type: str):
        self.cfg, self.rope, self.where, self.rope_type = cfg, rope, where, rope_type

    def _bad(self, key: str, value: Any, place: str, expect: str) -> ValueError:
        return ValueError(f"rope_parameters: {place}[{key!r}] is {value!r} (rope_type {self.rope_type!r}); "
                          f"expected {expect}")

    def number(self, key: str, *, default: Any = None, required: bool = False, also_top_level: bool = False,
               expect: str = "a number", ok=lambda v: True) -> Any:
        value, place = _present(self.rope, key), self.where
        if value is None and also_top_level:
            value, place = _present(self.cfg, key), "config"
        if value is None:
            if required:
                if also_top_level and self.where != "config":
                    fact = f"no {key!r} in {self.where} nor at the top level of config"
                else:
                    fact = f"{self.where} has no {key!r}"
                raise ValueError(f"rope_parameters: {fact}, which rope_type {self.rope_type!r} needs; "
                                 f"expected {expect}")
            return default
        if not _is_number(value) or not ok(value):
            raise self._bad(key, value, place, expect)
        return value

    def integer(self, key: str, value: Any, place: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise self._bad(key, value, place, "an int >= 1")
        return int(value)

    def theta(self) -> float:
        return self.number("rope_theta", required=True, also_top_level=True,
                           expect="the RoPE base, a number > 1 (e.g. 10000.0)", ok=lambda v: v > 1)

    def factor(self) -> float:
        if "factor" not in self.rope:
            raise ValueError(f"rope_parameters: {self.where} has no 'factor', which rope_type "
                             f"{self.rope_type!r} needs; expected the scaling factor, a number > 0")
        return self.number("factor", required=True, expect="the scaling factor, a number > 0",
                           ok=lambda v: v > 0)

    def head_dim(self) -> int:
        for key in ("head_dim", "qk_rope_head_dim"):
            value = _present(self.cfg, key)
            if value is not None:
                return self.integer(key, value, "config")
        hidden, heads = _present(self.cfg, "hidden_size"), _present(self.cfg, "num_attention_heads")
        if hidden is None or heads is None:
            missing = [k for k, v in (("hidden_size", hidden), ("num_attention_heads", heads)) if v is None]
            raise ValueError(f"rope_parameters: config has no 'head_dim' and no {' / '.join(map(repr, missing))}"
                             f"; expected 'head_dim', or 'hidden_size' and 'num_attention_heads' "
                             f"(head_dim = hidden_size // num_attention_heads)")
        hidden = self.integer("hidden_size", hidden, "config")
        heads = self.integer("num_attention_heads", heads, "config")
        if hidden // heads < 1:
            raise ValueError(f"rope_parameters: hidden_size={hidden} // num_attention_heads={heads} is 0; "
                             f"expected a head of at least 1 channel")
        return hidden // heads

    def max_position_embeddings(self, why: str) -> int:
        value = _present(self.cfg, "max_position_embeddings")
        if value is None:
            raise ValueError(f"rope_parameters: config has no 'max_position_embeddings', which {why} needs "
                             f"(rope_type {self.rope_type!r}); expected an int >= 1")
        return self.integer("max_position_embeddings", value, "config")

    def original_max_position_embeddings(self, nested: bool) -> int:
        top = None if nested else _present(self.cfg, "original_max_position_embeddings")
        if top is not None:
            return self.integer("original_max_position_embeddings", top, "config")
        own = _present(self.rope, "original_max_position_embeddings")
        if own is not None:
            return self.integer("original_max_position_embeddings", own, self.where)
        return self.max_position_embeddings("the default of 'original_max_position_embeddings'")


# -- the rope types, replaying transformers' float32 arithmetic ------------------------------------

def _exponents(dim: int) -> np.ndarray:
    """``arange(0, dim, 2)`` (int64) as float32, divided by dim in float32: 2i / dim."""
    return np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / _F32(dim)


def _pow(base: Any, exponent: Any) -> np.ndarray:
    """float32 ``base ** exponent``, correctly rounded via float64.

    ``base`` is rounded to float32 first (torch casts a Python-float base to the tensor's dtype); the
    exponent is used as given: a float32 array, or a Python float, which torch's tensor-to-scalar ``pow``
    keeps in double precision.
    """
    b = np.asarray(base, dtype=np.float32).astype(np.float64)
    e = np.asarray(exponent, dtype=np.float64)
    return np.power(b, e).astype(np.float32)


def _recip(x: np.ndarray) -> np.ndarray:
    """torch's ``1.0 / x``, i.e. ``x.reciprocal() * 1.0``."""
    return _F32(1.0) / x


def _default(base: float, dim: int) -> np.ndarray:
    return _recip(_pow(base, _exponents(dim)))


def _dynamic(base: float, dim: int, factor: float, mpe: int, seq_len: int | None) -> np.ndarray:
    if seq_len is None or seq_len <= mpe:
        # transformers at init: Python floats, seq_len = max_position_embeddings.
        grown = base * ((factor * mpe / mpe) - (factor - 1)) ** (dim / (dim - 2))
        return _default(grown, dim)
    # The rotary module's update: seq_len is an int64 tensor, so the new base is computed in float32.
    ratio = (_F32(factor) * _F32(seq_len)) / _F32(mpe) - _F32(factor - 1)
    grown32 = _F32(base) * _pow(ratio, dim / (dim - 2))
    return _recip(_pow(grown32, _exponents(dim)))


def _yarn(r: _Reader, base: float, dim: int, nested: bool) -> tuple[np.ndarray, float]:
    if "factor" not in r.rope:
        raise ValueError(f"rope_parameters: {r.where} has no 'factor', which rope_type 'yarn' needs; "
                         f"expected the scaling factor, a number > 0 (or None for max_position_embeddings "
                         f"/ original_max_position_embeddings)")
    orig = r.original_max_position_embeddings(nested)
    factor = r.number("factor", expect="the scaling factor, a number > 0", ok=lambda v: v > 0)
    if factor is None:
        factor = r.max_position_embeddings("yarn with factor None") / orig
    attention_factor = r.number("attention_factor", expect="a number > 0", ok=lambda v: v > 0)
    mscale = r.number("mscale")
    mscale_all_dim = r.number("mscale_all_dim")
    beta_fast = r.number("beta_fast") or 32
    beta_slow = r.number("beta_slow") or 1
    if beta_fast < beta_slow:
        raise ValueError(f"rope_parameters: {r.where} has beta_fast={beta_fast!r} < beta_slow={beta_slow!r} "
                         f"(rope_type 'yarn'); expected beta_fast >= beta_slow (defaults 32 and 1)")
    truncate = r.rope.get("truncate")
    if truncate is None:
        truncate = True
    elif not isinstance(truncate, bool):
        raise r._bad("truncate", truncate, r.where, "True or False")

    def mscale_of(scale: float, m: float = 1) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = float(mscale_of(factor, mscale) / mscale_of(factor, mscale_all_dim))
        else:
            attention_factor = mscale_of(factor)

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp

    pos_freqs = _pow(base, _exponents(dim))
    extrapolation = _recip(pos_freqs)
    interpolation = _recip(_F32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - _F32(low)) / _F32(high - low),
                   _F32(0), _F32(1))
    extrapolation_weight = _F32(1) - ramp
    inv_freq = (interpolation * (_F32(1) - extrapolation_weight)
                + extrapolation * extrapolation_weight)
    return inv_freq, attention_factor


def _factor_list(r: _Reader, key: str, n: int, head_dim_note: str) -> np.ndarray:
    value = _present(r.rope, key)
    if value is None:
        raise ValueError(f"rope_parameters: {r.where} has no {key!r}, which rope_type 'longrope' needs; "
                         f"expected a list of {n} numbers > 0 (one per rotated pair, {head_dim_note})")
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
        raise r._bad(key, value, r.where, f"a list of {n} numbers > 0")
    items = list(value)
    if len(items) != n:
        raise ValueError(f"rope_parameters: {r.where}[{key!r}] has {len(items)} entries (rope_type "
                         f"'longrope'); expected {n}, one per rotated pair ({head_dim_note})")
    bad = [(i, v) for i, v in enumerate(items) if not _is_number(v) or v <= 0]
    if bad:
        i, v = bad[0]
        raise ValueError(f"rope_parameters: {r.where}[{key!r}][{i}] is {v!r} (rope_type 'longrope'); "
                         f"expected a number > 0")
    return np.array([float(v) for v in items], dtype=np.float64).astype(np.float32)


def _longrope(r: _Reader, base: float, dim: int, n_freq: int, nested: bool,
              seq_len: int | None) -> tuple[np.ndarray, float]:
    note = f"rotary dim {dim} // 2" if dim % 2 == 0 else f"(rotary dim {dim} + 1) // 2"
    short = _factor_list(r, "short_factor", n_freq, note)
    long = _factor_list(r, "long_factor", n_freq, note)
    orig = r.original_max_position_embeddings(nested)
    factor = r.number("factor", expect="the scaling factor, a number > 0", ok=lambda v: v > 0)
    if factor is None:
        factor = r.max_position_embeddings("longrope without 'factor'") / orig
    attention_factor = r.number("attention_factor", expect="a number > 0", ok=lambda v: v > 0)
    if attention_factor is None:
        attention_factor = (1.0 if factor <= 1.0
                            else math.sqrt(1 + math.log(factor) / math.log(orig)))
    ext = long if seq_len is not None and seq_len > orig else short
    inv_freq = _recip(ext * _pow(base, _exponents(dim)))
    return inv_freq, attention_factor


def _llama3(r: _Reader, base: float, dim: int, nested: bool) -> np.ndarray:
    factor = r.factor()
    low_ff = r.number("low_freq_factor", required=True, expect="a number > 0", ok=lambda v: v > 0)
    high_ff = r.number("high_freq_factor", required=True, expect="a number > low_freq_factor",
                       ok=lambda v: v > 0)
    if high_ff <= low_ff:
        raise ValueError(f"rope_parameters: {r.where} has high_freq_factor={high_ff!r} <= "
                         f"low_freq_factor={low_ff!r} (rope_type 'llama3'); expected high_freq_factor > "
                         f"low_freq_factor (Llama 3.1: 4.0 and 1.0)")
    orig = r.original_max_position_embeddings(nested)
    low_wavelen = orig / low_ff
    high_wavelen = orig / high_ff

    inv_freq = _default(base, dim)
    wavelen = _recip(inv_freq) * _F32(2 * math.pi)
    scaled = np.where(wavelen > _F32(low_wavelen), inv_freq / _F32(factor), inv_freq)
    smooth = ((_recip(wavelen) * _F32(orig)) - _F32(low_ff)) / _F32(high_ff - low_ff)
    smoothed = ((_F32(1) - smooth) * scaled) / _F32(factor) + smooth * scaled
    medium = ~(wavelen < _F32(high_wavelen)) & ~(wavelen > _F32(low_wavelen))
    return np.where(medium, smoothed, scaled).astype(np.float32)
