"""The vectorized engine's compiled sparse kernels (reprokit/nn/_fused/engine_kernels.c) give
bitwise the results of their torch-ops paths: the coalesced rows and sums, the sparse SGD and
Adagrad row updates, and whole runs."""

import numpy as np
import pytest
import torch

import reprokit.training.vectorized as vec
from reprokit.config import resolve_config
from reprokit.data.encoding import load_encoded
from reprokit.nn import _fused
from reprokit.sources import replica_seeds

pytestmark = pytest.mark.skipif(
    _fused.engine is None, reason="the optional engine extension is not built"
)


class _Table:
    """The attributes of a Stack that the accumulator and the optimizer read."""

    def __init__(self, replicas: int, vocab: int, dim: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.replicas, self.vocab_total, self.dim = replicas, vocab, dim
        self.table = torch.randn((replicas, vocab, dim), generator=g)
        self.flat = torch.zeros((replicas, vec.ALIGN))  # the dense parameters (unused here)

    @property
    def table_flat(self) -> torch.Tensor:
        return self.table.view(-1, self.dim)


def _occurrences(replicas, vocab, batch, fields, dim, hot, seed=1):
    """Row indices with many duplicates (a few hot rows) and wide-ranging gradient values."""
    g = torch.Generator().manual_seed(seed)
    local = torch.randint(0, hot, (replicas, batch, fields), generator=g)
    local[:, ::7] = torch.randint(
        0, vocab, (replicas, len(range(0, batch, 7)), fields), generator=g
    )
    rows = local + torch.arange(replicas).view(-1, 1, 1) * vocab
    scale = torch.logspace(-6, 3, batch * fields * dim).view(batch, fields * dim)
    grad = torch.randn((replicas, batch, fields * dim), generator=g) * scale
    return rows, grad


@pytest.mark.parametrize(
    ("vocab", "batch", "hot"),
    [
        (500, 64, 40),  # table scanned for the touched rows
        (200_000, 16, 5),  # table much larger than the batch: the unique rows are sorted
    ],
)
def test_coalesce_matches_the_torch_path_bitwise(vocab, batch, hot):
    table = _Table(3, vocab, 4)
    acc = vec.EmbeddingGradAccumulator(table)
    rows, grad = _occurrences(3, vocab, batch, 5, 4, hot)
    expected = acc._torch(rows, grad)
    got = acc._fused(rows, grad)
    assert got.rows.numel() < rows.numel()  # there were duplicates to sum
    assert torch.equal(got.rows, expected.rows)
    assert torch.equal(got.values, expected.values)
    # an independent sum in float64 agrees to float32 rounding
    ref = torch.zeros((3 * vocab, 4), dtype=torch.float64)
    ref.index_add_(0, rows.reshape(-1), grad.reshape(-1, 4).double())
    torch.testing.assert_close(got.values.double(), ref[got.rows], rtol=1e-5, atol=1e-6)
    # the scratch mask is left clean: a second call gives the same result
    again = acc._fused(rows, grad)
    assert torch.equal(again.rows, expected.rows) and torch.equal(again.values, expected.values)


def test_coalesce_refuses_an_index_outside_the_table_and_stays_usable():
    table = _Table(2, 50, 4)
    acc = vec.EmbeddingGradAccumulator(table)
    rows, grad = _occurrences(2, 50, 8, 3, 4, 10)
    bad = rows.clone()
    bad[1, 3, 2] = 2 * 50  # one past the last row
    with pytest.raises(IndexError, match="outside the table"):
        acc._fused(bad, grad)
    assert not acc.touched.any()
    assert torch.equal(acc._fused(rows, grad).values, acc._torch(rows, grad).values)


def _sparse_grad(replicas, vocab, dim, n_rows, seed=2):
    """Unique increasing rows of the flat table and wide-ranging gradient values for them."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(replicas * vocab, generator=g)[:n_rows].sort().values
    scale = torch.logspace(-8, 4, n_rows * dim).view(n_rows, dim)
    return vec.SparseGrad(rows, torch.randn((n_rows, dim), generator=g) * scale)


@pytest.mark.parametrize("name", ["adagrad", "sgd"])
@pytest.mark.parametrize("n_rows", [7, 12_000])  # 12k rows x 8: torch's sqrt splits over threads
def test_sparse_row_update_matches_the_torch_path_bitwise(name, n_rows):
    grad = _sparse_grad(3, 5000, 8, n_rows)
    tables = [_Table(3, 5000, 8, seed=4) for _ in range(2)]
    opts = [
        vec.StackedOptimizer(t, name, lr=0.37, weight_decay=0.0, initial_accumulator=0.1)
        for t in tables
    ]
    for _ in range(3):  # state carried from step to step
        opts[0]._sparse_fused(grad)
        opts[1]._sparse_torch(grad)
    assert not torch.equal(tables[0].table, _Table(3, 5000, 8, seed=4).table)  # rows moved
    assert torch.equal(tables[0].table, tables[1].table)
    for key in opts[0].state:
        assert torch.equal(opts[0].state[key][0], opts[1].state[key][0])


@pytest.mark.parametrize("kernel", ["sgd_rows", "adagrad_sum_rows", "adagrad_apply_rows"])
def test_row_kernels_refuse_a_row_outside_the_table_and_write_nothing(kernel):
    table = _Table(2, 50, 4)
    before = table.table.clone()
    opt = vec.StackedOptimizer(table, "adagrad", lr=0.1, weight_decay=0.0)
    grad = _sparse_grad(2, 50, 4, 6)
    grad.rows[-1] = 2 * 50  # one past the last row
    head = (grad.rows.data_ptr(), 6, grad.values.data_ptr(), 4, 100)
    scratch = torch.empty((6, 4))
    args = {
        "sgd_rows": (table.table.data_ptr(), 0.1),
        "adagrad_sum_rows": (opt.state["sum"][0].data_ptr(), scratch.data_ptr()),
        "adagrad_apply_rows": (scratch.data_ptr(), table.table.data_ptr(), 0.1, 1e-10),
    }[kernel]
    with pytest.raises(IndexError, match="outside the table"):
        getattr(_fused.engine, kernel)(*head, *args)
    assert torch.equal(table.table, before)
    assert torch.equal(opt.state["sum"][0], torch.zeros_like(before))


@pytest.mark.parametrize("path", ["_sparse_fused", "_sparse_torch"])
def test_adagrad_row_update_against_the_formula(path):
    """Coalesce + one sparse Adagrad step against the formula by hand, in float64:
    s += g²; w -= lr · g / (√s + eps), on the rows the batch used and no others."""
    table = _Table(1, 10, 4, seed=5)
    before = table.table.clone().double()
    opt = vec.StackedOptimizer(table, "adagrad", lr=0.1, weight_decay=0.0, initial_accumulator=0.2)
    rows = torch.tensor([[[3], [7], [3]]])
    grad = torch.tensor(
        [[[1.0, -2.0, 0.5, 0.0]], [[0.25, 0.25, -1.0, 3.0]], [[2.0, 0.0, 0.0, 1.0]]]
    )
    grad = grad.view(1, 3, 4)
    getattr(opt, path)(vec.EmbeddingGradAccumulator(table)._fused(rows, grad))
    g = torch.zeros((10, 4), dtype=torch.float64)
    g[3] = grad[0, 0].double() + grad[0, 2].double()
    g[7] = grad[0, 1].double()
    s = 0.2 + g * g
    expected = before[0] - 0.1 * g / (s.sqrt() + 1e-10)
    torch.testing.assert_close(table.table[0].double(), expected, rtol=1e-6, atol=1e-7)
    untouched = [r for r in range(10) if r not in (3, 7)]
    assert torch.equal(table.table[0, untouched].double(), before[0, untouched])


@pytest.mark.parametrize("extra", [{}, {"optim.name": "sgd", "model.dropout": 0.1}])
def test_training_with_and_without_the_kernels_gives_the_same_bits(extra):
    cfg = resolve_config(
        None,
        {
            "data.synth_rows": 2000,
            "data.synth_fields": 4,
            "optim.batch_size": 64,
            "model.hidden": "16-8",
            "vary": "init,data-order",
            **extra,
        },
    )
    encoded = load_encoded(cfg.data)
    seeds = [replica_seeds(cfg.seed, cfg.vary, r) for r in range(3)]
    fused = vec.train_replicas(encoded, cfg, [0, 1, 2], seeds)
    with _fused.disabled():
        assert not _fused.ENGINE_ACTIVE
        plain = vec.train_replicas(encoded, cfg, [0, 1, 2], seeds)
    for a, b in zip(fused, plain, strict=True):
        assert np.array_equal(a.predictions, b.predictions)
        assert a.log.equals(b.log)


def test_the_environment_switch_turns_the_engine_kernel_off(monkeypatch):
    monkeypatch.setenv(_fused.ENV_VAR, "1")
    try:
        assert _fused.refresh() is False
        assert not _fused.ENGINE_ACTIVE
    finally:
        monkeypatch.delenv(_fused.ENV_VAR)
        _fused.refresh()
    assert _fused.ENGINE_ACTIVE
