"""`sapient-backends check` and `sapient-backends bench`: output, exit status, JSON, progress."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import types
from types import SimpleNamespace

import pytest

import sapient_core
from sapient_core.cli import main
from sapient_core.hookspecs import OPS
from sapient_core.registry import Registry
from sapient_core.testing import BENCH_SIZES, build_cases, parse_sizes, run_bench

from helpers.planted import planted_module, write_dist

TINY = "seq=2:hidden=64:heads=4:kv_heads=2:head_dim=16:mlp=128:vocab=50:kv_len=3"


@pytest.fixture
def registry(monkeypatch):
    """The CLI's registry for this test: only the CPU reference, plus what the test plants."""
    reg = Registry(entry_points=lambda: [])
    monkeypatch.setattr(sapient_core, "_registry", reg)
    return reg


def plant(registry, *names):
    for name in names:
        registry.register(planted_module(name), name)


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(out):
    """The table's rows as lists of cells (split on runs of two or more spaces)."""
    import re
    return [re.split(r"\s{2,}", line.strip()) for line in out.splitlines()]


# --- check ---------------------------------------------------------------------------------------------

def test_check_cpu_passes_and_prints_a_table(registry, capsys):
    code, out, err = run_cli(capsys, "check", "cpu", "--ops", "rms_norm,gqa_attention")
    assert code == 0 and err == ""
    table = rows(out)
    assert table[0] == ["op", "backend", "case", "status", "NMSE", "NMSE vs cpu", "max abs err", "tol NMSE", "reason"]
    body = [r for r in table[2:] if len(r) >= 8]
    assert len(body) == len(build_cases("small", ["rms_norm", "gqa_attention"]))
    assert {r[3] for r in body} == {"pass"}
    prefill = next(r for r in body if r[:3] == ["rms_norm", "cpu", "prefill"])
    assert float(prefill[4]) < 1e-10 and prefill[7] == "1.0e-10"
    assert "result: OK" in out and ": OK - " in out


@pytest.mark.parametrize("name, op, case, reason", [
    ("wrongrms", "rms_norm", "prefill", "NMSE vs oracle 1.0e-06 > 1e-10"),
    ("mutates", "silu", "mlp", "modified its input 'x'"),
    ("raises", "linear_3d", "prefill", "the backend raised RuntimeError: no kernel for linear_3d"),
    ("wrongshape", "linear_3d", "decode-S1", "wrong result: returned shape (1, 1, 255), expected (1, 1, 256)"),
])
def test_check_catches_each_planted_backend(registry, capsys, name, op, case, reason):
    plant(registry, name)
    code, out, _ = run_cli(capsys, "check", name, "--ops", f"{op},add")
    assert code == 1
    row = next(r for r in rows(out) if r[:3] == [op, name, case])
    assert row[3] == "fail" and row[-1].startswith(reason)
    assert f"{name} (cpu, 0): FAILED" in out and out.rstrip().endswith("result: FAILED")


def test_check_without_names_checks_every_available_backend_and_reports_the_rest(registry, capsys):
    plant(registry, "wrongshape", "declines")
    unavailable = types.ModuleType("farplugin")
    exec("from sapient_core import hookimpl\n@hookimpl\ndef backend_capabilities():\n"
         "    return {'api_version': 1, 'device': 'cuda', 'available': False, 'thread_safe': True,\n"
         "            'reason': 'no NVIDIA GPU here'}\n", unavailable.__dict__)
    registry.register(unavailable, "far")
    code, out, _ = run_cli(capsys, "check", "--ops", "linear_3d,rms_norm", "--failures-only")
    assert code == 1
    assert "cpu (cpu, " in out and "wrongshape (cpu, 0): FAILED" in out
    assert "declines (cpu, 0): FAILED" in out and "ran none of the ops itself" in out
    assert "far: not checked (unavailable): no NVIDIA GPU here" in out
    table = rows(out)
    assert ["rms_norm", "declines", "prefill", "declined"] == next(r for r in table if r[:2] == ["rms_norm", "declines"]
                                                                   and r[2] == "prefill")[:4]
    assert not any(r[3:4] == ["pass"] for r in table if len(r) > 3)          # --failures-only


def test_check_declines_are_not_failures(registry, capsys):
    module = types.ModuleType("picky")
    exec("import numpy as np\nfrom sapient_core import OpDeclined, hookimpl\n"
         "from sapient_backend_cpu import kernels\n"
         "@hookimpl\ndef backend_capabilities():\n"
         "    return {'api_version': 1, 'device': 'cpu', 'available': True, 'thread_safe': True}\n"
         "@hookimpl\ndef silu(x):\n"
         "    if x.dtype != np.float32:\n        raise OpDeclined('float32 only')\n"
         "    return kernels.silu(x)\n", module.__dict__)
    registry.register(module, "picky")
    code, out, _ = run_cli(capsys, "check", "picky", "--ops", "silu,add")
    assert code == 0
    row = next(r for r in rows(out) if r[:3] == ["silu", "picky", "float16"])
    assert row[3:] == ["declined", "-", "-", "-", "-", "float32 only"]
    assert ["add", "picky", "*", "not implemented"] == next(r for r in rows(out) if r[:2] == ["add", "picky"])[:4]
    assert ["silu", "picky", "bfloat16", "declined"] == next(r for r in rows(out) if r[:3] == ["silu", "picky",
                                                                                                "bfloat16"])[:4]
    assert "2 declined, 1 op(s) not implemented" in out and "result: OK" in out


def test_check_json(registry, capsys):
    plant(registry, "wrongrms")
    code, out, _ = run_cli(capsys, "check", "cpu", "wrongrms", "--ops", "rms_norm", "--json")
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False and data["size"] == "small" and data["errors"] == []
    cpu, wrong = data["reports"]
    assert cpu["ok"] is True and wrong["ok"] is False and wrong["backend"] == "wrongrms"
    failed = [r for r in wrong["results"] if r["status"] == "fail"]
    assert failed and all(r["op"] == "rms_norm" and r["nmse"] == pytest.approx(1e-6, rel=0.01) for r in failed)
    assert data["tolerances"]["rms_norm"]["nmse"] == 1e-10 and data["tolerances"]["rms_norm"]["reason"]
    assert "layer_norm:large-offset" in data["case_tolerances"]


def test_check_unknown_backend_and_bad_ops(registry, capsys):
    code, out, _ = run_cli(capsys, "check", "nope")
    assert code == 1 and "nope: FAILED - unknown backend kind 'nope'" in out
    with pytest.raises(SystemExit) as exc:
        main(["check", "--ops", "rms_norm,matmul"])
    assert exc.value.code == 2
    assert "unknown op(s) matmul" in capsys.readouterr().err


def test_check_fails_on_a_broken_installed_plugin(monkeypatch, capsys):
    def load():
        raise ImportError("libkaput.so: cannot open shared object file")
    ep = SimpleNamespace(name="kaput", value="sapient_backend_kaput.plugin", load=load, dist=None)
    monkeypatch.setattr(sapient_core, "_registry", Registry(entry_points=lambda: [ep]))
    with pytest.warns(sapient_core.PluginWarning):
        code, out, _ = run_cli(capsys, "check", "--ops", "add")
    assert code == 1
    assert "kaput: FAILED - broken: plugin 'kaput': importing sapient_backend_kaput.plugin failed: ImportError" in out


def test_check_catches_a_planted_backend_installed_as_a_distribution(tmp_path):
    """The real path: entry point read by importlib.metadata, module imported, CLI in a subprocess."""
    write_dist(tmp_path / "site", "mutates")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    env["PYTHONPATH"] = str(tmp_path / "site")
    proc = subprocess.run([sys.executable, "-m", "sapient_core", "check", "cpu", "mutates", "--ops", "silu", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    reports = {r["backend"]: r for r in data["reports"]}
    assert reports["cpu"]["ok"] and not reports["mutates"]["ok"]
    failed = {(r["op"], r["case"]): r["reason"] for r in reports["mutates"]["results"] if r["status"] == "fail"}
    assert failed[("silu", "mlp")] == "modified its input 'x'"
    assert ("silu", "float16") not in failed


# --- bench ---------------------------------------------------------------------------------------------

def test_parse_sizes():
    decode, prefill, llm_d, llm_p = parse_sizes("decode,prefill,llm-decode,llm-prefill")
    assert (decode.seq, decode.kv_len, prefill.seq) == (1, 256, 64)
    assert (llm_d.hidden, llm_d.heads, llm_d.kv_heads, llm_d.head_dim, llm_d.mlp, llm_d.kv_len, llm_d.seq) == \
        (2048, 32, 8, 64, 8192, 512, 1)
    assert (llm_p.seq, llm_p.hidden, llm_p.mlp) == (128, 2048, 8192)
    custom, = parse_sizes("S=8:hidden=256:kv=16")
    assert (custom.name, custom.seq, custom.hidden, custom.kv_len, custom.mlp) == ("S=8:hidden=256:kv=16", 8, 256, 16,
                                                                                   BENCH_SIZES["prefill"].mlp)
    for bad, message in [("huge", "unknown benchmark size 'huge'"), ("seq=x", "is not an integer"),
                         ("depth=3", "unknown key 'depth'"), ("heads=5:kv_heads=2", "divisible"), ("", "no benchmark")]:
        with pytest.raises(ValueError, match=message):
            parse_sizes(bad)


def test_bench_json_ratios_and_who_served_each_op(registry, capsys):
    plant(registry, "wrongrms", "declines")
    code, out, err = run_cli(capsys, "bench", "wrongrms", "declines", "--sizes", f"decode,{TINY}",
                             "--ops", "rms_norm,silu,add", "--min-time", "0", "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["baseline"] == "cpu" and data["backends"] == ["cpu", "wrongrms", "declines"]
    assert [s["name"] for s in data["sizes"]] == ["decode", TINY]
    results = {(r["backend"], r["size"], r["op"]): r for r in data["results"]}
    assert len(results) == 3 * 2 * 3
    for (backend, size, op), r in results.items():
        assert r["repeats"] >= 3 and 0 < r["min_s"] <= r["median_s"]
        if backend == "cpu":
            assert r["ratio"] is None and r["served_by"] == "self"
        else:
            assert r["ratio"] == pytest.approx(r["median_s"] / results[("cpu", size, op)]["median_s"])
    assert results[("wrongrms", "decode", "rms_norm")]["served_by"] == "self"
    assert results[("wrongrms", "decode", "add")]["served_by"] == "cpu"
    assert results[("declines", TINY, "silu")]["served_by"] == "fallback"


def test_bench_table(registry, capsys):
    plant(registry, "wrongrms")
    code, out, _ = run_cli(capsys, "bench", "--sizes", TINY, "--ops", "rms_norm,add", "--min-time", "0")
    assert code == 0
    table = rows(out)
    assert table[0] == ["size", "op", "cpu ms", "wrongrms ms", "wrongrms/cpu"]
    rms = next(r for r in table if r[:2] == [TINY, "rms_norm"])
    add = next(r for r in table if r[:2] == [TINY, "add"])
    assert float(rms[2]) > 0 and float(rms[3]) > 0 and float(rms[4]) > 0
    assert add[4].endswith("(cpu)")
    assert f"{TINY}: B=1 S=2 hidden=64 heads=4/2x16 mlp=128 vocab=50 kv_len=3" in out


def test_bench_progress_only_on_a_terminal(registry, capsys, monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["bench", "--sizes", TINY, "--ops", "silu,add", "--min-time", "0"]) == 0
    shown = tty.getvalue()
    assert "\r\x1b[K[1/2] " in shown and "[2/2] " in shown and f"{TINY} add on cpu" in shown
    assert shown.endswith("\r\x1b[K")                     # the line is cleared before the table
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert main(["bench", "--sizes", TINY, "--ops", "silu", "--min-time", "0"]) == 0
    assert pipe.getvalue() == ""


def test_bench_defaults_cover_every_op_quickly(registry):
    """The default sizes (decode, prefill) with every op finish in seconds (the bound is generous)."""
    t0 = time.perf_counter()
    report = run_bench(min_time=0.01)
    assert time.perf_counter() - t0 < 60
    assert report.backends == ["cpu"] and [s.name for s in report.sizes] == ["decode", "prefill"]
    assert {(r.size, r.op) for r in report.results} == {(s, op) for s in ("decode", "prefill") for op in OPS}


def test_bench_unknown_backend(registry, capsys):
    code, _, err = run_cli(capsys, "bench", "nope", "--sizes", TINY, "--ops", "add")
    assert code == 1 and "unknown backend kind 'nope'" in err


def test_check_and_bench_every_backend_installed_here(tmp_path):
    """The real environment, as a user runs it: every available backend (the CPU reference, and e.g.
    sapient-backend-mlx where installed) passes the kit, and the benchmark times each of them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    listed = subprocess.run([sys.executable, "-m", "sapient_core", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    available = [i["name"] for i in json.loads(listed.stdout) if i["status"] == "available"]
    assert "cpu" in available
    proc = subprocess.run([sys.executable, "-m", "sapient_core", "check", "--json"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    data = json.loads(proc.stdout)
    failures = [(r["backend"], x["op"], x["case"], x["reason"]) for r in data["reports"] for x in r["results"]
                if x["status"] == "fail"]
    assert proc.returncode == 0 and data["ok"], failures or data
    assert [r["backend"] for r in data["reports"]] == available
    proc = subprocess.run([sys.executable, "-m", "sapient_core", "bench", "--sizes", TINY, "--min-time", "0",
                           "--json"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    bench = json.loads(proc.stdout)
    assert bench["backends"] == ["cpu"] + [n for n in available if n != "cpu"]
    assert len(bench["results"]) == len(available) * len(OPS)
