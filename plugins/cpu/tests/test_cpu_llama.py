"""A small Llama-style decoder composed from the ops (sapient_core.testing.models): prefill, then
KV-cache decode steps, on the CPU backend against the float64 OracleBackend; and decode-step logits
against the prefill logits of the whole sequence (the KV cache, the RoPE offsets and the causal offset
must agree with recomputing everything)."""

from __future__ import annotations

import numpy as np
import pytest

from sapient_core.testing.models import Decoder as Llama
from sapient_core.testing.models import DecoderConfig as LlamaConfig
from sapient_core.testing.models import random_weights
from sapient_core.testing.oracle import OracleBackend

CONFIG = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                     num_hidden_layers=2, vocab_size=503, rope_theta=10000.0)
# Logit error budget: each layer adds a few float32 roundings relative to the activations' scale
# (dots of length 256..512 with sqrt(K) U growth ~ 1e-6); two layers, logits of order 3: 2e-5 of the
# largest logit is ~ 20x what is observed, and ~ 1000x smaller than a wrong mask, RoPE offset or
# repeat_kv order produces (those change logits by O(0.1)).
REL = 2e-5


def _close(got, want, what):
    scale = np.abs(want).max()
    err = np.abs(np.asarray(got, np.float64) - want).max()
    assert err <= REL * scale, f"{what}: max error {err:.3e} > {REL} * {scale:.3e}"


@pytest.fixture
def models(cpu_backend, path):                  # on every code path of the plugin (conftest.PATHS)
    w = random_weights(CONFIG, seed=3)
    return Llama(cpu_backend, CONFIG, w), Llama(OracleBackend(), CONFIG, w)


def test_prefill_then_decode_matches_the_oracle(models):
    model, ref = models
    tokens = np.random.default_rng(5).integers(0, CONFIG.vocab_size, size=(2, 11))
    logits, cache = model(tokens[:, :7])
    want, ref_cache = ref(tokens[:, :7])
    assert logits.shape == (2, CONFIG.vocab_size) and logits.dtype == np.float32
    _close(logits, want, "prefill")
    for step in range(7, 11):
        logits, cache = model(tokens[:, step:step + 1], cache)
        want, ref_cache = ref(tokens[:, step:step + 1], ref_cache)
        _close(logits, want, f"decode step {step}")
    layer = cache.cache[0]
    assert layer.offset == 11 and layer.keys.shape == (2, CONFIG.num_key_value_heads, 256, CONFIG.head_size)


def test_decode_logits_equal_prefill_logits_of_the_full_sequence(models):
    model, _ = models
    tokens = np.random.default_rng(6).integers(0, CONFIG.vocab_size, size=(1, 9))
    logits, cache = model(tokens[:, :5])
    for n in range(5, 9):
        logits, cache = model(tokens[:, n:n + 1], cache)
        full, _ = model(tokens[:, :n + 1])
        _close(logits, full, f"decode vs prefill at length {n + 1}")
    # a chunked prefill (3 tokens at once onto a cache) is the Sq < Sk causal case
    logits3, _ = model(tokens[:, 6:9], model(tokens[:, :6])[1])
    _close(logits3, model(tokens)[0], "3-token chunk vs prefill")
