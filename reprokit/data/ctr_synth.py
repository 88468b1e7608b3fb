"""`reprokit data synth --format criteo|avazu`: generated raw click logs for tests and benchmarks.

The files have the exact layout of the real ones, so they go through `reprokit data criteo` /
``avazu`` like a download would:

- **criteo**: tab-separated, no header; ``label``, ``I1..I13`` (non-negative counts drawn from
  log-normal laws, ``I2`` also -1..-3 as in the real file, each with empty cells at its own rate),
  ``C1..C26`` (8 hex digits; Zipf frequencies over a per-field vocabulary from 3 to 40,000 values;
  some fields often empty). The base rate is about 0.25, as in Criteo.
- **avazu**: CSV with the Kaggle header ``id,click,hour,C1,banner_pos,site_id,...,C21``; ``hour``
  runs through 10 days from 14102100 in file order (Avazu is sorted by time); no empty cells; the
  base rate is about 0.17.

Labels are Bernoulli draws from a logistic teacher: every categorical value has a random weight
(its field's scale times a standard normal), a count adds ``a_k · log1p(max(x, 0))``, Avazu's hour
of the day adds a daily cycle, and an intercept fixed on a calibration sample gives the base rate.
So a model can learn, and an ensemble's predictions have something to differ on.

Rows are made in chunks of `CHUNK_ROWS`; chunk k draws from ``SeedSequence([seed, 1, k])`` and the
teacher from ``SeedSequence([seed, 0])``, so the same seed gives the same bytes and the first N rows
of a longer file equal a file of N rows (Avazu's hours, which spread over the file, excepted).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from scipy.optimize import brentq
from scipy.special import expit

from reprokit.data.ctr_logs import CRITEO_CATEGORICAL, CRITEO_NUMERIC
from reprokit.errors import ReprokitError
from reprokit.fsio import atomic_write

CHUNK_ROWS = 100_000
SYNTH_FORMATS = ("criteo", "avazu")
AVAZU_START = np.datetime64("2014-10-21T00", "h")
AVAZU_HOURS = 240  # 10 days, as the Kaggle training file
#: Per Criteo category field: (vocabulary size, share of empty cells, weight scale).
CRITEO_FIELDS = [
    (1400, 0.0, 0.3),
    (550, 0.0, 0.5),
    (40000, 0.03, 0.6),
    (25000, 0.03, 0.3),
    (300, 0.0, 0.4),
    (24, 0.12, 0.3),
    (12000, 0.0, 0.5),
    (630, 0.0, 0.2),
    (3, 0.0, 0.3),
    (30000, 0.0, 0.6),
    (5500, 0.0, 0.4),
    (35000, 0.03, 0.4),
    (3200, 0.0, 0.3),
    (27, 0.0, 0.5),
    (14000, 0.0, 0.4),
    (30000, 0.03, 0.5),
    (10, 0.0, 0.3),
    (5600, 0.0, 0.4),
    (2100, 0.44, 0.3),
    (4, 0.44, 0.2),
    (32000, 0.03, 0.5),
    (18, 0.76, 0.2),
    (15, 0.0, 0.4),
    (20000, 0.03, 0.3),
    (100, 0.44, 0.3),
    (15000, 0.44, 0.3),
]
#: Per Criteo count field: (log-normal mu, sigma, share of empty cells, weight).
CRITEO_COUNTS = [
    (0.5, 1.2, 0.45, 0.15),
    (1.5, 1.5, 0.0, 0.05),
    (1.8, 1.3, 0.21, -0.1),
    (1.5, 1.0, 0.22, 0.1),
    (7.5, 2.0, 0.03, -0.08),
    (3.5, 1.6, 0.22, 0.1),
    (1.5, 1.4, 0.04, 0.12),
    (2.5, 1.0, 0.0, -0.05),
    (4.0, 1.4, 0.04, 0.05),
    (0.2, 0.6, 0.45, 0.2),
    (1.0, 1.0, 0.04, 0.15),
    (0.3, 1.0, 0.77, 0.1),
    (2.0, 1.2, 0.22, -0.05),
]
#: Avazu columns after id, click, hour: (name, vocabulary size, kind, weight scale).
AVAZU_FIELDS = [
    ("C1", 7, "int", 0.3),
    ("banner_pos", 7, "small", 0.4),
    ("site_id", 4000, "hex", 0.5),
    ("site_domain", 7000, "hex", 0.3),
    ("site_category", 26, "hex", 0.4),
    ("app_id", 8000, "hex", 0.5),
    ("app_domain", 550, "hex", 0.3),
    ("app_category", 36, "hex", 0.3),
    ("device_id", 60000, "hex", 0.3),
    ("device_ip", 80000, "hex", 0.3),
    ("device_model", 8000, "hex", 0.3),
    ("device_type", 5, "small", 0.3),
    ("device_conn_type", 4, "small", 0.3),
    ("C14", 2600, "int", 0.5),
    ("C15", 8, "int", 0.2),
    ("C16", 9, "int", 0.2),
    ("C17", 430, "int", 0.4),
    ("C18", 4, "small", 0.3),
    ("C19", 68, "int", 0.3),
    ("C20", 170, "int", 0.3),
    ("C21", 60, "int", 0.3),
]
AVAZU_COLUMNS = ["id", "click", "hour", *(f[0] for f in AVAZU_FIELDS)]
ZIPF = 1.1
CALIBRATION_ROWS = 50_000


@dataclass
class _Field:
    name: str
    tokens: pa.Array  # the field's values, by rank (rank 0 the most frequent)
    cdf: np.ndarray  # Zipf cumulative frequencies over ranks
    weights: np.ndarray  # teacher weight per rank
    missing: float = 0.0


def _zipf_cdf(size: int) -> np.ndarray:
    p = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** ZIPF
    return np.cumsum(p / p.sum())


def _tokens(rng: np.random.Generator, size: int, kind: str) -> pa.Array:
    """`size` distinct values: 8 hex digits (Criteo, Avazu ids), 4-6 digit integers or 0..size-1."""
    if kind == "small":
        return pa.array([str(v) for v in range(size)])
    if kind == "int":
        values = rng.choice(np.arange(1000, 100_000), size=size, replace=False)
        return pa.array([str(v) for v in values])
    values = rng.choice(2**32, size=size, replace=False)
    return pa.array([f"{v:08x}" for v in values])


def _fields(seed: int, spec: list[tuple[str, int, str, float, float]]) -> list[_Field]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    out = []
    for name, size, kind, scale, missing in spec:
        tokens = _tokens(rng, size, kind)
        weights = scale * rng.standard_normal(size)
        out.append(_Field(name, tokens, _zipf_cdf(size), weights, missing))
    return out


def _draw(rng: np.random.Generator, fld: _Field, n: int) -> tuple[pa.Array, np.ndarray]:
    """(values as text with nulls, teacher contribution per row)."""
    ranks = np.minimum(np.searchsorted(fld.cdf, rng.random(n)), len(fld.cdf) - 1)
    contrib = fld.weights[ranks]
    mask = rng.random(n) < fld.missing if fld.missing else None
    if mask is not None:
        contrib = np.where(mask, 0.0, contrib)
    values = fld.tokens.take(pa.array(ranks, mask=mask))
    return values, contrib


def _intercept(logits: np.ndarray, base_rate: float) -> float:
    return float(brentq(lambda b: expit(logits + b).mean() - base_rate, -30.0, 30.0))


class _Criteo:
    def __init__(self, seed: int, base_rate: float) -> None:
        spec = [
            (n, s, "hex", w, m)
            for n, (s, m, w) in zip(CRITEO_CATEGORICAL, CRITEO_FIELDS, strict=True)
        ]
        self.fields = _fields(seed, spec)
        self.seed = seed
        sample = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        self.bias = _intercept(self._columns(sample, CALIBRATION_ROWS, 0.0)[1], base_rate)

    def _columns(
        self, rng: np.random.Generator, n: int, bias: float
    ) -> tuple[dict[str, pa.Array], np.ndarray]:
        columns: dict[str, pa.Array] = {}
        logit = np.full(n, bias)
        for name, (mu, sigma, missing, weight) in zip(CRITEO_NUMERIC, CRITEO_COUNTS, strict=True):
            counts = np.floor(np.exp(rng.normal(mu, sigma, n))).astype(np.int64) - 1
            counts = np.maximum(counts, -3 if name == "I2" else 0)
            mask = rng.random(n) < missing
            logit += np.where(mask, 0.0, weight * np.log1p(np.maximum(counts, 0)))
            columns[name] = pa.array(counts, mask=mask if mask.any() else None)
        for fld in self.fields:
            columns[fld.name], contrib = _draw(rng, fld, n)
            logit += contrib
        logit += 0.3 * rng.standard_normal(n)
        return columns, logit

    def chunk(self, k: int, n: int, start_row: int, total: int) -> pa.Table:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1, k]))
        columns, logit = self._columns(rng, n, self.bias)
        label = (rng.random(n) < expit(logit)).astype(np.int8)
        return pa.table({"label": label, **columns})


class _Avazu:
    def __init__(self, seed: int, base_rate: float) -> None:
        spec = [(n, s, k, w, 0.0) for n, s, k, w in AVAZU_FIELDS]
        self.fields = _fields(seed, spec)
        self.seed = seed
        teacher = np.random.default_rng(np.random.SeedSequence([seed, 3]))
        self.daily = 0.4 * teacher.standard_normal(24)
        sample = np.random.default_rng(np.random.SeedSequence([seed, 2]))
        hours = sample.integers(0, 24, CALIBRATION_ROWS)
        logit = self._logit(sample, CALIBRATION_ROWS, hours)[1]
        self.bias = _intercept(logit, base_rate)

    def _logit(
        self, rng: np.random.Generator, n: int, hour_of_day: np.ndarray
    ) -> tuple[dict[str, pa.Array], np.ndarray]:
        columns: dict[str, pa.Array] = {}
        logit = self.daily[hour_of_day].copy()
        for fld in self.fields:
            columns[fld.name], contrib = _draw(rng, fld, n)
            logit += contrib
        return columns, logit + 0.3 * rng.standard_normal(n)

    def chunk(self, k: int, n: int, start_row: int, total: int) -> pa.Table:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1, k]))
        rows = np.arange(start_row, start_row + n, dtype=np.int64)
        offset = (rows * AVAZU_HOURS) // max(total, 1)
        stamps = AVAZU_START + offset.astype("timedelta64[h]")
        hour_of_day = (offset % 24).astype(np.int64)
        columns, logit = self._logit(rng, n, hour_of_day)
        label = (rng.random(n) < expit(logit + self.bias)).astype(np.int8)
        ids = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        hour = pc.strftime(pa.array(stamps.astype("datetime64[s]")), format="%y%m%d%H")
        return pa.table(
            {"id": pa.array(ids).cast(pa.string()), "click": label, "hour": hour, **columns}
        )


def write_synth_log(
    fmt: str,
    rows: int,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    base_rate: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Write `rows` generated rows in `fmt` (criteo or avazu) to `out` (gzip when it ends in .gz)."""
    if fmt not in SYNTH_FORMATS:
        raise ReprokitError(f"unknown log format {fmt!r}; expected one of criteo, avazu")
    if rows < 1:
        raise ReprokitError(f"--rows must be at least 1, got {rows}")
    rate = base_rate if base_rate is not None else (0.25 if fmt == "criteo" else 0.17)
    if not 0.0 < rate < 1.0:
        raise ReprokitError(f"--base-rate must lie strictly between 0 and 1, got {rate}")
    out = Path(out)
    start = time.perf_counter()
    maker = _Criteo(seed, rate) if fmt == "criteo" else _Avazu(seed, rate)
    positives = 0

    def write(tmp: Path) -> None:
        nonlocal positives
        sink = pa.OSFile(str(tmp), "wb")
        stream = pa.CompressedOutputStream(sink, "gzip") if out.suffix == ".gz" else sink
        options = pacsv.WriteOptions(
            include_header=False,  # pyarrow would quote the names; Avazu's header has no quotes
            delimiter="\t" if fmt == "criteo" else ",",
            quoting_style="none",
        )
        writer = None
        try:
            if fmt == "avazu":
                stream.write((",".join(AVAZU_COLUMNS) + "\n").encode())
            done = 0
            for k in range(-(-rows // CHUNK_ROWS)):
                n = min(CHUNK_ROWS, rows - done)
                table = maker.chunk(k, n, done, rows)
                positives += int(
                    pc.sum(table.column("label" if fmt == "criteo" else "click")).as_py()
                )
                if writer is None:
                    writer = pacsv.CSVWriter(stream, table.schema, write_options=options)
                writer.write_table(table)
                done += n
                if progress is not None:
                    progress(done)
        finally:
            if writer is not None:
                writer.close()
            stream.close()

    atomic_write(out, write)
    return {
        "kind": "data-synth",
        "format": fmt,
        "path": str(out),
        "rows": rows,
        "positive_rate": round(positives / rows, 6),
        "seed": seed,
        "bytes": out.stat().st_size,
        "seconds": round(time.perf_counter() - start, 3),
    }
