"""Optimizers beyond torch: Clippy (Tang et al. 2023) and the clipping baselines.

* :class:`ClippyAdagrad` (+ :data:`PRESETS`, ``ClippyAdagrad.from_preset``)
* gradient transforms :class:`GradNormClip`, :class:`AdaptiveGradClip`; :class:`LambAdagrad`
* :func:`make_optimizer` — names → ``(optimizer, transform-or-None)`` for the training loops
"""

from reprokit.optim._common import OptimizerArgumentError
from reprokit.optim.clipping import (
    AdaptiveGradClip,
    GradientTransform,
    GradNormClip,
    LambAdagrad,
    unitwise_norm,
)
from reprokit.optim.clippy import (
    ACCUMULATOR_ORDERS,
    PRESETS,
    ClippyAdagrad,
    ClippyPreset,
    shrink_by_references,
)
from reprokit.optim.factory import (
    OPTIMIZER_NAMES,
    OptimizerBundle,
    describe_optimizers,
    make_optimizer,
)

__all__ = [
    "ACCUMULATOR_ORDERS",
    "OPTIMIZER_NAMES",
    "PRESETS",
    "AdaptiveGradClip",
    "ClippyAdagrad",
    "ClippyPreset",
    "GradNormClip",
    "GradientTransform",
    "LambAdagrad",
    "OptimizerArgumentError",
    "OptimizerBundle",
    "describe_optimizers",
    "make_optimizer",
    "shrink_by_references",
    "unitwise_norm",
]
