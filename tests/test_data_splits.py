"""Train/eval splits, load_training_data, and the train-only encoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from reprokit.config import DataConfig
from reprokit.data.encoding import encode, load_encoded
from reprokit.data.layout import Dataset, DatasetSchema, write_dataset
from reprokit.data.splits import load_training_data, split_dataset
from reprokit.data.synth import generate_dataset
from reprokit.errors import ReprokitError


@pytest.fixture(scope="module")
def synth():
    return generate_dataset(2000, fields=3, cardinality=300, numeric=2, seed=11)


def ids(ds: Dataset) -> np.ndarray:
    return ds.frame["example_id"].to_numpy()


@pytest.mark.parametrize("method", ["random", "temporal"])
def test_split_is_disjoint_complete_and_repeatable(synth, method):
    train, ev = split_dataset(synth, method=method, eval_fraction=0.25, seed=3)
    assert len(ev) == 500 and len(train) == 1500
    assert not set(ids(train)) & set(ids(ev))
    assert set(ids(train)) | set(ids(ev)) == set(ids(synth))
    train2, ev2 = split_dataset(synth, method=method, eval_fraction=0.25, seed=3)
    pd.testing.assert_frame_equal(ev.frame, ev2.frame)
    pd.testing.assert_frame_equal(train.frame, train2.frame)
    assert ev.schema == synth.schema


def test_random_split_sorted_by_id_and_independent_of_row_order(synth):
    train, ev = split_dataset(synth, seed=5)
    assert np.all(np.diff(ids(ev)) > 0) and np.all(np.diff(ids(train)) > 0)
    shuffled = Dataset(synth.frame.sample(frac=1.0, random_state=0), synth.schema)
    _, ev_shuffled = split_dataset(shuffled, seed=5)
    np.testing.assert_array_equal(ids(ev_shuffled), ids(ev))
    _, ev_other_seed = split_dataset(synth, seed=6)
    assert not np.array_equal(ids(ev_other_seed), ids(ev))


def test_temporal_split_puts_the_latest_rows_in_eval_with_id_tiebreak():
    frame = pd.DataFrame(
        {
            "example_id": [5, 3, 9, 1, 7, 2],
            "c0": [1, 2, 3, 4, 5, 6],
            "timestamp": [10, 30, 20, 30, 40, 5],
            "label": [0, 1, 0, 1, 0, 1],
        }
    )
    schema = DatasetSchema(categorical=["c0"], timestamp="timestamp")
    train, ev = split_dataset(Dataset(frame, schema), method="temporal", eval_fraction=0.5)
    # order by (time, id): (5,2) (10,5) (20,9) (30,1) (30,3) (40,7)
    assert ids(train).tolist() == [2, 5, 9]
    assert ids(ev).tolist() == [1, 3, 7]
    assert train.frame["timestamp"].max() <= ev.frame["timestamp"].min()


def test_temporal_split_needs_a_timestamp():
    ds = generate_dataset(100, timestamp=False)
    with pytest.raises(ReprokitError, match="timestamp"):
        split_dataset(ds, method="temporal")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="kfold"), "unknown split"),
        (dict(eval_fraction=0.0), "fraction"),
        (dict(eval_fraction=1.0), "fraction"),
    ],
)
def test_bad_split_arguments(synth, kwargs, message):
    with pytest.raises(ReprokitError, match=message):
        split_dataset(synth, **kwargs)


def test_duplicate_example_ids_are_refused(synth):
    frame = synth.frame.copy()
    frame.loc[1, "example_id"] = frame.loc[0, "example_id"]
    with pytest.raises(ReprokitError, match="unique"):
        split_dataset(Dataset(frame, synth.schema))


def test_split_creates_example_id_when_schema_has_none():
    frame = pd.DataFrame({"c0": range(10), "label": [0, 1] * 5})
    schema = DatasetSchema(categorical=["c0"], example_id=None)
    train, ev = split_dataset(Dataset(frame, schema), eval_fraction=0.3)
    assert ev.schema.example_id == "example_id"
    assert sorted([*ids(train), *ids(ev)]) == list(range(10))


def test_load_training_data_builtin_synthetic_uses_config():
    config = DataConfig(synth_rows=1000, synth_fields=2, synth_numeric=1, synth_cardinality=50)
    train, ev = load_training_data(config)
    assert len(train) == 800 and len(ev) == 200
    assert train.schema.categorical == ["c0", "c1"] and train.schema.numeric == ["n0"]
    again_train, again_ev = load_training_data(config)
    pd.testing.assert_frame_equal(ev.frame, again_ev.frame)
    _, temporal_ev = load_training_data(dataclasses.replace(config, split="temporal"))
    assert temporal_ev.frame["timestamp"].min() >= train.frame["timestamp"].quantile(0.5)


def test_load_training_data_from_file_and_label_selection(tmp_path):
    ds = generate_dataset(300, fields=2, cardinality=20, numeric=1, tasks=2)
    path = write_dataset(ds.frame, ds.schema, tmp_path / "two.parquet")
    train, _ = load_training_data(DataConfig(path=str(path)))
    assert train.schema.labels == ["label"]  # the schema's first label by default
    train, _ = load_training_data(DataConfig(path=str(path), label="label_1"))
    assert train.schema.labels == ["label_1"]
    with pytest.raises(ReprokitError, match="not a label"):
        load_training_data(DataConfig(path=str(path), label="clicks"))


def test_load_training_data_refuses_raw_files(tmp_path):
    csv = tmp_path / "raw.csv"
    pd.DataFrame({"a": [1, 2], "label": [0, 1]}).to_csv(csv, index=False)
    with pytest.raises(ReprokitError, match="reprokit data import"):
        load_training_data(DataConfig(path=str(csv)))
    raw_parquet = tmp_path / "raw.parquet"
    pd.DataFrame({"a": [1, 2], "label": [0, 1]}).to_parquet(raw_parquet)
    with pytest.raises(ReprokitError, match="reprokit data import"):
        load_training_data(DataConfig(path=str(raw_parquet)))
    with pytest.raises(ReprokitError, match="not found"):
        load_training_data(DataConfig(path=str(tmp_path / "missing.parquet")))


# ---------------------------------------------------------------- encoding


def _pair():
    schema = DatasetSchema(categorical=["u", "s"], numeric=["x"], labels=["label", "label_1"])
    train = pd.DataFrame(
        {
            "example_id": [0, 1, 2, 3],
            "u": [30, 10, 20, 10],
            "s": ["b", None, "a", "b"],
            "x": [1.0, 3.0, np.nan, 5.0],
            "label": [0, 1, 0, 1],
            "label_1": [1, 1, 0, 0],
        }
    )
    ev = pd.DataFrame(
        {
            "example_id": [7, 8, 9],
            "u": [20, 99, 30],
            "s": ["c", "a", None],
            "x": [3.0, np.nan, 7.0],
            "label": [1, 0, 1],
            "label_1": [0, 0, 1],
        }
    )
    return Dataset(train, schema), Dataset(ev, schema)


def test_encoding_vocab_from_train_only_with_oov_and_missing():
    train, ev = _pair()
    enc = encode(train, ev)
    # u: sorted train values 10, 20, 30 -> 1, 2, 3; 99 unseen in train -> 0 (OOV)
    assert enc.train_cat[:, 0].tolist() == [3, 1, 2, 1]
    assert enc.eval_cat[:, 0].tolist() == [2, 0, 3]
    # s: 'a' -> 1, 'b' -> 2, null seen in train -> 3; 'c' unseen -> 0
    assert enc.train_cat[:, 1].tolist() == [2, 3, 1, 2]
    assert enc.eval_cat[:, 1].tolist() == [0, 1, 3]
    assert enc.vocab_sizes == [4, 4]
    assert enc.train_cat.max(axis=0).tolist() < enc.vocab_sizes
    assert enc.eval_oov_rate() == pytest.approx([1 / 3, 1 / 3])
    assert enc.field_names == ["u", "s"] and enc.numeric_names == ["x"]
    assert enc.label_names == ["label", "label_1"]
    assert enc.train_y.shape == (4, 2) and enc.train_y.dtype == np.float32
    assert enc.eval_y[:, 1].tolist() == [0, 0, 1]
    assert enc.eval_example_id.tolist() == [7, 8, 9]
    assert enc.train_cat.dtype == np.int64 and enc.train_num.dtype == np.float32


def test_encoding_standardises_with_training_statistics():
    train, ev = _pair()
    enc = encode(train, ev, labels=["label"])
    mean, std = 3.0, np.std([1.0, 3.0, 5.0])
    np.testing.assert_allclose(enc.train_num[:, 0], [(1 - mean) / std, 0, 0, (5 - mean) / std])
    np.testing.assert_allclose(enc.eval_num[:, 0], [0, 0, (7 - mean) / std], rtol=1e-6)
    assert enc.train_y.shape == (4, 1)


def test_encoding_null_unseen_in_train_is_oov():
    train, ev = _pair()
    train.frame["s"] = train.frame["s"].fillna("a")
    enc = encode(train, ev)
    assert enc.vocab_sizes[1] == 3
    assert enc.eval_cat[:, 1].tolist() == [0, 1, 0]


def test_encoding_min_count_sends_rare_values_to_oov():
    train, ev = _pair()
    enc = encode(train, ev, min_count=2)
    # u: only 10 occurs twice in training; s: only 'b' does, and the single null is rare too
    assert enc.vocab_sizes == [2, 2]
    assert enc.train_cat[:, 0].tolist() == [0, 1, 0, 1]
    assert enc.train_cat[:, 1].tolist() == [1, 0, 0, 1]
    assert enc.eval_cat[:, 0].tolist() == [0, 0, 0]
    with pytest.raises(ReprokitError, match="min_count"):
        encode(train, ev, min_count=0)


def test_encoding_refuses_missing_labels():
    train, ev = _pair()
    ev.frame["label"] = ev.frame["label"].astype(float)
    ev.frame.loc[0, "label"] = np.nan
    with pytest.raises(ReprokitError, match="missing label"):
        encode(train, ev)


def test_load_encoded_on_synthetic():
    enc = load_encoded(DataConfig(synth_rows=2000, synth_fields=3, synth_cardinality=500))
    assert enc.train_cat.shape == (1600, 3) and enc.eval_cat.shape == (400, 3)
    assert enc.label_names == ["label"] and enc.train_y.shape == (1600, 1)
    assert all(v <= 501 for v in enc.vocab_sizes)
    # Zipf tails: some eval ids never occur in training and land in the OOV row
    assert max(enc.eval_oov_rate()) > 0
