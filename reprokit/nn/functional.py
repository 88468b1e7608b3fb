"""Functional forms of reprokit's activations (docs/methods.md §2).

Every function here takes a tensor and plain-number parameters and returns a tensor of the same
shape and dtype. The modules in :mod:`reprokit.nn.activations` and the registry in
:mod:`reprokit.nn.registry` are thin wrappers around these functions.

SmeLU and gSmeLU run through custom :class:`torch.autograd.Function` objects:

* no ``torch.where`` chain: the forward is a clamp, a square and a maximum (see ``_smelu_into``),
  the backward is the "hard sigmoid" ``clamp((x+β)/(2β), 0, 1)`` times the incoming gradient;
* only the input ``x`` is saved for backward (β is a Python float, or a 0-dim tensor when learned);
* the intermediate buffer is reused in place, so one forward allocates exactly one output tensor and
  one backward exactly one gradient tensor, as ReLU does;
* they use only device-agnostic torch ops, so the same code runs on CUDA.

Fused CPU path: for contiguous float32/float64 CPU tensors, the forward and the backward each run as
one pass of a small compiled kernel (:mod:`reprokit.nn._fused`, built at install time when a C
compiler exists), threaded over ``torch.get_num_threads()`` for large tensors. It performs the
same IEEE operations in the same order as the torch ops below, so its results are bitwise equal to
theirs (tested); it is only faster (issue 3: SmeLU as fast as ReLU). Everything else (other
dtypes and devices, non-contiguous inputs, double backward, a tensor β, ``torch.compile`` tracing,
``REPROKIT_DISABLE_FUSED=1``) takes the torch-ops path.

Numerical contract (tested): for every finite input, including ±1e38 and ±float max, and every
β >= :data:`MIN_BETA`, the values and gradients are finite. The tails are exact: SmeLU returns
exactly 0 for ``x <= -β`` and exactly ``x`` for ``x >= β``. Widths smaller than ``MIN_BETA`` are
rejected, because ``0.5/β`` would overflow float32 (also the compute type of float16/bfloat16
kernels) below about 1.5e-39, and such a narrow transition is numerically the same as ReLU anyway.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from reprokit.errors import ReprokitError
from reprokit.nn import _fused

__all__ = [
    "MIN_BETA",
    "LEARNABLE_BETA_EPS",
    "elu",
    "gelu",
    "gsmelu",
    "leaky_relu",
    "mish",
    "relu",
    "selu",
    "smelu",
    "softplus",
    "swish",
    "tanhexp",
]

MIN_BETA = 1e-30
"""Smallest transition half-width accepted by :func:`smelu` and :func:`gsmelu` (α and β)."""

LEARNABLE_BETA_EPS = 1e-6
"""ε in the learnable parameterisation β = softplus(b) + ε: β never drops below it."""

# Beyond this |x| the GELU forms equal x (right) or 0 (left) to float64 precision; clamping the
# argument there keeps torch's tanh-GELU gradient (x³ overflows) and erf-GELU value finite.
_GELU_LIMIT = 10.0
# tanh(exp(x)) == 1 exactly in float32 and float64 for x >= 20.
_TANHEXP_LIMIT = 20.0


def _check_width(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= MIN_BETA):
        raise ReprokitError(
            f"{name} must be a finite number >= {MIN_BETA:g} (the minimum transition width), "
            f"got {value!r}"
        )
    return value


def _check_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ReprokitError(f"{name} must be a finite number, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# SmeLU with a fixed β
# --------------------------------------------------------------------------------------------


def _smelu_into(x: torch.Tensor, beta: float) -> torch.Tensor:
    """SmeLU_β(x) = max(x, β·m²) with m = clamp((x+β)/(2β), 0, 1), in one allocation.

    Why this is SmeLU (docs/methods.md §2.1): in the middle β·m² = (x+β)²/(4β) >= x (AM-GM); at
    x >= β, m = 1 and max(x, β) = x; at x <= -β, m = 0 and max(x, 0) = 0. Writing s = √β·m keeps
    every intermediate within [0, β] so nothing overflows, and the tails come out exactly (no
    cancellation).
    """
    root = math.sqrt(beta)
    s = torch.mul(x, 0.5 / root)
    s.add_(0.5 * root).clamp_(0.0, root).square_()
    return torch.maximum(s, x, out=s)


def _hard_sigmoid_times(grad: torch.Tensor, x: torch.Tensor, scale: float, shift: float):
    """grad * clamp(x*scale + shift, 0, 1), with a single allocation."""
    m = torch.mul(x, scale)
    m.add_(shift).clamp_(0.0, 1.0)
    return m.mul_(grad)


# --------------------------------------------------------------------------------------------
# Fused CPU kernels (reprokit/nn/_fused/smelu.c): the same operations as the torch ops above
# --------------------------------------------------------------------------------------------
#
# This is the hot path of every SmeLU layer, and for large tensors it runs right after a kernel
# that has streamed megabytes through the caches, so each Python statement here costs cache
# misses: the checks are kept few and cheap (measured: they are what separates parity with
# torch.relu from a 5-10% loss at 4M elements).

_FUSED_DTYPES = (torch.float32, torch.float64)
_FLOAT_MAX = sys.float_info.max
_is_compiling = torch.compiler.is_compiling


def _fusable(x: torch.Tensor) -> bool:
    """Whether ``x`` can take the compiled path: a plain contiguous float32/float64 CPU tensor.

    ``type(x) is torch.Tensor`` keeps out subclasses (FakeTensor and other tracing tensors have
    no data to point at); ``_is_compiling`` keeps torch.compile tracing on the torch ops.
    """
    return (
        _fused.ACTIVE
        and type(x) is torch.Tensor
        and x.dtype in _FUSED_DTYPES
        and x.is_cpu
        and x.layout is torch.strided
        and x.is_contiguous()
        and not _is_compiling()
    )


def _fused_grad(ctx, grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """``grad`` ready for the fused backward over ``x``, or None where the torch path must run."""
    if (
        ctx.fused  # the forward was fused, so x is a contiguous float CPU tensor
        and _fused.ACTIVE
        and not torch.is_grad_enabled()  # else create_graph=True: the backward must be traced
        and type(grad) is torch.Tensor
        and grad.dtype is x.dtype
        and grad.is_cpu
        and grad.layout is torch.strided
        and grad.numel() == x.numel()
    ):
        return grad if grad.is_contiguous() else grad.contiguous()  # e.g. y.sum()'s expand
    return None


def _hard_sigmoid_backward(ctx, grad, x, scale: float, shift: float, g: float = 1.0):
    """grad * clamp(x*scale + shift, 0, 1) [* g], fused where possible."""
    fused_grad = _fused_grad(ctx, grad, x)
    if fused_grad is not None:
        out = torch.empty_like(x)
        _fused.kernel.hard_sigmoid_bwd(
            x.data_ptr(),
            fused_grad.data_ptr(),
            out.data_ptr(),
            x.numel(),
            x.dtype is torch.float64,
            scale,
            shift,
            g,
            2 if g != 1.0 else 0,
            torch.get_num_threads(),
        )
        return out
    out = _hard_sigmoid_times(grad, x, scale, shift)
    if g != 1.0:
        out.mul_(g)
    return out


class _SmeLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        # Only x is saved: recomputing the clamp in backward is one pass over x, the same traffic
        # as re-reading a saved slope m, and it spares the forward an extra output.
        ctx.save_for_backward(x)
        ctx.beta = beta
        ctx.fused = _fusable(x)
        if not ctx.fused:
            return _smelu_into(x, beta)
        root = math.sqrt(beta)  # the same numbers as _smelu_into
        out = torch.empty_like(x)  # x is contiguous, so out is too
        _fused.kernel.smelu_fwd(
            x.data_ptr(),
            out.data_ptr(),
            x.numel(),
            x.dtype is torch.float64,
            0.5 / root,
            0.5 * root,
            root,
            torch.get_num_threads(),
        )
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return _hard_sigmoid_backward(ctx, grad, x, 0.5 / ctx.beta, 0.5), None


# --------------------------------------------------------------------------------------------
# SmeLU with a tensor β (learnable)
# --------------------------------------------------------------------------------------------


class _SmeLUTensorBetaFunction(torch.autograd.Function):
    """SmeLU with β a tensor broadcastable to x; returns gradients for x and β.

    ∂f/∂x = m and ∂f/∂β = (β² - x²)/(4β²) = m(1 - m) with m = clamp((x+β)/(2β), 0, 1).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, beta)
        beta = beta.to(x.dtype)
        root = beta.sqrt()
        s = torch.mul(x, 0.5 / root)
        s.add_(0.5 * root)
        # s already has the broadcast shape of x and β, so it can take the results in place.
        torch.minimum(s.clamp_(min=0.0), root, out=s).square_()
        return torch.maximum(s, x, out=s)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, beta = ctx.saved_tensors
        b = beta.to(x.dtype)
        m = torch.mul(x, 0.5 / b)
        m.add_(0.5).clamp_(0.0, 1.0)
        grad_x = grad_beta = None
        if ctx.needs_input_grad[1]:
            per_elem = m * (1.0 - m) * grad
            grad_beta = _reduce_to(per_elem, beta.shape).to(beta.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = m.mul_(grad)
        return grad_x, grad_beta


def _reduce_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum a broadcast result back to ``shape`` (the inverse of broadcasting)."""
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    dims = list(range(lead)) + [
        lead + i for i, n in enumerate(shape) if n == 1 and t.shape[lead + i] != 1
    ]
    out = t.sum(dim=dims, keepdim=True) if dims else t
    return out.reshape(shape)


def smelu(x: torch.Tensor, beta: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Smooth ReLU (docs/methods.md §2.1): 0 for x <= -β, (x+β)²/(4β) for |x| <= β, x for x >= β.

    ``beta`` is a float (>= :data:`MIN_BETA`) or a positive tensor broadcastable to ``x``; a tensor
    β receives the gradient ∂f/∂β = (β² - x²)/(4β²) on |x| < β. A tensor β is not validated (that
    would synchronise a GPU); :class:`reprokit.nn.LearnableSmeLU` keeps it positive by construction.
    """
    if isinstance(beta, torch.Tensor):
        return _SmeLUTensorBetaFunction.apply(x, beta)
    if not (type(beta) is float and MIN_BETA <= beta <= _FLOAT_MAX):  # the common case, fast
        beta = _check_width("SmeLU beta", beta)
    return _SmeLUFunction.apply(x, beta)


# --------------------------------------------------------------------------------------------
# Generalised SmeLU
# --------------------------------------------------------------------------------------------


def _gsmelu_into(x: torch.Tensor, alpha: float, beta: float, g: float, t: float) -> torch.Tensor:
    """gSmeLU = t + g·max(x + c, (w/2)·m²), c = (α-β)/2, w = α+β, m = clamp((x+α)/w, 0, 1).

    Same argument as ``_smelu_into``: in the middle the quadratic lies above the right tail line
    x + c (their difference is ((x+α) - w)²/(2w)), at x >= β it lies below, and at x <= -α both
    the quadratic (0) and the line (< 0) give max = 0 on the correct side.
    """
    w = alpha + beta
    root = math.sqrt(w / 2.0)
    k = root / w
    s = torch.mul(x, k)
    s.add_(alpha * k).clamp_(0.0, root).square_()
    c = (alpha - beta) / 2.0
    if c != 0.0:
        # max(x + c, q) == max(x, q - c) + c, without allocating x + c.
        s.sub_(c)
        torch.maximum(s, x, out=s)
        s.add_(c)
    else:
        torch.maximum(s, x, out=s)
    if g != 1.0:
        s.mul_(g)
    if t != 0.0:
        s.add_(t)
    return s


class _GSmeLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha: float, beta: float, g: float, t: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.params = (alpha, beta, g)
        ctx.fused = _fusable(x)
        if not ctx.fused:
            return _gsmelu_into(x, alpha, beta, g, t)
        # the same numbers, in the same order, as _gsmelu_into
        w = alpha + beta
        root = math.sqrt(w / 2.0)
        k = root / w
        c = (alpha - beta) / 2.0
        flags = (c != 0.0) | (g != 1.0) << 1 | (t != 0.0) << 2
        out = torch.empty_like(x)
        _fused.kernel.gsmelu_fwd(
            x.data_ptr(),
            out.data_ptr(),
            x.numel(),
            x.dtype is torch.float64,
            k,
            alpha * k,
            root,
            c,
            g,
            t,
            flags,
            torch.get_num_threads(),
        )
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        alpha, beta, g = ctx.params
        w = alpha + beta
        return _hard_sigmoid_backward(ctx, grad, x, 1.0 / w, alpha / w, g), None, None, None, None


def gsmelu(
    x: torch.Tensor, alpha: float = 1.0, beta: float = 1.0, g: float = 1.0, t: float = 0.0
) -> torch.Tensor:
    """Generalised SmeLU (docs/methods.md §2.3; the parameterisation is a reconstruction).

    t for x <= -α; g(x+α)²/(2(α+β)) + t for -α <= x <= β; g·x + g(α-β)/2 + t for x >= β.
    C¹ at both knots, monotone for g > 0, and equal to SmeLU_β when α = β, g = 1, t = 0.
    """
    alpha = _check_width("gSmeLU alpha", alpha)
    beta = _check_width("gSmeLU beta", beta)
    g = _check_finite("gSmeLU g", g)
    if not g > 0:
        raise ReprokitError(f"gSmeLU g (the right-hand slope) must be > 0, got {g!r}")
    t = _check_finite("gSmeLU t", t)
    return _GSmeLUFunction.apply(x, alpha, beta, g, t)


# --------------------------------------------------------------------------------------------
# The other activations (standard formulas, docs/methods.md §2.4)
# --------------------------------------------------------------------------------------------


def relu(x: torch.Tensor) -> torch.Tensor:
    """max(x, 0)."""
    return torch.relu(x)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """x·Φ(x) (``approximate="none"``) or its tanh approximation (``approximate="tanh"``).

    Arguments beyond ±10 are clamped before torch's kernel and the result there is x (right) or
    GELU(-10) (left, below 1e-22 in magnitude): torch's own kernel returns inf for x near float max
    and NaN gradients for |x| >~ 1e13 with the tanh form.
    """
    if approximate not in ("none", "tanh"):
        raise ReprokitError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
    clamped = x.clamp(-_GELU_LIMIT, _GELU_LIMIT)
    return torch.where(x > _GELU_LIMIT, x, F.gelu(clamped, approximate=approximate))


def swish(x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """x·σ(βx) (Swish; SiLU when β = 1)."""
    beta = _check_finite("Swish beta", beta)
    if not beta > 0:
        raise ReprokitError(f"Swish beta must be > 0, got {beta!r}")
    if beta == 1.0:
        return F.silu(x)
    return x * torch.sigmoid(x * beta)


def softplus(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """(1/β)·log(1 + exp(βx)), linear (= x) where βx > threshold."""
    beta = _check_finite("Softplus beta", beta)
    if not beta > 0:
        raise ReprokitError(f"Softplus beta must be > 0, got {beta!r}")
    threshold = _check_finite("Softplus threshold", threshold)
    if not threshold > 0:
        raise ReprokitError(f"Softplus threshold must be > 0, got {threshold!r}")
    return F.softplus(x, beta=beta, threshold=threshold)


def mish(x: torch.Tensor) -> torch.Tensor:
    """x·tanh(softplus(x))."""
    return F.mish(x)


def tanhexp(x: torch.Tensor) -> torch.Tensor:
    """x·tanh(exp(x)); exp's argument is capped at 20, where tanh(exp(x)) is exactly 1."""
    return x * torch.tanh(torch.exp(x.clamp(max=_TANHEXP_LIMIT)))


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """x for x > 0, α(exp(x) - 1) otherwise."""
    alpha = _check_finite("ELU alpha", alpha)
    if not alpha > 0:
        raise ReprokitError(f"ELU alpha must be > 0, got {alpha!r}")
    return F.elu(x, alpha=alpha)


def selu(x: torch.Tensor) -> torch.Tensor:
    """λ·(x if x > 0 else α(exp(x) - 1)), λ ≈ 1.0507, α ≈ 1.6733."""
    return F.selu(x)


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """x for x >= 0, negative_slope·x otherwise."""
    negative_slope = _check_finite("LeakyReLU negative_slope", negative_slope)
    if not 0 <= negative_slope < 1:
        raise ReprokitError(f"LeakyReLU negative_slope must be in [0, 1), got {negative_slope!r}")
    return F.leaky_relu(x, negative_slope=negative_slope)
