"""Replace the activation modules of any torch model with a reprokit activation, in place."""

from __future__ import annotations

from torch import nn

from reprokit.errors import ReprokitError
from reprokit.nn.activations import Activation
from reprokit.nn.registry import ActivationSpec, create_activation, parse_spec

__all__ = ["SWAPPABLE", "swap_activations"]

SWAPPABLE: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardswish,
    Activation,
)
"""Module types treated as ReLU-like hidden activations (subclasses included).

Output squashers (Sigmoid, Tanh, Softmax) are deliberately absent: they shape predictions.
"""


def swap_activations(model: nn.Module, spec: str | ActivationSpec) -> list[tuple[str, nn.Module]]:
    """Replace every ReLU-like module in ``model`` by a fresh ``create_activation(spec)``.

    Works on any module tree (nested ``Sequential``, ``ModuleList``, ``ModuleDict`` or plain
    attributes). Each replaced position gets its own new instance, even when the original model
    reused one module object in several places. Other modules are not touched. Returns
    ``(qualified name, old module)`` pairs in module-tree order. A container shared by several
    parents is processed once (under its first name), since replacing inside it changes every
    place that uses it. Activations called functionally inside ``forward`` (``F.relu``) are not
    modules and cannot be swapped.
    """
    if not isinstance(model, nn.Module):
        raise ReprokitError(f"swap_activations needs a torch nn.Module, got {type(model).__name__}")
    parsed = parse_spec(spec)
    if isinstance(model, SWAPPABLE):
        raise ReprokitError(
            "swap_activations replaces activations inside a model; the model itself is an "
            "activation, so use create_activation(spec) instead"
        )
    targets: list[tuple[nn.Module, str, str, nn.Module]] = []
    _collect(model, "", targets)
    swapped: list[tuple[str, nn.Module]] = []
    for parent, attr, qualified, old in targets:
        setattr(parent, attr, create_activation(parsed))
        swapped.append((qualified, old))
    return swapped


def _collect(module: nn.Module, prefix: str, out: list, seen: set[int] | None = None) -> None:
    # Walk the tree before changing it; each (parent, attribute) position is visited once.
    seen = set() if seen is None else seen
    if id(module) in seen:
        return
    seen.add(id(module))
    # _modules, not named_children(): the latter hides a module assigned to two attributes.
    for attr, child in list(module._modules.items()):
        if child is None:
            continue
        qualified = f"{prefix}.{attr}" if prefix else attr
        if isinstance(child, SWAPPABLE):
            out.append((module, attr, qualified, child))
        else:
            _collect(child, qualified, out, seen)
