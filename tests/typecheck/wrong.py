"""Engine code with mistakes a type checker must catch (tests/test_typing.py expects these errors)."""

from __future__ import annotations

import numpy as np

import sapient_core

backend = sapient_core.get_backend("cpu")
x = np.zeros((1, 1, 8), np.float32)
backend.rms_norm(x, x)                    # missing eps
backend.rms_nrom(x, x, 1e-6)              # misspelt op
backend.gqa_attention(x, x, x, "2", True)  # n_kv_heads must be an int
