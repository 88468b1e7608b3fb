"""Embedding table kinds (`model.embedding`) and what engines need to know about them."""

from __future__ import annotations

from dataclasses import dataclass

from reprokit.components import ComponentInfo, Registry


@dataclass(frozen=True)
class TableCapabilities:
    """`stacked`: the vectorized engine can stack it (`EmbeddingTable.stacked_layout`).
    `sparse_gradients`: it can produce sparse gradients (the rows a batch used) for optimizers
    that update sparsely."""

    stacked: bool
    sparse_gradients: bool


EMBEDDING_TABLES: Registry[TableCapabilities] = Registry(
    "embedding table",
    (
        ComponentInfo(
            "table",
            "table",
            "one table per field: the training split's vocabulary plus an out-of-vocabulary row 0",
            TableCapabilities(stacked=True, sparse_gradients=True),
            "reprokit.nn.embeddings:FieldEmbeddings",
        ),
    ),
)
