"""Optimizers beyond torch: Clippy (Tang et al. 2023) and the clipping baselines.

* :class:`ClippyAdagrad` (+ :data:`PRESETS`, ``ClippyAdagrad.from_preset``)
* gradient transforms :class:`GradNormClip`, :class:`AdaptiveGradClip`; :class:`LambAdagrad`
* :func:`make_optimizer` — names → ``(optimizer, transform-or-None)`` for the training loops
* :data:`OPTIMIZERS` — the registry of those names and their capabilities (torch-free)

The names below are loaded on first access, so that importing the torch-free registry
(``reprokit.optim.catalog``, which ``reprokit.config`` reads) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OptimizerArgumentError": "reprokit.optim._common",
    "AdaptiveGradClip": "reprokit.optim.clipping",
    "GradientTransform": "reprokit.optim.clipping",
    "GradNormClip": "reprokit.optim.clipping",
    "LambAdagrad": "reprokit.optim.clipping",
    "unitwise_norm": "reprokit.optim.clipping",
    "ACCUMULATOR_ORDERS": "reprokit.optim.clippy",
    "PRESETS": "reprokit.optim.clippy",
    "ClippyAdagrad": "reprokit.optim.clippy",
    "ClippyPreset": "reprokit.optim.clippy",
    "shrink_by_references": "reprokit.optim.clippy",
    "OPTIMIZER_NAMES": "reprokit.optim.factory",
    "OptimizerBundle": "reprokit.optim.factory",
    "describe_optimizers": "reprokit.optim.factory",
    "make_optimizer": "reprokit.optim.factory",
    "OPTIMIZERS": "reprokit.optim.catalog",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reprokit.optim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
