"""Clippy: Adagrad with per-tensor L∞ clipping of the update (Tang et al., KDD 2023).

Reference: ``docs/methods.md`` §3 (§3.2 Algorithm 1, §3.3 the TensorFlow Recommenders semantics,
§3.4 the presets). Two accumulator orders, never mixed silently:

``accumulator_order="paper"`` (Algorithm 1, the default)::

    A ← A + g²                              # raw gradient, before the step
    P = (A + ε)^(-1/2);   Δ = η · g ⊙ P
    b = λ_rel·|w| + λ_acc·P + λ_abs
    σ = min(1, min_j b_j / |Δ_j|)           # one scalar per parameter tensor; Δ_j = 0 is ignored
    w ← w − σ·Δ

``accumulator_order="tfrs_delayed"`` (TFRS default): ``P`` and ``Δ`` come from the accumulator
of the previous step, and only afterwards ``A ← A + g²`` (or ``A + (σ·g)²`` with
``clip_accumulator_update=True``).

``ε`` sits inside the square root in both orders (TFRS's placement, not ``torch.optim.Adagrad``'s).
With ``λ_abs > 0`` (required) the bound is positive everywhere, so σ > 0 and no 0/0 can occur;
``Δ_j = 0`` coordinates (zero gradient) never limit σ, and zero weights are bounded by ``λ_abs``.

σ is computed on the parameter's device with tensor ops only (no ``.item()``, no branching on
values) and kept for telemetry in ``state[p]["sigma"]`` together with Clippy's own L∞ measure
``state[p]["update_ratio"] = max_j |Δ_j| / b_j`` (σ = min(1, 1/update_ratio)); see
:attr:`ClippyAdagrad.last_sigma`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from reprokit.optim import _common
from reprokit.optim._common import (
    OptimizerArgumentError,
    check_number,
    max_abs,
    max_abs_many,
)

__all__ = [
    "ACCUMULATOR_ORDERS",
    "PRESETS",
    "ClippyAdagrad",
    "ClippyPreset",
    "shrink_by_references",
]

ACCUMULATOR_ORDERS = ("paper", "tfrs_delayed")


@dataclass(frozen=True)
class ClippyPreset:
    """A named set of :class:`ClippyAdagrad` hyperparameters (docs/methods.md §3.4)."""

    description: str
    accumulator_order: str
    lambda_rel: float
    lambda_abs: float
    lambda_acc: float
    initial_accumulator_value: float
    eps: float
    clip_accumulator_update: bool = False

    def kwargs(self) -> dict[str, Any]:
        """The constructor keyword arguments of this preset."""
        out = asdict(self)
        del out["description"]
        return out


PRESETS: dict[str, ClippyPreset] = {
    "paper": ClippyPreset(
        description=(
            "Tang et al. 2023: Algorithm 1 (accumulator updated first with the raw gradient), "
            "lambda_rel=0.5, lambda_abs=1e-2, accumulator init 0.1, no epsilon"
        ),
        accumulator_order="paper",
        lambda_rel=0.5,
        lambda_abs=1e-2,
        lambda_acc=0.0,
        initial_accumulator_value=0.1,
        eps=0.0,
    ),
    "tfrs": ClippyPreset(
        description=(
            "TensorFlow Recommenders ClippyAdagrad defaults: delayed accumulator update, "
            "lambda_rel=0.1, lambda_abs=1e-7, lambda_acc=0, accumulator init 0.1, eps=1e-7 "
            "inside the square root"
        ),
        accumulator_order="tfrs_delayed",
        lambda_rel=0.1,
        lambda_abs=1e-7,
        lambda_acc=0.0,
        initial_accumulator_value=0.1,
        eps=1e-7,
    ),
}


def shrink_by_references(
    tensor: Tensor,
    references: Iterable[Tensor | float] = (),
    relative_factors: Iterable[float] = (),
    absolute_factor: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """TFRS's ``shrink_by_references``: scale ``tensor`` so ``|t_i| ≤ Σ_k f_k·|ref_k,i| + abs``.

    Returns ``(tensor * scale, scale)`` with ``scale = min(1, min_i s_i)``, ``s_i = 1`` where
    ``t_i = 0`` and ``s_i = bound_i / |t_i|`` otherwise (0 where the bound is 0). References
    broadcast against ``tensor``. This is the reference semantics the optimizer implements in a
    faster, fused form; it is exported for tests and for anyone clipping a custom update.
    """
    references = list(references)
    relative_factors = list(relative_factors)
    if len(references) != len(relative_factors):
        raise OptimizerArgumentError(
            f"{len(references)} references but {len(relative_factors)} relative factors"
        )
    for f in relative_factors:
        check_number("relative factor", f)
    check_number("absolute_factor", absolute_factor)
    t = torch.as_tensor(tensor)
    bound = torch.full_like(t, absolute_factor)
    for ref, factor in zip(references, relative_factors, strict=True):
        bound = bound + factor * torch.as_tensor(ref, dtype=t.dtype, device=t.device).abs()
    mag = t.abs()
    nonzero = mag != 0
    safe_mag = torch.where(nonzero, mag, torch.ones_like(mag))
    per_coord = torch.where(nonzero, bound / safe_mag, torch.ones_like(mag))
    scale = per_coord.amin().clamp(max=1.0) if per_coord.numel() else t.new_ones(())
    return t * scale, scale


@dataclass(frozen=True)
class _Plan:
    """How one param group computes ``b``: ``b = scale · B`` with ``B`` cheap to build.

    kind ``"w"``: ``B = |w| + const (+ acc_coef · P)``, scale ``λ_rel``;
    kind ``"p"``: ``B = P + const``, scale ``λ_acc`` (λ_rel = 0);
    kind ``"const"``: ``B = 1``, scale ``λ_abs`` (λ_rel = λ_acc = 0; no tensor needed).
    Factoring the scale out saves one full pass over the parameter per step.
    """

    kind: str
    scale: float
    const: float
    acc_coef: float

    @property
    def needs_p(self) -> bool:
        return self.kind == "p" or self.acc_coef != 0.0


def _plan(group: dict[str, Any]) -> _Plan:
    lam_rel, lam_abs, lam_acc = group["lambda_rel"], group["lambda_abs"], group["lambda_acc"]
    if lam_rel > 0:
        return _Plan("w", lam_rel, lam_abs / lam_rel, lam_acc / lam_rel)
    if lam_acc > 0:
        return _Plan("p", lam_acc, lam_abs / lam_acc, 0.0)
    return _Plan("const", lam_abs, 0.0, 0.0)


def _rsqrt(acc: Tensor, eps: float, out: Tensor | None = None) -> Tensor:
    if out is None:
        return acc.rsqrt() if eps == 0 else acc.add(eps).rsqrt_()
    return torch.rsqrt(acc, out=out) if eps == 0 else torch.add(acc, eps, out=out).rsqrt_()


def _bound(w: Tensor, p_inv: Tensor, plan: _Plan, out: Tensor | None = None) -> Tensor | None:
    if plan.kind == "const":
        return None
    if plan.kind == "p":
        return p_inv.add(plan.const) if out is None else torch.add(p_inv, plan.const, out=out)
    b = w.abs() if out is None else torch.abs(w, out=out)
    b.add_(plan.const)
    if plan.acc_coef:
        b.add_(p_inv, alpha=plan.acc_coef)
    return b


class _Scratch:
    """Two flat buffers, reused by the per-tensor CPU path instead of allocating each step.

    Fresh multi-megabyte CPU allocations are page-faulted in on every step (the allocator returns
    them to the OS), which costs more than the arithmetic; the per-tensor loop needs its two
    temporaries for one tensor at a time, so buffers the size of the largest tensor suffice.
    They are not optimizer state (not in ``state_dict``).
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}

    def get(self, like: Tensor) -> tuple[Tensor, Tensor] | None:
        if not _common.on_cpu(like) or not like.is_contiguous():
            return None  # accelerators have caching allocators; odd layouts just allocate
        key = (like.device, like.dtype)
        bufs = self._bufs.get(key)
        n = like.numel()
        if bufs is None or bufs[0].numel() < n:
            bufs = [torch.empty(n, dtype=like.dtype, device=like.device) for _ in range(2)]
            self._bufs[key] = bufs
        return bufs[0][:n].view_as(like), bufs[1][:n].view_as(like)


def _ratio_to_sigma(ratio: Tensor) -> Tensor:
    # σ = min(1, 1/ratio); ratio = 0 (all-zero update) gives 1, ratio = inf gives 0, NaN stays NaN.
    return ratio.clamp(min=1.0).reciprocal_()


def _single_dense(
    p: Tensor,
    grad: Tensor,
    acc: Tensor,
    group: dict[str, Any],
    plan: _Plan,
    clip: bool,
    scratch: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    paper = group["accumulator_order"] == "paper"
    s1, s2 = scratch if scratch is not None else (None, None)
    g = grad.add(p, alpha=wd) if wd != 0 else grad
    if paper:
        acc.addcmul_(g, g)
    p_inv = _rsqrt(acc, eps, s1)
    if not clip:
        d = p_inv.mul_(g)
        p.add_(d, alpha=-lr)
        if not paper:
            acc.addcmul_(g, g)
        return torch.ones((), dtype=p.dtype, device=p.device), None
    d = p_inv.mul(g) if plan.needs_p else p_inv.mul_(g)  # r = g / sqrt(A + eps); Δ = lr * r
    b = _bound(p, p_inv, plan, s2)
    if b is None:
        m = max_abs(d)
    else:
        torch.div(d, b, out=b)
        m = max_abs(b)
    ratio = m.mul(lr / plan.scale)  # max_j |Δ_j| / b_j
    sigma = _ratio_to_sigma(ratio)
    p.addcmul_(d, sigma.mul(-lr))
    if not paper:
        if group["clip_accumulator_update"]:
            gs = g.mul(sigma)
            acc.addcmul_(gs, gs)
        else:
            acc.addcmul_(g, g)
    return sigma, ratio


def _foreach_dense(
    params: list[Tensor],
    grads: list[Tensor],
    accs: list[Tensor],
    group: dict[str, Any],
    plan: _Plan,
    clip: bool,
) -> tuple[list[Tensor], list[Tensor] | None]:
    """The arithmetic of :func:`_single_dense`, op for op, over a list of same-device tensors."""
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    paper = group["accumulator_order"] == "paper"
    gs = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
    if paper:
        torch._foreach_addcmul_(accs, gs, gs)
    if eps == 0:
        p_inv = torch._foreach_rsqrt(accs)
    else:
        p_inv = torch._foreach_add(accs, eps)
        torch._foreach_rsqrt_(p_inv)
    if not clip:
        torch._foreach_mul_(p_inv, gs)
        torch._foreach_add_(params, p_inv, alpha=-lr)
        if not paper:
            torch._foreach_addcmul_(accs, gs, gs)
        one = torch.ones((), dtype=params[0].dtype, device=params[0].device)
        return [one] * len(params), None
    if plan.needs_p:
        d = torch._foreach_mul(p_inv, gs)
    else:
        torch._foreach_mul_(p_inv, gs)
        d = p_inv
    if plan.kind == "const":
        m = max_abs_many(d)
    else:
        if plan.kind == "p":
            b = torch._foreach_add(p_inv, plan.const)
        else:
            b = torch._foreach_abs(params)
            torch._foreach_add_(b, plan.const)
            if plan.acc_coef:
                torch._foreach_add_(b, p_inv, alpha=plan.acc_coef)
        if _common.on_cpu(params[0]):
            for d_i, b_i in zip(d, b, strict=True):  # CPU foreach ops loop anyway; reuse b
                torch.div(d_i, b_i, out=b_i)
        else:
            b = torch._foreach_div(d, b)
        m = max_abs_many(b)
    ratio = torch.stack(m).mul_(lr / plan.scale)
    sigma = _ratio_to_sigma(ratio)
    coef = sigma.mul(-lr).unbind(0)
    torch._foreach_addcmul_(params, d, coef)
    sigmas = list(sigma.unbind(0))
    if not paper:
        if group["clip_accumulator_update"]:
            gsig = torch._foreach_mul(gs, sigmas)
            torch._foreach_addcmul_(accs, gsig, gsig)
        else:
            torch._foreach_addcmul_(accs, gs, gs)
    return sigmas, list(ratio.unbind(0))


class ClippyAdagrad(Optimizer):
    """Adagrad with Clippy (Tang et al. 2023), one clipping factor σ per parameter tensor.

    Args:
        params: tensors, ``(name, tensor)`` pairs (names then key :attr:`last_sigma`) or
            param groups.
        lr: learning rate η, a Python float (a param-group key, so ``lr_scheduler`` works).
        lambda_rel: λ_rel, bound relative to ``|w|`` (paper 0.5, TFRS 0.1).
        lambda_abs: λ_abs > 0, absolute bound (paper 1e-2, TFRS 1e-7).
        lambda_acc: λ_acc ≥ 0, bound term λ_acc·(A+ε)^(-1/2) (TFRS only; 0 disables it).
        initial_accumulator_value: A₀ (0.1 in both the paper and TFRS).
        eps: ε added inside the square root; ``initial_accumulator_value + eps`` must be > 0.
        accumulator_order: ``"paper"`` (A updated before the step, Algorithm 1) or
            ``"tfrs_delayed"`` (step from the previous accumulator, TFRS default).
        clip_accumulator_update: TFRS option: add (σ·g)² instead of g² (``tfrs_delayed`` only).
        weight_decay: L2 penalty added to the gradient first (as ``torch.optim.Adagrad``); not
            allowed with sparse gradients.
        clip: apply Clippy to this group (``False`` = plain Adagrad with the same accumulator
            semantics, σ = 1); e.g. a param group of embedding tables, as the paper does.
        clip_sparse: also clip sparse gradients (``nn.Embedding(sparse=True)``), TFRS-style: σ over
            the rows the batch touched (duplicates coalesced first). Off by default, as in the
            paper, which applied Clippy only to dense parameters; sparse gradients then get the
            plain Adagrad step.
        foreach: on accelerators, use ``torch._foreach_*`` kernels over each group's dense
            tensors (the same numbers as the per-tensor loop); ``None`` or ``True``: on. On CPU,
            where torch's foreach kernels are loops over per-tensor kernels, the per-tensor path
            (which reuses two scratch buffers instead of allocating) always runs.

    Use :meth:`from_preset` for the named settings in :data:`PRESETS` (``"paper"``, ``"tfrs"``).

    Distributed training: under DDP gradients are all-reduced before ``step`` so σ agrees on every
    rank; under FSDP/ZeRO or row-sharded embeddings each rank sees a shard and σ is the shard's
    own (it is not all-reduced with MIN here), so results then depend on the world size.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-2,
        *,
        lambda_rel: float = 0.5,
        lambda_abs: float = 1e-2,
        lambda_acc: float = 0.0,
        initial_accumulator_value: float = 0.1,
        eps: float = 0.0,
        accumulator_order: str = "paper",
        clip_accumulator_update: bool = False,
        weight_decay: float = 0.0,
        clip: bool = True,
        clip_sparse: bool = False,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            lambda_rel=lambda_rel,
            lambda_abs=lambda_abs,
            lambda_acc=lambda_acc,
            initial_accumulator_value=initial_accumulator_value,
            eps=eps,
            accumulator_order=accumulator_order,
            clip_accumulator_update=clip_accumulator_update,
            weight_decay=weight_decay,
            clip=clip,
            clip_sparse=clip_sparse,
            foreach=foreach,
        )
        _validate_group(defaults)
        self._scratch = _Scratch()
        super().__init__(params, defaults)

    @classmethod
    def from_preset(
        cls, name: str, params: Iterable, lr: float = 1e-2, **overrides: Any
    ) -> ClippyAdagrad:
        """Build with the hyperparameters of ``PRESETS[name]``; ``overrides`` win over them."""
        key = name.strip().lower()
        if key not in PRESETS:
            raise OptimizerArgumentError(
                f"unknown Clippy preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}"
            )
        kwargs = PRESETS[key].kwargs()
        kwargs.update(overrides)
        return cls(params, lr=lr, **kwargs)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _validate_group(group)
        for p in group["params"]:
            if torch.is_complex(p):
                raise OptimizerArgumentError("ClippyAdagrad does not support complex parameters")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._scratch = _Scratch()
        for group in self.param_groups:
            group.setdefault("lambda_acc", 0.0)
            group.setdefault("clip_accumulator_update", False)
            group.setdefault("weight_decay", 0.0)
            group.setdefault("clip", True)
            group.setdefault("clip_sparse", False)
            group.setdefault("foreach", None)

    # -- telemetry -------------------------------------------------------------------------------

    def _collect(self, key: str) -> dict[str | int, Tensor]:
        out: dict[str | int, Tensor] = {}
        index = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for j, p in enumerate(group["params"]):
                st = self.state.get(p)
                if st and key in st:
                    out[names[j] if names else index] = st[key]
                index += 1
        return out

    @property
    def last_sigma(self) -> dict[str | int, Tensor]:
        """σ of the last step per parameter: 0-d tensors on the parameter's device.

        Keys are parameter names when the optimizer was built from ``named_parameters()``, else
        the parameter's position over all param groups (the ``state_dict`` index). Reading a value
        (``float(...)``) synchronises with the device; stack them first to read all at once.
        """
        return self._collect("sigma")

    @property
    def last_update_ratio(self) -> dict[str | int, Tensor]:
        """Clippy's L∞ measure ``max_j |Δ_j| / b_j`` of the last step (clipped tensors only)."""
        return self._collect("update_ratio")

    # -- the step --------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step; returns ``closure()``'s loss when a closure is given."""
        loss = _common.closure_loss(closure)
        for group in self.param_groups:
            plan = _plan(group)
            buckets: dict[tuple[torch.device, torch.dtype], list[tuple[Tensor, Tensor, dict]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                _common.adagrad_accumulator(state, p, group["initial_accumulator_value"])
                if p.grad.is_sparse:
                    self._sparse_step(p, p.grad, state, group, plan)
                elif p.numel() == 0:
                    state["sigma"] = torch.ones((), dtype=p.dtype, device=p.device)
                else:
                    buckets.setdefault((p.device, p.dtype), []).append((p, p.grad, state))
            foreach = group["foreach"]
            for items in buckets.values():
                # On CPU torch's foreach kernels are loops over per-tensor kernels; the per-tensor
                # path is faster there (scratch buffers instead of fresh allocations).
                use_foreach = foreach is not False and not _common.on_cpu(items[0][0])
                clip = group["clip"]
                if use_foreach:
                    sigmas, ratios = _foreach_dense(
                        [p for p, _, _ in items],
                        [g for _, g, _ in items],
                        [st["accumulator"] for _, _, st in items],
                        group,
                        plan,
                        clip,
                    )
                    for k, (_, _, st) in enumerate(items):
                        st["sigma"] = sigmas[k]
                        _store_ratio(st, None if ratios is None else ratios[k])
                else:
                    for p, g, st in items:
                        sigma, ratio = _single_dense(
                            p, g, st["accumulator"], group, plan, clip, self._scratch.get(p)
                        )
                        st["sigma"] = sigma
                        _store_ratio(st, ratio)
        return loss

    def _sparse_step(
        self, p: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any], plan: _Plan
    ) -> None:
        if group["weight_decay"] != 0:
            raise OptimizerArgumentError(
                "weight_decay is not compatible with sparse gradients; put the sparse embedding "
                "tables in a param group with weight_decay=0"
            )
        lr, eps = group["lr"], group["eps"]
        paper = group["accumulator_order"] == "paper"
        clip = group["clip"] and group["clip_sparse"]
        grad = grad.coalesce()  # the update is non-linear: duplicate indices must be summed first
        indices, values = grad._indices(), grad._values()
        acc = state["accumulator"]
        if values.numel() == 0:
            state["sigma"] = torch.ones((), dtype=p.dtype, device=p.device)
            state.pop("update_ratio", None)
            return
        if grad.sparse_dim() == 1:
            rows = indices[0]
            acc_rows = acc.index_select(0, rows)
            w_rows = p.index_select(0, rows)

            def put_acc(v: Tensor) -> None:
                acc.index_copy_(0, rows, v)

            def add_param(v: Tensor) -> None:
                p.index_add_(0, rows, v)
        else:
            key = tuple(indices)
            acc_rows = acc[key]
            w_rows = p[key]

            def put_acc(v: Tensor) -> None:
                acc.index_put_(key, v)

            def add_param(v: Tensor) -> None:
                p.index_put_(key, v, accumulate=True)

        g = values
        if paper:
            acc_rows.addcmul_(g, g)
            put_acc(acc_rows)
        p_inv = _rsqrt(acc_rows, eps)
        if clip:
            d = p_inv.mul(g) if plan.needs_p else p_inv.mul_(g)
            b = _bound(w_rows, p_inv, plan)
            if b is None:
                m = max_abs(d)
            else:
                torch.div(d, b, out=b)
                m = max_abs(b)
            ratio = m.mul(lr / plan.scale)
            sigma = _ratio_to_sigma(ratio)
            add_param(d.mul_(sigma.mul(-lr)))
        else:
            ratio = None
            sigma = torch.ones((), dtype=p.dtype, device=p.device)
            add_param(p_inv.mul_(g).mul_(-lr))
        if not paper:
            if clip and group["clip_accumulator_update"]:
                g = g.mul(sigma)
            acc_rows.addcmul_(g, g)
            put_acc(acc_rows)
        state["sigma"] = sigma
        _store_ratio(state, ratio)


def _store_ratio(state: dict[str, Any], ratio: Tensor | None) -> None:
    if ratio is None:
        state.pop("update_ratio", None)
    else:
        state["update_ratio"] = ratio


def _validate_group(group: dict[str, Any]) -> None:
    check_number("lr", group["lr"])
    check_number("lambda_rel", group["lambda_rel"])
    check_number("lambda_abs", group["lambda_abs"], strict=True)
    check_number("lambda_acc", group["lambda_acc"])
    check_number("eps", group["eps"])
    check_number("initial_accumulator_value", group["initial_accumulator_value"])
    check_number("weight_decay", group["weight_decay"])
    if group["initial_accumulator_value"] + group["eps"] <= 0:
        raise OptimizerArgumentError(
            "initial_accumulator_value + eps must be > 0 (otherwise a zero gradient gives 0/0); "
            f"got {group['initial_accumulator_value']} + {group['eps']}"
        )
    order = group["accumulator_order"]
    if order not in ACCUMULATOR_ORDERS:
        raise OptimizerArgumentError(
            f"accumulator_order must be one of {', '.join(ACCUMULATOR_ORDERS)}; got {order!r}"
        )
    for flag in ("clip_accumulator_update", "clip", "clip_sparse"):
        if not isinstance(group[flag], bool):
            raise OptimizerArgumentError(f"{flag} must be True or False, got {group[flag]!r}")
    if group["foreach"] not in (None, True, False):
        raise OptimizerArgumentError(
            f"foreach must be None, True or False, got {group['foreach']!r}"
        )
    if group["clip_accumulator_update"] and order == "paper":
        raise OptimizerArgumentError(
            "clip_accumulator_update needs accumulator_order='tfrs_delayed': in the paper order "
            "the accumulator is updated before σ is known (TFRS raises the same error)"
        )
