"""Testing helpers for sapient_core backends: float64 oracles and a tiny Llama-style model.

The conformance kit (``run_conformance`` and friends) also lives in this package.
"""
