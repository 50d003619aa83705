"""The composed Llama-style model (prefill + KV-cache decode) on MLX, against the CPU backend and the
float64 oracle, and what a decode step moves between host and device.

Tolerance: 2e-5 on logits of magnitude up to ~4 after two layers.  Every op adds float32 roundings
of ~1e-7 relative; measured, the CPU reference lands 8e-7 and MLX 1.2e-6 from the oracle, so 2e-5 is
a >10x margin, while a wrong mask, RoPE offset or cache order gives errors of order 0.1-1.  On a GPU
(fast exp / rsqrt in the fused kernels) the bound is the kit's per-op 1e-4 relative to max(1, |logits|
~4) = 4e-4, still 250x below what a wrong mask or offset gives.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_helpers import ON_CPU_DEVICE
from sapient_core.testing.models import Decoder as Llama
from sapient_core.testing.models import DecoderConfig as LlamaConfig
from sapient_core.testing.models import random_weights
from sapient_core.testing.oracle import OracleBackend

CONFIG = LlamaConfig(hidden_size=64, num_attention_heads=8, num_key_value_heads=2, intermediate_size=96,
                     num_hidden_layers=2, vocab_size=101)
ATOL = 2e-5 if ON_CPU_DEVICE else 4e-4


@pytest.fixture(scope="module")
def weights():
    return random_weights(CONFIG, seed=7)


def generate(backend, weights, prompt, steps):
    model = Llama(backend, CONFIG, weights)
    logits, cache = model(prompt)
    out = [np.asarray(logits)]
    for _ in range(steps):
        tokens = np.argmax(out[-1], axis=-1)[:, None]
        logits, cache = model(tokens, cache)
        out.append(np.asarray(logits))
    return out, cache


def test_prefill_and_decode_match_the_cpu_backend_and_the_oracle(mlx, cpu, weights):
    prompt = np.array([[1, 5, 9, 3, 7, 2], [4, 4, 8, 0, 100, 6]])
    got, cache = generate(mlx, weights, prompt, steps=3)
    want, _ = generate(cpu, weights, prompt, steps=3)
    exact = generate(OracleBackend(), weights, prompt, steps=0)[0][0]
    np.testing.assert_allclose(got[0], exact, rtol=0, atol=ATOL)
    for step, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == np.float32 and g.shape == (2, CONFIG.vocab_size)
        np.testing.assert_allclose(g, w, rtol=0, atol=ATOL, err_msg=f"step {step}")
    layer = cache.cache[0]
    assert isinstance(layer.keys, mx.array)                   # the KV cache stays on the device
    assert layer.offset == 6 + 3 and layer.keys.shape == (2, CONFIG.num_key_value_heads, 256, CONFIG.head_size)
    ops = mlx.stats().ops
    assert all(s.fallbacks == 0 and s.routed == 0 for s in ops.values())
    assert ops["gqa_attention"].implemented_by == "mlx"


def test_decode_matches_the_oracle_step_by_step(mlx, weights):
    # Feed the same tokens to both so that each step is compared on identical input.
    model, ref = Llama(mlx, CONFIG, weights), Llama(OracleBackend(), CONFIG, weights)
    tokens = np.array([[3, 1, 4, 1, 5]])
    lg, cache = model(tokens)
    lr, rcache = ref(tokens)
    for t in [9, 2, 6, 5]:
        np.testing.assert_allclose(lg, lr, rtol=0, atol=ATOL)
        lg, cache = model(np.array([[t]]), cache)
        lr, rcache = ref(np.array([[t]]), rcache)
    np.testing.assert_allclose(lg, lr, rtol=0, atol=ATOL)


def test_a_decode_step_uploads_no_weight_and_copies_only_the_logits_back(mlx, weights):
    model = Llama(mlx, CONFIG, weights)
    logits, cache = model(np.array([[1, 2, 3]]))
    logits, cache = model(np.array([[4]]), cache)                 # first step: may upload
    before = mlx.stats().plugin
    for t in (5, 6, 7):
        logits, cache = model(np.array([[t]]), cache)
    after = mlx.stats().plugin
    wc0, wc1 = before["weight_cache"], after["weight_cache"]
    assert wc1["uploads"] == wc0["uploads"], "a decode step re-uploaded a weight"
    n_weights = CONFIG.num_hidden_layers * 9 + 3          # 9 per layer, final norm, lm_head, the embedding table
    assert wc1["hits"] - wc0["hits"] == 3 * n_weights
    # One device -> host copy per step: the logits, which the contract returns as NumPy.
    assert after["transfers"]["device_to_host"] - before["transfers"]["device_to_host"] == 3
