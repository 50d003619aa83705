"""sapient_core.rope_parameters: RoPE frequencies as Hugging Face transformers computes them.

Four kinds of test:

(a) golden: every config of tests/fixtures/rope_golden.json (made by make_rope_golden.py with transformers
    4.57 and 5.x, torch 2.13 CPU) gives transformers' inv_freq within 1 float32 ulp per element, with at
    least 95 % of all elements bit-identical, and exactly transformers' attention_scaling.  Why not
    bit-for-bit everywhere: rope.py replays transformers' float32 operations one by one (those are
    correctly rounded IEEE operations, so they agree bit for bit), but torch's CPU ``pow`` (SLEEF
    ``powf``, 1-ulp bound) is not always correctly rounded and rope.py's is; a 1-ulp difference in
    ``base ** (2i/R)`` stays a 1-ulp difference through the reciprocal.  torch on CUDA has its own powf,
    so transformers itself differs by an ulp between devices.
(b) formulas: float64 implementations written from the published formulas (RoPE, position
    interpolation, NTK-aware base, YaRN's ramp and mscale, Llama 3.1's smoothing, LongRoPE) agree with
    rope.py to float32 precision, independently of transformers.
(c) every error path, message asserted.
(d) the returned object: frozen, inv_freq float32 and read-only, rotary_dim = 2 * len(inv_freq) <= head_dim.
"""

from __future__ import annotations

import ast
import base64
import copy
import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import sapient_core.rope as rope_module
from sapient_core.rope import SUPPORTED_ROPE_TYPES, RopeParameters, rope_parameters

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "rope_golden.json"
GOLDEN = json.loads(FIXTURE.read_text())
CASES = {case["name"]: case for case in GOLDEN["cases"]}

#: Where transformers 4.x and 5.x compute different values from the same config.json, rope_parameters
#: follows 5.x (rope.py docstring, decision 7/8): 4.x longrope ignores an original_max_position_embeddings
#: given inside rope_scaling (it reads only the top-level key, else max_position_embeddings).
DIVERGENT_4X = {"llama_longrope_explicit"}


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 units in the last place, elementwise (values here are all positive)."""
    assert a.dtype == np.float32 and b.dtype == np.float32 and a.shape == b.shape
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


def _golden_rows(major: str):
    for case in GOLDEN["cases"]:
        data = case["transformers"].get(major, {})
        for row in data.get("results", []):
            yield pytest.param(case, data["config"], row,
                               id=f"{case['name']}-{row['layer_type']}-{row['seq_len']}")


def _torch_pow_table(major: str) -> dict[tuple[int, int], int]:
    raw = base64.b64decode(GOLDEN["torch_pow"][major])
    rows = np.frombuffer(raw, dtype=[("base", "<u4"), ("exponent", "<u8"), ("result", "<u4")])
    return {(int(b), int(e)): int(r) for b, e, r in rows.tolist()}


def _replay_torch_pow(table: dict[tuple[int, int], int]):
    """A stand-in for rope._pow that returns what torch's pow returned for the same float32 base and
    exponent (KeyError for a pow transformers never computed)."""
    def pow_(base, exponent):
        b = np.asarray(base, dtype=np.float32)
        e = np.asarray(exponent, dtype=np.float64)
        b, e = np.broadcast_arrays(b, e)
        bits = [table[(kb, ke)] for kb, ke in zip(b.view(np.uint32).ravel().tolist(),
                                                   e.view(np.uint64).ravel().tolist())]
        return np.array(bits, dtype=np.uint32).view(np.float32).reshape(b.shape)
    return pow_


def _check_against(ours: RopeParameters, expected: dict) -> np.ndarray:
    want = np.array(expected["inv_freq"], dtype=np.float32)
    assert ours.inv_freq.shape == want.shape
    ulps = _ulps(ours.inv_freq, want)
    assert ulps.max() <= 1, f"max {ulps.max()} ulp: ours {ours.inv_freq} vs transformers {want}"
    assert ours.attention_scaling == expected["attention_scaling"]
    return ulps


# -- (a) golden values from transformers -----------------------------------------------------------

def test_fixture_records_both_versions_and_every_required_model():
    versions = GOLDEN["versions"]
    assert versions["5"]["transformers"].startswith("5.") and versions["4"]["transformers"].startswith("4.")
    assert versions["5"]["torch"].startswith("2.13.0") and versions["4"]["torch"].startswith("2.13.0")
    assert {"llama2_7b_default", "llama31_8b_llama3", "llama32_1b_llama3", "mistral_7b_v01_default",
            "qwen25_7b_yarn", "deepseek_v3_yarn_mscale", "gpt_oss_20b_yarn_no_truncate",
            "qwen2_yarn_attention_factor", "phi3_mini_128k_longrope", "phi4_mini_longrope_partial",
            "gemma3_4b_linear", "llama2_linear", "llama2_dynamic", "gemma_7b_head_dim"} <= set(CASES)
    # Every rope type is covered by at least one golden config.
    types = {rope_parameters(case["raw"], layer_type=lt).rope_type
             for case in GOLDEN["cases"] for lt in case["layer_types"]}
    assert types == set(SUPPORTED_ROPE_TYPES)


@pytest.mark.parametrize("case,config,row", list(_golden_rows("5")))
def test_matches_transformers_5(case, config, row):
    ours = rope_parameters(config, seq_len=row["seq_len"], layer_type=row["layer_type"])
    _check_against(ours, row["module"])


@pytest.mark.parametrize("case,config,row", list(_golden_rows("4")))
def test_matches_transformers_4(case, config, row):
    ours = rope_parameters(config, seq_len=row["seq_len"], layer_type=row["layer_type"])
    if case["name"] in DIVERGENT_4X:
        # We follow 5.x here: the same values as 5.x's module, from 4.x's dict.
        five = next(r for r in case["transformers"]["5"]["results"]
                    if (r["layer_type"], r["seq_len"]) == (row["layer_type"], row["seq_len"]))
        _check_against(ours, five["module"])
    else:
        _check_against(ours, row["module"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_config_json_matches_transformers(name):
    """The config.json form (4.x keys, legacy 'type', None-free) gives 5.x's values (4.x's where 5.x
    refuses the config: Phi-3's 'su')."""
    case = CASES[name]
    major = "5" if "results" in case["transformers"]["5"] else "4"
    for row in case["transformers"][major]["results"]:
        ours = rope_parameters(case["raw"], seq_len=row["seq_len"], layer_type=row["layer_type"])
        _check_against(ours, row["module"])


def test_almost_every_element_is_bit_identical():
    total = identical = 0
    for major in ("4", "5"):
        for param in _golden_rows(major):
            case, config, row = param.values
            if case["name"] in DIVERGENT_4X and major == "4":
                continue
            ours = rope_parameters(config, seq_len=row["seq_len"], layer_type=row["layer_type"])
            ulps = _check_against(ours, row["module"])
            total += ulps.size
            identical += int((ulps == 0).sum())
    assert total > 5000
    assert identical / total >= 0.95, f"only {identical}/{total} elements bit-identical"


@pytest.mark.parametrize("major", ["4", "5"])
def test_bit_for_bit_given_torchs_pow(major, monkeypatch):
    """With torch's own pow results (recorded by the generator) in place of rope.py's correctly rounded
    pow, every other float32 operation replays transformers exactly: every element of every golden
    config is bit-identical."""
    monkeypatch.setattr(rope_module, "_pow", _replay_torch_pow(_torch_pow_table(major)))
    checked = 0
    for param in _golden_rows(major):
        case, config, row = param.values
        if case["name"] in DIVERGENT_4X and major == "4":
            continue
        ours = rope_parameters(config, seq_len=row["seq_len"], layer_type=row["layer_type"])
        want = np.array(row["module"]["inv_freq"], dtype=np.float32)
        assert ours.inv_freq.tobytes() == want.tobytes(), (case["name"], row["layer_type"], row["seq_len"])
        assert ours.attention_scaling == row["module"]["attention_scaling"]
        checked += 1
    assert checked >= 45


def test_torch_pow_differs_from_correct_rounding_by_at_most_one_ulp():
    """The reason for the 1-ulp tolerance, measured on the recorded table."""
    table = _torch_pow_table("5")
    keys = np.array(list(table), dtype=np.uint64)
    base = keys[:, 0].astype(np.uint32).view(np.float32).astype(np.float64)
    exponent = keys[:, 1].view(np.float64)
    torch_result = np.array(list(table.values()), dtype=np.uint32).view(np.float32)
    ours = rope_module._pow(base.astype(np.float32), exponent)
    ulps = _ulps(ours, torch_result)
    assert ulps.max() == 1 and 0 < np.count_nonzero(ulps) < 0.05 * len(ulps)


def test_divergent_4x_cases_really_diverge_and_others_agree():
    """The fixture itself: 4.x and 5.x agree everywhere except the cases listed in DIVERGENT_4X."""
    for name, case in CASES.items():
        four, five = case["transformers"]["4"], case["transformers"]["5"]
        if "results" not in five:
            assert name == "phi3_mini_128k_su_legacy" and "original_max_position_embeddings" in five["error"]
            continue
        same = all(a["module"] == b["module"] for a, b in zip(four["results"], five["results"]))
        assert same == (name not in DIVERGENT_4X), name


def test_divergent_4x_longrope_is_the_original_length():
    case = CASES["llama_longrope_explicit"]
    four = {r["seq_len"]: r["module"] for r in case["transformers"]["4"]["results"]}
    five = {r["seq_len"]: r["module"] for r in case["transformers"]["5"]["results"]}
    # 5.x switches to the long factors past rope_scaling's original length 8192; 4.x does not (it uses
    # max_position_embeddings = 131072), and 4.x's attention factor uses log(131072) instead of log(8192).
    assert five[8193]["inv_freq"] != five[8192]["inv_freq"]
    assert four[8193]["inv_freq"] == four[8192]["inv_freq"]
    assert five[None]["attention_scaling"] == pytest.approx(math.sqrt(1 + math.log(16) / math.log(8192)))
    assert four[None]["attention_scaling"] == pytest.approx(math.sqrt(1 + math.log(16) / math.log(131072)))


def test_dynamic_follows_the_rotary_module_not_the_float64_init_function():
    """At seq_len 4118 transformers' module (float32 base) and its init function called with an int
    (float64 base) disagree; rope_parameters gives the module's values."""
    case = CASES["llama2_dynamic"]
    row = next(r for r in case["transformers"]["5"]["results"] if r["seq_len"] == 4118)
    assert row["init_fn"]["inv_freq"] != "same as module"
    ours = rope_parameters(case["raw"], seq_len=4118)
    module = np.array(row["module"]["inv_freq"], np.float32)
    init_fn = np.array(row["init_fn"]["inv_freq"], np.float32)
    assert _ulps(ours.inv_freq, module).max() <= 1
    assert _ulps(ours.inv_freq, module).sum() < _ulps(ours.inv_freq, init_fn).sum()


def test_gemma3_both_forms_and_both_layer_types():
    case = CASES["gemma3_4b_linear"]
    five, four = case["transformers"]["5"]["config"], case["transformers"]["4"]["config"]
    assert set(five["rope_parameters"]) == {"full_attention", "sliding_attention"}
    assert four["rope_scaling"] == {"factor": 8.0, "rope_type": "linear"}
    for config in (five, four, case["raw"]):
        full = rope_parameters(config, layer_type="full_attention")
        sliding = rope_parameters(config, layer_type="sliding_attention")
        assert (full.rope_type, full.rope_theta) == ("linear", 1e6)
        assert (sliding.rope_type, sliding.rope_theta) == ("default", 1e4)
        assert full.rotary_dim == sliding.rotary_dim == full.head_dim == 256
        # Local layers: the plain base-1e4 frequencies; global: base 1e6 divided by 8.
        assert sliding.inv_freq[1] == pytest.approx(1e4 ** (-2 / 256), rel=1e-6)
        assert full.inv_freq[1] == pytest.approx(1e6 ** (-2 / 256) / 8, rel=1e-6)


# -- (b) float64 formulas, written from the papers ----------------------------------------------------

def _theta(base: float, rotary_dim: int) -> np.ndarray:
    """RoPE (Su et al.): theta_i = base^(-2i/d), i = 0 .. d/2 - 1."""
    return base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)


def _close(ours: RopeParameters, reference: np.ndarray, rtol: float = 1e-6) -> None:
    assert ours.inv_freq.shape == reference.shape
    np.testing.assert_allclose(ours.inv_freq.astype(np.float64), reference, rtol=rtol, atol=0)


def test_formula_default_and_partial_rotary():
    _close(rope_parameters(CASES["llama2_7b_default"]["raw"]), _theta(10000.0, 128))
    phi4 = dict(CASES["phi3_partial_default"]["raw"])
    p = rope_parameters(phi4)
    assert (p.head_dim, p.rotary_dim) == (128, 96)
    _close(p, _theta(10000.0, 96))
    # An odd int(head_dim * factor) = 19 keeps the exponents 2i/19, with 10 frequencies (R = 20).
    odd = rope_parameters(CASES["phi_odd_partial"]["raw"])
    assert (odd.head_dim, odd.rotary_dim) == (64, 20)
    _close(odd, _theta(10000.0, 19))


def test_formula_linear_position_interpolation():
    # Position interpolation (Chen et al.): positions / s, i.e. theta_i / s.
    _close(rope_parameters(CASES["llama2_linear"]["raw"]), _theta(10000.0, 128) / 4.0)


@pytest.mark.parametrize("seq_len", [None, 100, 4096, 4097, 10000, 32768])
def test_formula_dynamic_ntk(seq_len):
    # NTK-aware scaled RoPE, dynamic (bloc97 / emozilla): base' = base * (s*L/L_train - (s-1))^(d/(d-2))
    # with L = max(seq_len, L_train); at L <= L_train this is plain RoPE.
    d, s, train = 128, 2.0, 4096
    length = max(seq_len or 0, train)
    base = 10000.0 * (s * length / train - (s - 1)) ** (d / (d - 2))
    p = rope_parameters(CASES["llama2_dynamic"]["raw"], seq_len=seq_len)
    _close(p, _theta(base, d))
    assert p.seq_len_dependent and p.attention_scaling == 1.0


def _yarn_reference(base, d, s, original, beta_fast=32.0, beta_slow=1.0, truncate=True):
    """YaRN (Peng et al. 2023), "NTK-by-parts", float64.

    r_i = original / lambda_i (rotations of pair i over the original context), lambda_i = 2 pi / theta_i.
    Pairs with r_i > beta_fast keep theta_i (extrapolation), pairs with r_i < beta_slow get theta_i / s
    (interpolation).  Between, the YaRN reference code (which transformers follows) blends linearly in
    the *pair index* between the indices where r = beta_fast and r = beta_slow, with those indices rounded
    outwards when ``truncate``; the paper's gamma(r) is linear in r instead, so the two agree at the ends
    of the ramp only.
    """
    theta = _theta(base, d)
    r = original * theta / (2 * math.pi)
    index_at = lambda rotations: d * math.log(original / (2 * math.pi * rotations)) / (2 * math.log(base))
    low, high = index_at(beta_fast), index_at(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)   # 0: extrapolate, 1: interpolate
    result = theta * (1 - ramp) + theta / s * ramp
    # The paper's ends of the ramp: r > beta_fast untouched, r < beta_slow divided by s.
    assert np.all(result[r > beta_fast] == theta[r > beta_fast])
    assert np.allclose(result[r < beta_slow], theta[r < beta_slow] / s, rtol=1e-15)
    return result


@pytest.mark.parametrize("name,base,d,s,original,betas,truncate", [
    ("qwen25_7b_yarn", 1e6, 128, 4.0, 32768, (32, 1), True),
    ("qwen3_8b_yarn", 1e6, 128, 4.0, 32768, (32, 1), True),
    ("deepseek_v3_yarn_mscale", 1e4, 64, 40, 4096, (32, 1), True),
    ("kimi_k2_yarn_beta1", 5e4, 64, 32.0, 4096, (1, 1), True),
    ("gpt_oss_20b_yarn_no_truncate", 150000.0, 64, 32.0, 4096, (32, 1), False),
    ("gpt_oss_20b_yarn_truncate", 150000.0, 64, 32.0, 4096, (32, 1), True),
    ("qwen2_yarn_attention_factor", 1e6, 128, 4.0, 32768, (16, 2), True),
])
def test_formula_yarn_ramp(name, base, d, s, original, betas, truncate):
    p = rope_parameters(CASES[name]["raw"])
    _close(p, _yarn_reference(base, d, s, original, *betas, truncate=truncate))


def test_yarn_truncate_changes_the_ramp():
    exact = rope_parameters(CASES["gpt_oss_20b_yarn_no_truncate"]["raw"]).inv_freq
    rounded = rope_parameters(CASES["gpt_oss_20b_yarn_truncate"]["raw"]).inv_freq
    assert not np.array_equal(exact, rounded)
    assert exact[0] == rounded[0] and exact[-1] == rounded[-1]   # same ends, different ramp


def test_formula_yarn_attention_factor():
    # YaRN: sqrt(1/t) = 0.1 ln(s) + 1, applied to cos and sin (so q.k is scaled by 1/t).
    assert rope_parameters(CASES["qwen25_7b_yarn"]["raw"]).attention_scaling == pytest.approx(
        0.1 * math.log(4.0) + 1, rel=1e-15)
    assert rope_parameters(CASES["gpt_oss_20b_yarn_no_truncate"]["raw"]).attention_scaling == pytest.approx(
        0.1 * math.log(32.0) + 1, rel=1e-15)
    # DeepSeek: (0.1 mscale ln s + 1) / (0.1 mscale_all_dim ln s + 1).
    assert rope_parameters(CASES["deepseek_v3_yarn_mscale"]["raw"]).attention_scaling == 1.0
    assert rope_parameters(CASES["llama2_yarn_mscale_unequal"]["raw"]).attention_scaling == pytest.approx(
        (0.08 * math.log(16) + 1) / (0.1 * math.log(16) + 1), rel=1e-15)
    # An explicit attention_factor wins.
    assert rope_parameters(CASES["qwen2_yarn_attention_factor"]["raw"]).attention_scaling == 1.2
    # mscale without mscale_all_dim is ignored (transformers: `mscale and mscale_all_dim`).
    cfg = copy.deepcopy(CASES["llama2_yarn_mscale_unequal"]["raw"])
    del cfg["rope_scaling"]["mscale_all_dim"]
    assert rope_parameters(cfg).attention_scaling == pytest.approx(0.1 * math.log(16) + 1, rel=1e-15)
    # factor <= 1: no scaling.
    cfg["rope_scaling"]["factor"] = 1.0
    assert rope_parameters(cfg).attention_scaling == 1.0


def test_yarn_factor_none_is_the_length_ratio():
    cfg = copy.deepcopy(CASES["qwen3_8b_yarn"]["raw"])   # max 131072 over original 32768
    cfg["rope_scaling"]["factor"] = None
    ratio = rope_parameters(cfg)
    cfg["rope_scaling"]["factor"] = 4.0
    assert ratio == rope_parameters(cfg)


def test_formula_llama3_smoothing():
    # Llama 3.1 (Meta's reference apply_scaling): wavelength < L/high: unchanged; > L/low: / factor;
    # else (1 - smooth) * f / factor + smooth * f with smooth = (L / wavelength - low) / (high - low).
    for name, d in (("llama31_8b_llama3", 128), ("llama32_1b_llama3", 64)):
        raw = CASES[name]["raw"]
        sc = raw["rope_scaling"]
        factor, low, high, old = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"], \
            sc["original_max_position_embeddings"]
        out = []
        for f in _theta(raw["rope_theta"], d):
            wavelen = 2 * math.pi / f
            if wavelen < old / high:
                out.append(f)
            elif wavelen > old / low:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - low) / (high - low)
                out.append((1 - smooth) * f / factor + smooth * f)
        p = rope_parameters(raw)
        _close(p, np.array(out))
        reference = np.array(out)
        theta = _theta(raw["rope_theta"], d)
        # All three regions occur.
        assert (reference == theta).any() and np.isclose(reference, theta / factor, rtol=1e-15).any()
        assert ((reference < theta) & (reference > theta / factor) & ~np.isclose(reference, theta / factor)).any()


@pytest.mark.parametrize("seq_len,long", [(None, False), (1, False), (4096, False), (4097, True),
                                          (131072, True)])
def test_formula_longrope(seq_len, long):
    # LongRoPE (Ding et al.): theta_i / lambda_i with per-pair rescale factors, the long set past the
    # original context; attention factor sqrt(1 + ln(s) / ln(L_orig)), s = 131072 / 4096.
    raw = CASES["phi3_mini_128k_longrope"]["raw"]
    factors = np.array(raw["rope_scaling"]["long_factor" if long else "short_factor"], dtype=np.float64)
    p = rope_parameters(raw, seq_len=seq_len)
    _close(p, _theta(10000.0, 96) / factors)
    assert p.attention_scaling == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)), rel=1e-15)
    assert p.seq_len_dependent


def test_longrope_partial_rotary_uses_the_rotated_width():
    raw = CASES["phi4_mini_longrope_partial"]["raw"]
    p = rope_parameters(raw, seq_len=20000)
    assert (p.head_dim, p.rotary_dim, len(p.inv_freq)) == (128, 96, 48)
    _close(p, _theta(10000.0, 96) / np.array(raw["rope_scaling"]["long_factor"]))


def test_types_that_ignore_seq_len_ignore_it():
    for name in ("llama2_7b_default", "llama31_8b_llama3", "qwen25_7b_yarn", "llama2_linear"):
        raw = CASES[name]["raw"]
        a, b = rope_parameters(raw), rope_parameters(raw, seq_len=10 ** 7)
        assert np.array_equal(a.inv_freq, b.inv_freq) and a.attention_scaling == b.attention_scaling
        assert not a.seq_len_dependent


def test_dynamic_is_stateless_and_default_up_to_max_positions():
    raw = CASES["llama2_dynamic"]["raw"]
    plain = rope_parameters(CASES["llama2_7b_default"]["raw"]).inv_freq
    for seq_len in (None, 1, 4096):
        assert np.array_equal(rope_parameters(raw, seq_len=seq_len).inv_freq, plain)
    grown = rope_parameters(raw, seq_len=8192).inv_freq
    assert grown[0] == plain[0] == 1.0 and np.all(grown[1:] < plain[1:])
    # No memory of a previous longer call.
    assert np.array_equal(rope_parameters(raw, seq_len=4096).inv_freq, plain)
    assert np.array_equal(rope_parameters(raw, seq_len=np.int64(8192)).inv_freq, grown)


# -- config forms -------------------------------------------------------------------------------------

def test_legacy_type_key_and_su_alias():
    base = dict(CASES["llama2_7b_default"]["raw"])
    new = rope_parameters(dict(base, rope_scaling={"rope_type": "linear", "factor": 4.0}))
    old = rope_parameters(dict(base, rope_scaling={"type": "linear", "factor": 4.0}))
    assert new == old and old.rope_type == "linear"
    # rope_type wins over type, as transformers' standardisation does.
    both = rope_parameters(dict(base, rope_scaling={"type": "dynamic", "rope_type": "linear", "factor": 4.0}))
    assert both == new
    su = rope_parameters(CASES["phi3_mini_128k_su_legacy"]["raw"])
    assert su.rope_type == "longrope"


def test_none_values_count_as_absent():
    cfg = dict(CASES["llama2_7b_default"]["raw"], head_dim=None, rope_scaling=None, rope_parameters=None,
               partial_rotary_factor=None, original_max_position_embeddings=None)
    assert rope_parameters(cfg) == rope_parameters(CASES["llama2_7b_default"]["raw"])
    assert rope_parameters(cfg).rope_type == "default"


def test_5x_form_with_theta_inside_and_none_at_top_level():
    cfg = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096,
           "rope_theta": None, "rope_scaling": None,
           "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}
    assert rope_parameters(cfg) == rope_parameters(CASES["llama2_linear"]["raw"])


def test_same_dict_in_both_keys_is_accepted():
    raw = CASES["llama2_linear"]["raw"]
    cfg = dict(raw, rope_parameters=dict(raw["rope_scaling"]))
    assert rope_parameters(cfg) == rope_parameters(raw)


def test_top_level_original_max_position_embeddings_wins():
    raw = copy.deepcopy(CASES["qwen3_8b_yarn"]["raw"])
    expected = rope_parameters(raw)
    raw["rope_scaling"]["original_max_position_embeddings"] = 8192
    assert rope_parameters(raw) != expected
    raw["original_max_position_embeddings"] = 32768
    assert rope_parameters(raw) == expected


def test_original_max_position_embeddings_defaults_to_max_positions():
    raw = copy.deepcopy(CASES["llama31_8b_llama3"]["raw"])
    del raw["rope_scaling"]["original_max_position_embeddings"]
    raw["max_position_embeddings"] = 8192
    explicit = copy.deepcopy(CASES["llama31_8b_llama3"]["raw"])
    assert np.array_equal(rope_parameters(raw).inv_freq, rope_parameters(explicit).inv_freq)


def test_head_dim_rules():
    raw = dict(CASES["gemma_7b_head_dim"]["raw"])
    assert rope_parameters(raw).head_dim == 256
    del raw["head_dim"]
    assert rope_parameters(raw).head_dim == 3072 // 16
    # DeepSeek's config.json has no head_dim: the rotated part is qk_rope_head_dim.
    ds = CASES["deepseek_v3_yarn_mscale"]["raw"]
    assert "head_dim" not in ds and rope_parameters(ds).head_dim == 64


def test_partial_rotary_factor_inside_the_rope_dict_wins():
    cfg = {"hidden_size": 3072, "num_attention_heads": 24, "partial_rotary_factor": 0.5,
           "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75}}
    assert rope_parameters(cfg).rotary_dim == 96


def test_layer_type_with_a_flat_config_applies_to_every_layer():
    raw = CASES["llama2_linear"]["raw"]
    assert rope_parameters(raw, layer_type="full_attention") == rope_parameters(raw)
    cfg = dict(CASES["gemma3_4b_linear"]["raw"])   # Gemma 3's local base is only for sliding layers
    assert rope_parameters(cfg, layer_type="chunked_attention") == rope_parameters(cfg)
    assert rope_parameters(cfg).rope_type == "linear"


def test_accepts_an_object_with_to_dict():
    class Config:
        def to_dict(self):
            return dict(CASES["llama2_7b_default"]["raw"])
    assert rope_parameters(Config()) == rope_parameters(CASES["llama2_7b_default"]["raw"])


def test_does_not_modify_the_config():
    cfg = copy.deepcopy(CASES["gemma3_4b_linear"]["transformers"]["5"]["config"])
    before = copy.deepcopy(cfg)
    rope_parameters(cfg, layer_type="full_attention")
    rope_parameters(cfg, layer_type="sliding_attention")
    assert cfg == before


# -- (c) errors ---------------------------------------------------------------------------------------

LLAMA = {"hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 4096, "rope_theta": 10000.0}


def _with(rope_scaling=None, **top):
    cfg = dict(LLAMA, **top)
    if rope_scaling is not None:
        cfg["rope_scaling"] = rope_scaling
    return cfg


PHI = CASES["phi3_mini_128k_longrope"]["raw"]


def _phi(**changes):
    cfg = copy.deepcopy(PHI)
    cfg["rope_scaling"].update(changes)
    return cfg


ERRORS = [
    ("unknown type", _with({"rope_type": "ntk", "factor": 2.0}), {},
     r"unknown rope type 'ntk' in config\['rope_scaling'\]; supported: 'default', 'linear', 'dynamic', "
     r"'yarn', 'longrope', 'llama3'"),
    ("type not a string", _with({"rope_type": 3}), {}, r"\['rope_type'\] is 3; expected one of 'default'"),
    ("no theta", {"hidden_size": 4096, "num_attention_heads": 32}, {},
     r"config has no 'rope_theta', which rope_type 'default' needs; expected the RoPE base, a number > 1"),
    ("no theta anywhere", _with({"rope_type": "linear", "factor": 2.0}, rope_theta=None), {},
     r"no 'rope_theta' in config\['rope_scaling'\] nor at the top level of config, which rope_type 'linear' "
     r"needs; expected the RoPE base"),
    ("theta 1", _with(rope_theta=1.0), {}, r"config\['rope_theta'\] is 1.0 \(rope_type 'default'\); "
                                           r"expected the RoPE base, a number > 1"),
    ("theta string", _with(rope_theta="1e4"), {}, r"config\['rope_theta'\] is '1e4'"),
    ("theta nan", _with(rope_theta=float("nan")), {}, r"config\['rope_theta'\] is nan"),
    ("no head size", {"rope_theta": 1e4, "hidden_size": 4096}, {},
     r"config has no 'head_dim' and no 'num_attention_heads'; expected 'head_dim', or 'hidden_size' and "
     r"'num_attention_heads'"),
    ("head_dim 0", _with(head_dim=0), {}, r"config\['head_dim'\] is 0 \(rope_type 'default'\); expected an "
                                          r"int >= 1"),
    ("head_dim float", _with(head_dim=128.0), {}, r"config\['head_dim'\] is 128.0"),
    ("heads > hidden", {"rope_theta": 1e4, "hidden_size": 8, "num_attention_heads": 16}, {},
     r"hidden_size=8 // num_attention_heads=16 is 0"),
    ("partial 0", _with(partial_rotary_factor=0.0), {},
     r"config\['partial_rotary_factor'\] is 0.0 \(rope_type 'default'\); expected a number in \(0, 1\]"),
    ("partial 1.5", _with(partial_rotary_factor=1.5), {}, r"is 1.5 .*expected a number in \(0, 1\]"),
    ("rotary dim 0", _with(head_dim=2, partial_rotary_factor=0.4), {},
     r"partial_rotary_factor=0.4 with head_dim=2 gives rotary dim int\(2 \* 0.4\) = 0"),
    ("odd full head", _with(head_dim=7), {}, r"rotary dim 7 \(head_dim=7, partial_rotary_factor=1.0\) is odd "
                                             r"and rotates the whole head"),
    ("linear no factor", _with({"rope_type": "linear"}), {},
     r"config\['rope_scaling'\] has no 'factor', which rope_type 'linear' needs; expected the scaling factor"),
    ("linear factor None", _with({"rope_type": "linear", "factor": None}), {}, r"has no 'factor'"),
    ("linear factor 0", _with({"rope_type": "linear", "factor": 0}), {},
     r"config\['rope_scaling'\]\['factor'\] is 0 \(rope_type 'linear'\); expected the scaling factor, a "
     r"number > 0"),
    ("dynamic factor -2", _with({"rope_type": "dynamic", "factor": -2.0}), {}, r"\['factor'\] is -2.0"),
    ("factor bool", _with({"rope_type": "linear", "factor": True}), {}, r"\['factor'\] is True"),
    ("factor string", _with({"rope_type": "linear", "factor": "4"}), {}, r"\['factor'\] is '4'"),
    ("dynamic no max", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 1e4,
                        "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, {},
     r"config has no 'max_position_embeddings', which dynamic NTK scaling needs \(rope_type 'dynamic'\)"),
    ("dynamic R 2", _with({"rope_type": "dynamic", "factor": 2.0}, head_dim=2), {},
     r"dynamic NTK scaling needs a rotary dim > 2"),
    ("yarn no factor", _with({"rope_type": "yarn", "original_max_position_embeddings": 4096}), {},
     r"config\['rope_scaling'\] has no 'factor', which rope_type 'yarn' needs"),
    ("yarn betas", _with({"rope_type": "yarn", "factor": 4.0, "beta_fast": 1, "beta_slow": 32}), {},
     r"beta_fast=1 < beta_slow=32 \(rope_type 'yarn'\); expected beta_fast >= beta_slow"),
    ("yarn truncate", _with({"rope_type": "yarn", "factor": 4.0, "truncate": "no"}), {},
     r"\['truncate'\] is 'no' \(rope_type 'yarn'\); expected True or False"),
    ("yarn attention 0", _with({"rope_type": "yarn", "factor": 4.0, "attention_factor": 0.0}), {},
     r"\['attention_factor'\] is 0.0 \(rope_type 'yarn'\); expected a number > 0"),
    ("yarn mscale string", _with({"rope_type": "yarn", "factor": 4.0, "mscale": "1"}), {}, r"\['mscale'\] is '1'"),
    ("yarn original 0", _with({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}), {},
     r"config\['rope_scaling'\]\['original_max_position_embeddings'\] is 0 \(rope_type 'yarn'\); expected "
     r"an int >= 1"),
    ("top original float", _with({"rope_type": "yarn", "factor": 4.0}, original_max_position_embeddings=4096.0),
     {}, r"config\['original_max_position_embeddings'\] is 4096.0"),
    ("longrope no short", _phi(short_factor=None), {},
     r"config\['rope_scaling'\] has no 'short_factor', which rope_type 'longrope' needs; expected a list of "
     r"48 numbers > 0 \(one per rotated pair, rotary dim 96 // 2\)"),
    ("longrope short length", _phi(short_factor=[1.0] * 64), {},
     r"config\['rope_scaling'\]\['short_factor'\] has 64 entries \(rope_type 'longrope'\); expected 48"),
    ("longrope long length", _phi(long_factor=[1.0] * 47), {}, r"\['long_factor'\] has 47 entries"),
    ("longrope entry", _phi(long_factor=[1.0] * 47 + [0.0]), {},
     r"config\['rope_scaling'\]\['long_factor'\]\[47\] is 0.0 \(rope_type 'longrope'\); expected a number > 0"),
    ("longrope string", _phi(long_factor="1.0"), {}, r"\['long_factor'\] is '1.0' .*expected a list of 48"),
    ("longrope attention", _phi(attention_factor=-1.0), {}, r"\['attention_factor'\] is -1.0"),
    ("llama3 no low", _with({"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}), {},
     r"config\['rope_scaling'\] has no 'low_freq_factor', which rope_type 'llama3' needs"),
    ("llama3 high <= low", _with({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                  "high_freq_factor": 4.0}), {},
     r"high_freq_factor=4.0 <= low_freq_factor=4.0 \(rope_type 'llama3'\); expected high_freq_factor > "
     r"low_freq_factor"),
    ("seq_len 0", LLAMA, {"seq_len": 0}, r"seq_len=0; expected None or an int >= 1"),
    ("seq_len float", LLAMA, {"seq_len": 5.0}, r"seq_len=5.0; expected None or an int >= 1"),
    ("seq_len bool", LLAMA, {"seq_len": True}, r"seq_len=True"),
    ("nested without layer_type", CASES["gemma3_4b_linear"]["transformers"]["5"]["config"], {},
     r"config\['rope_parameters'\] gives RoPE parameters per layer type \('full_attention', "
     r"'sliding_attention'\); pass layer_type="),
    ("nested unknown layer_type", CASES["gemma3_4b_linear"]["transformers"]["5"]["config"],
     {"layer_type": "chunked_attention"},
     r"layer_type='chunked_attention' is not in config\['rope_parameters'\] \(it has 'full_attention', "
     r"'sliding_attention'\)"),
    ("nested None entry", dict(LLAMA, rope_parameters={"full_attention": {"rope_theta": 1e4}, "nope": None}),
     {"layer_type": "nope"}, r"config\['rope_parameters'\]\['nope'\] is None: layers of type 'nope' use no RoPE"),
    ("flat unknown layer_type", dict(LLAMA, layer_types=["full_attention", "sliding_attention"]),
     {"layer_type": "chunked"},
     r"layer_type='chunked' is not among config\['layer_types'\] \('full_attention', 'sliding_attention'\)"),
    ("layer_type int", LLAMA, {"layer_type": 3}, r"layer_type=3; expected None or a layer type name"),
    ("gemma3 without local base",
     {k: v for k, v in CASES["gemma3_4b_linear"]["transformers"]["4"]["config"].items()
      if k not in ("rope_local_base_freq", "layer_types")}, {"layer_type": "sliding_attention"},
     r"this 'gemma3_text' config gives one set of RoPE parameters \(config\['rope_scaling'\]\) and no "
     r"'rope_local_base_freq', the base of its sliding layers"),
    ("nested entry error names the entry",
     {"head_dim": 256, "layer_types": ["full_attention"],
      "rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 0}}},
     {"layer_type": "full_attention"},
     r"config\['rope_parameters'\]\['full_attention'\]\['factor'\] is 0 \(rope_type 'linear'\)"),
    ("both forms differ", dict(LLAMA, rope_scaling={"rope_type": "linear", "factor": 2.0},
                               rope_parameters={"rope_type": "linear", "factor": 4.0}), {},
     r"config has both 'rope_parameters' \(transformers 5.x\) and 'rope_scaling' \(4.x\), and they differ"),
    ("rope_scaling not a dict", dict(LLAMA, rope_scaling="linear"), {},
     r"config\['rope_scaling'\] is 'linear'; expected a dict or None"),
    ("yarn factor None no max", {"hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 1e4,
                                 "original_max_position_embeddings": 4096,
                                 "rope_scaling": {"rope_type": "yarn", "factor": None}}, {},
     r"config has no 'max_position_embeddings', which yarn with factor None needs"),
]


@pytest.mark.parametrize("config,kwargs,message", [pytest.param(c, k, m, id=i) for i, c, k, m in ERRORS])
def test_error(config, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        rope_parameters(config, **kwargs)
    assert str(info.value).startswith("rope_parameters: ")


def test_config_not_a_mapping():
    with pytest.raises(TypeError, match=r"rope_parameters: config must be a dict \(a transformers config's "
                                        r"\.to_dict\(\)\), got list"):
        rope_parameters([("rope_theta", 1e4)])


def test_error_paths_leave_nothing_unchecked():
    """Every documented validation above raises; a few configs one step from an error are accepted."""
    assert rope_parameters(_with({"rope_type": "linear", "factor": 0.5})).inv_freq[0] == 2.0  # (0,1) allowed
    assert rope_parameters(_phi()).rope_type == "longrope"
    assert rope_parameters(_with(head_dim=8)).rotary_dim == 8


# -- (d) the result object ----------------------------------------------------------------------------

def test_result_is_frozen_and_inv_freq_read_only_float32():
    p = rope_parameters(CASES["phi4_mini_longrope_partial"]["raw"])
    assert isinstance(p, RopeParameters)
    assert p.inv_freq.dtype == np.float32 and p.inv_freq.ndim == 1
    assert p.rotary_dim == 2 * len(p.inv_freq) <= p.head_dim and p.rotary_dim % 2 == 0
    assert isinstance(p.attention_scaling, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.attention_scaling = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.inv_freq = np.zeros(48, np.float32)
    with pytest.raises(ValueError, match="read-only"):
        p.inv_freq[0] = 0.0
    with pytest.raises(ValueError):
        p.inv_freq.setflags(write=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rotary_dim_fits_the_head_for_every_golden_config(name):
    case = CASES[name]
    for layer_type in case["layer_types"]:
        p = rope_parameters(case["raw"], layer_type=layer_type)
        assert p.rotary_dim == 2 * len(p.inv_freq) <= p.head_dim
        assert p.inv_freq.dtype == np.float32 and not p.inv_freq.flags.writeable
        assert np.all(p.inv_freq > 0) and np.all(np.diff(p.inv_freq) <= 0)


def test_constructor_copies_and_freezes_the_array():
    source = np.array([1.0, 0.5], dtype=np.float64)
    p = RopeParameters(rope_type="default", inv_freq=source, attention_scaling=1, rotary_dim=4, head_dim=4,
                       rope_theta=4.0)
    source[0] = 7.0
    assert p.inv_freq.tolist() == [1.0, 0.5] and p.inv_freq.dtype == np.float32
    assert not p.inv_freq.flags.writeable and p.attention_scaling == 1.0
    with pytest.raises(ValueError, match=r"rotary_dim=6 is not 2 \* len\(inv_freq\) = 4"):
        RopeParameters(rope_type="default", inv_freq=source, attention_scaling=1.0, rotary_dim=6, head_dim=8,
                       rope_theta=4.0)
    with pytest.raises(ValueError, match=r"inv_freq must be 1-D, got shape \(1, 2\)"):
        RopeParameters(rope_type="default", inv_freq=source[None], attention_scaling=1.0, rotary_dim=4,
                       head_dim=4, rope_theta=4.0)


def test_equality_hash_and_repr():
    a = rope_parameters(CASES["llama31_8b_llama3"]["raw"])
    b = rope_parameters(copy.deepcopy(CASES["llama31_8b_llama3"]["raw"]))
    c = rope_parameters(CASES["llama2_7b_default"]["raw"])
    assert a == b and hash(a) == hash(b) and a != c and len({a, b, c}) == 2
    assert a != "llama3"
    # Equal across seq_len wherever the values are (a valid "upload again?" test).
    long = rope_parameters(CASES["phi3_mini_128k_longrope"]["raw"], seq_len=5000)
    assert long == rope_parameters(CASES["phi3_mini_128k_longrope"]["raw"], seq_len=131072)
    assert long != rope_parameters(CASES["phi3_mini_128k_longrope"]["raw"], seq_len=4096)
    assert repr(a) == ("RopeParameters(rope_type='llama3', rotary_dim=128, head_dim=128, rope_theta=500000.0, "
                       "attention_scaling=1.0, seq_len_dependent=False, inv_freq=[1 .. 3.068926e-07])")


def test_pickle_and_copy_keep_inv_freq_read_only():
    import pickle
    p = rope_parameters(CASES["qwen25_7b_yarn"]["raw"])
    for clone in (pickle.loads(pickle.dumps(p)), copy.deepcopy(p), copy.copy(p)):
        assert clone == p and not clone.inv_freq.flags.writeable
        with pytest.raises(ValueError):
            clone.inv_freq.setflags(write=True)


# -- imports ------------------------------------------------------------------------------------------

def test_rope_module_imports_only_numpy_and_the_standard_library():
    source = pathlib.Path(sys.modules[rope_parameters.__module__].__file__).read_text()
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "rope.py must not import from sapient_core"
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) == {"numpy"}
    # And at run time: after the package and NumPy, importing it adds standard-library modules only.
    code = ("import sys, numpy, sapient_core; before = set(sys.modules); import sapient_core.rope; "
            "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(new - set(sys.stdlib_module_names) - {'numpy', 'sapient_core'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
