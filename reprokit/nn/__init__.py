"""Neural-network building blocks: activations (functional, modules, registry) and model surgery.

Importing this package loads only torch and reprokit's activation code.
"""

from reprokit.nn.activations import (
    ELU,
    GELU,
    SELU,
    Activation,
    GSmeLU,
    LeakyReLU,
    LearnableSmeLU,
    Mish,
    ReLU,
    SmeLU,
    Softplus,
    Swish,
    TanhExp,
)
from reprokit.nn.registry import (
    ActivationInfo,
    ActivationSpec,
    activation_help,
    create_activation,
    get_activation_fn,
    list_activations,
    parse_spec,
)
from reprokit.nn.swap import swap_activations

__all__ = [
    "ELU",
    "GELU",
    "SELU",
    "Activation",
    "ActivationInfo",
    "ActivationSpec",
    "GSmeLU",
    "LeakyReLU",
    "LearnableSmeLU",
    "Mish",
    "ReLU",
    "SmeLU",
    "Softplus",
    "Swish",
    "TanhExp",
    "activation_help",
    "create_activation",
    "get_activation_fn",
    "list_activations",
    "parse_spec",
    "swap_activations",
]
