"""Activation registry and spec parser (minimal version; the full family lands with issue 3).

A spec is `name` or `name:key=value,key=value`, e.g. `smelu:beta=0.5`. The CLI, configs and the API
all go through `create_activation`, so a name means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from reprokit.errors import ReprokitError


class SmeLU(nn.Module):
    """Smooth ReLU: 0 below -β, x above β, (x+β)²/(4β) between (smelu.md §1.2)."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if not beta > 0:
            raise ReprokitError(f"SmeLU needs beta > 0, got {beta}")
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.clamp((x + self.beta) / (2 * self.beta), 0.0, 1.0)
        return x * m + self.beta * m * (1 - m)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "smelu": SmeLU,
}


@dataclass(frozen=True)
class ActivationSpec:
    name: str
    params: dict[str, float] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in self.params.items())


def parse_spec(spec: str) -> ActivationSpec:
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _REGISTRY:
        raise ReprokitError(
            f"unknown activation {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    params: dict[str, float] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ReprokitError(f"activation parameter {item!r} must look like key=value")
        try:
            params[key.strip()] = float(value)
        except ValueError:
            raise ReprokitError(f"activation parameter {key}={value!r} is not a number") from None
    return ActivationSpec(name, params)


def create_activation(spec: str) -> nn.Module:
    parsed = parse_spec(spec)
    try:
        return _REGISTRY[parsed.name](**parsed.params)
    except TypeError:
        raise ReprokitError(f"activation {parsed.name!r} does not take {sorted(parsed.params)}") from None
