"""The MLX plugin on a GPU, in one command (under five minutes on an Apple or NVIDIA GPU).

    python benchmarks/mlx_gpu_check.py              # on a Mac with Apple Silicon, or Linux with mlx[cuda]
    python benchmarks/mlx_gpu_check.py --json out.json

It checks that MLX's GPU is the device the plugin runs on, then:

1. runs the MLX plugin's test suite (``plugins/mlx/tests``) there: every test runs on the device the
   plugin picked, so on a GPU the fused attention kernels (head dims 64 and 128, 1024+ keys), Metal's
   or CUDA's fast math and the cross-thread stream all meet their tests;
2. runs the conformance kit (``sapient-backends check mlx``);
3. prints each op's error against the float64 oracle at GPU-relevant shapes (NMSE and max abs error,
   and the kit's tolerance), including the contract v2 additions (sliding window, softcap, padding
   masks, RoPE with given frequencies and [B, S] positions, embedding);
4. times a decode step of a Llama-style model with both engines (the portable test engine, and the
   device engine of ``benchmarks/mlx_engine.py``: weights handed over, in-place KV cache, ``eval``
   every step), with the host copies per step.

Exit status 0 when the suite and the kit pass and every op is within its tolerance; 1 otherwise; 2 when
no GPU is found (``--allow-cpu`` runs everything on MLX's CPU device instead: what CI does with
``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

from sapient_core.reporting import format_table

ROOT = pathlib.Path(__file__).resolve().parents[1]
TESTS = ROOT / "plugins" / "mlx" / "tests"
sys.path.insert(0, str(ROOT / "benchmarks"))


def device_report():
    import mlx.core as mx
    from sapient_backend_mlx import device
    name = device.device_name()
    info = {k: v for k, v in mx.device_info(device.mx_device()).items()}
    return name, {"mlx": mx.__version__, "device": name, "device_info": info}


def run_suite(timeout):
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(TESTS), "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
    failed = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return {"ok": proc.returncode == 0, "summary": tail, "failed": failed, "seconds": time.perf_counter() - t0}


def run_kit():
    from sapient_core.testing.conformance import run_conformance
    report = run_conformance("mlx")
    bad = [(r.op, r.case, r.status, r.reason) for r in report.results if r.status not in ("pass",)]
    worst = {}
    for r in report.results:
        if r.nmse is not None:
            w = worst.setdefault(r.op, [0.0, 0.0])
            w[0] = max(w[0], r.nmse)
            w[1] = max(w[1], r.max_abs_err or 0.0)
    return {"ok": not bad, "cases": len(report.results), "not_passed": bad, "worst": worst}


def op_errors(quick):
    """(op, case, NMSE, max abs err, tolerance, ok) at shapes a GPU run should see."""
    import mlx.core as mx
    from sapient_backend_mlx import kernels as k
    from sapient_core.testing import max_abs_err, nmse, oracle
    from sapient_core.testing.tolerances import TOLERANCES
    rng = np.random.default_rng(0)

    def f(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)
    long_kv = 256 if quick else 2048
    hid = 64 if quick else 4096
    cases = []
    x, w = f(1, 8, hid), f(hid // 2, hid) / np.sqrt(hid)
    cases.append(("linear_3d", f"in={hid}", lambda: k.linear_3d(x, w), oracle.linear_3d(x, w)))
    g = f(hid)
    cases.append(("rms_norm", f"D={hid}", lambda: k.rms_norm(x, g, 1e-6), oracle.rms_norm(x, g, 1e-6)))
    cases.append(("layer_norm", "mean 1e3", lambda: k.layer_norm(x + 1e3, g, g, 1e-5),
                  oracle.layer_norm(x + np.float32(1e3), g, g, 1e-5)))
    act = np.linspace(-20, 20, 4001, dtype=np.float32)
    cases.append(("silu", "[-20, 20]", lambda: k.silu(act), oracle.silu(act)))
    cases.append(("gelu", "none", lambda: k.gelu(act, "none"), oracle.gelu(act, "none")))
    cases.append(("gelu", "tanh", lambda: k.gelu(act, "tanh"), oracle.gelu(act, "tanh")))
    for d in (64, 128):
        xr = f(1, 8, 16, d)
        for p0 in (0, 60000, 500000):
            pos = np.arange(p0, p0 + 16)
            cases.append(("apply_rope_positions", f"D={d}, positions {p0}+",
                          lambda xr=xr, pos=pos: k.apply_rope_positions(xr, pos, 10000.0),
                          oracle.apply_rope_positions(xr, pos, 10000.0)))
    xr = f(2, 4, 6, 128)
    bpos = np.array([[0, 1, 2, 3, 4, 5], [1, 1, 1, 0, 1, 2]])
    inv = (500000.0 ** (-np.arange(0, 96, 2) / 96)).astype(np.float32)
    cases.append(("apply_rope", "R=96 of 128, [B,S] positions, scaling 1.2",
                  lambda: k.apply_rope(xr, bpos, inv, 1.2), oracle.apply_rope(xr, bpos, inv, 1.2)))
    for d in (64, 128):
        for sq, sk in ((1, long_kv), (4, long_kv + 3), (256 if not quick else 32, 256 if not quick else 32)):
            q, kk, v = f(1, 8, sq, d), f(1, 2, sk, d), f(1, 2, sk, d)
            cases.append(("gqa_attention", f"d={d}, Sq={sq}, Sk={sk}, causal",
                          lambda q=q, kk=kk, v=v: k.gqa_attention(q, kk, v, 2, True, None, None, None, None),
                          oracle.gqa_attention(q, kk, v, 2, True)))
    q, kk, v = f(2, 8, 4, 128), f(2, 2, long_kv, 128), f(2, 2, long_kv, 128)
    mask = np.ones((2, long_kv), bool)
    mask[1, :long_kv // 3] = False
    cases.append(("gqa_attention", f"window 128, left padding, Sk={long_kv}",
                  lambda: k.gqa_attention(q, kk, v, 2, True, None, 128, None, mask),
                  oracle.gqa_attention(q, kk, v, 2, True, sliding_window=128, kv_mask=mask)))
    qs, ks = f(1, 8, 16, 128, scale=6), f(1, 2, 16, 128, scale=6)
    vs = f(1, 2, 16, 128)
    cases.append(("gqa_attention", "softcap 50, scale 1/16, scores ~1e3",
                  lambda: k.gqa_attention(qs, ks, vs, 2, True, 1 / 16, None, 50.0, None),
                  oracle.gqa_attention(qs, ks, vs, 2, True, 1 / 16, None, 50.0)))
    hs, lm = f(2, 3, 256, scale=3), f(1000, 256) / 4
    cases.append(("logits_from_hidden", "softcap 30", lambda: k.logits_from_hidden(hs, lm, 30.0),
                  oracle.logits_from_hidden(hs, lm, 30.0)))
    cases.append(("all_logits_from_hidden", "no softcap", lambda: k.all_logits_from_hidden(hs, lm, None),
                  oracle.all_logits_from_hidden(hs, lm)))
    table16 = f(1000, 64).astype(np.float16)
    ids = rng.integers(0, 1000, (2, 7))
    cases.append(("embedding", "float16 table", lambda: k.embedding(ids, table16), oracle.embedding(ids, table16)))
    rows = []
    for op, case, fn, want in cases:
        got = fn()
        got = k.to_host(got) if isinstance(got, mx.array) else got
        e_nmse, err = nmse(got, want), max_abs_err(got, want)       # the kit's measures
        scale = max(1.0, float(np.abs(want).max(initial=0)))
        tol = TOLERANCES[op]
        ok = bool(np.isfinite(got).all()) and e_nmse <= tol.nmse and err <= tol.max_err * scale
        rows.append((op, case, e_nmse, err, tol.max_err * scale, ok))
    return rows


def decode_steps(quick, steps):
    import sapient_backend_mlx
    import sapient_core
    from mlx_engine import DeviceLlama
    from sapient_backend_mlx import kernels
    from sapient_core.testing.models import Decoder as Llama, DecoderConfig as LlamaConfig, random_weights
    if quick:
        config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                             num_hidden_layers=2, vocab_size=101)
        prompt_len = 8
    else:
        config = LlamaConfig(hidden_size=2048, num_attention_heads=16, num_key_value_heads=4,
                             intermediate_size=5632, num_hidden_layers=8, vocab_size=32000)
        prompt_len = 512
    be = sapient_core.get_backend("mlx", strict=True)
    weights = random_weights(config, seed=0)
    prompt = (np.arange(prompt_len)[None] * 7) % config.vocab_size
    results = []
    for name in ("portable", "device"):
        sapient_backend_mlx.clear_weight_cache()      # the device engine holds its own (handed-over) copy
        kernels._ROPE_TABLES.clear()                   # each engine uploads its own RoPE tables
        if name == "portable":
            model = Llama(be, config, weights)
            state = {"cache": model(prompt)[1]}

            def step():
                state["cache"] = model(np.array([[3]]), state["cache"])[1]
        else:
            dev = DeviceLlama(be, config, weights, max_len=prompt_len + steps + 4)
            dev(prompt)

            def step():
                dev(np.array([[3]]))
        step()
        s0 = be.stats().plugin
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        s1 = be.stats().plugin
        tr = {key: (s1["transfers"][key] - s0["transfers"][key]) / steps
              for key in ("device_to_host", "activation_uploads")}
        results.append({"engine": name, "ms_per_token": 1e3 * statistics.median(times),
                        "min_ms": 1e3 * min(times), "host_copies_out": tr["device_to_host"],
                        "host_uploads_in": tr["activation_uploads"],
                        "weight_uploads": s1["weight_cache"]["uploads"] - s0["weight_cache"]["uploads"],
                        "evaluations": (s1["evaluation"]["evaluations"] - s0["evaluation"]["evaluations"]) / steps,
                        "fallbacks": sum(o.fallbacks + o.routed for o in be.stats().ops.values())})
        del step
    n_params = sum(v.size for v in weights.values())
    return config, prompt_len, n_params, results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="The MLX plugin on a GPU: suite, kit, op errors, decode step.")
    ap.add_argument("--allow-cpu", action="store_true", help="run on MLX's CPU device when there is no GPU")
    ap.add_argument("--quick", action="store_true", help="small shapes (seconds; for CI)")
    ap.add_argument("--skip-suite", action="store_true", help="do not run plugins/mlx/tests")
    ap.add_argument("--steps", type=int, default=None, help="decode steps to time (default 30, quick 3)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    name, info = device_report()
    print(f"MLX {info['mlx']} on {name}: {info['device_info']}")
    if name == "cpu" and not args.allow_cpu:
        print("No Apple or NVIDIA GPU: the plugin runs on MLX's CPU device here. Run this on a Mac with "
              "Apple Silicon, or on Linux with pip install 'sapient-backend-mlx[cuda]' and an NVIDIA GPU "
              "(or pass --allow-cpu).")
        return 2
    out: dict = {"device": info}
    ok = True
    if not args.skip_suite:
        suite = run_suite(timeout=240)
        out["suite"] = suite
        ok &= suite["ok"]
        print(f"\n1. MLX suite (plugins/mlx/tests) on {name}: {suite['summary']} ({suite['seconds']:.0f} s)")
        for line in suite["failed"][:20]:
            print("   " + line)
    kit = run_kit()
    out["kit"] = {"ok": kit["ok"], "cases": kit["cases"], "not_passed": kit["not_passed"]}
    ok &= kit["ok"]
    print(f"\n2. Conformance kit: {'OK' if kit['ok'] else 'FAILED'}, {kit['cases']} cases"
          + "".join(f"\n   {op} {case}: {status} {reason}" for op, case, status, reason in kit["not_passed"]))
    rows = op_errors(args.quick)
    out["ops"] = [dict(zip(("op", "case", "nmse", "max_abs_err", "tolerance", "ok"), r)) for r in rows]
    ok &= all(r[-1] for r in rows)
    print(f"\n3. Errors against the float64 oracle on {name} (tolerance: the kit's max abs err, scaled)")
    print(format_table(header=["op", "case", "NMSE", "max abs err", "tolerance", "ok"],
                       rows=[[op, case, f"{nmse:.1e}", f"{err:.1e}", f"{tol:.1e}", "ok" if good else "FAIL"]
                             for op, case, nmse, err, tol, good in rows]))
    steps = args.steps or (3 if args.quick else 30)
    config, prompt_len, n_params, dec = decode_steps(args.quick, steps)
    out["decode"] = dec
    ok &= all(r["fallbacks"] == 0 for r in dec)
    print(f"\n4. Decode step: {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
          f"{n_params / 1e6:.0f}M float32 parameters, prompt {prompt_len}, {steps} steps")
    print(format_table(header=["engine", "ms/token (median)", "min", "host copies/step", "weight uploads",
                               "evaluations/step", "fallbacks"],
                       rows=[[r["engine"], f"{r['ms_per_token']:.2f}", f"{r['min_ms']:.2f}",
                              f"{r['host_copies_out']:g} out, {r['host_uploads_in']:g} in", str(r["weight_uploads"]),
                              f"{r['evaluations']:g}", str(r["fallbacks"])] for r in dec]))
    print("(portable: sapient_core.testing.models, NumPy weights through the weight cache, sapient_core.KVCache "
          "appended in place through the backend's layout hooks; device: benchmarks/mlx_engine.py)")
    print(f"\n{'PASS' if ok else 'FAIL'} in {time.perf_counter() - t_start:.0f} s")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
