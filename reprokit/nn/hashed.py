"""`hashed:buckets=N[,seed=S]`: the hashing trick, per field, on the raw value.

Field f's index i (the encoding's vocabulary index) stands for a raw value whose fixed 64-bit key
is ``vocab_sizes.keys[f][i]`` (:func:`reprokit.data.encoding.value_keys`: an integer id itself,
a string's blake2b-64). Its row in field f's table of `buckets` rows is

    row = splitmix64(key + seed * 0x9E3779B97F4A7C15) mod buckets

with SplitMix64's finaliser (Steele, Lea, Flood 2014; the constants of `java.util.SplittableRandom`)
in uint64 arithmetic, computed with numpy: the same on every process and machine, whatever
``PYTHONHASHSEED`` is. Every index maps through one lookup table built at construction, so the
reference loop and the vectorized engine read the same rows. An evaluation value unseen in training
is hashed by its raw value too: the engines hand this kind `EncodedData.eval_cat_raw`, where such
values have indices past the vocabulary whose keys `vocab_sizes.keys` holds (the registry's
`raw_eval_ids`), so it lands in the bucket its raw value hashes to, as it would in a deployed model.
Only the out-of-vocabulary index 0 itself (a missing value training never had) reads the row of
`OOV_KEY`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from reprokit.nn.embeddings import EmbeddingTable, TableLayout, init_rows

__all__ = ["HashedEmbeddings", "bucket_of", "splitmix64"]

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 of each uint64 (state += golden gamma, then the finaliser), wrapping mod 2**64."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def bucket_of(keys: np.ndarray, buckets: int, seed: int = 0) -> np.ndarray:
    """Rows (int64, in [0, buckets)) of the raw-value `keys` (uint64) under `seed`."""
    with np.errstate(over="ignore"):
        mixed = np.asarray(keys, dtype=np.uint64) + np.uint64(seed) * GOLDEN
    return (splitmix64(mixed) % np.uint64(buckets)).astype(np.int64)


@dataclass(frozen=True)
class LookupLayout(TableLayout):
    """Stacked rows through a lookup table: field f's index i reads row ``lookup[offsets[f] + i]``
    (`offsets` here index `lookup`, whose entries already carry each field's first row)."""

    lookup: torch.Tensor | None = None  # [sum of vocab sizes] int64

    def rows(self, cat: torch.Tensor) -> torch.Tensor:
        assert self.lookup is not None
        return self.lookup[cat.long() + self.offsets]

    def to(self, device: torch.device | str) -> LookupLayout:
        assert self.lookup is not None
        moved = super().to(device)
        return type(self)(moved.num_rows, moved.dim, moved.offsets, self.lookup.to(device))


class HashedEmbeddings(EmbeddingTable):
    """One `nn.Embedding(buckets, dim)` per field; index → row through `row_of` (see the module
    docstring). Without keys (`vocab_sizes` a plain list) an index is its own raw id."""

    def __init__(
        self, vocab_sizes: list[int], dim: int, sparse: bool = False, *, buckets: int, seed: int = 0
    ) -> None:
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields, self.dim = len(self.vocab_sizes), int(dim)
        self.buckets, self.seed = int(buckets), int(seed)
        keys = getattr(vocab_sizes, "keys", None)
        if keys is None:
            keys = [np.arange(v, dtype=np.uint64) for v in self.vocab_sizes]
        self.keys = [np.asarray(k, dtype=np.uint64) for k in keys]
        # index → row of its field's table, all fields in one buffer (moves with `model.to`); a
        # field's keys may run past its vocabulary (eval-only values, `EncodedData.eval_cat_raw`)
        self.starts = [
            int(x) for x in np.concatenate([[0], np.cumsum([len(k) for k in self.keys])])
        ]
        rows = [bucket_of(k, self.buckets, self.seed) for k in self.keys]
        self.register_buffer(
            "row_of",
            torch.from_numpy(np.concatenate(rows or [np.zeros(0, np.int64)])),
            persistent=False,
        )
        self.tables = nn.ModuleList(
            nn.Embedding(self.buckets, dim, sparse=sparse) for _ in self.vocab_sizes
        )

    @property
    def num_rows(self) -> int:
        return self.num_fields * self.buckets

    def id_rows(self) -> list[np.ndarray]:
        """Per field, the row of each vocabulary index (the training vocabulary's)."""
        rows = self.row_of.cpu().numpy()
        return [rows[a : a + v] for a, v in zip(self.starts[:-1], self.vocab_sizes, strict=True)]

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_rows(self.tables, generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.tables:
            return ids.new_zeros((ids.shape[0], 0, self.dim), dtype=torch.float32)
        return torch.stack(
            [table(self.row_of[ids[:, f] + self.starts[f]]) for f, table in enumerate(self.tables)],
            dim=1,
        )

    def stacked_layout(self) -> LookupLayout:
        field_of = torch.repeat_interleave(
            torch.arange(self.num_fields),
            torch.tensor([len(k) for k in self.keys], dtype=torch.long),
        )
        lookup = self.row_of.cpu() + field_of * self.buckets  # field f's table from f * buckets
        offsets = torch.tensor(self.starts[: self.num_fields], dtype=torch.long)
        return LookupLayout(self.num_rows, self.dim, offsets, lookup)

    def stacked_weight(self) -> torch.Tensor:
        if not self.tables:
            return torch.zeros((0, self.dim))
        return torch.cat([t.weight.detach() for t in self.tables], dim=0)
