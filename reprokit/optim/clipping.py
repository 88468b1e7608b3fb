"""The baselines Clippy is compared with (docs/methods.md §3.5), for dense parameters.

Gradient transforms edit ``p.grad`` in place and are called between ``loss.backward()`` and
``optimizer.step()``::

    opt, transform = make_optimizer("adagrad+agc", model.parameters(), lr=0.05)
    loss.backward()
    if transform is not None:
        stats = transform.apply()      # dict of 0-d / 1-d tensors for telemetry (no host sync)
    opt.step()

* :class:`GradNormClip` — Pascanu et al.: ``g ← σ·g``, ``σ = min(1, λ/‖g‖₂)``; over the global
  norm of all tensors (``torch.nn.utils.clip_grad_norm_``) or per tensor (``per_tensor=True``, the
  paper's "local" GC).
* :class:`AdaptiveGradClip` — AGC, Brock et al. (NFNets): ``σ = min(1, λ·max(‖w‖, ε)/‖g‖)`` per
  tensor, or per unit (output row) with ``unitwise=True`` as in the official NFNets code.
* :class:`LambAdagrad` — Adagrad with a LAMB-style layer-wise trust ratio on the update
  (You et al.; φ(x) = x): ``w ← w − η·μ·(‖w‖/‖r‖)·r``. It needs the Adagrad direction ``r``, so it
  is an optimizer rather than a gradient transform.

Sparse gradients (``nn.Embedding(sparse=True)``) are left untouched by the transforms: the paper
applied every baseline to non-embedding parameters only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from reprokit.optim._common import (
    OptimizerArgumentError,
    adagrad_accumulator,
    check_number,
    closure_loss,
    flatten_params,
)

__all__ = [
    "AdaptiveGradClip",
    "GradNormClip",
    "GradientTransform",
    "LambAdagrad",
    "unitwise_norm",
]


class GradientTransform(ABC):
    """Something that rewrites gradients in place between ``backward()`` and ``step()``.

    ``params`` is fixed at construction (tensors, ``(name, tensor)`` pairs or param groups, as
    for an optimizer); :meth:`apply` may be given another iterable for a one-off call. Tensors
    without a gradient, or with a sparse gradient, are skipped.
    """

    def __init__(self, params: Iterable) -> None:
        self.params: list[Tensor] = flatten_params(params)
        self.last_stats: dict[str, Tensor] = {}

    def _dense(self, params: Iterable | None) -> list[Tensor]:
        ps = self.params if params is None else flatten_params(params)
        return [p for p in ps if p.grad is not None and not p.grad.is_sparse and p.numel() > 0]

    def apply(self, params: Iterable | None = None) -> dict[str, Tensor]:
        """Transform the gradients; returns (and keeps in ``last_stats``) telemetry tensors."""
        dense = self._dense(params)
        if not dense:
            self.last_stats = {}
            return self.last_stats
        with torch.no_grad():
            self.last_stats = self._apply(dense)
        return self.last_stats

    __call__ = apply

    @abstractmethod
    def _apply(self, params: list[Tensor]) -> dict[str, Tensor]: ...


class GradNormClip(GradientTransform):
    """Gradient-norm clipping, ``g ← g·min(1, max_norm/‖g‖)``.

    ``per_tensor=False`` (default): one global norm over all tensors via
    ``torch.nn.utils.clip_grad_norm_`` (which divides by ``‖g‖ + 1e-6``). ``per_tensor=True``: one
    σ per tensor (the paper's local GC, λ_GC ∈ {1e-1, 1e-2, 1e-3}); a zero gradient keeps σ = 1.
    Stats: ``grad_norm`` (before clipping; 1-d per tensor when ``per_tensor``) and ``scale``.
    """

    def __init__(
        self,
        params: Iterable,
        max_norm: float = 1.0,
        *,
        norm_type: float = 2.0,
        per_tensor: bool = False,
    ) -> None:
        super().__init__(params)
        check_number("max_norm", max_norm, strict=True)
        check_number("norm_type", norm_type, strict=True)
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.per_tensor = bool(per_tensor)

    def _apply(self, params: list[Tensor]) -> dict[str, Tensor]:
        if not self.per_tensor:
            total = torch.nn.utils.clip_grad_norm_(params, self.max_norm, self.norm_type)
            scale = (self.max_norm / (total + 1e-6)).clamp(max=1.0)
            return {"grad_norm": total, "scale": scale}
        grads = [p.grad for p in params]
        norms = torch.stack([torch.linalg.vector_norm(g, self.norm_type) for g in grads])
        # λ/0 = inf → clamp → 1: a zero gradient is left alone.
        scale = norms.reciprocal().mul_(self.max_norm).clamp_(max=1.0)
        factors = [s.to(g.dtype) for s, g in zip(scale.unbind(0), grads, strict=True)]
        torch._foreach_mul_(grads, factors)
        return {"grad_norm": norms, "scale": scale}


def unitwise_norm(x: Tensor) -> Tensor:
    """L2 norm per output unit, broadcastable to ``x`` (NFNets' ``unitwise_norm``).

    Scalars and vectors (biases, gains) use their whole norm; a matrix or conv kernel stored
    ``(out, in, ...)`` as in torch uses one norm per output row (dimension 0 kept).
    """
    if x.ndim <= 1:
        return torch.linalg.vector_norm(x, 2, dim=None, keepdim=True)
    return torch.linalg.vector_norm(x, 2, dim=tuple(range(1, x.ndim)), keepdim=True)


class AdaptiveGradClip(GradientTransform):
    """Adaptive gradient clipping (Brock et al. 2021) as in the official NFNets code.

    ``max_norm = clipping · max(‖w‖, eps)``; where ``‖g‖ ≥ max_norm``,
    ``g ← g · max_norm / max(‖g‖, 1e-6)``, else ``g`` is unchanged — i.e.
    ``σ = min(1, λ·max(‖w‖, ε)/‖g‖)``. Norms are per tensor, or per output unit with
    ``unitwise=True``. Paper grid λ_AGC ∈ {1e-2, 1e-3, 1e-4}; NFNets' ε = 1e-3.
    Stats: ``scale`` (per tensor; the smallest unit scale when unit-wise).
    """

    def __init__(
        self,
        params: Iterable,
        clipping: float = 1e-2,
        *,
        eps: float = 1e-3,
        unitwise: bool = False,
    ) -> None:
        super().__init__(params)
        check_number("clipping", clipping, strict=True)
        check_number("eps", eps)
        self.clipping = float(clipping)
        self.eps = float(eps)
        self.unitwise = bool(unitwise)

    def _norm(self, x: Tensor) -> Tensor:
        if self.unitwise:
            return unitwise_norm(x)
        return torch.linalg.vector_norm(x, 2)

    def _apply(self, params: list[Tensor]) -> dict[str, Tensor]:
        scales = []
        for p in params:
            g = p.grad
            w_norm = self._norm(p).clamp(min=self.eps)
            g_norm = self._norm(g)
            max_norm = w_norm.mul_(self.clipping)
            clipped = max_norm / g_norm.clamp(min=1e-6)
            scale = torch.where(g_norm < max_norm, torch.ones_like(clipped), clipped)
            g.mul_(scale)
            scales.append(scale.amin())
        return {"scale": torch.stack(scales)}


class LambAdagrad(Optimizer):
    """Adagrad with a LAMB-style trust ratio per tensor (LAMB baseline, docs/methods.md §3.5).

    ``A ← A + g²`` (paper order), ``r = g/√(A+ε)``, then
    ``w ← w − η·μ·(‖w‖₂/‖r‖₂)·r``; the trust ratio is 1 where ``‖w‖ = 0`` or ``‖r‖ = 0`` (as in
    the reference LAMB implementations), so zero-initialised biases still move. ``μ`` rescales the
    learning rate (paper grid {1e-1, 1e-2, 1e-3}). Accumulator and ε follow
    :class:`~reprokit.optim.ClippyAdagrad`'s paper mode, so the two differ only in the scale.
    ``state[p]["trust_ratio"]`` keeps the last ratio (0-d tensor) for telemetry.
    Dense gradients only.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        *,
        mu: float = 1e-2,
        initial_accumulator_value: float = 0.1,
        eps: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        check_number("lr", lr)
        check_number("mu", mu, strict=True)
        check_number("initial_accumulator_value", initial_accumulator_value)
        check_number("eps", eps)
        check_number("weight_decay", weight_decay)
        if initial_accumulator_value + eps <= 0:
            raise OptimizerArgumentError("initial_accumulator_value + eps must be > 0")
        defaults = dict(
            lr=lr,
            mu=mu,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, mu, eps, wd = group["lr"], group["mu"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise OptimizerArgumentError(
                        "LambAdagrad supports dense gradients only (use nn.Embedding(sparse=False) "
                        "or another optimizer for sparse embedding tables)"
                    )
                state = self.state[p]
                acc = adagrad_accumulator(state, p, group["initial_accumulator_value"])
                g = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                acc.addcmul_(g, g)
                r = (acc.rsqrt() if eps == 0 else acc.add(eps).rsqrt_()).mul_(g)
                w_norm = torch.linalg.vector_norm(p)
                r_norm = torch.linalg.vector_norm(r)
                ok = (w_norm > 0) & (r_norm > 0)
                trust = torch.where(ok, w_norm / torch.where(ok, r_norm, 1.0), 1.0)
                p.addcmul_(r, trust.mul(-lr * mu))
                state["trust_ratio"] = trust
        return loss
