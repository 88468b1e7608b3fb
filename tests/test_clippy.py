"""ClippyAdagrad against hand computations, the TFRS test vectors (docs/methods.md §3.3) and a
literal transcription of the paper's Algorithm 1."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from reprokit.errors import ReprokitError
from reprokit.optim import (
    PRESETS,
    ClippyAdagrad,
    OptimizerArgumentError,
    _common,
    shrink_by_references,
)

F64 = torch.float64


def _param(values, dtype=F64) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def _step(opt, params, grads):
    for p, g in zip(params, grads, strict=True):
        p.grad = torch.as_tensor(g, dtype=p.dtype).clone()
    opt.step()


# -- paper mode (Algorithm 1), hand computations --------------------------------------------------


def test_paper_step_clipped_moves_the_binding_coordinate_by_its_bound():
    # A = 0.1 + 0.25 = 0.35, r = 0.5/sqrt(0.35) = 0.845154...,
    # bounds b = 0.5|w| + 0.01 = [0.51, 1.01];
    # coordinate 0 binds: σ = 0.51 / 0.845154 = 0.603440..., so it moves by exactly 0.51.
    w = _param([1.0, -2.0])
    opt = ClippyAdagrad([w], lr=1.0)  # defaults = paper preset
    _step(opt, [w], [[0.5, 0.5]])
    r = 0.5 / math.sqrt(0.35)
    sigma = 0.51 / r
    assert sigma == pytest.approx(0.6034401, rel=1e-6)
    torch.testing.assert_close(w.detach(), torch.tensor([0.49, -2.0 - sigma * r], dtype=F64))
    assert w.detach()[1].item() == pytest.approx(-2.51)
    torch.testing.assert_close(opt.state[w]["accumulator"], torch.tensor([0.35, 0.35], dtype=F64))
    assert opt.last_sigma[0].item() == pytest.approx(sigma)
    assert opt.last_update_ratio[0].item() == pytest.approx(r / 0.51)
    assert opt.last_sigma[0].ndim == 0


def test_paper_step_unclipped_is_plain_adagrad_with_updated_accumulator():
    w = _param([1.0, 2.0])
    opt = ClippyAdagrad([w], lr=0.1)
    _step(opt, [w], [[0.01, -0.02]])
    # A = [0.1001, 0.1004]; Δ = 0.1 g / sqrt(A) = [0.0031607, -0.0063120];
    # bounds 0.51, 1.01 -> σ = 1
    expected = torch.tensor(
        [1.0 - 0.001 / math.sqrt(0.1001), 2.0 + 0.002 / math.sqrt(0.1004)], dtype=F64
    )
    torch.testing.assert_close(w.detach(), expected)
    assert expected[0].item() == pytest.approx(0.9968393, abs=1e-7)
    assert opt.last_sigma[0].item() == 1.0
    # Clippy's L∞ measure max_j |Δ_j|/b_j: coordinate 1 (0.0063120/1.01) beats 0 (0.0031607/0.51)
    assert opt.last_update_ratio[0].item() == pytest.approx((0.002 / math.sqrt(0.1004)) / 1.01)


def _algorithm1(w, grads, lr, lam_rel, lam_abs, acc0):
    """Algorithm 1 of Tang et al. transcribed literally with Python floats."""
    w = list(w)
    acc = [acc0] * len(w)
    sigmas = []
    for g in grads:
        acc = [a + gi * gi for a, gi in zip(acc, g, strict=True)]
        r = [gi / math.sqrt(a) for gi, a in zip(g, acc, strict=True)]
        cands = [
            (lam_rel * abs(wj) + lam_abs) / (lr * abs(rj))
            for wj, rj in zip(w, r, strict=True)
            if rj != 0
        ]
        sigma = min([1.0, *cands])
        sigmas.append(sigma)
        w = [wj - lr * sigma * rj for wj, rj in zip(w, r, strict=True)]
    return w, sigmas


@pytest.mark.parametrize("foreach", [False, True])
def test_paper_mode_matches_literal_algorithm_over_several_steps(foreach):
    w0 = [0.3, -1.2, 0.0, 2.5]
    grads = [[1.0, 0.2, -3.0, 0.0], [0.5, -0.5, 0.1, 4.0], [0.0] * 4, [-2.0, 1.0, 1.0, 1]]
    w = _param(w0)
    opt = ClippyAdagrad([w], lr=0.7, foreach=foreach)
    got_sigmas = []
    for g in grads:
        _step(opt, [w], [g])
        got_sigmas.append(opt.last_sigma[0].item())
    want_w, want_sigmas = _algorithm1(w0, grads, 0.7, 0.5, 1e-2, 0.1)
    torch.testing.assert_close(w.detach(), torch.tensor(want_w, dtype=F64), rtol=1e-12, atol=1e-12)
    assert got_sigmas == pytest.approx(want_sigmas, rel=1e-12)
    assert min(want_sigmas) < 1.0 and want_sigmas[2] == 1.0  # clipping happened; zero grad -> 1


def test_never_binding_thresholds_reduce_to_torch_adagrad():
    torch.manual_seed(0)
    w_c = torch.nn.Parameter(torch.randn(5, 3, dtype=F64))
    w_a = torch.nn.Parameter(w_c.detach().clone())
    clippy = ClippyAdagrad([w_c], lr=0.05, lambda_abs=1e6)
    adagrad = torch.optim.Adagrad([w_a], lr=0.05, initial_accumulator_value=0.1, eps=0.0)
    for _ in range(4):
        g = torch.randn(5, 3, dtype=F64)
        _step(clippy, [w_c], [g])
        _step(adagrad, [w_a], [g])
        assert clippy.last_sigma[0].item() == 1.0
    torch.testing.assert_close(w_c.detach(), w_a.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_zero_gradient_leaves_everything_unchanged_and_sigma_one(preset):
    w = _param([[0.0, 1.0], [-2.0, 0.0]])
    opt = ClippyAdagrad.from_preset(preset, [w], lr=0.3)
    _step(opt, [w], [[[0.0, 0.0], [0.0, 0.0]]])
    torch.testing.assert_close(w.detach(), torch.tensor([[0.0, 1.0], [-2.0, 0.0]], dtype=F64))
    torch.testing.assert_close(opt.state[w]["accumulator"], torch.full((2, 2), 0.1, dtype=F64))
    assert opt.last_sigma[0].item() == 1.0
    assert opt.last_update_ratio[0].item() == 0.0


def test_zero_weights_are_bounded_by_lambda_abs_paper():
    # A = 1.1, Δ = 1/sqrt(1.1) = 0.9535; b = λ_abs = 0.01 everywhere -> each weight moves by 0.01
    w = _param([0.0, 0.0, 0.0])
    opt = ClippyAdagrad([w], lr=1.0)
    _step(opt, [w], [[1.0, 1.0, -1.0]])
    torch.testing.assert_close(w.detach(), torch.tensor([-0.01, -0.01, 0.01], dtype=F64))
    assert opt.last_sigma[0].item() == pytest.approx(0.01 * math.sqrt(1.1))


def test_zero_weights_are_bounded_by_lambda_abs_tfrs():
    # delayed: P = 1/sqrt(0.1 + 1e-7), Δ = 3.162..., b = 1e-7 -> moves by 1e-7, A becomes 0.1 + 1
    w = _param([0.0, 0.0])
    opt = ClippyAdagrad.from_preset("tfrs", [w], lr=1.0)
    _step(opt, [w], [[1.0, -1.0]])
    torch.testing.assert_close(w.detach(), torch.tensor([-1e-7, 1e-7], dtype=F64))
    torch.testing.assert_close(opt.state[w]["accumulator"], torch.tensor([1.1, 1.1], dtype=F64))
    assert torch.isfinite(opt.last_sigma[0])
    assert opt.last_sigma[0].item() == pytest.approx(1e-7 * math.sqrt(0.1 + 1e-7))


def test_each_tensor_gets_its_own_sigma():
    # weight clipped (σ = 0.51/r as in the first test), bias not: a shared σ would shrink
    # the bias too
    weight = _param([1.0, -2.0])
    bias = _param([5.0])
    opt = ClippyAdagrad([weight, bias], lr=1.0)
    _step(opt, [weight, bias], [[0.5, 0.5], [0.1]])
    r = 0.5 / math.sqrt(0.35)
    sig = opt.last_sigma
    assert sig[0].item() == pytest.approx(0.51 / r)
    # bias: A = 0.11, Δ = 0.1/sqrt(0.11) = 0.3015 < b = 2.51
    assert sig[1].item() == 1.0
    expected = torch.tensor([5.0 - 0.1 / math.sqrt(0.11)], dtype=F64)
    torch.testing.assert_close(bias.detach(), expected)


def test_last_sigma_uses_parameter_names():
    model = torch.nn.Linear(3, 2)
    opt = ClippyAdagrad(model.named_parameters(), lr=0.1)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    assert set(opt.last_sigma) == {"weight", "bias"}
    assert all(s.ndim == 0 for s in opt.last_sigma.values())


def test_weight_decay_is_added_to_the_gradient():
    # g_eff = 0.2 + 0.5 * 2 = 1.2; A = 0.1 + 1.44; Δ = 0.1 * 1.2 / sqrt(1.54) < bound 1.01
    w = _param([2.0])
    opt = ClippyAdagrad([w], lr=0.1, weight_decay=0.5)
    _step(opt, [w], [[0.2]])
    torch.testing.assert_close(w.detach(), torch.tensor([2.0 - 0.12 / math.sqrt(1.54)], dtype=F64))


def test_lr_zero_and_scheduler():
    w = _param([1.0, -2.0])
    opt = ClippyAdagrad([w], lr=0.0)
    _step(opt, [w], [[0.5, 0.5]])
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0], dtype=F64))
    assert opt.last_sigma[0].item() == 1.0
    # a scheduler edits group["lr"], and σ follows η (η is in the denominator of σ)
    w2 = _param([1.0, -2.0])
    opt2 = ClippyAdagrad([w2], lr=2.0)
    sched = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    opt2.step()  # no gradients yet: a no-op
    sched.step()
    assert opt2.param_groups[0]["lr"] == 1.0
    _step(opt2, [w2], [[0.5, 0.5]])
    assert opt2.last_sigma[0].item() == pytest.approx(0.51 / (0.5 / math.sqrt(0.35)))


def test_clip_false_group_is_plain_adagrad():
    w = _param([1.0, -2.0])
    opt = ClippyAdagrad([{"params": [w], "clip": False}], lr=1.0)
    _step(opt, [w], [[0.5, 0.5]])
    r = 0.5 / math.sqrt(0.35)
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - r, -2.0 - r], dtype=F64))
    assert opt.last_sigma[0].item() == 1.0


def test_lambda_acc_term_and_zero_lambda_rel():
    # λ_rel = 0, λ_acc = 0.02, λ_abs = 0.01, paper order: A = 1.1, P = 1/sqrt(1.1),
    # b = 0.02 P + 0.01, Δ = P -> σ = 0.02 + 0.01 sqrt(1.1)
    w = _param([3.0])
    opt = ClippyAdagrad([w], lr=1.0, lambda_rel=0.0, lambda_acc=0.02, lambda_abs=0.01)
    _step(opt, [w], [[1.0]])
    sigma = 0.02 + 0.01 * math.sqrt(1.1)
    assert opt.last_sigma[0].item() == pytest.approx(sigma)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0 - sigma / math.sqrt(1.1)], dtype=F64))
    # λ_rel = λ_acc = 0: the bound is λ_abs alone
    w = _param([3.0, 1.0])
    opt = ClippyAdagrad([w], lr=1.0, lambda_rel=0.0, lambda_abs=0.05)
    _step(opt, [w], [[1.0, 0.0]])
    torch.testing.assert_close(w.detach(), torch.tensor([2.95, 1.0], dtype=F64))


def test_sigma_matches_reference_shrink_on_random_tensors():
    torch.manual_seed(3)
    for order in ("paper", "tfrs_delayed"):
        w = torch.nn.Parameter(torch.randn(7, 5, dtype=F64))
        w0 = w.detach().clone()
        acc0 = 0.3
        opt = ClippyAdagrad(
            [w],
            lr=0.4,
            lambda_rel=0.2,
            lambda_abs=0.01,
            lambda_acc=0.05,
            eps=1e-3,
            initial_accumulator_value=acc0,
            accumulator_order=order,
        )
        g = torch.randn(7, 5, dtype=F64) * 3
        _step(opt, [w], [g])
        acc = acc0 + (g * g if order == "paper" else 0)
        p_inv = (acc + 1e-3) ** -0.5 * torch.ones_like(g)
        delta = 0.4 * g * p_inv
        clipped, scale = shrink_by_references(delta, [w0, p_inv], [0.2, 0.05], 0.01)
        assert scale.item() < 1
        assert opt.last_sigma[0].item() == pytest.approx(scale.item(), rel=1e-12)
        torch.testing.assert_close(w.detach(), w0 - clipped, rtol=1e-12, atol=1e-12)


def test_nan_gradient_is_not_silently_masked():
    w = _param([1.0, 2.0])
    opt = ClippyAdagrad([w], lr=0.1)
    _step(opt, [w], [[float("nan"), 0.1]])
    assert torch.isnan(opt.last_sigma[0])


# -- TFRS semantics: the test vectors of clippy_adagrad_test.py (docs/methods.md §3.3) -----------


def _tfrs_setup(sparse_emb: bool = True, **kw):
    var = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    emb = torch.nn.Embedding(2, 2, sparse=sparse_emb)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 2.0]]))
    opt = ClippyAdagrad.from_preset("tfrs", [var, emb.weight], clip_sparse=True, **kw)
    return var, emb, opt


def _tfrs_grads(var, emb, g):
    var.grad = torch.tensor(g)
    emb.weight.grad = None
    (emb(torch.tensor([1])) * torch.tensor(g)).sum().backward()  # row 1 only


@pytest.mark.parametrize("foreach", [False, True])
def test_tfrs_no_clip(foreach):
    var, emb, opt = _tfrs_setup(lr=0.1, initial_accumulator_value=0.01, foreach=foreach)
    _tfrs_grads(var, emb, [0.1, 0.15])
    opt.step()
    torch.testing.assert_close(var.detach(), torch.tensor([0.9, 1.85]), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.weight.detach()[1], torch.tensor([0.9, 1.85]), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.weight.detach()[0], torch.tensor([3.0, 4.0]))
    acc = torch.tensor([0.01 + 0.1**2, 0.01 + 0.15**2])
    torch.testing.assert_close(opt.state[var]["accumulator"], acc)
    torch.testing.assert_close(opt.state[emb.weight]["accumulator"][1], acc)
    torch.testing.assert_close(opt.state[emb.weight]["accumulator"][0], torch.tensor([0.01, 0.01]))
    assert [s.item() for s in opt.last_sigma.values()] == [1.0, 1.0]


TFRS_CLIP = dict(
    lr=0.2, initial_accumulator_value=0.01, lambda_rel=0.4, lambda_acc=0.01, lambda_abs=0.1, eps=0.0
)


@pytest.mark.parametrize("foreach", [False, True])
def test_tfrs_clip(foreach):
    var, emb, opt = _tfrs_setup(foreach=foreach, **TFRS_CLIP)
    _tfrs_grads(var, emb, [10.0, 10.0])
    opt.step()
    # bound at w=1: 0.4 + 0.01/0.1 + 0.1 = 0.6; Δ = 0.2 * 10 / 0.1 = 20 -> σ = 0.03
    for w in (var.detach(), emb.weight.detach()[1]):
        torch.testing.assert_close(w, torch.tensor([0.4, 1.4]))
    torch.testing.assert_close(opt.state[var]["accumulator"], torch.full((2,), 100.01))
    torch.testing.assert_close(opt.state[emb.weight]["accumulator"][1], torch.full((2,), 100.01))
    for s in opt.last_sigma.values():
        assert s.item() == pytest.approx(0.6 * 0.1 / (10 * 0.2), rel=1e-6)


def test_tfrs_clip_accumulator_update():
    var, emb, opt = _tfrs_setup(clip_accumulator_update=True, **TFRS_CLIP)
    _tfrs_grads(var, emb, [10.0, 10.0])
    opt.step()
    torch.testing.assert_close(var.detach(), torch.tensor([0.4, 1.4]))
    acc = torch.full((2,), 0.01 + (0.03 * 10) ** 2)
    torch.testing.assert_close(opt.state[var]["accumulator"], acc)
    torch.testing.assert_close(opt.state[emb.weight]["accumulator"][1], acc)


def test_tfrs_standard_accumulator_update():
    var, emb, opt = _tfrs_setup(lr=0.1, initial_accumulator_value=0.0, accumulator_order="paper")
    _tfrs_grads(var, emb, [0.1, 0.15])
    opt.step()
    torch.testing.assert_close(var.detach(), torch.tensor([0.9, 1.9]), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.weight.detach()[1], torch.tensor([0.9, 1.9]), atol=1e-5, rtol=0)
    torch.testing.assert_close(opt.state[var]["accumulator"], torch.tensor([0.01, 0.0225]))
    assert [s.item() for s in opt.last_sigma.values()] == [1.0, 1.0]


def test_tfrs_config_round_trip_keeps_accumulator_order():
    # TFRS's get_config() forgets use_standard_accumulator_update; our state_dict must not.
    var, emb, opt = _tfrs_setup(lr=0.1, accumulator_order="paper", lambda_acc=1e-3)
    fresh = ClippyAdagrad([var, emb.weight], lr=0.5)  # paper defaults
    fresh.load_state_dict(opt.state_dict())
    g = fresh.param_groups[0]
    assert g["accumulator_order"] == "paper"
    assert (g["lr"], g["lambda_rel"], g["lambda_abs"], g["lambda_acc"], g["eps"]) == (
        0.1,
        0.1,
        1e-7,
        1e-3,
        1e-7,
    )
    assert g["initial_accumulator_value"] == 0.1 and g["clip_sparse"] is True


# shrink_by_references: TFRS scalar / tensor cases


@pytest.mark.parametrize(
    ("t", "ref", "rel", "abs_", "value", "scale"),
    [
        (2.0, 4.0, 0.1, 0.02, 0.42, 0.21),
        (2.0, -4.0, 0.1, 0.02, 0.42, 0.21),
        (-2.0, 4.0, 0.1, 0.02, -0.42, 0.21),
        (-2.0, 4.0, 0.1, 0.0, -0.4, 0.2),
        (2.0, 0.0, 0.1, 0.0, 0.0, 0.0),
        (2.0, 20.0, 0.1, 0.1, 2.0, 1.0),
        (0.0, 0.0, 0.1, 0.0, 0.0, 1.0),
    ],
)
def test_shrink_scalar_cases(t, ref, rel, abs_, value, scale):
    v, s = shrink_by_references(torch.tensor(t, dtype=F64), [ref], [rel], abs_)
    assert v.item() == pytest.approx(value)
    assert s.item() == pytest.approx(scale)


def test_shrink_multiple_and_empty_references():
    v, s = shrink_by_references(torch.tensor(2.0, dtype=F64), [4.0, -5.0], [0.1, 0.2], 0.02)
    assert (v.item(), s.item()) == pytest.approx((1.42, 0.71))
    v, s = shrink_by_references(torch.tensor(2.0, dtype=F64), absolute_factor=0.02)
    assert (v.item(), s.item()) == pytest.approx((0.02, 0.01))
    v, s = shrink_by_references(torch.tensor(0.0, dtype=F64), absolute_factor=0.0)
    assert (v.item(), s.item()) == (0.0, 1.0)
    with pytest.raises(OptimizerArgumentError):
        shrink_by_references(torch.tensor(1.0), [1.0], [0.1, 0.2])


def test_shrink_tensor_cases():
    t = torch.tensor([1.0, 1.0], dtype=F64)
    v, s = shrink_by_references(t, [torch.tensor([1.0, 0.1], dtype=F64)], [0.1], 0.01)
    assert s.item() == pytest.approx(0.02)
    torch.testing.assert_close(v, torch.tensor([0.02, 0.02], dtype=F64))
    t = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    _, s = shrink_by_references(t, [torch.tensor([1.0, 0.1, 1.0, 0.0], dtype=F64)], [0.1], 0.0)
    assert s.item() == pytest.approx(0.01)
    v, s = shrink_by_references(t, [torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)], [0.1], 0.0)
    assert s.item() == 0.0 and torch.equal(v, torch.zeros(4, dtype=F64))
    t = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64)
    _, s = shrink_by_references(t, [1.0], [0.1], 0.1)
    assert s.item() == pytest.approx(0.1)


# -- sparse (embedding) gradients -----------------------------------------------------------------


def _embedding_pair(sparse_kw):
    torch.manual_seed(5)
    weight = torch.randn(6, 3, dtype=F64) * 0.5
    embs = []
    for sparse in (True, False):
        e = torch.nn.Embedding(6, 3, sparse=sparse, dtype=F64)
        with torch.no_grad():
            e.weight.copy_(weight)
        embs.append(e)
    opts = [ClippyAdagrad([e.weight], lr=0.8, **sparse_kw) for e in embs]
    return embs, opts


@pytest.mark.parametrize("order", ["paper", "tfrs_delayed"])
def test_sparse_clipping_equals_dense_embedding(order):
    # duplicate index 1 exercises coalescing; untouched rows have Δ = 0 so the dense σ equals the
    # touched-rows-only σ, and both paths must agree
    (e_sp, e_de), (o_sp, o_de) = _embedding_pair(
        dict(clip_sparse=True, accumulator_order=order, lambda_rel=0.1, lambda_abs=1e-3)
    )
    idx_batches = [torch.tensor([1, 4, 1]), torch.tensor([0, 4]), torch.tensor([5, 5, 5, 2])]
    for idx in idx_batches:
        for e, o in ((e_sp, o_sp), (e_de, o_de)):
            o.zero_grad()
            (e(idx) * torch.arange(1.0, 4.0, dtype=F64)).sum().mul(3).backward()
            o.step()
        assert e_sp.weight.grad.is_sparse and not e_de.weight.grad.is_sparse
        assert o_sp.last_sigma[0].item() == pytest.approx(o_de.last_sigma[0].item(), rel=1e-12)
        assert o_sp.last_sigma[0].item() < 1.0
    torch.testing.assert_close(e_sp.weight.detach(), e_de.weight.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        o_sp.state[e_sp.weight]["accumulator"], o_de.state[e_de.weight]["accumulator"]
    )


def test_sparse_hand_computed_rows_only():
    # rows 0 and 2 touched (row 0 twice: g = 2); untouched row 1 has tiny weights that would not
    # matter anyway (Δ = 0). paper order, lr 1, λ_rel 0.5, λ_abs 0.01, A0 0.1:
    # row 0: g = [2, 2], A = 4.1, Δ = 2/sqrt(4.1) = 0.98773, w = [1, 1] -> b = 0.51 (binding)
    # row 2: g = [1, 1], A = 1.1, Δ = 0.95346, w = [4, 4] -> b = 2.01
    emb = torch.nn.Embedding(3, 2, sparse=True, dtype=F64)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1.0, 1.0], [1e-6, 1e-6], [4.0, 4.0]]))
    opt = ClippyAdagrad([emb.weight], lr=1.0, clip_sparse=True)
    emb(torch.tensor([0, 2, 0])).sum().backward()
    opt.step()
    d0, d2 = 2 / math.sqrt(4.1), 1 / math.sqrt(1.1)
    sigma = 0.51 / d0
    assert opt.last_sigma[0].item() == pytest.approx(sigma)
    expected = torch.tensor([[0.49, 0.49], [1e-6, 1e-6], [4 - sigma * d2] * 2], dtype=F64)
    torch.testing.assert_close(emb.weight.detach(), expected)
    acc = torch.tensor([[4.1, 4.1], [0.1, 0.1], [1.1, 1.1]], dtype=F64)
    torch.testing.assert_close(opt.state[emb.weight]["accumulator"], acc)


def test_sparse_is_not_clipped_by_default():
    # clip_sparse=False (the paper's default): plain Adagrad on the rows, as torch's sparse Adagrad
    torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default; silences its warning
    emb = torch.nn.Embedding(3, 2, sparse=True, dtype=F64)
    ref = torch.nn.Embedding(3, 2, sparse=True, dtype=F64)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0], [4.0, 4.0]]))
        ref.weight.copy_(emb.weight)
    opt = ClippyAdagrad([emb.weight], lr=1.0)
    ref_opt = torch.optim.Adagrad([ref.weight], lr=1.0, initial_accumulator_value=0.1, eps=0.0)
    for e, o in ((emb, opt), (ref, ref_opt)):
        e(torch.tensor([0, 2, 0])).sum().backward()
        o.step()
    torch.testing.assert_close(emb.weight.detach(), ref.weight.detach())
    assert emb.weight.detach()[0, 0].item() == pytest.approx(1 - 2 / math.sqrt(4.1))
    assert opt.last_sigma[0].item() == 1.0


def test_sparse_with_weight_decay_is_refused():
    emb = torch.nn.Embedding(3, 2, sparse=True)
    opt = ClippyAdagrad([emb.weight], lr=0.1, weight_decay=0.1)
    emb(torch.tensor([0])).sum().backward()
    with pytest.raises(OptimizerArgumentError, match="sparse"):
        opt.step()


# -- foreach == per-tensor, state_dict -----------------------------------------------------------


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3), torch.nn.Linear(3, 1)
    )


CONFIGS = [
    dict(),
    dict(accumulator_order="tfrs_delayed", lambda_rel=0.1, lambda_abs=1e-4, eps=1e-7),
    dict(
        accumulator_order="tfrs_delayed",
        clip_accumulator_update=True,
        lambda_acc=1e-3,
        weight_decay=0.01,
        eps=1e-6,
    ),
    dict(lambda_rel=0.0, lambda_acc=0.01),
    dict(lambda_rel=0.0),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_foreach_equals_per_tensor_bitwise(cfg, monkeypatch):
    """Three paths, identical numbers: the CPU per-tensor path (scratch buffers), and, with the
    accelerator code paths forced on CPU tensors, the per-tensor path without scratch buffers
    and the foreach path (torch._foreach_* ops, foreach norm/div)."""
    accelerator = {"on": False}
    real_on_cpu = _common.on_cpu
    monkeypatch.setattr(_common, "on_cpu", lambda t: False if accelerator["on"] else real_on_cpu(t))
    arms = [(False, False), (True, False), (True, True)]  # (accelerator paths, foreach)
    models = [_model() for _ in arms]
    opts = [
        ClippyAdagrad(m.parameters(), lr=0.5, foreach=fe, **cfg)
        for m, (_, fe) in zip(models, arms, strict=True)
    ]
    torch.manual_seed(1)
    batches = [(torch.randn(16, 6) * 4, torch.randn(16, 1)) for _ in range(5)]
    clipped = 0
    for x, y in batches:
        for m, o, (acc_paths, _) in zip(models, opts, arms, strict=True):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            accelerator["on"] = acc_paths
            o.step()
            accelerator["on"] = False
        ref = opts[0].last_sigma
        for o in opts[1:]:
            assert o.last_sigma.keys() == ref.keys()
            assert all(torch.equal(o.last_sigma[k], ref[k]) for k in ref)
        clipped += sum(int(v.item() < 1) for v in ref.values())
    assert clipped > 0  # the comparison covered clipping steps
    assert isinstance(opts[2].state[next(models[2].parameters())]["sigma"], torch.Tensor)
    for m, o in zip(models[1:], opts[1:], strict=True):
        for p0, p1 in zip(models[0].parameters(), m.parameters(), strict=True):
            assert torch.equal(p0, p1)
            assert torch.equal(opts[0].state[p0]["accumulator"], o.state[p1]["accumulator"])


def test_foreach_path_is_taken_on_accelerators(monkeypatch):
    from reprokit.optim import clippy as clippy_module

    calls = []
    real = clippy_module._foreach_dense

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(clippy_module, "_foreach_dense", spy)
    model = _model()
    opt = ClippyAdagrad(model.parameters(), lr=0.1)  # foreach=None
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    assert calls == []  # CPU: per-tensor path
    monkeypatch.setattr(_common, "on_cpu", lambda t: False)
    opt.step()
    assert calls == [6]  # one foreach call over the group's 6 tensors
    ClippyAdagrad(model.parameters(), lr=0.1, foreach=False).step()
    assert calls == [6]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_state_dict_round_trip_continues_identically(preset):
    model = _model()
    opt = ClippyAdagrad.from_preset(preset, model.parameters(), lr=0.3)
    torch.manual_seed(2)
    data = [(torch.randn(8, 6) * 3, torch.randn(8, 1)) for _ in range(4)]

    def train(m, o, batches):
        for x, y in batches:
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()

    train(model, opt, data[:2])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    model2 = _model(seed=99)
    model2.load_state_dict(saved["model"])
    opt2 = ClippyAdagrad(model2.parameters(), lr=123.0)  # hyperparameters come from the dict
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["accumulator_order"] == PRESETS[preset].accumulator_order
    assert opt2.param_groups[0]["lr"] == 0.3
    train(model, opt, data[2:])
    train(model2, opt2, data[2:])
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)
    s1, s2 = opt.last_sigma, opt2.last_sigma
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd["state"][0]) >= {"accumulator", "sigma"}


# -- presets and argument checking ---------------------------------------------------------------


def test_presets_match_reference_section_5():
    p = ClippyAdagrad.from_preset("paper", [_param([1.0])], lr=0.1).param_groups[0]
    assert (p["accumulator_order"], p["lambda_rel"], p["lambda_abs"]) == ("paper", 0.5, 1e-2)
    assert p["initial_accumulator_value"] == 0.1 and p["lambda_acc"] == 0.0
    t = ClippyAdagrad.from_preset("TFRS", [_param([1.0])], lr=0.1).param_groups[0]
    assert (t["accumulator_order"], t["lambda_rel"], t["lambda_abs"]) == ("tfrs_delayed", 0.1, 1e-7)
    assert (t["lambda_acc"], t["initial_accumulator_value"], t["eps"]) == (0.0, 0.1, 1e-7)
    o = ClippyAdagrad.from_preset("tfrs", [_param([1.0])], lr=0.1, lambda_rel=0.3)
    assert o.param_groups[0]["lambda_rel"] == 0.3


@pytest.mark.parametrize(
    "kw",
    [
        dict(lambda_abs=0.0),
        dict(lambda_abs=-1.0),
        dict(lambda_rel=-0.1),
        dict(lr=-1.0),
        dict(eps=-1e-8),
        dict(initial_accumulator_value=0.0, eps=0.0),
        dict(accumulator_order="tfrs"),
        dict(clip_accumulator_update=True),  # needs tfrs_delayed
        dict(foreach="yes"),
        dict(lambda_rel=float("nan")),
        dict(lr=torch.tensor(0.1)),
        dict(lambda_abs=torch.tensor(0.1)),
    ],
)
def test_bad_arguments_raise(kw):
    with pytest.raises(OptimizerArgumentError) as info:
        ClippyAdagrad([_param([1.0])], **kw)
    assert isinstance(info.value, ValueError) and isinstance(info.value, ReprokitError)


def test_bad_param_group_and_preset():
    opt = ClippyAdagrad([_param([1.0])])
    with pytest.raises(OptimizerArgumentError):
        opt.add_param_group({"params": [_param([2.0])], "lambda_abs": 0.0})
    with pytest.raises(OptimizerArgumentError, match="paper"):
        ClippyAdagrad.from_preset("nope", [_param([1.0])], lr=0.1)
