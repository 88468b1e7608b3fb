"""Divergence detection on hand-made loss series (spike, recovery, full divergence, NaN, collapse)."""

import math

import numpy as np
import pytest

from reprokit.config import DivergenceConfig
from reprokit.training.divergence import (
    SpikeDetector,
    detect,
    event_column,
    loss_rose,
    random_auc_sd,
    robust_center_scale,
)

# Alternating 0.50 / 0.52: median 0.51, MAD 0.01, robust scale 1.4826 * 0.01 = 0.014826.
SCALE = 1.4826 * 0.01


def _flat(n: int) -> list[float]:
    return [0.50 if i % 2 == 0 else 0.52 for i in range(n)]


def _kinds(detector):
    return [(e.step, e.kind) for e in detector.events]


def test_robust_center_scale_known_values():
    med, scale = robust_center_scale(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))
    assert med == 3.0 and scale == pytest.approx(1.4826)  # MAD = median(2, 1, 0, 1, 97) = 1
    med, scale = robust_center_scale(np.array([2.0, 2.0, 2.0]))
    assert med == 2.0 and scale == pytest.approx(0.02)  # MAD 0: floor 1 % of the median


def test_spike_then_recovery_is_a_micro_divergence():
    losses = _flat(30) + [5.0, 0.53] + _flat(20)
    d = detect(losses)
    assert _kinds(d) == [(30, "spike"), (31, "recovered")]
    spike, rec = d.events
    assert spike.baseline == pytest.approx(0.51)
    assert spike.z == pytest.approx((5.0 - 0.51) / SCALE)
    assert rec.steps_since_spike == 1
    assert not d.diverged and d.reason is None
    assert d.record()["spikes"] == 1 and d.record()["recovered"] == 1


def test_threshold_is_strict_and_one_sided():
    # z = (0.598 - 0.51) / 0.014826 = 5.94 (no spike); 0.600 gives 6.07 (spike).
    assert _kinds(detect(_flat(30) + [0.598])) == []
    assert _kinds(detect(_flat(30) + [0.600] + _flat(4)))[0] == (30, "spike")
    # A sudden fall is never a spike, nor is the fast fall at the start of training.
    assert _kinds(detect(_flat(30) + [0.01] + _flat(5))) == []
    assert _kinds(detect(list(np.linspace(5.0, 0.5, 60)))) == []


def test_recovery_threshold_is_pre_spike_median_plus_three_scales():
    limit = 0.51 + 3 * SCALE  # 0.554478
    stays = detect(_flat(30) + [5.0] + [0.56] * 5, DivergenceConfig(recovery_steps=100))
    assert _kinds(stays) == [(30, "spike"), (35, "diverged")]  # open at the end: diverged
    back = detect(_flat(30) + [5.0, 0.56, limit - 1e-6] + _flat(3))
    assert _kinds(back) == [(30, "spike"), (32, "recovered")]


def test_spike_without_recovery_within_k_steps_is_full_divergence():
    losses = _flat(30) + [3.0] * 30
    d = detect(losses, DivergenceConfig(recovery_steps=10))
    assert _kinds(d) == [(30, "spike"), (40, "diverged")]
    assert d.events[-1].steps_since_spike == 10
    assert d.diverged and d.reason == "spike"
    # Recovering after the deadline does not undo it (detection stops at full divergence).
    late = detect(_flat(30) + [3.0] * 12 + _flat(10), DivergenceConfig(recovery_steps=10))
    assert _kinds(late) == [(30, "spike"), (40, "diverged")]


def test_nonfinite_loss_or_gradient():
    d = detect(_flat(10) + [math.nan, 0.5])
    assert _kinds(d) == [(10, "nonfinite")] and d.reason == "nonfinite"
    g = detect([0.5, 0.5, 0.5], grad_norms=[1.0, math.inf, 1.0])
    assert _kinds(g) == [(1, "nonfinite")] and g.diverged


def test_warm_up_spike_before_the_window_fills():
    # The first Adagrad step with a zero accumulator: 0.69 → 166 → back to 0.6.
    d = detect([0.69, 166.0, 0.6, 0.55, 0.5])
    assert _kinds(d) == [(1, "spike"), (2, "recovered")]
    # Below warmup_factor (3) × the median of the steps so far it is not a spike.
    assert _kinds(detect([0.69, 2.0, 0.6])) == []


def test_spike_steps_stay_out_of_the_window():
    det = SpikeDetector(DivergenceConfig())
    for s, v in enumerate(_flat(30) + [5.0, 6.0]):
        det.update(s, v)
    assert len(det._window) == 30 and max(det._window) == 0.52


def test_collapse_needs_chance_auc_and_a_blow_up_or_constant_predictions():
    spiked = detect([0.69, 166.0, 0.6, 0.5])
    assert spiked.check_collapse([0.5, 0.505], [0.01, 0.01]).kind == "collapse"
    assert spiked.diverged and spiked.reason == "collapse"
    calm = detect(_flat(30))
    assert calm.check_collapse([0.5, 0.505], [0.01, 0.01]) is None  # under-trained, not collapsed
    assert calm.check_collapse([0.5], [0.01], constant=True).kind == "collapse"
    far = detect([0.69, 166.0, 0.6, 0.5])
    assert far.check_collapse([0.5, 0.6], [0.01, 0.01]) is None  # one task still learns


def test_random_auc_sd_and_loss_rose():
    assert random_auc_sd([1, 1, 0, 0]) == pytest.approx(math.sqrt(5 / 48))
    assert math.isnan(random_auc_sd([1, 1]))
    assert loss_rose([0.7] * 10 + [0.9] * 10) and not loss_rose([0.7] * 10 + [0.5] * 10)


def test_event_column():
    d = detect(_flat(30) + [5.0, 0.53])
    col = event_column(d.events, np.arange(32))
    assert col[30] == "spike" and col[31] == "recovered" and set(col[:30]) == {""}


def test_loss_wandering_on_random_labels_is_not_a_rise():
    from reprokit.training.divergence import loss_rose

    # ten steps of a model on random labels: the loss wanders around ln 2 (a user's trial run)
    noisy = [0.6946, 0.7834, 0.6912, 0.6990, 0.6950, 0.6941, 0.6962, 0.6956, 0.6955, 0.6957]
    assert not loss_rose(noisy)
    assert loss_rose([0.69] * 10 + [0.80] * 10)  # a real rise still counts
