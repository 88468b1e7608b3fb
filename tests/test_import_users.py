"""`data import` on files that look like a user's: text labels (--positive), ids of every kind,
row ids that are dropped, and training refusing an evaluation split too small to mean anything."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import DataConfig
from reprokit.data.encoding import encode
from reprokit.data.importer import (
    INDEX_COLUMN,
    UNIQUE_PER_ROW,
    import_file,
    infer_dataset,
    is_id_name,
)
from reprokit.data.layout import read_dataset, write_dataset
from reprokit.data.splits import MIN_EVAL_ROWS, load_training_data, split_dataset
from reprokit.data.synth import generate_dataset
from reprokit.errors import ReprokitError

runner = CliRunner()
BIG = 10**15  # ad ids beyond 32 bits (and beyond float32), as real ad systems have them


def _users_frame(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    """What pandas writes for an adult-like click log: text labels with the UCI file's leading
    space, ids as strings and as 64-bit ints, a row id `ID` and a `uuid`, unique per row."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "ID": np.arange(1, n + 1),
            "uuid": [f"{rng.integers(2**62):016x}-{i}" for i in range(n)],
            "user_id": [f"u{k}" for k in rng.integers(0, 300, n)],
            "adID": BIG + rng.integers(0, 400, n),
            "age": rng.integers(17, 90, n),
            "workclass": rng.choice([" Private", " State-gov", " Self-emp"], n),
            "hours": rng.random(n) * 60,
            "income": rng.choice([" <=50K", " >50K"], n, p=[0.75, 0.25]),
            "clicked": rng.choice(["yes", "no"], n, p=[0.3, 0.7]),
        }
    )


@pytest.fixture()
def users(tmp_path):
    frame = _users_frame()
    csv = tmp_path / "adult.csv"
    frame.to_csv(csv, index=False)
    return frame, csv


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- text labels
def test_positive_maps_one_value_to_1_after_stripping_whitespace(users, tmp_path):
    frame, csv = users
    out = tmp_path / "adult.parquet"
    ds = import_file(csv, out, labels="income", drop="clicked", positive=">50K")
    expected = [1 if v == " >50K" else 0 for v in frame["income"]]  # the raw CSV value
    assert ds.frame["income"].tolist() == expected
    assert ds.frame["income"].dtype == np.int8
    assert 0.2 < np.mean(expected) < 0.3
    assert ds.positive == {"income": [">50K"]}
    back = read_dataset(out)
    assert back.frame["income"].tolist() == expected
    # the value as the file spells it, with its space, means the same
    spaced = import_file(csv, labels="income", drop="clicked", positive=" >50K ")
    assert spaced.frame["income"].tolist() == expected


def test_yes_no_labels_and_two_labels_one_of_them_numeric(users):
    frame, _ = users
    frame = frame.assign(bought=(frame["age"] % 3 == 0).astype(int))
    ds = infer_dataset(frame, labels="clicked,bought", positive="yes", drop="income")
    assert ds.frame["clicked"].tolist() == (frame["clicked"] == "yes").astype(int).tolist()
    assert ds.frame["bought"].tolist() == frame["bought"].tolist()  # 0/1 already: kept as is
    assert ds.positive == {"clicked": ["yes"]}
    # and "no" as the positive class is the complement
    flipped = infer_dataset(frame, labels="clicked", positive="no", drop="income")
    assert (flipped.frame["clicked"] + ds.frame["clicked"]).eq(1).all()


def test_text_label_without_positive_is_refused_naming_column_and_values(users):
    frame, _ = users
    with pytest.raises(ReprokitError) as info:
        infer_dataset(frame, labels="income")
    message = str(info.value)
    assert "'income'" in message and "'<=50K'" in message and "'>50K'" in message
    assert "--positive VALUE" in message and message.count(". ") == 0


def test_many_distinct_text_values_are_shown_as_a_few_of_them():
    frame = pd.DataFrame({"x": np.arange(40) % 4, "grade": [f"g{i % 9}" for i in range(40)]})
    with pytest.raises(ReprokitError, match=r"5 of 9 distinct values: .*, \.\.\.\)"):
        infer_dataset(frame, labels="grade")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"labels": "clicked", "positive": "Yes"}, r"'Yes' does not occur.*did you mean 'yes'"),
        ({"labels": "income", "positive": "50K"}, r"'50K' does not occur in label column 'income'"),
        ({"labels": "clicked", "positive": "  "}, "needs a value"),
        ({"labels": "age", "positive": "yes"}, "applies to label columns that hold text"),
        ({"labels": "income", "label_threshold": 1}, "--label-threshold applies to numeric"),
    ],
)
def test_bad_positive_options_are_refused(users, options, message):
    frame, _ = users
    with pytest.raises(ReprokitError, match=message):
        infer_dataset(frame, **options)


def test_cli_import_with_positive_shows_mapping_and_dropped_ids(users, tmp_path):
    frame, csv = users
    out = tmp_path / "adult.parquet"
    result = runner.invoke(
        app,
        ["data", "import", str(csv), "--label", "income", "--positive", ">50K",
         "--drop", "clicked", "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["positive"] == {"income": [">50K"]}
    assert doc["dropped"] == {"ID": UNIQUE_PER_ROW, "uuid": UNIQUE_PER_ROW}
    expected_rate = float((frame["income"] == " >50K").mean())
    assert doc["labels"]["income"]["base_rate"] == pytest.approx(expected_rate)
    assert "label income: '>50K' → 1, every other value → 0" in result.stderr
    table_lines = [
        line for line in result.stderr.splitlines() if "dropped (unique per row)" in line
    ]
    assert len(table_lines) == 2 and "ID" in table_lines[0] and "uuid" in table_lines[1]
    assert "--positive" in runner.invoke(app, ["data", "import", "--help"]).stdout


def test_cli_text_label_without_positive_exits_2_with_one_sentence(users):
    _, csv = users
    result = runner.invoke(app, ["data", "import", str(csv), "--label", "clicked"])
    line = _one_error_line(result)
    assert "'clicked'" in line and "'no'" in line and "'yes'" in line and "--positive" in line
    result = runner.invoke(
        app, ["data", "import", str(csv), "--label", "clicked", "--positive", "maybe"]
    )
    assert "'maybe' does not occur" in _one_error_line(result)


# ------------------------------------------------------------------------------------- ids
@pytest.mark.parametrize(
    "name, id_like",
    [
        ("ID", True), ("Id", True), ("id", True), ("user_id", True), ("USER_ID", True),
        ("User_Id", True), ("id_user", True), ("ID_USER", True), ("adID", True),
        ("userId", True), ("ad2Id", True), ("user-id", True),
        ("paid", False), ("Paid", False), ("VALID", False), ("idle", False), ("ids", False),
        ("width", False), ("views", False), ("ID2", False), ("guid", False),
    ],
)  # fmt: skip
def test_id_name_rule(name, id_like):
    assert is_id_name(name) is id_like


@pytest.mark.parametrize("name", ["ID", "Id", "USER_ID", "id_user", "adID", "userId", "user_id"])
def test_many_valued_integer_id_columns_are_categorical(name):
    n = 600
    values = BIG + (np.arange(n) % 300)  # 300 distinct 64-bit ids, each twice
    frame = pd.DataFrame({name: values, "views": np.arange(n) % 300, "label": np.arange(n) % 2})
    ds = infer_dataset(frame, max_categories=100)
    assert ds.schema.categorical == [name] and ds.schema.numeric == ["views"]
    assert ds.frame[name].dtype == np.int64
    assert ds.frame[name].tolist() == values.tolist()  # exact, no float rounding


def test_64bit_and_string_ids_survive_the_file_and_encode_exactly(users, tmp_path):
    frame, csv = users
    ds = import_file(csv, tmp_path / "a.parquet", labels="income", positive=">50K")
    assert ds.schema.categorical == ["user_id", "adID", "age", "workclass", "clicked"]
    assert ds.schema.numeric == ["hours"]
    back = read_dataset(tmp_path / "a.parquet")
    assert back.frame["adID"].tolist() == frame["adID"].tolist()
    assert back.frame["user_id"].tolist() == frame["user_id"].tolist()
    train, ev = split_dataset(back, seed=1)
    enc = encode(train, ev)
    field = enc.field_names.index("adID")
    vocab = np.sort(train.frame["adID"].unique())  # train-only, sorted, indices from 1
    assert enc.vocab_sizes[field] == len(vocab) + 1  # + the out-of-vocabulary row 0
    expected = np.searchsorted(vocab, train.frame["adID"].to_numpy()) + 1
    assert np.array_equal(enc.train_cat[:, field], expected)


def test_an_id_column_with_missing_values_is_categorical_not_numeric():
    ids = [float(BIG + k % 5) if k % 7 else np.nan for k in range(70)]
    frame = pd.DataFrame({"user_id": ids, "score": np.linspace(0, 1, 70), "y": np.arange(70) % 2})
    ds = infer_dataset(frame, max_categories=1)
    assert ds.schema.categorical == ["user_id"] and ds.schema.numeric == ["score"]
    assert ds.frame["user_id"].dtype == "Int64"
    assert ds.frame["user_id"].isna().sum() == 10
    assert ds.frame["user_id"].dropna().astype(np.int64).min() == BIG


# ---------------------------------------------------------------------------- row ids
def test_unique_per_row_columns_are_dropped_and_reported(users):
    frame, _ = users
    ds = infer_dataset(frame, labels="income", positive=">50K", drop="clicked")
    assert ds.dropped == {"ID": UNIQUE_PER_ROW, "uuid": UNIQUE_PER_ROW}
    assert "ID" not in ds.frame.columns and "uuid" not in ds.frame.columns
    assert "hours" in ds.schema.numeric  # floats are distinct in every row too, but measurements


def test_naming_a_row_id_keeps_it():
    n = 100
    frame = pd.DataFrame(
        {
            "ID": np.arange(n),
            "uuid": [f"r{i}" for i in range(n)],
            "example_id": np.arange(n) * 3,
            "timestamp": np.arange(n) * 60,
            "label": np.arange(n) % 2,
        }
    )
    ds = infer_dataset(frame)
    assert ds.dropped == {"ID": UNIQUE_PER_ROW, "uuid": UNIQUE_PER_ROW}
    assert ds.schema.example_id == "example_id" and ds.schema.timestamp == "timestamp"
    kept = infer_dataset(frame, categorical="uuid", numeric="ID")
    assert kept.dropped == {}
    assert kept.schema.categorical == ["uuid"] and kept.schema.numeric == ["ID"]
    assert kept.frame["ID"].tolist() == list(range(n))


def test_distinct_integers_are_row_ids_only_when_id_named_or_consecutive(tmp_path):
    n = 300
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "row": rng.permutation(n) + 17,  # a shuffled row counter
            "fnlwgt": rng.choice(np.arange(10_000, 10**6), n, replace=False),  # distinct weights
            "order_id": rng.choice(np.arange(10**15, 10**15 + 10**6), n, replace=False),
            "label": np.arange(n) % 2,
        }
    )
    csv = tmp_path / "with_index.csv"
    frame.to_csv(csv)  # index=True: pandas adds an unnamed 0..n-1 column
    ds = import_file(csv)
    assert ds.dropped == {"Unnamed: 0": INDEX_COLUMN, "row": UNIQUE_PER_ROW,
                          "order_id": UNIQUE_PER_ROW}  # fmt: skip
    assert ds.schema.numeric == ["fnlwgt"] and ds.schema.categorical == []
    assert ds.frame["fnlwgt"].tolist() == frame["fnlwgt"].tolist()
    # distinct in every row, so numeric even where --max-categories would allow a category
    assert infer_dataset(frame, max_categories=10_000).schema.numeric == ["fnlwgt"]


def test_columns_that_repeat_a_value_or_miss_one_are_not_row_ids():
    frame = pd.DataFrame(
        {
            "a": [1, 2, 3, 3],
            "b": ["x", "y", None, "z"],
            "when": pd.date_range("2024-01-01", periods=4),
            "flag": [True, False, True, False],
            "label": [0, 1, 0, 1],
        }
    )
    assert infer_dataset(frame).dropped == {}


# ---------------------------------------------------------------------- too small to split
def _write(tmp_path, rows: int):
    ds = generate_dataset(rows, fields=2, cardinality=20, numeric=1, seed=1)
    return write_dataset(ds.frame, ds.schema, tmp_path / f"d{rows}.parquet")


@pytest.mark.parametrize(
    "rows, fraction, refused",
    [(247, 0.2, True), (248, 0.2, False), (200, 0.2, True), (200, 0.25, False), (97, 0.5, True)],
)
def test_training_refuses_an_evaluation_split_under_min_eval_rows(
    tmp_path, rows, fraction, refused
):
    path = _write(tmp_path, rows)
    n_eval = round(rows * fraction)
    assert (n_eval < MIN_EVAL_ROWS) is refused
    config = DataConfig(path=str(path), eval_fraction=fraction)
    if refused:
        with pytest.raises(ReprokitError) as info:
            load_training_data(config)
        assert str(info.value) == (
            f"{path} has {rows} rows; the evaluation split (fraction {fraction:g}) would hold "
            f"only {n_eval} rows, fewer than 50 — use more data or a larger --eval-fraction"
        )
    else:
        train, ev = load_training_data(config)
        assert len(ev) == n_eval and len(train) == rows - n_eval


def test_train_ensemble_on_too_small_data_exits_2_before_training(tmp_path):
    path = _write(tmp_path, 120)
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train-ensemble", "--data", str(path), "--replicas", "2", "--out", str(out)]
    )
    line = _one_error_line(result)
    assert "has 120 rows" in line and "only 24 rows, fewer than 50" in line
    assert not out.exists()
    result = runner.invoke(
        app, ["train-ensemble", "--synth-rows", "200", "--replicas", "2", "--out", str(out)]
    )
    line = _one_error_line(result)
    assert line.startswith("error: the built-in synthetic data has 200 rows")
    assert "--synth-rows" in line and not out.exists()


# ------------------------------------------------------------ defects from the user trial
def _csv(tmp_path, frame: pd.DataFrame, name: str = "f.csv", **to_csv):
    path = tmp_path / name
    frame.to_csv(path, **({"index": False} | to_csv))
    return path


def test_64bit_ids_with_missing_cells_keep_their_exact_values(tmp_path):
    """pandas reads an integer column with empty cells as float64: ids near 2**62 are 1,024
    apart as floats, so thousands of ids collapse into a handful of values."""
    n = 6000
    rng = np.random.default_rng(5)
    distinct = 4611686018427388840 + rng.choice(10**6, 2200, replace=False)
    ids = pd.array(rng.choice(distinct, n), dtype="Int64")
    ids[rng.random(n) < 0.05] = pd.NA
    frame = pd.DataFrame({"ad_id": ids, "label": rng.integers(0, 2, n)})
    out = tmp_path / "ads.parquet"
    ds = import_file(_csv(tmp_path, frame), out)
    assert ds.schema.categorical == ["ad_id"]
    back = read_dataset(out).frame["ad_id"]
    assert back.dtype == "Int64"
    assert back.isna().sum() == ids.isna().sum() > 200
    assert back.nunique() == pd.Series(ids).nunique() > 2000
    assert back.dropna().astype(np.int64).tolist() == [int(v) for v in ids if v is not pd.NA]
    # a missing id is one category of its own, not merged with any id
    train, ev = split_dataset(read_dataset(out), seed=0)
    enc = encode(train, ev)
    missing_rows = train.frame["ad_id"].isna().to_numpy()
    codes = enc.train_cat[:, 0]
    assert len(set(codes[missing_rows])) == 1
    assert codes[missing_rows][0] not in set(codes[~missing_rows])
    assert enc.vocab_sizes[0] == train.frame["ad_id"].nunique() + 2  # + missing + unseen


def test_categorical_and_id_named_columns_keep_text_exactly_as_written(tmp_path):
    zips = [f"{k:03d}" for k in range(50)] + [str(k) for k in range(50)]  # '007' and '7'
    frame = pd.DataFrame(
        {
            "zip": zips * 3,
            "store_id": [f"{k:05d}" for k in range(60)] * 5,
            "label": np.arange(300) % 2,
        }
    )
    csv = _csv(tmp_path, frame)
    ds = import_file(csv, categorical="zip")
    assert ds.frame["zip"].tolist() == frame["zip"].tolist()
    assert ds.frame["zip"].nunique() == 100
    assert ds.frame["store_id"].tolist() == frame["store_id"].tolist()  # id-named: text too
    assert ds.schema.categorical == ["zip", "store_id"]
    out = tmp_path / "z.parquet"
    result = runner.invoke(
        app, ["data", "import", str(csv), "--categorical", "zip", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["categorical"]["zip"]["cardinality"] == 100
    assert read_dataset(out).frame["zip"].tolist() == frame["zip"].tolist()


def _adult_mixed(n: int = 2000, seed: int = 2) -> pd.DataFrame:
    """UCI adult's train file spells the label ' >50K', its test file ' >50K.'."""
    rng = np.random.default_rng(seed)
    income = rng.choice([" >50K", " >50K.", " <=50K", " <=50K."], n, p=[0.3, 0.275, 0.25, 0.175])
    return pd.DataFrame({"age": rng.integers(17, 90, n), "income": income})


def test_another_spelling_of_the_positive_value_is_refused(tmp_path):
    csv = _csv(tmp_path, _adult_mixed())
    result = runner.invoke(
        app, ["data", "import", str(csv), "--label", "income", "--positive", ">50K"]
    )
    line = _one_error_line(result)
    assert "holds '>50K.', another spelling of --positive '>50K'" in line
    assert "--positive '>50K' --positive '>50K.'" in line and line.count(". ") == 0
    assert not (tmp_path / "f.reprokit.parquet").exists()


def test_a_one_vs_rest_label_of_three_classes_is_accepted(tmp_path):
    frame = pd.DataFrame(
        {"grade": ["A", "B", "C"] * 200, "x": np.arange(600) % 7, "uid": np.arange(600) % 50}
    )
    csv = _csv(tmp_path, frame)
    out = tmp_path / "g.parquet"
    result = runner.invoke(
        app, ["data", "import", str(csv), "--label", "grade", "--positive", "A", "--out", str(out)]
    )
    assert result.exit_code == 0, result.stderr
    assert read_dataset(out).frame["grade"].tolist() == [1, 0, 0] * 200


@pytest.mark.parametrize(
    "args", [["--positive", ">50K", "--positive", ">50K."], ["--positive", ">50K,>50K."]]
)
def test_several_positive_spellings_map_all_of_them_to_1(tmp_path, args):
    frame = _adult_mixed()
    csv = _csv(tmp_path, frame)
    out = tmp_path / "a.parquet"
    result = runner.invoke(
        app, ["data", "import", str(csv), "--label", "income", *args, "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.stderr
    expected = frame["income"].str.strip().isin([">50K", ">50K."]).astype(int)
    assert read_dataset(out).frame["income"].tolist() == expected.tolist()
    doc = json.loads(result.stdout)
    assert doc["labels"]["income"]["base_rate"] == pytest.approx(expected.mean())
    assert 0.5 < expected.mean() < 0.65
    assert doc["positive"] == {"income": [">50K", ">50K."]}
    assert "label income: '>50K', '>50K.' → 1, every other value → 0" in result.stderr


def test_a_positive_value_that_contains_a_comma_matches_as_a_whole():
    frame = pd.DataFrame({"x": np.arange(60) % 3, "answer": ["yes, sure", "no"] * 30})
    ds = infer_dataset(frame, labels="answer", positive="yes, sure")
    assert ds.frame["answer"].tolist() == [1, 0] * 30
    assert ds.positive == {"answer": ["yes, sure"]}
    with pytest.raises(ReprokitError, match="'maybe' does not occur in label column 'answer'"):
        infer_dataset(frame, labels="answer", positive="no,maybe")


def test_a_filtered_pandas_index_is_dropped_as_an_index(tmp_path):
    n = 900
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"price": rng.random(n), "label": rng.integers(0, 2, n)})
    csv = tmp_path / "filtered.csv"
    frame[frame.index % 3 != 0].to_csv(csv)  # index 1, 2, 4, 5, ...: not one consecutive range
    ds = import_file(csv)
    assert ds.dropped == {"Unnamed: 0": INDEX_COLUMN}
    assert ds.schema.numeric == ["price"] and ds.schema.categorical == []
    kept = import_file(csv, numeric="Unnamed: 0")
    assert kept.dropped == {} and kept.schema.numeric == ["Unnamed: 0", "price"]
    # an empty header name is an index column too
    blank = frame.rename_axis("").reset_index().rename(columns={"index": ""})
    assert infer_dataset(blank).dropped == {"": INDEX_COLUMN}
    result = runner.invoke(app, ["data", "import", str(csv), "--out", str(tmp_path / "o.pq")])
    assert result.exit_code == 0, result.stderr
    assert "dropped (index column written by pandas)" in result.stderr


def _events(n: int = 4000, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2020-01-01")
    return pd.DataFrame(
        {
            "ts": (start + pd.to_timedelta(rng.integers(0, 3650, n), unit="D")).strftime(
                "%Y-%m-%d"
            ),
            "event_time": (start + pd.to_timedelta(np.arange(n) * 61, unit="s")).strftime(
                "%Y-%m-%dT%H:%M:%S"
            ),
            "country": rng.choice(["de", "fr"], n),
            "label": rng.integers(0, 2, n),
        }
    )


@pytest.mark.parametrize("column", ["ts", "event_time"])
def test_a_single_date_column_becomes_the_timestamp(tmp_path, column):
    frame = _events().drop(columns=[c for c in ("ts", "event_time") if c != column])
    csv = _csv(tmp_path, frame)
    out = tmp_path / "e.parquet"
    result = runner.invoke(app, ["data", "import", str(csv), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    back = read_dataset(out)
    assert back.schema.timestamp == column
    assert column not in back.schema.categorical and back.schema.categorical == ["country"]
    seconds = [int(pd.Timestamp(v, tz="UTC").timestamp()) for v in frame[column]]
    assert back.frame[column].tolist() == seconds
    assert f"timestamp: {column} (ISO dates → seconds)" in result.stderr
    assert json.loads(result.stdout)["dropped"] == {}


def test_several_date_columns_are_kept_and_the_output_names_timestamp_option(tmp_path):
    frame = _events()
    csv = _csv(tmp_path, frame)
    result = runner.invoke(app, ["data", "import", str(csv), "--out", str(tmp_path / "o.pq")])
    assert result.exit_code == 0, result.stderr
    back = read_dataset(tmp_path / "o.pq")
    assert back.schema.timestamp is None
    assert back.schema.categorical == ["ts", "event_time", "country"]  # kept as they are
    assert back.frame["event_time"].tolist() == frame["event_time"].tolist()
    assert "--timestamp COL" in result.stderr and "ts, event_time" in result.stderr
    chosen = import_file(csv, timestamp="event_time")
    assert chosen.dropped == {} and chosen.schema.timestamp == "event_time"
    assert chosen.schema.categorical == ["ts", "country"]


def test_infinite_values_in_a_numeric_feature_are_refused(tmp_path):
    x = np.linspace(0.03298, 1, 200)
    x[[3, 50, 77]] = [np.inf, -np.inf, np.inf]
    csv = _csv(tmp_path, pd.DataFrame({"x": x, "label": np.arange(200) % 2}))
    result = runner.invoke(app, ["data", "import", str(csv)])
    line = _one_error_line(result)
    assert "'x'" in line and "3 infinite value(s)" in line
    with pytest.raises(ReprokitError, match="'x' has 3 infinite"):
        import_file(csv)


def test_duplicate_example_id_error_shows_plain_values(tmp_path):
    long = pd.DataFrame(
        {
            "example_id": [0, 1, 2, 0, 1, 2, 0],
            "replica": ["a", "a", "a", "b", "b", "b", "b"],
            "prediction": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.4],
        }
    )
    result = runner.invoke(app, ["pd", str(_csv(tmp_path, long)), "--format", "long"])
    line = _one_error_line(result)
    assert "1 duplicate example_id row(s), e.g. example_id 0" in line
    assert "np." not in line
