"""`qr:buckets=m[,op=mult|add|concat]`: quotient-remainder compositional embeddings (Shi et al.,
KDD'20; DLRM's ``tricks/qr_embedding_bag.py``).

Field f with V indices gets two tables, ``ceil(V/m)`` rows read at ``i // m`` and ``min(m, V)``
rows read at ``i mod m`` (DLRM keeps m rows; the rows past V would never be read). The pair is
unique per index, so no two ids share an embedding (collision rate 0), with about V/m + m rows
instead of V. The two rows combine by `op`: ``mult`` (DLRM's default) elementwise product,
``add`` sum, ``concat`` [quotient row, remainder row] with widths ``dim - dim // 2`` and
``dim // 2``, so the output stays `dim` wide like every other kind (DLRM's concat doubles it).

Initialisation (DLRM's ``uniform_(w, sqrt(1/|S|))`` draws U(sqrt(1/|S|), 1), a quirk not kept):
each combined embedding starts with standard deviation 0.01 like `table`'s rows: for ``mult`` both
tables N(0, 0.1) (a product of independent factors has std 0.1 · 0.1), for ``add`` both
N(0, 0.01/√2), for ``concat`` N(0, 0.01).

Stacked form (:class:`QRLayout`): the two tables of every field are rows of one stacked table and
index i of field f reads two rows, quotient then remainder, so the ids [..., F] map to rows
[..., 2F]; the vectorized engine combines each pair by `combine` (``mult``/``add``). ``concat``
needs no combining: the pairs are 2F fields of width dim/2 (an even `dim` only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import EmbeddingTable, TableLayout

__all__ = ["QRLayout", "QREmbeddings"]

_INIT_STD = {"mult": 0.1, "add": 0.01 / math.sqrt(2.0), "concat": 0.01}


@dataclass(frozen=True)
class QRLayout(TableLayout):
    """Field f's index i reads rows ``offsets[f] + i // m`` (quotient) and ``r_offsets[f] + i % m``
    (remainder), interleaved per field: rows [..., 2F]. `combine`: how the engine joins a pair
    (None: the pair is two fields of their own, ``concat``)."""

    r_offsets: torch.Tensor | None = None  # [fields] int64
    buckets: int = 1
    combine: str | None = None

    def rows(self, cat: torch.Tensor) -> torch.Tensor:
        assert self.r_offsets is not None
        cat = cat.long()
        q = torch.div(cat, self.buckets, rounding_mode="floor") + self.offsets
        r = torch.remainder(cat, self.buckets) + self.r_offsets
        return torch.stack([q, r], dim=-1).flatten(-2)

    def to(self, device: torch.device | str) -> QRLayout:
        assert self.r_offsets is not None
        moved = super().to(device)
        return type(self)(
            moved.num_rows,
            moved.dim,
            moved.offsets,
            self.r_offsets.to(device),
            self.buckets,
            self.combine,
        )


class QREmbeddings(EmbeddingTable):
    """Per field a quotient and a remainder `nn.Embedding`, registered in that order."""

    def __init__(
        self,
        vocab_sizes: list[int],
        dim: int,
        sparse: bool = False,
        *,
        buckets: int,
        op: str = "mult",
    ) -> None:
        super().__init__()
        if op not in _INIT_STD:
            raise ReprokitError(f"qr op must be one of {', '.join(_INIT_STD)}, got {op!r}")
        if op == "concat" and dim < 2:
            raise ReprokitError("qr:op=concat needs an embedding dimension of at least 2")
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields, self.dim = len(self.vocab_sizes), int(dim)
        self.buckets, self.op = int(buckets), op
        q_dim, r_dim = (dim - dim // 2, dim // 2) if op == "concat" else (dim, dim)
        tables: list[nn.Embedding] = []
        for v in self.vocab_sizes:
            tables.append(nn.Embedding(-(-v // self.buckets), q_dim, sparse=sparse))
            tables.append(nn.Embedding(min(self.buckets, v), r_dim, sparse=sparse))
        self.tables = nn.ModuleList(tables)

    @property
    def num_rows(self) -> int:
        return sum(t.num_embeddings for t in self.tables)

    def id_rows(self) -> list[np.ndarray]:
        """Index i reads the pair (i // m, i mod m), i.e. the unique number i."""
        return [np.arange(v, dtype=np.int64) for v in self.vocab_sizes]

    def reset_parameters(self, generator: torch.Generator) -> None:
        for table in self.tables:
            nn.init.normal_(table.weight, mean=0.0, std=_INIT_STD[self.op], generator=generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.vocab_sizes:
            return ids.new_zeros((ids.shape[0], 0, self.dim), dtype=torch.float32)
        out = []
        for f in range(self.num_fields):
            i = ids[:, f]
            q = self.tables[2 * f](torch.div(i, self.buckets, rounding_mode="floor"))
            r = self.tables[2 * f + 1](torch.remainder(i, self.buckets))
            if self.op == "mult":
                out.append(q * r)
            elif self.op == "add":
                out.append(q + r)
            else:
                out.append(torch.cat([q, r], dim=1))
        return torch.stack(out, dim=1)

    def stacked_layout(self) -> QRLayout:
        if self.op == "concat" and self.dim % 2:
            raise ReprokitError("qr:op=concat has no stacked form with an odd embedding dimension")
        starts = np.concatenate([[0], np.cumsum([t.num_embeddings for t in self.tables])])
        q_off = torch.tensor(starts[0:-1:2], dtype=torch.long)
        r_off = torch.tensor(starts[1::2], dtype=torch.long)
        width = self.dim // 2 if self.op == "concat" else self.dim
        combine = None if self.op == "concat" else self.op
        return QRLayout(self.num_rows, width, q_off, r_off, self.buckets, combine)

    def stacked_weight(self) -> torch.Tensor:
        width = self.dim // 2 if self.op == "concat" else self.dim
        if not self.tables:
            return torch.zeros((0, width))
        return torch.cat([t.weight.detach() for t in self.tables], dim=0)
