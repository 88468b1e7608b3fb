"""One training step of all replicas: the forward pass, the loss and the hand-written backward.

`Stepper` computes what autograd would on `forward` + the mean BCE (torch's backward formulas, in
the same order) without the graph, into reused buffers, the dense gradient straight into a flat
[R, P_pad] buffer (`Stack.flat`'s layout). A mixed-dimension table (`mde`, `model.field_dims`)
projects field f's gathered rows by its P_f (`project_rows`); its backward (`project_backward`)
gives the rows g·P_f (zero in the padded columns) and the projections gᵀ·rows. Embedding
gradients are coalesced without a sort
(`EmbeddingGradAccumulator`; on CPU by a compiled kernel with the same bits, see
reprokit/nn/_fused/engine_kernels.c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reprokit.nn import _fused
from reprokit.nn.activations import ReLU
from reprokit.training.stacked.layout import SparseGrad, Stack


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
    r, b, n_rows = flat_rows.shape
    gathered = stack.table_flat.index_select(0, flat_rows.reshape(-1))
    emb, _ = combine_rows(stack, gathered, r, b, n_rows)
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


def combine_rows(
    stack: Stack,
    gathered: torch.Tensor,
    r: int,
    b: int,
    n_rows: int,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The embeddings [r, b, fields * dim] of the gathered rows [r * b * n_rows, dim], and the two
    halves a pair-combining layout (`combine`, e.g. `qr`'s mult/add: two rows per field) joined,
    which the backward needs (None for one row per field). A mixed-dimension layout's rows are
    projected (`project_rows`, into `out` when given)."""
    if hasattr(stack.layout, "widths"):
        return project_rows(stack, gathered, r, b, n_rows, out), None
    op = getattr(stack.layout, "combine", None)
    if op is None:
        return gathered.view(r, b, n_rows * stack.dim), None
    pairs = gathered.view(r, b, n_rows // 2, 2, stack.dim)
    first, second = pairs[:, :, :, 0], pairs[:, :, :, 1]
    joined = first * second if op == "mult" else first + second
    return joined.reshape(r, b, (n_rows // 2) * stack.dim), (first, second)


def embedding_width(stack: Stack) -> int:
    """What one field's embedding is wide in the model's input: the stacked row width `dim`, or a
    mixed-dimension layout's `out_dim` (the rows are d_max wide, the projections map to it)."""
    return int(getattr(stack.layout, "out_dim", 0) or stack.dim)


def project_rows(
    stack: Stack,
    gathered: torch.Tensor,
    r: int,
    b: int,
    n_rows: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mixed dimensions: field f's gathered rows [r, b, d_f] (the first d_f of d_max columns) times
    its projection P_f [r, out_dim, d_f] transposed (a copy where it has none) → [r, b, fields *
    out_dim]. One batched GEMM per projected field, with the operands laid out as the reference's
    ``F.linear`` has them (so the same bits; each replica's product is its own, whatever the
    stack)."""
    layout, width = stack.layout, embedding_width(stack)
    rows = gathered.view(r, b, n_rows, stack.dim)
    emb = out if out is not None else gathered.new_empty((r, b, n_rows * width))
    per_field = emb.view(r, b, n_rows, width)
    k = 0
    for f, (w, projected) in enumerate(zip(layout.widths, layout.projected, strict=True)):
        x = rows[:, :, f, :w]
        if projected:
            per_field[:, :, f] = torch.bmm(x, stack.projections[k].transpose(1, 2))
            k += 1
        else:
            per_field[:, :, f] = x
    return emb


def project_backward(
    stack: Stack,
    gathered: torch.Tensor,
    grad: torch.Tensor,
    proj_grads: list[torch.Tensor],
    row_grad: torch.Tensor,
    b: int,
) -> torch.Tensor:
    """The backward of `project_rows` (autograd's formulas for ``F.linear``, in its operand
    layouts): the projections' gradients gᵀ·rows [r, out_dim, d_f] into `proj_grads` (views of the
    flat gradient), the rows' g·P_f into the first d_f columns of field f in `row_grad` [r, b_pad,
    fields * d_max], whose other columns are never written (they stay the 0 they were made with:
    the padding gets no gradient); returns `row_grad`.

    A 1-wide field's row gradient is what torch computes as a matrix-vector product (gemv), whose
    rounding depends on the row count: it is taken per replica over the `b` real rows, the padding
    rows set to 0."""
    layout, width = stack.layout, embedding_width(stack)
    r, b_pad = grad.shape[:2]
    n_fields = len(layout.widths)
    rows = gathered.view(r, b_pad, n_fields, stack.dim)
    g_field = grad.view(r, b_pad, n_fields, width)
    out = row_grad.view(r, b_pad, n_fields, stack.dim)
    k = 0
    for f, (w, projected) in enumerate(zip(layout.widths, layout.projected, strict=True)):
        g = g_field[:, :, f]
        if not projected:
            out[:, :, f, :w] = g
            continue
        proj = stack.projections[k]
        torch.bmm(g.transpose(1, 2), rows[:, :, f, :w], out=proj_grads[k])
        if w == 1:
            for i in range(r):
                out[i, :b, f, 0] = torch.mv(g[i, :b], proj[i, :, 0])
            out[:, b:, f, 0] = 0.0
        else:
            out[:, :, f, :w] = torch.bmm(g, proj)
        k += 1
    return row_grad


def split_grad(
    stack: Stack, grad: torch.Tensor, halves: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Per-row gradients [r, b, n_rows * dim] from the embeddings' gradient [r, b, fields * dim]:
    autograd's formulas for `combine_rows` (mult: grad · other, add: grad)."""
    if halves is None:
        return grad
    r, b = grad.shape[:2]
    g = grad.view(r, b, -1, stack.dim)
    if stack.layout.combine == "mult":
        first, second = halves
        parts = [g * second, g * first]
    else:
        parts = [g, g]
    return torch.stack(parts, dim=3).view(r, b, -1)


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
class Batch:
    """One step's inputs: table rows [R, b_pad, F], numeric features [R or 1, b_pad, K], labels
    [R or 1, b_pad, T], dropout keep-masks per hidden layer (or None), real rows b."""

    rows: torch.Tensor
    num: torch.Tensor
    y: torch.Tensor
    masks: list[torch.Tensor] | None
    b: int


class Stepper:
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
        self.mixed = hasattr(stack.layout, "widths")  # a mixed-dimension table (mde)
        self.p_grads: list[torch.Tensor] = []  # its projections' gradients, after the layers'
        for proj in stack.projections:
            k = proj.shape[1] * proj.shape[2]
            self.p_grads.append(self.flat_grad[:, start : start + k].view(r, *proj.shape[1:]))
            start += k
        head = stack.weights[-1]
        # the head's weight gradient [R, in, 1] has the memory layout of [R, 1, in]
        self.head_row = head.shape[2] == 1
        self.relu = [_is_relu(a) for a in stack.activations]
        self.accumulate = EmbeddingGradAccumulator(stack)
        self.workspaces: dict[int, dict[str, Any]] = {}

    def _workspace(self, b_pad: int, n_rows: int) -> dict[str, Any]:
        """Buffers of one padded batch size, reused every step (fresh large tensors cost page
        faults on every step). `n_rows`: table rows per example (fields, or 2 per `qr` field)."""
        ws = self.workspaces.get(b_pad)
        if ws is None:
            stack, r = self.stack, self.stack.replicas
            empty = stack.flat.new_empty
            n_fields = n_rows // 2 if getattr(stack.layout, "combine", None) else n_rows
            emb_width = n_fields * embedding_width(stack)
            widths = [w.shape[2] for w in stack.weights[:-1]]
            ws = self.workspaces[b_pad] = {
                # mixed dimensions: the projected embeddings, and the rows' gradient (its padded
                # columns stay 0: `project_backward` writes only each field's first d_f)
                "pemb": empty((r, b_pad, emb_width)) if self.mixed else None,
                "grows": stack.flat.new_zeros((r, b_pad, n_rows * stack.dim))
                if self.mixed
                else None,
                "emb": empty((r * b_pad * n_rows, stack.dim)),
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
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, SparseGrad]:
        """(loss [R], per-task mean losses [R, T] or None, flat gradient, embedding gradient)."""
        stack, rows, masks, b = self.stack, batch.rows, batch.masks, batch.b
        r, b_pad, n_rows = rows.shape
        ws = self._workspace(b_pad, n_rows)
        last = len(stack.weights) - 1
        p = stack.dropout
        gathered = torch.index_select(stack.table_flat, 0, rows.reshape(-1), out=ws["emb"])
        emb, halves = combine_rows(stack, gathered, r, b_pad, n_rows, out=ws["pemb"])
        emb_width = emb.shape[2]
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
        if self.mixed:
            row_grad = project_backward(stack, gathered, grad, self.p_grads, ws["grows"], b)
        else:
            row_grad = split_grad(stack, grad, halves)
        table_grad = self.accumulate(rows, row_grad)
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
