"""PD keys, per-pair values, buckets and histogram against brute-force Python loops."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from reprokit.errors import ReprokitError
from reprokit.metrics.pd import (
    EPS,
    PD_KEYS,
    pair_indices,
    pd_by_bucket,
    per_example_histogram,
    prediction_difference,
)


def brute_pd(rows: list[list[float]], t: float = 0.5) -> tuple[dict, dict]:
    """Every key straight from docs/methods.md §1.2, one example and one pair at a time."""
    p = [[min(max(float(v), EPS), 1.0 - EPS) for v in row] for row in rows]
    m, n = len(p), len(p[0])
    pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
    per_pair = {"abs": [], "rel": [], "l2": [], "flip": []}
    for i, j in pairs:
        a = r = sq = f = 0.0
        for k in range(n):
            d = abs(p[i][k] - p[j][k])
            a += d
            r += d / ((p[i][k] + p[j][k]) / 2.0)
            sq += d * d
            f += 1.0 if (p[i][k] >= t) != (p[j][k] >= t) else 0.0
        per_pair["abs"].append(a / n)
        per_pair["rel"].append(r / n)
        per_pair["l2"].append(math.sqrt(sq / n))
        per_pair["flip"].append(f / n)
    abs_mean = rel_mean = rel_std = 0.0
    for k in range(n):
        col = [p[mm][k] for mm in range(m)]
        mean = sum(col) / m
        dev = sum(abs(v - mean) for v in col) / m
        abs_mean += dev
        rel_mean += dev / mean
        rel_std += statistics.stdev(col) / mean
    values = {
        "abs": sum(per_pair["abs"]) / len(pairs),
        "rel": sum(per_pair["rel"]) / len(pairs),
        "abs_mean": abs_mean / n,
        "rel_mean": rel_mean / n,
        "l2": sum(per_pair["l2"]) / len(pairs),
        "rel_std": rel_std / n,
        "flip": sum(per_pair["flip"]) / len(pairs),
    }
    return values, per_pair


def random_predictions(m: int, n: int, seed: int, dtype=np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.random(n)
    p = np.clip(base + rng.normal(0.0, 0.15, size=(m, n)), 0.0, 1.0)
    p[0, :3] = [0.0, 1.0, 1e-9]  # exercise the clipping to [EPS, 1 - EPS]
    p[1, :3] = [0.0, 0.5, 1.0]
    return p.astype(dtype)


@pytest.mark.parametrize(
    ("m", "n", "threshold", "chunk"), [(5, 257, 0.5, 64), (2, 100, 0.3, 8192), (7, 131, 0.7, 10)]
)
def test_every_key_matches_brute_force(m, n, threshold, chunk):
    preds = random_predictions(m, n, seed=m * 100 + n)
    res = prediction_difference(preds, threshold, chunk_size=chunk)
    values, per_pair = brute_pd(preds.tolist(), threshold)
    assert set(res.values) == set(PD_KEYS)
    for key in PD_KEYS:
        assert res.values[key] == pytest.approx(values[key], rel=1e-9, abs=1e-12), key
    for key in per_pair:
        np.testing.assert_allclose(res.per_pair[key], per_pair[key], rtol=1e-9, atol=1e-12)
    assert res.pairs.tolist() == [[i, j] for i in range(m) for j in range(i + 1, m)]
    clipped = np.clip(preds, EPS, 1 - EPS)
    np.testing.assert_allclose(res.mean_prediction, clipped.mean(axis=0), rtol=1e-12)
    dev = np.abs(clipped - clipped.mean(axis=0)).mean(axis=0)
    np.testing.assert_allclose(res.per_example_abs, dev, rtol=1e-9, atol=1e-15)


def test_float32_input_is_computed_in_float64():
    p32 = random_predictions(4, 300, seed=3, dtype=np.float32)
    res = prediction_difference(p32)
    values, _ = brute_pd(p32.astype(np.float64).tolist())
    for key in PD_KEYS:
        assert res.values[key] == pytest.approx(values[key], rel=1e-9, abs=1e-12), key


def test_results_do_not_depend_on_threads_and_chunks():
    preds = random_predictions(6, 5000, seed=11)
    one = prediction_difference(preds, chunk_size=37, threads=1)
    two = prediction_difference(preds, chunk_size=37, threads=2)
    assert one.values == two.values  # same chunks, summed in chunk order: bitwise equal
    big = prediction_difference(preds, chunk_size=100_000)
    for key in PD_KEYS:
        assert big.values[key] == pytest.approx(one.values[key], rel=1e-12)


def test_m2_identities():
    preds = random_predictions(2, 400, seed=5)
    res = prediction_difference(preds)
    assert res.values["abs_mean"] == pytest.approx(res.values["abs"] / 2, rel=1e-12)
    assert res.values["rel_mean"] == pytest.approx(res.values["rel"] / 2, rel=1e-12)


def test_identical_replicas_give_exact_zero():
    rng = np.random.default_rng(0)
    row = rng.random(1000)
    row[:4] = [0.1, 1 / 3, 0.7, 0.2]  # means of three copies of these round in float64
    for m in (2, 3, 7):
        res = prediction_difference(np.tile(row, (m, 1)), chunk_size=64)
        assert all(res.values[k] == 0.0 for k in PD_KEYS), res.values
        assert all(np.all(v == 0.0) for v in res.per_pair.values())
        assert np.all(res.per_example_abs == 0.0)
        np.testing.assert_array_equal(res.mean_prediction, np.clip(row, EPS, 1 - EPS))


def test_pair_indices_order():
    assert pair_indices(4).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]


@pytest.mark.parametrize(
    ("preds", "match"),
    [
        (np.array([[0.1, np.nan], [0.2, 0.3]]), "replica 0 has 1 NaN"),
        (np.array([[0.1, 0.2], [0.2, 1.5]]), "replica 1 has 1 predictions outside"),
        (np.array([[0.1, 0.2], [-0.1, -0.2]]), "replica 1 has 2 predictions outside"),
        (np.array([[0.1, 0.2]]), "at least 2 replicas"),
        (np.zeros((2, 3, 2)), "2-D"),
        (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    ],
)
def test_bad_predictions_raise(preds, match):
    with pytest.raises(ReprokitError, match=match):
        prediction_difference(preds)


def test_bad_values_named_by_replica_name():
    preds = np.full((3, 10), 0.5)
    preds[2, [1, 4, 7]] = np.inf
    with pytest.raises(ReprokitError, match="replica 'c' has 3 NaN or infinite"):
        prediction_difference(preds, replica_names=["a", "b", "c"])


@pytest.mark.parametrize("t", [0.0, 1.0, -0.5, float("nan")])
def test_bad_threshold(t):
    with pytest.raises(ReprokitError, match="threshold"):
        prediction_difference(np.full((2, 3), 0.5), t)


@pytest.mark.parametrize("method", ["log", "quantile"])
def test_pd_by_bucket_matches_loop(method):
    rng = np.random.default_rng(7)
    pbar = np.exp(rng.uniform(np.log(1e-4), np.log(0.9), size=2000))
    abs_mean = rng.random(2000) * pbar
    rows = pd_by_bucket(pbar, abs_mean, buckets=6, method=method)
    assert rows[0]["lo"] == pbar.min() and rows[-1]["hi"] == pbar.max()
    assert sum(r["count"] for r in rows) == 2000
    for b, row in enumerate(rows):
        last = b == len(rows) - 1
        members = [
            k
            for k in range(2000)
            if row["lo"] <= pbar[k] < row["hi"] or (last and pbar[k] == row["hi"])
        ]
        assert row["count"] == len(members)
        if members:
            assert row["abs_mean"] == pytest.approx(sum(abs_mean[members]) / len(members))
            rel = sum(abs_mean[k] / pbar[k] for k in members) / len(members)
            assert row["rel_mean"] == pytest.approx(rel)
        else:
            assert math.isnan(row["abs_mean"])
    if method == "log":
        ratios = [r["hi"] / r["lo"] for r in rows]
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)
    else:
        assert max(r["count"] for r in rows) - min(r["count"] for r in rows) <= 1


def test_pd_by_bucket_fixed_edges_and_constant_input():
    rows = pd_by_bucket(
        np.array([0.05, 0.2, 0.5, 0.95]), np.array([0.01, 0.02, 0.03, 0.04]), edges=[0.1, 0.5, 0.9]
    )
    assert [r["count"] for r in rows] == [1, 1]  # 0.05 and 0.95 are outside the fixed edges
    assert rows[0]["abs_mean"] == 0.02 and rows[1]["abs_mean"] == 0.03
    rows = pd_by_bucket(np.full(5, 0.3), np.zeros(5))
    assert rows == [{"lo": 0.3, "hi": 0.3, "count": 5, "abs_mean": 0.0, "rel_mean": 0.0}]
    with pytest.raises(ReprokitError, match="bucket method"):
        pd_by_bucket(np.array([0.1, 0.2]), np.zeros(2), method="linear")


def test_per_example_histogram():
    values = np.random.default_rng(1).random(1000) * 0.2
    hist = per_example_histogram(values, bins=8)
    assert len(hist["edges"]) == 9 and hist["edges"][0] == 0.0
    assert hist["edges"][-1] == values.max()
    assert sum(hist["counts"]) == 1000
    width = values.max() / 8
    for b in range(8):
        expected = sum(
            1 for v in values if b * width <= v < (b + 1) * width or (b == 7 and v == values.max())
        )
        assert abs(hist["counts"][b] - expected) <= 1  # an edge value may round either way
    zeros = per_example_histogram(np.zeros(10), bins=4)
    assert zeros["counts"] == [10, 0, 0, 0] and zeros["edges"][-1] == 1.0


def test_progress_reports_every_example_once():
    preds = random_predictions(3, 20_000, seed=2)
    calls: list[tuple[int, int]] = []
    prediction_difference(
        preds, chunk_size=100, threads=2, progress=lambda d, t: calls.append((d, t))
    )
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == 20_000
    assert all(t == 20_000 for _, t in calls) and len(calls) == 13  # 200 chunks, 16 per task
