"""``sapient-backends list`` and ``sapient-backends explain``, over fake plugins.

In-process (``cli.main`` with the module-level registry replaced by one over a FakeSite) for the
details, plus one real subprocess of the console script with the fake site on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from sapient_core import OPS, PluginWarning, cli
from sapient_core.memory import GiB

from helpers.fakeplugins import plugin_source


def install(site):
    site.add_plugin("metalfast", device="metal", priority=100, memory=16 * GiB, ops=["rms_norm"])
    site.add_plugin("cudaoff", device="cuda", available=False, reason="no CUDA driver found (fake)")
    site.add_plugin("nomem", device="npu", priority=200, memory=None)
    site.add_plugin("bad", plugin_source(header="import sapient_no_such_lib"))
    site.add_plugin("typo", plugin_source(extra="@hookimpl\ndef rms_norn(x, weight, eps):\n    return x\n"))


@pytest.fixture
def run(fake_site, use_registry, capsys):
    install(fake_site)
    use_registry(fake_site.registry())

    def run(*argv):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)      # tested in test_core_plugins.py
            code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def table(out):
    """{name: {column: value}} of the list table."""
    lines = out.splitlines()
    header = lines[0]
    starts = [header.index(col) for col in header.split()]
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [None])]
        rows[cells[0]] = dict(zip(header.split(), cells))
    return rows


def test_list_shows_every_plugin_with_its_status(run):
    code, out, err = run("list")
    assert code == 0 and err == ""
    rows = table(out)
    assert set(rows) == {"bad", "cpu", "cudaoff", "metalfast", "nomem", "typo"}
    assert rows["cpu"]["status"] == "available" and rows["cpu"]["distribution"] == "sapient-backend-cpu"
    assert rows["metalfast"] == {"name": "metalfast", "status": "available", "device": "metal", "version": "0.1",
                                 "priority": "100", "threads": "yes", "memory": "16.0 GiB",
                                 "distribution": "fake-metalfast"}
    assert rows["nomem"]["memory"] == "unknown (the fake driver does not report memory)"
    assert rows["cudaoff"]["status"] == "unavailable" and rows["cudaoff"]["device"] == "cuda"
    assert rows["bad"]["status"] == "broken" and rows["bad"]["device"] == "-"
    assert rows["typo"]["status"] == "broken"
    # the reasons, in full, below the table
    assert ("bad (broken): plugin 'bad': importing sapient_fake_bad failed: ModuleNotFoundError: No module named "
            "'sapient_no_such_lib'\n") in out
    assert "cudaoff (unavailable): no CUDA driver found (fake)\n" in out
    assert "typo (broken): plugin 'typo': 'rms_norn' is marked @hookimpl but no hook spec has that name (did you " \
           "mean 'rms_norm'?)" in out
    assert "metalfast memory from fake device info\n" in out
    assert out.endswith("\nauto resolves to: 'nomem'\n")


def test_list_json(run):
    code, out, _ = run("list", "--json")
    assert code == 0
    infos = {i["name"]: i for i in json.loads(out)}
    assert infos["bad"]["status"] == "broken" and infos["bad"]["error"] == "PluginLoadError"
    assert infos["bad"]["reason"].startswith("plugin 'bad': importing sapient_fake_bad failed: ModuleNotFoundError")
    assert infos["typo"]["error"] == "PluginValidationError"
    assert infos["cudaoff"]["status"] == "unavailable" and infos["cudaoff"]["reason"] == "no CUDA driver found (fake)"
    assert infos["cudaoff"]["capabilities"]["available"] is False
    m = infos["metalfast"]
    assert m["capabilities"]["priority"] == 100 and m["capabilities"]["device"] == "metal"
    assert m["memory"] == {"total_bytes": 16 * GiB, "source": "fake device info", "reason": "", "details": {},
                           "unified_memory": None}
    assert m["implemented_ops"] == ["rms_norm"] and m["error"] == ""
    assert infos["nomem"]["memory"]["total_bytes"] is None
    assert infos["cpu"]["implemented_ops"] == list(OPS)


def test_explain_shows_the_candidates_and_the_memory_arithmetic(run):
    code, out, _ = run("explain", "auto", "--model-bytes", str(10 * GiB))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == ("kind 'auto' (from argument), model_bytes=10737418240 (10.00 GiB): the highest-priority "
                        "available accelerator plugin (device other than cpu) whose memory check passes; otherwise "
                        "the CPU reference")
    assert any(line.startswith(" -> cpu ") for line in lines)
    i = next(i for i, line in enumerate(lines) if line.startswith("    metalfast"))
    assert lines[i].endswith("the model does not fit")
    assert lines[i + 1].strip() == ("memory: 10.00 GiB x 1.5 = 15.00 GiB > usable 14.00 GiB (16.00 GiB from fake "
                                    "device info - 2.00 GiB reserve)")
    assert "memory: device memory unknown (the fake driver does not report memory)" in out
    assert lines[-1] == "result: 'cpu'"


def test_explain_a_device_and_json(run):
    code, out, _ = run("explain", "metal", "--model-bytes", str(GiB), "--json")
    assert code == 0
    exp = json.loads(out)
    assert exp["kind"] == "metal" and exp["chosen"] == "metalfast" and exp["error"] is None
    assert exp["model_bytes"] == GiB and exp["source"] == "argument"
    chosen = [c for c in exp["candidates"] if c["chosen"]]
    assert [c["name"] for c in chosen] == ["metalfast"]
    assert chosen[0]["memory"].startswith("1.00 GiB x 1.5 = 1.50 GiB <= usable 14.00 GiB")


def test_explain_failure_exits_1_with_the_reason(run):
    code, out, _ = run("explain", "cuda")
    assert code == 1
    assert out.splitlines()[-1] == ("error: no available backend provides 'cuda': cudaoff: no CUDA driver found (fake) "
                                    "(not asked, because broken or disabled: bad, typo). get_backend('auto') picks "
                                    "the best available backend")
    code, out, _ = run("explain", "tpu")
    assert code == 1 and "error: unknown backend kind 'tpu'. Installed plugins: 'bad', 'cpu'," in out


def test_explain_defaults_to_sapient_backend(run, monkeypatch):
    monkeypatch.setenv("SAPIENT_BACKEND", "metalfast")
    code, out, _ = run("explain")
    assert code == 0 and out.startswith("kind 'metalfast' (from SAPIENT_BACKEND)")


def test_negative_model_bytes_is_a_usage_error(run, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["explain", "auto", "--model-bytes", "-1"])
    assert exc.value.code == 2
    assert "--model-bytes must be >= 0" in capsys.readouterr().err


def test_console_script_in_a_subprocess(fake_site):
    """The installed ``sapient-backends`` script, a fresh process, the real default registry."""
    install(fake_site)
    script = Path(sys.executable).with_name("sapient-backends")
    assert script.exists(), f"{script} is missing: is sapient-core installed in this environment?"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAPIENT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(fake_site.root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONWARNINGS"] = "ignore::UserWarning"
    proc = subprocess.run([str(script), "list", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    infos = {i["name"]: i for i in json.loads(proc.stdout)}
    assert {n: infos[n]["status"] for n in ("cpu", "metalfast", "cudaoff", "bad", "typo")} == {
        "cpu": "available", "metalfast": "available", "cudaoff": "unavailable", "bad": "broken", "typo": "broken"}
    proc = subprocess.run([sys.executable, "-m", "sapient_core", "explain", "metal"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "result: 'metalfast'"


def test_list_shows_every_kind_of_broken_plugin(fake_site, use_registry, capsys):
    from helpers.broken_plugins import BROKEN
    names = []
    for i, (case, source, error_type, _) in enumerate(BROKEN):
        name = f"bad{i}"
        fake_site.add_plugin(name, source)
        names.append((name, case, error_type.__name__))
    fake_site.add_dist("fake-impostor", entry_points={"cpu": "sapient_fake_impostor", "Bad-Name": "sapient_fake_x"})
    fake_site.add_dist("fake-dup1", entry_points={"dup": "sapient_fake_dup1"},
                       modules={"sapient_fake_dup1": plugin_source(device="metal")})
    fake_site.add_dist("fake-dup2", entry_points={"dup": "sapient_fake_dup2"})
    use_registry(fake_site.registry())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert len([w for w in record if issubclass(w.category, PluginWarning)]) == len(BROKEN) + 3
    rows = out.splitlines()
    for name, case, _ in names:
        assert any(r.split()[:2] == [name, "broken"] for r in rows), case
        assert any(r.startswith(f"{name} (broken): plugin '{name}'") for r in rows), case
    assert any(r.startswith("cpu (broken): entry-point name 'cpu' (from fake-impostor") for r in rows)
    assert any(r.startswith("Bad-Name (broken): entry-point name 'Bad-Name'") for r in rows)
    assert len([r for r in rows if r.startswith("dup (broken): backend name 'dup' is claimed by 2 distributions")]) == 2
    assert out.endswith("\nauto resolves to: 'cpu'\n")

    assert cli.main(["list", "--json"]) == 0
    infos = json.loads(capsys.readouterr().out)
    errors = {i["name"]: i["error"] for i in infos if i["status"] == "broken"}
    assert {name: errors[name] for name, _, _ in names} == {name: error for name, _, error in names}
    assert sorted((i["name"], i["status"]) for i in infos if i["name"] in ("cpu", "dup")) == [
        ("cpu", "available"), ("cpu", "broken"), ("dup", "broken"), ("dup", "broken")]


# --- options anywhere, warnings as one line -------------------------------------------------------------------

def run_cli(site, *argv, **env):
    """The real command in a fresh process (default warning display, default logging), over ``site``."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SAPIENT_", "PYTHONWARNINGS"))}
    e["PYTHONPATH"] = os.pathsep.join([str(site.root), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(env)
    return subprocess.run([sys.executable, "-m", "sapient_core", *argv], capture_output=True, text=True, env=e,
                          timeout=60)


def test_verbose_and_json_go_before_or_after_the_subcommand(fake_site):
    fake_site.add_plugin("metalfast", device="metal", priority=100)
    for argv in (["-v", "list", "--json"], ["list", "-v", "--json"], ["--json", "list", "-v"],
                 ["--json", "-v", "list"]):
        proc = run_cli(fake_site, *argv, SAPIENT_PLUGINS="metalfast")
        assert proc.returncode == 0, (argv, proc.stderr)
        assert {i["name"] for i in json.loads(proc.stdout)} >= {"cpu", "metalfast"}, argv
        assert "sapient_core DEBUG: discovered plugins:" in proc.stderr, argv
    for argv in (["explain", "metal", "--json"], ["--json", "explain", "metal"]):
        proc = run_cli(fake_site, *argv)
        assert proc.returncode == 0 and json.loads(proc.stdout)["chosen"] == "metalfast", argv
        assert "DEBUG" not in proc.stderr
    proc = run_cli(fake_site, "explain", "metal")
    assert proc.stdout.splitlines()[-1] == "result: 'metalfast'"           # no --json: text


def test_the_command_shows_each_warning_as_one_clean_line(fake_site):
    fake_site.add_plugin("bad", plugin_source(header="raise RuntimeError('the GPU driver crashed at import')"))
    proc = run_cli(fake_site, "list", SAPIENT_STRICT="2", SAPIENT_BACKEND="cpu")
    assert proc.returncode == 0
    proc = run_cli(fake_site, "list")
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        "sapient-backends: warning: plugin 'bad': importing sapient_fake_bad failed: RuntimeError: the GPU driver "
        "crashed at import; the plugin is skipped and the others keep working"]
    proc = run_cli(fake_site, "explain", "cpu", SAPIENT_PLUGINS="cpu,bda")
    assert proc.returncode == 0
    assert [line.split(": ")[:3] for line in proc.stderr.splitlines()] == [
        ["sapient-backends", "warning", "SAPIENT_PLUGINS='cpu,bda'"]]


# --- integers beyond float's range ----------------------------------------------------------------------------

def test_a_model_size_of_10_to_the_400_never_overflows(run, capsys):
    huge = 10 ** 400
    code, out, err = run("explain", "auto", "--model-bytes", str(huge))
    assert code == 0 and out.splitlines()[-1] == "result: 'cpu'" and "Error" not in err
    assert out.startswith("kind 'auto' (from argument), model_bytes=~1.00e+400 (~9.31e+390 GiB)")
    code, out, _ = run("explain", "metalfast", "--model-bytes", str(huge), "--json")
    exp = json.loads(out)
    assert code == 0 and exp["model_bytes"] == huge and exp["chosen"] == "metalfast"
    assert exp["candidates"][0]["fits"] is False and "~9.31e+390 GiB x 1.5 = ~1.39e+391 GiB >" in \
        exp["candidates"][0]["memory"]
    code, out, _ = run("list")
    assert code == 0


@pytest.mark.parametrize("exponent, shown", [(400, "~9.31e+390 GiB"),      # 10**400 / 2**30 = 9.31e390
                                             (5000, "~9.31e+4990 GiB")])   # beyond Python's int-to-str limit too
def test_huge_sizes_through_the_python_api_and_list(exponent, shown, fake_site, use_registry, capsys):
    import sapient_core
    huge = 10 ** exponent
    fake_site.add_plugin("vast", device="metal",
                         memory_expr=f"{{'total_bytes': 10 ** {exponent}, 'source': 'fake device info'}}")
    reg = use_registry(fake_site.registry())
    assert cli.main(["list"]) == 0
    out, err = capsys.readouterr()
    assert table(out)["vast"]["memory"] == shown
    assert sapient_core.get_backend("auto", model_bytes=huge).name == "cpu"         # 1.5 x huge does not fit
    assert sapient_core.get_backend("auto", model_bytes=huge // 2).name == "vast"   # 0.75 x huge does
    assert sapient_core.get_backend("vast", model_bytes=huge).name == "vast"        # by name: used anyway
    assert sapient_core.get_backend("cpu", model_bytes=huge).name == "cpu"
    text = str(sapient_core.explain("auto", model_bytes=huge))
    assert "model_bytes=~1.00e+" in text and " GiB x 1.5 = ~1.39e+" in text and text.endswith("result: 'cpu'")
    info = next(i for i in sapient_core.list_backends() if i.name == "vast")
    assert info.memory.total_bytes == huge
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
    assert reg is sapient_core.default_registry()
