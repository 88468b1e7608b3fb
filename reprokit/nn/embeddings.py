"""Embedding layers for categorical fields. Pluggable: the model asks `create_embeddings` by name.

`table` is one embedding table per field (vocabulary from the training split plus an out-of-vocabulary
row at index 0). Hashed, collisionless and mixed-dimension tables plug in here later.
"""

from __future__ import annotations

import torch
from torch import nn

from reprokit.nn.components import EMBEDDING_TABLES


class FieldEmbeddings(nn.Module):
    """One table per field; output is the concatenation of the field embeddings [batch, F * dim]."""

    def __init__(self, vocab_sizes: list[int], dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, dim, sparse=sparse) for v in vocab_sizes)
        self.output_dim = dim * len(vocab_sizes)

    def reset_parameters(self, generator: torch.Generator) -> None:
        for table in self.tables:
            nn.init.normal_(table.weight, mean=0.0, std=0.01, generator=generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.tables:
            return ids.new_zeros((ids.shape[0], 0), dtype=torch.float32)
        return torch.cat([table(ids[:, f]) for f, table in enumerate(self.tables)], dim=1)


def create_embeddings(kind: str, vocab_sizes: list[int], dim: int, sparse: bool) -> nn.Module:
    """The table `kind` names in `reprokit.nn.components.EMBEDDING_TABLES`."""
    return EMBEDDING_TABLES.get(kind).load()(vocab_sizes, dim, sparse=sparse)
