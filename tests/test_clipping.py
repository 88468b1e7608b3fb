"""Clipping baselines (GC, AGC, LAMB-Adagrad) against hand computations, and make_optimizer."""

from __future__ import annotations

import math

import pytest
import torch

from reprokit.errors import ReprokitError
from reprokit.optim import (
    OPTIMIZER_NAMES,
    AdaptiveGradClip,
    ClippyAdagrad,
    GradNormClip,
    LambAdagrad,
    OptimizerArgumentError,
    describe_optimizers,
    make_optimizer,
    unitwise_norm,
)

F64 = torch.float64


def _p(values, grad=None):
    p = torch.nn.Parameter(torch.tensor(values, dtype=F64))
    if grad is not None:
        p.grad = torch.tensor(grad, dtype=F64)
    return p


# -- gradient-norm clipping ----------------------------------------------------------------------


def test_global_grad_norm_clip():
    # ‖(3, 4, 0, 12)‖ = 13; max_norm 1.3 -> every gradient scaled by 0.1 (torch adds 1e-6 to ‖g‖)
    a, b = _p([0.0, 0.0], [3.0, 4.0]), _p([1.0, 1.0], [0.0, 12.0])
    stats = GradNormClip([a, b], max_norm=1.3).apply()
    assert stats["grad_norm"].item() == pytest.approx(13.0)
    assert stats["scale"].item() == pytest.approx(0.1, rel=1e-6)
    torch.testing.assert_close(a.grad, torch.tensor([0.3, 0.4], dtype=F64), rtol=1e-6, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.0, 1.2], dtype=F64), rtol=1e-6, atol=0)


def test_global_grad_norm_clip_below_threshold_is_identity():
    a = _p([0.0, 0.0], [0.3, 0.4])
    GradNormClip([a], max_norm=1.0).apply()
    torch.testing.assert_close(a.grad, torch.tensor([0.3, 0.4], dtype=F64))


def test_per_tensor_grad_norm_clip():
    # ‖g1‖ = 5 > 0.1 -> scaled by 0.02; ‖g2‖ = 0.05 < 0.1 untouched; zero gradient stays zero
    a = _p([0.0, 0.0], [3.0, 4.0])
    b = _p([0.0, 0.0], [0.03, 0.04])
    c = _p([1.0], [0.0])
    t = GradNormClip([a, b, c], max_norm=0.1, per_tensor=True)
    stats = t.apply()
    torch.testing.assert_close(a.grad, torch.tensor([0.06, 0.08], dtype=F64))
    torch.testing.assert_close(b.grad, torch.tensor([0.03, 0.04], dtype=F64))
    torch.testing.assert_close(c.grad, torch.tensor([0.0], dtype=F64))
    torch.testing.assert_close(stats["scale"], torch.tensor([0.02, 1.0, 1.0], dtype=F64))
    torch.testing.assert_close(stats["grad_norm"], torch.tensor([5.0, 0.05, 0.0], dtype=F64))
    assert t.last_stats is stats


# -- adaptive gradient clipping -------------------------------------------------------------------


def test_agc_per_tensor():
    # ‖w‖ = 5, ‖g‖ = 10, λ = 0.1 -> max_norm 0.5 -> g scaled by 0.05
    w = _p([3.0, 4.0], [6.0, 8.0])
    stats = AdaptiveGradClip([w], clipping=0.1).apply()
    torch.testing.assert_close(w.grad, torch.tensor([0.3, 0.4], dtype=F64))
    assert stats["scale"].item() == pytest.approx(0.05)


def test_agc_zero_weight_uses_eps_floor_and_small_gradient_untouched():
    # w = 0: max_norm = λ · max(0, 1e-3) = 1e-4; ‖g‖ = 5 -> scaled to norm 1e-4
    zero = _p([0.0, 0.0], [3.0, 4.0])
    # ‖g‖ = 0.01 < λ‖w‖ = 0.5: untouched
    small = _p([3.0, 4.0], [0.006, 0.008])
    AdaptiveGradClip([zero, small], clipping=0.1, eps=1e-3).apply()
    torch.testing.assert_close(zero.grad, torch.tensor([6e-5, 8e-5], dtype=F64))
    torch.testing.assert_close(small.grad, torch.tensor([0.006, 0.008], dtype=F64))


def test_agc_unitwise_vs_per_tensor():
    w_values = [[3.0, 4.0], [0.3, 0.4]]
    g_values = [[6.0, 8.0], [0.006, 0.008]]
    # unit-wise (per output row): row 0 max_norm 0.5, ‖g‖ = 10 -> ×0.05; row 1 max_norm 0.05,
    # ‖g‖ = 0.01 -> untouched
    w = _p(w_values, g_values)
    stats = AdaptiveGradClip([w], clipping=0.1, unitwise=True).apply()
    torch.testing.assert_close(w.grad, torch.tensor([[0.3, 0.4], [0.006, 0.008]], dtype=F64))
    assert stats["scale"].item() == pytest.approx(0.05)
    # per tensor: ‖W‖ = sqrt(25.25), ‖G‖ = sqrt(100.0001) -> one factor for both rows
    w = _p(w_values, g_values)
    AdaptiveGradClip([w], clipping=0.1).apply()
    factor = 0.1 * math.sqrt(25.25) / math.sqrt(100.0001)
    expected = torch.tensor(g_values, dtype=F64) * factor
    torch.testing.assert_close(w.grad, expected)


def test_unitwise_norm_shapes():
    assert unitwise_norm(torch.ones(3, 4)).shape == (3, 1)
    assert unitwise_norm(torch.ones(5)).shape == (1,)
    assert unitwise_norm(torch.ones(2, 3, 4, 4)).shape == (2, 1, 1, 1)
    assert unitwise_norm(torch.full((3, 4), 2.0))[0, 0].item() == pytest.approx(4.0)


def test_transforms_skip_sparse_and_missing_gradients():
    emb = torch.nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().mul(100).backward()
    dense = _p([1.0], [50.0])
    no_grad = _p([1.0])
    before = emb.weight.grad.to_dense().clone()
    t = GradNormClip([emb.weight, dense, no_grad], max_norm=1.0, per_tensor=True)
    stats = t.apply()
    assert torch.equal(emb.weight.grad.to_dense(), before)
    assert dense.grad.item() == pytest.approx(1.0)
    assert stats["scale"].shape == (1,)
    assert GradNormClip([no_grad]).apply() == {}


def test_transform_apply_accepts_other_params():
    kept = _p([1.0], [50.0])
    other = _p([1.0], [50.0])
    t = GradNormClip([kept], max_norm=1.0)
    t.apply([other])
    assert kept.grad.item() == 50.0 and other.grad.item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (GradNormClip, dict(max_norm=0.0)),
        (GradNormClip, dict(max_norm=-1.0)),
        (AdaptiveGradClip, dict(clipping=0.0)),
        (AdaptiveGradClip, dict(clipping=0.1, eps=-1.0)),
    ],
)
def test_transform_bad_arguments(cls, kw):
    with pytest.raises(OptimizerArgumentError):
        cls([_p([1.0])], **kw)


# -- LAMB-style Adagrad ---------------------------------------------------------------------------


def test_lamb_adagrad_hand_step():
    # A = [1.1, 0.1]; r = [1/sqrt(1.1), 0]; ‖w‖ = 5, ‖r‖ = 1/sqrt(1.1)
    # update = η μ (‖w‖/‖r‖) r = 1 · 0.1 · 5 · [1, 0]
    w = _p([3.0, 4.0])
    opt = LambAdagrad([w], lr=1.0, mu=0.1)
    w.grad = torch.tensor([1.0, 0.0], dtype=F64)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([2.5, 4.0], dtype=F64))
    assert opt.state[w]["trust_ratio"].item() == pytest.approx(5 * math.sqrt(1.1))


def test_lamb_adagrad_zero_weight_and_zero_gradient():
    # ‖w‖ = 0 -> trust ratio 1: plain Adagrad step scaled by μ
    w = _p([0.0, 0.0])
    opt = LambAdagrad([w], lr=1.0, mu=0.1)
    w.grad = torch.tensor([1.0, -1.0], dtype=F64)
    opt.step()
    r = 1 / math.sqrt(1.1)
    torch.testing.assert_close(w.detach(), torch.tensor([-0.1 * r, 0.1 * r], dtype=F64))
    assert opt.state[w]["trust_ratio"].item() == 1.0
    v = _p([1.0, 2.0])
    opt = LambAdagrad([v], lr=1.0)
    v.grad = torch.zeros(2, dtype=F64)
    opt.step()
    torch.testing.assert_close(v.detach(), torch.tensor([1.0, 2.0], dtype=F64))


def test_lamb_adagrad_refuses_sparse():
    emb = torch.nn.Embedding(3, 2, sparse=True)
    opt = LambAdagrad([emb.weight], lr=0.1)
    emb(torch.tensor([0])).sum().backward()
    with pytest.raises(OptimizerArgumentError, match="dense"):
        opt.step()


# -- make_optimizer -------------------------------------------------------------------------------


EXPECTED = {
    "adagrad": (torch.optim.Adagrad, None),
    "adam": (torch.optim.Adam, None),
    "sgd": (torch.optim.SGD, None),
    "clippy": (ClippyAdagrad, None),
    "clippy-paper": (ClippyAdagrad, None),
    "clippy-tfrs": (ClippyAdagrad, None),
    "adagrad+gradclip": (torch.optim.Adagrad, GradNormClip),
    "adagrad+gradclip-layer": (torch.optim.Adagrad, GradNormClip),
    "adagrad+agc": (torch.optim.Adagrad, AdaptiveGradClip),
    "adagrad+agc-unitwise": (torch.optim.Adagrad, AdaptiveGradClip),
    "adagrad+lamb": (LambAdagrad, None),
}


def test_names_are_documented():
    assert set(OPTIMIZER_NAMES) == set(EXPECTED)
    assert set(describe_optimizers()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_make_optimizer_builds_and_trains(name):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt, transform = make_optimizer(name, model.parameters(), lr=0.05)  # a generator is fine
    opt_cls, tr_cls = EXPECTED[name]
    assert type(opt) is opt_cls
    assert (transform is None) if tr_cls is None else isinstance(transform, tr_cls)
    assert opt.param_groups[0]["lr"] == 0.05
    x = torch.randn(64, 4)
    y = x.sum(dim=1, keepdim=True)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        if transform is not None:
            transform.apply()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_make_optimizer_settings():
    params = [_p([1.0, 2.0])]
    opt, _ = make_optimizer("adagrad", params, lr=0.1)
    assert opt.param_groups[0]["initial_accumulator_value"] == 0.1
    opt, _ = make_optimizer("clippy", params, lr=0.1)
    assert opt.param_groups[0]["accumulator_order"] == "paper"
    assert opt.param_groups[0]["lambda_rel"] == 0.5
    opt, _ = make_optimizer("clippy-tfrs", params, lr=0.1, lambda_acc=1e-3)
    g = opt.param_groups[0]
    assert g["accumulator_order"] == "tfrs_delayed"
    assert (g["lambda_abs"], g["lambda_acc"]) == (1e-7, 1e-3)
    opt, tr = make_optimizer("ADAGRAD+gradclip", params, lr=0.1, max_norm=0.5, weight_decay=0.01)
    assert tr.max_norm == 0.5 and not tr.per_tensor
    assert opt.param_groups[0]["weight_decay"] == 0.01
    _, tr = make_optimizer("adagrad+gradclip-layer", params, lr=0.1)
    assert tr.per_tensor and tr.max_norm == 0.1
    _, tr = make_optimizer("adagrad+agc-unitwise", params, lr=0.1, clipping=1e-3, agc_eps=1e-4)
    assert (tr.unitwise, tr.clipping, tr.eps) == (True, 1e-3, 1e-4)
    opt, _ = make_optimizer("adagrad+lamb", params, lr=0.1, mu=0.5)
    assert opt.param_groups[0]["mu"] == 0.5


def test_make_optimizer_errors():
    params = [_p([1.0])]
    with pytest.raises(OptimizerArgumentError) as info:
        make_optimizer("adamw-ish", params, lr=0.1)
    msg = str(info.value)
    assert "adamw-ish" in msg and all(n in msg for n in OPTIMIZER_NAMES)
    assert isinstance(info.value, ReprokitError)
    with pytest.raises(OptimizerArgumentError, match="momentum_typo"):
        make_optimizer("sgd", params, lr=0.1, momentum_typo=0.9)
    with pytest.raises(OptimizerArgumentError, match="lr"):
        make_optimizer("adam", params, lr=-1.0)
    with pytest.raises(OptimizerArgumentError, match="empty"):
        make_optimizer("adam", [], lr=0.1)
    with pytest.raises(OptimizerArgumentError):
        make_optimizer("clippy", params, lr=0.1, lambda_abs=0.0)
