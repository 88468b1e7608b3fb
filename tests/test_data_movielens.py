"""MovieLens-100k in both layouts: a real copy (from RecBole's wheel) and tiny hand-written ones."""

from __future__ import annotations

from pathlib import Path

import movielens_cache
import numpy as np
import pandas as pd
import pytest
from movielens_cache import write_tiny_grouplens, write_tiny_recbole

from reprokit.data.movielens import detect_layout, load_movielens
from reprokit.errors import ReprokitError


@pytest.fixture(scope="session")
def movielens_recbole_dir() -> Path:
    """The full ml-100k in RecBole's atomic layout; skipped only when it cannot be downloaded."""
    directory = movielens_cache.movielens_dir()
    if directory is None:
        pytest.skip(f"no MovieLens-100k copy: {movielens_cache.last_error}")
    return directory


@pytest.fixture(scope="session")
def movielens_grouplens_dir(movielens_recbole_dir, tmp_path_factory) -> Path:
    """The same data converted to GroupLens u.data / u.user / u.item."""
    out = tmp_path_factory.mktemp("grouplens") / "ml-100k"
    return movielens_cache.write_grouplens_copy(movielens_recbole_dir, out)


@pytest.fixture(scope="session")
def movielens_full(movielens_recbole_dir):
    return load_movielens(movielens_recbole_dir)


def test_full_copy_facts(movielens_full):
    frame, schema = movielens_full.frame, movielens_full.schema
    assert len(frame) == 100_000
    assert int(frame["label"].sum()) == 55_375  # ratings 4 and 5
    assert frame["label"].mean() == pytest.approx(0.55375)
    assert schema.categorical == [
        "user_id",
        "item_id",
        "age",
        "gender",
        "occupation",
        "zip",
        "release_year",
        "genres",
    ]
    assert schema.numeric == [] and schema.labels == ["label", "label_5star"]
    assert schema.timestamp == "timestamp" and schema.example_id == "example_id"
    nunique = frame.nunique()
    assert nunique["user_id"] == 943 and nunique["item_id"] == 1682
    assert set(frame["age"]) == {1, 18, 25, 35, 45, 50, 56}
    assert set(frame["gender"]) == {"M", "F"}
    assert nunique["occupation"] == 21
    assert nunique["genres"] == 216
    assert frame["timestamp"].min() == 874724710 and frame["timestamp"].max() == 893286638
    assert frame.isna().sum().sum() == 0
    # the first rating of u.data: user 196, item 242 (Kolya, 1996, Comedy), rating 3
    first = frame.iloc[0]
    assert (first["user_id"], first["item_id"], first["label"]) == (196, 242, 0)
    assert (first["release_year"], first["genres"]) == (1996, "Comedy")


def test_grouplens_layout_reads_identically(movielens_grouplens_dir, movielens_full):
    assert detect_layout(movielens_grouplens_dir)[0] == "grouplens"
    grouplens = load_movielens(movielens_grouplens_dir)
    pd.testing.assert_frame_equal(grouplens.frame, movielens_full.frame)
    assert grouplens.schema == movielens_full.schema
    # a parent directory holding ml-100k/ is accepted too
    assert len(load_movielens(movielens_grouplens_dir.parent)) == 100_000


def test_recbole_layout_detected(movielens_recbole_dir):
    layout, directory, stem = detect_layout(movielens_recbole_dir / "ml-100k.inter")
    assert (layout, directory, stem) == ("recbole", movielens_recbole_dir, "ml-100k")


# ------------------------------------------------------------ tiny copies (no download)


@pytest.mark.parametrize("writer", [write_tiny_grouplens, write_tiny_recbole])
def test_tiny_copy_features(tmp_path, writer):
    ds = load_movielens(writer(tmp_path / "ml"))
    f = ds.frame
    assert f["example_id"].tolist() == [0, 1, 2, 3]
    assert f["label"].tolist() == [1, 0, 1, 0]
    assert f["label"].dtype == np.int8
    assert f["age"].tolist() == [18, 50, 18, 1]
    assert f["zip"].tolist() == ["8", "T", "8", "?"]
    assert f["release_year"].tolist() == [1995, 1995, 0, 1995]
    assert f["genres"].tolist() == ["Animation|Children's|Comedy", "Drama", "unknown", "Drama"]
    assert f["occupation"].tolist() == ["technician", "other", "technician", "student"]
    assert f["timestamp"].tolist() == [881250949, 881250950, 881250951, 881250952]


def test_tiny_layouts_agree(tmp_path):
    a = load_movielens(write_tiny_grouplens(tmp_path / "g"))
    b = load_movielens(write_tiny_recbole(tmp_path / "r"))
    pd.testing.assert_frame_equal(a.frame, b.frame)


def test_bad_movielens_paths(tmp_path):
    with pytest.raises(ReprokitError, match="not found"):
        load_movielens(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReprokitError, match="no MovieLens copy"):
        load_movielens(tmp_path / "empty")
    partial = write_tiny_grouplens(tmp_path / "partial")
    (partial / "u.item").unlink()
    with pytest.raises(ReprokitError, match="no u.item"):
        load_movielens(partial)
    broken = write_tiny_grouplens(tmp_path / "broken")
    (broken / "u.data").write_text("1\tx\t5\t881250949\n")
    with pytest.raises(ReprokitError, match="item id"):
        load_movielens(broken)
