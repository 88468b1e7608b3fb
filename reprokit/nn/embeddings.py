"""Embedding tables for categorical fields, injected into the models (TorchRec-style).

A model receives an :class:`EmbeddingTable` (built by :func:`create_embeddings` from the kind the
config names in ``reprokit.components.tables.EMBEDDING_TABLES``) instead of building
``nn.Embedding`` layers itself. The interface: ``forward(cat) -> [batch, fields, dim]``, ``output_dim`` (the width a
model sees after flattening), ``num_rows``, ``memory_bytes()``, ``reset_parameters(generator)`` and,
for kinds the vectorized engine can stack, ``stacked_layout()`` + ``stacked_weight()``: one
[num_rows, dim] block per replica whose rows the ids look up through the layout's ``rows``. A table
kind whose lookup is one row per (field, id), e.g. a hashed or collisionless table, plugs in by
implementing these (with a `TableLayout` subclass whose ``rows`` maps ids to rows) without
changes to the engine; one that reads two rows per id and joins them (`qr`) maps ids [..., F] to
rows [..., 2F] and names the join in its layout's ``combine`` (mult / add, which the engine's
forward and backward apply: `reprokit.training.stacked.backward.combine_rows`).

`table` (:class:`FieldEmbeddings`) is one table per field: the training split's vocabulary plus an
out-of-vocabulary row at index 0. `hashed` lives in :mod:`reprokit.nn.hashed`, `qr` in
:mod:`reprokit.nn.qr`, `mde` (mixed dimensions, projected to `dim`) in :mod:`reprokit.nn.mde`; a kind's spec (``hashed:buckets=1000,seed=0``) is parsed by
:func:`reprokit.components.tables.parse_table_spec` and its parameters passed to its builder.

Accounting (:func:`embedding_account`): `params` (embedding parameters of one replica), `bytes`,
and the collision rate of Monolith's §1.7 table, per field and overall,
``1 − (distinct rows the distinct training ids use) / (distinct training ids)``: 0 when every id
has a row of its own (`table`, `qr`), ``1 − 1/n`` for n ids hashed into one bucket. A row is
"what an id reads" (`EmbeddingTable.id_rows`): for `qr` the pair of rows, unique per id.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from reprokit.components.tables import parse_table_spec
from reprokit.data.mapped_array import release

__all__ = [
    "EmbeddingTable",
    "FieldEmbeddings",
    "TableLayout",
    "collision_rates",
    "create_embeddings",
    "embedding_account",
]


ROW_STD = 0.01  # the starting spread of every embedding row (and of a projected one)


def init_rows(tables: Any, generator: torch.Generator, std: float = ROW_STD) -> None:
    """Draw every row table from N(0, std) in field order, from the replica's init generator."""
    for table in tables:
        nn.init.normal_(table.weight, mean=0.0, std=std, generator=generator)


@dataclass(frozen=True)
class TableLayout:
    """How the vectorized engine stacks a table: `num_rows` × `dim` weights per replica; the ids
    `cat` [..., fields] of a batch read rows `rows(cat)` (field f's ids from row `offsets[f]`)."""

    num_rows: int
    dim: int
    offsets: torch.Tensor  # [fields] int64

    def rows(self, cat: torch.Tensor) -> torch.Tensor:
        return cat + self.offsets

    def to(self, device: torch.device | str) -> TableLayout:
        return replace(self, offsets=self.offsets.to(device))  # keeps a subclass's type


class EmbeddingTable(nn.Module):
    """What a model's categorical input is: ids [batch, fields] → embeddings [batch, fields, dim].

    Subclasses draw their initial values only from the generator `reset_parameters` gets (the
    `init` source) and register their parameters in a fixed order (bitflip and the vectorized
    engine address them by position)."""

    num_fields: int
    dim: int

    @property
    def output_dim(self) -> int:
        """Width of the flattened embeddings [batch, fields * dim] the model concatenates."""
        return self.num_fields * self.dim

    @property
    def num_rows(self) -> int:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Bytes of the table's parameters (one replica)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def num_params(self) -> int:
        """Embedding parameters of one replica."""
        return sum(p.numel() for p in self.parameters())

    def row_parameter_names(self) -> set[str]:
        """Names (within the table) of the parameters holding one row per id or bucket: what a
        serving copy syncs row by row. Kinds with other parameters (projections) override it."""
        return {name for name, p in self.named_parameters() if p.dim() == 2}

    def id_rows(self) -> list[np.ndarray]:
        """Per field, what each vocabulary index reads (equal entries: ids that share a row)."""
        return [np.arange(v, dtype=np.int64) for v in getattr(self, "vocab_sizes", [])]

    def reset_parameters(self, generator: torch.Generator) -> None:
        raise NotImplementedError

    def stacked_layout(self) -> TableLayout:
        """The row layout of the vectorized engine's stacked form (kinds it can stack)."""
        raise NotImplementedError(f"{type(self).__name__} has no stacked form")

    def stacked_weight(self) -> torch.Tensor:
        """This table's weights [num_rows, dim] in `stacked_layout` order (detached)."""
        raise NotImplementedError(f"{type(self).__name__} has no stacked form")


class FieldEmbeddings(EmbeddingTable):
    """`table`: one `nn.Embedding` per field (vocabulary plus the OOV row 0)."""

    def __init__(self, vocab_sizes: list[int], dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, dim, sparse=sparse) for v in vocab_sizes)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields = len(self.vocab_sizes)
        self.dim = int(dim)

    @property
    def num_rows(self) -> int:
        return sum(self.vocab_sizes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_rows(self.tables, generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.tables:
            return ids.new_zeros((ids.shape[0], 0, self.dim), dtype=torch.float32)
        return torch.stack([table(ids[:, f]) for f, table in enumerate(self.tables)], dim=1)

    def stacked_layout(self) -> TableLayout:
        starts = [0]
        for v in self.vocab_sizes[:-1]:
            starts.append(starts[-1] + v)
        offsets = torch.tensor(starts[: self.num_fields], dtype=torch.long)
        return TableLayout(self.num_rows, self.dim, offsets)

    def stacked_weight(self) -> torch.Tensor:
        if not self.tables:
            return torch.zeros((0, self.dim))
        return torch.cat([t.weight.detach() for t in self.tables], dim=0)


def create_embeddings(kind: str, vocab_sizes: list[int], dim: int, sparse: bool) -> EmbeddingTable:
    """The table the spec `kind` names (``table``, ``hashed:buckets=N``, ...), its parameters
    passed to the builder in `reprokit.components.tables.EMBEDDING_TABLES`; `table.spec` keeps
    the canonical spec."""
    spec = parse_table_spec(kind)
    table = spec.info.load()(vocab_sizes, dim, sparse=sparse, **spec.params)
    table.spec = str(spec)
    return table


def training_ids(train_cat: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """Per field, which indices 0..sizes[f]-1 occur in `train_cat` [n, fields] (bool masks), in
    one pass over blocks of rows, so memory-mapped data is read once and never left resident."""
    seen = [np.zeros(size, dtype=bool) for size in sizes]
    for lo in range(0, len(train_cat), 1 << 16):
        block = np.asarray(train_cat[lo : lo + (1 << 16)])
        for f, mask in enumerate(seen):
            mask[block[:, f]] = True
        release(train_cat)
    return seen


def collision_rates(
    table: EmbeddingTable, train_cat: np.ndarray | None = None
) -> tuple[list[float], float]:
    """(per field, overall) ``1 − distinct rows / distinct ids`` over the distinct training ids:
    the vocabulary indices 1.. (index 0 is the out-of-vocabulary row, no id of its own), or,
    given `train_cat` [n, fields], the indices it holds other than 0."""
    id_rows = table.id_rows()
    seen = None if train_cat is None else training_ids(train_cat, [len(r) for r in id_rows])
    per_field, ids_total, rows_total = [], 0, 0
    for f, rows in enumerate(id_rows):
        ids = np.arange(1, len(rows)) if seen is None else np.flatnonzero(seen[f][1:]) + 1
        n_ids, n_rows = len(ids), len(np.unique(rows[ids]))
        per_field.append(1.0 - n_rows / n_ids if n_ids else 0.0)
        ids_total, rows_total = ids_total + n_ids, rows_total + n_rows
    overall = 1.0 - rows_total / ids_total if ids_total else 0.0
    return per_field, overall


def embedding_account(
    table: EmbeddingTable,
    field_names: list[str] | None = None,
    train_cat: np.ndarray | None = None,
) -> dict[str, Any]:
    """The summary's `embedding` block: `kind`, `params`, `bytes`, `collision_rate` (overall) and
    `field_collision_rate` {field: rate} (see :func:`collision_rates`)."""
    per_field, overall = collision_rates(table, train_cat)
    names = field_names or [f"field_{f}" for f in range(len(per_field))]
    return {
        "kind": getattr(table, "spec", type(table).__name__),
        "params": table.num_params(),
        "bytes": table.memory_bytes(),
        "collision_rate": overall,
        "field_collision_rate": dict(zip(names, per_field, strict=True)),
    }
