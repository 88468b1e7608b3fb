"""`--model-factory` / `train_ensemble(config, model_factory=build)`: a model written here (not one
of reprokit's) gets reprokit's seeding — PD > 0 with --vary init, exactly 0 with --vary none, the
same bytes twice; nn.Dropout is replaced by SeededDropout; bad input is one line and exit 2."""

import json
import textwrap

import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from torch import nn
from typer.testing import CliRunner

import reprokit
from reprokit.cli import app
from reprokit.config import resolve_config
from reprokit.errors import ReprokitError
from reprokit.nn.factory import FactoryModel, ModelSchema, load_factory, swap_dropout
from reprokit.nn.models import SeededDropout
from reprokit.runners.ensemble import choose_engine

# A user's model: its own embeddings, a bilinear term and nn.Dropout, default torch init.
USER_MODEL = """
import torch
from torch import nn


class TinyBilinear(nn.Module):
    def __init__(self, vocab_sizes, n_numeric, dim=4):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)
        self.scale = nn.Parameter(torch.randn(dim))  # a raw parameter drawn while building
        self.net = nn.Sequential(
            nn.Linear(dim * len(vocab_sizes) + n_numeric, 8), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(8, 1),
        )

    def forward(self, cat, num):
        e = torch.stack([t(cat[:, f]) for f, t in enumerate(self.emb)], dim=1)
        pair = (e[:, 0] * e[:, 1] * self.scale).sum(1)
        return self.net(torch.cat([e.flatten(1), num], dim=1)).squeeze(1) + pair


def build(schema):
    return TinyBilinear(schema.vocab_sizes, schema.n_numeric)


def not_a_module(schema):
    return "a string"


def wrong_shape(schema):
    class Three(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(schema.n_numeric, 3)

        def forward(self, cat, num):
            return self.w(num)

    return Three()


def no_params(schema):
    class Empty(nn.Module):
        def forward(self, cat, num):
            return num.sum(1)

    return Empty()


def raises(schema):
    raise RuntimeError("no GPU here")


class WithOwnReset(nn.Module):
    def __init__(self, schema):
        super().__init__()
        self.w = nn.Linear(schema.n_numeric, 1)
        self.calls = 0

    def reset_parameters(self, generator):
        self.calls += 1
        with torch.no_grad():
            self.w.weight.copy_(torch.rand(self.w.weight.shape, generator=generator))
            self.w.bias.zero_()

    def forward(self, cat, num):
        return self.w(num)


def own_reset(schema):
    return WithOwnReset(schema)
"""

BASE = ["--synth-rows", "600", "--epochs", "1", "--replicas", "2"]


@pytest.fixture
def factory_file(tmp_path):
    path = tmp_path / "user_model.py"
    path.write_text(textwrap.dedent(USER_MODEL))
    return path


def _train(tmp_path, name, spec, vary, extra=()):
    out = tmp_path / name
    args = ["train-ensemble", "--model-factory", spec, *BASE, "--vary", vary, "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "summary.json").read_text())


def _pred_bytes(out, r):
    frame = pd.read_parquet(out / "replicas" / f"{r:03d}" / "predictions.parquet")
    return frame["prediction"].to_numpy().tobytes()


def test_init_varies_control_arm_is_zero_and_two_runs_give_the_same_bytes(factory_file, tmp_path):
    spec = f"{factory_file}:build"
    out, varied = _train(tmp_path, "init", spec, "init")
    assert varied["pd"]["rel"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["engine"] == "process" and manifest["config"]["model"]["factory"] == spec
    assert "embedding" not in varied  # the module's embeddings are its own
    none, control = _train(tmp_path, "none", spec, "none")
    assert control["pd"]["rel"] == 0.0 and control["pd"]["abs"] == 0.0
    assert _pred_bytes(none, 0) == _pred_bytes(none, 1)
    again, _ = _train(tmp_path, "again", spec, "init")
    for r in (0, 1):
        assert _pred_bytes(out, r) == _pred_bytes(again, r)
    drop, dropped = _train(tmp_path, "dropout", spec, "dropout")
    assert dropped["pd"]["rel"] > 0  # nn.Dropout became SeededDropout on the dropout source


def _schema():
    return ModelSchema([5, 6, 7], 2, ["a", "b", "c"], ["x", "y"], ["label"])


def test_init_is_a_rebuild_from_the_init_generator(factory_file):
    build = load_factory(f"{factory_file}:build")
    a, b = FactoryModel(build, _schema()), FactoryModel(build, _schema())
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    before = torch.random.get_rng_state()
    b.reset_parameters(torch.Generator().manual_seed(4))
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's global state is kept
    # every parameter differs, the raw one drawn in __init__ included
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert not torch.equal(p, q), name
    assert [type(m) for m in a.inner.net] == [nn.Linear, nn.ReLU, SeededDropout, nn.Linear]
    assert a.dropouts == ["net.2"] and a.inner.net[2].p == 0.2


def test_a_module_with_reset_parameters_generator_gets_the_init_generator(factory_file):
    model = FactoryModel(load_factory(f"{factory_file}:own_reset"), _schema())
    model.reset_parameters(torch.Generator().manual_seed(9))
    want = torch.rand((1, 2), generator=torch.Generator().manual_seed(9))
    assert model.inner.calls == 1 and torch.equal(model.inner.w.weight, want)


def test_swap_dropout_replaces_exactly_nn_dropout_per_position():
    shared = nn.Dropout(0.3)
    model = nn.Sequential(shared, nn.Sequential(shared, nn.AlphaDropout(0.1)))
    assert swap_dropout(model) == ["0", "1.0"]
    assert isinstance(model[0], SeededDropout) and isinstance(model[1][0], SeededDropout)
    assert model[0] is not model[1][0] and isinstance(model[1][1], nn.AlphaDropout)


class _ApiModel(nn.Module):
    def __init__(self, schema):
        super().__init__()
        self.lin = nn.Linear(schema.n_numeric + len(schema.vocab_sizes), 1)

    def forward(self, cat, num):
        return self.lin(torch.cat([cat.float() / 100, num], dim=1)).squeeze(1)


def api_build(schema):
    return _ApiModel(schema)


def self_seeding_build(schema):
    torch.manual_seed(123)  # fixes its own initialisation: --vary init cannot change it
    return _ApiModel(schema)


def test_python_api_takes_a_callable(tmp_path):
    cfg = resolve_config(None, {"data.synth_rows": 600, "optim.epochs": 1, "replicas": 2})
    summary = reprokit.train_ensemble(cfg, out=tmp_path / "api", model_factory=api_build)
    assert cfg.model.factory == f"{__name__}:api_build"
    assert summary["config"]["model"]["factory"] == cfg.model.factory
    assert summary["pd"]["rel"] > 0
    assert choose_engine(cfg) == "process"


def test_a_build_that_seeds_torch_itself_gets_a_note(tmp_path, capsys):
    cfg = resolve_config(None, {"data.synth_rows": 600, "optim.epochs": 1, "replicas": 2})
    summary = reprokit.train_ensemble(cfg, out=tmp_path / "s", model_factory=self_seeding_build)
    note = " ".join(capsys.readouterr().err.split())
    assert "draws the same initial parameters from every init seed" in note
    assert summary["pd"]["rel"] == 0.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{dir}/missing.py:build", "error: model factory file {dir}/missing.py does not exist"),
        ("{file}:nope", "error: model factory {file} has no function 'nope'"),
        ("{file}:not_a_module", "error: the model factory must return a torch nn.Module, got str"),
        (
            "{file}:wrong_shape",
            "error: the model factory's module must return logits of shape [8, 1] or [8] for a "
            "batch of 8 rows and 1 task(s), got shape [8, 3]",
        ),
        ("{file}:no_params", "error: the model factory's module has no parameters to train"),
        ("{file}:raises", "error: the model factory raised RuntimeError: no GPU here"),
        ("no_such_pkg_xyz.mod:build", "error: model factory module 'no_such_pkg_xyz.mod' cannot"),
        ("{file}", "error: model factory '{file}' must name FILE.py:FUNCTION"),
    ],
)
def test_bad_factories_are_one_line_before_any_replica(spec, message, factory_file, tmp_path):
    fmt = {"dir": tmp_path, "file": factory_file}
    out = tmp_path / "run"
    args = ["train-ensemble", "--model-factory", spec.format(**fmt), *BASE, "--out", str(out)]
    line = one_error_line(CliRunner().invoke(app, args))
    assert line.startswith(message.format(**fmt)), line
    assert not (out / "manifest.json").exists()


def test_factory_with_reprokit_model_options_is_refused():
    with pytest.raises(ReprokitError, match=r"model.arch \('deepfm'\) does not apply"):
        resolve_config(None, {"model.factory": "m.py:build", "model.arch": "deepfm"})
    with pytest.raises(ReprokitError, match="model.embedding and model.field_dims do not apply"):
        resolve_config(None, {"model.factory": "m.py:build", "model.embedding": "hashed:buckets=8"})


def test_engine_vectorized_refuses_a_factory_in_one_line(factory_file, tmp_path):
    args = ["train-ensemble", "--model-factory", f"{factory_file}:build", "--engine", "vectorized"]
    line = one_error_line(CliRunner().invoke(app, [*args, *BASE, "--out", str(tmp_path / "r")]))
    assert line == (
        "error: --engine vectorized cannot train this configuration: the model has dropout "
        "(net.2): per-replica seeded dropout generators are not supported inside torch.func.vmap"
    )


def test_activation_option_swaps_the_modules_relus(factory_file):
    from reprokit.nn.activations import SmeLU

    build = load_factory(f"{factory_file}:build")
    model = FactoryModel(build, _schema(), "smelu:beta=1")
    assert model.activations == ["net.1"] and isinstance(model.inner.net[1], SmeLU)
    model.reset_parameters(torch.Generator().manual_seed(0))  # the rebuild swaps alike
    assert FactoryModel(build, _schema()).activations == []


def test_dropout_and_batch_norm_options_are_refused_with_a_factory():
    with pytest.raises(ReprokitError, match="model.dropout and model.batch_norm do not apply"):
        resolve_config(None, {"model.factory": "m.py:build", "model.dropout": 0.1})
