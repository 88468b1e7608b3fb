"""Neural-network building blocks: activations (functional, modules, registry), model surgery,
models, embedding tables and the component registries (:mod:`reprokit.nn.components`).

The names below are loaded on first access, so that importing the torch-free registries
(``reprokit.nn.components``, which ``reprokit.config`` reads) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_ACTIVATIONS = (
    "ELU",
    "GELU",
    "SELU",
    "Activation",
    "GSmeLU",
    "LeakyReLU",
    "LearnableSmeLU",
    "Mish",
    "ReLU",
    "SmeLU",
    "Softplus",
    "Swish",
    "TanhExp",
)
_REGISTRY = (
    "ActivationInfo",
    "ActivationSpec",
    "activation_help",
    "create_activation",
    "get_activation_fn",
    "list_activations",
    "parse_spec",
)
_EXPORTS = {
    **{name: "reprokit.nn.activations" for name in _ACTIVATIONS},
    **{name: "reprokit.nn.registry" for name in _REGISTRY},
    "swap_activations": "reprokit.nn.swap",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprokit.nn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
