"""Paired statistics of a study: arms that share per-replica seeds, compared replica by replica.

Per replica k (docs/methods.md §5: the replica is the unit):

* PD: replica k's contribution to ``rel``, ``c_k = mean_{j != k} rel(k, j)`` over the pairwise
  ``rel`` values of the summary; ``mean_k c_k`` is exactly the arm's ``rel``, so the test compares
  the quantity the table shows. Caveat: the c_k of one arm share pairs and are therefore not
  independent, so the p-value is approximate (indicative with few replicas; use N >= 10 for claims).
* AUC: replica k's own AUC (independent across k).

The test is a sign-flip permutation test of mean(arm − baseline) (default; exact for M ≤ 13) or a
Wilcoxon signed-rank test (`reprokit.metrics.stats.paired_test`). p-values are Holm-corrected
across the non-baseline arms, separately for each metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from reprokit.errors import ReprokitError
from reprokit.metrics.stats import holm, pair_matrix, paired_test

#: Paired tests: (document key, what the per-replica value is).
TEST_METRICS: tuple[tuple[str, str], ...] = (
    ("rel", "replica's mean pairwise PD rel against the other replicas of its arm"),
    ("auc", "replica's AUC"),
)
TEST_METHODS = ("permutation", "wilcoxon")


def healthy_replicas(summary: dict[str, Any]) -> list[int]:
    """Replica indices that the summary's per-replica and per-pair values refer to.

    Diverged replicas are excluded from PD and accuracy, so the lists skip them.
    """
    diverged = sorted(int(r) for r in (summary.get("diverged") or {}).get("replicas", []))
    total = int(summary["replicas"]) + len(diverged)
    return [r for r in range(total) if r not in set(diverged)]


def per_replica_pd(
    summary: dict[str, Any], replicas: Iterable[int], key: str = "rel"
) -> np.ndarray:
    """c_k = mean over the other listed replicas j of pairwise PD `key`(k, j), per listed k."""
    index = {r: i for i, r in enumerate(healthy_replicas(summary))}
    values = np.asarray(summary["pd_per_pair"][key], dtype=np.float64)
    m = len(index)
    if values.shape != (m * (m - 1) // 2,):
        raise ReprokitError(
            f"summary lists {values.size} pairwise values for {m} replicas; it is inconsistent"
        )
    mat = pair_matrix(values, m)
    pos = [index[r] for r in replicas]
    if len(pos) < 2:
        return np.full(len(pos), np.nan)
    sub = mat[np.ix_(pos, pos)]
    return sub.sum(axis=1) / (len(pos) - 1)


def per_replica_metric(summary: dict[str, Any], replicas: Iterable[int], key: str) -> np.ndarray:
    """Per-replica accuracy metric (`auc`, `logloss`) of the listed replicas (NaN if absent)."""
    entry = summary.get(key)
    wanted = list(replicas)
    if not isinstance(entry, dict) or entry.get("per_replica") is None:
        return np.full(len(wanted), np.nan)
    index = {r: i for i, r in enumerate(healthy_replicas(summary))}
    values = [entry["per_replica"][index[r]] for r in wanted]
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _paired_values(
    arm: dict[str, Any], base: dict[str, Any], metric: str
) -> tuple[list[int], np.ndarray, np.ndarray]:
    common = sorted(set(healthy_replicas(arm)) & set(healthy_replicas(base)))
    if metric in ("rel", "abs"):
        return common, per_replica_pd(arm, common, metric), per_replica_pd(base, common, metric)
    return common, per_replica_metric(arm, common, metric), per_replica_metric(base, common, metric)


def paired_tests(
    summaries: Sequence[dict[str, Any]],
    baseline_index: int,
    method: str = "permutation",
    seed: int = 0,
) -> list[dict[str, dict[str, Any]] | None]:
    """For every arm but the baseline: {metric: test} with Holm-corrected p across arms per metric.

    A test entry is {"metric", "method", "statistic" (mean of arm − baseline over replicas),
    "p_value", "p_holm", "n", "replicas", "reason"}; the baseline gets None.
    """
    if method not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {method!r}; choose {' or '.join(TEST_METHODS)}")
    base = summaries[baseline_index]
    results: list[dict[str, dict[str, Any]] | None] = [
        None if i == baseline_index else {} for i in range(len(summaries))
    ]
    for metric, meaning in TEST_METRICS:
        raw: list[float] = []
        for i, arm in enumerate(summaries):
            if i == baseline_index:
                continue
            common, x, y = _paired_values(arm, base, metric)
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() < 2:
                test = {
                    "statistic": math.nan,
                    "p_value": math.nan,
                    "n": int(ok.sum()),
                    "reason": f"fewer than 2 replicas with a finite {metric} in both arms",
                }
            else:
                test = paired_test(x[ok], y[ok], method=method, seed=seed)
                test["test_statistic"] = test["statistic"]
                test["statistic"] = float(np.mean(x[ok] - y[ok]))
            entry = results[i]
            assert entry is not None
            entry[metric] = {
                "metric": metric,
                "method": method,
                "per_replica": meaning,
                "statistic": float(test["statistic"]),
                "test_statistic": float(test.get("test_statistic", math.nan)),
                "p_value": float(test["p_value"]),
                "n": int(test["n"]),
                "replicas": [r for r, good in zip(common, ok, strict=True) if good],
                "reason": test.get("reason"),
            }
            raw.append(float(test["p_value"]))
        adjusted = iter(holm(raw).tolist()) if raw else iter(())
        for entry in results:
            if entry is not None:
                entry[metric]["p_holm"] = float(next(adjusted))
    return results


def smallest_p_holm(replicas: int, comparisons: int) -> float:
    """The smallest Holm-adjusted p any arm can reach: exact two-sided p >= 2 / 2^n, times m."""
    return min(1.0, comparisons * 2.0 / 2.0**replicas) if comparisons else math.nan


def replicas_needed(comparisons: int, alpha: float = 0.05) -> int:
    """Fewest replicas for which `smallest_p_holm` is at most `alpha`."""
    return max(2, math.ceil(math.log2(2.0 * max(comparisons, 1) / alpha)))
