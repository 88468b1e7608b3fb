"""Resume repairs a run directory: damaged replicas are retrained, more replicas extend a run,
and a lock file keeps two live runs out of one directory."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.runschema import LOCK

runner = CliRunner()
TINY = ["--synth-rows", "2000", "--epochs", "1", "--hidden", "8", "--engine", "process"]


def _train(out: Path, replicas: int, *extra: str):
    return runner.invoke(
        app, ["train-ensemble", *TINY, "--replicas", str(replicas), "--out", str(out), *extra]
    )


def _files(run: Path, replica: int) -> dict[str, bytes]:
    d = run / "replicas" / f"{replica:03d}"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def fresh_four(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fresh") / "run"
    result = _train(out, 4)
    assert result.exit_code == 0, result.stderr
    return out


def test_more_replicas_extend_a_run_without_touching_finished_ones(tmp_path, fresh_four):
    out = tmp_path / "run"
    assert _train(out, 2).exit_code == 0
    kept = {r: _files(out, r) for r in (0, 1)}
    result = _train(out, 4, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["replicas"] == 4
    assert {r: _files(out, r) for r in (0, 1)} == kept
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["replicas"] == 4 and len(manifest["replica_seeds"]) == 4
    # the extension is the run one would have trained with 4 replicas from the start
    for r in range(4):
        ours = _files(out, r)["predictions.parquet"]
        assert ours == _files(fresh_four, r)["predictions.parquet"]


def test_fewer_replicas_than_finished_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _train(out, 3).exit_code == 0
    result = _train(out, 2)
    assert result.exit_code == 2
    assert "holds 3 replicas; --replicas 2 would leave replica 002 out" in result.stderr


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "predictions.parquet").write_bytes(
            (d / "predictions.parquet").read_bytes()[:100]
        ),
        lambda d: (d / "metrics.json").write_text('{"replica": 1, "auc"'),
        lambda d: (d / "train_log.parquet").unlink(),
    ],
    ids=["truncated-predictions", "truncated-metrics", "missing-log"],
)
def test_damaged_replica_is_trained_again_and_said_so(tmp_path, fresh_four, damage):
    out = tmp_path / "run"
    assert _train(out, 3).exit_code == 0
    untouched = {r: _files(out, r) for r in (0, 2)}
    damage(out / "replicas" / "001")
    result = _train(out, 3, "--json")
    assert result.exit_code == 0, result.stderr
    assert "note: replica 001:" in result.stderr and "training it again" in result.stderr
    assert {r: _files(out, r) for r in (0, 2)} == untouched
    assert _files(out, 1)["predictions.parquet"] == _files(fresh_four, 1)["predictions.parquet"]
    assert json.loads(result.stdout)["replicas"] == 3


def test_a_live_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{socket.gethostname()} {sleeper.pid}\n")
        result = _train(out, 2)
        assert result.exit_code == 2
        assert f"another reprokit run (pid {sleeper.pid}) is writing to {out}" in result.stderr
        assert not (out / "manifest.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the same lock, now of a dead process: taken over, and released at the end
    result = _train(out, 2)
    assert result.exit_code == 0, result.stderr
    assert not (out / LOCK).exists()


def test_a_run_made_before_a_setting_existed_still_resumes(tmp_path):
    out = tmp_path / "run"
    assert _train(out, 2).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["config"]["divergence"]["collapse_auc"]  # as if written by an older reprokit
    (out / "manifest.json").write_text(json.dumps(manifest))
    result = _train(out, 3)
    assert result.exit_code == 0, result.stderr
