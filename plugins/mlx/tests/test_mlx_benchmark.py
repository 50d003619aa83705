"""benchmarks/bench_backends.py keeps running (tiny shapes; no timing is asserted anywhere)."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

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
