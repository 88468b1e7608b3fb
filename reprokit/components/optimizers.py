"""The optimizer registry: every name ``make_optimizer`` accepts, with what engines need to know.

Torch-free (``reprokit.config`` validates names against it); the builders live in
:mod:`reprokit.optim.factory` and are imported when an optimizer is built. Capabilities:

- ``sparse_gradients``: may update embedding tables from sparse gradients (the rows of the batch
  only). Adam and the LAMB baseline need dense gradients, so their tables are dense.
- ``accumulator``: an Adagrad-family accumulator (``initial_accumulator_value`` applies), with its
  default start; ``None`` for optimizers without one.
- ``stacked``: the vectorized engine implements it for stacked parameters
  (``reprokit.training.stacked.optimizers``).

The accumulator start A0 is declared here: :data:`PAPER_ACCUMULATOR_START` is what
``make_optimizer`` passes to every Adagrad-family optimizer the caller gives none (plain
``adagrad``, Clippy, the clipping baselines), and, for ``adagrad`` only, torch's
:data:`TORCH_ACCUMULATOR_START` is what a training run passes when it leaves
``optim.initial_accumulator_value`` unset (what earlier runs and the vectorized engine use). Used
on their own, ClippyAdagrad's presets and LambAdagrad have the same value as their defaults
(tests/test_components.py checks they agree); torch's Adagrad has 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from reprokit.components import ComponentInfo, Registry

__all__ = [
    "OPTIMIZERS",
    "PAPER_ACCUMULATOR_START",
    "TORCH_ACCUMULATOR_START",
    "Accumulator",
    "OptimizerCapabilities",
    "accumulator_start",
    "run_accumulator",
]

#: A0 of Tang et al. 2023 (and TFRS): Clippy's presets, the clipping baselines, `make_optimizer`.
PAPER_ACCUMULATOR_START = 0.1
#: torch.optim.Adagrad's own default A0.
TORCH_ACCUMULATOR_START = 0.0


@dataclass(frozen=True)
class Accumulator:
    """An Adagrad-family accumulator. `start`: A0 when `make_optimizer` is called without
    `initial_accumulator_value`. `run_start`: the A0 a training run passes when
    `optim.initial_accumulator_value` is unset; None passes nothing, so `start` applies."""

    start: float
    run_start: float | None = None


@dataclass(frozen=True)
class OptimizerCapabilities:
    sparse_gradients: bool
    accumulator: Accumulator | None
    stacked: bool


_ADAGRAD = Accumulator(start=PAPER_ACCUMULATOR_START, run_start=TORCH_ACCUMULATOR_START)
_FAMILY = Accumulator(start=PAPER_ACCUMULATOR_START)


def _entry(
    name: str,
    description: str,
    builder: str,
    *,
    sparse: bool,
    acc: Accumulator | None,
    stacked=False,
) -> ComponentInfo[OptimizerCapabilities]:
    caps = OptimizerCapabilities(sparse_gradients=sparse, accumulator=acc, stacked=stacked)
    return ComponentInfo(name, name, description, caps, f"reprokit.optim.factory:{builder}")


OPTIMIZERS: Registry[OptimizerCapabilities] = Registry(
    "optimizer",
    (
        _entry(
            "adagrad",
            f"torch.optim.Adagrad, accumulator init {PAPER_ACCUMULATOR_START:g}",
            "build_adagrad",
            sparse=True,
            acc=_ADAGRAD,
            stacked=True,
        ),
        _entry("adam", "torch.optim.Adam", "build_adam", sparse=False, acc=None, stacked=True),
        _entry("sgd", "torch.optim.SGD", "build_sgd", sparse=True, acc=None, stacked=True),
        _entry(
            "clippy",
            "ClippyAdagrad, paper preset (lambda_rel 0.5, lambda_abs 1e-2)",
            "build_clippy_paper",
            sparse=True,
            acc=_FAMILY,
        ),
        _entry("clippy-paper", "alias of clippy", "build_clippy_paper", sparse=True, acc=_FAMILY),
        _entry(
            "clippy-tfrs",
            "ClippyAdagrad, TFRS preset (delayed accumulator, lambda_rel 0.1, lambda_abs 1e-7)",
            "build_clippy_tfrs",
            sparse=True,
            acc=_FAMILY,
        ),
        _entry(
            "adagrad+gradclip",
            "Adagrad + global gradient-norm clipping (max_norm=1.0)",
            "build_adagrad_gradclip",
            sparse=True,
            acc=_FAMILY,
        ),
        _entry(
            "adagrad+gradclip-layer",
            "Adagrad + per-tensor gradient-norm clipping, the paper's GC (max_norm=0.1)",
            "build_adagrad_gradclip_layer",
            sparse=True,
            acc=_FAMILY,
        ),
        _entry(
            "adagrad+agc",
            "Adagrad + adaptive gradient clipping per tensor (clipping=1e-2, agc_eps=1e-3)",
            "build_adagrad_agc",
            sparse=True,
            acc=_FAMILY,
        ),
        _entry(
            "adagrad+agc-unitwise",
            "Adagrad + adaptive gradient clipping per output unit (clipping=1e-2, agc_eps=1e-3)",
            "build_adagrad_agc_unitwise",
            sparse=True,
            acc=_FAMILY,
        ),
        _entry(
            "adagrad+lamb",
            "Adagrad with a LAMB-style trust ratio per tensor (mu=1e-2)",
            "build_adagrad_lamb",
            sparse=False,
            acc=_FAMILY,
        ),
    ),
)


def run_accumulator(name: str, configured: float | None) -> float | None:
    """The `initial_accumulator_value` a training run of `name` passes to `make_optimizer`: the
    configured A0, else the optimizer's run default; None passes nothing (no accumulator, or the
    optimizer's own start applies)."""
    acc = OPTIMIZERS[name].capabilities.accumulator
    if acc is None:
        return None
    value = acc.run_start if configured is None else configured
    return None if value is None else float(value)


def accumulator_start(name: str, configured: float | None = None) -> float | None:
    """The A0 a training run of `name` starts from (None: `name` has no accumulator)."""
    acc = OPTIMIZERS[name].capabilities.accumulator
    if acc is None:
        return None
    passed = run_accumulator(name, configured)
    return acc.start if passed is None else passed
