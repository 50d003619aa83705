"""CONTRIBUTING.md: its quickstart, followed literally in a fresh directory and virtualenv, works; and
what it documents (hooks, capability keys, switches, tolerances, the README's commands) is complete."""

from __future__ import annotations

import re

import pytest

from sapient_core import CapabilityReport
from sapient_core.hookspecs import META_HOOKS, OPS
from sapient_core.testing import build_cases, tolerance_table

from helpers.venv import CONTRIBUTING, REPO, bare_venv, quickstart_blocks

TEXT = CONTRIBUTING.read_text()


def section(title: str) -> str:
    start = TEXT.index(f"\n## {title}\n")
    end = TEXT.find("\n## ", start + 1)
    return TEXT[start:end if end > 0 else None]


def test_quickstart_followed_literally_works(tmp_path):
    """Write every file the quickstart shows, run every command it shows, in one shell, in order, in a
    virtualenv that has only what the quickstart says a reader has (sapient-core: no pytest, no ml_dtypes)."""
    venv = bare_venv()
    assert venv.run([venv.python, "-c", "import pytest"]).returncode == 1      # the reader has no pytest yet
    blocks = quickstart_blocks()
    kinds = [k for k, _, _ in blocks]
    assert kinds.count("file") == 4 and kinds.count("run") == 5 and kinds.count("output") == 1
    for kind, path, body in blocks:
        if kind == "file":
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(body)
    script = "\n".join(body for kind, _, body in blocks if kind == "run")
    proc = venv.run(script, cwd=tmp_path, timeout=300, COLUMNS="300")
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]

    # `pip install -e .` put the entry point in place: `sapient-backends list` shows what the guide shows
    # (the memory column depends on the machine).
    expected = next(body for kind, _, body in blocks if kind == "output")
    want = next(line.split() for line in expected.splitlines() if line.startswith("hello "))
    got = next(line.split() for line in out.splitlines() if line.startswith("hello "))
    assert got[:6] == want[:6] == ["hello", "available", "cpu", "0.1.0", "0", "yes"]
    assert got[-1] == want[-1] == "sapient-backend-hello"

    # `sapient-backends check hello` passed every rms_norm case (bfloat16 included: the quickstart installs
    # ml_dtypes), with the other ops reported as not implemented
    k = len(build_cases("small", ["rms_norm"]))
    n_ops = len(OPS)
    assert f"hello (cpu, 0.1.0): OK - {k} passed, 0 failed, 0 declined, {n_ops - 1} op(s) not implemented" in out
    # the pytest file, then the pytest option (which adds the kit beside tests/: twice the tests)
    n = len(build_cases())
    assert f"{k} passed, {n - k} skipped" in out
    assert f"{2 * k} passed, {2 * (n - k)} skipped" in out


def test_quickstart_tree_matches_its_files():
    files = {path for kind, path, _ in quickstart_blocks() if kind == "file"}
    tree = re.search(r"### 1\. The package tree\n\n```text\n(.*?)```", TEXT, re.S).group(1)
    names = {re.sub(r"^[│├└─\s]+", "", line).rstrip("/") for line in tree.splitlines()}
    for path in files:
        for part in path.split("/"):
            assert part in names, part


def test_tolerance_table_is_the_one_the_kit_uses():
    published = TEXT.split("<!-- tolerances:begin -->\n")[1].split("<!-- tolerances:end -->")[0]
    assert published.strip() == tolerance_table().strip()


def test_every_hook_is_in_the_hook_reference():
    ref = section("Hook reference")
    for op, spec in OPS.items():
        assert f"`{op}({', '.join(spec.argnames)})`" in ref or (op in ("add", "mul") and "`add(a, b)`, `mul(a, b)`" in ref), op
    for hook, args in META_HOOKS.items():
        assert f"`{hook}({', '.join(args)})`" in ref, hook
    assert "OpDeclined" in ref and "declined = True" in ref


def test_every_capability_key_is_documented():
    table = section("The capability contract")
    documented = set(re.findall(r"^\| `(\w+)` \|", table, re.M))
    keys = set(CapabilityReport.model_fields)                     # what a plugin reports (name etc.: the core)
    assert documented == keys


@pytest.mark.parametrize("switch", ["SAPIENT_PLUGINS", "SAPIENT_DISABLE_PLUGIN_AUTOLOAD", "SAPIENT_STRICT",
                                    "SAPIENT_BACKEND", "SAPIENT_CROSS_CHECK", "SwitchWarning", "name@distribution",
                                    'logging.getLogger("sapient_core").setLevel(logging.DEBUG)'])
def test_debugging_switches_are_documented(switch):
    assert switch in section("Debugging switches")


def test_readme_commands_are_quoted_verbatim():
    readme = (REPO / "README.md").read_text()
    own = section("Developing sapient_core itself")
    for marker in ("<!-- main-command -->", "<!-- test-command -->"):
        command = re.search(re.escape(marker) + r"\n```bash\n(.*?)```", readme, re.S).group(1).strip()
        assert command in own, (f"README.md's {marker} changed; copy it into CONTRIBUTING.md, section "
                                f"'Developing sapient_core itself': {command}")


def test_compatibility_policy_names_the_hook_api_version_and_the_bound():
    policy = section("Compatibility policy")
    import sapient_core
    assert f"`sapient_core.HOOK_API_VERSION` (now {sapient_core.HOOK_API_VERSION})" in policy
    assert "sapient-core>=0.2,<0.3" in policy
