"""Prediction difference (PD) between M replicas on the same N examples.

Definitions (docs/methods.md §1.2; the names are a contract). With p_m(n) clipped to
[EPS, 1 - EPS], p̄(n) the replica mean and pairs i < j:

========== =====================================================================
key        definition
========== =====================================================================
abs        mean over pairs of mean_n |p_i - p_j|
rel        mean over pairs of mean_n |p_i - p_j| / ((p_i + p_j) / 2)
abs_mean   mean_n mean_m |p_m - p̄|
rel_mean   mean_n (mean_m |p_m - p̄|) / p̄
l2         mean over pairs of sqrt(mean_n (p_i - p_j)^2)
rel_std    mean_n std_m(p, ddof=1) / p̄
flip       mean over pairs of mean_n 1[(p_i >= t) != (p_j >= t)]
========== =====================================================================

For M = 2, ``abs_mean == abs / 2`` and ``rel_mean == rel / 2`` (the factor-of-2 pitfall of
docs/methods.md §1.3: always quote the key, not just "PD").

Computation is float64, vectorised and chunked over examples: each chunk holds ``M x chunk_size``
values, and the per-pair terms are formed block-wise (all pairs (i, j > i) of one replica i at once)
so no ``M x M x N`` array ever exists. Chunks run on a small thread pool (numpy releases the GIL)
and their partial sums are added in chunk order, so results do not depend on the thread count.
Replicas that are bitwise identical give exactly 0.0 for every key: deviations from the mean are
taken relative to replica 0, so identical rows never go through a rounded mean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np

from reprokit.errors import ReprokitError

#: Predictions are clipped to [EPS, 1 - EPS] before any metric (docs/methods.md §1.1).
EPS = 1e-7

#: The PD keys, in the order documents list them.
PD_KEYS = ("abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip")

#: Keys that are means over pairs of a per-pair value (PDResult.per_pair holds those values).
PAIR_KEYS = ("abs", "rel", "l2", "flip")

#: Default examples per chunk: M x 8192 float64 values stay in cache, which is what makes the
#: block-wise pairwise pass fast; memory is O(M x chunk_size) per thread.
DEFAULT_CHUNK = 8192

#: Chunks are never longer than this: row sums use ``np.vecdot`` (BLAS ddot), and OpenBLAS starts
#: its own threads for vectors longer than 10,000 values, which oversubscribes the CPUs next to
#: our thread pool and was measured 20x slower on a busy 2-core machine.
MAX_CHUNK = 8192

#: Chunks handed to one thread-pool task (progress is reported per task).
_CHUNKS_PER_TASK = 16

ProgressCallback = Callable[[int, int], None]


def clip_predictions(predictions: np.ndarray) -> np.ndarray:
    """Return predictions as float64 clipped to [EPS, 1 - EPS] (a new array)."""
    return np.clip(np.asarray(predictions, dtype=np.float64), EPS, 1.0 - EPS)


def pair_indices(replicas: int) -> np.ndarray:
    """The pairs (i, j), i < j, as a [M(M-1)/2, 2] int array, ordered (0,1), (0,2), .., (1,2), .."""
    i, j = np.triu_indices(replicas, k=1)
    return np.stack([i, j], axis=1)


def default_threads() -> int:
    """Threads used for the chunked pass: the CPUs this process may run on, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


@dataclass(frozen=True)
class PDResult:
    """Every PD key plus what bootstrap, buckets and histograms need."""

    replicas: int
    examples: int
    threshold: float
    #: the PD keys (PD_KEYS) as Python floats
    values: dict[str, float]
    #: [K, 2] replica indices of each pair, K = M(M-1)/2, order (0,1), (0,2), ..
    pairs: np.ndarray
    #: per-pair values of the pairwise keys (PAIR_KEYS), each [K]; e.g. per_pair["abs"][k] is
    #: mean_n |p_i - p_j| for pairs[k] = (i, j). values[key] == per_pair[key].mean().
    per_pair: dict[str, np.ndarray] = field(repr=False)
    #: [N] ensemble mean p̄(n) of the clipped predictions
    mean_prediction: np.ndarray = field(repr=False)
    #: [N] per-example mean_m |p_m(n) - p̄(n)|
    per_example_abs: np.ndarray = field(repr=False)


def _check_matrix(predictions: np.ndarray) -> np.ndarray:
    arr = np.asarray(predictions)
    if arr.ndim != 2:
        raise ReprokitError(
            f"predictions must be a 2-D array [replicas, examples], got shape {arr.shape}"
        )
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise ReprokitError(f"predictions must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if arr.shape[0] < 2:
        raise ReprokitError(f"PD needs at least 2 replicas, got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ReprokitError("PD needs at least one example, got 0")
    return arr


def check_prediction_values(predictions: np.ndarray, names: list[str] | None = None) -> None:
    """Raise ReprokitError naming the first replica with NaN/Inf or values outside [0, 1]."""
    arr = np.asarray(predictions)
    for m in range(arr.shape[0]):
        row = arr[m]
        name = f"replica {names[m]!r}" if names is not None else f"replica {m}"
        bad = int(np.count_nonzero(~np.isfinite(row)))
        if bad:
            raise ReprokitError(f"{name} has {bad} NaN or infinite predictions")
        out = int(np.count_nonzero((row < 0.0) | (row > 1.0)))
        if out:
            raise ReprokitError(f"{name} has {out} predictions outside [0, 1]")


class _BadValues(Exception):
    """A chunk held NaN/Inf or out-of-range values (re-raised as ReprokitError with counts)."""


def _process_chunks(
    predictions: np.ndarray,
    starts: range,
    chunk_size: int,
    threshold: float,
    mean_prediction: np.ndarray,
    per_example_abs: np.ndarray,
) -> list[np.ndarray]:
    """Run the fused per-chunk kernel on chunks beginning at ``starts``.

    Returns one float64 vector per chunk: [abs(K), rel(K), sq(K), flip(K), abs_mean, rel_mean,
    rel_std] partial sums over the chunk's examples.
    """
    m, n = predictions.shape
    k = m * (m - 1) // 2
    x = np.empty((m, chunk_size))
    diff = np.empty((m - 1, chunk_size))
    tmp = np.empty((m - 1, chunk_size))
    dev = np.empty((m, chunk_size))
    ones = np.ones(chunk_size)
    out: list[np.ndarray] = []
    for start in starts:
        stop = min(start + chunk_size, n)
        c = stop - start
        xc = x[:, :c]
        np.copyto(xc, predictions[:, start:stop])  # float32 input becomes float64 here
        if not (xc.min() >= 0.0 and xc.max() <= 1.0):  # also catches NaN (comparisons fail)
            raise _BadValues
        np.clip(xc, EPS, 1.0 - EPS, out=xc)
        one = ones[:c]
        acc = np.empty(4 * k + 3)
        a_abs, a_rel, a_sq, a_flip = (acc[q * k : (q + 1) * k] for q in range(4))

        # --- pairwise terms, one block of pairs (i, i+1..M-1) at a time -------------------
        bits = np.packbits(xc >= threshold, axis=1)
        pos = 0
        for i in range(m - 1):
            r = m - 1 - i
            d = diff[:r, :c]
            t = tmp[:r, :c]
            np.subtract(xc[i + 1 :], xc[i], out=d)
            a_sq[pos : pos + r] = np.vecdot(d, d)
            np.abs(d, out=d)
            a_abs[pos : pos + r] = np.vecdot(d, one)
            np.add(xc[i + 1 :], xc[i], out=t)
            np.divide(d, t, out=t)
            a_rel[pos : pos + r] = np.vecdot(t, one)
            a_flip[pos : pos + r] = np.bitwise_count(bits[i + 1 :] ^ bits[i]).sum(axis=1)
            pos += r
        a_rel *= 2.0  # |d| / ((p_i + p_j) / 2)

        # --- mean-centred terms; deviations relative to replica 0 so identical rows give 0 --
        q = np.subtract(xc, xc[0], out=dev[:, :c])
        qbar = q.mean(axis=0)
        np.subtract(q, qbar, out=q)
        pbar = xc[0] + qbar
        sq = np.einsum("mc,mc->c", q, q)  # sum_m (p_m - p̄)^2 per example
        np.abs(q, out=q)
        ex_abs = q.mean(axis=0)
        mean_prediction[start:stop] = pbar
        per_example_abs[start:stop] = ex_abs
        acc[4 * k] = ex_abs.sum()
        acc[4 * k + 1] = (ex_abs / pbar).sum()
        acc[4 * k + 2] = (np.sqrt(sq / (m - 1)) / pbar).sum()
        out.append(acc)
    return out


def prediction_difference(
    predictions: np.ndarray,
    threshold: float = 0.5,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    replica_names: list[str] | None = None,
) -> PDResult:
    """Every PD key (docs/methods.md §1.2) for a [M, N] prediction matrix (float32 or float64).

    Raises ReprokitError for fewer than 2 replicas, no examples, NaN/Inf or values outside [0, 1].
    ``progress(done_examples, total_examples)`` is called from the calling thread as chunks finish.
    ``replica_names`` (default: indices) name the offending replica in error messages.
    """
    arr = _check_matrix(predictions)
    if not (0.0 < threshold < 1.0) or not math.isfinite(threshold):
        raise ReprokitError(f"flip threshold must be strictly between 0 and 1, got {threshold}")
    if chunk_size < 1:
        raise ReprokitError(f"chunk_size must be positive, got {chunk_size}")
    m, n = arr.shape
    k = m * (m - 1) // 2
    chunk_size = min(chunk_size, n, MAX_CHUNK)
    starts = range(0, n, chunk_size)
    n_chunks = len(starts)
    per_task = _CHUNKS_PER_TASK
    tasks = [starts[s : s + per_task] for s in range(0, n_chunks, per_task)]
    mean_prediction = np.empty(n)
    per_example_abs = np.empty(n)
    results: list[list[np.ndarray] | None] = [None] * len(tasks)
    n_threads = threads or default_threads()

    def run(t: int) -> int:
        results[t] = _process_chunks(
            arr, tasks[t], chunk_size, threshold, mean_prediction, per_example_abs
        )
        return t

    done = 0
    try:
        if n_threads == 1 or len(tasks) == 1:
            for t in range(len(tasks)):
                run(t)
                done += sum(min(s + chunk_size, n) - s for s in tasks[t])
                if progress is not None:
                    progress(done, n)
        else:
            with ThreadPoolExecutor(max_workers=n_threads) as pool:
                futures = [pool.submit(run, t) for t in range(len(tasks))]
                try:
                    for fut in as_completed(futures):
                        t = fut.result()
                        done += sum(min(s + chunk_size, n) - s for s in tasks[t])
                        if progress is not None:
                            progress(done, n)
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    except _BadValues:
        check_prediction_values(arr, replica_names)
        raise ReprokitError("predictions contain NaN or values outside [0, 1]") from None

    partial = np.stack([acc for chunk in results for acc in chunk])  # type: ignore[union-attr]
    total = partial.sum(axis=0)
    per_pair = {
        "abs": total[0:k] / n,
        "rel": total[k : 2 * k] / n,
        "l2": np.sqrt(total[2 * k : 3 * k] / n),
        "flip": total[3 * k : 4 * k] / n,
    }
    values = {
        "abs": float(per_pair["abs"].mean()),
        "rel": float(per_pair["rel"].mean()),
        "abs_mean": float(total[4 * k] / n),
        "rel_mean": float(total[4 * k + 1] / n),
        "l2": float(per_pair["l2"].mean()),
        "rel_std": float(total[4 * k + 2] / n),
        "flip": float(per_pair["flip"].mean()),
    }
    return PDResult(
        replicas=m,
        examples=n,
        threshold=float(threshold),
        values=values,
        pairs=pair_indices(m),
        per_pair=per_pair,
        mean_prediction=mean_prediction,
        per_example_abs=per_example_abs,
    )


def bucket_edges(mean_prediction: np.ndarray, buckets: int = 10, method: str = "log") -> np.ndarray:
    """Bucket edges over p̄: ``log`` (log-spaced from min to max) or ``quantile`` (equal counts)."""
    p = np.asarray(mean_prediction, dtype=np.float64)
    if buckets < 1:
        raise ReprokitError(f"the number of buckets must be positive, got {buckets}")
    if p.size == 0:
        raise ReprokitError("cannot bucket an empty prediction set")
    lo, hi = float(p.min()), float(p.max())
    if lo == hi:
        return np.array([lo, hi])
    if method == "log":
        edges = np.geomspace(max(lo, EPS), hi, buckets + 1)
    elif method == "quantile":
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, buckets + 1)))
    else:
        raise ReprokitError(f"unknown bucket method {method!r}; use 'log' or 'quantile'")
    edges[0], edges[-1] = lo, hi
    return edges


def pd_by_bucket(
    mean_prediction: np.ndarray,
    per_example_abs: np.ndarray,
    *,
    buckets: int = 10,
    method: str = "log",
    edges: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """PD per bucket of the ensemble mean p̄: ``[{"lo", "hi", "count", "abs_mean", "rel_mean"}]``.

    Buckets are [lo, hi) except the last, which is [lo, hi]. ``abs_mean``/``rel_mean`` are the PD
    keys restricted to the bucket's examples (NaN for an empty bucket). Pass ``edges`` to use fixed
    edges (e.g. to compare runs); examples outside them are not counted.
    """
    p = np.asarray(mean_prediction, dtype=np.float64)
    a = np.asarray(per_example_abs, dtype=np.float64)
    e = bucket_edges(p, buckets, method) if edges is None else np.asarray(edges, dtype=np.float64)
    nb = len(e) - 1
    if nb < 1 or np.any(np.diff(e) < 0):
        raise ReprokitError("bucket edges must be at least two increasing values")
    idx = np.searchsorted(e, p, side="right") - 1
    if edges is None:  # edges span [min, max]: only p == max lands past the last bucket
        np.minimum(idx, nb - 1, out=idx)
        a_in, p_in = a, p
    else:
        idx[p == e[-1]] = nb - 1
        inside = (idx >= 0) & (idx < nb)
        idx, a_in, p_in = idx[inside], a[inside], p[inside]
    count = np.bincount(idx, minlength=nb)
    abs_sum = np.bincount(idx, weights=a_in, minlength=nb)
    rel_sum = np.bincount(idx, weights=a_in / p_in, minlength=nb)
    rows = []
    for b in range(nb):
        c = int(count[b])
        rows.append(
            {
                "lo": float(e[b]),
                "hi": float(e[b + 1]),
                "count": c,
                "abs_mean": float(abs_sum[b] / c) if c else math.nan,
                "rel_mean": float(rel_sum[b] / c) if c else math.nan,
            }
        )
    return rows


def per_example_histogram(per_example_abs: np.ndarray, bins: int = 20) -> dict[str, list]:
    """Histogram of per-example abs_mean: ``{"edges": [bins+1], "counts": [bins]}``.

    Equal-width bins over [0, max]; when every example has zero PD the range is [0, 1] so all
    examples fall in the first bin.
    """
    a = np.asarray(per_example_abs, dtype=np.float64)
    if bins < 1:
        raise ReprokitError(f"the number of histogram bins must be positive, got {bins}")
    hi = float(a.max()) if a.size else 0.0
    counts, edges = np.histogram(a, bins=bins, range=(0.0, hi if hi > 0.0 else 1.0))
    return {"edges": [float(x) for x in edges], "counts": [int(c) for c in counts]}
