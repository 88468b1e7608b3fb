"""The vectorized engine's capability check asks the components' declared capabilities and the
config's sources; it never builds a model (models are booby-trapped here)."""

import subprocess
import sys

import pytest

import reprokit.nn.models as models
import reprokit.training.loop as loop
from reprokit.components.optimizers import OPTIMIZERS
from reprokit.config import resolve_config
from reprokit.errors import ReprokitError
from reprokit.runners.ensemble import choose_engine
from reprokit.training.stacked.capability import check_supported, unsupported_reason


@pytest.fixture(autouse=True)
def no_model_building(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the capability check built a model")

    monkeypatch.setattr(models, "create_model", refuse)
    monkeypatch.setattr(loop, "build_model", refuse)
    for cls in (models.CTRModel, models.SharedBottomModel, models.MMoEModel):
        monkeypatch.setattr(cls, "__init__", refuse)


def _cfg(**overrides):
    return resolve_config(None, overrides)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, None),
        ({"vary": "init,data-order,dropout,async", "model.dropout": 0.1}, None),
        ({"vary": "init,threads"}, "the 'threads' source needs a separate process per replica"),
        (
            {"optim.name": "clippy"},
            "the 'clippy' optimizer is not implemented for stacked parameters",
        ),
        (
            {"model.arch": "shared-bottom"},
            "the 'shared-bottom' model is not implemented for stacked parameters",
        ),
        (
            {"optim.weight_decay": 0.01},
            "weight decay (the reference loop then uses dense embedding gradients)",
        ),
        ({"optim.weight_decay": 0.01, "optim.name": "adam"}, None),  # Adam's tables are dense
        (
            {"model.batch_norm": True},
            "the MLP has a BatchNorm1d layer with parameters or buffers",
        ),
        (
            {"model.activation": "smelu_learnable"},
            "the MLP has a LearnableSmeLU layer with parameters or buffers",
        ),
        # without hidden layers there is no layer to hold state: embeddings → head
        (
            {"model.hidden": [], "model.batch_norm": True, "model.activation": "smelu_learnable"},
            None,
        ),
        ({"model.activation": "gsmelu:alpha=0.5"}, None),
    ],
)
def test_reasons_come_from_declared_capabilities(overrides, reason):
    cfg = _cfg(**overrides)
    assert unsupported_reason(cfg) == reason
    assert choose_engine(cfg) == ("vectorized" if reason is None else "process")
    if reason is not None:
        with pytest.raises(ReprokitError) as exc:
            check_supported(cfg)
        assert str(exc.value) == f"the vectorized engine cannot train this configuration: {reason}"
        cfg.engine = "vectorized"
        with pytest.raises(ReprokitError, match="--engine vectorized cannot train"):
            choose_engine(cfg)


def test_every_stacked_optimizer_is_supported_and_no_other():
    for name in OPTIMIZERS.names:
        supported = unsupported_reason(_cfg(**{"optim.name": name})) is None
        assert supported == OPTIMIZERS[name].capabilities.stacked, name


def test_the_capability_check_needs_no_torch_for_configs_it_refuses_early():
    code = (
        "import sys; from reprokit.config import RunConfig; "
        "from reprokit.training.stacked.capability import unsupported_reason; "
        "c = RunConfig(); c.model.arch = 'mmoe'; c.vary = ['init']; "
        "print(unsupported_reason(c)); assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "the 'mmoe' model is not implemented for stacked parameters"
