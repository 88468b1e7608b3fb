"""`reprokit pd FILE` end to end: long/wide, parquet/CSV, JSON, and every bad input (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.commands.pd import render_summary_table
from reprokit.errors import ReprokitError
from reprokit.predictions import load_predictions

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, ["pd", *map(str, args)])


def wide_frame(m: int = 4, n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.random(n) * 0.6
    df = pd.DataFrame({"example_id": rng.permutation(n) + 1000})  # unsorted ids
    df["label"] = (rng.random(n) < base).astype(float)
    for r in range(m):
        df[f"replica_{r}"] = np.clip(base + rng.normal(0, 0.03, n), 0.001, 0.999)
    return df


def long_frame(wide: pd.DataFrame) -> pd.DataFrame:
    reps = [c for c in wide.columns if c.startswith("replica_")]
    long = wide.melt(id_vars=["example_id", "label"], value_vars=reps, var_name="replica")
    long = long.rename(columns={"value": "prediction"})
    return long.sample(frac=1.0, random_state=1).reset_index(drop=True)  # shuffled rows


def expected_abs(wide: pd.DataFrame) -> float:
    """mean over pairs of mean |p_i - p_j|, computed straight from the frame."""
    cols = [c for c in wide.columns if c.startswith("replica_")]
    vals = [
        np.mean(np.abs(wide[a].to_numpy() - wide[b].to_numpy()))
        for i, a in enumerate(cols)
        for b in cols[i + 1 :]
    ]
    return float(np.mean(vals))


def assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""


@pytest.mark.parametrize("layout", ["wide", "long"])
@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_pd_json_for_each_layout_and_file_type(tmp_path, layout, suffix):
    wide = wide_frame()
    frame = wide if layout == "wide" else long_frame(wide)
    path = tmp_path / f"preds.{suffix}"
    if suffix == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    result = invoke(path, "--json", "--resamples", 300)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and doc["kind"] == "pd"
    assert doc["replicas"] == 4 and doc["examples"] == 300
    assert doc["pd"]["abs"] == pytest.approx(expected_abs(wide), rel=1e-9)
    from sklearn.metrics import roc_auc_score

    ordered = wide.sort_values("example_id")
    auc0 = roc_auc_score(ordered["label"], ordered["replica_0"])
    assert doc["auc"]["per_replica"][0] == pytest.approx(auc0, abs=1e-12)
    assert "abs_mean" in result.stderr and "AUC" in result.stderr  # the Rich table


def test_pd_without_json_prints_table_only(tmp_path):
    path = tmp_path / "w.parquet"
    wide_frame().drop(columns="label").to_parquet(path)
    result = invoke(path, "--threshold", 0.3, "--format", "wide")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "flip (t=0.3)" in result.stderr and "AUC" not in result.stderr


def test_pd_warns_when_auc_undefined(tmp_path):
    df = wide_frame()
    df["label"] = 1.0
    path = tmp_path / "w.parquet"
    df.to_parquet(path)
    result = invoke(path, "--json")
    assert result.exit_code == 0
    assert "warning: AUC is undefined: the labels contain only one class" in result.stderr
    assert json.loads(result.stdout)["auc"]["mean"] is None


def test_help_has_example():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "reprokit pd preds.parquet" in result.stdout


def test_subprocess_json(tmp_path):
    path = tmp_path / "preds.parquet"
    long_frame(wide_frame(m=3, n=200)).to_parquet(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "reprokit.cli", "pd", str(path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "pd" and doc["replicas"] == 3 and doc["examples"] == 200
    assert len(doc["pd_per_pair"]["rel"]) == 3
    assert "Traceback" not in proc.stderr


def test_load_predictions_aligns_long_on_example_id(tmp_path):
    wide = wide_frame(m=3, n=50)
    path = tmp_path / "l.parquet"
    long_frame(wide).to_parquet(path)
    data = load_predictions(path)
    ordered = wide.sort_values("example_id")
    assert data.replicas == ["replica_0", "replica_1", "replica_2"]
    np.testing.assert_array_equal(data.example_ids, ordered["example_id"].to_numpy())
    np.testing.assert_array_equal(data.predictions[1], ordered["replica_1"].to_numpy())
    np.testing.assert_array_equal(data.labels, ordered["label"].to_numpy())
    replicas, ids, matrix, labels = load_predictions(path, format="long")  # unpacks as a tuple
    assert matrix.shape == (3, 50) and labels is not None


def test_numeric_replica_values_sorted_numerically(tmp_path):
    rows = [
        {"example_id": e, "replica": r, "prediction": 0.1 * (r % 5 + 1)}
        for r in (10, 2, 1)
        for e in range(3)
    ]
    path = tmp_path / "l.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = load_predictions(path)
    assert data.replicas == ["1", "2", "10"] and data.labels is None
    np.testing.assert_allclose(data.predictions[:, 0], [0.2, 0.3, 0.1])


def test_wide_ignores_non_numeric_and_extra_label_columns(tmp_path):
    df = wide_frame(m=2, n=20)
    df["user"] = "u"
    df["label_2"] = 0.0
    path = tmp_path / "w.csv"
    df.to_csv(path, index=False)
    data = load_predictions(path)
    assert data.replicas == ["replica_0", "replica_1"]


def test_render_summary_table_from_json_document():
    doc = {
        "replicas": 2,
        "examples": 10,
        "pd": {"abs": 0.1, "rel": 0.2, "flip": 0.0},
        "pd_ci": {"abs": [None, None], "rel": [0.1, 0.3], "level": 0.9, "method": "m"},
        "flip_threshold": 0.5,
        "auc": {"mean": 0.7, "std": None, "per_replica": [0.7], "ensemble": 0.71},
    }
    table = render_summary_table(doc, title="t")
    assert table.row_count == 4
    assert [c.header for c in table.columns][2] == "90% CI"


# ---- bad inputs: exit 2, exactly one line on stderr ------------------------------------------


def write(tmp_path: Path, df: pd.DataFrame, name: str = "p.parquet") -> Path:
    path = tmp_path / name
    if name.endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path)
    return path


def bad_cases():
    wide = wide_frame(m=3, n=20)
    long = long_frame(wide)

    def nan_pred(df):
        df = df.copy()
        df.loc[[1, 5], "replica_1"] = np.nan
        return df

    def out_of_range(df):
        df = df.copy()
        df.loc[[2, 3, 4], "replica_2"] = 1.5
        return df

    def long_out_of_range(df):
        df = df.copy()
        df.loc[df["replica"] == "replica_0", "prediction"] = -0.1
        return df

    def dup_wide(df):
        df = df.copy()
        df.loc[3, "example_id"] = df.loc[4, "example_id"]
        return df

    def dup_long(df):
        return pd.concat([df, df[df["replica"] == "replica_1"].head(2)], ignore_index=True)

    def mismatch(df):
        drop = df[(df["replica"] == "replica_2")].index[:2]
        return df.drop(index=drop)

    def label_disagree(df):
        df = df.copy()
        first = df[df["replica"] == "replica_1"].index[0]
        df.loc[first, "label"] = 1.0 - df.loc[first, "label"]
        return df

    return [
        ("nan", nan_pred(wide), [], "replica 'replica_1'", "2 missing"),
        ("range", out_of_range(wide), [], "replica 'replica_2'", "3 predictions outside [0, 1]"),
        ("long-range", long_out_of_range(long), [], "replica 'replica_0'", "20 predictions"),
        ("dup-wide", dup_wide(wide), [], "example_id", "1 duplicate"),
        ("dup-long", dup_long(long), [], "replica 'replica_1'", "2 duplicate example_id"),
        ("mismatch", mismatch(long), [], "different examples", "replica 'replica_2' has 18"),
        ("labels", label_disagree(long), [], "labels disagree", "1 example"),
        ("one-replica", wide[["example_id", "replica_0"]], [], "1 numeric replica", "at least 2"),
        (
            "one-replica-long",
            long[long["replica"] == "replica_0"],
            [],
            "1 replica(s)",
            "at least 2",
        ),
        ("no-id", wide.drop(columns="example_id"), [], "lacks column 'example_id'", "wide"),
        ("long-missing", wide, ["--format", "long"], "lacks column(s) 'replica'", "'prediction'"),
        ("bad-format", wide, ["--format", "tall"], "--format must be", "tall"),
        ("bad-threshold", wide, ["--threshold", "1.5"], "--threshold", "between 0 and 1"),
        ("bad-seed", wide, ["--seed", "-1"], "--seed must be >= 0", "got -1"),
        ("bad-resamples", wide, ["--resamples", "0"], "--resamples must be positive", "got 0"),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    _, frame, extra, fragment, fragment2 = case
    path = write(tmp_path, frame)
    result = invoke(path, *extra)
    assert_one_line_error(result, fragment)
    assert fragment2 in result.stderr


def test_bad_files(tmp_path):
    assert_one_line_error(invoke(tmp_path / "nope.parquet"), "file not found")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet at all \x00\x01")
    assert_one_line_error(invoke(garbage), "cannot read")
    binary = tmp_path / "bin.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    assert_one_line_error(invoke(binary), "cannot read")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_one_line_error(invoke(empty), "cannot read")
    header_only = tmp_path / "header.csv"
    header_only.write_text("example_id,replica,prediction\n")
    assert_one_line_error(invoke(header_only), "has no rows")
    assert_one_line_error(invoke(tmp_path), "is a directory")
    text = tmp_path / "text.csv"
    text.write_text("example_id,a,b\n1,0.1,x\n2,0.2,0.3\n")
    assert_one_line_error(invoke(text), "1 numeric replica column")


def test_parquet_with_example_id_as_the_index(tmp_path):
    """`df.set_index("example_id").to_parquet(...)` keeps example_id in the pandas index."""
    wide = wide_frame(m=3, n=50)
    plain = load_predictions(write(tmp_path, wide, "plain.parquet"))
    indexed = tmp_path / "indexed.parquet"
    wide.set_index("example_id").to_parquet(indexed)
    data = load_predictions(indexed)
    assert data.replicas == plain.replicas == ["replica_0", "replica_1", "replica_2"]
    np.testing.assert_array_equal(data.example_ids, np.sort(wide["example_id"].to_numpy()))
    np.testing.assert_array_equal(data.predictions, plain.predictions)
    np.testing.assert_array_equal(data.labels, plain.labels)
    long = tmp_path / "long.parquet"
    long_frame(wide).set_index(["example_id", "replica"]).to_parquet(long)
    from_long = load_predictions(long)
    np.testing.assert_array_equal(from_long.predictions, plain.predictions)
    result = invoke(indexed, "--json", "--resamples", 50)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 50


def test_loader_raises_reprokit_error(tmp_path):
    with pytest.raises(ReprokitError, match="unknown format"):
        load_predictions(tmp_path / "x.csv", format="tall")


# ---- top-k churn per group (--churn-by) ---------------------------------------------------


def _with_users(wide: pd.DataFrame, users: int = 12, seed: int = 3) -> pd.DataFrame:
    """Numeric user ids (so the wide loader must not take them for a replica column)."""
    rng = np.random.default_rng(seed)
    return wide.assign(user_id=rng.integers(0, users, len(wide)))


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_pd_group_column_adds_top_k_churn(tmp_path, layout):
    from reprokit.metrics.churn import topk_churn

    wide = _with_users(wide_frame(m=4, n=400))
    if layout == "long":
        long = wide.melt(
            id_vars=["example_id", "label", "user_id"],
            value_vars=[f"replica_{r}" for r in range(4)],
            var_name="replica",
            value_name="prediction",
        )
        path = write(tmp_path, long.sample(frac=1.0, random_state=2))
    else:
        path = write(tmp_path, wide)
    result = invoke(path, "--json", "--churn-by", "user_id", "--top-k", 5, "--resamples", 200)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["replicas"] == 4  # user_id was not read as a fifth replica
    ordered = wide.sort_values("example_id")
    expected = topk_churn(
        ordered[[f"replica_{r}" for r in range(4)]].to_numpy().T, ordered["user_id"], 5
    )
    churn = doc["churn"]
    assert churn["k"] == 5 and churn["groups"] == expected.groups == 12
    assert churn["value"] == pytest.approx(expected.value, abs=1e-12)
    assert churn["per_pair"] == pytest.approx(list(expected.per_pair), abs=1e-12)
    lo, hi = churn["ci"]
    assert lo <= churn["value"] <= hi
    assert "top-5 churn (12 groups)" in result.stderr


def test_pd_without_group_column_has_no_churn(tmp_path):
    result = invoke(write(tmp_path, wide_frame()), "--json", "--resamples", 50)
    assert result.exit_code == 0 and "churn" not in json.loads(result.stdout)


def test_pd_group_column_errors(tmp_path):
    wide = _with_users(wide_frame(m=3, n=60))
    path = write(tmp_path, wide)
    assert_one_line_error(invoke(path, "--churn-by", "user"), "lacks the group column 'user'")
    assert_one_line_error(invoke(path, "--churn-by", "user_id", "--top-k", 0), "--top-k")
    long = wide.melt(
        id_vars=["example_id", "label", "user_id"],
        value_vars=["replica_0", "replica_1", "replica_2"],
        var_name="replica",
        value_name="prediction",
    )
    long.loc[long["replica"] == "replica_2", "user_id"] += 1  # replica 2 names other users
    result = invoke(write(tmp_path, long, "l.parquet"), "--churn-by", "user_id")
    assert_one_line_error(result, "disagrees across replicas for 60 example(s)")
    missing = wide.astype({"user_id": float})
    missing.loc[3, "user_id"] = np.nan
    result = invoke(write(tmp_path, missing, "m.parquet"), "--churn-by", "user_id")
    assert_one_line_error(result, "1 missing values")


def test_pd_churn_without_a_group_larger_than_k_is_null_and_says_why(tmp_path):
    wide = _with_users(wide_frame(m=3, n=30), users=15)  # about 2 examples per user
    result = invoke(write(tmp_path, wide), "--json", "--churn-by", "user_id", "--top-k", 10)
    assert result.exit_code == 0, result.stderr
    churn = json.loads(result.stdout)["churn"]
    users = wide["user_id"].nunique()
    assert churn["value"] is None and churn["groups"] == 0 and churn["groups_skipped"] == users
    assert "no group has more than 10 examples" in result.stderr
