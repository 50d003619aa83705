"""A type checker sees every op method of ``Backend`` with its signature (``py.typed`` is shipped).

mypy runs, in a subprocess, on tests/typecheck/engine.py (correct engine code: no error) and on
tests/typecheck/wrong.py (three mistakes: each must be reported on its line).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent / "typecheck"


def mypy(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    import mypy  # noqa: F401 - in the [test] extra: a missing mypy fails here, it is not skipped
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-error-summary",
                           f"--cache-dir={tmp_path / 'mypy'}", str(path)], capture_output=True, text=True, timeout=300)


def test_correct_engine_code_type_checks(tmp_path):
    proc = mypy(HERE / "engine.py", tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wrong_engine_code_is_caught_on_each_line(tmp_path):
    proc = mypy(HERE / "wrong.py", tmp_path)
    assert proc.returncode == 1
    errors = {int(line.split(":")[1]): line for line in proc.stdout.splitlines() if ": error:" in line}
    assert 'Missing positional argument "eps" in call to "rms_norm"' in errors[11]
    assert '"Backend" has no attribute "rms_nrom"' in errors[12]
    assert 'Argument 4 to "gqa_attention"' in errors[13] and 'expected "int"' in errors[13]
    assert set(errors) == {11, 12, 13}
