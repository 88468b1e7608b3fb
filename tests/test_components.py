"""Component registries: every declared capability agrees with what the component really does
(built and run here), the registries are torch-free, and unknown names list the known ones."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from reprokit.components import Registry
from reprokit.components.architectures import ARCHITECTURES
from reprokit.components.optimizers import (
    OPTIMIZERS,
    PAPER_ACCUMULATOR_START,
    accumulator_start,
    run_accumulator,
)
from reprokit.components.tables import EMBEDDING_TABLES
from reprokit.config import resolve_config
from reprokit.errors import ReprokitError
from reprokit.nn.models import create_model
from reprokit.nn.registry import create_activation, list_activations
from reprokit.optim import OPTIMIZER_NAMES, describe_optimizers, make_optimizer
from reprokit.training.loop import optimizer_kwargs


def test_registries_and_config_import_neither_torch_nor_nn_nor_optim():
    """report and gate read configs; they must not pull in torch or the model code."""
    code = (
        "import sys, reprokit.config, reprokit.components.architectures, "
        "reprokit.components.optimizers, reprokit.components.tables, "
        "reprokit.components.activations; "
        "bad = [m for m in sys.modules if m == 'torch' or "
        "m.startswith(('reprokit.nn', 'reprokit.optim', 'reprokit.training'))]; "
        "assert not bad, bad; "
        "print(reprokit.config.ARCHS, reprokit.config.EMBEDDINGS)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.strip()
        == "('mlp', 'shared-bottom', 'mmoe', 'deepfm', 'dcn-v2', 'wide-deep', 'dlrm') "
        "('table', 'hashed', 'qr', 'mde', 'collisionless', 'lma')"
    )


def test_config_accepts_every_registered_name_and_refuses_others():
    for name in OPTIMIZERS.names:
        assert resolve_config(None, {"optim.name": name.upper()}).optim.name == name
    for arch in ARCHITECTURES.names:
        assert resolve_config(None, {"model.arch": arch}).model.arch == arch
    with pytest.raises(ReprokitError, match="unknown optimizer 'nadam'; choose one of adagrad"):
        resolve_config(None, {"optim.name": "nadam"})
    with pytest.raises(ReprokitError, match="unknown model 'dcn'; choose mlp, shared-bottom, mmoe"):
        resolve_config(None, {"model.arch": "dcn"})
    with pytest.raises(ReprokitError, match="unknown embedding table 'lsh'; choose one of: table;"):
        resolve_config(None, {"model.embedding": "lsh"})
    assert list(describe_optimizers()) == list(OPTIMIZER_NAMES)


def test_every_entry_has_the_same_shape_and_its_builder_loads():
    for registry in (OPTIMIZERS, ARCHITECTURES, EMBEDDING_TABLES):
        assert isinstance(registry, Registry) and len(registry) == len(registry.names)
        for info in registry:
            assert info.spec == info.name and info.description
            assert callable(info.load())
    for info in (*ARCHITECTURES, *EMBEDDING_TABLES):
        assert issubclass(info.load(), nn.Module)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ReprokitError) as exc:
        ARCHITECTURES.get("transformer")
    assert str(exc.value) == (
        "unknown model 'transformer'; choose one of: mlp, shared-bottom, mmoe, deepfm, dcn-v2, "
        "wide-deep, dlrm"
    )
    with pytest.raises(
        ReprokitError, match="unknown embedding table 'lsh'; choose one of: table, hashed, qr"
    ):
        EMBEDDING_TABLES["lsh"]
    with pytest.raises(ReprokitError, match="unknown optimizer 'NADAM'; choose one of: adagrad,"):
        make_optimizer("NADAM", [torch.zeros(1, requires_grad=True)], lr=0.1)


# ---- optimizers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPTIMIZERS.names)
def test_declared_accumulator_start_is_what_the_optimizer_gets(name):
    acc = OPTIMIZERS[name].capabilities.accumulator
    opt, _ = make_optimizer(name, [torch.zeros(3, requires_grad=True)], lr=0.1)
    group = opt.param_groups[0]
    if acc is None:
        assert "initial_accumulator_value" not in group
        assert accumulator_start(name) is None and run_accumulator(name, 0.3) is None
        return
    assert group["initial_accumulator_value"] == acc.start == PAPER_ACCUMULATOR_START
    # the classes' own defaults, used directly (no registry default passed), agree with it
    if name.startswith("clippy") or name == "adagrad+lamb":  # torch's Adagrad starts at 0
        own = OPTIMIZERS[name].load()([torch.zeros(3, requires_grad=True)], 0.1, {})
        assert own.optimizer.param_groups[0]["initial_accumulator_value"] == acc.start
    # a training run: the configured value wins; unset, the run default or the optimizer's own
    assert accumulator_start(name, 0.25) == 0.25 == run_accumulator(name, 0.25)
    expected = acc.start if acc.run_start is None else acc.run_start
    assert accumulator_start(name) == expected
    built = make_optimizer(name, [torch.zeros(3, requires_grad=True)], 0.1, **_run_kwargs(name))
    assert built.optimizer.param_groups[0]["initial_accumulator_value"] == expected


def _run_kwargs(name):
    return optimizer_kwargs(resolve_config(None, {"optim.name": name}))


def test_adagrad_starts_at_torch_default_in_runs_and_the_paper_value_when_built_directly():
    assert (
        accumulator_start("adagrad") == 0.0 == _run_kwargs("adagrad")["initial_accumulator_value"]
    )
    opt, _ = make_optimizer("adagrad", [torch.zeros(1, requires_grad=True)], lr=0.1)
    assert opt.param_groups[0]["initial_accumulator_value"] == 0.1
    assert OPTIMIZERS.having("accumulator") == tuple(
        n for n in OPTIMIZERS.names if n not in ("adam", "sgd")
    )


@pytest.mark.parametrize("name", OPTIMIZERS.names)
def test_sparse_gradients_capability_matches_a_real_sparse_step(name):
    torch.sparse.check_sparse_tensor_invariants.disable()  # as the loop does: no warning
    table = nn.Embedding(6, 3, sparse=True)
    opt, transform = make_optimizer(name, table.parameters(), lr=0.1)
    table(torch.tensor([1, 4, 1])).sum().backward()
    assert table.weight.grad.is_sparse
    before = table.weight.detach().clone()

    def step():
        if transform is not None:
            transform.apply()
        opt.step()

    if OPTIMIZERS[name].capabilities.sparse_gradients:
        step()
        moved = (table.weight.detach() != before).any(dim=1)
        assert moved.tolist() == [False, True, False, False, True, False]  # the batch's rows only
    else:
        with pytest.raises((RuntimeError, ReprokitError, ValueError)):
            step()


# ---- architectures and activations ----------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHITECTURES.names)
def test_architecture_entries_build_their_class_and_declare_towers(arch):
    info = ARCHITECTURES[arch]
    model = create_model(arch, [4, 6], 3, hidden=[8], tower=[4], experts=2, n_tasks=2)
    assert type(model) is info.load()
    assert info.capabilities.multitask == hasattr(model, "towers")
    assert info.capabilities.stacked == (arch == "mlp")


@pytest.mark.parametrize("info", list_activations(), ids=lambda i: i.name)
def test_activation_stacked_capability_means_no_parameters_or_buffers(info):
    module = create_activation(info.name)
    stateless = not list(module.parameters()) and not list(module.buffers())
    assert info.capabilities.stacked == stateless


def test_stacked_capability_is_exactly_the_engine_rules():
    from reprokit.training.stacked.optimizers import RULES, StackedRule

    assert set(RULES) == set(OPTIMIZERS.having("stacked")) == {"adagrad", "sgd", "adam"}
    for name, rule in RULES.items():
        sparse = type(rule).sparse_torch is not StackedRule.sparse_torch
        assert sparse == OPTIMIZERS[name].capabilities.sparse_gradients, name
        assert sparse == (type(rule).sparse_fused is not StackedRule.sparse_fused), name
