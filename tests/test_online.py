"""`reprokit online`: Algorithm 1's order, sparse and dense sync, the batch baseline, snapshots and
failures, resume after SIGKILL, the control arm, and the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import resolve_config
from reprokit.data.layout import DatasetSchema, write_dataset
from reprokit.runners.online import (
    OnlineOptions,
    Schedule,
    load_stream,
    run_online,
    run_unit,
    train_batch_model,
)
from reprokit.sources import replica_seeds
from reprokit.training.online import OnlineReplica, ServingCopy, pass_order

BASE = {
    "data.synth_rows": 2400,
    "data.synth_fields": 3,
    "data.synth_cardinality": 150,
    "optim.batch_size": 64,
    "model.hidden": "16-8",
    "replicas": 2,
}


def _config(**extra):
    return resolve_config(None, {**BASE, **extra})


def _stream(cfg, **options):
    opts = OnlineOptions(**{"shards": 4, "sync_intervals": (1,), **options}).validate()
    return opts, load_stream(cfg, opts)


def test_the_stream_is_the_data_in_time_order():
    cfg = _config()
    opts, stream = _stream(cfg)
    times = np.concatenate([stream.batch_time, stream.stream_time])
    assert np.all(np.diff(times) >= 0)  # oldest rows train the batch model, the rest stream
    assert stream.bounds[0][0] == 0 and stream.bounds[-1][1] == len(stream.stream_time)
    assert len(stream.batch_time) == 1200 and len(stream.bounds) == 4


def test_each_shard_is_evaluated_before_it_is_trained_on():
    """Algorithm 1: with a sync after every step (dense too), the serving copy that predicts
    shard i is the training copy after shards 0..i-1, and shard 0 sees the batch model."""
    cfg = _config(vary="init,data-order")
    opts, stream = _stream(cfg, dense_sync_every=1)
    seeds = replica_seeds(cfg.seed, cfg.vary, 1)
    state, baseline = train_batch_model(stream, cfg, 1, seeds)
    result = run_unit(stream, cfg, opts, 1, 1, seeds, state, None)
    lo, hi = stream.bounds[0]
    assert np.array_equal(result.predictions[lo:hi], baseline[lo:hi])
    enc = stream.encoded
    twin = OnlineReplica(cfg, enc.vocab_sizes, enc.train_num.shape[1], 1, 1, seeds)
    twin.load_state(state)
    for i, (lo, hi) in enumerate(stream.bounds):
        expected = twin.predict(stream.stream_cat[lo:hi], enc.eval_num[lo:hi])[:, 0]
        assert np.array_equal(result.predictions[lo:hi], expected), f"shard {i}"
        order = lo + pass_order(seeds["data-order"], i + 1, hi - lo)
        twin.train_pass(stream.stream_cat, enc.eval_num, enc.eval_y, stream.stream_time, order)
    assert not np.array_equal(result.predictions[lo:hi], baseline[lo:hi])


def test_sparse_sync_pushes_exactly_the_touched_rows_and_dense_waits():
    cfg = _config()
    _, stream = _stream(cfg)
    enc = stream.encoded
    seeds = replica_seeds(cfg.seed, cfg.vary, 0)
    trainer = OnlineReplica(cfg, enc.vocab_sizes, enc.train_num.shape[1], 1, 0, seeds)
    serve = ServingCopy(trainer)
    rows = np.arange(40)
    trainer.train_pass(enc.train_cat, enc.train_num, enc.train_y, None, rows)  # one step
    touched = {(f, int(i)) for f in range(enc.train_cat.shape[1]) for i in enc.train_cat[rows, f]}
    assert serve.sync_sparse() == len(touched)
    for f, table in enumerate(serve.model.embeddings.tables):
        live = trainer.model.embeddings.tables[f].weight
        assert torch.equal(table.weight, live)  # every row now as in training
    first = serve.model.mlp[0].weight
    assert not torch.equal(first, trainer.model.mlp[0].weight)  # dense weights: not yet
    assert serve.counter.sparse_bytes == len(touched) * (8 * 4 + 8)
    assert serve.sync_sparse() == 0  # nothing changed since
    serve.sync_dense()
    assert torch.equal(serve.model.mlp[0].weight, trainer.model.mlp[0].weight)


def test_dense_sync_runs_on_its_own_schedule():
    schedule = Schedule(interval=2, unit="batches", dense_every=3)
    sparse = dense = 0
    for _ in range(24):
        if schedule.due(None):
            sparse += 1
            dense += schedule.synced(None)
    assert (sparse, dense) == (12, 4)
    timed = Schedule(interval=10.0, unit="time", dense_every=1)
    due = [timed.due(np.array([t])) and timed.synced(np.array([t])) for t in (0, 4, 10, 12, 25)]
    assert due == [False, False, True, False, True]


def test_a_failure_loses_exactly_the_updates_since_the_snapshot(tmp_path):
    cfg = _config(vary="none", replicas=3)  # 3: a CI over replicas exists
    opts, stream = _stream(cfg, shards=6, snapshot_every=2, fail_at=3)
    doc = run_online(cfg, opts, tmp_path / "run", stream=stream)
    failure = doc["failure"]
    units = json.loads((tmp_path / "run/units/sync-i1-r000.json").read_text())
    assert failure["restored_from_shard"] == 1 and failure["note"] is None
    assert failure["lost_updates"] == units["shards"][2]["steps"]  # shard 2's updates are gone
    assert failure["shards"][0]["shard"] == 3
    assert failure["shards"][0]["delta"] == 0.0  # the serving copy did not fail
    later = failure["shards"][1]
    assert later["shard"] == 4 and later["delta"] != 0.0  # served after the restore
    behind = [s["shard"] for s in failure["shards"] if s["delta"] < -0.0005]
    expected = None if behind and behind[-1] == 5 else (max(behind, default=3) - 3 + 1)
    assert failure["catch_up_shards"] == expected  # from then on never behind again
    # control arm: PD exactly 0 on every shard
    for shard in doc["intervals"][0]["shards"]:
        assert shard["pd"]["rel"] == 0.0 and shard["pd"]["abs"] == 0.0
        assert shard["pd_ci"]["rel"] == [0.0, 0.0]


def test_collisionless_tables_grow_through_the_stream_and_reach_the_json(tmp_path):
    cfg = _config(vary="init,data-order", **{"model.embedding": "collisionless:min_count=2"})
    opts, stream = _stream(cfg, sync_intervals=(1, 8))
    doc = run_online(cfg, opts, tmp_path / "run", stream=stream)
    assert [e["interval"] for e in doc["intervals"]] == [1, 8]
    shards = doc["intervals"][0]["shards"]
    rows = [s["table"]["rows_final"] for s in shards]
    assert rows == sorted(rows) and rows[-1] > rows[0]
    for s in shards:
        assert set(s) >= {"auc_online", "auc_batch", "logloss_online", "pd", "pd_ci"}
        assert s["synced_bytes"]["sparse"] > 0 and s["pd"]["rel"] > 0
        assert s["auc_gain"] == pytest.approx(s["auc_online"] - s["auc_batch"])
    fewer = doc["intervals"][1]
    assert fewer["sparse_syncs"] < doc["intervals"][0]["sparse_syncs"]
    saved = json.loads((tmp_path / "run/online.json").read_text())
    assert saved["intervals"][0]["mean_auc_gain"] == doc["intervals"][0]["mean_auc_gain"]


def _cli(out, *extra):
    return [
        sys.executable,
        "-m",
        "reprokit.cli",
        "online",
        "--synth-rows",
        "2400",
        "--replicas",
        "2",
        "--batch-size",
        "32",
        "--shards",
        "6",
        "--sync-intervals",
        "1,4",
        "--snapshot-every",
        "1",
        "--vary",
        "init,data-order",
        "--out",
        str(out),
        *extra,
    ]


def test_a_killed_run_resumes_bit_identically(tmp_path):
    whole = tmp_path / "whole"
    subprocess.run(_cli(whole), check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it once a unit has snapshots but is not finished
        if list((killed / "snapshots").glob("*.pt")) and not (killed / "online.json").exists():
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "online.json").exists()
    rerun = subprocess.run(_cli(killed), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    for unit in sorted((whole / "units").glob("*.npy")):
        assert np.array_equal(np.load(unit), np.load(killed / "units" / unit.name)), unit.name
    a = json.loads((whole / "online.json").read_text())
    b = json.loads((killed / "online.json").read_text())
    assert a == b


def test_bad_input_is_one_line(tmp_path):
    frame = pd.DataFrame({"u": ["a", "b"] * 50, "click": [0, 1] * 50})
    path = tmp_path / "d.parquet"
    write_dataset(frame, DatasetSchema(categorical=["u"], labels=["click"], example_id=None), path)
    runner = CliRunner()
    result = runner.invoke(app, ["online", "--data", str(path), "--out", str(tmp_path / "o")])
    assert "has no timestamp column" in one_error_line(result)
    for args, message in (
        (["--shards", "0"], "--shards must be at least 1"),
        (["--fail-at", "10"], "--fail-at must name a shard from 1 to 9"),
        (["--sync-intervals", "1,x"], "--sync-intervals must be comma-separated numbers"),
        (["--vary", "async"], "not available in online training"),
    ):
        result = runner.invoke(app, ["online", "--synth-rows", "600", *args])
        assert message in one_error_line(result), args


def test_a_failure_right_after_a_snapshot_says_it_lost_nothing(tmp_path):
    cfg = _config(vary="none")
    opts, stream = _stream(cfg, snapshot_every=1, fail_at=2)
    failure = run_online(cfg, opts, tmp_path / "run", stream=stream)["failure"]
    assert failure["lost_updates"] == 0 and "no update was lost" in failure["note"]
    assert all(s["delta"] == 0.0 for s in failure["shards"])


def test_projections_of_mixed_widths_sync_with_the_dense_weights():
    cfg = _config(**{"model.field_dims": {"c0": 2}})
    _, stream = _stream(cfg)
    enc = stream.encoded
    trainer = OnlineReplica(
        cfg, enc.vocab_sizes, enc.train_num.shape[1], 1, 0, replica_seeds(0, (), 0)
    )
    serve = ServingCopy(trainer)
    names = {n for n, _ in trainer.model.named_parameters() if n.startswith("embeddings.")}
    assert any("projections" in n for n in names)
    assert serve.sparse_names == {n for n in names if n.startswith("embeddings.tables.")}
