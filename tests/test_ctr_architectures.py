"""DeepFM, DCN-v2, Wide & Deep and DLRM: each forward against its formula written out by hand on a
tiny input, seeded initialisation, embedding kinds, the registry and engine choice, and tiny
train-ensemble runs (control arm PD exactly 0, varied init PD > 0)."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.components.architectures import ARCHITECTURES
from reprokit.config import resolve_config
from reprokit.errors import ReprokitError
from reprokit.nn.ctr import (
    DCNv2Model,
    DeepFMModel,
    DLRMModel,
    WideDeepModel,
    dot_interaction,
    fm_second_order,
)
from reprokit.nn.models import create_model
from reprokit.runners.ensemble import choose_engine

NEW = ["deepfm", "dcn-v2", "wide-deep", "dlrm"]
VOCAB = [5, 7, 4]


def _input(b=6, n_numeric=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, v, (b,), generator=g) for v in VOCAB], dim=1)
    return cat, torch.randn(b, n_numeric, generator=g)


def _model(arch, n_numeric=2, **kw):
    model = create_model(arch, VOCAB, n_numeric, embedding_dim=3, **kw)
    model.reset_parameters(torch.Generator().manual_seed(7))
    # move biases off zero so the formulas below see them
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.linspace(-0.3, 0.4, p.numel()).reshape(p.shape))
    return model.eval()


def _rows(table, cat):
    """Field f's row of id cat[:, f], straight from the nn.Embedding weights: [batch, F, D]."""
    return torch.stack([table.tables[f].weight[cat[:, f]] for f in range(len(VOCAB))], dim=1)


def test_fm_second_order_is_the_sum_over_pairs():
    e = torch.randn(4, 5, 3, dtype=torch.float64)
    want = sum((e[:, i] * e[:, j]).sum(1) for i, j in itertools.combinations(range(5), 2))
    assert torch.allclose(fm_second_order(e), want)


def test_dot_interaction_lists_every_pair_once_in_row_major_order():
    u = torch.randn(2, 4, 3, dtype=torch.float64)
    want = torch.stack([(u[:, i] * u[:, j]).sum(1) for i, j in itertools.combinations(range(4), 2)])
    assert torch.allclose(dot_interaction(u), want.T)


def _relu_mlp(layers, x):
    for m in layers:
        x = m(x)
    return x


def test_deepfm_forward_against_its_formula():
    model = _model("deepfm", hidden=[4])
    assert isinstance(model, DeepFMModel)
    cat, num = _input()
    e = _rows(model.embeddings, cat)
    w = _rows(model.linear.table, cat)[..., 0]  # per-id first-order weights [batch, F]
    lin = model.linear
    first = lin.bias[0] + w.sum(1) + num @ lin.numeric.weight[0] + lin.numeric.bias[0]
    fm = sum((e[:, i] * e[:, j]).sum(1) for i, j in itertools.combinations(range(3), 2))
    x = torch.cat([e.flatten(1), num], dim=1)
    l1 = model.mlp[0]
    deep = torch.relu(x @ l1.weight.T + l1.bias) @ model.head.weight[0] + model.head.bias[0]
    got = model(cat, num)
    assert got.shape == (6, 1)
    assert torch.allclose(got[:, 0], first + fm + deep, atol=1e-6)


def test_one_cross_layer_against_its_formula():
    model = _model("dcn-v2", hidden=[], cross_layers=1)
    assert isinstance(model, DCNv2Model) and len(model.cross) == 1
    cat, num = _input()
    x0 = torch.cat([_rows(model.embeddings, cat).flatten(1), num], dim=1)
    W, b = model.cross[0].linear.weight, model.cross[0].linear.bias
    x1 = x0 * (x0 @ W.T + b) + x0
    # parallel structure: the head reads [cross output, deep output]; no hidden layers: deep = x0
    want = torch.cat([x1, x0], dim=1) @ model.head.weight[0] + model.head.bias[0]
    assert torch.allclose(model(cat, num)[:, 0], want, atol=1e-6)


def test_two_cross_layers_feed_x0_into_each():
    model = _model("dcn-v2", hidden=[], cross_layers=2)
    cat, num = _input()
    x0 = torch.cat([_rows(model.embeddings, cat).flatten(1), num], dim=1)
    x = x0
    for layer in model.cross:
        x = x0 * (x @ layer.linear.weight.T + layer.linear.bias) + x
    want = torch.cat([x, x0], dim=1) @ model.head.weight[0] + model.head.bias[0]
    assert torch.allclose(model(cat, num)[:, 0], want, atol=1e-6)


def test_wide_part_against_its_formula():
    model = _model("wide-deep", hidden=[])
    assert isinstance(model, WideDeepModel)
    cat, num = _input()
    # wide: one weight per (field, id), i.e. a linear model of the one-hot encoding, + numeric
    onehot = torch.cat([torch.nn.functional.one_hot(cat[:, f], v) for f, v in enumerate(VOCAB)], 1)
    weights = torch.cat([model.linear.table.tables[f].weight[:, 0] for f in range(3)])
    lin = model.linear
    wide = (
        onehot.float() @ weights + lin.bias[0] + num @ lin.numeric.weight[0] + lin.numeric.bias[0]
    )
    x = torch.cat([_rows(model.embeddings, cat).flatten(1), num], dim=1)
    deep = x @ model.head.weight[0] + model.head.bias[0]
    assert torch.allclose(model(cat, num)[:, 0], wide + deep, atol=1e-6)


def test_dlrm_forward_against_its_formula():
    model = _model("dlrm", hidden=[4])
    assert isinstance(model, DLRMModel)
    cat, num = _input()
    e = _rows(model.embeddings, cat)
    b0, b1 = model.bottom[0], model.bottom[2]  # Linear(2→4), ReLU, Linear(4→3), ReLU
    z = torch.relu(torch.relu(num @ b0.weight.T + b0.bias) @ b1.weight.T + b1.bias)
    u = torch.cat([z.unsqueeze(1), e], dim=1)  # [batch, 1 + F, D]
    dots = [(u[:, i] * u[:, j]).sum(1) for i, j in itertools.combinations(range(4), 2)]
    top_in = torch.cat([z, torch.stack(dots, dim=1)], dim=1)
    t0 = model.top[0]
    want = torch.relu(top_in @ t0.weight.T + t0.bias) @ model.head.weight[0] + model.head.bias[0]
    assert torch.allclose(model(cat, num)[:, 0], want, atol=1e-6)


def test_dlrm_without_numeric_features_interacts_the_embeddings_only():
    model = _model("dlrm", n_numeric=0, hidden=[4])
    assert model.bottom is None and model.top[0].in_features == 3  # 3 pairs of 3 fields
    cat, _ = _input(n_numeric=0)
    assert model(cat, torch.zeros(6, 0)).shape == (6, 1)


@pytest.mark.parametrize("arch", NEW)
def test_seeded_init_multitask_heads_and_dropout_generator(arch):
    a = create_model(arch, VOCAB, 2, hidden=[4], n_tasks=3, dropout=0.5)
    b = create_model(arch, VOCAB, 2, hidden=[4], n_tasks=3, dropout=0.5)
    a.reset_parameters(torch.Generator().manual_seed(1))
    b.reset_parameters(torch.Generator().manual_seed(1))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    b.reset_parameters(torch.Generator().manual_seed(2))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    cat, num = _input()
    assert a.eval()(cat, num).shape == (6, 3) and a.n_tasks == 3
    a.train()
    outs = []
    for _ in range(2):  # the masks come from the generator the loop installs, nothing else
        a.set_dropout_generator(torch.Generator().manual_seed(5))
        outs.append(a(cat, num))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("arch", NEW)
@pytest.mark.parametrize("embedding", ["hashed:buckets=4", "qr:buckets=3", "mde:alpha=0.5"])
def test_every_static_kind_gives_equal_widths_per_field(arch, embedding):
    model = create_model(arch, VOCAB, 2, hidden=[4], embedding=embedding, embedding_dim=4)
    model.reset_parameters(torch.Generator().manual_seed(0))
    cat, num = _input()
    assert model.embeddings(cat).shape == (6, 3, 4)  # mde projects every field to the width
    assert torch.isfinite(model(cat, num)).all()


@pytest.mark.parametrize("arch", ["deepfm", "wide-deep"])
def test_linear_part_refuses_tables_it_cannot_mirror(arch):
    for spec in ("collisionless", "lma:memory=64", "qr:buckets=3,op=concat"):
        with pytest.raises(ReprokitError, match=f"^{arch}'s per-id linear weights need a table"):
            resolve_config(None, {"model.arch": arch, "model.embedding": spec})
    resolve_config(None, {"model.arch": "dcn-v2", "model.embedding": "collisionless"})


def test_registry_marks_them_reference_loop_only_and_auto_picks_process():
    for arch in NEW:
        caps = ARCHITECTURES[arch].capabilities
        assert caps.stacked is False
        assert caps.linear_part is (arch in ("deepfm", "wide-deep"))
        assert choose_engine(resolve_config(None, {"model.arch": arch})) == "process"
    assert choose_engine(resolve_config(None, {"model.arch": "mlp"})) == "vectorized"
    with pytest.raises(ReprokitError, match="the number of cross layers must be at least 1"):
        resolve_config(None, {"model.arch": "dcn-v2", "model.cross_layers": 0})


def test_engine_vectorized_is_one_line(tmp_path):
    args = ["train-ensemble", "--model", "dcn-v2", "--engine", "vectorized", "--synth-rows", "400"]
    line = one_error_line(CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")]))
    assert line == (
        "error: --engine vectorized cannot train this configuration: the 'dcn-v2' model is not "
        "implemented for stacked parameters"
    )


def test_collisionless_with_deepfm_is_one_line(tmp_path):
    args = ["train-ensemble", "--model", "deepfm", "--embedding", "collisionless"]
    line = one_error_line(CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r")]))
    assert line.startswith("error: deepfm's per-id linear weights need a table, hashed, qr")


def _run(tmp_path, name, arch, vary, extra=()):
    out = tmp_path / name
    args = ["train-ensemble", "--model", arch, "--synth-rows", "600", "--epochs", "1"]
    args += ["--replicas", "2", "--vary", vary, "--hidden", "8", "--out", str(out), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())


def _predictions(out, r):
    return pd.read_parquet(out / "replicas" / f"{r:03d}" / "predictions.parquet")


@pytest.mark.parametrize("arch", NEW)
def test_tiny_runs_control_arm_is_exactly_zero_and_init_varies(arch, tmp_path):
    out, summary = _run(tmp_path, "none", arch, "none", ["--dropout", "0.1"])
    assert summary["pd"]["rel"] == 0.0 and summary["pd"]["abs"] == 0.0
    assert json.loads((out / "manifest.json").read_text())["engine"] == "process"
    a, b = _predictions(out, 0), _predictions(out, 1)
    assert a["prediction"].to_numpy().tobytes() == b["prediction"].to_numpy().tobytes()
    assert summary["config"]["model"]["arch"] == arch
    _, varied = _run(tmp_path, "init", arch, "init")
    assert varied["pd"]["rel"] > 0
    assert 0.0 <= varied["auc"]["mean"] <= 1.0


def test_multitask_run_trains_an_output_per_task(tmp_path):
    out, summary = _run(tmp_path, "mt", "deepfm", "init", ["--tasks", "2"])
    assert set(summary["tasks"]) == {"label", "label_1"}
    cols = _predictions(out, 0).columns
    assert {"prediction_label", "prediction_label_1"} <= set(cols)
    assert np.isfinite(_predictions(out, 1)["prediction_label_1"]).all()
