"""Statistics for PD: bootstrap over replicas, paired tests across arms, Holm, Pareto front.

The replica is the unit (docs/methods.md §1.5): M replicas give M(M-1)/2 pairwise PDs, but pairs
share models, so they are not independent samples and a bootstrap over pairs would be too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from reprokit.errors import ReprokitError

#: Name written into summary documents (``pd_ci.method``).
CI_METHOD = "bootstrap over replicas"


def _checked_pair_matrix(pair_values: np.ndarray, replicas: int) -> np.ndarray:
    """`pair_matrix`, after checking that there is exactly one value per pair."""
    vals = np.asarray(pair_values, dtype=np.float64)
    k = replicas * (replicas - 1) // 2
    if vals.shape != (k,):
        raise ReprokitError(
            f"expected {k} per-pair values for {replicas} replicas, got shape {vals.shape}"
        )
    return pair_matrix(vals, replicas)


def pair_matrix(pair_values: np.ndarray, replicas: int) -> np.ndarray:
    """The symmetric [M, M] matrix (zero diagonal) of M(M-1)/2 pairwise values in (0,1), (0,2), ..
    order, so per-replica sums and resampled pairs are plain matrix products."""
    mat = np.zeros((replicas, replicas))
    i, j = np.triu_indices(replicas, k=1)
    mat[i, j] = pair_values
    mat[j, i] = pair_values
    return mat


def resampled_pair_means(
    pair_values: np.ndarray, replicas: int, resamples: np.ndarray
) -> np.ndarray:
    """Mean pairwise value of each resample of replica indices.

    ``resamples`` is [B, M] replica indices drawn with replacement. For one resample with
    multiplicities w_m the statistic is ``sum_{i<j} w_i w_j v_ij / sum_{i<j} w_i w_j``: the mean
    over all pairs of drawn models that are different replicas (a model is never paired with its own
    copy, whose PD would be a spurious 0). Resamples with a single distinct replica give NaN.
    """
    idx = np.asarray(resamples)
    if idx.ndim == 1:
        idx = idx[None, :]
    b = idx.shape[0]
    mat = _checked_pair_matrix(pair_values, replicas)
    offsets = (np.arange(b) * replicas)[:, None]
    w = np.bincount((idx + offsets).ravel(), minlength=b * replicas).reshape(b, replicas)
    w = w.astype(np.float64)
    num = 0.5 * np.einsum("bi,ij,bj->b", w, mat, w)
    den = 0.5 * (w.sum(axis=1) ** 2 - (w * w).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def replica_bootstrap_ci(
    pair_values: np.ndarray,
    replicas: int,
    *,
    level: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean pairwise value, resampling **replicas**.

    Each resample draws M replica indices with replacement and takes the mean over pairs of distinct
    drawn replicas (see `resampled_pair_means`); resamples with only one distinct replica carry no
    pair and are redrawn (the bootstrap is conditional on at least two distinct replicas).

    With M = 2 every usable resample is the original pair, so the bootstrap says nothing about
    replica-to-replica variability: the CI is ``(nan, nan)`` (written as null). The same holds when
    M < 2. ``scipy.stats.bootstrap`` is not used because it cannot discard resamples for which the
    statistic is undefined; the percentile scheme here is the same as its ``method="percentile"``.
    """
    if not 0.0 < level < 1.0:
        raise ReprokitError(f"confidence level must be strictly between 0 and 1, got {level}")
    if n_resamples < 1:
        raise ReprokitError(f"bootstrap resamples must be a positive number, got {n_resamples}")
    if replicas >= 2:
        _checked_pair_matrix(pair_values, replicas)  # validates the number of values
    if replicas < 3:
        return (math.nan, math.nan)
    vals = np.asarray(pair_values, dtype=np.float64)
    if np.all(vals == vals.flat[0]):  # every pair equal (e.g. all zero): no spread at all
        v = float(vals.flat[0])
        return (v, v)
    rng = np.random.default_rng(seed)
    stats = np.empty(0)
    while stats.size < n_resamples:
        need = n_resamples - stats.size
        draws = rng.integers(0, replicas, size=(need, replicas))
        s = resampled_pair_means(vals, replicas, draws)
        stats = np.concatenate([stats, s[~np.isnan(s)]])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def paired_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    method: str = "wilcoxon",
    alternative: str = "two-sided",
    n_resamples: int = 9999,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired test of a[i] vs b[i] (replica i of two arms that share seeds).

    ``method``: ``"wilcoxon"`` (scipy.stats.wilcoxon, signed-rank on a - b; zero differences are
    dropped, scipy's default) or ``"permutation"`` (sign-flip permutation test of mean(a - b) via
    scipy.stats.permutation_test, ``permutation_type="samples"``; exact when 2^n <= n_resamples).
    ``alternative``: ``"two-sided"``, ``"less"`` (a tends to be smaller) or ``"greater"``.

    Returns ``{"method", "statistic", "p_value", "n", "reason"}``. When every difference is zero the
    arms are indistinguishable: p_value 1.0. With fewer than 2 pairs the test is undefined:
    statistic and p_value NaN and ``reason`` says why (``reason`` is None otherwise).
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ReprokitError(f"paired test needs equal lengths, got {x.size} and {y.size}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ReprokitError("paired test values must be finite (no NaN or Inf)")
    if method not in ("wilcoxon", "permutation"):
        raise ReprokitError(f"unknown paired test {method!r}; use 'wilcoxon' or 'permutation'")
    if alternative not in ("two-sided", "less", "greater"):
        raise ReprokitError(f"unknown alternative {alternative!r}")
    n = int(x.size)
    result: dict[str, Any] = {"method": method, "statistic": math.nan, "p_value": math.nan, "n": n}
    d = x - y
    if n < 2:
        result["reason"] = f"a paired test needs at least 2 pairs, got {n}"
        return result
    if np.all(d == 0.0):
        result.update(statistic=0.0, p_value=1.0, reason=None)
        return result
    if method == "wilcoxon":
        res = sps.wilcoxon(x, y, alternative=alternative)
    else:

        def mean_diff(u: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
            return np.mean(u - v, axis=axis)

        res = sps.permutation_test(
            (x, y),
            mean_diff,
            permutation_type="samples",
            alternative=alternative,
            n_resamples=n_resamples,
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    result.update(statistic=float(res.statistic), p_value=float(res.pvalue), reason=None)
    return result


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Sorted ascending p_(1) <= .. <= p_(m): adj_(k) = max_{j <= k} min(1, (m - j + 1) p_(j)).
    Reject H_k at level alpha iff adj_k <= alpha. NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0.0) | (p[ok] > 1.0)):
        raise ReprokitError("p-values must lie in [0, 1]")
    vals = p[ok]
    m = vals.size
    if m == 0:
        return out
    order = np.argsort(vals, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * vals[order])
    adjusted = np.maximum.accumulate(scaled)
    res = np.empty(m)
    res[order] = adjusted
    out[ok] = res
    return out


def pareto_front(
    points: Sequence[Sequence[float]] | np.ndarray, *, maximize: Sequence[bool] | None = None
) -> list[int]:
    """Indices (ascending) of the non-dominated points.

    ``points`` is [K, D]; every objective is minimised unless ``maximize[d]`` is True (e.g. PD
    minimised and AUC maximised: ``maximize=[False, True]``). A point is dominated when another is
    at least as good in every objective and strictly better in one; equal points do not dominate
    each other. Points with a NaN coordinate are never on the front.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2:
        raise ReprokitError(f"pareto_front needs a [points, objectives] array, got {pts.shape}")
    if maximize is not None:
        if len(maximize) != pts.shape[1]:
            raise ReprokitError(
                f"maximize has {len(maximize)} entries for {pts.shape[1]} objectives"
            )
        sign = np.where(np.asarray(maximize, dtype=bool), -1.0, 1.0)
        pts = pts * sign
    valid = ~np.any(np.isnan(pts), axis=1)
    front = []
    for k in range(pts.shape[0]):
        if not valid[k]:
            continue
        others = pts[valid]
        dominated = np.any(np.all(others <= pts[k], axis=1) & np.any(others < pts[k], axis=1))
        if not dominated:
            front.append(k)
    return front


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample std (ddof=1) across replicas; std is NaN for a single value."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return (mean, std)
