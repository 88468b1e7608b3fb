"""`data import` inference and overrides, and `data describe`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from reprokit.data.describe import describe_dataset, describe_file, describe_table
from reprokit.data.importer import import_file, infer_dataset, read_table, split_names
from reprokit.data.layout import read_dataset
from reprokit.errors import ReprokitError


@pytest.fixture()
def clicks() -> pd.DataFrame:
    n = 3000
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "user_id": rng.integers(0, 2500, n),  # many ints, but an id by name
            "country": rng.choice(["de", "fr", "us", None], n),
            "price": rng.random(n),
            "views": (np.arange(n) // 2) * 7,  # 1500 ints (not one per row) -> numeric
            "is_mobile": rng.random(n) > 0.5,
            "slot": np.arange(n) % 5,  # low-cardinality ints -> categorical
            "when": pd.date_range("2021-03-01", periods=n, freq="min").astype(str),
            "click": rng.integers(0, 2, n),
        }
    )


def test_split_names():
    assert split_names(["a,b", "c", " b "]) == ["a", "b", "c"]
    assert split_names("x") == ["x"] and split_names(None) == []


def test_inference_of_roles(clicks, tmp_path):
    csv = tmp_path / "clicks.csv"
    clicks.to_csv(csv, index=False)
    out = tmp_path / "clicks.parquet"
    ds = import_file(csv, out, timestamp="when")
    s = ds.schema
    assert s.labels == ["click"]
    assert s.categorical == ["user_id", "country", "is_mobile", "slot"]
    assert s.numeric == ["price", "views"]
    assert ds.dropped == {} and ds.positive == {}
    assert s.example_id == "example_id" and s.timestamp == "when" and s.name == "clicks"
    assert ds.frame["example_id"].tolist() == list(range(len(clicks)))
    assert ds.frame["when"].dtype == np.int64
    assert ds.frame["when"].iloc[0] == pd.Timestamp("2021-03-01", tz="UTC").timestamp()
    assert ds.frame["click"].dtype == np.int8
    assert ds.frame["country"].isna().sum() == clicks["country"].isna().sum()
    back = read_dataset(out)
    assert back.schema == s
    pd.testing.assert_frame_equal(back.frame, ds.frame)


def test_overrides_and_max_categories(clicks):
    ds = infer_dataset(
        clicks,
        labels="click",
        categorical=["views"],
        numeric="slot",
        drop=["when", "price"],
        max_categories=1,
    )
    assert ds.schema.categorical == ["user_id", "country", "views", "is_mobile"]  # file order
    assert ds.schema.numeric == ["slot"]
    assert "when" not in ds.frame.columns and "price" not in ds.frame.columns
    ds = infer_dataset(clicks.drop(columns="when"), max_categories=10_000)
    assert "views" in ds.schema.categorical


def test_label_star_columns_and_existing_ids_and_timestamp():
    frame = pd.DataFrame(
        {
            "example_id": [10, 11, 12, 13],
            "timestamp": [4.0, 3.0, 2.0, 1.0],
            "c": ["a", "b", "a", "b"],
            "label": [0, 1, 1, 0],
            "label_like": [True, False, True, True],
        }
    )
    ds = infer_dataset(frame)
    assert ds.schema.labels == ["label", "label_like"]
    assert ds.schema.example_id == "example_id" and ds.schema.timestamp == "timestamp"
    assert ds.frame["example_id"].tolist() == [10, 11, 12, 13]
    assert ds.frame["timestamp"].dtype == np.int64
    assert ds.frame["label_like"].tolist() == [1, 0, 1, 1]


def test_label_threshold_binarises():
    frame = pd.DataFrame({"item": [1, 2, 3, 4], "rating": [1, 4, 5, 3]})
    with pytest.raises(ReprokitError, match="not binary.*--label-threshold"):
        infer_dataset(frame, labels="rating")
    ds = infer_dataset(frame, labels="rating", label_threshold=4)
    assert ds.frame["rating"].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize(
    "frame, options, message",
    [
        (pd.DataFrame({"a": [1, 2]}), {}, "no label column"),
        (pd.DataFrame({"a": [1, 2], "label": [0, np.nan]}), {}, "missing value"),
        (pd.DataFrame({"a": [1, 2], "label": ["x", "y"]}), {}, "--positive VALUE"),
        (pd.DataFrame({"a": [1, 2], "label": [0, 1]}), {"categorical": "nope"}, "'nope'"),
        (pd.DataFrame({"a": [1, 2], "label": [0, 1]}), {"labels": "nope"}, "--label"),
        (pd.DataFrame({"a": [1, 2], "label": [0, 1]}), {"timestamp": "b"}, "--timestamp"),
        (pd.DataFrame({"a": [1, 1], "label": [0, 1]}), {"example_id": "a"}, "unique"),
        (pd.DataFrame({"a": ["x", "y"], "label": [0, 1]}), {"numeric": "a"}, "non-numbers"),
        (pd.DataFrame({"a": ["x", "y"], "label": [0, 1]}), {"timestamp": "a"}, "nor dates"),
        (
            pd.DataFrame({"a": [1, 2], "label": [0, 1]}),
            {"categorical": "a", "numeric": "a"},
            "two roles",
        ),
    ],
)
def test_bad_imports_are_refused(frame, options, message):
    with pytest.raises(ReprokitError, match=message):
        infer_dataset(frame, **options)


def test_read_table_refusals(tmp_path):
    with pytest.raises(ReprokitError, match="not found"):
        read_table(tmp_path / "missing.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ReprokitError, match="empty"):
        read_table(empty)
    garbage = tmp_path / "bad.parquet"
    garbage.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ReprokitError, match="not a readable"):
        read_table(garbage)


def test_import_parquet_and_tsv(tmp_path):
    frame = pd.DataFrame({"k": ["a", "b", "a"], "v": [0.5, 1.5, 2.5], "y": [0, 1, 0]})
    frame.to_parquet(tmp_path / "x.parquet")
    frame.to_csv(tmp_path / "x.tsv", sep="\t", index=False)
    a = import_file(tmp_path / "x.parquet")
    b = import_file(tmp_path / "x.tsv")
    assert a.schema.labels == ["y"] and a.schema.categorical == ["k"]
    pd.testing.assert_frame_equal(a.frame, b.frame)
    with pytest.raises(ReprokitError, match="overwrite"):
        import_file(tmp_path / "x.parquet", tmp_path / "x.parquet")


def test_describe_document_and_table(tmp_path):
    frame = pd.DataFrame(
        {
            "u": ["a", "b", "a", None],
            "x": [1.0, np.nan, 3.0, 5.0],
            "timestamp": [100, 200, 300, 400],
            "label": [0, 1, 1, 1],
        }
    )
    ds = infer_dataset(frame, name="tiny")
    doc = describe_dataset(ds, "tiny.parquet")
    assert doc["schema_version"] == 1 and doc["kind"] == "data-describe"
    assert doc["rows"] == 4 and doc["name"] == "tiny"
    assert doc["columns"]["categorical"] == ["u"] and doc["columns"]["numeric"] == ["x"]
    assert doc["categorical"]["u"] == {"cardinality": 2, "top_share": 0.5, "missing": 1}
    assert doc["numeric"]["x"]["mean"] == pytest.approx(3.0)
    assert doc["numeric"]["x"]["missing"] == 1
    assert doc["labels"]["label"] == {"base_rate": 0.75, "positives": 3, "missing": 0}
    assert doc["timestamp"]["min"] == 100 and doc["timestamp"]["max"] == 400
    assert doc["timestamp"]["min_iso"].startswith("1970-01-01T00:01:40")
    assert doc["missing"] == {"example_id": 0, "u": 1, "x": 1, "timestamp": 0, "label": 0}
    table = describe_table(doc)
    assert table.row_count == 5  # example id, label, u, x, timestamp

    raw = tmp_path / "tiny.csv"
    frame.to_csv(raw, index=False)
    inferred = describe_file(raw)
    assert inferred["schema_source"] == "inferred" and inferred["rows"] == 4
    written = import_file(raw, tmp_path / "tiny.parquet")
    from_file = describe_file(tmp_path / "tiny.parquet")
    assert from_file["schema_source"] == "file"
    assert from_file["fingerprint"] == describe_dataset(written)["fingerprint"]
