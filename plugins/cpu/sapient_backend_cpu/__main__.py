"""``python -m sapient_backend_cpu``: say which kernels run here, and compile the fused ones ahead.

The fused kernels are compiled by Numba on first use and cached on disk (beside the package, or in
Numba's user cache directory when the package directory is read-only), so only the first process
after an install or upgrade pays the compilation.  Run this once after installing (in a Docker image
build, a CI setup step ...) and no later process pays it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def warm_up():
    """Call every op once on tiny inputs on the serial and on the parallel path (attention with and
    without BLAS inside its kernels), so that every fused kernel is compiled (or loaded from the
    cache); then go back to the environment's settings (``configure(reset=True)``).  Returns
    {path: seconds}."""
    from . import kernels

    f = np.float32
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 8)).astype(f)
    w = np.ones(8, f)
    q = r.standard_normal((1, 4, 3, 8)).astype(f)
    k = r.standard_normal((1, 2, 5, 8)).astype(f)
    mask = np.ones((1, 5), bool)
    timings = {}
    try:
        for label, settings in (("serial", dict(threads=1)), ("parallel", dict(threads=2, parallel_min=0))):
            kernels.configure(fused=True, **settings)
            t0 = time.perf_counter()
            kernels.rms_norm(x, w, 1e-6)
            kernels.layer_norm(x, w, w, 1e-5)
            kernels.layer_norm(x, w, None, 1e-5)
            kernels.silu(x)
            kernels.gelu(x, "none")
            kernels.gelu(x, "tanh")
            kernels.add(x, x)
            kernels.add(x, w)
            kernels.mul(x, x)
            kernels.mul(x, w)
            kernels.apply_rope_positions(q, np.arange(3), 10000.0)
            kernels.apply_rope(q, np.arange(3)[None], np.ones(2, f), 1.0)
            # prefill and decode, plain and masked, on whole arrays and on a KV cache's view
            for blas in (True, False):
                kernels.configure(blas_in_kernels=blas)
                for keys, m in ((k, mask), (k[:, :, :4], mask[:, :4])):
                    for window, cap, kv_mask in ((None, None, None), (2, 5.0, m)):
                        kernels.gqa_attention(q, keys, keys, 2, True, None, window, cap, kv_mask)
                        kernels.gqa_attention(q[:, :, :1], keys, keys, 2, True, None, window, cap, kv_mask)
            timings[label] = time.perf_counter() - t0
    finally:
        kernels.configure(reset=True)
    return timings


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sapient_backend_cpu", description=__doc__.splitlines()[0])
    ap.add_argument("--compile", action="store_true", help="compile (or load) every fused kernel now")
    args = ap.parse_args(argv)
    from . import kernels

    state = kernels.info()
    if args.compile:
        if not state["fused"]:
            print(f"fused kernels off: {state['reason']}", file=sys.stderr)
            return 1
        seconds = warm_up()
        state = {**kernels.info(), "compile_seconds": seconds}
    print(json.dumps(state, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
