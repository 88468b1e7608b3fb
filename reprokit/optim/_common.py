"""Small helpers shared by the optimizers and gradient transforms of :mod:`reprokit.optim`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from reprokit.errors import ReprokitError


class OptimizerArgumentError(ReprokitError, ValueError):
    """A bad optimizer / transform argument.

    It is a :class:`ReprokitError` (the CLI turns it into one line and exit code 2) and a
    :class:`ValueError` (what ``torch.optim`` raises for bad hyperparameters), so callers of either
    convention can catch it.
    """


def check_number(name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> None:
    """Raise :class:`OptimizerArgumentError` unless ``value`` is a real number ``>= minimum``.

    ``strict`` asks for ``> minimum``. Tensors are refused: hyperparameters are Python numbers,
    so the step never branches on (or synchronises with) a device value.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptimizerArgumentError(f"{name} must be a number, got {value!r}")
    if value != value:  # NaN
        raise OptimizerArgumentError(f"{name} must be a number, got NaN")
    if (value <= minimum) if strict else (value < minimum):
        relation = ">" if strict else ">="
        raise OptimizerArgumentError(f"{name} must be {relation} {minimum}, got {value!r}")


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """``closure()``'s loss, or None; with autograd on, since ``step`` runs under ``no_grad``."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def adagrad_accumulator(state: dict[str, Any], p: Tensor, initial_value: float) -> Tensor:
    """The parameter's Adagrad accumulator, created on its first step filled with ``initial_value``."""
    if "accumulator" not in state:
        state["accumulator"] = torch.full_like(
            p, initial_value, memory_format=torch.preserve_format
        )
    return state["accumulator"]


def flatten_params(params: Iterable) -> list[Tensor]:
    """Tensors from an iterable of tensors, ``(name, tensor)`` pairs or param-group dicts."""
    if isinstance(params, Tensor):
        return [params]
    out: list[Tensor] = []
    for item in params:
        if isinstance(item, Tensor):
            out.append(item)
        elif isinstance(item, dict):
            out.extend(flatten_params(item["params"]))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Tensor):
            out.append(item[1])
        else:
            raise OptimizerArgumentError(
                f"expected tensors, (name, tensor) pairs or param-group dicts, got {type(item)!r}"
            )
    return out


def on_cpu(t: Tensor) -> bool:
    """Whether ``t`` takes the CPU code paths (tests patch it to run the accelerator ones)."""
    return t.device.type == "cpu"


def max_abs(t: Tensor) -> Tensor:
    """``max |t|`` as a 0-d tensor on ``t``'s device, without a host synchronisation.

    On CPU ``aminmax`` (one pass) is much faster than ``vector_norm(inf)``; on accelerators the
    norm is one kernel. Both are exact, so the two give bitwise-identical results.
    """
    if on_cpu(t):
        lo, hi = torch.aminmax(t)
        return torch.maximum(hi, lo.neg())
    return torch.linalg.vector_norm(t, float("inf"))


def max_abs_many(tensors: list[Tensor]) -> list[Tensor]:
    """:func:`max_abs` of each tensor (one foreach kernel on accelerators)."""
    if not tensors:
        return []
    if on_cpu(tensors[0]):
        return [max_abs(t) for t in tensors]
    return list(torch._foreach_norm(tensors, float("inf")))
