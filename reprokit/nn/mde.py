"""`mde:alpha=A[,base_dim=D]`: mixed-dimension embeddings (Ginart, Naumov, Mudigere, Yang, Zou,
arXiv 1909.11810; DLRM's ``tricks/md_embedding_bag.py``, ``md_solver`` with ``d0``).

The α-power rule, one width per field (the unit of allocation is a whole field, as in DLRM):

    d_f = λ · (n_f / k_f)^(−α),   λ = d0 · n_0^α

n_f is field f's row count (the training split's vocabulary plus the out-of-vocabulary row, the
`vocab_sizes` a `table` gets) and k_f the average queries of the field per example, 1 here (one id
per field), so n_f / k_f = 1 / p_f with p_f the share of field f's queries one of its rows gets on
average: rarely queried rows get fewer dimensions. n_0 is the smallest n_f and d0 = `base_dim`
(default: the embedding dimension), so the smallest field gets `base_dim`. As in ``md_solver``:
every other d_f is rounded to the nearest integer (half to even) and clamped to at least 1, then
every d_f (the smallest field's too) is rounded to a power of two, ``2^round(log2 d_f)``.
α = 0 gives every field `base_dim`; α must lie in [0, 1].

Field f's `nn.Embedding(n_f, d_f)` is followed by a bias-free ``Linear(d_f → dim)`` (DLRM's
``PrEmbeddingBag``; like it, none where d_f = dim), so a model sees [batch, fields, dim] like with
every other kind. Each id has a row of its own (collision rate 0); `num_params` counts the
projections. Initialisation: rows N(0, 0.01) like `table`'s, projections N(0, 1/d_f), so a
projected embedding starts with standard deviation 0.01 too; with α = 0 and `base_dim` = dim the
table is `table`, draw for draw.

Stacked form (the vectorized engine): every field's rows in one table of the largest width d_max,
field f's zero-padded past d_f (:class:`MixedLayout`), and the projections P_f [dim, d_f] as
dense parameters of the stack (`stacked_projections`, in the Linear's own [dim, d_f] layout); the
engine gathers rows, multiplies field f's first d_f columns by its projection, and back-propagates
rows g·P_f (the padded columns get no gradient and stay exactly 0) and projections gᵀ·rows
(reprokit.training.stacked.backward).

Explicit widths (`model.field_dims`, {field name: width}) override the α-rule for the fields they
name, and turn a `table` into this table too (every field not named keeps the embedding dimension,
so with none named it is `table` draw for draw): :func:`build_embeddings` builds what a config's
`embedding` and `field_dims` name; the field names come from the data (`VocabSizes.names`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from reprokit.components.tables import parse_table_spec
from reprokit.config import check_field_dims
from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import EmbeddingTable, TableLayout, create_embeddings, init_rows

__all__ = ["MixedDimEmbeddings", "MixedLayout", "build_embeddings", "mde_widths"]


@dataclass(frozen=True)
class MixedLayout(TableLayout):
    """The stacked layout of mixed widths: rows `dim` (= d_max) wide, field f's valid in its first
    `widths[f]` columns; `projected[f]` whether field f has a projection to `out_dim` (the
    embedding dimension a model sees per field), in field order as `stacked_projections`."""

    widths: tuple[int, ...] = ()
    out_dim: int = 0
    projected: tuple[bool, ...] = ()


def mde_widths(vocab_sizes: list[int], alpha: float, base_dim: int) -> list[int]:
    """Field widths by the α-power rule (see the module docstring), in field order."""
    if not vocab_sizes:
        return []
    n = np.asarray(vocab_sizes, dtype=np.float64)
    smallest = int(np.argmin(n))  # the first of equal minima, like a stable sort
    d = np.round(base_dim * n[smallest] ** alpha * n**-alpha)
    d = np.maximum(d, 1.0)
    d[smallest] = base_dim
    return [int(w) for w in 2.0 ** np.round(np.log2(d))]


class MixedDimEmbeddings(EmbeddingTable):
    """Per field an `nn.Embedding(n_f, d_f)`, then (where d_f ≠ dim) a bias-free projection to
    `dim`; all tables are registered before all projections."""

    def __init__(
        self,
        vocab_sizes: list[int],
        dim: int,
        sparse: bool = False,
        *,
        alpha: float,
        base_dim: int | None = None,
        field_dims: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields, self.dim = len(self.vocab_sizes), int(dim)
        self.alpha = float(alpha)
        self.base_dim = int(base_dim) if base_dim is not None else self.dim
        self.widths = mde_widths(self.vocab_sizes, self.alpha, self.base_dim)
        if field_dims:
            names = getattr(vocab_sizes, "names", None)
            if names is None:
                raise ReprokitError("model.field_dims needs the data's field names")
            check_field_dims(dict(field_dims), "mde", list(names))
            for name, width in field_dims.items():
                self.widths[list(names).index(name)] = int(width)
        self.tables = nn.ModuleList(
            nn.Embedding(v, w, sparse=sparse)
            for v, w in zip(self.vocab_sizes, self.widths, strict=True)
        )
        self.projections = nn.ModuleList(
            nn.Identity() if w == self.dim else nn.Linear(w, self.dim, bias=False)
            for w in self.widths
        )

    def row_parameter_names(self) -> set[str]:
        """The per-field row tables; the projections are dense."""
        return {f"tables.{name}" for name, _ in self.tables.named_parameters()}

    @property
    def num_rows(self) -> int:
        return sum(self.vocab_sizes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_rows(self.tables, generator)
        for width, proj in zip(self.widths, self.projections, strict=True):
            if isinstance(proj, nn.Linear):
                nn.init.normal_(proj.weight, mean=0.0, std=width**-0.5, generator=generator)

    def stacked_layout(self) -> MixedLayout:
        starts = np.concatenate([[0], np.cumsum(self.vocab_sizes)[:-1]]).astype(np.int64)
        return MixedLayout(
            self.num_rows,
            max(self.widths, default=self.dim),
            torch.as_tensor(starts[: self.num_fields], dtype=torch.long),
            widths=tuple(self.widths),
            out_dim=self.dim,
            projected=tuple(isinstance(p, nn.Linear) for p in self.projections),
        )

    def stacked_weight(self) -> torch.Tensor:
        """Every field's rows [n_f, d_f], zero-padded to d_max columns, stacked in field order."""
        width = max(self.widths, default=self.dim)
        out = torch.zeros((self.num_rows, width))
        start = 0
        for table, w in zip(self.tables, self.widths, strict=True):
            out[start : start + table.num_embeddings, :w] = table.weight.detach()
            start += table.num_embeddings
        return out

    def stacked_projections(self) -> list[torch.Tensor]:
        """P_f [dim, d_f] (the Linear's weight, its own layout: the engine's products then take
        the reference's GEMM paths, bit for bit) of each projected field, in field order."""
        return [p.weight.detach() for p in self.projections if isinstance(p, nn.Linear)]

    def field_widths(self, names: list[str] | None = None) -> dict[str, int]:
        """{field: width} for the summary's embedding block (`field_dims`)."""
        names = names or [f"field_{f}" for f in range(self.num_fields)]
        return dict(zip(names, self.widths, strict=True))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.tables:
            return ids.new_zeros((ids.shape[0], 0, self.dim), dtype=torch.float32)
        return torch.stack(
            [
                proj(table(ids[:, f]))
                for f, (table, proj) in enumerate(zip(self.tables, self.projections, strict=True))
            ],
            dim=1,
        )


def build_embeddings(
    kind: str,
    vocab_sizes: list[int],
    dim: int,
    sparse: bool,
    field_dims: Mapping[str, int] | None = None,
) -> EmbeddingTable:
    """The table a config's `embedding` spec and `field_dims` name: without widths, the kind's own
    (`create_embeddings`); with them, a mixed-dimension table (`mde`'s α-rule, or every field
    `dim` for `table`) whose named fields get the given widths. `table.spec` is the kind's spec."""
    if not field_dims:
        return create_embeddings(kind, vocab_sizes, dim, sparse)
    spec = parse_table_spec(kind)
    check_field_dims(dict(field_dims), str(spec), getattr(vocab_sizes, "names", None))
    params = dict(spec.params) if spec.name == "mde" else {"alpha": 0.0}
    table = MixedDimEmbeddings(vocab_sizes, dim, sparse, **params, field_dims=field_dims)
    table.spec = str(spec)
    return table
