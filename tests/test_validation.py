"""One validation path: the Python API refuses what the CLI refuses, with the same sentence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cli_checks import one_error_line
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

import reprokit
from reprokit.cli import app
from reprokit.config import RunConfig, resolve_config
from reprokit.errors import ReprokitError
from reprokit.metrics.summary import summarize

runner = CliRunner()


def _cli_error(*args: str) -> str:
    return one_error_line(runner.invoke(app, list(args))).removeprefix("error: ")


def test_vary_string_is_split_into_sources_not_characters():
    assert RunConfig(vary="init,data-order").validate().vary == ["init", "data-order"]
    assert RunConfig(vary="none").validate().vary == []


@pytest.mark.parametrize(
    "cli, api",
    [
        (["--vary", "inti"], {"vary": ["inti"]}),
        (["--lr", "-0.1"], {"optim.lr": -0.1}),
        (["--lr", "inf"], {"optim.lr": math.inf}),
        (["--lr", "nan"], {"optim.lr": math.nan}),
        (["--replicas", "0"], {"replicas": 0}),
        (["--seed", "-1"], {"seed": -1}),
        (["--activation", "smelu:bta=1"], {"model.activation": "smelu:bta=1"}),
    ],
)
def test_api_refuses_what_the_cli_refuses_with_the_same_sentence(cli, api, tmp_path):
    cli_message = _cli_error("train-ensemble", *cli, "--out", str(tmp_path / "r"))
    config = RunConfig()
    for dotted, value in api.items():
        *sections, key = dotted.split(".")
        target = config
        for section in sections:
            target = getattr(target, section)
        setattr(target, key, value)
    with pytest.raises(ReprokitError) as caught:
        reprokit.train_ensemble(config, out=tmp_path / "api")
    assert str(caught.value) == cli_message
    assert not (tmp_path / "api").exists()  # refused before any work


@pytest.mark.parametrize(
    "toml, message",
    [
        ('replicas = "abc"\n', "replicas in {f} must be an integer, got 'abc'"),
        ("[model]\nhidden = 64\n", "model.hidden in {f} must be a list of integers, got 64"),
        ('[optim]\nlr = "fast"\n', "optim.lr in {f} must be a number, got 'fast'"),
        ("[model]\ndropout = true\n", "model.dropout in {f} must be a number, got True"),
        ("model = 3\n", "model in {f} must be a table of settings ([model]), got 3"),
    ],
)
def test_toml_types_are_checked_naming_key_and_type(tmp_path, toml, message):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    assert _cli_error("train-ensemble", "--config", str(path)) == message.format(f=path)


def test_specs_are_canonical_so_equivalent_spellings_resume(tmp_path):
    a = resolve_config(None, {"model.activation": "SmeLU:beta=1.0", "optim.name": "AdaGrad"})
    b = resolve_config(None, {"model.activation": "smelu:beta=1"})
    assert a.model.activation == b.model.activation == "smelu:beta=1"
    assert a.optim.name == "adagrad" and a.to_dict() == b.to_dict()
    tiny = ["--synth-rows", "1000", "--epochs", "1", "--hidden", "8", "--replicas", "2"]
    out = str(tmp_path / "r")
    first = runner.invoke(
        app, ["train-ensemble", *tiny, "--activation", "SmeLU:beta=1.0", "--out", out]
    )
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(
        app, ["train-ensemble", *tiny, "--activation", "smelu:beta=1", "--out", out]
    )
    assert again.exit_code == 0, again.stderr  # resumed, not "another configuration"


def test_cuda_without_cuda_is_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    message = _cli_error("train-ensemble", "--device", "cuda")
    assert "needs a CUDA GPU" in message and "--device cpu" in message


def test_ensemble_auc_with_heavy_ties_equals_sklearn_on_the_plain_mean():
    rng = np.random.default_rng(3)
    m, n = 5, 20_000
    # few distinct values per replica → the replica mean has massive exact ties
    preds = rng.integers(1, 8, size=(m, n)) / 10.0
    y = (rng.random(n) < preds.mean(axis=0)).astype(float)
    doc = summarize(preds, y, n_resamples=10)
    assert doc["auc"]["ensemble"] == pytest.approx(roc_auc_score(y, preds.mean(axis=0)), abs=1e-12)
    assert doc["auc"]["per_replica"] == pytest.approx(
        [roc_auc_score(y, p) for p in preds], abs=1e-12
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train-ensemble", "--lr", "abc"], "Invalid value for '--lr'"),
        (["train-ensemble", "--bogus"], "No such option: --bogus"),
        (["pd"], "Missing argument"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, fragment):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "reprokit.cli", *args], capture_output=True, text=True, timeout=60
    )
    line = one_error_line(proc)
    assert fragment in line and "--help" in line


def test_a_path_object_is_accepted_where_a_path_string_is_expected(tmp_path):
    from reprokit.config import DataConfig

    config = RunConfig(data=DataConfig(path=tmp_path / "d.parquet")).validate()
    assert config.data.path == str(tmp_path / "d.parquet")


def test_a_relative_data_path_in_a_config_file_is_relative_to_that_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    toml = tmp_path / "cfg" / "run.toml"
    toml.write_text('[data]\npath = "../d.parquet"\n')
    monkeypatch.chdir("/")
    assert resolve_config(toml).data.path == str(tmp_path / "cfg" / ".." / "d.parquet")


def test_a_run_resumes_when_its_data_is_named_from_another_directory(tmp_path, monkeypatch):
    tiny = ["--synth-rows", "1000", "--epochs", "1", "--hidden", "8", "--replicas", "2"]
    data = tmp_path / "d.parquet"
    made = runner.invoke(app, ["data", "synth", "--rows", "1000", "--out", str(data)])
    assert made.exit_code == 0, made.stderr
    out = str(tmp_path / "run")
    first = runner.invoke(app, ["train-ensemble", *tiny, "--data", str(data), "--out", out])
    assert first.exit_code == 0, first.stderr
    monkeypatch.chdir(tmp_path)
    again = runner.invoke(app, ["train-ensemble", *tiny, "--data", "d.parquet", "--out", out])
    assert again.exit_code == 0, again.stderr  # same fingerprint: resumed, not refused
