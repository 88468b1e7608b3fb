"""Replica bootstrap, paired tests, Holm and Pareto front vs hand-worked or brute-force results."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from reprokit.errors import ReprokitError
from reprokit.metrics.stats import (
    holm,
    mean_std,
    paired_test,
    pareto_front,
    replica_bootstrap_ci,
    resampled_pair_means,
)


def pair_values(m: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(m * (m - 1) // 2)


def test_resampled_pair_means_match_loop_over_drawn_pairs():
    m = 5
    vals = pair_values(m, 1)
    lookup = {(i, j): vals[k] for k, (i, j) in enumerate(itertools.combinations(range(m), 2))}
    rng = np.random.default_rng(2)
    draws = rng.integers(0, m, size=(200, m))
    got = resampled_pair_means(vals, m, draws)
    for row, value in zip(draws, got, strict=True):
        terms = [lookup[min(a, b), max(a, b)] for a, b in itertools.combinations(row, 2) if a != b]
        if terms:
            assert value == pytest.approx(sum(terms) / len(terms), rel=1e-12)
        else:
            assert math.isnan(value)
    # the identity resample gives the plain mean over all pairs
    assert resampled_pair_means(vals, m, np.arange(m))[0] == pytest.approx(vals.mean())


def test_ci_contains_estimate_and_is_seeded():
    for m in (3, 4, 8, 16):
        vals = pair_values(m, m)
        lo, hi = replica_bootstrap_ci(vals, m, n_resamples=2000, seed=3)
        assert lo <= vals.mean() <= hi
        assert lo >= vals.min() and hi <= vals.max()
        assert (lo, hi) == replica_bootstrap_ci(vals, m, n_resamples=2000, seed=3)
    wide = replica_bootstrap_ci(vals, 16, level=0.99, n_resamples=2000, seed=3)
    narrow = replica_bootstrap_ci(vals, 16, level=0.5, n_resamples=2000, seed=3)
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]


def test_ci_reflects_one_outlying_replica():
    """Pairs that share an outlying replica move together; the bootstrap over replicas sees it."""
    m = 10
    mat = np.full((m, m), 0.01)
    mat[0, :] = mat[:, 0] = 0.10  # replica 0 differs from every other replica
    i, j = np.triu_indices(m, k=1)
    vals = mat[i, j]
    lo, hi = replica_bootstrap_ci(vals, m, n_resamples=4000, seed=0)
    assert lo < vals.mean() < hi
    assert lo == pytest.approx(0.01)  # resamples without replica 0 exist and are all 0.01


def test_ci_degenerate_cases():
    assert all(math.isnan(v) for v in replica_bootstrap_ci(np.array([0.3]), 2))
    assert replica_bootstrap_ci(np.zeros(6), 4) == (0.0, 0.0)
    with pytest.raises(ReprokitError, match="expected 6 per-pair values"):
        replica_bootstrap_ci(np.zeros(5), 4)
    with pytest.raises(ReprokitError, match="confidence level"):
        replica_bootstrap_ci(np.zeros(6), 4, level=1.0)


def brute_sign_flip_p(d: np.ndarray) -> float:
    """Exact two-sided sign-flip p-value of the mean difference."""
    observed = abs(d.mean())
    count = total = 0
    for signs in itertools.product((1.0, -1.0), repeat=d.size):
        total += 1
        count += abs((d * np.array(signs)).mean()) >= observed - 1e-12
    return count / total


def brute_wilcoxon_p(d: np.ndarray) -> float:
    """Exact two-sided signed-rank p-value (no ties, no zeros): enumerate all sign patterns."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    w_obs = ranks[d > 0].sum()
    dist = [
        sum(r for r, s in zip(ranks, signs, strict=True) if s)
        for signs in itertools.product((0, 1), repeat=d.size)
    ]
    dist = np.array(dist)
    p = 2 * min(np.mean(dist <= w_obs), np.mean(dist >= w_obs))
    return min(1.0, p)


def test_paired_tests_match_exact_enumeration():
    rng = np.random.default_rng(5)
    a = rng.random(9)
    b = a - 0.05 + rng.normal(0, 0.06, 9)
    d = a - b
    perm = paired_test(a, b, method="permutation", n_resamples=9999)
    assert perm["p_value"] == pytest.approx(brute_sign_flip_p(d), rel=1e-9)
    assert perm["statistic"] == pytest.approx(d.mean())
    assert perm["n"] == 9 and perm["reason"] is None
    wil = paired_test(a, b, method="wilcoxon")
    assert wil["p_value"] == pytest.approx(brute_wilcoxon_p(d), rel=1e-9)
    assert wil["method"] == "wilcoxon"
    one_sided = paired_test(a, b, method="permutation", alternative="greater")
    assert one_sided["p_value"] < perm["p_value"]


def test_paired_test_edge_cases():
    same = paired_test([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0
    single = paired_test([0.1], [0.2])
    assert math.isnan(single["p_value"]) and "at least 2" in single["reason"]
    with pytest.raises(ReprokitError, match="equal lengths"):
        paired_test([0.1, 0.2], [0.1])
    with pytest.raises(ReprokitError, match="finite"):
        paired_test([0.1, np.nan], [0.1, 0.2])
    with pytest.raises(ReprokitError, match="unknown paired test"):
        paired_test([0.1, 0.2], [0.1, 0.3], method="ttest")


def test_holm_hand_worked_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    got = holm([0.02, np.nan, 0.01])
    assert math.isnan(got[1])
    np.testing.assert_allclose(got[[0, 2]], [0.02, 0.02])
    assert holm([]).size == 0
    with pytest.raises(ReprokitError, match="p-values"):
        holm([1.5])


def brute_pareto(points: np.ndarray) -> list[int]:
    front = []
    for k, p in enumerate(points):
        if np.any(np.isnan(p)):
            continue
        dominated = False
        for j, q in enumerate(points):
            if j == k or np.any(np.isnan(q)):
                continue
            if all(q[d] <= p[d] for d in range(len(p))) and any(q[d] < p[d] for d in range(len(p))):
                dominated = True
        if not dominated:
            front.append(k)
    return front


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = np.round(rng.random((40, 2)), 1)  # rounding creates ties and duplicates
    pts[3] = [np.nan, 0.0]
    assert pareto_front(pts) == brute_pareto(pts)
    flipped = pts.copy()
    flipped[:, 1] *= -1
    assert pareto_front(pts, maximize=[False, True]) == brute_pareto(flipped)
    assert pareto_front([[1, 1], [1, 1], [2, 0]]) == [0, 1, 2]
    with pytest.raises(ReprokitError, match="maximize"):
        pareto_front(pts, maximize=[True])


def test_mean_std():
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, np.std([1, 2, 4], ddof=1)))
    mean, std = mean_std([0.5])
    assert mean == 0.5 and math.isnan(std)
