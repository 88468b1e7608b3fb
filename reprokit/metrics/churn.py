"""Top-k churn per group (user): how much replicas disagree on what they would rank first.

For ranking use PD understates what a user sees: two replicas can differ a little on every item
and still show the same top k, or differ a little and swap what is shown. With the examples split
into groups (a user's candidate items, a query's documents), replica i's top k of group u is the k
examples of u with the highest predictions, ties broken by example order. For a pair i < j

    churn_ij(u) = 1 - |top_k(i, u) ∩ top_k(j, u)| / k

and the metric is the mean over pairs of the mean over groups. Only groups with more than k
examples count: in a smaller group the top k is the whole group and cannot churn, so including it
would only dilute the mean (they are counted in ``groups_skipped``). Predictions are clipped to
[EPS, 1 - EPS] first, as for every metric (docs/methods.md §1.1), so values that differ only
beyond the clip tie. Bitwise identical replicas give exactly 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from reprokit.errors import ReprokitError
from reprokit.metrics.pd import check_prediction_values, clip_predictions, pair_indices

#: The default k: the first screen of a ranked list.
DEFAULT_TOP_K = 10


@dataclass(frozen=True)
class ChurnResult:
    """Top-k churn of M replicas; `per_pair` in `pair_indices` order (i < j, row-major)."""

    k: int
    value: float
    per_pair: np.ndarray
    groups: int  # groups with more than k examples (the ones averaged over)
    groups_skipped: int  # groups with k examples or fewer


@dataclass(frozen=True)
class ChurnGroups:
    """What a run's summary measures churn over: the group column's name, the group of every
    evaluation example (in prediction order) and k."""

    by: str
    groups: np.ndarray
    k: int = DEFAULT_TOP_K


def check_top_k(k: Any, name: str = "top-k") -> int:
    """k as an int; refuse anything but a positive integer (`name` is what the message calls it,
    e.g. the CLI option)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ReprokitError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def check_groups(groups: Any, examples: int) -> np.ndarray:
    """Group ids [N] as integer codes 0..G-1; refuse the wrong length or missing ids."""
    series = pd.Series(np.asarray(groups).ravel() if not isinstance(groups, pd.Series) else groups)
    if len(series) != examples:
        raise ReprokitError(f"got {len(series)} group ids for {examples} examples")
    missing = int(series.isna().sum())
    if missing:
        raise ReprokitError(f"{missing} example(s) have no group id")
    codes, _ = pd.factorize(series, sort=False)
    return codes.astype(np.int64)


def top_k_mask(scores: np.ndarray, codes: np.ndarray, k: int) -> np.ndarray:
    """[N] bool: the example is among the k highest scores of its group (ties: lower index)."""
    # by group, then score descending, ties by index (== np.lexsort((-scores, codes))): two stable
    # sorts, the second on the group codes in the narrowest dtype (radix sort for 16 bits)
    by_score = np.argsort(-scores, kind="stable")
    narrow = codes.astype(np.uint16) if codes.size and codes.max() < 2**16 else codes
    order = by_score[np.argsort(narrow[by_score], kind="stable")]
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    mask = np.zeros(len(scores), dtype=bool)
    mask[order] = np.arange(len(order)) - first < k
    return mask


def topk_churn(predictions: Any, groups: Any, k: int = DEFAULT_TOP_K) -> ChurnResult:
    """Top-k churn per group of [M, N] predictions (see the module docstring).

    One replica at a time is converted, clipped and ranked (memory O(N) floats plus an [M, N]
    bool mask), and each pair is compared on the first replica's top-k members only (O(G·k) per
    pair rather than O(N)).
    """
    arr = np.asarray(predictions)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ReprokitError(
            f"top-k churn needs predictions [replicas >= 2, examples], got shape {arr.shape}"
        )
    k = check_top_k(k)
    check_prediction_values(arr)
    codes = check_groups(groups, arr.shape[1])
    sizes = np.bincount(codes)
    eligible = sizes > k
    pairs = pair_indices(arr.shape[0])
    n_groups = int(eligible.sum())
    if n_groups == 0:
        nan = np.full(len(pairs), np.nan)
        return ChurnResult(k, float("nan"), nan, 0, len(sizes))
    keep = np.flatnonzero(eligible[codes])
    # re-code the eligible groups 0..G-1 so per-group sums are dense
    kept_codes = (np.cumsum(eligible) - 1)[codes[keep]]
    in_top = np.empty((arr.shape[0], len(keep)), dtype=bool)
    members = []  # per replica: positions of its top-k examples, and their groups
    for m in range(arr.shape[0]):
        in_top[m] = top_k_mask(clip_predictions(arr[m, keep]), kept_codes, k)
        top = np.flatnonzero(in_top[m])
        members.append((top, kept_codes[top]))
    per_pair = np.empty(len(pairs))
    for p, (i, j) in enumerate(pairs):
        top, top_groups = members[i]
        overlap = np.bincount(top_groups, weights=in_top[j, top], minlength=n_groups)
        per_pair[p] = np.mean(1.0 - overlap / k)
    return ChurnResult(k, float(per_pair.mean()), per_pair, n_groups, len(sizes) - n_groups)
