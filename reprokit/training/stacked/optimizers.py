"""Adagrad, SGD and Adam for stacked parameters (torch.optim's formulas, default hyper-parameters).

One rule per optimizer (`RULES`, the names the optimizer registry marks `stacked`): its state, its
update of aligned dense tensors and, for optimizers that update embeddings sparsely (the
registry's `sparse_gradients`), its update of the rows a batch used, as torch ops and through the
compiled row kernels (reprokit/nn/_fused/engine_kernels.c), which give the same bits.
`StackedOptimizer` applies a rule to a `Stack`: all replicas at once, or one replica.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reprokit.components.optimizers import OPTIMIZERS, accumulator_start
from reprokit.nn import _fused
from reprokit.training.stacked.layout import SparseGrad, Stack

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


@dataclass
class StackedOptimizer:
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

    def _scratch(self, like: torch.Tensor) -> torch.Tensor:
        """A reused buffer shaped like `like` (one per shape: no allocation per step)."""
        key = (tuple(like.shape), like.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty_like(like, memory_format=torch.contiguous_format)
        return buf

    def _scratch_rows(self, n: int, dim: int) -> torch.Tensor:
        """A reused [n, dim] buffer (a prefix of one that fits the largest n so far)."""
        buf = self._buffers.get(("rows",))
        if buf is None or buf.shape[0] < n:
            buf = self._buffers[("rows",)] = self.stack.table.new_empty((max(n, 1) * 2, dim))
        return buf[:n]

    @property
    def sparse_embeddings(self) -> bool:
        return OPTIMIZERS[self.name].capabilities.sparse_gradients

    def _dense(
        self, params: list[torch.Tensor], grads: list[torch.Tensor], states: dict, step: int
    ) -> None:
        """One update of aligned tensors: all replicas' stacks, or one replica's rows of them."""
        if self.weight_decay:
            grads = torch._foreach_add(grads, params, alpha=self.weight_decay)
        self.rule.dense(self, params, grads, states, step)

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
