"""swap_activations on models reprokit did not build."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reprokit.nn as rnn
from reprokit.errors import ReprokitError


class Block(nn.Module):
    def __init__(self, width: int, act: nn.Module) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = act
        self.norm = nn.LayerNorm(width)

    def forward(self, x):
        return self.norm(self.act(self.fc(x)))


class Tower(nn.Module):
    """A hand-written model with every container kind and a variety of activations."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.ReLU()
        self.stem = nn.Sequential(nn.Linear(8, 16), shared, nn.Dropout(0.0))
        self.blocks = nn.ModuleList([Block(16, nn.GELU()), Block(16, nn.SiLU())])
        self.heads = nn.ModuleDict(
            {
                "ctr": nn.Sequential(nn.Linear(16, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1)),
                "aux": nn.Sequential(
                    nn.Sequential(nn.Linear(16, 16), nn.ELU()), nn.Mish(), nn.Linear(16, 1)
                ),
            }
        )
        self.extra = nn.Sequential(
            nn.SELU(), nn.Softplus(), nn.Hardswish(), nn.ReLU6(), shared, rnn.SmeLU(0.3)
        )
        self.out = nn.Sigmoid()  # output squasher: must stay

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        h = self.extra(h)
        return self.out(self.heads["ctr"](h) + self.heads["aux"](h))


EXPECTED = [
    ("stem.1", nn.ReLU),
    ("blocks.0.act", nn.GELU),
    ("blocks.1.act", nn.SiLU),
    ("heads.ctr.1", nn.LeakyReLU),
    ("heads.aux.0.1", nn.ELU),
    ("heads.aux.1", nn.Mish),
    ("extra.0", nn.SELU),
    ("extra.1", nn.Softplus),
    ("extra.2", nn.Hardswish),
    ("extra.3", nn.ReLU6),
    ("extra.4", nn.ReLU),
    ("extra.5", rnn.SmeLU),
]


def test_swaps_every_relu_like_module_in_nested_containers():
    torch.manual_seed(0)
    model = Tower()
    others_before = {
        name: module
        for name, module in model.named_modules()
        if name
        and not isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
        and name not in dict(EXPECTED)
    }
    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = rnn.swap_activations(model, "smelu:beta=0.5")

    assert [(name, type(old)) for name, old in swapped] == EXPECTED
    modules = dict(model.named_modules())
    for name, _ in EXPECTED:
        assert type(modules[name]) is rnn.SmeLU and modules[name].beta == 0.5
    # each position has its own fresh instance, even the ReLU that was shared
    new = [modules[name] for name, _ in EXPECTED]
    assert len({id(m) for m in new}) == len(new)
    assert swapped[0][1] is swapped[10][1]
    # everything else is the very same object, with the same parameters
    for name, module in others_before.items():
        assert modules[name] is module, name
    assert isinstance(model.out, nn.Sigmoid)
    for key, value in model.state_dict().items():
        assert torch.equal(value, params_before[key]), key
    # the model still runs, forward and backward, and now uses SmeLU
    x = torch.randn(4, 8, requires_grad=True)
    model(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_swap_changes_outputs_like_the_new_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 1))
    reference = nn.Sequential(model[0], rnn.GSmeLU(0.5, 1.5), model[2])
    rnn.swap_activations(model, "gsmelu:alpha=0.5,beta=1.5")
    x = torch.randn(7, 3)
    assert torch.equal(model(x), reference(x))


def test_swap_back_and_learnable_instances_are_independent():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU())
    first = rnn.swap_activations(model, "smelu_learnable:beta=0.7")
    assert [n for n, _ in first] == ["1", "3"]
    # the two learnable activations have separate parameters
    assert model[1].raw_beta is not model[3].raw_beta
    assert len(list(model.parameters())) == 4 + 2
    second = rnn.swap_activations(model, "relu")  # reprokit's own modules are swappable too
    assert [type(old) for _, old in second] == [rnn.LearnableSmeLU, rnn.LearnableSmeLU]
    assert all(type(m) is rnn.ReLU for m in (model[1], model[3]))


def test_same_module_twice_in_one_parent_gets_two_instances():
    act = nn.ReLU()
    model = nn.Module()
    model.a = act
    model.b = act
    swapped = rnn.swap_activations(model, "smelu")
    assert [name for name, _ in swapped] == ["a", "b"]
    assert model.a is not model.b and type(model.a) is rnn.SmeLU


def test_model_without_activations_is_untouched():
    model = nn.Sequential(nn.Linear(2, 2), nn.Sigmoid(), nn.Tanh())
    assert rnn.swap_activations(model, "smelu") == []
    assert [type(m) for m in model] == [nn.Linear, nn.Sigmoid, nn.Tanh]


def test_bad_arguments():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(ReprokitError, match="unknown activation"):
        rnn.swap_activations(model, "smeloo")
    assert type(model[1]) is nn.ReLU  # nothing changed on error
    with pytest.raises(ReprokitError, match="create_activation"):
        rnn.swap_activations(nn.ReLU(), "smelu")
    with pytest.raises(ReprokitError, match="nn.Module"):
        rnn.swap_activations("model", "smelu")  # type: ignore[arg-type]
