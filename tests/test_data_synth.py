"""The synthetic CTR generator: determinism, Zipf skew, base rate, drift, tasks, round-trip."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprokit.data.layout import dataset_fingerprint, read_dataset, write_dataset
from reprokit.data.synth import generate_dataset, label_names, synth_frame
from reprokit.errors import ReprokitError


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a, schema_a = synth_frame(5000, fields=4, cardinality=200, numeric=3, seed=7)
    b, schema_b = synth_frame(5000, fields=4, cardinality=200, numeric=3, seed=7)
    c, _ = synth_frame(5000, fields=4, cardinality=200, numeric=3, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert schema_a == schema_b
    assert not a["c0"].equals(c["c0"])
    assert not a["label"].equals(c["label"])
    write_dataset(a, schema_a, tmp_path / "a.parquet")
    write_dataset(b, schema_b, tmp_path / "b.parquet")
    write_dataset(c, schema_a, tmp_path / "c.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert (tmp_path / "a.parquet").read_bytes() != (tmp_path / "c.parquet").read_bytes()


def test_columns_dtypes_and_schema():
    frame, schema = synth_frame(1000, fields=3, cardinality=[10, 20, 30], numeric=2, tasks=3)
    expected = ["example_id", "c0", "c1", "c2", "n0", "n1", "timestamp"]
    assert list(frame.columns) == [*expected, "label", "label_1", "label_2"]
    assert schema.categorical == ["c0", "c1", "c2"]
    assert schema.numeric == ["n0", "n1"]
    assert schema.labels == label_names(3) == ["label", "label_1", "label_2"]
    assert schema.timestamp == "timestamp" and schema.example_id == "example_id"
    assert frame["example_id"].tolist() == list(range(1000))
    assert all(frame[c].dtype == np.int64 for c in ["c0", "c1", "c2", "timestamp"])
    assert all(frame[c].dtype == np.float32 for c in ["n0", "n1"])
    assert all(frame[c].dtype == np.int8 for c in schema.labels)
    for col, card in zip(schema.categorical, [10, 20, 30], strict=True):
        assert frame[col].between(0, card - 1).all()
    assert set(np.unique(frame["label"])) <= {0, 1}


def test_no_timestamp_option():
    frame, schema = synth_frame(100, timestamp=False)
    assert "timestamp" not in frame.columns and schema.timestamp is None


def test_zipf_skew():
    frame, _ = synth_frame(50_000, fields=1, cardinality=1000, numeric=0, zipf_exponent=1.1)
    counts = frame["c0"].value_counts()
    assert counts.iloc[0] > 50 * counts.median()
    # the most frequent id is a permuted rank, not simply id 0 for every field
    flat, _ = synth_frame(50_000, fields=1, cardinality=1000, numeric=0, zipf_exponent=0.0)
    flat_counts = flat["c0"].value_counts()
    assert flat_counts.iloc[0] < 3 * flat_counts.median()  # exponent 0 = uniform


@pytest.mark.parametrize("target", [0.05, 0.2, 0.5])
def test_base_rate_close_to_target(target):
    frame, _ = synth_frame(40_000, base_rate=target, tasks=2, seed=3)
    tol = 4 * np.sqrt(target * (1 - target) / 40_000) + 0.002
    assert abs(frame["label"].mean() - target) < tol
    assert abs(frame["label_1"].mean() - target) < tol


def test_labels_depend_on_features():
    """The teacher makes labels learnable: the click rate differs a lot between frequent ids."""
    frame, _ = synth_frame(40_000, fields=2, cardinality=50, numeric=2, noise=0.0, seed=1)
    rates = frame.groupby("c0")["label"].agg(["mean", "size"])
    rates = rates[rates["size"] > 300]["mean"]
    assert rates.max() - rates.min() > 0.1


def test_drift_moves_the_teacher_over_time():
    kwargs = dict(rows=40_000, fields=3, cardinality=30, numeric=2, noise=0.0, seed=5)
    still, _ = synth_frame(**kwargs, drift=0.0)
    moved, _ = synth_frame(**kwargs, drift=1.0)
    early = still["timestamp"] < still["timestamp"].quantile(0.2)
    late = still["timestamp"] > still["timestamp"].quantile(0.8)
    # the features are identical (separate random streams); only the labels move
    pd.testing.assert_frame_equal(still.drop(columns="label"), moved.drop(columns="label"))
    agree_early = (still["label"][early] == moved["label"][early]).mean()
    agree_late = (still["label"][late] == moved["label"][late]).mean()
    assert agree_early > agree_late + 0.03


def test_tasks_are_distinct_but_correlated():
    frame, _ = synth_frame(20_000, tasks=2, noise=0.0, seed=2)
    assert not frame["label"].equals(frame["label_1"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(rows=0), "at least 1 row"),
        (dict(base_rate=1.0), "base rate"),
        (dict(fields=2, cardinality=[3, 4, 5]), "cardinalities"),
        (dict(tasks=0), "tasks"),
        (dict(cardinality=0), "cardinality"),
        (dict(fields=0, numeric=0), "at least one feature"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ReprokitError, match=message):
        synth_frame(**kwargs)


def test_schema_round_trip(tmp_path):
    dataset = generate_dataset(500, fields=2, cardinality=5, numeric=1, seed=4, tasks=2)
    path = write_dataset(dataset.frame, dataset.schema, tmp_path / "d" / "synth.parquet")
    back = read_dataset(path)
    assert back.schema == dataset.schema
    pd.testing.assert_frame_equal(back.frame, dataset.frame)
    assert dataset_fingerprint(back) == dataset_fingerprint(dataset)
    changed = back.frame.copy()
    changed.loc[0, "n0"] += 1
    assert dataset_fingerprint(type(back)(changed, back.schema)) != dataset_fingerprint(back)
