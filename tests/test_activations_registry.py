"""The activation registry and spec parser shared by CLI, configs and API."""

from __future__ import annotations

import re

import pytest
import torch

import reprokit.nn as rnn
from reprokit.errors import ReprokitError
from reprokit.nn.registry import ActivationSpec

NAMES = [
    "elu",
    "gelu",
    "gsmelu",
    "leaky_relu",
    "mish",
    "relu",
    "selu",
    "smelu",
    "smelu_learnable",
    "softplus",
    "swish",
    "tanhexp",
]


def test_list_activations_and_help():
    assert [info.name for info in rnn.list_activations()] == NAMES
    text = rnn.activation_help()
    for name in NAMES:
        assert re.search(rf"^{name}\b", text, re.M)
    assert "smelu[:beta=1]" in text and "gsmelu[:alpha=1,beta=1,g=1,t=0]" in text
    assert "silu" in text and "gelu_tanh" in text


@pytest.mark.parametrize(
    ("spec", "canonical", "cls"),
    [
        ("smelu", "smelu:beta=1", rnn.SmeLU),
        ("smelu:beta=1", "smelu:beta=1", rnn.SmeLU),
        (" SmeLU : beta = 0.50 ", "smelu:beta=0.5", rnn.SmeLU),
        ("gsmelu:alpha=0.5,beta=1.5,g=1,t=0", "gsmelu:alpha=0.5,beta=1.5,g=1,t=0", rnn.GSmeLU),
        ("gsmelu:t=-1,alpha=0.5", "gsmelu:alpha=0.5,beta=1,g=1,t=-1", rnn.GSmeLU),
        ("swish:beta=2", "swish:beta=2", rnn.Swish),
        ("silu", "swish:beta=1", rnn.Swish),
        ("smelu_learnable:beta=1", "smelu_learnable:beta=1", rnn.LearnableSmeLU),
        ("learnable_smelu", "smelu_learnable:beta=1", rnn.LearnableSmeLU),
        ("gelu", "gelu:approximate=none", rnn.GELU),
        ("gelu:approximate=tanh", "gelu:approximate=tanh", rnn.GELU),
        ("gelu_tanh", "gelu:approximate=tanh", rnn.GELU),
        ("GELU-TANH", "gelu:approximate=tanh", rnn.GELU),
        ("softplus:beta=2", "softplus:beta=2,threshold=20", rnn.Softplus),
        ("leakyrelu:negative_slope=0.1", "leaky_relu:negative_slope=0.1", rnn.LeakyReLU),
        ("elu", "elu:alpha=1", rnn.ELU),
        ("selu", "selu", rnn.SELU),
        ("mish", "mish", rnn.Mish),
        ("tanhexp", "tanhexp", rnn.TanhExp),
        ("relu", "relu", rnn.ReLU),
        ("smelu:beta=1e-30", "smelu:beta=1e-30", rnn.SmeLU),
        ("smelu:beta=0.1", "smelu:beta=0.1", rnn.SmeLU),
    ],
)
def test_parse_and_create(spec, canonical, cls):
    parsed = rnn.parse_spec(spec)
    assert str(parsed) == canonical
    assert rnn.parse_spec(canonical) == parsed and hash(rnn.parse_spec(canonical)) == hash(parsed)
    module = rnn.create_activation(spec)
    assert type(module) is cls
    assert module.spec == canonical
    assert re.fullmatch(r"[a-z0-9._-]+", parsed.slug)


def test_params_are_resolved_and_typed():
    parsed = rnn.parse_spec("gsmelu:beta=1.5")
    assert parsed.name == "gsmelu"
    assert parsed.params == {"alpha": 1.0, "beta": 1.5, "g": 1.0, "t": 0.0}
    assert rnn.parse_spec("gelu_tanh").params == {"approximate": "tanh"}
    assert rnn.parse_spec(parsed) is parsed
    assert isinstance(parsed, ActivationSpec)


def test_parameters_reach_the_module():
    module = rnn.create_activation("gsmelu:alpha=0.25,beta=2,g=3,t=-1")
    assert (module.alpha, module.beta, module.g, module.t) == (0.25, 2.0, 3.0, -1.0)
    x = torch.tensor([-5.0, 5.0])
    assert module(x).tolist() == [-1.0, 3 * 5 + 3 * (0.25 - 2) / 2 - 1]
    assert rnn.create_activation("swish:beta=3")(torch.tensor([1.0])).item() == pytest.approx(
        1 / (1 + torch.exp(torch.tensor(-3.0)).item())
    )


def test_slugs_distinct_and_stable():
    specs = ["smelu", "smelu:beta=0.5", "smelu:beta=2", "gsmelu:alpha=0.5", "gsmelu:t=-0.5"]
    slugs = [rnn.parse_spec(s).slug for s in specs]
    assert len(set(slugs)) == len(slugs)
    assert rnn.parse_spec("smelu:beta=0.5").slug == "smelu_beta-0.5"
    assert rnn.parse_spec("gsmelu:alpha=0.5,beta=1.5").slug == "gsmelu_alpha-0.5_beta-1.5_g-1_t-0"
    assert rnn.parse_spec("smelu:beta=1e16").slug == "smelu_beta-1e16"


def test_create_returns_fresh_instances():
    a, b = rnn.create_activation("smelu_learnable"), rnn.create_activation("smelu_learnable")
    assert a is not b and a.raw_beta is not b.raw_beta


def test_get_activation_fn():
    fn = rnn.get_activation_fn("smelu:beta=0.5")
    assert fn(torch.zeros(1)).item() == pytest.approx(0.125)
    assert rnn.get_activation_fn("gelu_tanh")(torch.ones(1)).item() == pytest.approx(
        torch.nn.functional.gelu(torch.ones(1), approximate="tanh").item()
    )
    with pytest.raises(ReprokitError, match="create_activation"):
        rnn.get_activation_fn("smelu_learnable")


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("foo", ["unknown activation 'foo'", "smelu", "gsmelu", "silu=swish"]),
        ("", ["unknown activation", "relu"]),
        ("smelu:alpha=1", ["unknown parameter 'alpha'", "accepts: beta"]),
        ("relu:beta=1", ["takes no parameters"]),
        ("gsmelu:gamma=2", ["accepts: alpha, beta, g, t"]),
        ("smelu:beta=0", ["beta", ">= 1e-30"]),
        ("smelu:beta=-1", ["beta", ">= 1e-30"]),
        ("smelu:beta=1e-31", ["beta", ">= 1e-30"]),
        ("smelu:beta=nan", ["finite"]),
        ("smelu:beta=inf", ["finite"]),
        ("gsmelu:alpha=0", ["alpha"]),
        ("gsmelu:beta=-0.5", ["beta"]),
        ("gsmelu:g=0", ["g", "> 0"]),
        ("smelu_learnable:beta=0", ["beta", "> 1e-06"]),
        ("swish:beta=0", ["Swish beta"]),
        ("softplus:threshold=-1", ["threshold"]),
        ("elu:alpha=-1", ["ELU alpha"]),
        ("leaky_relu:negative_slope=2", ["negative_slope"]),
        ("smelu:beta=abc", ["must be a number", "'abc'"]),
        ("smelu:beta", ["key=value", "accepts: beta"]),
        ("smelu:beta=1,", ["empty parameter"]),
        ("smelu:beta=1,beta=2", ["twice"]),
        ("gelu:approximate=fast", ["none, tanh"]),
        ("gelu_tanh:approximate=none", ["gelu:approximate=tanh"]),
    ],
)
def test_bad_specs_raise_clear_errors(spec, needles):
    with pytest.raises(ReprokitError) as info:
        rnn.parse_spec(spec)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert "\n" not in message
    with pytest.raises(ReprokitError):
        rnn.create_activation(spec)


def test_non_string_spec():
    with pytest.raises(ReprokitError, match="string"):
        rnn.parse_spec(3)  # type: ignore[arg-type]
