"""`collisionless[:min_count=K,filter=count|probabilistic,expire=T,capacity=C]`: Monolith's
collisionless embedding table (Liu et al. 2022, §2.2–2.3; ``bytedance/monolith``'s cuckoo
HashTable with its admission filters and expiry).

Rows are keyed by the raw 64-bit id (field f's key of index i: ``vocab_sizes.keys[f][i]``, see
:func:`reprokit.data.encoding.value_keys`) through :class:`reprokit.nn.keymap.KeyedSlots`; no two
ids ever share a row. The table starts empty and changes only at update time, after each optimizer
step, from the ids of that step's batch (:meth:`AdmissionState.update`):

1. An id that has a row is *updated*: its last-update time becomes the batch's time for it (the
   largest timestamp among its examples; the step number 1, 2, ... when the data has no timestamp).
2. An id without a row is counted (all its occurrences in the batch at once, as Monolith's
   deduplicated gradients are) and offered to the admission filter:
   - ``filter=count``: admitted once it has been seen ``min_count`` times in all (so
     ``min_count=1`` admits at the first update; Monolith's code admits one update later, when the
     count *before* the update reaches the threshold);
   - ``filter=probabilistic``: each occurrence admits with p = 1 − 0.05^(1/min_count), so an id
     with c occurrences in the batch is admitted with probability 1 − (1 − p)^c and with 95% after
     min_count occurrences (Monolith's equal-probability filter). The uniform draw is a fixed hash
     of (the `admission` seed, field, key, occurrences before this batch): seeded by the new
     nondeterminism source ``admission``, the same in both engines and in any batch order that
     gives the id the same history.
   Admitted ids get a row (the top of their field's free-row stack: the lowest never-used row, or
   the most recently evicted; ``capacity`` rows per field at most,
   admissions beyond it are refused and counted in `rejected_full`), initialised to
   :func:`initial_rows` of (the replica's `init` seed, field, key). The gradient of the step that
   admits an id is not applied to its new row (the lookup that produced it read zeros).
3. With ``expire=T``, every row whose id was last updated T or more time units before the table's
   clock (the largest time it has seen) is evicted: the row is zeroed and freed, and the engine
   resets its optimizer state. The id keeps its occurrence count, so it is re-admitted at its next
   update (count filter) or with the filter's probability.

A lookup (training forward or evaluation) of an id without a row reads zeros and inserts nothing
(Monolith's ``Lookup``): every such id reads the all-zero `miss_row` and the model masks it, so no
gradient reaches it. Evaluation uses the table as it stands after training.

Accounting (`stats`): `admitted` (row creations, re-admissions included), `filtered` (occurrences
the filter refused), `rejected_full`, `expired` (evictions), `rows_final`; `params` counts the rows
in use at the end × dim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reprokit.nn.embeddings import ROW_STD, EmbeddingTable, TableLayout
from reprokit.nn.hashed import GOLDEN, splitmix64
from reprokit.nn.keymap import KeyedSlots

__all__ = ["AdmissionState", "CollisionlessEmbeddings", "admission_probability", "initial_rows"]

#: what an update returns: (created rows, their fields, their keys, evicted rows)
Update = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _mix(*parts: np.ndarray | int) -> np.ndarray:
    """A fixed 64-bit hash of a tuple of uint64 arrays (broadcast), chained splitmix64."""
    with np.errstate(over="ignore"):
        h = np.uint64(0x243F6A8885A308D3)  # any fixed start (π's digits)
        for part in parts:
            h = splitmix64(np.asarray(part, dtype=np.uint64) ^ (h * GOLDEN))
    return h


def _uniform(h: np.ndarray) -> np.ndarray:
    """(0, 1) float64 from uint64 hashes (the top 53 bits, shifted off zero)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(2**53)


def initial_rows(seed: int, fields: np.ndarray, keys: np.ndarray, dim: int) -> np.ndarray:
    """float32 [n, dim] N(0, ROW_STD) starting values of the rows of ids (field, key) under the
    replica's `init` seed: Box–Muller of fixed hashes of (seed, field, key, coordinate), so a row's
    start depends on nothing but its id (not on when or in which engine it is admitted)."""
    n = len(keys)
    coord = np.arange(dim, dtype=np.uint64)
    base = _mix(np.uint64(seed), np.asarray(fields, dtype=np.uint64)[:, None], keys[:, None])
    u1 = _uniform(_mix(base, coord[None, :], np.uint64(1)))
    u2 = _uniform(_mix(base, coord[None, :], np.uint64(2)))
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return (ROW_STD * z).astype(np.float32).reshape(n, dim)


@dataclass
class Step:
    """A training step's batch, grouped: its distinct ids (`fields`, `keys`), how often each
    occurs (`occurrences`), which id each occurrence is (`inverse`) and the ids' map `slots`."""

    fields: np.ndarray
    keys: np.ndarray
    occurrences: np.ndarray
    inverse: np.ndarray
    slots: np.ndarray


def admission_probability(min_count: int, occurrences: np.ndarray) -> np.ndarray:
    """1 − (1 − p)^c with p = 1 − 0.05^(1/min_count): the probabilistic filter's chance to admit
    an id with c occurrences in one update."""
    return 1.0 - np.power(0.05, np.asarray(occurrences, dtype=np.float64) / min_count)


class AdmissionState:
    """One replica's collisionless table: which id holds which row, occurrence counts, last-update
    times, free rows, counters (numpy; the engine owns the row values).

    Field f's rows are ``starts[f] .. starts[f] + caps[f] − 1``; row `miss_row` (= the total) is
    the zero row every id without a row reads."""

    def __init__(
        self,
        keys: list[np.ndarray],
        caps: list[int],
        *,
        min_count: int = 1,
        filter: str = "count",
        expire: int | None = None,
        admission_seed: int = 0,
    ) -> None:
        self.field_keys = [np.asarray(k, dtype=np.uint64) for k in keys]
        self.index_offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(
            np.int64
        )
        self.all_keys = np.concatenate(self.field_keys) if keys else np.zeros(0, dtype=np.uint64)
        self.caps = [int(c) for c in caps]
        self.starts = np.concatenate([[0], np.cumsum(self.caps)]).astype(np.int64)
        self.miss_row = int(self.starts[-1])
        self.min_count, self.filter = int(min_count), str(filter)
        self.expire = None if expire is None else int(expire)
        self.admission_seed = int(admission_seed)
        self.slots = KeyedSlots({"row": (np.int64, -1), "count": (np.int64, 0)})
        # free rows of each field as a stack: at first the lowest row on top; evicted rows go on
        # top (the lowest of them topmost), so the most recently freed rows are reused first
        self.free = [
            np.arange(s + c - 1, s - 1, -1, dtype=np.int64)
            for s, c in zip(self.starts[:-1], self.caps, strict=True)
        ]
        self.n_free = list(self.caps)
        self.row_slot = np.full(self.miss_row, -1, dtype=np.int64)  # the slot holding each row
        self.row_last = np.zeros(self.miss_row, dtype=np.float64)
        self.clock = -np.inf
        self.updates = 0
        self._scratch = np.zeros(0, dtype=np.int64)  # slot → position, for grouping a batch
        self.counts = {"admitted": 0, "filtered": 0, "rejected_full": 0, "expired": 0}

    # -- lookup ------------------------------------------------------------------------------
    def rows(self, cat: np.ndarray) -> np.ndarray:
        """Rows [..., F] the indices `cat` [..., F] read now (`miss_row` where an id has none);
        a pure lookup (evaluation): nothing is inserted."""
        cat = np.asarray(cat, dtype=np.int64)
        return self.rows_of(*self._pairs(cat)).reshape(cat.shape)

    def rows_of(self, fields: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Rows of raw (field, key) pairs (`miss_row` where an id has none); inserts nothing."""
        slots = self.slots.find(fields, keys)
        held = self.slots.column["row"][slots]
        return np.where((slots >= 0) & (held >= 0), held, self.miss_row)

    def step_rows(self, cat: np.ndarray) -> tuple[np.ndarray, Step]:
        """(rows [b, F], step) of a training step's batch `cat` [b, F]: the lookup of its
        forward pass; `update` takes the `step` back and reuses its probe and grouping (one probe
        of the map per step). The ids get entries in the map (the admission filter's counters,
        at zero), not rows."""
        cat = np.asarray(cat, dtype=np.int64)
        rows, step = self.step_rows_of(*self._pairs(cat))
        return rows.reshape(cat.shape), step

    def step_rows_of(self, fields: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, Step]:
        """`step_rows` for raw (field, key) pairs, one per occurrence.

        The map itself groups the batch, without a sort: every occurrence of an id gets the id's
        slot, so writing each occurrence's position into a scratch array indexed by slot (the
        last write wins) names one representative occurrence per id."""
        fields = np.asarray(fields, dtype=np.int32)
        keys = np.asarray(keys, dtype=np.uint64)
        generation = self.slots.generation
        slots, _ = self.slots.find_or_insert(fields, keys)
        if self.slots.generation != generation:  # rehashed: rows moved to other slots
            row_col = self.slots.column["row"]
            used = np.flatnonzero(row_col >= 0)
            self.row_slot[row_col[used]] = used
        if len(self._scratch) < self.slots.slots:
            self._scratch = np.zeros(self.slots.slots, dtype=np.int64)
        n = len(slots)
        position = np.arange(n)
        self._scratch[slots] = position
        representative = self._scratch[slots]
        first = np.flatnonzero(representative == position)  # one occurrence per id
        self._scratch[slots[first]] = np.arange(len(first))
        inverse = self._scratch[slots]
        occurrences = np.bincount(inverse, minlength=len(first))
        step = Step(fields[first], keys[first], occurrences, inverse, slots[first])
        return self._step_rows(step), step

    def _step_rows(self, step: Step) -> np.ndarray:
        held = self.slots.column["row"][step.slots]
        return np.where(held >= 0, held, self.miss_row)[step.inverse]

    def _pairs(self, cat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The (field, key) pair of every entry of `cat` [..., F], flattened."""
        flat = (cat + self.index_offsets[:-1]).reshape(-1)
        fields = np.broadcast_to(np.arange(cat.shape[-1], dtype=np.int32), cat.shape).reshape(-1)
        return fields, self.all_keys[flat]

    @property
    def rows_in_use(self) -> int:
        return int(sum(c - n for c, n in zip(self.caps, self.n_free, strict=True)))

    # -- update ------------------------------------------------------------------------------
    def update(
        self, cat: np.ndarray, times: np.ndarray | None = None, step: Step | None = None
    ) -> Update:
        """Apply one optimizer step's batch `cat` [b, F] (example `times` [b], or None: steps;
        `step`: what `step_rows` returned for this batch).

        Returns (created rows, their fields, their keys, evicted rows): the engine writes
        `initial_rows` into the created ones and zeroes the evicted ones with their optimizer
        state."""
        cat = np.asarray(cat, dtype=np.int64)
        if step is None:
            step = self.step_rows(cat)[1]
        per_id_times = None if times is None else np.repeat(times, cat.shape[1])
        return self._apply(step, per_id_times)

    def update_keys(
        self,
        fields: np.ndarray,
        keys: np.ndarray,
        times: np.ndarray | None = None,
        step: Step | None = None,
    ) -> Update:
        """`update` for raw (field, key) pairs, one per occurrence (`times` per occurrence)."""
        if step is None:
            step = self.step_rows_of(fields, keys)[1]
        return self._apply(step, times)

    def _apply(self, step: Step, times: np.ndarray | None) -> Update:
        """One update of the batch's distinct ids (`step`), `times` per occurrence."""
        fields, keys, occurrences, slots = step.fields, step.keys, step.occurrences, step.slots
        self.updates += 1
        if times is None:
            when = np.full(len(keys), float(self.updates))
            now = float(self.updates)
        else:
            t = np.asarray(times, dtype=np.float64)
            when = np.full(len(keys), -np.inf)
            np.maximum.at(when, step.inverse, t)  # an id's latest time in the batch
            now = float(t.max()) if len(t) else self.clock
        row_col, count_col = self.slots.column["row"], self.slots.column["count"]
        held = row_col[slots]
        hit = held >= 0
        self.row_last[held[hit]] = when[hit]
        before = count_col[slots]
        count_col[slots] = before + occurrences
        cand = np.flatnonzero(~hit)
        if self.filter == "count":
            admit = before[cand] + occurrences[cand] >= self.min_count
        else:
            draw = _uniform(
                _mix(np.uint64(self.admission_seed), fields[cand], keys[cand], before[cand])
            )
            admit = draw < admission_probability(self.min_count, occurrences[cand])
        self.counts["filtered"] += int(occurrences[cand[~admit]].sum())
        chosen = cand[admit]
        chosen = chosen[np.lexsort((keys[chosen], fields[chosen]))]  # (field, key) order
        rows = self._allocate(fields[chosen], occurrences[chosen])
        taken, created = chosen[rows >= 0], rows[rows >= 0]
        row_col[slots[taken]] = created
        self.row_slot[created] = slots[taken]
        self.row_last[created] = when[taken]
        self.counts["admitted"] += len(created)
        self.clock = max(self.clock, now)
        evicted = self._expire()
        return created, fields[taken], keys[taken], evicted

    def _allocate(self, fields: np.ndarray, seen: np.ndarray) -> np.ndarray:
        """Rows for admitted ids of `fields` (in order within each field; −1 where the field is
        full: those ids' `seen` occurrences count as `rejected_full`)."""
        out = np.full(len(fields), -1, dtype=np.int64)
        for f in np.unique(fields):
            where = np.flatnonzero(fields == f)
            top = self.n_free[f]
            k = min(len(where), top)
            out[where[:k]] = self.free[f][top - k : top][::-1]
            self.n_free[f] = top - k
            self.counts["rejected_full"] += int(seen[where[k:]].sum())
        return out

    def _expire(self) -> np.ndarray:
        if self.expire is None:
            return np.zeros(0, dtype=np.int64)
        held = self.row_slot >= 0
        old = np.flatnonzero(held & (self.clock - self.row_last >= self.expire))
        if not len(old):
            return old
        self.slots.column["row"][self.row_slot[old]] = -1
        self.row_slot[old] = -1
        field_of = np.searchsorted(self.starts, old, side="right") - 1
        for f in np.unique(field_of):
            mine = old[field_of == f][::-1]  # pushed highest first: the lowest is popped first
            top = self.n_free[f]
            self.free[f][top : top + len(mine)] = mine
            self.n_free[f] = top + len(mine)
        self.counts["expired"] += len(old)
        return old

    def stats(self, dim: int) -> dict[str, Any]:
        """The summary's dynamic-table counters."""
        rows = self.rows_in_use
        return {**self.counts, "rows_final": rows, "params": rows * dim, "bytes": rows * dim * 4}


class CollisionlessEmbeddings(EmbeddingTable):
    """One `nn.Embedding(rows + 1, dim)` for all fields (the last row: the zero `miss_row`),
    driven by an :class:`AdmissionState` that `start` creates for a training run."""

    def __init__(
        self,
        vocab_sizes: list[int],
        dim: int,
        sparse: bool = False,
        *,
        min_count: int = 1,
        filter: str = "count",
        expire: int | None = None,
        capacity: int | None = None,
    ) -> None:
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields, self.dim = len(self.vocab_sizes), int(dim)
        keys = getattr(vocab_sizes, "keys", None)
        if keys is None:
            keys = [np.arange(v, dtype=np.uint64) for v in self.vocab_sizes]
        self.keys = [np.asarray(k, dtype=np.uint64) for k in keys]
        # a field never needs more rows than it has distinct known ids (the training
        # vocabulary's and, for a stream, the values first seen after it: keys past the sizes)
        self.caps = [min(len(k), capacity or len(k)) for k in self.keys]
        self.options = {"min_count": min_count, "filter": filter, "expire": expire}
        self.table = nn.Embedding(sum(self.caps) + 1, self.dim, sparse=sparse)
        self.init_seed = 0
        self.state = self.new_state(0)
        self._step: tuple[np.ndarray, Step] | None = None  # the last training lookup

    @property
    def num_rows(self) -> int:
        return sum(self.caps) + 1

    @property
    def miss_row(self) -> int:
        return sum(self.caps)

    def new_state(self, admission_seed: int) -> AdmissionState:
        return AdmissionState(self.keys, self.caps, admission_seed=admission_seed, **self.options)

    def start(self, admission_seed: int) -> None:
        """An empty table for a training run whose `admission` seed is `admission_seed`."""
        self.state = self.new_state(admission_seed)
        with torch.no_grad():
            self.table.weight.zero_()

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Rows start empty; the `init` generator gives the seed of `initial_rows`."""
        self.init_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self.start(self.state.admission_seed)

    def num_params(self) -> int:
        return self.state.rows_in_use * self.dim

    def memory_bytes(self) -> int:
        return self.num_params() * self.table.weight.element_size()

    def id_rows(self) -> list[np.ndarray]:
        """Collisionless: every index is its own row."""
        return [np.arange(len(k), dtype=np.int64) for k in self.keys]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training:  # a training step: its update (`after_step`) reuses the probe
            local = ids.cpu().numpy()
            rows_np, step = self.state.step_rows(local)
            self._step = (local, step)
        else:
            rows_np = self.state.rows(ids.cpu().numpy())
        rows = torch.from_numpy(rows_np).to(ids.device)
        hit = (rows != self.miss_row).unsqueeze(-1).to(self.table.weight.dtype)
        return self.table(rows) * hit  # a miss reads zeros and sends no gradient

    def after_step(
        self, cat: np.ndarray, times: np.ndarray | None, optimizer: torch.optim.Optimizer
    ) -> None:
        """The update of this step's batch: admit, create rows, expire (optimizer state too)."""
        last, self._step = self._step, None
        step = last[1] if last is not None and np.array_equal(last[0], cat) else None
        created, fields, keys, evicted = self.state.update(cat, times, step)
        weight = self.table.weight
        with torch.no_grad():
            if len(created):
                values = initial_rows(self.init_seed, fields, keys, self.dim)
                weight[torch.from_numpy(created)] = torch.from_numpy(values).to(weight.device)
            if len(evicted):
                index = torch.from_numpy(evicted).to(weight.device)
                weight[index] = 0.0
                reset_row_state(optimizer, weight, index, self.miss_row)

    def stacked_layout(self) -> TableLayout:
        offsets = torch.zeros(self.num_fields, dtype=torch.long)
        return TableLayout(self.num_rows, self.dim, offsets)

    def stacked_weight(self) -> torch.Tensor:
        return self.table.weight.detach().clone()


def reset_row_state(
    optimizer: torch.optim.Optimizer, param: torch.Tensor, rows: torch.Tensor, fresh_row: int
) -> None:
    """Give `rows` of `param` the optimizer state of a row that was never updated: `fresh_row`'s
    (the miss row gets no gradient, so its state is still the optimizer's initial one)."""
    state = optimizer.state.get(param, {})
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.shape == param.shape:
            value[rows] = value[fresh_row].clone()
