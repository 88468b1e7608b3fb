"""`reprokit pd --label COL` (a label not called `label`) and `--out DIR` (a reportable pd run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rundir_fixtures import make_train_ensemble
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.commands.pd import run_pd
from reprokit.errors import ReprokitError
from reprokit.predictions import fingerprint, load_predictions

runner = CliRunner()


def click_frame(n: int = 400, m: int = 3, seed: int = 0) -> pd.DataFrame:
    """A wide file whose label is an int64 column `click`, ids shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.random(n) * 0.7
    df = pd.DataFrame({"example_id": rng.permutation(n) + 500})
    df["click"] = (rng.random(n) < base).astype(np.int64)
    for r in range(m):
        df[f"r{r}"] = np.clip(base + rng.normal(0, 0.05, n), 0.001, 0.999)
    return df


def invoke(*args):
    return runner.invoke(app, ["pd", *map(str, args)])


def one_error(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("layout", ["wide", "long"])
def test_label_click_counts_three_replicas_and_auc_matches_sklearn(tmp_path, layout):
    wide = click_frame()
    replicas = ["r0", "r1", "r2"]
    if layout == "wide":
        frame = wide
    else:
        frame = wide.melt(id_vars=["example_id", "click"], value_vars=replicas, var_name="replica")
        frame = frame.rename(columns={"value": "prediction"}).sample(frac=1.0, random_state=2)
    path = tmp_path / "preds.parquet"
    frame.to_parquet(path)

    result = invoke(path, "--label", "click", "--json", "--resamples", 200)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["replicas"] == 3 and doc["examples"] == len(wide)
    y = wide["click"].to_numpy()
    per = [roc_auc_score(y, wide[c].to_numpy()) for c in replicas]
    ens = roc_auc_score(y, wide[replicas].to_numpy().mean(axis=1))
    assert doc["auc"]["per_replica"] == pytest.approx(per, abs=1e-12)
    assert doc["auc"]["mean"] == pytest.approx(np.mean(per), abs=1e-12)
    assert doc["auc"]["ensemble"] == pytest.approx(ens, abs=1e-12)
    assert doc["data"]["labels"] == ["click"] and doc["data"]["path"] == str(path)


def test_wide_zero_one_column_not_named_by_label_is_refused(tmp_path):
    path = tmp_path / "preds.parquet"
    click_frame().to_parquet(path)
    line = one_error(invoke(path))
    assert "'click'" in line and "0/1 integers" in line and "--label click" in line


def test_wide_boolean_column_is_refused_and_accepted_as_the_label(tmp_path):
    df = click_frame()
    df["click"] = df["click"].astype(bool)
    path = tmp_path / "preds.csv"  # CSV reads True/False back as booleans
    df.to_csv(path, index=False)
    line = one_error(invoke(path))
    assert "'click'" in line and "booleans" in line
    data = load_predictions(path, label="click")
    order = np.argsort(df["example_id"].to_numpy())
    np.testing.assert_array_equal(data.labels, df["click"].to_numpy()[order].astype(float))
    assert data.replicas == ["r0", "r1", "r2"]


def test_float_zero_one_replica_is_still_a_replica(tmp_path):
    """Only integer/boolean 0/1 columns look like labels; a float replica of hard 0/1 is kept."""
    df = click_frame().drop(columns="click")
    df["hard"] = (df["r0"] > 0.5).astype(float)
    path = tmp_path / "preds.parquet"
    df.to_parquet(path)
    assert load_predictions(path).replicas == ["r0", "r1", "r2", "hard"]


def test_missing_label_column_is_refused_listing_columns(tmp_path):
    path = tmp_path / "preds.parquet"
    click_frame().to_parquet(path)
    line = one_error(invoke(path, "--label", "clicks"))
    assert "no label column 'clicks'" in line and "example_id, click, r0, r1, r2" in line
    long = tmp_path / "long.csv"
    pd.DataFrame({"example_id": [1, 1], "replica": ["a", "b"], "prediction": [0.2, 0.3]}).to_csv(
        long, index=False
    )
    assert "example_id, replica, prediction" in one_error(invoke(long, "--label", "y"))
    with pytest.raises(ReprokitError, match="no label column"):
        run_pd(path, label="clicks")


def test_long_layout_label_values_are_checked_under_their_name(tmp_path):
    frame = pd.DataFrame(
        {"example_id": [1, 2, 1, 2], "replica": ["a", "a", "b", "b"], "prediction": 0.5}
    )
    frame["y"] = [0.0, 2.0, 0.0, 2.0]
    path = tmp_path / "l.parquet"
    frame.to_parquet(path)
    assert "column 'y'" in one_error(invoke(path, "--label", "y"))


def _reference_fingerprint(ids: np.ndarray, labels: np.ndarray) -> str:
    order = np.argsort(ids)
    h = hashlib.sha256()
    h.update(b"int64:" + ids[order].astype(np.int64).tobytes())
    h.update(b"labels:" + labels[order].astype(np.float64).tobytes())
    return h.hexdigest()[:16]


def test_out_writes_a_pd_summary_with_provenance(tmp_path):
    df = click_frame()
    path = tmp_path / "preds.parquet"
    df.to_parquet(path)
    out = tmp_path / "pd-run"
    result = invoke(path, "--label", "click", "--out", out, "--json", "--resamples", 200)
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "summary.json").read_text())
    assert stored == json.loads(result.stdout)
    assert stored["kind"] == "pd" and stored["replicas"] == 3
    expected = _reference_fingerprint(df["example_id"].to_numpy(), df["click"].to_numpy())
    assert stored["data"] == {"path": str(path), "labels": ["click"], "fingerprint": expected}
    assert not [p.name for p in out.iterdir() if p.name != "summary.json"]  # no temp files left

    # Same examples and labels in another order and file type: same fingerprint; a flipped label
    # changes it.
    shuffled = tmp_path / "shuffled.csv"
    df.sample(frac=1.0, random_state=5).to_csv(shuffled, index=False)
    assert fingerprint(load_predictions(shuffled, label="click")) == expected
    flipped = df.copy()
    flipped.loc[0, "click"] = 1 - flipped.loc[0, "click"]
    flipped.to_parquet(tmp_path / "flipped.parquet")
    assert fingerprint(load_predictions(tmp_path / "flipped.parquet", label="click")) != expected


def test_string_example_ids_fingerprint_is_stable(tmp_path):
    df = click_frame(n=50).assign(example_id=lambda d: "id" + d["example_id"].astype(str))
    df.to_parquet(tmp_path / "a.parquet")
    df.iloc[::-1].to_csv(tmp_path / "b.csv", index=False)
    a = fingerprint(load_predictions(tmp_path / "a.parquet", label="click"))
    b = fingerprint(load_predictions(tmp_path / "b.csv", label="click"))
    assert a == b and len(a) == 16


def test_out_refuses_to_overwrite_another_run(tmp_path):
    path = tmp_path / "preds.parquet"
    click_frame().to_parquet(path)
    run = make_train_ensemble(tmp_path / "ens", replicas=2, examples=50)
    before = (run / "summary.json").read_bytes()
    assert "manifest.json" in one_error(invoke(path, "--label", "click", "--out", run))
    assert (run / "summary.json").read_bytes() == before
    assert "is a file" in one_error(invoke(path, "--label", "click", "--out", path))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "summary.json").write_text(before.decode())
    assert "train-ensemble" in one_error(invoke(path, "--label", "click", "--out", bare))
    # A pd directory is rewritten in place.
    pd_dir = tmp_path / "pd"
    for _ in range(2):
        assert invoke(path, "--label", "click", "--out", pd_dir, "--resamples", 50).exit_code == 0
    assert json.loads((pd_dir / "summary.json").read_text())["kind"] == "pd"


def test_out_dir_renders_as_a_report(tmp_path: Path):
    path = tmp_path / "preds.parquet"
    click_frame().to_parquet(path)
    out = tmp_path / "pd-run"
    assert invoke(path, "--label", "click", "--out", out, "--resamples", 200).exit_code == 0
    result = runner.invoke(app, ["report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["run_kind"] == "pd"
    assert json.loads((out / "report.json").read_text()) == doc
    summary = json.loads((out / "summary.json").read_text())
    sections = doc["sections"]
    assert list(sections) == ["verdict", "configuration", "pd-table", "accuracy", "pd-by-bucket"]
    label = next(iter(sections["pd-table"]["arms"]))
    assert sections["pd-table"]["arms"][label]["rel"]["value"] == summary["pd"]["rel"]
    assert sections["accuracy"]["arms"][label]["auc"]["mean"] == summary["auc"]["mean"]
    assert sections["configuration"]["run"]["data fingerprint"] == summary["data"]["fingerprint"]
    assert sections["verdict"]["headline"].startswith(f"PD rel = {summary['pd']['rel']:.4g}")
    html = (out / "report.html").read_text(encoding="utf-8")
    for absent in ('id="training-loss"', 'id="calibration"', 'id="replicas"'):
        assert absent not in html
    assert "no replica files" in html


def test_report_of_the_summary_file_writes_beside_it(tmp_path: Path):
    path = tmp_path / "preds.parquet"
    click_frame(n=100).to_parquet(path)
    out = tmp_path / "pd-run"
    assert invoke(path, "--label", "click", "--out", out, "--resamples", 50).exit_code == 0
    result = runner.invoke(app, ["report", str(out / "summary.json")])
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "report.json").is_file()


def _rel(preds: np.ndarray) -> float:
    """PD rel from its definition: mean over pairs of mean |p_i - p_j| / ((p_i + p_j) / 2)."""
    m = len(preds)
    vals = [
        np.mean(np.abs(preds[i] - preds[j]) / ((preds[i] + preds[j]) / 2))
        for i in range(m)
        for j in range(i + 1, m)
    ]
    return float(np.mean(vals))


@pytest.mark.parametrize("name", ["click", "Clicked", "IS_CLICK", "target", "y", "Income"])
def test_wide_float_zero_one_column_named_like_a_label_is_refused(tmp_path, name):
    """A label written as 1.0/0.0 (CSV round trips, pandas arithmetic) is not a fourth replica."""
    df = click_frame().rename(columns={"click": name})
    df[name] = df[name].astype(float)
    path = tmp_path / "wide_float.csv"
    df.to_csv(path, index=False)
    line = one_error(invoke(path))
    assert f"{name!r}" in line and "0.0/1.0 floats" in line and f"--label {name}" in line
    assert "rename it" in line  # how to keep it as a replica of hard classes

    result = invoke(path, "--label", name, "--json", "--resamples", 50)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ordered = df.sort_values("example_id")
    assert doc["replicas"] == 3 and doc["data"]["labels"] == [name]
    expected = _rel(ordered[["r0", "r1", "r2"]].to_numpy().T)
    assert doc["pd"]["rel"] == pytest.approx(expected, rel=1e-12)


def test_wide_float_zero_one_column_of_another_name_stays_a_replica(tmp_path):
    df = click_frame()
    df["hard"] = (df["r0"] > 0.5).astype(float)
    path = tmp_path / "preds.csv"
    df.to_csv(path, index=False)
    assert load_predictions(path, label="click").replicas == ["r0", "r1", "r2", "hard"]


def _long_click(tmp_path: Path, label_name: str = "click") -> Path:
    wide = click_frame(n=200).rename(columns={"click": label_name})
    frame = wide.melt(id_vars=["example_id", label_name], value_vars=["r0", "r1", "r2"])
    frame = frame.rename(columns={"variable": "replica", "value": "prediction"})
    path = tmp_path / "long.csv"
    frame.to_csv(path, index=False)
    return path


def test_long_file_with_a_label_under_another_name_warns(tmp_path):
    path = _long_click(tmp_path)
    result = invoke(path, "--json", "--resamples", 50)
    assert result.exit_code == 0, result.output
    assert "auc" not in json.loads(result.stdout)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: no 'label' column; column 'click' looks like one — pass --label click for AUC "
        "and log-loss"
    ]
    # Named, or with a real `label` column, there is nothing to warn about.
    named = invoke(path, "--label", "click", "--json", "--resamples", 50)
    assert named.exit_code == 0 and "auc" in json.loads(named.stdout)
    assert "warning:" not in named.stderr
    plain = invoke(_long_click(tmp_path, "label"), "--resamples", 50)
    assert plain.exit_code == 0 and "warning:" not in plain.stderr


def test_wide_label_prefixed_column_without_label_warns(tmp_path):
    df = click_frame().rename(columns={"click": "label_click"})
    path = tmp_path / "w.parquet"
    df.to_parquet(path)
    result = invoke(path, "--resamples", 50)
    assert result.exit_code == 0, result.output
    assert "pass --label label_click for AUC" in result.stderr


def test_wide_id_named_columns_are_left_out_with_a_note(tmp_path):
    """`user_id` (1914 values outside [0, 1] in the trial) and other ids are not replicas."""
    df = click_frame()
    rng = np.random.default_rng(4)
    df["user_id"] = rng.integers(0, 40, len(df))  # repeats: a group id
    df["ID"] = np.arange(len(df)) + 10_000  # one per row
    df["adId"] = rng.integers(0, 5, len(df)).astype(float)
    path = tmp_path / "wide.parquet"
    df.to_parquet(path)
    result = invoke(path, "--label", "click", "--json", "--resamples", 50)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    ordered = df.sort_values("example_id")
    assert doc["replicas"] == 3
    assert doc["pd"]["rel"] == pytest.approx(_rel(ordered[["r0", "r1", "r2"]].to_numpy().T))
    stderr = " ".join(result.stderr.split())
    assert "'user_id', 'ID', 'adId'" in stderr and "named like an id" in stderr
    assert "--churn-by user_id" in stderr

    # Named by --churn-by, user_id is the group column: churn, and no suggestion.
    args = ("--label", "click", "--churn-by", "user_id", "--top-k", 5, "--json", "--resamples", 50)
    grouped = invoke(path, *args)
    assert grouped.exit_code == 0, grouped.output
    doc = json.loads(grouped.stdout)
    larger_than_k = int((df["user_id"].value_counts() > 5).sum())  # groups churn can rank
    assert doc["replicas"] == 3 and doc["churn"]["groups"] == larger_than_k
    stderr = " ".join(grouped.stderr.split())
    assert "'ID', 'adId'" in stderr and "--churn-by" not in stderr
