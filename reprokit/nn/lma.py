"""`lma:memory=M[,chunk=C,bits=B,signatures=32,seed=0]`: LSH-based memory allocation (LMA; Desai,
Pan, Sun, Chou, Shrivastava, arXiv 2103.06124), a shared memory allocated by co-occurrence.

All fields share one memory of M floats, laid out as M/C slots of C contiguous floats (`chunk`).
A value's embedding (`dim` wide) is the concatenation of dim/C chunks; chunk j of value v (field f,
vocabulary index i) is read from slot

    loc_j(v) = H(LOC, seed, j, code_j(v)) mod (M / C)

where code_j(v) is the B-bit LSH code of v's MinHash signature, so values whose signatures agree
read the same memory.

Signature. v's set is the values of the other fields it co-occurs with in the training split (the
rows of `vocab_sizes.train_cat`, the training split's indices), as tokens (field, index):

    C(v) = {(g, train_cat[n, g]) : train_cat[n, f] = i, g != f},

an index 0 (out of vocabulary) of another field being the token (g, 0) like any other. With
S = `signatures` functions,

    sig_s(v) = min over (g, j) in C(v) of h_s(g, j),    h_s(g, j) = H(MINHASH, seed, s, g, j),

so two values' signatures agree at s with probability about Jaccard(C(v), C(w)) (they agree
exactly when the minimum over C(v) ∪ C(w) lies in the intersection). This is what makes values of one field
share memory: two users who rated the same items (in different rows, with the same other fields)
have the same set and read the same slots, two items rated by the same users likewise. Values of
different fields meet too: an item and a genre list only it has differ only in each other's
token, so most of their minima agree. This is issue 13's definition ("the set of values it
co-occurs with"); the reference pre-training (`lsh_pp_pretraining.py`, reference §2.3) hashes
the set of training examples a value occurs in instead, under which two values of one field,
never in one example, meet only by chance. At least 2 fields are needed (a lone field co-occurs
with nothing): one is refused with one sentence. The pass is vectorized per block of rows: per
hash function the minimum over each row's other fields (prefix and suffix minima over the
fields), then per value the minimum over its rows (a sort and ``np.minimum.reduceat``),
O(rows · fields · S) time, memory bounded by the block.

LSH. Per chunk j a sparse signed random projection P_j of B rows and S columns, entries
H(PROJECTION, seed, j, b, s) mod 6 → 0: +1, 1: −1, else 0 (probabilities 1/6, 1/6, 2/3, as in the
reference code). A minimum is biased small (every value's would be near 0), so each component
enters rehashed and centred as a 40-bit integer, x_s = (mix(sig_s) >> 24) − 2^39: uniform, and
equal exactly where the minima are, so the cosine of two values' x is about the share of agreeing
minima. The projection is exact int64 arithmetic, the same on every machine (no BLAS order).
Bit b of code_j is [ (P_j x)_b > 0 ] (a tie is 0); code_j = sum of bit_b · 2^b.

Hash. mix is SplitMix64's (:func:`reprokit.nn.hashed.splitmix64`) and
H(t, a, b, ...) = mix(... mix(mix(t) XOR a) XOR b ...) in uint64 arithmetic, computed with numpy:
nothing depends on ``PYTHONHASHSEED`` or on numpy's random streams.

Out of vocabulary. Index 0 (the encoding's out-of-vocabulary index) and any index no training
row holds (an empty C) read loc_j = H(OOV, seed, j) mod (M / C): one fixed set of slots for
every such value of every field, from a code no real value has (like any two values, it may still
meet a real value in a slot).

Defaults (documented in the spec's canonical form by omission): ``chunk`` gcd(dim, 4), i.e. 4 when
it divides dim; ``bits`` ceil(log2(M / C)) + 4, 16 codes per slot, so that the code → slot hash
reaches nearly every slot (one code per slot would reach only 1 − 1/e of them) and unrelated values
share a slot about as often as under hashing, values with similar sets more (identical sets
always); ``signatures`` 32; ``seed`` 0.
`reprokit.components.tables.lma_geometry` refuses a chunk that does not divide dim or a memory
that is not whole chunks, at config time (both engines) and here.

Simplifications against the reference: chunk starts are multiples of C (the reference hashes to any
offset of the 1-D array), so the memory is a [M / C, C] table of rows; one repetition (no
``num_rep`` averaging). Rows are drawn N(0, 0.01) like `table`'s, so an embedding starts with the
same spread.

Stacked form (:class:`LMALayout`): ids [..., F] read rows [..., F · dim/C] of width C, concatenated
in order (no `combine`), the way qr:op=concat's halves are fields of their own.

Accounting. `params` M, `bytes` 4M (the lookup of slots is a buffer, not counted). `id_rows` gives
each index a number naming its slot tuple (loc_0, ..., loc_{k−1}) (numbered over all fields, equal
exactly for equal tuples), so `collision_rate` counts two training ids as sharing when they read
exactly the same slots in the same order, i.e. have identical embeddings; ids that share only some
chunks do not count, and, as `collision_rates` counts per field, neither does sharing between
fields. Two values of one field with identical co-occurrence sets always count: the rate includes
the sharing by similarity that LMA intends, not only chance.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reprokit.components.tables import lma_geometry
from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import EmbeddingTable, TableLayout, init_rows
from reprokit.nn.hashed import splitmix64

__all__ = [
    "LMAEmbeddings",
    "LMALayout",
    "cached_signatures",
    "lma_hash",
    "lsh_codes",
    "minhash_signatures",
    "slots_of",
]

#: Domain tags of H, one per use, so the hashes of one seed are unrelated.
TAG_MINHASH, TAG_PROJECTION, TAG_LOC, TAG_OOV = 1, 2, 3, 4
_SIGN = np.array([1, -1, 0, 0, 0, 0], dtype=np.int64)  # H mod 6 → projection entry
_BLOCK = 1 << 21  # hash values [rows, F, S] per block of training rows (3 arrays, ~48 MiB)


def lma_hash(tag: int, *parts: int | np.ndarray) -> np.ndarray:
    """H(tag, a, b, ...) = mix(... mix(mix(tag) ^ a) ^ b ...), broadcast over array parts."""
    z = splitmix64(np.array([tag], dtype=np.uint64))[0]
    for part in parts:
        z = splitmix64(np.bitwise_xor(z, np.asarray(part, dtype=np.uint64)))
    return np.asarray(z, dtype=np.uint64)


#: The last signature set, keyed by the training array's identity (checked through a weak
#: reference) and the parameters: an engine builds a replica's table once per init seed, and the
#: MinHash pass over the training rows is the costly part (about 14 s per million rows of 8 fields
#: at 32 functions). One entry: a set is V × S × 8 bytes.
_SIGNATURES: dict[tuple[Any, ...], tuple[Any, list[np.ndarray], list[np.ndarray]]] = {}
_CACHED = 1


def cached_signatures(
    train_cat: np.ndarray, vocab_sizes: list[int], signatures: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """:func:`minhash_signatures`, computed once per training array and parameters (read-only)."""
    key = (id(train_cat), np.shape(train_cat), tuple(vocab_sizes), signatures, seed)
    hit = _SIGNATURES.get(key)
    if hit is not None and hit[0]() is train_cat:
        return hit[1], hit[2]
    sigs, seen = minhash_signatures(train_cat, vocab_sizes, signatures, seed)
    try:
        ref = weakref.ref(train_cat)
    except TypeError:  # not weak-referenceable (a list): no caching
        return sigs, seen
    while len(_SIGNATURES) >= _CACHED:
        _SIGNATURES.pop(next(iter(_SIGNATURES)))
    _SIGNATURES[key] = (ref, sigs, seen)
    return sigs, seen


def minhash_signatures(
    train_cat: np.ndarray, vocab_sizes: list[int], signatures: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per field, the MinHash signatures [V_f, S] uint64 of each index's set of co-occurring
    other-field values, and which indices occur at all [V_f] bool (an absent index's signature row
    is meaningless).

    sig_s(f, i) = min over the rows n holding i in field f, and the fields g != f, of
    h_s(g, train_cat[n, g]): per block of rows the minimum over the other fields comes from prefix
    and suffix minima over the fields, and the minimum over a value's rows from a sort and
    ``np.minimum.reduceat``, so the pass is O(rows · fields · S) in time and O(block) in memory.
    """
    cat = np.asarray(train_cat)
    if cat.ndim != 2 or cat.shape[1] != len(vocab_sizes):
        raise ReprokitError(
            f"lma needs the training indices as [rows, {len(vocab_sizes)} fields], "
            f"got shape {cat.shape}"
        )
    if cat.shape[1] < 2:
        raise ReprokitError(
            f"lma needs at least 2 categorical fields, got {cat.shape[1]}: a value's signature is "
            "the set of other fields' values it occurs with"
        )
    if cat.size and (cat.min() < 0 or (cat.max(axis=0) >= np.asarray(vocab_sizes)).any()):
        raise ReprokitError("lma: the training indices lie outside the vocabulary sizes")
    n_fields = cat.shape[1]
    tokens = token_hashes(vocab_sizes, signatures, seed)  # per field [V_g, S]
    sigs = [np.full((v, signatures), np.iinfo(np.uint64).max, np.uint64) for v in vocab_sizes]
    seen = [np.zeros(v, dtype=bool) for v in vocab_sizes]
    block = max(1, _BLOCK // (signatures * n_fields))
    for lo in range(0, cat.shape[0], block):
        rows = cat[lo : lo + block]
        h = np.stack([tokens[g][rows[:, g]] for g in range(n_fields)], axis=1)  # [rows, F, S]
        before = np.minimum.accumulate(h, axis=1)  # before[:, g]: min over fields 0..g
        after = np.minimum.accumulate(h[:, ::-1], axis=1)[:, ::-1]  # min over fields g..F-1
        del h
        for f in range(n_fields):
            if f == 0:
                others = after[:, 1]
            elif f == n_fields - 1:
                others = before[:, f - 1]
            else:
                others = np.minimum(before[:, f - 1], after[:, f + 1])  # [rows, S]
            ids = rows[:, f]
            order = np.argsort(ids, kind="stable")
            ordered = ids[order]
            starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
            mins = np.minimum.reduceat(others[order], starts, axis=0)
            present = ordered[starts]
            sigs[f][present] = np.minimum(sigs[f][present], mins)
            seen[f][present] = True
    return sigs, seen


def token_hashes(vocab_sizes: list[int], signatures: int, seed: int) -> list[np.ndarray]:
    """h_s(g, j) = H(MINHASH, seed, s, g, j) for every token (field g, index j): per field
    [V_g, S] uint64, the S hash functions of the MinHash."""
    s = np.arange(signatures, dtype=np.uint64)[None, :]
    return [
        lma_hash(TAG_MINHASH, seed, s, g, np.arange(v, dtype=np.uint64)[:, None])
        for g, v in enumerate(vocab_sizes)
    ]


def projection(chunks: int, bits: int, signatures: int, seed: int) -> np.ndarray:
    """The sparse signed projections P [chunks, bits, S] int64 with entries in {+1, −1, 0}."""
    j = np.arange(chunks, dtype=np.uint64)[:, None, None]
    b = np.arange(bits, dtype=np.uint64)[None, :, None]
    s = np.arange(signatures, dtype=np.uint64)[None, None, :]
    return _SIGN[(lma_hash(TAG_PROJECTION, seed, j, b, s) % np.uint64(6)).astype(np.int64)]


def lsh_codes(sigs: np.ndarray, chunks: int, bits: int, seed: int) -> np.ndarray:
    """The B-bit codes [V, chunks] uint64 of signatures [V, S] (see the module docstring)."""
    # a minimum is biased small; rehashed it is uniform, equal exactly where the minima are
    x = (splitmix64(sigs) >> np.uint64(24)).astype(np.int64) - (1 << 39)  # centred 40 bits
    p = projection(chunks, bits, sigs.shape[1], seed)
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))  # [B]
    codes = np.zeros((sigs.shape[0], chunks), dtype=np.uint64)
    for j in range(chunks):
        positive = (x @ p[j].T) > 0  # [V, B], exact int64
        codes[:, j] = np.bitwise_or.reduce(np.where(positive, weights, np.uint64(0)), axis=1)
    return codes


def slots_of(codes: np.ndarray, slots: int, seed: int) -> np.ndarray:
    """The slot of chunk j of each code [V, chunks] → int64 [V, chunks] in [0, slots)."""
    j = np.arange(codes.shape[1], dtype=np.uint64)[None, :]
    return (lma_hash(TAG_LOC, seed, j, codes) % np.uint64(slots)).astype(np.int64)


def oov_slots(chunks: int, slots: int, seed: int) -> np.ndarray:
    """The fixed slots [chunks] of out-of-vocabulary and never-seen values."""
    j = np.arange(chunks, dtype=np.uint64)
    return (lma_hash(TAG_OOV, seed, j) % np.uint64(slots)).astype(np.int64)


@dataclass(frozen=True)
class LMALayout(TableLayout):
    """Field f's index i reads the `chunks` rows ``lookup[offsets[f] + i]`` of the [slots, chunk]
    memory, in chunk order: ids [..., F] → rows [..., F · chunks], concatenated (no combine)."""

    lookup: torch.Tensor | None = None  # [sum of vocab sizes, chunks] int64

    def rows(self, cat: torch.Tensor) -> torch.Tensor:
        assert self.lookup is not None
        return self.lookup[cat.long() + self.offsets].flatten(-2)

    def to(self, device: torch.device | str) -> LMALayout:
        assert self.lookup is not None
        moved = super().to(device)
        return type(self)(moved.num_rows, moved.dim, moved.offsets, self.lookup.to(device))


class LMAEmbeddings(EmbeddingTable):
    """One `nn.Embedding(memory / chunk, chunk)` shared by all fields (the memory); index i of
    field f reads the rows ``slot_of[starts[f] + i]`` (see the module docstring)."""

    def __init__(
        self,
        vocab_sizes: list[int],
        dim: int,
        sparse: bool = False,
        *,
        memory: int,
        chunk: int | None = None,
        bits: int | None = None,
        signatures: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields, self.dim = len(self.vocab_sizes), int(dim)
        self.chunk, self.slots, self.bits = lma_geometry(self.dim, int(memory), chunk, bits)
        self.chunks = self.dim // self.chunk
        self.signatures, self.seed = int(signatures), int(seed)
        train_cat = getattr(vocab_sizes, "train_cat", None)
        if train_cat is None:
            raise ReprokitError(
                "the lma embedding needs the training split's indices to build its co-occurrence "
                "signatures: pass the vocab_sizes of an encoded dataset (VocabSizes with "
                "train_cat), not a plain list"
            )
        sigs, seen = cached_signatures(train_cat, self.vocab_sizes, self.signatures, self.seed)
        oov = oov_slots(self.chunks, self.slots, self.seed)
        per_field = []
        for sig, present in zip(sigs, seen, strict=True):
            slot = slots_of(
                lsh_codes(sig, self.chunks, self.bits, self.seed), self.slots, self.seed
            )
            present = present.copy()
            present[:1] = False  # index 0 is the out-of-vocabulary value, whatever it holds
            slot[~present] = oov
            per_field.append(slot)
        self.starts = [int(x) for x in np.concatenate([[0], np.cumsum(self.vocab_sizes)])]
        lookup = np.concatenate(per_field or [np.zeros((0, self.chunks), np.int64)])
        self.register_buffer("slot_of", torch.from_numpy(lookup), persistent=False)
        starts = torch.tensor(self.starts[: self.num_fields], dtype=torch.long)
        self.register_buffer("field_start", starts, persistent=False)
        self.memory = nn.Embedding(self.slots, self.chunk, sparse=sparse)

    @property
    def num_rows(self) -> int:
        return self.slots

    def id_rows(self) -> list[np.ndarray]:
        """Per field, a number per index naming the slots it reads (equal: the same slots)."""
        lookup = self.slot_of.cpu().numpy()
        if not len(lookup):
            return [np.zeros(0, dtype=np.int64) for _ in self.vocab_sizes]
        _, inverse = np.unique(lookup, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        return [inverse[a:b] for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)]

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_rows([self.memory], generator)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.num_fields:
            return ids.new_zeros((ids.shape[0], 0, self.dim), dtype=torch.float32)
        rows = self.slot_of[ids.long() + self.field_start]  # [batch, fields, chunks]
        return self.memory(rows).reshape(ids.shape[0], self.num_fields, self.dim)

    def stacked_layout(self) -> LMALayout:
        offsets = torch.tensor(self.starts[: self.num_fields], dtype=torch.long)
        return LMALayout(self.slots, self.chunk, offsets, self.slot_of.cpu())

    def stacked_weight(self) -> torch.Tensor:
        return self.memory.weight.detach()
