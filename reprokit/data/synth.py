"""A synthetic CTR dataset whose labels come from a seeded random teacher network.

Columns (in this order):

- ``example_id`` (int64): 0..rows-1.
- ``c0 .. c{F-1}`` (int64): categorical ids. Field *f* has ``cardinality[f]`` possible ids
  whose frequencies follow a Zipf law ``p(rank) ∝ 1 / (rank + 1) ** zipf_exponent``; ranks are
  mapped to ids by a seeded permutation, so the most frequent id is not simply 0.
- ``n0 .. n{K-1}`` (float32): numeric features, standard normal.
- ``timestamp`` (int64, optional): seconds, uniform over ``time_span`` seconds from ``start_time``
  (rows are not sorted by time).
- labels (int8, 0/1): the first task is ``label``, further tasks are ``label_1``, ``label_2``, ...

The teacher: each field id has a random embedding; the embeddings and the numeric features go
through a small random MLP (tanh hidden layer) to one logit per task; Gaussian logit noise is added
and a per-task intercept is solved for so that the mean click probability equals ``base_rate``;
labels are Bernoulli draws. With ``drift > 0`` there is a second teacher B and the weights move
linearly from A towards ``A + drift·(B − A)`` as time goes from the first to the last timestamp
(the intercept is shared over time, so the base rate may drift a little too).

Every random stream (feature ids, numeric features, time, teacher, noise, labels) is its own child
of ``numpy.random.SeedSequence(seed)``, so the same arguments always give the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit

from reprokit.data.layout import Dataset, DatasetSchema
from reprokit.errors import ReprokitError

#: Names of the independent random streams, in spawn order (append only: reordering changes data).
_STREAMS = ("ids", "perm", "numeric", "time", "teacher", "noise", "labels")


def label_names(tasks: int) -> list[str]:
    """The label columns for `tasks` tasks: ``label``, ``label_1``, ``label_2``, ..."""
    return ["label", *(f"label_{k}" for k in range(1, tasks))]


@dataclass(frozen=True)
class SynthSpec:
    """Everything that determines a synthetic dataset (so it can be stored and re-created)."""

    rows: int = 20_000
    fields: int = 8
    cardinality: int | tuple[int, ...] = 1000
    numeric: int = 4
    seed: int = 0
    zipf_exponent: float = 1.1
    base_rate: float = 0.2
    tasks: int = 1
    timestamp: bool = True
    drift: float = 0.0
    noise: float = 0.5
    teacher_dim: int = 8
    teacher_hidden: int = 32
    start_time: int = 1_700_000_000
    time_span: int = 30 * 86_400

    def cardinalities(self) -> list[int]:
        if isinstance(self.cardinality, int):
            return [int(self.cardinality)] * self.fields
        cards = [int(c) for c in self.cardinality]
        if len(cards) != self.fields:
            raise ReprokitError(
                f"{len(cards)} cardinalities given for {self.fields} categorical fields; "
                "give one value or one per field"
            )
        return cards

    def validate(self) -> SynthSpec:
        checks = [
            (self.rows >= 1, "the synthetic dataset needs at least 1 row"),
            (self.fields >= 0 and self.numeric >= 0, "field counts must be >= 0"),
            (self.fields + self.numeric >= 1, "the synthetic dataset needs at least one feature"),
            (all(c >= 1 for c in self.cardinalities()), "every cardinality must be at least 1"),
            (self.zipf_exponent >= 0, "the Zipf exponent must be >= 0"),
            (0.0 < self.base_rate < 1.0, "the base rate must be in (0, 1)"),
            (self.tasks >= 1, "the number of tasks must be at least 1"),
            (self.drift >= 0, "drift must be >= 0"),
            (self.noise >= 0, "the logit noise must be >= 0"),
            (self.teacher_dim >= 1 and self.teacher_hidden >= 1, "teacher sizes must be >= 1"),
            (self.time_span >= 0, "the time span must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ReprokitError(message)
        return self


def _zipf_ids(rng: np.random.Generator, perm: np.ndarray, rows: int, exponent: float) -> np.ndarray:
    """`rows` draws of Zipf-ranked ids: rank r has weight (r+1)^-exponent, mapped through `perm`."""
    card = len(perm)
    weights = np.arange(1, card + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(rows), side="right")
    np.minimum(ranks, card - 1, out=ranks)  # guard against float round-off at the top
    return perm[ranks]


class _Teacher:
    """One random teacher: per-field projected embeddings, numeric weights, an MLP head per task."""

    def __init__(self, rng: np.random.Generator, cards: list[int], spec: SynthSpec):
        d, h = spec.teacher_dim, spec.teacher_hidden
        width = d * len(cards) + spec.numeric
        scale = 1.0 / np.sqrt(max(width, 1))
        # first layer split by input block: field f contributes E_f[id] @ W_f, so project E_f once
        self.field_proj = []
        for card in cards:
            emb = rng.standard_normal((card, d))
            w = rng.standard_normal((d, h)) * scale
            self.field_proj.append((emb @ w).astype(np.float32))
        self.num_w = (rng.standard_normal((spec.numeric, h)) * scale * 2.0).astype(np.float32)
        self.bias = (rng.standard_normal(h) * 0.1).astype(np.float32)
        self.out = (rng.standard_normal((h, spec.tasks)) * 2.0 / np.sqrt(h)).astype(np.float32)

    def pre(self, ids: list[np.ndarray], num: np.ndarray) -> np.ndarray:
        acc = num @ self.num_w
        acc += self.bias
        buf = np.empty_like(acc)
        for proj, col in zip(self.field_proj, ids, strict=True):
            acc += np.take(proj, col, axis=0, out=buf)
        return acc


#: Rows per block of the teacher's forward pass: small enough that a block stays in the CPU cache.
_BLOCK = 1 << 14


def _teacher_logits(
    spec: SynthSpec,
    rng: np.random.Generator,
    cards: list[int],
    ids: list[np.ndarray],
    num: np.ndarray,
    tau: np.ndarray | None,
) -> np.ndarray:
    """[rows, tasks] float64 logits (without intercept), computed in fixed-size row blocks."""
    a = _Teacher(rng, cards, spec)
    b = _Teacher(rng, cards, spec) if tau is not None and spec.drift > 0 else None
    n = len(num)
    logits = np.empty((n, spec.tasks), dtype=np.float64)
    for lo in range(0, n, _BLOCK):
        hi = min(lo + _BLOCK, n)
        block_ids = [col[lo:hi] for col in ids]
        pre = a.pre(block_ids, num[lo:hi])
        if b is None:
            logits[lo:hi] = np.tanh(pre, out=pre) @ a.out
            continue
        mix = (spec.drift * tau[lo:hi]).astype(np.float32)[:, None]  # W(t) = A + mix·(B − A)
        pre += mix * (b.pre(block_ids, num[lo:hi]) - pre)  # the first layer is linear in W
        hidden = np.tanh(pre, out=pre)
        out_a = hidden @ a.out
        logits[lo:hi] = out_a + mix * (hidden @ b.out - out_a)
    return logits


def _intercept(logits: np.ndarray, target: float) -> float:
    """The b with mean(sigmoid(logits + b)) == target."""

    def gap(b: float) -> float:
        return float(expit(logits + b).mean()) - target

    lo, hi = -50.0 - float(logits.max()), 50.0 - float(logits.min())
    return float(brentq(gap, lo, hi, xtol=1e-10))


def synth_frame(
    rows: int = 20_000,
    fields: int = 8,
    cardinality: int | Sequence[int] = 1000,
    numeric: int = 4,
    seed: int = 0,
    *,
    zipf_exponent: float = 1.1,
    base_rate: float = 0.2,
    tasks: int = 1,
    timestamp: bool = True,
    drift: float = 0.0,
    noise: float = 0.5,
    teacher_dim: int = 8,
    teacher_hidden: int = 32,
    name: str = "synthetic",
) -> tuple[pd.DataFrame, DatasetSchema]:
    """Generate the synthetic CTR frame and its schema (the module docstring lists the columns)."""
    card_arg = cardinality if isinstance(cardinality, int) else tuple(int(c) for c in cardinality)
    spec = SynthSpec(
        rows=int(rows),
        fields=int(fields),
        cardinality=card_arg,
        numeric=int(numeric),
        seed=int(seed),
        zipf_exponent=float(zipf_exponent),
        base_rate=float(base_rate),
        tasks=int(tasks),
        timestamp=bool(timestamp),
        drift=float(drift),
        noise=float(noise),
        teacher_dim=int(teacher_dim),
        teacher_hidden=int(teacher_hidden),
    ).validate()
    if seed < 0:
        raise ReprokitError("the seed must be >= 0")
    cards = spec.cardinalities()
    streams = dict(
        zip(_STREAMS, np.random.SeedSequence(spec.seed).spawn(len(_STREAMS)), strict=True)
    )
    rng = {k: np.random.default_rng(s) for k, s in streams.items()}
    n = spec.rows

    ids = []
    for card in cards:
        perm = rng["perm"].permutation(card).astype(np.int64)
        ids.append(_zipf_ids(rng["ids"], perm, n, spec.zipf_exponent))
    num = rng["numeric"].standard_normal((n, spec.numeric), dtype=np.float32)

    ts = tau = None
    if spec.timestamp:
        offsets = rng["time"].integers(0, spec.time_span + 1, size=n, dtype=np.int64)
        ts = spec.start_time + offsets
        span = max(int(offsets.max() - offsets.min()), 1)
        tau = (offsets - offsets.min()) / span

    logits = _teacher_logits(spec, rng["teacher"], cards, ids, num, tau)
    if spec.noise > 0:
        logits += rng["noise"].standard_normal(logits.shape) * spec.noise
    uniforms = rng["labels"].random(logits.shape)

    columns: dict[str, np.ndarray] = {"example_id": np.arange(n, dtype=np.int64)}
    cat_names = [f"c{f}" for f in range(spec.fields)]
    num_names = [f"n{k}" for k in range(spec.numeric)]
    columns.update(zip(cat_names, ids, strict=True))
    columns.update((nm, num[:, k]) for k, nm in enumerate(num_names))
    if ts is not None:
        columns["timestamp"] = ts
    labels = label_names(spec.tasks)
    for t, lab in enumerate(labels):
        b = _intercept(logits[:, t], spec.base_rate)
        columns[lab] = (uniforms[:, t] < expit(logits[:, t] + b)).astype(np.int8)

    schema = DatasetSchema(
        categorical=cat_names,
        numeric=num_names,
        labels=labels,
        example_id="example_id",
        timestamp="timestamp" if ts is not None else None,
        name=name,
    )
    return pd.DataFrame(columns), schema


def generate_dataset(
    rows: int = 20_000,
    fields: int = 8,
    cardinality: int | Sequence[int] = 1000,
    numeric: int = 4,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """`synth_frame(...)` wrapped as a `Dataset` (same arguments and keyword options)."""
    frame, schema = synth_frame(rows, fields, cardinality, numeric, seed, **options)
    return Dataset(frame=frame, schema=schema)
