"""Embedding tables for categorical fields, injected into the models (TorchRec-style).

A model receives an :class:`EmbeddingTable` (built by :func:`create_embeddings` from the kind the
config names in ``reprokit.components.tables.EMBEDDING_TABLES``) instead of building
``nn.Embedding`` layers itself. The interface: ``forward(cat) -> [batch, fields, dim]``, ``output_dim`` (the width a
model sees after flattening), ``num_rows``, ``memory_bytes()``, ``reset_parameters(generator)`` and,
for kinds the vectorized engine can stack, ``stacked_layout()`` + ``stacked_weight()``: one
[num_rows, dim] block per replica whose rows the ids look up through the layout's ``rows``. A table
kind whose lookup is one row per (field, id), e.g. a hashed or collisionless table, plugs in by
implementing these (with a `TableLayout` subclass whose ``rows`` maps ids to rows) without
changes to the engine; one that combines several rows per id (QR) needs a new stacked form.

`table` (:class:`FieldEmbeddings`) is one table per field: the training split's vocabulary plus an
out-of-vocabulary row at index 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from reprokit.components.tables import EMBEDDING_TABLES

__all__ = ["EmbeddingTable", "FieldEmbeddings", "TableLayout", "create_embeddings"]


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
        for table in self.tables:
            nn.init.normal_(table.weight, mean=0.0, std=0.01, generator=generator)

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
    """The table `kind` names in `reprokit.components.tables.EMBEDDING_TABLES`."""
    return EMBEDDING_TABLES.get(kind).load()(vocab_sizes, dim, sparse=sparse)
