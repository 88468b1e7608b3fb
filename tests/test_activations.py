"""Activation functions and modules: reference values, gradients, continuity, numerics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import reprokit.nn as rnn
from reprokit.errors import ReprokitError
from reprokit.nn import functional as RF

# ----------------------------------------------------------------------------------------------
# Independent numpy references (piecewise, straight from the formulas in docs/methods.md §2)
# ----------------------------------------------------------------------------------------------


def np_smelu(x, beta=1.0):
    return np.piecewise(
        x,
        [x <= -beta, np.abs(x) < beta, x >= beta],
        [0.0, lambda v: (v + beta) ** 2 / (4 * beta), lambda v: v],
    )


def np_smelu_grad(x, beta=1.0):
    return np.piecewise(
        x, [x <= -beta, np.abs(x) < beta, x >= beta], [0.0, lambda v: (v + beta) / (2 * beta), 1.0]
    )


def np_gsmelu(x, alpha, beta, g, t):
    return np.piecewise(
        x,
        [x <= -alpha, (x > -alpha) & (x < beta), x >= beta],
        [
            t,
            lambda v: g * (v + alpha) ** 2 / (2 * (alpha + beta)) + t,
            lambda v: g * v + g * (alpha - beta) / 2 + t,
        ],
    )


def np_gsmelu_grad(x, alpha, beta, g):
    return np.piecewise(
        x,
        [x <= -alpha, (x > -alpha) & (x < beta), x >= beta],
        [0.0, lambda v: g * (v + alpha) / (alpha + beta), g],
    )


_erf = np.vectorize(math.erf)


def np_sigmoid(v):
    return 0.5 * (1 + np.tanh(v / 2))


REFERENCES = {
    "relu": lambda x: np.maximum(x, 0),
    "smelu:beta=0.7": lambda x: np_smelu(x, 0.7),
    "gsmelu:alpha=0.5,beta=1.5,g=2,t=-0.25": lambda x: np_gsmelu(x, 0.5, 1.5, 2.0, -0.25),
    "smelu_learnable:beta=0.8": lambda x: np_smelu(x, 0.8),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "swish:beta=2": lambda x: x * np_sigmoid(2 * x),
    "silu": lambda x: x * np_sigmoid(x),
    "softplus:beta=2": lambda x: np.log1p(np.exp(2 * x)) / 2,
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "tanhexp": lambda x: x * np.tanh(np.exp(x)),
    "elu:alpha=0.5": lambda x: np.where(x > 0, x, 0.5 * np.expm1(x)),
    "selu": lambda x: (
        1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0)))
    ),
    "leaky_relu:negative_slope=0.2": lambda x: np.where(x >= 0, x, 0.2 * x),
}

ALL_SPECS = list(REFERENCES)


def grid(lo=-4.0, hi=4.0, n=801):
    return np.linspace(lo, hi, n)


# ----------------------------------------------------------------------------------------------
# Published test vectors (docs/methods.md §2.1)
# ----------------------------------------------------------------------------------------------


def test_tensorflow_extra_vector_beta_1_5():
    x = torch.tensor([-2.5, -1.0, 0.5, 1.0, 2.5])
    expected = torch.tensor([0.0, 0.04166667, 0.6666667, 1.0416666, 2.5])
    torch.testing.assert_close(rnn.SmeLU(1.5)(x), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(RF.smelu(x, 1.5), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("beta", "f0"), [(0.1, 0.025), (0.5, 0.125), (1.0, 0.25)])
def test_tf_smelu_value_at_zero(beta, f0):
    assert RF.smelu(torch.zeros(1), beta).item() == pytest.approx(f0, rel=1e-6)
    # x >= 1 >= beta passes through unchanged, bit for bit
    x = torch.tensor([1.0, 1.5, 3.0, 1e6])
    assert torch.equal(RF.smelu(x, beta), x)


# ----------------------------------------------------------------------------------------------
# Values against the numpy references, for every activation, module and function
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_module_matches_independent_reference(spec):
    x = grid()
    module = rnn.create_activation(spec).double()
    got = module(torch.tensor(x, dtype=torch.float64))
    if isinstance(module, rnn.LearnableSmeLU):
        # the raw parameter is stored in float32, so β is 0.8 only to float32 precision
        assert module.beta.item() == pytest.approx(0.8, rel=1e-7)
        expected = np_smelu(x, module.beta.item())
    else:
        expected = REFERENCES[spec](x)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if not s.startswith("smelu_learnable")])
def test_function_equals_module(spec):
    x = torch.randn(2000, dtype=torch.float32) * 3
    fn = rnn.get_activation_fn(spec)
    module = rnn.create_activation(spec)
    assert torch.equal(fn(x), module(x))


def test_learnable_module_equals_fixed_function_at_init():
    x = torch.randn(2000, dtype=torch.float64) * 3
    module = rnn.LearnableSmeLU(0.8).double()
    beta = module.beta.item()
    assert beta == pytest.approx(0.8, rel=1e-7)
    torch.testing.assert_close(module(x), RF.smelu(x, beta), rtol=1e-12, atol=1e-12)


def test_float32_matches_float64_reference():
    x = grid(-3, 3, 6001)
    got = RF.smelu(torch.tensor(x, dtype=torch.float32), 0.5).numpy()
    np.testing.assert_allclose(got, np_smelu(x, 0.5), rtol=2e-6, atol=2e-7)


# ----------------------------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_gradcheck_every_activation(spec):
    module = rnn.create_activation(spec).double()
    # keep away from the kinks of relu / leaky relu / elu / selu (and SmeLU's knots) where a
    # central finite difference straddles a corner
    x = torch.linspace(-3.3, 3.3, 67, dtype=torch.float64)
    x = x[(x.abs() > 1e-3)].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(module, (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [0.3, 1.0, 2.5])
def test_smelu_gradient_is_hard_sigmoid(beta):
    x = torch.tensor(grid(-4, 4, 1601), requires_grad=True)
    RF.smelu(x, beta).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np_smelu_grad(x.detach().numpy(), beta), atol=1e-15)


def test_gsmelu_gradient_matches_reference():
    x = torch.tensor(grid(-4, 4, 1601), requires_grad=True)
    RF.gsmelu(x, 0.5, 1.5, 2.0, 0.3).sum().backward()
    expected = np_gsmelu_grad(x.detach().numpy(), 0.5, 1.5, 2.0)
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-14)


def test_gradcheck_tensor_beta():
    x = torch.linspace(-2.5, 2.5, 41, dtype=torch.float64).requires_grad_(True)
    beta = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RF.smelu, (x, beta), eps=1e-6, atol=1e-6)


def test_gradcheck_per_channel_beta():
    x = torch.randn(5, 3, dtype=torch.float64).requires_grad_(True)
    beta = torch.tensor([[0.5, 1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RF.smelu, (x, beta), eps=1e-6, atol=1e-6)


def test_beta_gradient_formula():
    beta = 1.3
    x = torch.tensor(grid(-3, 3, 601))
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    for xi in (-2.0, -1.0, 0.0, 0.4, 1.29, 2.0):
        b.grad = None
        RF.smelu(torch.tensor([xi], dtype=torch.float64), b).sum().backward()
        expected = (beta**2 - xi**2) / (4 * beta**2) if abs(xi) < beta else 0.0
        assert b.grad.item() == pytest.approx(expected, abs=1e-14)
    # summed over a batch: the sum of the per-element formula
    b.grad = None
    RF.smelu(x, b).sum().backward()
    xn = x.numpy()
    expected = np.where(np.abs(xn) < beta, (beta**2 - xn**2) / (4 * beta**2), 0).sum()
    assert b.grad.item() == pytest.approx(expected, rel=1e-12)


def test_learnable_beta_gets_gradient_through_softplus():
    module = rnn.LearnableSmeLU(1.0).double()
    x = torch.tensor([0.0, 0.5], dtype=torch.float64)
    module(x).sum().backward()
    beta = module.beta.item()
    sig = 1 / (1 + math.exp(-module.raw_beta.item()))  # d softplus / db
    expected = sum((beta**2 - v**2) / (4 * beta**2) for v in (0.0, 0.5)) * sig
    assert module.raw_beta.grad.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("lr", [1e3, 1e6])
def test_learnable_beta_stays_positive_after_large_steps(lr):
    torch.manual_seed(0)
    module = rnn.LearnableSmeLU(1.0)
    opt = torch.optim.SGD(module.parameters(), lr=lr)
    x = torch.randn(256) * 0.3  # all inside the transition: dβ = (β²-x²)/(4β²) > 0 mostly
    for _ in range(50):
        opt.zero_grad()
        module(x).sum().backward()  # minimising pushes β down as hard as possible
        opt.step()
    beta = module.beta.item()
    assert module.raw_beta.item() < -1e3  # the steps really were huge
    assert beta > 0 and beta >= RF.LEARNABLE_BETA_EPS * 0.999
    y = module(torch.linspace(-1, 1, 101))
    assert torch.isfinite(y).all()
    # with β at its floor the activation is ReLU to float precision
    torch.testing.assert_close(y, torch.relu(torch.linspace(-1, 1, 101)), atol=1e-6, rtol=0)


def test_learnable_beta_moves_towards_target():
    torch.manual_seed(0)
    target_beta = 2.0
    x = torch.linspace(-3, 3, 301)
    y_target = RF.smelu(x, target_beta)
    module = rnn.LearnableSmeLU(0.5)
    opt = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        ((module(x) - y_target) ** 2).mean().backward()
        opt.step()
    assert module.beta.item() == pytest.approx(target_beta, rel=1e-2)


# ----------------------------------------------------------------------------------------------
# C¹ continuity at the knots
# ----------------------------------------------------------------------------------------------


def _value_and_grad(fn, points):
    x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
    y = fn(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    return y.detach().numpy(), g.numpy()


@pytest.mark.parametrize(
    ("fn", "knots"),
    [
        (lambda x: RF.smelu(x, 0.6), (-0.6, 0.6)),
        (lambda x: RF.gsmelu(x, 0.5, 1.5, 1.0, 0.0), (-0.5, 1.5)),
        (lambda x: RF.gsmelu(x, 2.0, 0.25, 3.0, -1.0), (-2.0, 0.25)),
    ],
)
def test_c1_continuity_at_knots(fn, knots):
    for k in knots:
        for h in (1e-4, 1e-6, 1e-8):
            (yl, yk, yr), (gl, gk, gr) = _value_and_grad(fn, [k - h, k, k + h])
            # value: left and right limits agree with f(k) to O(h)
            assert abs(yl - yk) < 5 * h and abs(yr - yk) < 5 * h
            # derivative: left and right limits agree (C¹), to O(h / width)
            assert abs(gl - gr) < 10 * h and abs(gl - gk) < 10 * h


def test_smelu_is_not_c2_middle_curvature():
    # second derivative 1/(2β) inside, 0 outside: the gradient is exactly piecewise linear
    beta = 0.6
    _, g = _value_and_grad(lambda x: RF.smelu(x, beta), [-0.3, 0.0, 0.3])
    assert (g[1] - g[0]) / 0.3 == pytest.approx(1 / (2 * beta))


def test_gsmelu_equals_smelu_when_symmetric():
    x = torch.randn(10000, dtype=torch.float64) * 4
    for beta in (0.1, 1.0, 3.0):
        torch.testing.assert_close(RF.gsmelu(x, beta, beta, 1.0, 0.0), RF.smelu(x, beta))
    x32 = torch.randn(10000) * 4
    torch.testing.assert_close(RF.gsmelu(x32, 0.7, 0.7, 1.0, 0.0), RF.smelu(x32, 0.7))


def test_gsmelu_tails_exact():
    x = torch.tensor([-100.0, -0.5, -0.50001, 1.5, 7.0, 1e30], dtype=torch.float64)
    y = RF.gsmelu(x, 0.5, 1.5, 2.0, 0.25)
    assert y[0].item() == 0.25 and y[1].item() == 0.25 and y[2].item() == 0.25
    assert y[3].item() == pytest.approx(2 * 1.5 + 2 * (0.5 - 1.5) / 2 + 0.25)
    assert y[4].item() == 2 * 7.0 - 1.0 + 0.25


def test_smelu_properties():
    x = torch.randn(100000) * 3
    y = RF.smelu(x, 1.0)
    assert (y >= torch.relu(x)).all()  # SmeLU >= ReLU, also in float arithmetic
    assert torch.equal(y[x <= -1.0], torch.zeros_like(y[x <= -1.0]))
    assert torch.equal(y[x >= 1.0], x[x >= 1.0])
    ys, _ = torch.sort(RF.smelu(torch.sort(x).values, 1.0))
    assert torch.equal(ys, RF.smelu(torch.sort(x).values, 1.0))  # monotone


# ----------------------------------------------------------------------------------------------
# Numerical robustness: no NaN / Inf for any finite input
# ----------------------------------------------------------------------------------------------

EXTREMES = [0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 1.0, -1.0, 1e30, -1e30, 1e38, -1e38]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [RF.MIN_BETA, 1e-20, 1e-6, 1.0, 1e6, 1e30, 1e38])
def test_smelu_finite_for_extreme_inputs_and_widths(dtype, beta):
    finfo = torch.finfo(dtype)
    x = torch.tensor(EXTREMES + [finfo.max, -finfo.max, finfo.tiny], dtype=dtype)
    x.requires_grad_(True)
    y = RF.smelu(x, beta)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    assert ((g >= 0) & (g <= 1)).all()
    # tails: 0 far left, x far right
    n = len(EXTREMES)
    assert y[n + 1].item() == 0.0 and g[n + 1].item() == 0.0  # -float max
    assert y[n].item() == finfo.max and g[n].item() == 1.0
    if beta < 1e29:
        assert y[9].item() == 0.0 and g[9].item() == 0.0  # -1e30
        assert y[8].item() == x[8].item() and g[8].item() == 1.0  # 1e30 passes through
    assert y[0].item() == pytest.approx(beta / 4, rel=1e-5)  # f(0) = β/4


def test_tiny_beta_is_relu():
    x = torch.linspace(-5, 5, 1001)
    torch.testing.assert_close(RF.smelu(x, RF.MIN_BETA), torch.relu(x), atol=1e-30, rtol=0)


def test_learnable_beta_finite_for_extreme_inputs():
    module = rnn.LearnableSmeLU(1.0)
    x = torch.tensor(EXTREMES + [3.4e38, -3.4e38], requires_grad=True)
    y = module(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(module.raw_beta.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gsmelu_finite_for_extreme_inputs(dtype):
    finfo = torch.finfo(dtype)
    x = torch.tensor(EXTREMES + [finfo.max, -finfo.max], dtype=dtype, requires_grad=True)
    for params in [(1e-30, 1e-30, 1.0, 0.0), (0.5, 1.5, 1.0, 0.3), (1e30, 1.0, 0.5, -2.0)]:
        y = RF.gsmelu(x, *params)
        (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert torch.isfinite(y).all() and torch.isfinite(g).all(), params


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_activation_finite_on_huge_inputs(spec):
    x = torch.tensor(EXTREMES + [3.4e38, -3.4e38], requires_grad=True)
    y = rnn.create_activation(spec)(x)
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.isfinite(g).all(), spec
    # selu (λ = 1.05) and gsmelu with g = 2 scale x, so at float max the true value overflows
    assert torch.isfinite(y[:-2]).all(), spec
    if not spec.startswith(("selu", "gsmelu")):
        assert torch.isfinite(y).all(), spec


# ----------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------


def test_module_validation_errors():
    for make in (
        lambda: rnn.SmeLU(0.0),
        lambda: rnn.SmeLU(-1.0),
        lambda: rnn.SmeLU(float("nan")),
        lambda: rnn.SmeLU(1e-31),
        lambda: rnn.GSmeLU(alpha=0.0),
        lambda: rnn.GSmeLU(beta=-2.0),
        lambda: rnn.GSmeLU(g=0.0),
        lambda: rnn.GSmeLU(t=float("inf")),
        lambda: rnn.LearnableSmeLU(0.0),
        lambda: rnn.Swish(0.0),
        lambda: rnn.Softplus(beta=-1.0),
        lambda: rnn.ELU(alpha=0.0),
        lambda: rnn.LeakyReLU(1.5),
        lambda: rnn.GELU("fast"),
    ):
        with pytest.raises(ReprokitError):
            make()
    with pytest.raises(ReprokitError, match="beta"):
        RF.smelu(torch.zeros(1), 0.0)


def test_module_spec_round_trips():
    for spec in ALL_SPECS:
        module = rnn.create_activation(spec)
        assert str(rnn.parse_spec(module.spec)) == module.spec == str(rnn.parse_spec(spec))


def test_learnable_module_state_dict_and_repr():
    module = rnn.LearnableSmeLU(0.5)
    assert list(dict(module.named_parameters())) == ["raw_beta"]
    assert module.beta.item() == pytest.approx(0.5, rel=1e-6)
    clone = rnn.LearnableSmeLU(2.0)
    clone.load_state_dict(module.state_dict())
    assert clone.beta.item() == pytest.approx(0.5, rel=1e-6)
    assert "beta=0.5" in repr(module)


def test_modules_handle_shapes_and_non_contiguous_input():
    x = torch.randn(4, 6, 5).transpose(0, 2)  # non-contiguous
    for spec in ("smelu:beta=0.5", "gsmelu:alpha=0.5,beta=1.5,g=2,t=0.1", "smelu_learnable"):
        module = rnn.create_activation(spec)
        xr = x.clone().requires_grad_(True)
        y = module(xr)
        assert y.shape == x.shape
        y.sum().backward()
        assert xr.grad.shape == x.shape
        np.testing.assert_allclose(
            y.detach().numpy(),
            rnn.create_activation(spec)(x.contiguous()).detach().numpy(),
            rtol=0,
            atol=0,
        )


def test_inputs_not_modified_in_place():
    x = torch.randn(1000)
    before = x.clone()
    x.requires_grad_(True)
    for spec in ALL_SPECS:
        y = rnn.create_activation(spec)(x)
        y.sum().backward()
    assert torch.equal(x.detach(), before)
