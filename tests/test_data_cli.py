"""`reprokit data ...` end to end through the Typer app, including bad inputs (exit 2, one line)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from movielens_cache import write_tiny_grouplens
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.data.layout import read_dataset

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, ["data", *map(str, args)])


def test_help_lists_subcommands_and_examples():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("synth", "movielens", "import", "describe"):
        assert name in result.stdout
    result = invoke("synth", "--help")
    assert result.exit_code == 0
    assert "reprokit data synth --rows 100000 --out data/synth.parquet" in result.stdout


def test_synth_writes_dataset_and_json(tmp_path):
    out = tmp_path / "data" / "synth.parquet"
    result = invoke("synth", "--rows", 3000, "--tasks", 2, "--seed", 4, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema_version"] == 1 and doc["kind"] == "data-synth"
    assert doc["rows"] == 3000 and doc["columns"]["labels"] == ["label", "label_1"]
    assert 0.15 < doc["labels"]["label"]["base_rate"] < 0.25
    assert "wrote" in result.stderr  # the Rich summary goes to stderr
    ds = read_dataset(out)
    assert len(ds) == 3000 and ds.schema.labels == ["label", "label_1"]
    again = tmp_path / "again.parquet"
    assert invoke("synth", "--rows", 3000, "--tasks", 2, "--seed", 4, "--out", again).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_synth_options(tmp_path):
    out = tmp_path / "s.parquet"
    result = invoke(
        "synth",
        "--rows",
        500,
        "--fields",
        2,
        "--cardinality",
        "5,7",
        "--numeric",
        0,
        "--no-timestamp",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.stderr
    ds = read_dataset(out)
    assert ds.schema.categorical == ["c0", "c1"] and ds.schema.numeric == []
    assert ds.schema.timestamp is None
    assert ds.frame["c1"].max() <= 6


def test_import_and_describe(tmp_path):
    csv = tmp_path / "clicks.csv"
    pd.DataFrame(
        {
            "ad": [1, 2, 3, 1, 2, 3],
            "score": [0.1, 0.5, 0.2, 0.9, 0.3, 0.4],
            "stars": [1, 5, 4, 2, 5, 3],
            "clicked": [0, 1, 1, 0, 1, 0],
        }
    ).to_csv(csv, index=False)
    result = invoke(
        "import",
        csv,
        "--label",
        "clicked",
        "--label",
        "stars",
        "--label-threshold",
        4,
        "--numeric",
        "ad",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "data-import"
    assert doc["columns"]["labels"] == ["clicked", "stars"]
    assert doc["columns"]["numeric"] == ["ad", "score"]
    default_out = tmp_path / "clicks.reprokit.parquet"
    assert doc["path"] == str(default_out)
    ds = read_dataset(default_out)
    assert ds.frame["stars"].tolist() == [0, 1, 1, 0, 1, 0]
    assert ds.frame["clicked"].tolist() == [0, 1, 1, 0, 1, 0]  # 0/1 already: no threshold

    result = invoke("describe", default_out, "--json")
    assert result.exit_code == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["kind"] == "data-describe" and described["rows"] == 6
    assert described["labels"]["stars"]["base_rate"] == pytest.approx(0.5)
    assert "clicked" in result.stderr  # the table


def test_movielens_command(tmp_path):
    src = write_tiny_grouplens(tmp_path / "ml-100k")
    out = tmp_path / "ml.parquet"
    result = invoke("movielens", "--path", src, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "data-movielens" and doc["rows"] == 4
    assert doc["labels"]["label"]["base_rate"] == pytest.approx(0.5)
    assert read_dataset(out).schema.name == "movielens-100k"


@pytest.fixture()
def inputs(tmp_path):
    no_label = tmp_path / "nolabel.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(no_label, index=False)
    ratings = tmp_path / "ratings.csv"
    pd.DataFrame({"a": [1, 2], "label": [3, 5]}).to_csv(ratings, index=False)
    nan_label = tmp_path / "nan.csv"
    pd.DataFrame({"a": [1, 2], "label": [1, None]}).to_csv(nan_label, index=False)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1garbage")
    return tmp_path


@pytest.mark.parametrize(
    "args, message",
    [
        (["import", "{d}/missing.csv"], "not found"),
        (["import", "{d}/nolabel.csv"], "no label column"),
        (["import", "{d}/ratings.csv"], "not binary"),
        (["import", "{d}/nan.csv"], "missing value"),
        (["import", "{d}/ratings.csv", "--categorical", "zzz"], "'zzz'"),
        (["import", "{d}/ratings.csv", "--timestamp", "when"], "'when'"),
        (["describe", "{d}/garbage.parquet"], "not a readable"),
        (["describe", "{d}/missing.parquet"], "not found"),
        (["movielens", "--path", "{d}"], "no MovieLens copy"),
        (["synth", "--rows", "0", "--out", "{d}/s.parquet"], "at least 1 row"),
        (["synth", "--cardinality", "ten", "--out", "{d}/s.parquet"], "--cardinality"),
        (["synth", "--base-rate", "2", "--out", "{d}/s.parquet"], "base rate"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(inputs, args, message):
    result = invoke(*[a.format(d=inputs) for a in args])
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert result.stdout == ""
