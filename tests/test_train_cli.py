"""`reprokit train-ensemble` end to end, as a user runs it (real subprocesses where it matters)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from reprokit.cli import app

PD_KEYS = ("abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip")
TINY = ["--synth-rows", "2000", "--epochs", "1", "--hidden", "16-8"]
runner = CliRunner()


def _run(*args: str) -> tuple[int, dict | None, str]:
    result = runner.invoke(app, ["train-ensemble", *args, "--json"])
    doc = json.loads(result.stdout) if result.exit_code == 0 else None
    return result.exit_code, doc, result.stderr


def _predictions(run_dir: Path) -> list[np.ndarray]:
    return [
        pq.read_table(p).column("prediction").to_numpy()
        for p in sorted(run_dir.glob("replicas/*/predictions.parquet"))
    ]


def test_control_arm_gives_exactly_zero_pd(tmp_path):
    code, doc, err = _run("--replicas", "4", "--vary", "none", "--out", str(tmp_path / "r"), *TINY)
    assert code == 0, err
    assert {k: doc["pd"][k] for k in PD_KEYS} == dict.fromkeys(PD_KEYS, 0.0)
    preds = _predictions(tmp_path / "r")
    assert len(preds) == 4 and all(np.array_equal(preds[0], p) for p in preds[1:])
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["sources"]["varied"] == []
    assert len({json.dumps(s) for s in manifest["replica_seeds"].values()}) == 1


@pytest.mark.parametrize("engine", ["process", "vectorized"])
def test_vary_init_gives_positive_pd_and_is_repeatable(tmp_path, engine):
    args = ["--replicas", "3", "--vary", "init", "--engine", engine, *TINY]
    code, first, err = _run(*args, "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert all(first["pd"][k] > 0 for k in ("abs", "rel", "abs_mean", "l2", "rel_std"))
    code, second, err = _run(*args, "--out", str(tmp_path / "b"))
    assert code == 0, err
    for a, b in zip(
        sorted((tmp_path / "a").glob("replicas/*/predictions.parquet")),
        sorted((tmp_path / "b").glob("replicas/*/predictions.parquet")),
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes()
    assert first["pd"] == second["pd"]


def test_resume_after_kill_keeps_finished_replicas(tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "reprokit.cli", "train-ensemble", "--replicas", "6",
        "--vary", "init", "--engine", "process", "--out", str(out),
        "--synth-rows", "6000", "--epochs", "2", "--hidden", "32-16",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    finished = []
    while time.time() < deadline and proc.poll() is None:
        finished = sorted(out.glob("replicas/*/metrics.json"))
        if len(finished) >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = {p.parent.name: (p.parent / "predictions.parquet").read_bytes() for p in finished}
    assert 2 <= len(kept) < 6
    assert not (out / "summary.json").exists()
    assert (out / ".reprokit.lock").exists()  # the killed run's lock is left behind, stale
    result = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replicas"] == 6
    assert not (out / ".reprokit.lock").exists()  # taken over, then released
    for name, payload in kept.items():  # finished replicas were not retrained
        assert (out / "replicas" / name / "predictions.parquet").read_bytes() == payload


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--data", "missing.parquet"], "not found"),
        (["--activation", "sparkle"], "unknown activation"),
        (["--vary", "cosmic"], "unknown nondeterminism source"),
        (["--vary", "gpu-kernels"], "needs a CUDA device"),
        (["--label", "clicked"], "label 'clicked'"),
        (["--replicas", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
    code, _, err = _run("--out", str(tmp_path / "r"), *TINY, *args)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_malformed_config_and_foreign_run_dir(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nactivation = 'relu'\n")
    code, _, err = _run("--config", str(bad), *TINY)
    assert code == 2 and "not valid TOML" in err and len(err.strip().splitlines()) == 1
    out = str(tmp_path / "r")
    assert _run("--replicas", "2", "--vary", "none", "--out", out, *TINY)[0] == 0
    before = (tmp_path / "r" / "summary.json").read_bytes()
    code, _, err = _run("--replicas", "2", "--vary", "none", "--lr", "0.2", "--out", out, *TINY)
    assert code == 2 and "another configuration" in err and "optim.lr" in err
    assert (tmp_path / "r" / "summary.json").read_bytes() == before  # nothing lost


def test_worker_processes_match_in_process_training(tmp_path):
    """Spawned workers (threads pinned per replica) give the same bytes as training in-process."""
    args = ["--replicas", "2", "--vary", "init", "--engine", "process", *TINY]
    code, one, err = _run(*args, "--workers", "1", "--out", str(tmp_path / "one"))
    assert code == 0, err
    code, two, err = _run(*args, "--workers", "2", "--out", str(tmp_path / "two"))
    assert code == 0, err
    assert one["pd"] == two["pd"]
    for a, b in zip(_predictions(tmp_path / "one"), _predictions(tmp_path / "two"), strict=True):
        assert np.array_equal(a, b)


def test_manifest_fingerprint_records_the_deterministic_flags(tmp_path):
    code, _, err = _run("--replicas", "2", "--vary", "none", "--out", str(tmp_path / "r"), *TINY)
    assert code == 0, err
    env = json.loads((tmp_path / "r" / "manifest.json").read_text())["environment"]
    assert env["deterministic_algorithms"] is True
    assert env["torch"].startswith("2.") and env["device"] == "cpu"
