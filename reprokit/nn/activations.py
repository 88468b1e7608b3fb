"""Activation modules: one :class:`torch.nn.Module` per function in :mod:`reprokit.nn.functional`.

Every module validates its parameters in ``__init__`` (a bad value raises
:class:`reprokit.errors.ReprokitError`) and exposes ``spec``: the canonical spec string that
:func:`reprokit.nn.create_activation` turns back into an equal module.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reprokit.errors import ReprokitError
from reprokit.nn import functional as RF

__all__ = [
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
]


def _fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


class Activation(nn.Module):
    """Base class of reprokit's activations: a registry name plus its parameters."""

    registry_name: str = ""

    def spec_params(self) -> dict[str, float | str]:
        """The parameters that define this activation, in registry order."""
        return {}

    @property
    def spec(self) -> str:
        params = self.spec_params()
        if not params:
            return self.registry_name
        return self.registry_name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in params.items())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={_fmt(v)}" for k, v in self.spec_params().items())


class ReLU(Activation):
    registry_name = "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.relu(x)


class SmeLU(Activation):
    """Smooth ReLU with a fixed half-width β (docs/methods.md §2.1)."""

    registry_name = "smelu"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = RF._check_width("SmeLU beta", beta)

    def spec_params(self) -> dict[str, float | str]:
        return {"beta": self.beta}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.smelu(x, self.beta)


class GSmeLU(Activation):
    """Generalised SmeLU: left width α, right width β, slope g, shift t (docs/methods.md §2.3)."""

    registry_name = "gsmelu"

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, g: float = 1.0, t: float = 0.0):
        super().__init__()
        self.alpha = RF._check_width("gSmeLU alpha", alpha)
        self.beta = RF._check_width("gSmeLU beta", beta)
        self.g = RF._check_finite("gSmeLU g", g)
        if not self.g > 0:
            raise ReprokitError(f"gSmeLU g (the right-hand slope) must be > 0, got {g!r}")
        self.t = RF._check_finite("gSmeLU t", t)

    def spec_params(self) -> dict[str, float | str]:
        return {"alpha": self.alpha, "beta": self.beta, "g": self.g, "t": self.t}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.gsmelu(x, self.alpha, self.beta, self.g, self.t)


def _softplus_inverse(y: float) -> float:
    """b with softplus(b) == y, for y > 0, without overflow for large y."""
    return y + math.log(-math.expm1(-y))


class LearnableSmeLU(Activation):
    """SmeLU whose half-width is learned: β = softplus(b) + ε with ε = ``LEARNABLE_BETA_EPS``.

    β is strictly positive for every value of the raw parameter ``b`` (it cannot reach 0 even after
    huge optimizer steps), and β's gradient is (β² - x²)/(4β²) on |x| < β (docs/methods.md
    §2.2). ``beta`` is the initial value. ``spec`` reports the initial β, so re-creating from it
    gives a fresh, untrained module.
    """

    registry_name = "smelu_learnable"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        beta = RF._check_finite("learnable SmeLU beta", beta)
        eps = RF.LEARNABLE_BETA_EPS
        if not beta > eps:
            raise ReprokitError(f"learnable SmeLU beta must be > {eps:g}, got {beta!r}")
        self.initial_beta = beta
        self.raw_beta = nn.Parameter(torch.tensor(_softplus_inverse(beta - eps)))

    @property
    def beta(self) -> torch.Tensor:
        """The current β as a 0-dim tensor (differentiable with respect to ``raw_beta``)."""
        return nn.functional.softplus(self.raw_beta) + RF.LEARNABLE_BETA_EPS

    def spec_params(self) -> dict[str, float | str]:
        return {"beta": self.initial_beta}

    def extra_repr(self) -> str:
        return f"beta={float(self.beta.detach()):.6g} (initial {_fmt(self.initial_beta)})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.smelu(x, self.beta)


class GELU(Activation):
    registry_name = "gelu"

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ReprokitError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def spec_params(self) -> dict[str, float | str]:
        return {"approximate": self.approximate}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.gelu(x, self.approximate)


class Swish(Activation):
    """x·σ(βx); β = 1 is SiLU."""

    registry_name = "swish"

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = RF._check_finite("Swish beta", beta)
        if not self.beta > 0:
            raise ReprokitError(f"Swish beta must be > 0, got {beta!r}")

    def spec_params(self) -> dict[str, float | str]:
        return {"beta": self.beta}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.swish(x, self.beta)


class Softplus(Activation):
    registry_name = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = RF._check_finite("Softplus beta", beta)
        self.threshold = RF._check_finite("Softplus threshold", threshold)
        if not (self.beta > 0 and self.threshold > 0):
            raise ReprokitError(
                f"Softplus beta and threshold must be > 0, got beta={beta!r}, "
                f"threshold={threshold!r}"
            )

    def spec_params(self) -> dict[str, float | str]:
        return {"beta": self.beta, "threshold": self.threshold}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.softplus(x, self.beta, self.threshold)


class Mish(Activation):
    registry_name = "mish"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.mish(x)


class TanhExp(Activation):
    registry_name = "tanhexp"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.tanhexp(x)


class ELU(Activation):
    registry_name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = RF._check_finite("ELU alpha", alpha)
        if not self.alpha > 0:
            raise ReprokitError(f"ELU alpha must be > 0, got {alpha!r}")

    def spec_params(self) -> dict[str, float | str]:
        return {"alpha": self.alpha}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.elu(x, self.alpha)


class SELU(Activation):
    registry_name = "selu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.selu(x)


class LeakyReLU(Activation):
    registry_name = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        super().__init__()
        self.negative_slope = RF._check_finite("LeakyReLU negative_slope", negative_slope)
        if not 0 <= self.negative_slope < 1:
            raise ReprokitError(
                f"LeakyReLU negative_slope must be in [0, 1), got {negative_slope!r}"
            )

    def spec_params(self) -> dict[str, float | str]:
        return {"negative_slope": self.negative_slope}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RF.leaky_relu(x, self.negative_slope)
