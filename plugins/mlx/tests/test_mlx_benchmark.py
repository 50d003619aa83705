"""The benchmarks of the MLX plugin keep running (tiny shapes; no timing is asserted anywhere)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from mlx_helpers import ON_CPU_DEVICE

SCRIPT = pathlib.Path(__file__).resolve().parents[3] / "benchmarks" / "bench_backends.py"


def test_the_benchmark_prints_both_tables(tmp_path):
    assert SCRIPT.is_file(), f"{SCRIPT} is missing"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--small", "--steps", "2", "--min-time", "0", "--min-repeats", "1",
         "--sizes", "S=2:hidden=64:heads=4:kv_heads=2:head_dim=16:mlp=128:vocab=256:kv_len=4"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "mlx/cpu" in out and "gqa_attention" in out and "all_logits_from_hidden" in out
    decode = out[out.index("Decode step"):]
    mlx_row = next(line for line in decode.splitlines() if line.startswith("mlx ("))
    # one host copy per step (the logits), and no weight uploaded after the first step
    assert re.search(r" 1 out, \d+ in +0 ", mlx_row), mlx_row
    assert "% of bandwidth" in decode and "read bandwidth" in decode


def _run_script(name, args, tmp_path):
    script = SCRIPT.parent / name
    assert script.is_file(), f"{script} is missing"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_the_gpu_check_runs_and_prints_every_section(tmp_path):
    # On this machine there is no GPU: without --allow-cpu it says so (exit 2); with it, a quick run.
    if ON_CPU_DEVICE:
        proc = _run_script("mlx_gpu_check.py", ["--quick", "--skip-suite"], tmp_path)
        assert proc.returncode == 2 and "No Apple or NVIDIA GPU" in proc.stdout, proc.stdout + proc.stderr
    proc = _run_script("mlx_gpu_check.py", ["--allow-cpu", "--quick", "--skip-suite", "--json", "out.json"],
                       tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "2. Conformance kit: OK" in out and "3. Errors against the float64 oracle" in out
    assert "softcap 50" in out and "4. Decode step" in out and out.rstrip().splitlines()[-1].startswith("PASS")
    import json
    data = json.loads((tmp_path / "out.json").read_text())
    assert all(row["ok"] for row in data["ops"]) and len(data["ops"]) > 20
    device = next(r for r in data["decode"] if r["engine"] == "device")
    assert device["host_copies_out"] == 1 and device["weight_uploads"] == 0 and device["fallbacks"] == 0


def test_the_issue10_figures_benchmark_runs(tmp_path):
    proc = _run_script("mlx_issue10.py", ["--quick"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for heading in ("1. Decode step", "2. Pending steps", "3. Weight cache", "4. RoPE"):
        assert heading in proc.stdout
    hits_row = next(line for line in proc.stdout.splitlines() if line.startswith("95% of the weights"))
    assert hits_row.split()[4] != "0.0", hits_row          # the cache hits when the model does not fit
