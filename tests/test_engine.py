"""The worked engine (sapient_core.testing.models): today's architectures composed from the ops, on every
installed backend, each against the same composition in float64 (OracleBackend).

- Llama 3 with its rope scaling (llama3 frequencies from rope_parameters), prefill + KV-cache decode;
- Gemma 2: (1 + w) norms before and after attention and MLP, GELU-tanh, query_pre_attn_scalar scale,
  attention and final-logit softcaps, sliding and full layers alternating (a window shorter than the
  sequence, so the window matters);
- a left-padded batch of prompts of different lengths with KV-cache decode steps after it: every row
  gives what its prompt gives alone, unpadded;
- a backend whose arrays have none of NumPy's methods (only .shape and .dtype) runs the same engine.

Tolerance: logits within 2e-5 of the largest |logit| of the float64 composition.  Every op adds float32
roundings of ~1e-7 relative; measured, the CPU reference lands ~1e-6 and MLX ~2e-6 from float64 after
two to four layers, so 2e-5 is a >10x margin, while a wrong window, softcap, scale or RoPE frequency
changes logits by 1e-2 or more (test_gemma2_softcaps_windows_and_scale_are_really_applied
and test_llama3_rope_scaling_is_really_applied show it).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import sapient_core
from sapient_core.registry import Registry
from sapient_core.testing.models import Decoder, DecoderConfig, left_padded, random_weights
from sapient_core.testing.oracle import OracleBackend

from helpers.fakeplugins import Opaque, opaque_plugin

REL = 2e-5

LLAMA3 = DecoderConfig(hidden_size=128, num_attention_heads=8, num_key_value_heads=2, intermediate_size=256,
                       num_hidden_layers=2, vocab_size=211, rms_norm_eps=1e-5, rope_theta=500000.0,
                       max_position_embeddings=131072,
                       rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
# Gemma 2 itself caps at 50 (attention) and 30 (logits); random weights give scores and logits of order
# one, where such caps change nothing, so the caps here are small enough to bend them (the kit's softcap
# cases test the large-score regime).
GEMMA2 = DecoderConfig(family="gemma2", hidden_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       intermediate_size=192, num_hidden_layers=4, vocab_size=199, sliding_window=4,
                       query_pre_attn_scalar=24.0, attn_logit_softcapping=1.5, final_logit_softcapping=3.0,
                       tie_word_embeddings=True)


def installed():
    return [i.name for i in sapient_core.list_backends() if i.status == "available"]


@pytest.fixture(params=installed())
def backend(request):
    return Registry().get_backend(request.param, strict=True)      # strict: nothing may quietly fall back


def close(got, want, what):
    want = np.asarray(want, np.float64)
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= REL * np.abs(want).max(), f"{what}: max error {err:.3e} > {REL} x {np.abs(want).max():.3e}"


def generate(model, tokens, steps, mask=None):
    """Prefill then ``steps`` greedy decode steps; every step's logits."""
    logits, state = model(tokens, attention_mask=mask)
    out = [logits]
    for _ in range(steps):
        logits, state = model(np.argmax(logits, axis=-1)[:, None], state)
        out.append(logits)
    return out, state


def follow(model, tokens, nexts, mask=None):
    """Prefill then decode the given next tokens (the same inputs on every backend, so each step is compared
    on identical input)."""
    logits, state = model(tokens, attention_mask=mask)
    out = [logits]
    for t in nexts:
        logits, state = model(np.asarray(t)[:, None], state)
        out.append(logits)
    return out, state


@pytest.mark.parametrize("config", [LLAMA3, GEMMA2], ids=["llama3-rope-scaling", "gemma2-softcaps-windows"])
def test_prefill_and_decode_match_the_float64_composition(backend, config):
    w = random_weights(config, seed=11)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, config.vocab_size, size=(2, 9))
    nexts = rng.integers(0, config.vocab_size, size=(4, 2))
    got, state = follow(Decoder(backend, config, w), tokens, nexts)
    want, _ = follow(Decoder(OracleBackend(), config, w), tokens, nexts)
    for step, (g, e) in enumerate(zip(got, want)):
        assert type(g) is np.ndarray and g.dtype == np.float32 and g.shape == (2, config.vocab_size)
        close(g, e, f"{backend.name} {config.family} step {step}")
    assert state.offset == 9 + 4 and state.cache.offset == 9 + 4
    ops = backend.stats().ops
    assert all(s.fallbacks == 0 and s.routed == 0 for s in ops.values()), {k: v for k, v in ops.items() if v.routed}
    used = {"embedding", "apply_rope", "gqa_attention", "logits_from_hidden"}
    assert all(ops[op].calls > 0 and ops[op].implemented_by == backend.name for op in used)


def test_gemma2_softcaps_windows_and_scale_are_really_applied():
    """The float64 composition is sensitive to each Gemma 2 feature: dropping one moves the logits far beyond
    the tolerance (so the test above would catch a backend that ignores it)."""
    w = random_weights(GEMMA2, seed=11)
    tokens = np.random.default_rng(2).integers(0, GEMMA2.vocab_size, size=(1, 12))
    base = Decoder(OracleBackend(), GEMMA2, w)(tokens)[0]
    for change in ({"sliding_window": None}, {"attn_logit_softcapping": None}, {"final_logit_softcapping": None},
                   {"query_pre_attn_scalar": None}, {"layer_types": ("full_attention",) * 4}):
        other = Decoder(OracleBackend(), dataclasses.replace(GEMMA2, **change), w)(tokens)[0]
        assert np.abs(other - base).max() > 100 * REL * np.abs(base).max(), change


def test_llama3_rope_scaling_is_really_applied():
    w = random_weights(LLAMA3, seed=11)
    tokens = np.random.default_rng(3).integers(0, LLAMA3.vocab_size, size=(1, 12))
    base = Decoder(OracleBackend(), LLAMA3, w)(tokens)[0]
    plain = Decoder(OracleBackend(), dataclasses.replace(LLAMA3, rope_scaling=None), w)(tokens)[0]
    assert np.abs(plain - base).max() > 100 * REL * np.abs(base).max()


@pytest.mark.parametrize("config", [LLAMA3, GEMMA2], ids=["llama3", "gemma2"])
def test_a_left_padded_batch_then_decode_gives_each_prompt_what_it_gives_alone(backend, config):
    w = random_weights(config, seed=5)
    prompts = [[5, 17, 3, 99, 42, 7, 8], [11, 12, 13], [4], [60, 61, 62, 63, 64, 65]]
    tokens, mask = left_padded(prompts)
    nexts = np.array([[1, 2, 3, 4], [9, 8, 7, 6], [33, 44, 55, 66]])
    model = Decoder(backend, config, w)
    batch, state = follow(model, tokens, nexts, mask)
    want, _ = follow(Decoder(OracleBackend(), config, w), tokens, nexts, mask)
    for step, (g, e) in enumerate(zip(batch, want)):
        close(g, e, f"padded batch step {step}")
    for row, prompt in enumerate(prompts):
        alone, _ = follow(Decoder(backend, config, w), np.array([prompt]), nexts[:, row:row + 1])
        for step in range(len(alone)):
            close(batch[step][row], alone[step][0], f"row {row} step {step} vs alone")
    assert state.mask.shape == (4, tokens.shape[1] + 3) and state.mask[:, -3:].all()
    assert backend.stats().ops["apply_rope"].calls > 0
    assert all(s.routed == 0 and s.fallbacks == 0 for s in backend.stats().ops.values())


def test_chunked_prefill_equals_one_prefill(backend):
    w = random_weights(LLAMA3, seed=8)
    tokens = np.random.default_rng(4).integers(0, LLAMA3.vocab_size, size=(2, 10))
    model = Decoder(backend, LLAMA3, w, cache_step=4)          # the cache grows twice during the chunks
    whole = model(tokens)[0]
    logits, state = model(tokens[:, :3])
    logits, state = model(tokens[:, 3:7], state)
    logits, state = model(tokens[:, 7:], state)
    close(logits, whole, "3 chunks vs one prefill")
    assert state.cache[0].capacity == 12 and state.cache[0].reallocations == 2


def test_the_concatenating_cache_gives_the_same_logits(backend):
    w = random_weights(LLAMA3, seed=9)
    tokens = np.random.default_rng(5).integers(0, LLAMA3.vocab_size, size=(1, 6))
    a, _ = generate(Decoder(backend, LLAMA3, w), tokens, 3)
    b, _ = generate(Decoder(backend, LLAMA3, w, cache="concat"), tokens, 3)
    for x, y in zip(a, b):
        close(x, y, "in-place vs concatenated cache")


# --- a backend whose arrays have none of NumPy's methods ---------------------------------------------------

def test_the_engine_runs_on_a_backend_whose_arrays_have_no_numpy_methods():
    for name in ("reshape", "transpose", "copy", "astype", "__getitem__", "__array__", "sum"):
        assert not hasattr(Opaque(np.zeros(2)), name)
    reg = Registry(entry_points=lambda: [])
    reg.register(opaque_plugin(), "opaque")
    be = reg.get_backend("opaque", strict=True)
    cpu = reg.get_backend("cpu")
    for config in (LLAMA3, GEMMA2):
        w = random_weights(config, seed=12)
        tokens, mask = left_padded([[3, 4, 5, 6, 7], [8, 9]])
        got, state = generate(Decoder(be, config, w), tokens, 2, mask)
        want, _ = generate(Decoder(cpu, config, w), tokens, 2, mask)
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
        assert isinstance(state.cache[0].keys, Opaque)         # the cache lives in the backend's own type
    ops = be.stats().ops
    assert ops["gqa_attention"].implemented_by == "opaque" and ops["gqa_attention"].fallbacks == 0
