"""The vectorized engine for `--model-factory` models (`reprokit.training.func_stack`): the user's
module stacked with torch.func, one vmap of grad(functional_call) per step. Replica k agrees with
the process engine's replica k to float rounding, the control arm is bitwise identical, a
replica's bytes do not depend on its stack, the stacked optimizer is torch.optim's, models it
cannot train are refused with a reason (fallback under auto, exit 2 under --engine vectorized),
and auto follows the measured rule."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from typer.testing import CliRunner

import reprokit.training.stacked.capability as capability
from reprokit.cli import app
from reprokit.config import resolve_config
from reprokit.data.encoding import load_encoded
from reprokit.runners.ensemble import choose_engine
from reprokit.sources import replica_seeds
from reprokit.training import vectorized
from reprokit.training.loop import train_replica
from reprokit.training.stacked.optimizers import DenseStackedOptimizer

USER_MODELS = """
import torch
import torch.nn.functional as F
from torch import nn


class Pairwise(nn.Module):
    '''Own embeddings, a raw parameter drawn while building, two layers of one shape (their
    optimizer state must stay apart), a frozen parameter and one the loss never reaches.'''

    def __init__(self, schema, dim=4):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(v, dim) for v in schema.vocab_sizes)
        self.scale = nn.Parameter(torch.randn(dim))
        self.frozen = nn.Parameter(torch.linspace(0.5, 1.5, dim), requires_grad=False)
        self.unused = nn.Parameter(torch.ones(3))
        width = dim * len(schema.vocab_sizes) + schema.n_numeric
        self.a = nn.Linear(width, 8)
        self.b = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)
        self.head = nn.Linear(8, max(schema.n_tasks, 1))

    def forward(self, cat, num):
        e = torch.stack([t(cat[:, f]) for f, t in enumerate(self.emb)], dim=1) * self.frozen
        pair = (e[:, 0] * e[:, 1] * self.scale).sum(1, keepdim=True)
        h = torch.relu(self.a(torch.cat([e.flatten(1), num], dim=1)))
        h = torch.relu(self.b(h)) + torch.tanh(self.c(h))
        out = self.head(h) + pair
        return out.squeeze(1) if out.shape[1] == 1 else out


def build(schema):
    return Pairwise(schema)


class WithLayer(nn.Module):
    def __init__(self, schema, layer):
        super().__init__()
        self.emb = nn.Embedding(schema.vocab_sizes[0], 4, sparse=layer == "sparse")
        self.lin = nn.Linear(4 + schema.n_numeric, 4)
        self.layer = layer
        self.norm = nn.BatchNorm1d(4) if layer == "batchnorm" else nn.Identity()
        self.drop = nn.Dropout(0.25) if layer == "dropout" else nn.Identity()
        self.out = nn.Linear(4, 1)

    def forward(self, cat, num):
        h = self.lin(torch.cat([self.emb(cat[:, 0]), num], dim=1))
        h = self.drop(torch.relu(self.norm(h)))
        if self.layer == "functional-dropout":
            h = F.dropout(h, 0.1, self.training)
        if self.layer == "item" and h.sum().item() > 0:
            h = h * 2
        return self.out(h).squeeze(1)


def dropout(schema):
    return WithLayer(schema, "dropout")


def batchnorm(schema):
    return WithLayer(schema, "batchnorm")


def sparse(schema):
    return WithLayer(schema, "sparse")


def functional_dropout(schema):
    return WithLayer(schema, "functional-dropout")


def item(schema):
    return WithLayer(schema, "item")


def plain(schema):
    return WithLayer(schema, "none")


class PicksBatches(WithLayer):
    def forward(self, cat, num):
        if cat.shape[0] not in (8, 100):  # the check's 8 rows pass, a short last batch fails
            raise ValueError(f"cannot take a batch of {cat.shape[0]} rows")
        return super().forward(cat, num)


def picky(schema):
    return PicksBatches(schema, "none")
"""

SMALL = {
    "data.synth_rows": 700,
    "data.synth_fields": 3,
    "data.synth_cardinality": 40,
    "optim.epochs": 2,
    "optim.batch_size": 64,
}
#: max |Δp| between replica k of the two engines (measured ≤ 1e-6 on SMALL)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("factory") / "user_models.py"
    path.write_text(textwrap.dedent(USER_MODELS))
    return path


def _cfg(models_file, fn="build", **extra):
    return resolve_config(None, {**SMALL, "model.factory": f"{models_file}:{fn}", **extra})


def _seeds(cfg, replicas):
    return [replica_seeds(cfg.seed, cfg.vary, r) for r in replicas]


def _stacked(encoded, cfg, replicas):
    return vectorized.train_replicas(encoded, cfg, list(replicas), _seeds(cfg, replicas))


@pytest.mark.parametrize(
    "extra",
    [
        {"optim.name": "adagrad"},
        {"optim.name": "sgd", "optim.weight_decay": 0.01, "fn": "plain"},  # no unused parameter
        {"optim.name": "adam"},
        {"optim.name": "adagrad", "optim.initial_accumulator_value": 0.1},
        {"optim.name": "adam", "vary": "init,data-order,async", "async_staleness": 2},
        {"optim.name": "sgd", "data.synth_tasks": 2, "data.labels": "all"},
    ],
    ids=["adagrad", "sgd-wd", "adam", "adagrad-a0", "async", "multitask"],
)
def test_replica_k_agrees_with_the_process_engine(models_file, extra):
    extra = dict(extra)
    cfg = _cfg(models_file, extra.pop("fn", "build"), **{"vary": "init,data-order", **extra})
    encoded = load_encoded(cfg.data)
    seeds = _seeds(cfg, range(3))
    ref = [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]
    out = _stacked(encoded, cfg, range(3))
    for a, b in zip(ref, out, strict=True):
        assert b.predictions.shape == a.predictions.shape and b.predictions.dtype == np.float64
        assert np.abs(a.predictions - b.predictions).max() < TOLERANCE
        assert list(b.log.columns) == list(a.log.columns)
        assert (b.log["step"] == a.log["step"]).all() and (b.log["epoch"] == a.log["epoch"]).all()
        np.testing.assert_allclose(b.log["loss"], a.log["loss"], atol=1e-5)
        np.testing.assert_allclose(b.log["grad_norm"], a.log["grad_norm"], rtol=1e-4)
        assert b.steps == a.steps and not b.diverged and not a.diverged
    # the replicas really differ (init and data order vary), so agreement is not trivial
    assert np.abs(out[0].predictions - out[1].predictions).max() > 1e-3
    if "data.synth_tasks" in extra:
        assert {"loss_label", "loss_label_1"} <= set(out[0].log.columns)


def test_control_arm_is_bitwise_identical_and_two_runs_give_the_same_bytes(models_file):
    cfg = _cfg(models_file, vary="none", **{"optim.name": "adam"})
    encoded = load_encoded(cfg.data)
    out = _stacked(encoded, cfg, range(3))
    for o in out[1:]:
        assert o.predictions.tobytes() == out[0].predictions.tobytes()
        pd.testing.assert_frame_equal(o.log, out[0].log)
    ref = train_replica(encoded, cfg, 0, _seeds(cfg, [0])[0])
    assert np.abs(ref.predictions - out[0].predictions).max() < TOLERANCE

    varied = _cfg(models_file, vary="init,data-order", **{"optim.name": "adam"})
    first, again = _stacked(encoded, varied, range(3)), _stacked(encoded, varied, range(3))
    for a, b in zip(first, again, strict=True):
        assert a.predictions.tobytes() == b.predictions.tobytes()
        pd.testing.assert_frame_equal(a.log, b.log)
    # a replica's bytes do not depend on its slot or on the size of its stack
    for r in range(3):
        alone = _stacked(encoded, varied, [r])[0]
        assert alone.predictions.tobytes() == first[r].predictions.tobytes()
        pd.testing.assert_frame_equal(alone.log, first[r].log)


@pytest.mark.parametrize("name", ["adagrad", "sgd", "adam"])
def test_dense_stacked_optimizer_is_torch_optim_per_replica(name):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 5), (3, 5), (7,), (1,)]  # two tensors of one shape: state must stay apart
    params = [torch.randn((2, *s), generator=gen) for s in shapes]
    kw = {"weight_decay": 0.01} | ({"initial_accumulator_value": 0.1} if name == "adagrad" else {})
    opt = DenseStackedOptimizer(params, name, 0.05, 0.01, kw.get("initial_accumulator_value"))
    refs = [[p[r].clone().requires_grad_() for p in params] for r in range(2)]
    torch_opts = [
        {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name](
            ref, lr=0.05, **kw
        )
        for ref in refs
    ]
    for step in range(4):
        grads = [torch.randn((2, *s), generator=gen) for s in shapes]
        if step == 2:
            opt.freeze(1)  # replica 1 stops here; replica 0 goes on
        opt.step_all(grads)
        for r in range(2 if step < 2 else 1):
            for p, g in zip(refs[r], grads, strict=True):
                p.grad = g[r].clone()
            torch_opts[r].step()
    for r in range(2):
        for view, ref in zip(opt.views, refs[r], strict=True):
            torch.testing.assert_close(view[r], ref.detach(), rtol=0, atol=1e-6)
    assert opt.steps == [4, 2]
    opt.step_replica(1, [torch.ones(s) for s in shapes])  # a stale gradient of replica 1 alone
    for p, s in zip(refs[1], shapes, strict=True):
        p.grad = torch.ones(s)
    torch_opts[1].step()
    for view, ref in zip(opt.views, refs[1], strict=True):
        torch.testing.assert_close(view[1], ref.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("fn", "extra", "reason"),
    [
        (
            "dropout",
            {},
            "the model has dropout (drop): per-replica seeded dropout generators are not "
            "supported inside torch.func.vmap",
        ),
        (
            "batchnorm",
            {},
            "the model's buffer norm.running_mean changes in training (running statistics such "
            "as BatchNorm's), which stacked replicas under torch.func.vmap cannot carry",
        ),
        (
            "sparse",
            {},
            "the model's embedding emb has sparse gradients (sparse=True), and torch.func.grad "
            "gives dense ones only",
        ),
        (
            "functional_dropout",
            {},
            "the model draws random numbers in its forward (F.dropout, torch.rand, ...): "
            "per-replica seeded generators are not supported inside torch.func.vmap",
        ),
        (
            "build",
            {"optim.weight_decay": 0.01},
            "with weight decay, the model's parameter unused gets no gradient (torch.optim "
            "leaves it alone, a stacked update would decay it)",
        ),
        (
            "build",
            {"optim.name": "clippy"},
            "the 'clippy' optimizer is not implemented for stacked parameters",
        ),
        ("build", {}, None),
        ("plain", {}, None),
    ],
)
def test_what_the_stacked_path_refuses_and_why(models_file, fn, extra, reason):
    cfg = _cfg(models_file, fn, replicas=8, **extra)
    encoded = load_encoded(cfg.data)
    assert capability.unsupported_reason(cfg, encoded) == reason
    assert choose_engine(cfg, encoded) == ("vectorized" if reason is None else "process")


def test_a_forward_that_fails_under_vmap_is_the_reason(models_file):
    cfg = _cfg(models_file, "item", replicas=8)
    reason = capability.unsupported_reason(cfg, load_encoded(cfg.data))
    assert reason.startswith("its forward or backward fails under torch.func.vmap (RuntimeError: ")
    assert "\n" not in reason


def test_auto_follows_the_measured_rule_before_trying_the_model(models_file, monkeypatch):
    cfg = _cfg(models_file)
    encoded = load_encoded(cfg.data)
    for replicas, batch, engine in [
        (8, 64, "vectorized"),
        (8, 512, "vectorized"),
        (7, 64, "process"),
        (4, 256, "process"),
        (8, 1024, "process"),
        (16, 1024, "vectorized"),
    ]:
        cfg.replicas, cfg.optim.batch_size = replicas, batch
        assert choose_engine(cfg, encoded) == engine, (replicas, batch)

    def refuse(*args):
        raise AssertionError("the model was tried although the rule says process")

    monkeypatch.setattr(capability, "factory_reason", refuse)
    cfg.replicas = 2
    assert choose_engine(cfg, encoded) == "process"
    cfg.engine = "process"
    assert choose_engine(cfg, encoded) == "process"


BASE = ["--synth-rows", "600", "--epochs", "1", "--replicas", "3", "--engine", "vectorized"]


def _run(models_file, tmp_path, name, fn, vary):
    out = tmp_path / name
    args = ["train-ensemble", "--model-factory", f"{models_file}:{fn}", *BASE, "--vary", vary]
    return out, CliRunner().invoke(app, [*args, "--out", str(out)])


def _pred_bytes(out, r):
    frame = pd.read_parquet(out / "replicas" / f"{r:03d}" / "predictions.parquet")
    return frame["prediction"].to_numpy().tobytes()


def test_cli_engine_vectorized_trains_a_factory_model(models_file, tmp_path):
    out, result = _run(models_file, tmp_path, "init", "build", "init,data-order")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "vectorized" and summary["pd"]["rel"] > 0
    for r in range(3):
        log = pd.read_parquet(out / "replicas" / f"{r:03d}" / "train_log.parquet")
        assert {"step", "epoch", "loss", "grad_norm"} <= set(log.columns) and len(log) > 0
        metrics = json.loads((out / "replicas" / f"{r:03d}" / "metrics.json").read_text())
        assert metrics["steps"] == len(log) and not metrics["diverged"]
    none, result = _run(models_file, tmp_path, "none", "build", "none")
    assert result.exit_code == 0, result.output
    control = json.loads((none / "summary.json").read_text())
    assert control["pd"]["rel"] == 0.0 and control["pd"]["abs"] == 0.0
    assert _pred_bytes(none, 0) == _pred_bytes(none, 1) == _pred_bytes(none, 2)


def test_cli_engine_vectorized_refuses_a_model_it_cannot_stack(models_file, tmp_path):
    out, result = _run(models_file, tmp_path, "drop", "batchnorm", "init")
    line = one_error_line(result)
    assert line == (
        "error: --engine vectorized cannot train this configuration: the model's buffer "
        "norm.running_mean changes in training (running statistics such as BatchNorm's), which "
        "stacked replicas under torch.func.vmap cannot carry"
    )
    assert not (out / "manifest.json").exists()


def test_a_module_that_fails_while_training_is_one_line(models_file, tmp_path):
    out = tmp_path / "picky"
    args = ["train-ensemble", "--model-factory", f"{models_file}:picky", *BASE]
    result = CliRunner().invoke(app, [*args, "--batch-size", "100", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output + result.stderr
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0])  # after progress lines
    line = errors[0]
    assert line.startswith(
        "error: the model factory's module failed under torch.func.vmap at step "
    ), line
    assert "ValueError: cannot take a batch of" in line
    assert line.endswith("(--engine process trains it one replica at a time)")


def test_memory_mapped_data_trains_the_same_bytes(models_file, tmp_path, monkeypatch):
    monkeypatch.setenv("REPROKIT_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "synth.parquet"
    args = ["data", "synth", "--rows", "600", "--fields", "3", "--cardinality", "40"]
    assert CliRunner().invoke(app, [*args, "--out", str(data)]).exit_code == 0
    outs = {}
    for storage in ("memory", "mapped"):
        cfg = _cfg(models_file, **{"data.path": str(data), "data.storage": storage})
        encoded = load_encoded(cfg.data)
        assert encoded.is_mapped == (storage == "mapped")
        outs[storage] = _stacked(encoded, cfg, range(2))
    for a, b in zip(outs["memory"], outs["mapped"], strict=True):
        assert a.predictions.tobytes() == b.predictions.tobytes()


def test_the_speed_benchmark_times_both_engines():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "factory_vmap_speed.py"
    cmd = [sys.executable, str(script), "--rows", "800", "--replicas", "2", "--repeats", "1"]
    out = subprocess.run([*cmd, "--json"], capture_output=True, text=True, check=True, timeout=300)
    doc = json.loads(out.stdout)
    (cell,) = doc["results"]
    assert doc["mode"] == "engine" and doc["train_rows"] > 0 and cell["replicas"] == 2
    for engine in ("process", "vmap"):
        (run,) = cell[engine]
        assert run["wall_s"] > 0 and run["cpu_s"] > 0
        assert cell[f"{engine}_cpu_s"] == run["cpu_s"]
    assert cell["speedup_cpu"] == round(cell["process_cpu_s"] / cell["vmap_cpu_s"], 2)
    assert cell["max_abs_pred_diff"] < 1e-5  # 3 steps: replica k agrees to float rounding
