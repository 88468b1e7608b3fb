"""``make_optimizer``: one call that gives a training loop its optimizer and gradient transform.

::

    opt, transform = make_optimizer("clippy", model.parameters(), lr=0.05)
    for batch in loader:
        opt.zero_grad()
        loss_fn(model(batch)).backward()
        if transform is not None:
            transform.apply()
        opt.step()

Names (case-insensitive; see :data:`OPTIMIZER_NAMES` / :func:`describe_optimizers`):

======================== ===========================================================================
``adagrad``              ``torch.optim.Adagrad``, accumulator init 0.1 (the paper's setting) when
                         called here; training configs pass ``optim.initial_accumulator_value``
                         (train-ensemble: 0, torch's default; stability: one A0 for all cells)
``adam``                 ``torch.optim.Adam``
``sgd``                  ``torch.optim.SGD``
``clippy``               :class:`ClippyAdagrad` preset ``paper`` (alias ``clippy-paper``)
``clippy-tfrs``          :class:`ClippyAdagrad` preset ``tfrs`` (TensorFlow Recommenders semantics)
``adagrad+gradclip``     Adagrad + global gradient-norm clipping (``max_norm``, default 1.0)
``adagrad+gradclip-layer`` Adagrad + per-tensor gradient-norm clipping (``max_norm``, default 0.1)
``adagrad+agc``          Adagrad + AGC per tensor (``clipping`` 1e-2, ``agc_eps`` 1e-3)
``adagrad+agc-unitwise`` Adagrad + AGC per output unit (``clipping`` 1e-2, ``agc_eps`` 1e-3)
``adagrad+lamb``         :class:`LambAdagrad`, Adagrad with a LAMB trust ratio (``mu`` 1e-2)
======================== ===========================================================================

Keyword arguments that belong to the transform (``max_norm``, ``norm_type``, ``clipping``,
``agc_eps``) are taken out; all others go to the optimizer's constructor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch.optim import Optimizer

from reprokit.optim._common import OptimizerArgumentError, check_number, flatten_params
from reprokit.optim.clipping import (
    AdaptiveGradClip,
    GradientTransform,
    GradNormClip,
    LambAdagrad,
)
from reprokit.optim.clippy import ClippyAdagrad

__all__ = ["OPTIMIZER_NAMES", "OptimizerBundle", "describe_optimizers", "make_optimizer"]

_PAPER_ADAGRAD = {"initial_accumulator_value": 0.1}


class OptimizerBundle(NamedTuple):
    """What :func:`make_optimizer` returns; unpacks as ``(optimizer, transform)``."""

    optimizer: Optimizer
    transform: GradientTransform | None


def _adagrad(params: list, lr: float, kw: dict[str, Any]) -> Optimizer:
    return torch.optim.Adagrad(params, lr=lr, **{**_PAPER_ADAGRAD, **kw})


def _with_transform(
    make_transform: Callable[[list, dict[str, Any]], GradientTransform],
) -> Callable[[list, float, dict[str, Any]], OptimizerBundle]:
    def build(params: list, lr: float, kw: dict[str, Any]) -> OptimizerBundle:
        transform = make_transform(flatten_params(params), kw)  # pops its own keys
        return OptimizerBundle(_adagrad(params, lr, kw), transform)

    return build


def _gradclip(per_tensor: bool, default: float):
    def make(params: list, kw: dict[str, Any]) -> GradientTransform:
        return GradNormClip(
            params,
            kw.pop("max_norm", default),
            norm_type=kw.pop("norm_type", 2.0),
            per_tensor=per_tensor,
        )

    return make


def _agc(unitwise: bool):
    def make(params: list, kw: dict[str, Any]) -> GradientTransform:
        return AdaptiveGradClip(
            params, kw.pop("clipping", 1e-2), eps=kw.pop("agc_eps", 1e-3), unitwise=unitwise
        )

    return make


def _plain(factory: Callable[..., Optimizer]):
    def build(params: list, lr: float, kw: dict[str, Any]) -> OptimizerBundle:
        return OptimizerBundle(factory(params, lr, kw), None)

    return build


_BUILDERS: dict[str, tuple[str, Callable[[list, float, dict[str, Any]], OptimizerBundle]]] = {
    "adagrad": ("torch.optim.Adagrad, accumulator init 0.1", _plain(_adagrad)),
    "adam": ("torch.optim.Adam", _plain(lambda p, lr, kw: torch.optim.Adam(p, lr=lr, **kw))),
    "sgd": ("torch.optim.SGD", _plain(lambda p, lr, kw: torch.optim.SGD(p, lr=lr, **kw))),
    "clippy": (
        "ClippyAdagrad, paper preset (lambda_rel 0.5, lambda_abs 1e-2)",
        _plain(lambda p, lr, kw: ClippyAdagrad.from_preset("paper", p, lr, **kw)),
    ),
    "clippy-paper": (
        "alias of clippy",
        _plain(lambda p, lr, kw: ClippyAdagrad.from_preset("paper", p, lr, **kw)),
    ),
    "clippy-tfrs": (
        "ClippyAdagrad, TFRS preset (delayed accumulator, lambda_rel 0.1, lambda_abs 1e-7)",
        _plain(lambda p, lr, kw: ClippyAdagrad.from_preset("tfrs", p, lr, **kw)),
    ),
    "adagrad+gradclip": (
        "Adagrad + global gradient-norm clipping (max_norm=1.0)",
        _with_transform(_gradclip(per_tensor=False, default=1.0)),
    ),
    "adagrad+gradclip-layer": (
        "Adagrad + per-tensor gradient-norm clipping, the paper's GC (max_norm=0.1)",
        _with_transform(_gradclip(per_tensor=True, default=0.1)),
    ),
    "adagrad+agc": (
        "Adagrad + adaptive gradient clipping per tensor (clipping=1e-2, agc_eps=1e-3)",
        _with_transform(_agc(unitwise=False)),
    ),
    "adagrad+agc-unitwise": (
        "Adagrad + adaptive gradient clipping per output unit (clipping=1e-2, agc_eps=1e-3)",
        _with_transform(_agc(unitwise=True)),
    ),
    "adagrad+lamb": (
        "Adagrad with a LAMB-style trust ratio per tensor (mu=1e-2)",
        _plain(lambda p, lr, kw: LambAdagrad(p, lr=lr, **kw)),
    ),
}

OPTIMIZER_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def describe_optimizers() -> dict[str, str]:
    """``{name: one-line description}`` of every name :func:`make_optimizer` accepts."""
    return {name: desc for name, (desc, _) in _BUILDERS.items()}


def make_optimizer(name: str, params: Iterable, lr: float, **kw: Any) -> OptimizerBundle:
    """Build the optimizer (and gradient transform, or ``None``) called ``name``.

    ``params`` is anything a torch optimizer accepts (it is materialised once, so a generator
    such as ``model.parameters()`` is fine). Unknown names and bad arguments raise
    :class:`~reprokit.optim.OptimizerArgumentError` (a ``ReprokitError`` and a ``ValueError``).
    """
    key = str(name).strip().lower()
    if key not in _BUILDERS:
        raise OptimizerArgumentError(
            f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}"
        )
    check_number("lr", lr)
    params = list(params)
    if not params:
        raise OptimizerArgumentError(f"optimizer {key!r} got an empty parameter list")
    _, build = _BUILDERS[key]
    try:
        return build(params, lr, dict(kw))
    except OptimizerArgumentError:
        raise
    except (TypeError, ValueError) as exc:  # bad keyword or value rejected by a torch optimizer
        raise OptimizerArgumentError(f"optimizer {key!r}: {exc}") from exc
