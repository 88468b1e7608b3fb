"""``make_optimizer``: one call that gives a training loop its optimizer and gradient transform.

::

    opt, transform = make_optimizer("clippy", model.parameters(), lr=0.05)
    for batch in loader:
        opt.zero_grad()
        loss_fn(model(batch)).backward()
        if transform is not None:
            transform.apply()
        opt.step()

Names (case-insensitive; see :data:`OPTIMIZER_NAMES` / :func:`describe_optimizers`). Each one is
an entry of the registry :data:`reprokit.components.optimizers.OPTIMIZERS`, which also declares
its capabilities (sparse gradients, the Adagrad accumulator and its start, a stacked
implementation). An Adagrad-family optimizer gets the registry's accumulator start unless the
caller passes ``initial_accumulator_value``:

======================== ===========================================================================
``adagrad``              ``torch.optim.Adagrad``, accumulator start ``PAPER_ACCUMULATOR_START``
                         when called here (a training run passes its own, ``run_accumulator``)
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

from reprokit.components.optimizers import OPTIMIZERS
from reprokit.optim._common import OptimizerArgumentError, check_number, flatten_params
from reprokit.optim.clipping import (
    AdaptiveGradClip,
    GradientTransform,
    GradNormClip,
    LambAdagrad,
)
from reprokit.optim.clippy import ClippyAdagrad

__all__ = ["OPTIMIZER_NAMES", "OptimizerBundle", "describe_optimizers", "make_optimizer"]


class OptimizerBundle(NamedTuple):
    """What :func:`make_optimizer` returns; unpacks as ``(optimizer, transform)``."""

    optimizer: Optimizer
    transform: GradientTransform | None


def _adagrad(params: list, lr: float, kw: dict[str, Any]) -> Optimizer:
    return torch.optim.Adagrad(params, lr=lr, **kw)


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


Builder = Callable[[list, float, dict[str, Any]], OptimizerBundle]

# The builders the registry's entries name (``reprokit.optim.factory:<name>``).
build_adagrad: Builder = _plain(_adagrad)
build_adam: Builder = _plain(lambda p, lr, kw: torch.optim.Adam(p, lr=lr, **kw))
build_sgd: Builder = _plain(lambda p, lr, kw: torch.optim.SGD(p, lr=lr, **kw))
build_clippy_paper: Builder = _plain(
    lambda p, lr, kw: ClippyAdagrad.from_preset("paper", p, lr, **kw)
)
build_clippy_tfrs: Builder = _plain(
    lambda p, lr, kw: ClippyAdagrad.from_preset("tfrs", p, lr, **kw)
)
build_adagrad_gradclip: Builder = _with_transform(_gradclip(per_tensor=False, default=1.0))
build_adagrad_gradclip_layer: Builder = _with_transform(_gradclip(per_tensor=True, default=0.1))
build_adagrad_agc: Builder = _with_transform(_agc(unitwise=False))
build_adagrad_agc_unitwise: Builder = _with_transform(_agc(unitwise=True))
build_adagrad_lamb: Builder = _plain(lambda p, lr, kw: LambAdagrad(p, lr=lr, **kw))

OPTIMIZER_NAMES: tuple[str, ...] = OPTIMIZERS.names


def describe_optimizers() -> dict[str, str]:
    """``{name: one-line description}`` of every name :func:`make_optimizer` accepts."""
    return OPTIMIZERS.describe()


def make_optimizer(name: str, params: Iterable, lr: float, **kw: Any) -> OptimizerBundle:
    """Build the optimizer (and gradient transform, or ``None``) called ``name``.

    ``params`` is anything a torch optimizer accepts (it is materialised once, so a generator
    such as ``model.parameters()`` is fine). Unknown names and bad arguments raise
    :class:`~reprokit.optim.OptimizerArgumentError` (a ``ReprokitError`` and a ``ValueError``).
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise OptimizerArgumentError(OPTIMIZERS.unknown(name))
    check_number("lr", lr)
    params = list(params)
    if not params:
        raise OptimizerArgumentError(f"optimizer {key!r} got an empty parameter list")
    info = OPTIMIZERS[key]
    kw = dict(kw)
    if info.capabilities.accumulator is not None:  # the registry's A0 unless the caller gives one
        kw.setdefault("initial_accumulator_value", info.capabilities.accumulator.start)
    try:
        return info.load()(params, lr, kw)
    except OptimizerArgumentError:
        raise
    except (TypeError, ValueError) as exc:  # bad keyword or value rejected by a torch optimizer
        raise OptimizerArgumentError(f"optimizer {key!r}: {exc}") from exc
