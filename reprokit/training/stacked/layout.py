"""The vectorized engine's stacked parameters: how R replicas' parameters are laid out, and the
padding rule that keeps a replica's bits independent of its slot in the stack.

Every table row of a replica is a row of one stacked table [R, V_pad, dim], laid out as the table
kind says (`EmbeddingTable.stacked_layout`: for `table`, field f from row `offsets[f]`), so one
gather serves all fields of all replicas; the dense layers are views [R, in, out] / [R, 1, out] of
one flat [R, P_pad] buffer. Replica r's values are copied from its own reference model, built and
initialised from its seeds, so the stack starts exactly where the reference loop starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from reprokit.config import RunConfig
from reprokit.nn.embeddings import TableLayout
from reprokit.nn.models import CTRModel, SeededDropout
from reprokit.training.loop import build_model, dynamic_table, flip_one_weight

#: Every per-replica block an elementwise kernel sees is a multiple of this many elements. ATen's
#: CPU kernels run a vector body and a scalar tail (2 vectors of up to 16 floats / 8 doubles) over a
#: flattened tensor, and transcendental functions (exp, log1p, erf) or fused expressions (addcmul,
#: lerp) may round differently in the two. Aligned blocks put every replica's elements in the same
#: lanes of the same path, so a replica's numbers never depend on its position in the stack (that is
#: what keeps the control arm and the bitflip probe exact). Unaligned tensors (the rows of a sparse
#: update) only meet correctly rounded single operations (+, -, *, /, sqrt).
ALIGN = 64


def round_up(n: int, k: int = ALIGN) -> int:
    return -(-n // k) * k


@dataclass
class Stack:
    """The parameters of R replicas.

    `table` [R, V_pad, dim]: a replica's embedding rows as the table kind lays them out (`layout`,
    from `EmbeddingTable.stacked_layout`; for `table`, field f from row `offsets[f]`), padded to
    V_pad rows (a multiple of ALIGN). `flat` [R, P_pad]: all dense parameters of a replica in one
    zero-padded row; `weights` [R, in, out] (nn.Linear's weight transposed) and `biases` [R, 1, out]
    are views of it that require grad. A mixed-dimension table (`mde`, `model.field_dims`) adds
    its projections P_f [R, out_dim, d_f] (`projections`, after the layers in `flat`), and its
    rows are `dim` = d_max wide (field f's zero past d_f: `reprokit.nn.mde.MixedLayout`).
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
    #: a dynamic table (collisionless): each replica's ids → rows, created and evicted as it
    #: trains; None for tables whose rows are fixed (`layout.rows`)
    dynamic: list[DynamicRows] | None = None
    #: a mixed-dimension table's projections P_f [R, out_dim, d_f], views of `flat` (projected
    #: fields in field order); empty for every other table
    projections: list[torch.Tensor] = field(default_factory=list)

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
        return out + self.projections

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


@dataclass
class DynamicRows:
    """One replica's dynamic table: its admission state and the `init` seed of its new rows."""

    state: Any  # reprokit.nn.collisionless.AdmissionState
    init_seed: int


def model_tensors(model: CTRModel) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the table's stacked rows [V, dim], dense tensors W0ᵀ, b0, W1ᵀ, b1, .. in Stack's order,
    then a mixed-dimension table's projections P_f)."""
    table = model.embeddings.stacked_weight()
    dense: list[torch.Tensor] = []
    for m in [*(m for m in model.mlp if isinstance(m, nn.Linear)), model.head]:
        dense += [m.weight.detach().t(), m.bias.detach().unsqueeze(0)]
    projections = getattr(model.embeddings, "stacked_projections", None)
    return table, dense + (projections() if projections is not None else [])


def build_stack(
    config: RunConfig, encoded: Any, replicas: Sequence[int], seeds: Sequence[dict[str, int]]
) -> Stack:
    """Build each replica's reference model from its own seeds; stack the parameters of all."""
    n_tasks = encoded.train_y.shape[1]
    n_num = encoded.train_num.shape[1]
    per_replica: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    first: CTRModel | None = None
    cache: dict[tuple[int, int | None], tuple[torch.Tensor, list[torch.Tensor]]] = {}
    models: dict[tuple[int, int | None], CTRModel] = {}
    flip = "bitflip" in config.vary
    dynamic: list[DynamicRows] | None = [] if dynamic_table(config) else None
    for replica, s in zip(replicas, seeds, strict=True):
        key = (s["init"], s["bitflip"] if flip and replica > 0 else None)
        if key not in cache:
            model = build_model(config, encoded.vocab_sizes, n_num, n_tasks)
            model.reset_parameters(torch.Generator().manual_seed(s["init"]))
            if key[1] is not None:
                flip_one_weight(model, key[1])
            cache[key] = model_tensors(model)
            models[key] = model
            first = first or model
        per_replica.append(cache[key])
        if dynamic is not None:  # every replica admits its own ids
            table = models[key].embeddings
            dynamic.append(DynamicRows(table.new_state(s["admission"]), table.init_seed))
    assert first is not None
    device = torch.device(config.device)
    layout = first.embeddings.stacked_layout()
    n_rep, dim = len(per_replica), layout.dim
    v_pad = round_up(max(layout.num_rows, 1))
    table = torch.zeros((n_rep, v_pad, dim))
    shapes = [t.shape for t in per_replica[0][1]]
    numels = [int(np.prod(sh)) for sh in shapes]
    flat = torch.zeros((n_rep, round_up(sum(numels))))
    for r, (t, dense) in enumerate(per_replica):
        table[r, : t.shape[0]] = t
        flat[r, : sum(numels)] = torch.cat([d.reshape(-1) for d in dense])
    table, flat = table.to(device), flat.to(device)
    views, start = [], 0
    n_layers = 2 * (sum(isinstance(m, nn.Linear) for m in first.mlp) + 1)  # weights and biases
    for i, (sh, k) in enumerate(zip(shapes, numels, strict=True)):
        view = flat[:, start : start + k].view(n_rep, *sh)
        views.append(view.requires_grad_(True) if i < n_layers else view)
        start += k
    return Stack(
        table=table,
        layout=layout.to(device),
        flat=flat,
        weights=views[0:n_layers:2],
        biases=views[1:n_layers:2],
        projections=views[n_layers:],
        activations=[m for m in first.mlp if not isinstance(m, (nn.Linear, SeededDropout))],
        dropout=float(config.model.dropout),
        vocab_total=v_pad,
        dim=dim,
        dynamic=dynamic,
    )


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


def pad_rows(t: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Pad dimension `dim` of `t` to `size` repeating its first entry (rows that get weight 0)."""
    missing = size - t.shape[dim]
    if missing == 0:
        return t
    first = t.narrow(dim, 0, 1)
    return torch.cat([t, first.expand(*t.shape[:dim], missing, *t.shape[dim + 1 :])], dim=dim)


def flat_rows(stack: Stack, cat_rows: torch.Tensor, replica_base: torch.Tensor) -> torch.Tensor:
    """Local field ids [G or 1, b, F] → rows of the flat stacked table [R, b, F]. A dynamic
    table's ids [R or 1, b, F] read the rows each replica's table holds now."""
    if stack.dynamic is None:
        return stack.layout.rows(cat_rows) + replica_base
    ids = cat_rows.cpu().numpy()
    local = np.stack([d.state.rows(ids[min(r, len(ids) - 1)]) for r, d in enumerate(stack.dynamic)])
    return torch.from_numpy(local).to(cat_rows.device) + replica_base
