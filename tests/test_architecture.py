"""The one-way flow of docs/architecture.md, checked: report, gate and metrics read run
directories without importing torch or any training code, and the CLI starts without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

FORBIDDEN = ("torch", "reprokit.training", "reprokit.runners", "reprokit.nn", "reprokit.optim")

PROBE = """
import sys
sys.path.insert(0, {tests!r})
from rundir_fixtures import make_compare, make_train_ensemble
from pathlib import Path
root = Path({root!r})
run = {make}(root / "run")
from reprokit.report import write_report
from reprokit.rundir import load_run
from reprokit.gate import GateRules, evaluate
import reprokit.metrics.summary, reprokit.metrics.stats, reprokit.metrics.churn
write_report(run)
assert evaluate(load_run(run), GateRules(max_pd=1.0)).verdict == "pass"
print(sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith({prefixes!r})))
"""


def _loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return eval(out.stdout.strip().splitlines()[-1])  # a printed list of module names


@pytest.mark.parametrize("make", ["make_train_ensemble", "make_compare"])
def test_report_and_gate_do_not_import_torch_or_training(tmp_path: Path, make: str):
    code = PROBE.format(tests=str(TESTS), root=str(tmp_path), make=make, prefixes=FORBIDDEN)
    assert _loaded(code) == []
    assert (tmp_path / "run" / "report.html").is_file()


def test_probe_sees_torch_when_it_is_imported():
    """The probe is not blind: importing a training module shows up."""
    code = f"import sys, reprokit.training.loop; print(sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r})))"
    assert "torch" in _loaded(code)


def test_cli_starts_without_torch():
    code = "import sys, reprokit.cli; print(sorted(m for m in sys.modules if m == 'torch'))"
    assert _loaded(code) == []
