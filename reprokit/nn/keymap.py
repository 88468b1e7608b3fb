"""A hash map from (field, raw 64-bit id) to an entry, vectorized over a batch of ids: the store
behind Monolith's collisionless table (:mod:`reprokit.nn.collisionless`).

Open addressing with linear probing in numpy arrays of a power-of-two number of slots, kept at
most half full (doubled and rehashed beyond that). A slot holds the pair (`field` int32, −1 when
empty; `key` uint64) and whatever per-entry columns the owner keeps in arrays indexed by slot
(:attr:`KeyedSlots.column`, moved along on a rehash, which bumps `generation`). Slots are found by
``splitmix64(key + field · golden) mod slots`` (the hash of :mod:`reprokit.nn.hashed`), so the
layout, and therefore every result, is the same on every process and machine.

Every operation takes a whole batch: the probe loop advances all unresolved ids of the batch one
slot at a time with array operations, so the work per id is a few vector instructions rather than a
Python dict's bytecode per id. Insertion claims empty slots by scattered writes and re-reads which
id won each slot; the losers probe on (equal ids of one call probe alike, write alike and share the
slot they win, so a batch needs no deduplication first). Entries are never
deleted: an evicted id keeps its slot (and its occurrence
count), only its row goes.
"""

from __future__ import annotations

import numpy as np

from reprokit.nn.hashed import GOLDEN, splitmix64

__all__ = ["KeyedSlots"]

EMPTY = -1


class KeyedSlots:
    """Slots for distinct (field, key) pairs; `columns` {name: (dtype, fill)} are per-slot arrays
    the owner reads and writes by slot index (`self.column[name]`)."""

    def __init__(self, columns: dict[str, tuple[type, int | float]], capacity: int = 1024) -> None:
        size = 1 << max(4, int(capacity - 1).bit_length())
        self._specs = dict(columns)
        self.fields = np.full(size, EMPTY, dtype=np.int32)
        self.keys = np.zeros(size, dtype=np.uint64)
        self.column = {n: np.full(size, fill, dtype=dt) for n, (dt, fill) in self._specs.items()}
        self.size = 0  # occupied slots
        self.generation = 0  # rehashes so far: slot numbers kept elsewhere are stale after one
        self._scratch = np.zeros(size, dtype=np.int64)  # per slot, for counting distinct slots

    @property
    def slots(self) -> int:
        return len(self.fields)

    def _home(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            mixed = keys + fields.astype(np.uint64) * GOLDEN
        return (splitmix64(mixed) & np.uint64(self.slots - 1)).astype(np.int64)

    def find(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Slot of each (field, key) pair, −1 where absent; nothing is inserted."""
        fields = np.asarray(fields, dtype=np.int32)
        keys = np.asarray(keys, dtype=np.uint64)
        slot = self._home(fields, keys)
        # the first probe over the whole batch without index indirection: at load ≤ 1/2 it
        # settles most ids; the loop below walks on with the few that met another id
        there = self.fields[slot]
        hit = (self.keys[slot] == keys) & (there == fields)
        out = np.where(hit, slot, -1)
        todo = np.flatnonzero(~hit & (there != EMPTY))
        mask = self.slots - 1
        while todo.size:
            s = (slot[todo] + 1) & mask
            slot[todo] = s
            there = self.fields[s]
            hit = (self.keys[s] == keys[todo]) & (there == fields[todo])
            out[todo[hit]] = s[hit]
            todo = todo[~hit & (there != EMPTY)]
        return out

    def find_or_insert(self, fields: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slots, new): the slot of each (field, key) pair, inserting the absent ones (their
        columns at the fill values); `new` marks the occurrences that were absent. The pairs may
        repeat: every occurrence of a pair gets the same slot."""
        fields = np.asarray(fields, dtype=np.int32)
        keys = np.asarray(keys, dtype=np.uint64)
        self._reserve(self.size + len(keys))  # before finding: a rehash moves every slot
        slots = self.find(fields, keys)
        new = slots < 0
        if new.any():
            slots[new] = self._claim(fields[new], keys[new])
        return slots, new

    def _claim(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Insert absent pairs (repeats allowed: equal pairs probe alike, write alike and so win
        the same slot in the same round); their slots."""
        out = np.empty(len(keys), dtype=np.int64)
        slot = self._home(fields, keys)
        todo = np.arange(len(keys))
        mask = self.slots - 1
        while todo.size:
            s = slot[todo]
            free = self.fields[s] == EMPTY
            cand, cs = todo[free], s[free]
            self.fields[cs] = fields[cand]  # several ids may write one slot: one of them wins
            self.keys[cs] = keys[cand]
            won = (self.fields[cs] == fields[cand]) & (self.keys[cs] == keys[cand])
            out[cand[won]] = cs[won]
            # every contended free slot got exactly one id: count the distinct slots written
            order = np.arange(len(cs))
            self._scratch[cs] = order
            self.size += int(np.count_nonzero(self._scratch[cs] == order))
            settled = np.zeros(len(todo), dtype=bool)
            settled[np.flatnonzero(free)[won]] = True
            todo, s = todo[~settled], s[~settled]
            slot[todo] = (s + 1) & mask
        return out

    def _reserve(self, needed: int) -> None:
        """Keep the load at most 1/2: double (and rehash every entry) until `needed` fit."""
        if 2 * needed <= self.slots:
            return
        size = self.slots
        while 2 * needed > size:
            size *= 2
        used = np.flatnonzero(self.fields != EMPTY)
        fields, keys = self.fields[used], self.keys[used]
        values = {n: c[used] for n, c in self.column.items()}
        self.fields = np.full(size, EMPTY, dtype=np.int32)
        self.keys = np.zeros(size, dtype=np.uint64)
        self.column = {n: np.full(size, fill, dtype=dt) for n, (dt, fill) in self._specs.items()}
        self._scratch = np.zeros(size, dtype=np.int64)
        self.size = 0
        slots = self._claim(fields, keys)  # distinct pairs
        for n, v in values.items():
            self.column[n][slots] = v
        self.generation += 1
