"""The executor interface: batches of replicas go out, records come back, the driver writes."""

from __future__ import annotations

import json

import pytest

from reprokit.config import resolve_config
from reprokit.runners.ensemble import train_ensemble
from reprokit.runners.executors import LocalExecutor

TINY = {"data.synth_rows": 2000, "optim.epochs": 1, "model.hidden": "8", "replicas": 3}


class RecordingExecutor(LocalExecutor):
    """Runs in this process like LocalExecutor and records what it was asked to run."""

    def __init__(self) -> None:
        super().__init__(workers=1)
        self.batches: list[list[int]] = []
        self.records: list[int] = []

    def run(self, task, payload, batches):
        self.batches.extend(batches)
        assert not hasattr(payload, "run_dir")  # a task gets no access to the run directory
        for record in super().run(task, payload, batches):
            self.records.append(record.replica)
            yield record


@pytest.mark.parametrize(
    "engine, expected", [("process", [[0], [1], [2]]), ("vectorized", [[0, 1, 2]])]
)
def test_batches_per_engine_and_the_driver_writes_every_record(tmp_path, engine, expected):
    config = resolve_config(None, {**TINY, "engine": engine})
    executor = RecordingExecutor()
    summary = train_ensemble(config, out=tmp_path / "run", executor=executor)
    assert executor.batches == expected and sorted(executor.records) == [0, 1, 2]
    assert summary["replicas"] == 3
    for r in range(3):
        metrics = json.loads(
            (tmp_path / "run" / "replicas" / f"{r:03d}" / "metrics.json").read_text()
        )
        assert metrics["replica"] == r
    # resume: nothing left to train, so no batch goes out
    again = RecordingExecutor()
    train_ensemble(config, out=tmp_path / "run", executor=again)
    assert again.batches == []


def test_the_summary_accounts_for_the_embedding_table(tmp_path):
    import numpy as np

    from reprokit.runners.ensemble import load_run_data

    table = resolve_config(None, {**TINY, "replicas": 2})
    summary = train_ensemble(table, out=tmp_path / "t")
    assert summary["embedding"]["kind"] == "table" and summary["embedding"]["collision_rate"] == 0
    one = resolve_config(None, {**TINY, "replicas": 2, "model.embedding": "hashed:buckets=1"})
    summary = train_ensemble(one, out=tmp_path / "h")
    encoded, _ = load_run_data(one)
    block = summary["embedding"]
    assert block["kind"] == "hashed:buckets=1,seed=0"
    assert block["params"] == len(encoded.field_names) * one.model.embedding_dim
    for f, name in enumerate(encoded.field_names):
        ids = np.unique(encoded.train_cat[:, f])
        distinct = int((ids > 0).sum())
        assert block["field_collision_rate"][name] == pytest.approx(1 - 1 / distinct)
