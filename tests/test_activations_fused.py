"""The fused CPU kernels of SmeLU / gSmeLU (reprokit/nn/_fused/smelu.c) against the torch-ops path.

The contract: wherever the fused path runs, its values and gradients are bitwise equal to those of
the torch-ops path (``REPROKIT_DISABLE_FUSED=1``), for every input including ±0, denormals, the
knots ±β, huge values, ±inf and NaN (NaN where the torch path gives NaN); and inputs the kernels
do not handle (other dtypes or devices, non-contiguous, a tensor β, double backward) take the
torch path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from reprokit.nn import _fused
from reprokit.nn import functional as RF

ROOT = Path(__file__).resolve().parents[1]

requires_fused = pytest.mark.skipif(
    not _fused.available(), reason="compiled kernels not built (no C compiler at install time)"
)


class _CountingKernel:
    """Stands in for the extension module and records the kernels run."""

    KERNELS = ("smelu_fwd", "gsmelu_fwd", "hard_sigmoid_bwd")

    def __init__(self, real):
        self._real = real
        self.calls: list[str] = []

    def __getattr__(self, name):
        real = getattr(self._real, name)
        if name not in self.KERNELS:
            return real

        def counted(*args):
            self.calls.append(name)
            return real(*args)

        return counted


@pytest.fixture
def kernel_calls(monkeypatch):
    """The list of fused kernels run while the test runs (names, in order)."""
    if not _fused.available():
        return []
    assert _fused.enabled(), f"run the tests without {_fused.ENV_VAR} set"
    counting = _CountingKernel(_fused.kernel)
    monkeypatch.setattr(_fused, "kernel", counting)
    return counting.calls


@pytest.fixture
def threads():
    """Restore torch's thread count after a test that changes it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def edge_values(dtype: torch.dtype, *knots: float) -> torch.Tensor:
    """±0, denormals, ±tiny, ±max, ±inf, NaN, and each knot with its float neighbours."""
    fi = torch.finfo(dtype)
    vals = [0.0, -0.0, fi.tiny, -fi.tiny, fi.tiny / 8, -fi.tiny / 8, fi.max, -fi.max]
    vals += [math.inf, -math.inf, math.nan, 1e30, -1e30, 1.0, -1.0, 0.5, -0.5]
    for knot in knots:
        k = torch.tensor([knot, -knot], dtype=dtype)
        vals += k.tolist()
        vals += torch.nextafter(k, torch.full_like(k, math.inf)).tolist()
        vals += torch.nextafter(k, torch.full_like(k, -math.inf)).tolist()
    return torch.tensor(vals, dtype=dtype)


def inputs(dtype: torch.dtype, scale: float, *knots: float, n: int = 5000, seed: int = 0):
    """Edge values alone (the kernels' scalar tails), then embedded in random data."""
    gen = torch.Generator().manual_seed(seed)
    edges = edge_values(dtype, *knots)
    noise = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype) * scale
    return [edges, torch.cat([noise[: n // 2], edges, noise[n // 2 :]])]


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same bits everywhere, except that NaNs only need to be NaN at the same places."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b)
    int_type = {torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    bits_a = a.detach().contiguous().view(int_type)[~nan_a]
    bits_b = b.detach().contiguous().view(int_type)[~nan_b]
    mismatch = (bits_a != bits_b).nonzero()
    assert mismatch.numel() == 0, (a[~nan_a][mismatch[:5, 0]], b[~nan_b][mismatch[:5, 0]])


def value_and_grad(fn, x: torch.Tensor, grad: torch.Tensor, *, fused: bool):
    xr = x.clone().requires_grad_(True)
    if fused:
        y = fn(xr)
        y.backward(grad)
    else:
        with _fused.disabled():
            y = fn(xr)
            y.backward(grad)
    return y.detach(), xr.grad


SMELU_BETAS = [RF.MIN_BETA, 1e-6, 0.3, 1.0, 7.5, 1e30]
GSMELU_PARAMS = [
    (1.0, 1.0, 1.0, 0.0),  # = SmeLU: c = 0, g = 1, t = 0 skip their ops
    (0.5, 1.5, 2.0, -0.25),
    (2.0, 0.25, 3.0, -1.0),
    (1e-30, 1e-30, 1.0, 0.0),
    (1e30, 1.0, 0.5, -2.0),
    (0.7, 0.7, 0.3, 0.1),
]


# ----------------------------------------------------------------------------------------------
# Build and selection
# ----------------------------------------------------------------------------------------------


def test_kernels_built_where_a_compiler_exists():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) here, so the optional extension was not built")
    assert _fused.available(), (
        "reprokit.nn._fused._smelu is missing or stale although a C compiler exists: "
        "re-run `pip install -e .` to build it"
    )
    assert _fused.threading_backend == "pthreads" or _fused.threading_backend.startswith("openmp:")


@requires_fused
def test_eligible_inputs_take_the_fused_path(kernel_calls):
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 4, 5, dtype=dtype, requires_grad=True)
        RF.smelu(x, 0.5).sum().backward()
        RF.gsmelu(x, 0.5, 1.5, 2.0, 0.1).sum().backward()
    fwd_bwd = ["smelu_fwd", "hard_sigmoid_bwd", "gsmelu_fwd", "hard_sigmoid_bwd"]
    assert kernel_calls == fwd_bwd * 2


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: torch.randn(6, 5).t(), id="non-contiguous"),
        pytest.param(lambda: torch.randn(40)[::2], id="strided"),
        pytest.param(lambda: torch.randn(30).half(), id="float16"),
        pytest.param(lambda: torch.randn(30).bfloat16(), id="bfloat16"),
    ],
)
def test_other_inputs_fall_back_to_the_torch_path(make, kernel_calls):
    x = make()
    for fn in (lambda v: RF.smelu(v, 0.7), lambda v: RF.gsmelu(v, 0.5, 1.5, 2.0, 0.1)):
        xr = x.clone().requires_grad_(True) if x.is_contiguous() else x.requires_grad_(True)
        y = fn(xr)
        grad = torch.randn_like(y)
        y.backward(grad)
        assert kernel_calls == []
        # the same bits as the torch path on the same input
        with _fused.disabled():
            xt = x.detach().clone().requires_grad_(True)
            yt = fn(xt)
            yt.backward(grad)
            ref = fn(x.detach().float())
        assert torch.equal(y.detach(), yt.detach()) and torch.equal(xr.grad, xt.grad)
        # and, for float16/bfloat16, the float32 result to their precision
        torch.testing.assert_close(y.detach().float(), ref, rtol=1e-2, atol=1e-2)
        xr.grad = None


@requires_fused
def test_tensor_beta_keeps_the_torch_path(kernel_calls):
    x = torch.randn(50, requires_grad=True)
    beta = torch.tensor(0.8, requires_grad=True)
    RF.smelu(x, beta).sum().backward()
    assert kernel_calls == []
    assert beta.grad is not None and x.grad is not None


@requires_fused
@pytest.mark.parametrize("value", ["1", "yes", "TRUE"])
def test_env_var_disables_the_fused_path(kernel_calls, value):
    x = torch.randn(100, requires_grad=True)
    with_fused = RF.smelu(x, 0.6)
    assert kernel_calls == ["smelu_fwd"]
    kernel_calls.clear()
    try:
        os.environ[_fused.ENV_VAR] = value
        assert not _fused.refresh() and not _fused.enabled()
        y = RF.smelu(x, 0.6)
        y.sum().backward()
        assert kernel_calls == []
        assert torch.equal(y, with_fused)
        os.environ[_fused.ENV_VAR] = "0"
        assert _fused.refresh()
        RF.smelu(x, 0.6)
        assert kernel_calls == ["smelu_fwd"]
    finally:
        os.environ.pop(_fused.ENV_VAR, None)
        _fused.refresh()


@requires_fused
def test_env_var_read_at_import():
    code = "from reprokit.nn import _fused; print(_fused.available(), _fused.enabled())"
    for value, expected in (("1", "True False"), ("0", "True True"), ("", "True True")):
        env = {**os.environ, _fused.ENV_VAR: value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == expected.split(), value


@requires_fused
def test_disabled_context_manager_nests(kernel_calls):
    with _fused.disabled():
        with _fused.disabled():
            pass
        assert not _fused.enabled()
    assert _fused.enabled()


# ----------------------------------------------------------------------------------------------
# Bitwise equality with the torch path
# ----------------------------------------------------------------------------------------------


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", SMELU_BETAS)
def test_smelu_fused_is_bitwise_the_torch_path(dtype, beta, kernel_calls):
    fn = lambda v: RF.smelu(v, beta)  # noqa: E731
    for x in inputs(dtype, 3 * beta if beta < 1e29 else 3.0, beta):
        grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
        grad[:4] = torch.tensor([0.0, -0.0, 1e30, -torch.finfo(dtype).max])
        y_fused, g_fused = value_and_grad(fn, x, grad, fused=True)
        y_torch, g_torch = value_and_grad(fn, x, grad, fused=False)
        assert_bitwise_equal(y_fused, y_torch)
        assert_bitwise_equal(g_fused, g_torch)
    assert len(kernel_calls) == 4  # the fused path really ran: forward + backward, twice


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("params", GSMELU_PARAMS)
def test_gsmelu_fused_is_bitwise_the_torch_path(dtype, params, kernel_calls):
    alpha, beta, g, t = params
    fn = lambda v: RF.gsmelu(v, alpha, beta, g, t)  # noqa: E731
    scale = 3 * max(alpha, beta) if max(alpha, beta) < 1e29 else 3.0
    for x in inputs(dtype, scale, alpha, beta):
        grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
        y_fused, g_fused = value_and_grad(fn, x, grad, fused=True)
        y_torch, g_torch = value_and_grad(fn, x, grad, fused=False)
        assert_bitwise_equal(y_fused, y_torch)
        assert_bitwise_equal(g_fused, g_torch)
    assert len(kernel_calls) == 4


@requires_fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_tensors_bitwise_equal_for_any_thread_count(dtype, threads):
    # large enough to be split over threads; the result must not depend on the split
    x = torch.randn(1_000_003, dtype=dtype) * 2
    grad = torch.randn_like(x)
    torch.set_num_threads(1)
    ref = value_and_grad(lambda v: RF.gsmelu(v, 0.5, 1.5, 2.0, 0.1), x, grad, fused=False)
    results = {}
    for n in (1, 2, 3, 8):
        torch.set_num_threads(n)
        results[n] = value_and_grad(lambda v: RF.gsmelu(v, 0.5, 1.5, 2.0, 0.1), x, grad, fused=True)
    for y, g in results.values():
        assert_bitwise_equal(y, ref[0])
        assert_bitwise_equal(g, ref[1])


@requires_fused
def test_pthreads_fallback_gives_the_same_bits(monkeypatch, threads):
    """Without torch's OpenMP runtime the kernels start threads of their own."""
    x = torch.randn(2_000_000) * 2
    grad = torch.randn_like(x)
    torch.set_num_threads(2)
    fn = lambda v: RF.smelu(v, 0.9)  # noqa: E731
    ref = value_and_grad(fn, x, grad, fused=False)
    try:
        _fused.kernel.set_openmp(0)
        got = value_and_grad(fn, x, grad, fused=True)
    finally:
        _fused.kernel.set_openmp(_fused._openmp_address)
    assert_bitwise_equal(got[0], ref[0])
    assert_bitwise_equal(got[1], ref[1])


@requires_fused
def test_concurrent_calls_from_python_threads(threads):
    """Several Python threads in the kernels at once (the GIL is released), beside torch ops."""
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(3)
    xs = [torch.randn(600_000, generator=gen) * 2 for _ in range(6)]
    with _fused.disabled():
        expected = [RF.smelu(x, 0.8) for x in xs]

    def work(i: int) -> bool:
        a = torch.randn(200, 200)
        ok = True
        for _ in range(5):
            ok &= torch.equal(RF.smelu(xs[i], 0.8), expected[i])
            a = torch.tanh(a @ a.T / 200)
        return ok

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(len(xs))))


@requires_fused
def test_expanded_and_non_contiguous_grads(kernel_calls):
    x = torch.randn(64, 33, dtype=torch.float64)
    for make_grad in (
        lambda: torch.ones(()).expand(64, 33).to(torch.float64),  # what y.sum().backward() sends
        lambda: torch.randn(33, 64, dtype=torch.float64).t(),
    ):
        grad = make_grad()
        y_f, g_f = value_and_grad(lambda v: RF.smelu(v, 0.4), x, grad, fused=True)
        y_t, g_t = value_and_grad(lambda v: RF.smelu(v, 0.4), x, grad, fused=False)
        assert_bitwise_equal(g_f, g_t)
        assert g_f.is_contiguous()
    assert kernel_calls.count("hard_sigmoid_bwd") == 2


@requires_fused
def test_empty_and_scalar_tensors(kernel_calls):
    for x in (torch.empty(0), torch.empty(3, 0, 2, dtype=torch.float64), torch.tensor(0.25)):
        xr = x.clone().requires_grad_(True)
        y = RF.smelu(xr, 1.0)
        y.sum().backward()
        with _fused.disabled():
            assert torch.equal(y.detach(), RF.smelu(x, 1.0))
        assert y.shape == x.shape and xr.grad.shape == x.shape


@requires_fused
def test_input_not_modified_and_output_fresh(kernel_calls):
    x = torch.randn(1000)
    before = x.clone()
    y = RF.smelu(x, 1.0)
    assert torch.equal(x, before)
    assert y.data_ptr() != x.data_ptr() and y.is_contiguous()


# ----------------------------------------------------------------------------------------------
# Gradients through the fused path
# ----------------------------------------------------------------------------------------------


@requires_fused
@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda v: RF.smelu(v, 0.7), id="smelu"),
        pytest.param(lambda v: RF.gsmelu(v, 0.5, 1.5, 2.0, -0.3), id="gsmelu"),
    ],
)
def test_gradcheck_through_fused_path(fn, kernel_calls):
    x = torch.linspace(-3.3, 3.3, 67, dtype=torch.float64)
    x = x[(x.abs() > 1e-3)].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-6)
    assert "hard_sigmoid_bwd" in kernel_calls


@requires_fused
def test_double_backward_uses_the_torch_path(kernel_calls):
    beta = 0.6
    x = torch.tensor([-2.0, -0.3, 0.0, 0.3, 2.0], dtype=torch.float64, requires_grad=True)
    y = RF.smelu(x, beta)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    expected = torch.tensor([0, 1 / (2 * beta), 1 / (2 * beta), 1 / (2 * beta), 0], dtype=x.dtype)
    torch.testing.assert_close(h, expected)
    # the forward ran fused, the differentiable backward did not
    assert kernel_calls == ["smelu_fwd"]


@requires_fused
def test_gradgradcheck_fused_forward(kernel_calls):
    x = torch.linspace(-2.1, 2.1, 29, dtype=torch.float64)
    x = x[(x.abs() - 0.6).abs() > 1e-3].clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda v: RF.gsmelu(v, 0.6, 1.1, 1.5, 0.2), (x,))


def test_torch_compile_traces_the_torch_path():
    fn = torch.compile(lambda v: RF.smelu(v, 0.5), backend="eager", fullgraph=False)
    x = torch.randn(100)
    assert torch.equal(fn(x), RF.smelu(x, 0.5))


# ----------------------------------------------------------------------------------------------
# The benchmark runs and reports the fused and the torch path
# ----------------------------------------------------------------------------------------------


def test_activation_benchmark_reports_both_paths():
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "activation_speed.py"),
            "--numel",
            "20000",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--only",
            "smelu",
            "smelu_torch",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    doc = json.loads(out.stdout)
    assert doc["fused_available"] is _fused.available()
    assert set(doc["smelu_over_relu"]) == {"1", "2"}
    for result in doc["results"]:
        assert {"relu", "smelu", "smelu_torch"} <= set(result["ratio_to_relu"])
