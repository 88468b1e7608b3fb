"""What the training commands print: progress without a terminal, one line before a validation
error, `--json` failures, defaults in `--help`, and which Python warnings reach the user."""

import io
import json
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.commands import progress as progress_mod
from reprokit.commands.common import cli_warnings
from reprokit.commands.options import CONFIG_KEYS
from reprokit.config import RunConfig
from reprokit.metrics.accuracy import UndefinedMetricWarning

TINY = ["--synth-rows", "2000", "--epochs", "1", "--hidden", "16-8", "--replicas", "2"]
TRAINING_COMMANDS = ("train-ensemble", "compare-activations", "stability")
STAMP = r"\[\d\d:\d\d:\d\d\] "
runner = CliRunner()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "REPROKIT_VERBOSE")}
    env.update(extra)
    return env


def _train(tmp_path: Path, name: str, *args: str, **env: str) -> tuple[Path, list[str]]:
    """A real `reprokit train-ensemble` with stderr to a file, as a CI job runs it."""
    out = tmp_path / name
    log = tmp_path / f"{name}.log"
    cmd = [sys.executable, "-m", "reprokit.cli", "train-ensemble", *TINY, "--out", str(out), *args]
    with log.open("w") as err:
        proc = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env=_env(**env), timeout=300
        )
    lines = log.read_text().splitlines()
    assert proc.returncode == 0, "\n".join(lines)
    return out, lines


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("replicas/*/metrics.json"))]


# --- progress without a terminal ---------------------------------------------------------------
def test_process_engine_prints_one_line_per_finished_replica(tmp_path):
    out, lines = _train(tmp_path, "proc", "--engine", "process")
    done = [
        m
        for m in (
            re.fullmatch(STAMP + r"replica (\d)/2 done in ([\d.]+) s \(auc (0\.\d{4})\)", x)
            for x in lines
        )
        if m
    ]
    assert [m.group(1) for m in done] == ["1", "2"]
    # each line's AUC is the one its replica wrote (workers=1: replicas finish in order)
    metrics = _metrics(out)
    assert [float(m.group(3)) for m in done] == [round(r["auc"], 4) for r in metrics]
    assert [float(m.group(2)) for m in done] == [round(r["train_seconds"], 1) for r in metrics]
    assert re.fullmatch(STAMP + r"training \(vary: init\): started, 0/2 replicas done", lines[0])
    assert not any(re.search(r"\bstep \d+/", x) for x in lines)  # no shared steps to report
    table = next(i for i, x in enumerate(lines) if x.startswith("train-ensemble: "))
    assert table == 3 and all(re.match(STAMP, x) for x in lines[:table])  # no Rich bar in the log

    # a rejected re-run (another config in --out) fails before any progress: one line in all
    proc = subprocess.run(
        [sys.executable, "-m", "reprokit.cli", "train-ensemble", *TINY, "--out", str(out),
         "--engine", "process", "--lr", "0.1"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ") and "another configuration" in proc.stderr


def test_vectorized_engine_reports_steps_before_the_replicas_finish(tmp_path):
    out, lines = _train(
        tmp_path, "vec", "--engine", "vectorized", "--epochs", "2", REPROKIT_PROGRESS_INTERVAL="0"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    total = 2 * math.ceil(manifest["data"]["train_rows"] / RunConfig().optim.batch_size)
    step_re = re.compile(STAMP + r"step (\d+)/(\d+) \((\d+)%\), [\d.]+ s elapsed(, ETA .+)?")
    steps = [(i, m) for i, m in enumerate(map(step_re.fullmatch, lines)) if m]
    assert [int(m.group(1)) for _, m in steps] == list(range(1, total + 1))  # interval 0: each step
    assert {int(m.group(2)) for _, m in steps} == {total}
    assert (
        all(m.group(4) for _, m in steps[:-1]) and steps[-1][1].group(4) is None
    )  # ETA until done
    assert int(steps[len(steps) // 2][1].group(3)) == round(100 * (len(steps) // 2 + 1) / total)
    first_replica = next(i for i, x in enumerate(lines) if re.match(STAMP + "replica 1/2 done", x))
    assert steps[-1][0] < first_replica
    assert [m["steps"] for m in _metrics(out)] == [total, total]


def test_step_lines_are_throttled_to_the_interval(monkeypatch):
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=120)
    monkeypatch.setattr(progress_mod, "PROGRESS_INTERVAL", 3600.0)
    with progress_mod.TrainingProgress("training", 4, console=console) as prog:
        prog.replicas(0, 4, {})
        for step in range(1, 101):
            prog.steps(step, 100)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines  # the start and the last step only
    assert re.fullmatch(STAMP + r"training: started, 0/4 replicas done", lines[0])
    assert re.fullmatch(STAMP + r"step 100/100 \(100%\), [\d.]+ s elapsed", lines[1])
    monkeypatch.setattr(progress_mod, "PROGRESS_INTERVAL", 0.0)
    stream.seek(0), stream.truncate()
    with progress_mod.TrainingProgress("training", 4, console=console) as prog:
        for step in range(1, 11):
            prog.steps(step, 10)
    assert len(stream.getvalue().splitlines()) == 10


@pytest.mark.parametrize(
    ("text", "expected"), [("0", 0.0), ("2.5", 2.5), ("soon", 10.0), ("-1", 10.0), ("", 10.0)]
)
def test_progress_interval_from_the_environment(monkeypatch, text, expected):
    monkeypatch.setenv(progress_mod.INTERVAL_ENV, text)
    assert progress_mod._interval_from_env() == expected


def test_terminal_bar_draws_nothing_until_the_first_report():
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=100)
    with pytest.raises(RuntimeError), progress_mod.TrainingProgress("training", 2, console=console):
        raise RuntimeError("bad input found before training")
    assert stream.getvalue() == ""
    with progress_mod.TrainingProgress("training", 2, console=console) as prog:
        prog.replicas(0, 2, {})
        prog.steps(3, 7)
    text = stream.getvalue()
    assert "training" in text and "optimizer steps" in text and "3/7" in text


# --- validation errors --------------------------------------------------------------------------
@pytest.mark.parametrize("command", TRAINING_COMMANDS)
@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (["--lr", "-1"], "learning rate must be positive"),
        (["--vary", "inti"], "unknown nondeterminism source 'inti'"),
        (["--data", "missing.parquet"], "missing.parquet"),
    ],
)
def test_bad_option_prints_exactly_one_line(tmp_path, command, option, needle):
    result = runner.invoke(app, [command, *TINY, "--out", str(tmp_path / "r"), *option])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [result.stderr.rstrip("\n")]
    assert result.stderr.startswith("error: ") and needle in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "r").exists()


# --- --json on failure --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["train-ensemble", "--lr", "-1"],
        ["compare-activations", "--vary", "inti"],
        ["stability", "--lr-multipliers", "1,x"],
        ["pd", "missing.parquet"],
        ["data", "import", "missing.csv"],  # its parameter is `as_json`, not `json_out`
    ],
)
def test_json_failure_prints_the_error_document(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    plain = runner.invoke(app, args)
    assert plain.exit_code == 2 and plain.stdout == ""  # without --json stdout stays empty
    sentence = plain.stderr.strip().removeprefix("error: ")
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout) == {"schema_version": 1, "error": sentence}
    assert result.stderr == f"error: {sentence}\n"
    assert list(tmp_path.iterdir()) == []


# --- defaults in --help -------------------------------------------------------------------------
def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert result.exit_code == 0
    return result.stdout


def _row(text: str, flag: str) -> str:
    return next(line for line in text.splitlines() if re.match(rf"│ {re.escape(flag)}\s", line))


def test_help_shows_the_config_defaults():
    cfg = RunConfig()
    for command in TRAINING_COMMANDS:
        text = _help(command)
        assert f"[default: {cfg.optim.lr}]" in _row(text, "--lr")
        assert f"[default: {cfg.optim.epochs}]" in _row(text, "--epochs")
        assert f"[default: {cfg.data.synth_rows}]" in _row(text, "--synth-rows")
        assert "[default: " + "-".join(map(str, cfg.model.hidden)) + "]" in _row(text, "--hidden")
        assert "[default: no-batch-norm]" in _row(text, "--batch-norm")
        assert "[default: runs/" in _row(text, "--out")
    assert f"[default: {cfg.replicas}]" in _row(_help("train-ensemble"), "--replicas")
    assert f"[default: {cfg.model.activation}]" in _row(_help("stability"), "--activation")


#: Options without a default: a file to read, a feature that is off unless named.
NO_DEFAULT = {"config", "churn_by", "sweep"}


@pytest.mark.parametrize("command", TRAINING_COMMANDS)
def test_every_training_option_states_a_default(command):
    cmd = typer.main.get_command(app).commands[command]
    for param in cmd.params:
        if param.param_type_name != "option" or param.name in NO_DEFAULT or param.name == "help":
            continue
        if param.is_flag and not param.secondary_opts and param.default is False:
            continue  # --force, --json: off unless given
        if param.default is None or param.name in CONFIG_KEYS:
            assert "default" in (param.help or "").lower(), param.name
        else:
            assert param.show_default is not False, param.name
    text = _help(command)
    assert text.count("[default:") >= sum(p.name in CONFIG_KEYS for p in cmd.params)


@pytest.mark.parametrize(
    ("command", "flag"),
    [(("pd",), "--threshold"), (("gate",), "--metric"), (("data", "import"), "--max-categories")],
)
def test_other_commands_help_keeps_its_defaults(command, flag):
    assert "[default: " in _row(_help(*command), flag)


# --- warnings -----------------------------------------------------------------------------------
WARN_SCRIPT = """
import sys, warnings
import reprokit.commands.pd as pd
from reprokit.metrics.accuracy import UndefinedMetricWarning
original = pd.run_pd
def noisy(*args, **kwargs):
    warnings.warn("a dependency's noise", FutureWarning)
    warnings.warn("a dependency's deprecation", DeprecationWarning)
    warnings.warn("one class only", UndefinedMetricWarning, stacklevel=1)
    return original(*args, **kwargs)
pd.run_pd = noisy
from reprokit.cli import main
sys.argv = ["reprokit", *sys.argv[1:]]
main()
"""


@pytest.fixture(scope="module")
def predictions_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    rows = [(e, r, float(rng.random()), float(e % 2)) for e in range(40) for r in range(3)]
    path = tmp_path_factory.mktemp("pd") / "preds.parquet"
    pd.DataFrame(rows, columns=["example_id", "replica", "prediction", "label"]).to_parquet(path)
    return path


@pytest.mark.parametrize("verbose", [False, True])
def test_dependency_warnings_only_with_verbose(predictions_file, verbose):
    args = ["--verbose"] if verbose else []
    proc = subprocess.run(
        [sys.executable, "-c", WARN_SCRIPT, *args, "pd", str(predictions_file)],
        capture_output=True, text=True, env=_env(), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: one class only" in proc.stderr.splitlines()  # reprokit's own: always
    assert ("a dependency's noise" in proc.stderr) is verbose
    assert ("a dependency's deprecation" in proc.stderr) is verbose
    assert "UndefinedMetricWarning" not in proc.stderr  # shown as a plain warning: line


def test_cli_warnings_restores_filters_and_environment(monkeypatch):
    monkeypatch.setattr(sys, "warnoptions", [])
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    before, show = list(warnings.filters), warnings.showwarning
    with cli_warnings(verbose=False):
        assert os.environ["PYTHONWARNINGS"] == "ignore"  # spawned workers stay quiet too
        with warnings.catch_warnings(record=True) as caught:  # keeps cli_warnings' filters
            warnings.warn("torch-like", UserWarning, stacklevel=1)
            warnings.warn("pandas-like", FutureWarning, stacklevel=1)
            warnings.warn("one class only", UndefinedMetricWarning, stacklevel=1)
        assert [str(w.message) for w in caught] == ["one class only"]
    assert "PYTHONWARNINGS" not in os.environ
    assert warnings.filters == before and warnings.showwarning is show
