"""The example third-party backend (examples/sapient-backend-example), installed into a throwaway
virtualenv: discovered through its entry point, run through the kit, `check`, `bench` and its own
test suite."""

from __future__ import annotations

import json

import pytest

from sapient_core import OPS
from sapient_core.testing import build_cases

from helpers.venv import EXAMPLE, kit_venv, quickstart_files

EXAMPLE_OPS = ["linear_3d", "rms_norm", "silu"]
DECLINED = {("linear_3d", "float16"): "float16 input: the example's matmul is float32 only",
            ("linear_3d", "bfloat16"): "bfloat16 input: the example's matmul is float32 only",
            ("rms_norm", "noncontig-x"): "non-contiguous x: the example's rms_norm reads rows in place"}


@pytest.fixture(scope="module")
def venv():
    return kit_venv()


def test_example_is_discovered_through_its_entry_point(venv):
    proc = venv.run(["sapient-backends", "list", "--json"])
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    example = infos["example"]
    assert example["status"] == "available" and example["source"] == "entry point"
    assert example["distribution"] == "sapient-backend-example" and example["version"] == "0.2.0"
    assert example["target"] == "sapient_backend_example.plugin"
    assert example["implemented_ops"] == EXAMPLE_OPS and example["priority"] == 10
    # installed from a copy, not from this checkout
    proc = venv.run([venv.python, "-c", "import sapient_backend_example, sapient_core; "
                                        "print(sapient_backend_example.__file__, sapient_core.__file__)"])
    assert str(EXAMPLE) not in proc.stdout and "site-packages" in proc.stdout


def test_check_runs_the_kit_on_the_example(venv):
    proc = venv.run(["sapient-backends", "check", "cpu", "example", "--json"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is True
    reports = {r["backend"]: r for r in data["reports"]}
    ex = reports["example"]
    assert ex["ok"] and ex["version"] == "0.2.0" and ex["implemented_ops"] == EXAMPLE_OPS
    statuses = {(r["op"], r["case"]): (r["status"], r["reason"]) for r in ex["results"]}
    assert {k: v[1] for k, v in statuses.items() if v[0] == "declined"} == DECLINED
    assert {op for (op, case), (status, _) in statuses.items() if status == "not implemented"} == \
        {op for op in reports["cpu"]["implemented_ops"] if op not in EXAMPLE_OPS}
    n_cases = len(build_cases("small", EXAMPLE_OPS))
    assert ex["counts"] == {"pass": n_cases - len(DECLINED), "fail": 0, "declined": len(DECLINED),
                            "routed": 0, "not implemented": len(OPS) - len(EXAMPLE_OPS), "not run": 0}


def test_check_text_output_in_the_venv(venv):
    proc = venv.run(["sapient-backends", "check", "example", "--failures-only"])
    assert proc.returncode == 0, proc.stdout[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.split()[:4] == ["linear_3d", "example", "float16", "declined"]
               and line.endswith(DECLINED[("linear_3d", "float16")]) for line in lines)
    assert any(line.split()[:5] == ["gqa_attention", "example", "*", "not", "implemented"] for line in lines)
    assert "example (cpu, 0.2.0): OK - " in proc.stdout and lines[-1] == "result: OK"


def test_example_runs_its_own_test_suite(venv):
    proc = venv.run([venv.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests"],
                    cwd=venv.src / "example", COLUMNS="300")
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    n = len(build_cases())
    n_pass = len(build_cases("small", EXAMPLE_OPS)) - len(DECLINED)
    assert f"{n_pass} passed, {n - n_pass} skipped" in out
    assert "example linear_3d:float16: declined: float16 input: the example's matmul is float32 only" in out
    assert "example gqa_attention:decode-S1: not implemented: served by the CPU reference" in out


def test_pytest_option_runs_the_kit_on_the_example(venv, tmp_path):
    proc = venv.run([venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--sapient-backend", "example",
                     "-k", "rms_norm"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    n = len(build_cases("small", ["rms_norm"]))
    assert f"{n - 1} passed, 1 skipped" in proc.stdout


def test_bench_times_the_example_against_the_cpu_reference(venv):
    proc = venv.run(["sapient-backends", "bench", "example", "--sizes", "seq=4:hidden=128:mlp=256:vocab=100",
                     "--ops", "linear_3d,rms_norm,gqa_attention", "--min-time", "0", "--json"])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["backends"] == ["cpu", "example"]
    served = {r["op"]: r["served_by"] for r in data["results"] if r["backend"] == "example"}
    assert served == {"linear_3d": "self", "rms_norm": "self", "gqa_attention": "cpu"}
    assert all(r["ratio"] > 0 for r in data["results"] if r["backend"] == "example")


def test_example_follows_the_contributing_quickstart():
    """Same pyproject shape as the quickstart's: build system, bounded core, entry-point group."""
    tomllib = pytest.importorskip("tomllib")            # Python 3.11+
    quick = tomllib.loads(quickstart_files()["sapient-backend-hello/pyproject.toml"])
    example = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    assert example["build-system"] == quick["build-system"]
    assert example["project"]["requires-python"] == quick["project"]["requires-python"]
    assert [d for d in example["project"]["dependencies"] if d.startswith("sapient-core")] == \
        [d for d in quick["project"]["dependencies"] if d.startswith("sapient-core")]
    assert example["project"]["entry-points"]["sapient_core.backends"] == {"example": "sapient_backend_example.plugin"}
    assert example["tool"]["setuptools"]["packages"] == ["sapient_backend_example"]
    plugin = (EXAMPLE / "sapient_backend_example" / "plugin.py").read_text()
    assert "from sapient_core import OpDeclined, hookimpl" in plugin
    assert '"api_version": 1,' in plugin                # a literal, as the quickstart teaches (written for API 1)
    assert (EXAMPLE / "tests" / "test_conformance.py").read_text().strip().endswith(
        'test_conformance = conformance_tests("example")')
