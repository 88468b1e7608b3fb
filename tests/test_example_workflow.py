"""The GitHub Actions example runs as written: its `run:` steps are executed in order, with the
workflow's env, on a user's own CSV (the install steps are left out: reprokit is installed here).

Steps after a failed one run only when their `if:` holds `always()`, and `hashFiles('X') != ''`
is read as "X exists", as on GitHub.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

yaml = pytest.importorskip("yaml")

WORKFLOW = Path(__file__).resolve().parent.parent / "examples/github-actions/reprokit-gate.yml"


def _workflow() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _install_scripts(doc: dict[str, Any]) -> list[str]:
    return [
        step["run"]
        for job in doc["jobs"].values()
        for step in job["steps"]
        if "run" in step and "pip install" in step["run"]
    ]


def test_installs_reprokit_as_a_tool_not_the_host_checkout():
    doc = _workflow()
    scripts = _install_scripts(doc)
    assert len(scripts) == 2  # the gate job and the baseline job
    spec = doc["env"]["REPROKIT_SPEC"]
    assert spec.startswith("reprokit @ git+https://github.com/")
    for script in scripts:
        assert "download.pytorch.org/whl/cpu" in script
        assert 'pip install "$REPROKIT_SPEC"' in script
        assert not re.search(r"pip install (-e )?\.(\s|$|\[)", script), script


def _user_csv(path: Path, rows: int = 2500) -> None:
    """A small click log as a user would have it: ids, a numeric feature, a 0/1 `clicked`."""
    rng = np.random.default_rng(7)
    user = rng.integers(0, 60, rows)
    ad = rng.integers(0, 40, rows)
    price = rng.normal(size=rows)
    logit = 0.8 * np.sin(user) + 0.6 * np.cos(ad) - 0.5 * price - 1.0
    clicked = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user_id": user, "ad_id": ad, "price": price, "clicked": clicked}).to_csv(
        path, index=False
    )


def _should_run(step: dict[str, Any], failed: bool, cwd: Path) -> bool:
    cond = str(step.get("if", ""))
    for name in re.findall(r"hashFiles\('([^']+)'\) != ''", cond):
        if not (cwd / name).exists():
            return False
    return not failed or "always()" in cond


def _run_job(job: dict[str, Any], env: dict[str, str], cwd: Path) -> list[tuple[str, int]]:
    """Run a job's `run:` steps (not the install step) like a runner; return (name, exit code)."""
    results: list[tuple[str, int]] = []
    failed = False
    for step in job["steps"]:
        if "run" not in step or "pip install" in step["run"]:
            continue
        if not _should_run(step, failed, cwd):
            continue
        proc = subprocess.run(
            ["bash", "-e", "-c", step["run"]], cwd=cwd, env=env, capture_output=True, text=True
        )
        results.append((step.get("name", step["run"][:30]), proc.returncode))
        if proc.returncode != 0:
            assert "Traceback" not in proc.stderr, proc.stderr
            failed = True
    return results


def _env(doc: dict[str, Any], tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPROKIT_")}
    env.update({k: str(v) for k, v in doc["env"].items()})
    env["GITHUB_STEP_SUMMARY"] = str(tmp / "step_summary.md")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_workflow_gates_a_user_dataset_against_its_baseline(tmp_path: Path):
    doc = _workflow()
    env = _env(doc, tmp_path)
    repo = tmp_path / "user-repo"
    _user_csv(repo / "data" / "clicks.csv")

    # Refresh-baseline job, then commit only its summary.json as the gate reads it.
    baseline = _run_job(doc["jobs"]["refresh-baseline"], env, repo)
    assert [code for _, code in baseline] == [0, 0], baseline
    summary = json.loads((repo / "baseline" / "summary.json").read_text())
    assert summary["examples"] == 500  # 20 % of the user's 2500 rows

    for child in (repo / "baseline").iterdir():
        if child.name != "summary.json":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    (repo / "clicks.parquet").unlink()

    # A pull request with unchanged data and settings: same seeds, so PD moves by exactly 0 %.
    gate = _run_job(doc["jobs"]["gate"], env, repo)
    assert all(code == 0 for _, code in gate), gate
    verdict = json.loads((repo / "gate.json").read_text())
    assert verdict["verdict"] == "pass"
    increase = next(r for r in verdict["rules"] if r["rule"] == "max-pd-increase")
    assert increase["observed"] == 0.0
    assert (repo / "report" / "reprokit-report.html").stat().st_size > 10_000
    assert {"gate.json", "gate.xml"} <= {p.name for p in (repo / "report").iterdir()}
    assert "## reprokit gate: PASS" in (tmp_path / "step_summary.md").read_text()

    # A baseline whose PD was half as large: the gate step fails, report and summary still appear.
    for key in ("rel", "abs"):
        summary["pd"][key] /= 2
    (repo / "baseline" / "summary.json").write_text(json.dumps(summary))
    shutil.rmtree(repo / "report")
    for leftover in ("gate.json", "gate.xml"):
        (repo / leftover).unlink()
    (tmp_path / "step_summary.md").unlink()
    gate = dict(_run_job(doc["jobs"]["gate"], env, repo))
    assert gate["Gate against the stored baseline"] == 1
    assert gate["Render the report"] == 0 and gate["Verdict in the job summary"] == 0
    assert (repo / "report" / "reprokit-report.html").exists()
    assert "## reprokit gate: FAIL" in (tmp_path / "step_summary.md").read_text()
