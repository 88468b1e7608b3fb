"""The one activation registry and spec parser shared by the CLI, config files and the Python API.

A spec is ``name`` or ``name:key=value,key=value``, for example ``smelu``, ``smelu:beta=0.5``,
``gsmelu:alpha=0.5,beta=1.5,g=1,t=0``, ``swish:beta=2``, ``gelu:approximate=tanh`` or
``smelu_learnable:beta=1``. Names and keys are case-insensitive; aliases (``silu`` = ``swish``,
``gelu_tanh`` = ``gelu:approximate=tanh``, ...) resolve to their canonical entry.

:func:`parse_spec` resolves a spec into an :class:`ActivationSpec` with every parameter filled in
(defaults included), so two spellings of the same activation have the same canonical string
(``str(spec)``, used as arm names and in manifests) and the same :attr:`ActivationSpec.slug` (used
for directory names). :func:`create_activation` builds a fresh module, :func:`get_activation_fn` the
matching function. Bad specs raise :class:`reprokit.errors.ReprokitError` with a sentence that lists
what exists. The layout follows timm's ``create_act`` (name -> layer and name -> function tables
plus aliases), with the parameters made explicit so they can be validated and printed.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from reprokit.components.activations import ActivationCapabilities
from reprokit.errors import ReprokitError
from reprokit.nn import activations as A
from reprokit.nn import functional as RF

__all__ = [
    "ActivationInfo",
    "ActivationSpec",
    "activation_help",
    "create_activation",
    "get_activation_fn",
    "list_activations",
    "parse_spec",
]

ParamValue = float | str


@dataclass(frozen=True)
class ActivationInfo:
    """One registry entry: the module class, the function, the parameters with defaults, and
    what engines need to know (:class:`~reprokit.components.activations.ActivationCapabilities`)."""

    name: str
    module: type[A.Activation]
    function: Callable[..., torch.Tensor]
    defaults: dict[str, ParamValue]
    summary: str
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    capabilities: ActivationCapabilities = ActivationCapabilities()

    @property
    def description(self) -> str:
        return self.summary

    @property
    def usage(self) -> str:
        """``name`` or ``name[:key=default,...]`` for help text."""
        if not self.defaults:
            return self.name
        inner = ",".join(f"{k}={A._fmt(v)}" for k, v in self.defaults.items())
        return f"{self.name}[:{inner}]"


def _info(module: type[A.Activation], function, summary: str, **kwargs: Any) -> ActivationInfo:
    defaults = kwargs.pop("defaults", {})
    return ActivationInfo(module.registry_name, module, function, defaults, summary, **kwargs)


_ENTRIES: tuple[ActivationInfo, ...] = (
    _info(A.ReLU, RF.relu, "max(x, 0)"),
    _info(
        A.SmeLU,
        RF.smelu,
        "smooth ReLU, quadratic on |x| <= beta",
        defaults={"beta": 1.0},
    ),
    _info(
        A.GSmeLU,
        RF.gsmelu,
        "generalised SmeLU: knots at -alpha and beta, right slope g, shift t",
        defaults={"alpha": 1.0, "beta": 1.0, "g": 1.0, "t": 0.0},
    ),
    _info(
        A.LearnableSmeLU,
        RF.smelu,
        "SmeLU with a learned width, beta = softplus(b) + 1e-6 (beta is the initial value)",
        defaults={"beta": 1.0},
        aliases=("learnable_smelu",),
        capabilities=ActivationCapabilities(stacked=False),  # a trained parameter per layer
    ),
    _info(
        A.GELU,
        RF.gelu,
        "x * Phi(x); approximate=tanh for the tanh form",
        defaults={"approximate": "none"},
        choices={"approximate": ("none", "tanh")},
    ),
    _info(A.Swish, RF.swish, "x * sigmoid(beta * x)", defaults={"beta": 1.0}, aliases=("silu",)),
    _info(
        A.Softplus,
        RF.softplus,
        "log(1 + exp(beta * x)) / beta",
        defaults={"beta": 1.0, "threshold": 20.0},
    ),
    _info(A.Mish, RF.mish, "x * tanh(softplus(x))"),
    _info(A.TanhExp, RF.tanhexp, "x * tanh(exp(x))"),
    _info(A.ELU, RF.elu, "x, or alpha * (exp(x) - 1) below 0", defaults={"alpha": 1.0}),
    _info(A.SELU, RF.selu, "scaled ELU with the self-normalising constants"),
    _info(
        A.LeakyReLU,
        RF.leaky_relu,
        "x, or negative_slope * x below 0",
        defaults={"negative_slope": 0.01},
        aliases=("leakyrelu", "lrelu"),
    ),
)

_REGISTRY: dict[str, ActivationInfo] = {info.name: info for info in _ENTRIES}

# alias -> (canonical name, parameters the alias fixes)
_ALIASES: dict[str, tuple[str, dict[str, ParamValue]]] = {
    alias: (info.name, {}) for info in _ENTRIES for alias in info.aliases
}
_ALIASES["gelu_tanh"] = ("gelu", {"approximate": "tanh"})


@dataclass(frozen=True)
class ActivationSpec:
    """A resolved activation spec: canonical ``name`` and every parameter (defaults filled in).

    ``str(spec)`` is the canonical spec string (``smelu:beta=0.5``), ``spec.slug`` a file-system
    safe form of it (``smelu_beta-0.5``). Equal specs compare and hash equal.
    """

    name: str
    params: dict[str, ParamValue] = field(default_factory=dict)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={A._fmt(v)}" for k, v in self.params.items())

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def slug(self) -> str:
        """Directory-name form: only ``[a-z0-9._-]``, e.g. ``gsmelu_alpha-0.5_beta-1.5_g-1_t-0``."""
        parts = [self.name] + [f"{k}-{A._fmt(v)}" for k, v in self.params.items()]
        return re.sub(r"[^a-z0-9._-]", "", "_".join(parts).lower().replace("+", ""))

    @property
    def info(self) -> ActivationInfo:
        return _REGISTRY[self.name]


def _known_names() -> str:
    names = ", ".join(sorted(_REGISTRY))
    aliases = ", ".join(f"{a}={_alias_target(a)}" for a in sorted(_ALIASES))
    return f"{names} (aliases: {aliases})"


def _alias_target(alias: str) -> str:
    name, fixed = _ALIASES[alias]
    if not fixed:
        return name
    return name + ":" + ",".join(f"{k}={A._fmt(v)}" for k, v in fixed.items())


def _accepts(info: ActivationInfo) -> str:
    if not info.defaults:
        return f"activation {info.name!r} takes no parameters"
    return f"activation {info.name!r} accepts: " + ", ".join(info.defaults)


def _parse_value(info: ActivationInfo, key: str, raw: str) -> ParamValue:
    raw = raw.strip()
    if key in info.choices:
        value = raw.lower()
        if value not in info.choices[key]:
            raise ReprokitError(
                f"{info.name} parameter {key} must be one of {', '.join(info.choices[key])}, "
                f"got {raw!r}"
            )
        return value
    try:
        return float(raw)
    except ValueError:
        raise ReprokitError(f"{info.name} parameter {key} must be a number, got {raw!r}") from None


def parse_spec(spec: str | ActivationSpec) -> ActivationSpec:
    """Resolve ``name[:key=value,...]`` into a validated :class:`ActivationSpec`."""
    if isinstance(spec, ActivationSpec):
        return spec
    if not isinstance(spec, str):
        raise ReprokitError(
            f"an activation spec must be a string like 'smelu:beta=1', got {spec!r}"
        )
    head, sep, rest = spec.strip().partition(":")
    name = head.strip().lower().replace("-", "_")
    fixed: dict[str, ParamValue] = {}
    if name in _ALIASES:
        name, fixed = _ALIASES[name]
    if name not in _REGISTRY:
        shown = name or "(empty)"
        raise ReprokitError(f"unknown activation {shown!r}; available: {_known_names()}")
    info = _REGISTRY[name]
    given: dict[str, ParamValue] = {}
    items = [item.strip() for item in rest.split(",")] if sep else []
    for item in items:
        if not item:
            raise ReprokitError(
                f"activation spec {spec!r} has an empty parameter; write {info.usage}"
            )
        key, eq, raw = item.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ReprokitError(
                f"activation parameter {item!r} in {spec!r} must look like key=value; "
                f"{_accepts(info)}"
            )
        if key not in info.defaults:
            raise ReprokitError(f"unknown parameter {key!r} in {spec!r}; {_accepts(info)}")
        if key in given:
            raise ReprokitError(f"parameter {key!r} is given twice in activation spec {spec!r}")
        value = _parse_value(info, key, raw)
        if key in fixed and value != fixed[key]:
            raise ReprokitError(
                f"{head.strip()!r} already means {_alias_target(head.strip().lower())}; "
                f"it cannot take {key}={raw.strip()}"
            )
        given[key] = value
    params = {k: given.get(k, fixed.get(k, default)) for k, default in info.defaults.items()}
    # Validate now (the module constructors hold the rules), so a bad spec fails at parse time.
    info.module(**params)
    return ActivationSpec(name, params)


def create_activation(spec: str | ActivationSpec) -> nn.Module:
    """A fresh activation module for ``spec`` (every call returns a new instance)."""
    parsed = parse_spec(spec)
    return parsed.info.module(**parsed.params)


def get_activation_fn(spec: str | ActivationSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """The functional form of ``spec`` with its parameters bound.

    ``smelu_learnable`` has no fixed function (its β is a parameter); asking for it is an error.
    """
    parsed = parse_spec(spec)
    if parsed.info.module is A.LearnableSmeLU:
        raise ReprokitError(
            "smelu_learnable has a trained parameter, so it has no plain function; use "
            "create_activation('smelu_learnable') or reprokit.nn.functional.smelu(x, beta_tensor)"
        )
    return functools.partial(parsed.info.function, **parsed.params)


def list_activations() -> list[ActivationInfo]:
    """Every registered activation, sorted by name (for ``--help`` text and docs)."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def activation_help() -> str:
    """One line per activation: usage with defaults, summary and aliases."""
    lines = []
    for info in list_activations():
        aliases = [a for a in _ALIASES if _ALIASES[a][0] == info.name]
        alias_text = f" (alias: {', '.join(sorted(aliases))})" if aliases else ""
        lines.append(f"{info.usage}: {info.summary}{alias_text}")
    return "\n".join(lines)
