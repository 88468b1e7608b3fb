"""Top-k churn per group against a brute-force computation and hand-worked cases."""

import math

import numpy as np
import pytest
from churn_reference import brute_force_churn

from reprokit.errors import ReprokitError
from reprokit.metrics.churn import top_k_mask, topk_churn


@pytest.mark.parametrize("k", [1, 3, 10])
def test_churn_matches_a_brute_force_computation(k):
    rng = np.random.default_rng(7)
    n = 600
    groups = rng.choice(
        ["u1", "u2", "u3", "u4", "u5", "tiny"], size=n, p=[0.3, 0.3, 0.2, 0.1, 0.095, 0.005]
    )
    base = rng.random(n)
    # replicas: the base scores plus noise; some exact ties inside groups
    preds = np.clip(base + rng.normal(0, 0.05, (4, n)), 0, 1)
    preds[:, :40] = np.round(preds[:, :40], 1)
    got = topk_churn(preds, groups, k)
    expected, n_big, n_small = brute_force_churn(preds, groups, k)
    np.testing.assert_allclose(got.per_pair, expected, rtol=0, atol=1e-12)
    assert got.value == pytest.approx(expected.mean(), abs=1e-12)
    assert (got.groups, got.groups_skipped) == (n_big, n_small)
    assert 0 < got.value < 1


def test_hand_worked_example():
    # one user with 4 items; k = 2; replica 0 ranks a > b > c > d, replica 1 ranks a > c > b > d
    preds = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.6, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    res = topk_churn(preds, [5, 5, 5, 5], k=2)
    # pairs (0,1): {a,b} vs {a,c} -> 1/2; (0,2): identical -> 0; (1,2): 1/2
    np.testing.assert_array_equal(res.per_pair, [0.5, 0.0, 0.5])
    assert res.value == pytest.approx(1 / 3)


def test_identical_replicas_give_exactly_zero():
    rng = np.random.default_rng(1)
    row = rng.random(300)
    res = topk_churn(np.stack([row, row, row]), rng.integers(0, 7, 300), k=5)
    assert res.value == 0.0 and not res.per_pair.any()


def test_ties_break_by_example_order_and_clipping_makes_ties():
    scores = np.array([0.5, 0.5, 0.5, 0.2])
    assert top_k_mask(scores, np.zeros(4, dtype=np.int64), 2).tolist() == [True, True, False, False]
    # 1 - 1e-9 and 1 - 1e-8 both clip to 1 - EPS: they tie, so both replicas keep the first
    preds = np.array([[1 - 1e-9, 1 - 1e-8, 0.1], [1 - 1e-8, 1 - 1e-9, 0.1]])
    assert topk_churn(preds, [0, 0, 0], k=1).value == 0.0


def test_groups_no_larger_than_k_are_skipped():
    preds = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    res = topk_churn(preds, [0, 0, 1], k=2)
    assert res.groups == 0 and res.groups_skipped == 2
    assert math.isnan(res.value) and np.isnan(res.per_pair).all()


@pytest.mark.parametrize(
    ("preds", "groups", "k", "message"),
    [
        (np.ones((2, 3)) * 0.5, [0, 1], 1, "2 group ids for 3 examples"),
        (np.ones((2, 3)) * 0.5, [0, None, 1], 1, "1 example"),
        (np.ones((2, 3)) * 0.5, [0, 0, 1], 0, "positive integer"),
        (np.ones((1, 3)) * 0.5, [0, 0, 1], 1, "replicas >= 2"),
        (np.array([[0.5, np.nan, 0.2], [0.1, 0.2, 0.3]]), [0, 0, 1], 1, "NaN"),
    ],
)
def test_bad_input_is_one_clear_error(preds, groups, k, message):
    with pytest.raises(ReprokitError, match=message):
        topk_churn(preds, groups, k)


@pytest.mark.parametrize("n_groups", [50, 70_000])  # group codes in 16 bits, and wider
def test_top_k_mask_equals_a_lexsort_ranking(n_groups):
    rng = np.random.default_rng(3)
    codes = rng.integers(0, n_groups, 150_000)
    scores = np.round(rng.random(150_000), 3)  # many ties
    order = np.lexsort((-scores, codes))
    rank = np.empty(len(codes), dtype=np.int64)
    sorted_codes = codes[order]
    starts = np.searchsorted(sorted_codes, sorted_codes, side="left")
    rank[order] = np.arange(len(codes)) - starts
    for k in (1, 4):
        assert np.array_equal(top_k_mask(scores, codes, k), rank < k)
