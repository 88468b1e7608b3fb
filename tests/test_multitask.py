"""Multitask models (shared-bottom, MMoE), per-task loss, per-task summaries, optimizer wiring."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from reprokit.commands.options import tasks_overrides
from reprokit.config import resolve_config
from reprokit.data.encoding import load_encoded
from reprokit.errors import ReprokitError
from reprokit.nn.models import CTRModel, MMoEModel, SharedBottomModel, create_model
from reprokit.optim import OPTIMIZER_NAMES, ClippyAdagrad
from reprokit.runners.ensemble import choose_engine, train_ensemble
from reprokit.sources import replica_seeds
from reprokit.training.loop import (
    SPARSE_GRAD_OPTIMIZERS,
    build_model,
    build_optimizer,
    optimizer_kwargs,
    train_replica,
)

TINY = {"data.synth_rows": 1500, "optim.epochs": 1, "model.hidden": "8", "model.tower": "4"}


def _batch(b=5, fields=2):
    return torch.zeros(b, fields, dtype=torch.long), torch.randn(b, 3)


@pytest.mark.parametrize("arch", ["mlp", "shared-bottom", "mmoe"])
def test_shapes_and_seeded_init(arch):
    a = create_model(arch, [4, 6], 3, hidden=[8], tower=[4], experts=3, n_tasks=3)
    b = create_model(arch, [4, 6], 3, hidden=[8], tower=[4], experts=3, n_tasks=3)
    a.reset_parameters(torch.Generator().manual_seed(1))
    b.reset_parameters(torch.Generator().manual_seed(1))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    cat, num = _batch()
    assert a(cat, num).shape == (5, 3) and a.n_tasks == 3


def test_architecture_structure():
    sb = create_model("shared-bottom", [4], 1, hidden=[8, 6], tower=[4], n_tasks=2)
    assert isinstance(sb, SharedBottomModel)
    assert [m.out_features for m in sb.heads] == [1, 1]
    assert sb.towers[0][0].in_features == 6  # tower sits on the shared bottom's output
    mm = create_model("mmoe", [4], 1, hidden=[8], tower=[4], experts=3, n_tasks=2)
    assert isinstance(mm, MMoEModel) and len(mm.experts) == 3 and len(mm.gates) == 2
    assert (
        mm.gates[0].out_features == 3 and mm.gates[0].in_features == 8 + 1
    )  # one field of dim 8 + one numeric
    x = torch.randn(7, 9)
    w = mm.gate_weights(x)
    assert w.shape == (7, 2, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(7, 2))
    assert isinstance(create_model("mlp", [4], 1, n_tasks=2), CTRModel)
    with pytest.raises(ReprokitError, match="unknown model"):
        create_model("tower-of-babel", [4], 1)


def test_mmoe_with_one_expert_equals_shared_bottom_with_the_same_weights():
    """A single expert gets gate weight 1, so MMoE reduces to shared-bottom exactly."""
    mm = create_model("mmoe", [5], 2, hidden=[6], tower=[3], experts=1, n_tasks=2)
    sb = create_model("shared-bottom", [5], 2, hidden=[6], tower=[3], n_tasks=2)
    mm.reset_parameters(torch.Generator().manual_seed(0))
    sd = {
        k.replace("experts.0.", "bottom."): v
        for k, v in mm.state_dict().items()
        if "gates" not in k
    }
    sb.load_state_dict(sd)
    cat, num = torch.randint(0, 5, (4, 1)), torch.randn(4, 2)
    torch.testing.assert_close(mm(cat, num), sb(cat, num))


def test_training_loss_is_the_mean_of_the_per_task_losses():
    cfg = resolve_config(
        None, {**TINY, "data.synth_tasks": 2, "data.labels": "all", "model.arch": "mmoe"}
    )
    enc = load_encoded(cfg.data)
    out = train_replica(enc, cfg, 0, replica_seeds(0, cfg.vary, 0))
    log = out.log
    assert {"loss_label", "loss_label_1"} <= set(log.columns)
    np.testing.assert_allclose(
        log["loss"], (log["loss_label"] + log["loss_label_1"]) / 2, rtol=1e-5
    )
    assert out.predictions.shape == (enc.eval_y.shape[0], 2)
    # Hand check of the reduction: BCE(0, 1) = BCE(0, 0) = ln 2; BCE(ln 3, 1) = ln(4/3).
    logits = torch.tensor([[0.0, np.log(3.0)], [0.0, np.log(3.0)]])
    y = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    expected = (np.log(2.0) + np.log(4.0 / 3.0)) / 2
    assert float(F.binary_cross_entropy_with_logits(logits, y)) == pytest.approx(expected)


def test_multitask_ensemble_files_and_summary(tmp_path):
    cfg = resolve_config(
        None,
        {
            **TINY,
            "data.synth_tasks": 2,
            "data.labels": "all",
            "model.arch": "shared-bottom",
            "replicas": 3,
        },
    )
    summary = train_ensemble(cfg, out=tmp_path / "r")
    frame = pd.read_parquet(tmp_path / "r/replicas/000/predictions.parquet")
    assert list(frame.columns) == [
        "example_id",
        "label",
        "label_1",
        "prediction_label",
        "prediction_label_1",
    ]
    assert set(summary["tasks"]) == {"label", "label_1"}
    assert summary["auc"] == summary["tasks"]["label"]["auc"]  # top level = first task
    assert summary["pd"] == summary["tasks"]["label"]["pd"]
    assert summary["tasks"]["label_1"]["pd"]["rel"] != summary["pd"]["rel"]
    metrics = json.loads((tmp_path / "r/replicas/000/metrics.json").read_text())
    assert set(metrics["tasks"]) == {"label", "label_1"} and "divergence" in metrics
    assert "event" in pd.read_parquet(tmp_path / "r/replicas/000/train_log.parquet").columns


def test_engine_choice_for_models_the_stacked_engine_lacks():
    cfg = resolve_config(None, {"model.arch": "mmoe"})
    assert choose_engine(cfg) == "process"
    cfg.engine = "vectorized"
    with pytest.raises(ReprokitError, match="'mmoe' model"):
        choose_engine(cfg)
    clippy = resolve_config(None, {"optim.name": "clippy"})
    assert choose_engine(clippy) == "process"
    a0 = resolve_config(None, {"optim.initial_accumulator_value": 0.1})
    assert choose_engine(a0) == "vectorized"  # the stacked Adagrad takes A0 too
    assert choose_engine(resolve_config(None, {})) == "vectorized"


def test_tasks_option():
    assert tasks_overrides("3", False) == {"data.synth_tasks": 3, "data.labels": ["all"]}
    assert tasks_overrides("label,label_5star", True) == {"data.labels": ["label", "label_5star"]}
    with pytest.raises(ReprokitError, match="synthetic tasks"):
        tasks_overrides("2", True)
    with pytest.raises(ReprokitError, match="not a label"):
        load_encoded(resolve_config(None, {"data.labels": "label,label_9"}).data)


def test_optimizer_kwargs_and_accumulator_defaults():
    def kw(**o):
        return optimizer_kwargs(resolve_config(None, {f"optim.{k}": v for k, v in o.items()}))

    assert kw(name="adagrad") == {"initial_accumulator_value": 0.0}  # torch's default
    assert kw(name="clippy") == {}  # its preset's 0.1
    assert kw(name="adagrad+gradclip", initial_accumulator_value=0.1) == {
        "initial_accumulator_value": 0.1
    }
    assert kw(name="adam", weight_decay=0.01) == {"weight_decay": 0.01}


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_trains_one_step_and_sparse_tables_follow_support(name):
    cfg = resolve_config(None, {"optim.name": name})
    model = build_model(cfg, [5, 7], 2, 2)
    assert model.embeddings.tables[0].sparse == (name in SPARSE_GRAD_OPTIMIZERS)
    model.reset_parameters(torch.Generator().manual_seed(0))
    opt, transform = build_optimizer(cfg, model)
    cat, num = torch.randint(0, 5, (16, 2)), torch.randn(16, 2)
    before = [p.detach().clone() for p in model.parameters()]
    F.binary_cross_entropy_with_logits(model(cat, num), torch.ones(16, 2)).backward()
    if transform is not None:
        transform.apply()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_clippy_sigma_is_logged():
    cfg = resolve_config(None, {**TINY, "optim.name": "clippy", "optim.lr": 5.0})
    enc = load_encoded(cfg.data)
    log = train_replica(enc, cfg, 0, replica_seeds(0, cfg.vary, 0)).log
    assert {"sigma_min", "sigma_mean"} <= set(log.columns)
    assert ((log.sigma_min > 0) & (log.sigma_min <= log.sigma_mean) & (log.sigma_mean <= 1)).all()
    assert (log.sigma_min < 1).any()  # lr 5 must be clipped somewhere
    plain = resolve_config(None, {**TINY})
    assert "sigma_min" not in train_replica(enc, plain, 0, replica_seeds(0, plain.vary, 0)).log
    assert isinstance(build_optimizer(cfg, build_model(cfg, [3], 1, 1)).optimizer, ClippyAdagrad)
