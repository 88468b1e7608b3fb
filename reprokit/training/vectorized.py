"""The `vectorized` engine: all replicas of a train-ensemble in one process, stacked parameters.

Replica r of this engine is trained like replica r of the reference loop (`loop.train_replica`), up
to floating-point reduction order:

- initialisation: the reference model is built and initialised from replica r's `init` seed (and
  bit-flipped from its `bitflip` seed), then its parameters are copied into slice r of the stack;
- data order: replica r's permutation of every epoch comes from its own `data-order` generator,
  and each replica gathers its own batch rows;
- dropout: replica r's masks come from a `torch.Generator` seeded with its `dropout` seed, drawn
  in the same order and shapes as the reference model draws them;
- async: one `StaleGradientQueue` per replica, seeded from its `async` seed;
- the optimizer (adagrad, sgd, adam) is re-implemented for stacked tensors with torch.optim's
  formulas; embedding tables of sparse optimizers (adagrad, sgd) are updated only in the rows a
  batch used, with the optimizer state updated in those rows only.

Layout: every field's table is a slice of one stacked table [R, V_pad, dim] (field f starts at
row `offsets[f]`), so one gather serves all fields of all replicas; the dense layers are views
[R, in, out] / [R, 1, out] of one flat [R, P_pad] buffer, used through `torch.baddbmm`, and the
optimizer updates that buffer with a handful of kernels. The backward pass is written out by hand
(`_Stepper`: torch's backward formulas without the autograd graph, into reused buffers, the
gradient straight into a flat [R, P_pad] buffer), and embedding gradients are coalesced without a
sort (`EmbeddingGradAccumulator`; on CPU by a compiled kernel with the same bits, see
reprokit/nn/_fused/engine_kernels.c). Every per-replica block an elementwise
kernel sees is a multiple of ALIGN elements (batches are padded with zero-weight rows), so a
replica's bits never depend on its slot in the stack or on which replicas share it: the control
arm is bitwise identical and a resumed subset reproduces the replicas of a full run. Replicas
whose seeds coincide (a source that is not varied) share one generator draw.

Per replica, as in the reference: the train log (step, epoch, loss, grad_norm, `loss_<label>` per
task), a `SpikeDetector`, and divergence handling: a replica whose loss or gradient norm goes
non-finite is frozen (logged at that step, never updated again, excluded from the stale-gradient
drain) without disturbing the others. One host transfer per step (loss and grad-norm of all
replicas: the freezing decision needs them); the logs and detectors are written from the collected
values after the loop, with the values and order the per-step logging had.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.nn import _fused
from reprokit.nn.activations import ReLU
from reprokit.nn.embeddings import TableLayout
from reprokit.nn.models import CTRModel, SeededDropout
from reprokit.optim.catalog import OPTIMIZERS, accumulator_start
from reprokit.training.divergence import SpikeDetector
from reprokit.training.loop import (
    EVAL_BATCH,
    ReplicaOutput,
    StaleGradientQueue,
    build_model,
    configure_determinism,
    flip_one_weight,
)
from reprokit.training.stacked.capability import (  # noqa: F401 (unsupported_reason re-exported)
    check_supported,
    unsupported_reason,
)

ADAGRAD_EPS = 1e-10
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# --------------------------------------------------------------------------------------------------
# Stacked parameters
# --------------------------------------------------------------------------------------------------
#: Every per-replica block an elementwise kernel sees is a multiple of this many elements. ATen's
#: CPU kernels run a vector body and a scalar tail (2 vectors of up to 16 floats / 8 doubles) over a
#: flattened tensor, and transcendental functions (exp, log1p, erf) or fused expressions (addcmul,
#: lerp) may round differently in the two. Aligned blocks put every replica's elements in the same
#: lanes of the same path, so a replica's numbers never depend on its position in the stack (that is
#: what keeps the control arm and the bitflip probe exact). Unaligned tensors (the rows of a sparse
#: update) only meet correctly rounded single operations (+, -, *, /, sqrt).
ALIGN = 64


def _round_up(n: int, k: int = ALIGN) -> int:
    return -(-n // k) * k


@dataclass
class Stack:
    """The parameters of R replicas.

    `table` [R, V_pad, dim]: a replica's embedding rows as the table kind lays them out (`layout`,
    from `EmbeddingTable.stacked_layout`; for `table`, field f from row `offsets[f]`), padded to
    V_pad rows (a multiple of ALIGN). `flat` [R, P_pad]: all dense parameters of a replica in one
    zero-padded row; `weights` [R, in, out] (nn.Linear's weight transposed) and `biases` [R, 1, out]
    are views of it that require grad.
    """

    table: torch.Tensor
    layout: TableLayout  # ids → rows of a replica's table (on the stack's device)
    flat: torch.Tensor
    weights: list[torch.Tensor]
    biases: list[torch.Tensor]
    activations: list[nn.Module]  # one per hidden layer
    dropout: float
    vocab_total: int  # rows per replica in the stacked table (V_pad)
    dim: int

    @property
    def replicas(self) -> int:
        return self.table.shape[0]

    @property
    def offsets(self) -> torch.Tensor:
        return self.layout.offsets

    @property
    def dense(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for w, b in zip(self.weights, self.biases, strict=True):
            out += [w, b]
        return out

    @property
    def table_flat(self) -> torch.Tensor:
        return self.table.view(-1, self.dim)

    def flat_grad(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Gradients of `dense` (in order) as one zero-padded [R, P_pad] tensor, like `flat`."""
        r = self.replicas
        parts = [g.reshape(r, -1) for g in grads]
        used = sum(p.shape[1] for p in parts)
        if used < self.flat.shape[1]:
            parts.append(self.flat.new_zeros((r, self.flat.shape[1] - used)))
        return torch.cat(parts, dim=1)


def _model_tensors(model: CTRModel) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the table's stacked rows [V, dim], dense tensors W0ᵀ, b0, W1ᵀ, b1, .. in Stack's order)."""
    table = model.embeddings.stacked_weight()
    dense: list[torch.Tensor] = []
    for m in [*(m for m in model.mlp if isinstance(m, nn.Linear)), model.head]:
        dense += [m.weight.detach().t(), m.bias.detach().unsqueeze(0)]
    return table, dense


def build_stack(
    config: RunConfig, encoded: Any, replicas: Sequence[int], seeds: Sequence[dict[str, int]]
) -> Stack:
    """Build each replica's reference model from its own seeds; stack the parameters of all."""
    n_tasks = encoded.train_y.shape[1]
    n_num = encoded.train_num.shape[1]
    per_replica: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    first: CTRModel | None = None
    cache: dict[tuple[int, int | None], tuple[torch.Tensor, list[torch.Tensor]]] = {}
    flip = "bitflip" in config.vary
    for replica, s in zip(replicas, seeds, strict=True):
        key = (s["init"], s["bitflip"] if flip and replica > 0 else None)
        if key not in cache:
            model = build_model(config, encoded.vocab_sizes, n_num, n_tasks)
            model.reset_parameters(torch.Generator().manual_seed(s["init"]))
            if key[1] is not None:
                flip_one_weight(model, key[1])
            cache[key] = _model_tensors(model)
            first = first or model
        per_replica.append(cache[key])
    assert first is not None
    device = torch.device(config.device)
    layout = first.embeddings.stacked_layout()
    n_rep, dim = len(per_replica), layout.dim
    v_pad = _round_up(max(layout.num_rows, 1))
    table = torch.zeros((n_rep, v_pad, dim))
    shapes = [t.shape for t in per_replica[0][1]]
    numels = [int(np.prod(sh)) for sh in shapes]
    flat = torch.zeros((n_rep, _round_up(sum(numels))))
    for r, (t, dense) in enumerate(per_replica):
        table[r, : t.shape[0]] = t
        flat[r, : sum(numels)] = torch.cat([d.reshape(-1) for d in dense])
    table, flat = table.to(device), flat.to(device)
    views, start = [], 0
    for sh, k in zip(shapes, numels, strict=True):
        views.append(flat[:, start : start + k].view(n_rep, *sh).requires_grad_(True))
        start += k
    return Stack(
        table=table,
        layout=layout.to(device),
        flat=flat,
        weights=views[0::2],
        biases=views[1::2],
        activations=[m for m in first.mlp if not isinstance(m, (nn.Linear, SeededDropout))],
        dropout=float(config.model.dropout),
        vocab_total=v_pad,
        dim=dim,
    )


class SharedDraws:
    """Per-replica random streams where replicas with equal seeds share one stream (and one draw).

    `groups[r]` is the stream index of replica r; `identity` when every replica has its own stream.
    """

    def __init__(self, seed_values: Sequence[int]) -> None:
        unique: dict[int, int] = {}
        self.groups = [unique.setdefault(int(s), len(unique)) for s in seed_values]
        self.seeds = list(unique)
        self.identity = self.groups == list(range(len(self.groups)))
        self.single = len(self.seeds) == 1

    def expand(self, drawn: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[G, ...] per stream → [R, ...] per replica ([1, ...] when all share one stream)."""
        if self.single or self.identity:
            return drawn
        return drawn.index_select(0, index)


# --------------------------------------------------------------------------------------------------
# Optimizer for stacked parameters (torch.optim's formulas, default hyper-parameters)
# --------------------------------------------------------------------------------------------------
@dataclass
class SparseGrad:
    """Coalesced embedding gradient: unique rows of the flat stacked table, summed values."""

    rows: torch.Tensor  # [U] int64, sorted, rows of table_flat (replica r owns r*V .. (r+1)*V-1)
    values: torch.Tensor  # [U, dim]

    def clone(self) -> SparseGrad:
        return SparseGrad(self.rows.clone(), self.values.clone())

    def for_replica(self, r: int, vocab_total: int) -> SparseGrad:
        lo, hi = torch.searchsorted(
            self.rows,
            torch.tensor([r * vocab_total, (r + 1) * vocab_total], device=self.rows.device),
        ).tolist()
        return SparseGrad(self.rows[lo:hi], self.values[lo:hi])


@dataclass
class StackedOptimizer:
    """Adagrad / SGD / Adam (torch.optim's formulas and defaults) over a `Stack`.

    Dense parameters are updated through the aligned [R, P_pad] buffer (`Stack.flat`) with the
    gradient from `Stack.flat_grad`: a handful of kernels for all replicas and layers. Sparse
    optimizers update the embedding table only in the rows a batch used (state included); Adam, like
    torch.optim.Adam on the reference model's dense embedding gradient, updates the whole table.
    """

    stack: Stack
    name: str
    lr: float
    weight_decay: float
    initial_accumulator: float = 0.0  # Adagrad's state start (torch's initial_accumulator_value)
    state: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    _buffers: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        params = [self.stack.table, self.stack.flat]  # state lists follow this order
        self.steps = [0] * self.stack.replicas
        if self.name == "adagrad":
            self.state["sum"] = [torch.full_like(p, self.initial_accumulator) for p in params]
        elif self.name == "adam":
            self.state["exp_avg"] = [torch.zeros_like(p) for p in params]
            self.state["exp_avg_sq"] = [torch.zeros_like(p) for p in params]

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A reused buffer shaped like `like` (one per shape: no allocation per step)."""
        key = (tuple(like.shape), like.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    @property
    def sparse_embeddings(self) -> bool:
        return OPTIMIZERS[self.name].capabilities.sparse_gradients

    def _dense(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], states: dict, step: int
    ) -> None:
        """One update of aligned tensors: all replicas' stacks, or one replica's rows of them."""
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        if self.name == "sgd":
            torch._foreach_add_(params, grads, alpha=-self.lr)
        elif self.name == "adagrad":
            sums = states["sum"]
            torch._foreach_addcmul_(sums, grads, grads, value=1)
            std = [torch.sqrt(t, out=self._scratch(t)) for t in sums]
            torch._foreach_add_(std, ADAGRAD_EPS)
            torch._foreach_addcdiv_(params, grads, std, value=-self.lr)
        else:  # adam
            beta1, beta2 = ADAM_BETAS
            m, v = states["exp_avg"], states["exp_avg_sq"]
            torch._foreach_lerp_(m, grads, 1 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
            bias1 = 1 - beta1**step
            bias2_sqrt = (1 - beta2**step) ** 0.5
            denom = [torch.sqrt(t, out=self._scratch(t)) for t in v]
            torch._foreach_div_(denom, bias2_sqrt)
            torch._foreach_add_(denom, ADAM_EPS)
            torch._foreach_addcdiv_(params, m, denom, value=-(self.lr / bias1))

    def _sparse(self, grad: SparseGrad) -> None:
        """Sparse adagrad / sgd on the unique rows of `grad` (== torch's sparse add_).

        On CPU the compiled row kernels (engine_kernels.c) make one pass each where the torch
        path gathers, updates and scatters back; both give the same bits."""
        values = grad.values
        if _fused.ENGINE_ACTIVE and values.is_cpu and values.dtype == torch.float32:
            self._sparse_fused(grad)
        else:
            self._sparse_torch(grad)

    def _sparse_fused(self, grad: SparseGrad) -> None:
        table = self.stack.table_flat
        rows, values = grad.rows.contiguous(), grad.values.contiguous()
        head = (rows.data_ptr(), rows.numel(), values.data_ptr(), self.stack.dim, table.shape[0])
        if self.name == "sgd":
            _fused.engine.sgd_rows(*head, table.data_ptr(), self.lr)
            return
        sums = self.state["sum"][0]
        root = self._scratch_rows(values)
        _fused.engine.adagrad_sum_rows(*head, sums.data_ptr(), root.data_ptr())
        # torch's sqrt between the passes: the same MKL call, on the same-shaped fresh-looking
        # buffer, as the torch path's, so the same bits
        torch.sqrt(root, out=root)
        _fused.engine.adagrad_apply_rows(
            *head, root.data_ptr(), table.data_ptr(), self.lr, ADAGRAD_EPS
        )

    def _scratch_rows(self, like: torch.Tensor) -> torch.Tensor:
        """A reused [U, dim] buffer (a prefix of one that fits the largest U so far)."""
        buf = self._buffers.get(("rows",))
        if buf is None or buf.shape[0] < like.shape[0]:
            buf = self._buffers[("rows",)] = like.new_empty(
                (max(like.shape[0], 1) * 2, like.shape[1])
            )
        return buf[: like.shape[0]]

    def _sparse_torch(self, grad: SparseGrad) -> None:
        """Gather, update, scatter back. Only single operations that round the same wherever an
        element sits (+, -, *, /, and torch's sqrt), since the rows are not ALIGN-blocked.
        (torch's float32 sqrt on CPU is MKL's, within 1 ulp rather than correctly rounded; the
        same call keeps this engine's bits those of torch.optim's sparse Adagrad.)"""
        table = self.stack.table_flat
        rows = table.index_select(0, grad.rows)
        if self.name == "sgd":
            rows.sub_(grad.values * self.lr)
        else:
            sums = self.state["sum"][0].view(-1, self.stack.dim)
            sum_rows = sums.index_select(0, grad.rows).add_(grad.values * grad.values)
            sums.index_copy_(0, grad.rows, sum_rows)
            std = sum_rows.sqrt_().add_(ADAGRAD_EPS)
            rows.sub_((grad.values / std).mul_(self.lr))
        table.index_copy_(0, grad.rows, rows)

    def _table_grad_dense(self, grad: SparseGrad, r: int | None) -> torch.Tensor:
        table = self.stack.table if r is None else self.stack.table[r]
        dense = torch.zeros_like(table)
        offset = 0 if r is None else r * self.stack.vocab_total
        dense.view(-1, self.stack.dim).index_add_(0, grad.rows - offset, grad.values)
        return dense

    def _update(self, r: int | None, flat_grad: torch.Tensor, table_grad: SparseGrad) -> None:
        step = self.steps[0 if r is None else r]
        pick = (lambda t: t) if r is None else (lambda t: t[r])
        if self.sparse_embeddings:
            self._sparse(table_grad)
            states = {k: [pick(v[1])] for k, v in self.state.items()}
            self._dense([pick(self.stack.flat)], [flat_grad], states, step)
        else:
            states = {k: [pick(t) for t in v] for k, v in self.state.items()}
            params = [pick(self.stack.table), pick(self.stack.flat)]
            self._dense(params, [self._table_grad_dense(table_grad, r), flat_grad], states, step)

    @torch.no_grad()
    def step_all(self, flat_grad: torch.Tensor, table_grad: SparseGrad) -> None:
        """One optimizer step of every replica (they all have the same step count here)."""
        self.steps = [s + 1 for s in self.steps]
        self._update(None, flat_grad, table_grad)

    @torch.no_grad()
    def step_replica(self, r: int, flat_grad: torch.Tensor, table_grad: SparseGrad) -> None:
        """One optimizer step of replica r: `flat_grad` [P_pad] its row, `table_grad` its rows."""
        self.steps[r] += 1
        self._update(r, flat_grad, table_grad)


# --------------------------------------------------------------------------------------------------
# Forward / backward
# --------------------------------------------------------------------------------------------------
def forward(
    stack: Stack,
    flat_rows: torch.Tensor,
    num: torch.Tensor,
    masks: list[torch.Tensor] | None = None,
    emb_leaf: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [R, b, T] of table rows `flat_rows` [R, b, F] and numeric features [*, b, K].

    With `emb_leaf` the gathered embeddings are a leaf that requires grad (returned second), so the
    embedding gradient comes out per occurrence and can be applied sparsely.
    """
    r, b, n_fields = flat_rows.shape
    emb = stack.table_flat.index_select(0, flat_rows.reshape(-1)).view(r, b, n_fields * stack.dim)
    if emb_leaf:
        emb.requires_grad_(True)
    x = torch.cat([emb, num.expand(r, -1, -1)], dim=2) if num.shape[2] else emb
    last = len(stack.weights) - 1
    for i, (w, bias) in enumerate(zip(stack.weights, stack.biases, strict=True)):
        x = torch.baddbmm(bias, x, w)
        if i < last:
            x = stack.activations[i](x)
            if masks is not None:
                # SeededDropout's expression and evaluation order, so the rounding is the same
                x = x * masks[i] / (1.0 - stack.dropout)
    return x, emb


def _flat_rows(stack: Stack, cat_rows: torch.Tensor, replica_base: torch.Tensor) -> torch.Tensor:
    """Local field ids [G or 1, b, F] → rows of the flat stacked table [R, b, F]."""
    return stack.layout.rows(cat_rows) + replica_base


class EmbeddingGradAccumulator:
    """Sums per-occurrence embedding gradients into the unique rows of the flat stacked table.

    No sort: a touched-row mask over the flat table marks the batch's rows and `nonzero` lists them
    in row order; a slot map gives each occurrence its unique row's position, and the occurrences
    are index_added (in occurrence order, as a unique/inverse index_add would) into a compact
    [U, dim] buffer. Every buffer a step touches at random is small (a bool and an int64 per
    table row, U rows of values), so the scattered accesses stay in cache. On CPU the compiled
    `coalesce` kernel (reprokit/nn/_fused/engine_kernels.c) does the same in two passes, with the
    same bits.

    The returned SparseGrad may live in buffers the next call reuses: clone it to keep it.
    """

    def __init__(self, stack: Stack) -> None:
        rows = stack.replicas * stack.vocab_total
        device = stack.table.device
        self.dim = stack.dim
        self.touched = torch.zeros(rows, dtype=torch.bool, device=device)
        # int64: index_add_ with an int32 index takes a path several times slower
        self.slot = torch.zeros(rows, dtype=torch.long, device=device)
        self.positions = torch.arange(rows, device=device)
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, flat_rows: torch.Tensor, grad: torch.Tensor) -> SparseGrad:
        if _fused.ENGINE_ACTIVE and grad.is_cpu and grad.dtype == torch.float32:
            return self._fused(flat_rows, grad)
        return self._torch(flat_rows, grad)

    def _torch(self, flat_rows: torch.Tensor, grad: torch.Tensor) -> SparseGrad:
        index = flat_rows.reshape(-1)
        self.touched.index_fill_(0, index, True)
        rows = self.touched.nonzero().squeeze(1)
        self.touched.index_fill_(0, rows, False)
        self.slot.index_copy_(0, rows, self.positions[: rows.numel()])
        inverse = self.slot.index_select(0, index)
        values = grad.new_zeros((rows.numel(), self.dim))
        values.index_add_(0, inverse, grad.reshape(index.numel(), self.dim))
        return SparseGrad(rows, values)

    def _fused(self, flat_rows: torch.Tensor, grad: torch.Tensor) -> SparseGrad:
        index = flat_rows.reshape(-1).to(torch.long).contiguous()
        grad = grad.reshape(index.numel(), self.dim).contiguous()
        n = index.numel()
        if self._out is None or self._out[0].numel() < n:
            self._out = (index.new_empty(n), grad.new_empty((n, self.dim)))
        rows, values = self._out
        unique = _fused.engine.coalesce(
            index.data_ptr(),
            n,
            grad.data_ptr(),
            self.dim,
            self.touched.numel(),
            self.touched.data_ptr(),
            self.slot.data_ptr(),
            rows.data_ptr(),
            values.data_ptr(),
        )
        return SparseGrad(rows[:unique], values[:unique])


def _is_relu(module: nn.Module) -> bool:
    return isinstance(module, (ReLU, nn.ReLU))


@dataclass
class _Batch:
    """One step's inputs: table rows [R, b_pad, F], numeric features [R or 1, b_pad, K], labels
    [R or 1, b_pad, T], dropout keep-masks per hidden layer (or None), real rows b."""

    rows: torch.Tensor
    num: torch.Tensor
    y: torch.Tensor
    masks: list[torch.Tensor] | None
    b: int


class _Stepper:
    """Forward, loss and hand-written backward of one training step for all replicas.

    The same arithmetic as autograd on `forward` + the mean BCE (torch's backward formulas, in the
    same order), without the graph: the GEMMs take the fastest layouts (the 1-wide head as a row
    times a matrix, its input gradient an exact broadcast product), layer 0's input gradient is
    computed for the embedding columns only, and parameter gradients are written straight into the
    views of one zero-padded [R, P_pad] buffer (`Stack.flat`'s layout).
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        r = stack.replicas
        self.flat_grad = torch.zeros_like(stack.flat)
        self.w_grads: list[torch.Tensor] = []
        self.b_grads: list[torch.Tensor] = []
        start = 0
        for w, bias in zip(stack.weights, stack.biases, strict=True):
            k = w.shape[1] * w.shape[2]
            self.w_grads.append(self.flat_grad[:, start : start + k].view(r, *w.shape[1:]))
            start += k
            self.b_grads.append(self.flat_grad[:, start : start + bias.shape[2]].view(r, 1, -1))
            start += bias.shape[2]
        head = stack.weights[-1]
        # the head's weight gradient [R, in, 1] has the memory layout of [R, 1, in]
        self.head_row = head.shape[2] == 1
        self.relu = [_is_relu(a) for a in stack.activations]
        self.accumulate = EmbeddingGradAccumulator(stack)
        self.workspaces: dict[int, dict[str, Any]] = {}

    def _workspace(self, b_pad: int, n_fields: int) -> dict[str, Any]:
        """Buffers of one padded batch size, reused every step (fresh large tensors cost page
        faults on every step)."""
        ws = self.workspaces.get(b_pad)
        if ws is None:
            stack, r = self.stack, self.stack.replicas
            empty = stack.flat.new_empty
            emb_width = n_fields * stack.dim
            widths = [w.shape[2] for w in stack.weights[:-1]]
            ws = self.workspaces[b_pad] = {
                "emb": empty((r * b_pad * n_fields, stack.dim)),
                "x0": empty((r, b_pad, stack.weights[0].shape[1])),
                "z": [empty((r, b_pad, h)) for h in widths],
                "drop": [empty((r, b_pad, h)) for h in widths],
                "grad": [empty((r, b_pad, h)) for h in widths],
                "gdrop": [empty((r, b_pad, h)) for h in widths],
                "gemb": empty((r, b_pad, emb_width)),
                "logits": empty((r, stack.weights[-1].shape[2], b_pad)),
            }
        return ws

    def __call__(
        self, batch: _Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, SparseGrad]:
        """(loss [R], per-task mean losses [R, T] or None, flat gradient, embedding gradient)."""
        stack, rows, masks, b = self.stack, batch.rows, batch.masks, batch.b
        r, b_pad, n_fields = rows.shape
        ws = self._workspace(b_pad, n_fields)
        emb_width = n_fields * stack.dim
        last = len(stack.weights) - 1
        p = stack.dropout
        emb = torch.index_select(stack.table_flat, 0, rows.reshape(-1), out=ws["emb"])
        emb = emb.view(r, b_pad, emb_width)
        x = emb
        if batch.num.shape[2]:
            x = torch.cat([emb, batch.num.expand(r, -1, -1)], dim=2, out=ws["x0"])
        inputs, saved = [x], []
        for i in range(last):
            z = torch.baddbmm(stack.biases[i], x, stack.weights[i], out=ws["z"][i])
            if self.relu[i]:
                x = z.relu_()
                saved.append(x)
            else:
                with torch.enable_grad():
                    leaf = z.requires_grad_(True)
                    x = stack.activations[i](leaf)
                saved.append((leaf, x))
                x = x.detach()
            if masks is not None:
                # SeededDropout's expression and evaluation order, so the rounding is the same
                x = torch.mul(x, masks[i], out=ws["drop"][i]).div_(1.0 - p)
            inputs.append(x)
        w_head, b_head = stack.weights[last], stack.biases[last]
        if self.head_row:
            logits = torch.bmm(w_head.transpose(1, 2), x.transpose(1, 2), out=ws["logits"])
            logits = logits.add_(b_head).view(r, b_pad, 1)
        else:
            logits = torch.baddbmm(b_head, x, w_head)
        n_tasks = logits.shape[2]
        y = batch.y.expand_as(logits)
        per_row = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        # d(sum of the per-replica mean losses)/d logits, as autograd forms it: (σ(x) - y) · g
        # with g = 1 / (b·T) (times the 0/1 weight of padding rows)
        scale = torch.ones((), device=rows.device) / (b * n_tasks)
        grad = torch.sigmoid(logits).sub_(y)
        if b_pad != b:
            real = (torch.arange(b_pad, device=rows.device) < b).view(1, b_pad, 1)
            per_row = per_row * real
            grad.mul_(scale.expand(1, b_pad, 1) * real)
        else:
            grad.mul_(scale)
        loss = per_row.sum(dim=(1, 2)) / (b * n_tasks)
        task = per_row.sum(dim=1).div(b) if n_tasks > 1 else None

        # head
        if self.head_row:
            torch.bmm(grad.view(r, 1, b_pad), x, out=self.w_grads[last].view(r, 1, -1))
        else:
            torch.bmm(x.transpose(1, 2), grad, out=self.w_grads[last])
        torch.sum(grad, dim=1, keepdim=True, out=self.b_grads[last])
        if last:
            out = ws["grad"][last - 1]
            if self.head_row:  # a k=1 GEMM: one exact product per element
                grad = torch.mul(grad, w_head.transpose(1, 2), out=out)
            else:
                grad = torch.bmm(grad, w_head.transpose(1, 2), out=out)
        for i in range(last - 1, -1, -1):
            if masks is not None:
                grad = torch.div(grad, 1.0 - p, out=ws["gdrop"][i]).mul_(masks[i])
            if self.relu[i]:
                grad = torch.ops.aten.threshold_backward.grad_input(
                    grad, saved[i], 0, grad_input=grad
                )
            else:
                leaf, out = saved[i]
                (grad,) = torch.autograd.grad(out, leaf, grad)
            torch.bmm(inputs[i].transpose(1, 2), grad, out=self.w_grads[i])
            torch.sum(grad, dim=1, keepdim=True, out=self.b_grads[i])
            if i:
                grad = torch.bmm(grad, stack.weights[i].transpose(1, 2), out=ws["grad"][i - 1])
            else:
                w = stack.weights[0][:, :emb_width]
                grad = torch.bmm(grad, w.transpose(1, 2), out=ws["gemb"])
        if not last:  # no hidden layer: the head is layer 0
            w = w_head[:, :emb_width]
            grad = torch.bmm(grad, w.transpose(1, 2), out=ws["gemb"])
        table_grad = self.accumulate(rows, grad)
        return loss, task, self.flat_grad, table_grad


def grad_sq_norms(flat_grad: torch.Tensor, table_grad: SparseGrad, stack: Stack) -> torch.Tensor:
    """Per-replica squared gradient norm [R] in float64 (the train log's grad_norm, squared).

    The dense part is reduced row by row; on CPU in float32 (the float64 cast of [R, P] costs a
    full copy per step, and the logged norm is telemetry: its relative error is ~1e-7), redone in
    float64 for a replica whose float32 sum of squares overflows, so that a replica is flagged
    non-finite exactly when the reference loop would flag it. The embedding rows are added one by
    one in row order whichever way they were coalesced, so a replica's logged norm does not depend
    on which other replicas share its stack.
    """
    f64 = torch.float64
    if flat_grad.is_cpu:
        total = torch.linalg.vector_norm(flat_grad, dim=1).double().square()
        overflow = ~torch.isfinite(total)
        if bool(overflow.any()):  # a host read costs nothing on CPU
            exact = torch.linalg.vector_norm(flat_grad, dim=1, dtype=f64).square()
            total = torch.where(overflow, exact, total)
    else:
        total = torch.linalg.vector_norm(flat_grad, dim=1, dtype=f64).square()
    sq = torch.linalg.vector_norm(table_grad.values, dim=1, dtype=f64).square()
    owner = torch.div(table_grad.rows, stack.vocab_total, rounding_mode="floor")
    return total.index_add_(0, owner, sq)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@dataclass
class _Log:
    """One replica's train_log columns, as the reference loop writes them (per-task losses
    `loss_<label>` for multitask models) plus its divergence detector."""

    detector: SpikeDetector
    step: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    task_loss: dict[str, list[float]] = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        columns = {
            "step": np.asarray(self.step, dtype=np.int64),
            "epoch": np.asarray(self.epoch, dtype=np.int64),
            "loss": np.asarray(self.loss, dtype=np.float64),
            "grad_norm": np.asarray(self.grad_norm, dtype=np.float64),
        }
        for name in sorted(self.task_loss):
            columns[f"loss_{name}"] = np.asarray(self.task_loss[name], dtype=np.float64)
        return pd.DataFrame(columns)


def _write_logs(
    logs: list[_Log],
    labels: list[str],
    epochs: list[int],
    losses: list[np.ndarray],
    gn2: list[np.ndarray],
    tasks: list[np.ndarray],
    last: list[int],
) -> None:
    """Each replica's log and detector from the per-iteration history: iterations 0..last[r]
    (its steps while alive, and the step it froze at), values as the per-step logging wrote them."""
    if not epochs:
        return
    loss_all = np.stack(losses)  # [iterations, R]
    gn_all = np.sqrt(np.stack(gn2))
    task_all = np.stack(tasks) if tasks else None  # [iterations, R, T]
    for r, log in enumerate(logs):
        k = last[r] + 1
        log.step = list(range(k))
        log.epoch = epochs[:k]
        log.loss = loss_all[:k, r].tolist()
        log.grad_norm = gn_all[:k, r].tolist()
        if task_all is not None:
            for t, name in enumerate(labels):
                log.task_loss[name] = task_all[:k, r, t].tolist()
        for step, (loss, norm) in enumerate(zip(log.loss, log.grad_norm, strict=True)):
            log.detector.update(step, loss, norm)


def _pad_rows(t: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Pad dimension `dim` of `t` to `size` repeating its first entry (rows that get weight 0)."""
    missing = size - t.shape[dim]
    if missing == 0:
        return t
    first = t.narrow(dim, 0, 1)
    return torch.cat([t, first.expand(*t.shape[:dim], missing, *t.shape[dim + 1 :])], dim=dim)


def predict_stack(stack: Stack, cat: torch.Tensor, num: torch.Tensor) -> np.ndarray:
    """Predictions of every replica [R, N, T] float64 (sigmoid in float64, as the reference)."""
    r = stack.replicas
    chunk = max(1024, EVAL_BATCH // max(r, 1)) // ALIGN * ALIGN
    base = torch.arange(r, device=cat.device).view(r, 1, 1) * stack.vocab_total
    out = []
    with torch.no_grad():
        for lo in range(0, cat.shape[0], chunk):
            c_cat, c_num = cat[lo : lo + chunk], num[lo : lo + chunk]
            size = c_cat.shape[0]
            c_cat, c_num = (_pad_rows(t, _round_up(size), 0) for t in (c_cat, c_num))
            logits, _ = forward(stack, _flat_rows(stack, c_cat.unsqueeze(0), base), c_num[None])
            out.append(torch.sigmoid(logits.double())[:, :size].cpu().numpy())
    if not out:
        return np.zeros((r, 0, stack.weights[-1].shape[2]))
    return np.concatenate(out, axis=1)


def train_replicas(
    encoded: Any,
    config: RunConfig,
    replicas: Sequence[int],
    seeds: Sequence[dict[str, int]],
    on_step: Callable[[int, int], None] | None = None,
) -> list[ReplicaOutput]:
    """Train `replicas` (indices into the ensemble, with their seeds) together; one output each.

    `on_step(done, total)` is called after every optimizer step of the stack (all replicas step
    together), so a caller can show progress before the first replica finishes."""
    check_supported(config, encoded)
    if len(replicas) != len(seeds) or not replicas:
        raise ReprokitError("the vectorized engine needs one seed set per replica and at least one")
    configure_determinism(config)
    saved_threads = torch.get_num_threads()
    saved_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(config.threads)
    # Deterministic mode NaN-fills every fresh tensor (a full write pass per allocation); this
    # engine never reads memory it has not written, so the fill only costs time.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        return _train(encoded, config, list(replicas), list(seeds), on_step)
    finally:
        torch.set_num_threads(saved_threads)
        torch.utils.deterministic.fill_uninitialized_memory = saved_fill


def _train(
    encoded: Any,
    config: RunConfig,
    replicas: list[int],
    seeds: list[dict[str, int]],
    on_step: Callable[[int, int], None] | None = None,
) -> list[ReplicaOutput]:
    device = torch.device(config.device)
    n_real = len(replicas)
    if n_real == 1:
        # Batched GEMMs of one matrix take another kernel (gemv for the 1-wide head) than those of
        # two or more, so a lone replica trains beside a copy of itself: it then gets the same bits
        # as in any larger stack, which keeps resumed runs consistent.
        replicas, seeds = replicas * 2, seeds * 2
    stack = build_stack(config, encoded, replicas, seeds)
    n_rep = stack.replicas
    a0 = accumulator_start(config.optim.name, config.optim.initial_accumulator_value)
    opt = StackedOptimizer(
        stack, config.optim.name, config.optim.lr, config.optim.weight_decay, a0 or 0.0
    )
    replica_base = torch.arange(n_rep, device=device).view(n_rep, 1, 1) * stack.vocab_total

    order = SharedDraws([s["data-order"] for s in seeds])
    order_rngs = [np.random.default_rng(s) for s in order.seeds]
    order_index = torch.as_tensor(order.groups, device=device)
    drop = SharedDraws([s["dropout"] for s in seeds])
    drop_gens = [torch.Generator(device=device).manual_seed(s) for s in drop.seeds]
    drop_index = torch.as_tensor(drop.groups, device=device)
    queues = (
        [StaleGradientQueue(config.async_staleness, s["async"]) for s in seeds]
        if "async" in config.vary
        else None
    )
    hidden = [w.shape[2] for w in stack.weights[:-1]]
    n_tasks = stack.weights[-1].shape[2]
    p = stack.dropout

    cat = torch.as_tensor(encoded.train_cat, device=device)
    num = torch.as_tensor(encoded.train_num, device=device)
    y = torch.as_tensor(encoded.train_y, device=device)
    n = cat.shape[0]
    bs = config.optim.batch_size
    # rows of a replica's table (the layout's: field offsets added), int32 when they fit (half the
    # bytes to copy)
    local_rows = stack.layout.rows(cat)
    if stack.vocab_total * n_rep < 2**31:
        local_rows = local_rows.to(torch.int32)
    stepper = _Stepper(stack)

    div_config = getattr(config, "divergence", None)
    logs = [_Log(SpikeDetector(div_config) if div_config else SpikeDetector()) for _ in seeds]
    labels = list(getattr(encoded, "label_names", [f"label_{t}" for t in range(n_tasks)]))
    alive = [True] * n_rep
    alive_np = np.ones(n_rep, dtype=bool)
    steps = [0] * n_rep
    # Per-iteration history [R] of every replica (losses, squared gradient norms, task losses);
    # each replica's log is its prefix up to the iteration it froze at (written after the loop).
    hist_epoch: list[int] = []
    hist_loss: list[np.ndarray] = []
    hist_gn2: list[np.ndarray] = []
    hist_task: list[np.ndarray] = []
    last_logged = [-1] * n_rep
    it = 0
    total_steps = config.optim.epochs * -(-n // bs)
    start = time.perf_counter()
    with torch.no_grad():
        for epoch in range(config.optim.epochs):
            perms = torch.as_tensor(np.stack([g.permutation(n) for g in order_rngs]), device=device)
            # the epoch's rows in each order at once: a step then reads a contiguous slice instead
            # of gathering scattered rows (cache misses on every step)
            epoch_data = [
                t.index_select(0, perms.reshape(-1)).view(len(order_rngs), n, -1)
                for t in (local_rows, num, y)
            ]
            for lo in range(0, n, bs):
                b = min(bs, n - lo)
                b_pad = _round_up(b)  # aligned per-replica blocks (see ALIGN); pad rows weigh 0
                rows_b, num_b, y_b = (
                    order.expand(_pad_rows(t[:, lo : lo + b], b_pad, 1), order_index)
                    for t in epoch_data
                )
                masks = None
                if p > 0:
                    masks = []
                    for h in hidden:  # the reference's draws: one [b, h] per dropout layer per step
                        noise = torch.stack(
                            [torch.rand((b, h), generator=g, device=device) for g in drop_gens]
                        )
                        keep = _pad_rows((noise >= p).to(noise.dtype), b_pad, 1)
                        masks.append(drop.expand(keep, drop_index))
                batch = _Batch(rows_b + replica_base, num_b, y_b, masks, b)
                loss, task, flat_grad, table_grad = stepper(batch)
                stats = torch.stack([loss.double(), grad_sq_norms(flat_grad, table_grad, stack)])
                loss_v, gn2_v = stats.cpu().numpy()  # the one host transfer of a step
                hist_epoch.append(epoch)
                hist_loss.append(loss_v)
                hist_gn2.append(gn2_v)
                if task is not None:
                    hist_task.append(task.cpu().numpy())
                for r in np.flatnonzero(alive_np):
                    last_logged[r] = it
                bad = alive_np & ~(np.isfinite(loss_v) & np.isfinite(gn2_v))
                for r in np.flatnonzero(bad):
                    alive[r] = False  # frozen: no update from this gradient on
                    alive_np[r] = False
                it += 1
                if queues is None:
                    if all(alive):
                        opt.step_all(flat_grad, table_grad)
                    else:
                        for r in range(n_rep):
                            if alive[r]:
                                mine = table_grad.for_replica(r, stack.vocab_total)
                                opt.step_replica(r, flat_grad[r], mine)
                else:
                    for r in range(n_rep):
                        if not alive[r]:
                            continue
                        mine_table = table_grad.for_replica(r, stack.vocab_total).clone()
                        mine = (flat_grad[r].clone(), mine_table)
                        queues[r].push(steps[r], mine)  # type: ignore[arg-type]
                        for flat_r, table_r in queues[r].due(steps[r]):
                            opt.step_replica(r, flat_r, table_r)
                for r in range(n_rep):
                    steps[r] += int(alive[r])
                if on_step is not None:
                    on_step(it, total_steps)
                if not any(alive):
                    break
            if not any(alive):
                break
        if queues is not None:
            for r in range(n_rep):
                if alive[r]:
                    for flat_r, table_r in queues[r].drain():
                        opt.step_replica(r, flat_r, table_r)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _write_logs(logs[:n_real], labels, hist_epoch, hist_loss, hist_gn2, hist_task, last_logged)
    share = (time.perf_counter() - start) / n_real

    ecat = torch.as_tensor(encoded.eval_cat, device=device)
    enum = torch.as_tensor(encoded.eval_num, device=device)
    predictions = predict_stack(stack, ecat, enum)
    outputs = []
    for r in range(n_real):
        detector = logs[r].detector
        detector.finish()
        diverged = not alive[r] or not bool(np.isfinite(predictions[r]).all())
        outputs.append(
            ReplicaOutput(
                predictions=np.ascontiguousarray(predictions[r]),
                log=logs[r].frame(),
                train_seconds=share,
                diverged=diverged or detector.diverged,
                threads=config.threads,
                steps=steps[r],
                detector=detector,
            )
        )
    return outputs
