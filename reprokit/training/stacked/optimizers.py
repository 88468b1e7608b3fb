"""Adagrad, SGD and Adam for stacked parameters (torch.optim's formulas, default hyper-parameters).

One rule per optimizer (`RULES`, the names the optimizer registry marks `stacked`): its state, its
update of aligned dense tensors and, for optimizers that update embeddings sparsely (the
registry's `sparse_gradients`), its update of the rows a batch used, as torch ops and through the
compiled row kernels (reprokit/nn/_fused/engine_kernels.c), which give the same bits.
`StackedOptimizer` applies a rule to a `Stack`: all replicas at once, or one replica;
`DenseStackedOptimizer` applies it to a list of stacked dense tensors [R, ...] (the torch.func
engine's parameters, `reprokit.training.func_stack`), with torch.optim's dense update.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reprokit.components.optimizers import OPTIMIZERS, accumulator_start
from reprokit.nn import _fused
from reprokit.training.stacked.layout import SparseGrad, Stack, round_up

ADAGRAD_EPS = 1e-10
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class StackedRule:
    """One optimizer's formulas for stacked tensors. `dense` updates aligned tensors (all
    replicas' stacks, or one replica's rows of them); optimizers that update embeddings sparsely
    also implement `sparse_torch` (on the gathered rows a batch used) and `sparse_fused` (the
    compiled row kernels on the flat table, same bits)."""

    name: str = ""

    def init_state(self, params: list[torch.Tensor], a0: float | None) -> dict:
        return {}

    def dense(self, opt: StackedOptimizer, params: list, grads: list, states: dict, step: int):
        raise NotImplementedError

    def sparse_torch(self, opt: StackedOptimizer, rows: torch.Tensor, grad: SparseGrad) -> None:
        raise NotImplementedError(f"{self.name} has no sparse update")

    def sparse_fused(self, opt: StackedOptimizer, head: tuple, table: torch.Tensor) -> None:
        raise NotImplementedError(f"{self.name} has no sparse update")


class _SGD(StackedRule):
    name = "sgd"

    def dense(self, opt, params, grads, states, step):
        torch._foreach_add_(params, grads, alpha=-opt.lr)

    def sparse_torch(self, opt, rows, grad):
        rows.sub_(grad.values * opt.lr)

    def sparse_fused(self, opt, head, table):
        _fused.engine.sgd_rows(*head, table.data_ptr(), opt.lr)


class _Adagrad(StackedRule):
    name = "adagrad"

    def init_state(self, params, a0):
        return {"sum": [torch.full_like(p, a0) for p in params]}

    def dense(self, opt, params, grads, states, step):
        sums = states["sum"]
        torch._foreach_addcmul_(sums, grads, grads, value=1)
        std = [torch.sqrt(t, out=opt._scratch(t)) for t in sums]
        torch._foreach_add_(std, ADAGRAD_EPS)
        torch._foreach_addcdiv_(params, grads, std, value=-opt.lr)

    def sparse_torch(self, opt, rows, grad):
        sums = opt.state["sum"][0].view(-1, opt.stack.dim)
        sum_rows = sums.index_select(0, grad.rows).add_(grad.values * grad.values)
        sums.index_copy_(0, grad.rows, sum_rows)
        std = sum_rows.sqrt_().add_(ADAGRAD_EPS)
        rows.sub_((grad.values / std).mul_(opt.lr))

    def sparse_fused(self, opt, head, table):
        sums = opt.state["sum"][0]
        root = opt._scratch_rows(head[1], opt.stack.dim)
        _fused.engine.adagrad_sum_rows(*head, sums.data_ptr(), root.data_ptr())
        # torch's sqrt between the passes: the same MKL call, on the same-shaped fresh-looking
        # buffer, as the torch path's, so the same bits
        torch.sqrt(root, out=root)
        _fused.engine.adagrad_apply_rows(
            *head, root.data_ptr(), table.data_ptr(), opt.lr, ADAGRAD_EPS
        )


class _Adam(StackedRule):
    name = "adam"

    def init_state(self, params, a0):
        return {
            "exp_avg": [torch.zeros_like(p) for p in params],
            "exp_avg_sq": [torch.zeros_like(p) for p in params],
        }

    def dense(self, opt, params, grads, states, step):
        beta1, beta2 = ADAM_BETAS
        m, v = states["exp_avg"], states["exp_avg_sq"]
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - beta2)
        bias1 = 1 - beta1**step
        bias2_sqrt = (1 - beta2**step) ** 0.5
        denom = [torch.sqrt(t, out=opt._scratch(t)) for t in v]
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, ADAM_EPS)
        torch._foreach_addcdiv_(params, m, denom, value=-(opt.lr / bias1))


#: The stacked implementation of every optimizer the registry marks `stacked`.
RULES: dict[str, StackedRule] = {rule.name: rule for rule in (_Adagrad(), _SGD(), _Adam())}


class _DenseUpdates:
    """What both stacked optimizers share: reused scratch buffers and the dense update (weight
    decay as torch.optim adds it, then the rule). Needs `rule`, `lr`, `weight_decay`, `_buffers`."""

    rule: StackedRule
    lr: float
    weight_decay: float
    _buffers: dict

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A reused buffer shaped like `like` (one per shape: no allocation per step)."""
        key = (tuple(like.shape), like.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def _dense(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], states: dict, step: int
    ) -> None:
        """One update of aligned tensors: all replicas' stacks, or one replica's rows of them."""
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        self.rule.dense(self, params, grads, states, step)


@dataclass
class StackedOptimizer(_DenseUpdates):
    """An optimizer of `RULES` (torch.optim's formulas and defaults) over a `Stack`.

    Dense parameters are updated through the aligned [R, P_pad] buffer (`Stack.flat`) with the
    gradient from `Stack.flat_grad`: a handful of kernels for all replicas and layers. Sparse
    optimizers update the embedding table only in the rows a batch used (state included); Adam, like
    torch.optim.Adam on the reference model's dense embedding gradient, updates the whole table.
    """

    stack: Stack
    name: str
    lr: float
    weight_decay: float
    # the configured A0 (optim.initial_accumulator_value); None: the optimizer registry's default
    initial_accumulator: float | None = None
    state: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list)
    _buffers: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.rule = RULES[self.name]
        params = [self.stack.table, self.stack.flat]  # state lists follow this order
        self.steps = [0] * self.stack.replicas
        a0 = accumulator_start(self.name, self.initial_accumulator)
        self.state = self.rule.init_state(params, a0)

    def _scratch_rows(self, n: int, dim: int) -> torch.Tensor:
        """A reused [n, dim] buffer (a prefix of one that fits the largest n so far)."""
        buf = self._buffers.get(("rows",))
        if buf is None or buf.shape[0] < n:
            buf = self._buffers[("rows",)] = self.stack.table.new_empty((max(n, 1) * 2, dim))
        return buf[:n]

    @property
    def sparse_embeddings(self) -> bool:
        return OPTIMIZERS[self.name].capabilities.sparse_gradients

    def _sparse(self, grad: SparseGrad) -> None:
        """The sparse update on the unique rows of `grad` (== torch's sparse add_).

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
        self.rule.sparse_fused(self, head, table)

    def _sparse_torch(self, grad: SparseGrad) -> None:
        """Gather, update, scatter back. Only single operations that round the same wherever an
        element sits (+, -, *, /, and torch's sqrt), since the rows are not ALIGN-blocked.
        (torch's float32 sqrt on CPU is MKL's, within 1 ulp rather than correctly rounded; the
        same call keeps this engine's bits those of torch.optim's sparse Adagrad.)"""
        table = self.stack.table_flat
        rows = table.index_select(0, grad.rows)
        self.rule.sparse_torch(self, rows, grad)
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


class DenseStackedOptimizer(_DenseUpdates):
    """An optimizer of `RULES` over stacked dense tensors [R, ...], one per parameter of a
    module: replica r's update of tensor k is torch.optim's (default hyper-parameters, weight
    decay added to the gradient) on its slice, the elementwise formulas the reference loop's torch
    optimizer applies to that parameter.

    The optimizer owns the parameters: each tensor lives in a zero-padded 1-d buffer of a multiple
    of ALIGN elements (`views[k]`, [R, ...] and contiguous, is the part that trains), so the scalar
    tail of every elementwise kernel falls into the padding and a replica's numbers never depend
    on its slot (see `reprokit.training.stacked.layout.ALIGN`). `step_all` updates every replica at
    once; a replica `freeze`s at a non-finite step (its parameters and state are put back after
    every later update); `step_replica` updates one replica alone (a stale gradient).

    Every tensor is updated, a zero gradient included: the Adagrad, SGD and Adam rules leave a
    parameter exactly where it is for a zero gradient from their zero-gradient start, which is
    what torch.optim's skipping of a gradient-less parameter does (with weight decay it is not:
    `reprokit.training.stacked.capability` refuses that case)."""

    def __init__(
        self,
        tensors: list[torch.Tensor],
        name: str,
        lr: float,
        weight_decay: float = 0.0,
        initial_accumulator: float | None = None,
    ) -> None:
        self.rule = RULES[name]
        self.name, self.lr, self.weight_decay = name, lr, weight_decay
        self.replicas = tensors[0].shape[0]
        self.sizes = [t[0].numel() for t in tensors]  # elements per replica
        self.buffers: list[torch.Tensor] = []
        self.views: list[torch.Tensor] = []
        for t in tensors:
            used = t.numel()
            buf = t.new_zeros(round_up(used))
            buf[:used] = t.detach().reshape(-1)
            self.buffers.append(buf)
            self.views.append(buf[:used].view(t.shape))
        self.grads = [torch.zeros_like(b) for b in self.buffers]
        self.steps = [0] * self.replicas
        self.state = self.rule.init_state(
            self.buffers, accumulator_start(name, initial_accumulator)
        )
        self.frozen: dict[int, list[torch.Tensor]] = {}
        self._buffers: dict = {}

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A reused buffer for state tensor `like`: one per tensor (several parameters share a
        shape here, and a rule holds the scratch results of all of them at once)."""
        key = (like.data_ptr(), tuple(like.shape), like.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def _slices(self, r: int) -> list[torch.Tensor]:
        """Replica r's parameters, then its optimizer state, as views of the buffers."""
        out = [b[r * n : (r + 1) * n] for b, n in zip(self.buffers, self.sizes, strict=True)]
        for tensors in self.state.values():
            out += [t[r * n : (r + 1) * n] for t, n in zip(tensors, self.sizes, strict=True)]
        return out

    def freeze(self, r: int) -> None:
        """Replica r takes no update from now on (its loss or gradient went non-finite)."""
        if r not in self.frozen:
            self.frozen[r] = [t.clone() for t in self._slices(r)]

    @torch.no_grad()
    def step_all(self, grads: list[torch.Tensor]) -> None:
        """One step of every replica that is not frozen (they all have the same step count):
        `grads[k]` is tensor k's gradient [R, ...]."""
        for buf, g in zip(self.grads, grads, strict=True):
            buf[: g.numel()].copy_(g.reshape(-1))
        alive = [r for r in range(self.replicas) if r not in self.frozen]
        if not alive:
            return
        for r in alive:
            self.steps[r] += 1
        self._dense(self.buffers, self.grads, self.state, self.steps[alive[0]])
        for r, saved in self.frozen.items():
            for t, value in zip(self._slices(r), saved, strict=True):
                t.copy_(value)

    @torch.no_grad()
    def step_replica(self, r: int, grads: list[torch.Tensor]) -> None:
        """One step of replica r alone: `grads[k]` its gradient of tensor k (no replica axis)."""
        self.steps[r] += 1
        k = len(self.buffers)
        mine = self._slices(r)
        states = {key: mine[k * (i + 1) : k * (i + 2)] for i, key in enumerate(self.state)}
        flat = [g.reshape(-1) for g in grads]
        self._dense(mine[:k], flat, states, self.steps[r])
