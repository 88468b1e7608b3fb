"""The EmbeddingTable interface: models receive their table, the `table` kind's lookups, sizes and
stacked form, and the fixed parameter order and initialisation draws the engines rely on."""

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from reprokit.nn.embeddings import EmbeddingTable, FieldEmbeddings, TableLayout, create_embeddings
from reprokit.nn.models import CTRModel, MMoEModel, SharedBottomModel, create_model

VOCAB = [5, 3, 7]


def _ids(n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, v, (n,), generator=g) for v in VOCAB], dim=1)


def _table(dim=4, seed=1):
    table = create_embeddings("table", VOCAB, dim, sparse=False)
    table.reset_parameters(torch.Generator().manual_seed(seed))
    return table


def test_table_forward_is_one_row_per_field_and_id():
    table, ids = _table(), _ids()
    out = table(ids)
    assert isinstance(table, FieldEmbeddings) and isinstance(table, EmbeddingTable)
    assert out.shape == (11, 3, 4)
    for f in range(3):
        assert torch.equal(out[:, f], table.tables[f].weight[ids[:, f]])
    assert table.output_dim == 12 and table.num_rows == sum(VOCAB)
    assert table.memory_bytes() == sum(VOCAB) * 4 * 4  # float32
    empty = create_embeddings("table", [], 4, sparse=False)
    assert empty(torch.zeros((6, 0), dtype=torch.long)).shape == (6, 0, 4)
    assert empty.output_dim == 0 and empty.num_rows == 0 and empty.memory_bytes() == 0


def test_stacked_form_looks_up_the_same_rows_as_the_table():
    """What the vectorized engine relies on: weight[layout.rows(ids)] == table(ids)."""
    table, ids = _table(), _ids(n=40, seed=3)
    layout, weight = table.stacked_layout(), table.stacked_weight()
    assert isinstance(layout, TableLayout) and weight.shape == (layout.num_rows, layout.dim)
    assert layout.offsets.tolist() == [0, 5, 8] and layout.num_rows == 15
    assert torch.equal(weight[layout.rows(ids)], table(ids))
    assert not weight.requires_grad
    assert layout.to("cpu").offsets.tolist() == [0, 5, 8]


def test_initialisation_draws_are_in_a_fixed_order():
    """Embedding tables first (field by field, N(0, 0.01)), then every Linear (Xavier-uniform,
    in module order), all from the one `init` generator; rebuilt here by hand, bit for bit."""
    model = create_model("mlp", VOCAB, 2, embedding_dim=4, hidden=[6], n_tasks=1)
    model.reset_parameters(torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    names = [n for n, _ in model.named_parameters()]
    assert names == [
        "embeddings.tables.0.weight",
        "embeddings.tables.1.weight",
        "embeddings.tables.2.weight",
        "mlp.0.weight",
        "mlp.0.bias",
        "head.weight",
        "head.bias",
    ]
    params = dict(model.named_parameters())
    for f, v in enumerate(VOCAB):
        expected = torch.empty((v, 4)).normal_(0.0, 0.01, generator=g)
        assert torch.equal(params[f"embeddings.tables.{f}.weight"], expected)
    for name, (fan_in, fan_out) in {"mlp.0": (14, 6), "head": (6, 1)}.items():
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        expected = torch.empty((fan_out, fan_in)).uniform_(-bound, bound, generator=g)
        assert torch.equal(params[f"{name}.weight"], expected)
        assert not params[f"{name}.bias"].any()


class _HashedTable(EmbeddingTable):
    """A table kind the models have never seen: every field shares `buckets` rows, id → id mod
    buckets (what a later hashed table would do), with its own stacked layout."""

    def __init__(self, fields: int, buckets: int, dim: int) -> None:
        super().__init__()
        self.num_fields, self.dim, self.buckets = fields, dim, buckets
        self.weight = nn.Parameter(torch.zeros((buckets, dim)))

    @property
    def num_rows(self) -> int:
        return self.buckets

    def reset_parameters(self, generator: torch.Generator) -> None:
        nn.init.normal_(self.weight, std=0.01, generator=generator)

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        return self.weight[cat % self.buckets]


@dataclass(frozen=True)
class _HashedLayout(TableLayout):
    buckets: int = 1

    def rows(self, cat: torch.Tensor) -> torch.Tensor:
        return cat % self.buckets


class _StackableHashedTable(_HashedTable):
    def stacked_layout(self) -> TableLayout:
        offsets = torch.zeros(self.num_fields, dtype=torch.long)
        return _HashedLayout(self.buckets, self.dim, offsets, buckets=self.buckets)

    def stacked_weight(self) -> torch.Tensor:
        return self.weight.detach()


def test_another_table_kind_brings_its_own_row_mapping():
    table = _StackableHashedTable(3, 4, 2)
    table.reset_parameters(torch.Generator().manual_seed(2))
    ids = _ids(n=20)
    layout = table.stacked_layout().to("cpu")
    assert type(layout) is _HashedLayout  # moving it to a device keeps its mapping
    assert torch.equal(table.stacked_weight()[layout.rows(ids)], table(ids))


@pytest.mark.parametrize("cls", [CTRModel, SharedBottomModel, MMoEModel])
def test_models_use_the_table_they_are_given(cls):
    table = _HashedTable(3, 4, 2)
    model = cls(table, 1, hidden=[5], activation="relu", dropout=0.0, batch_norm=False, n_tasks=2)
    model.reset_parameters(torch.Generator().manual_seed(0))
    assert model.embeddings is table
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())
    assert model.input_dim == 3 * 2 + 1
    ids = _ids(n=9)
    logits = model(ids, torch.ones((9, 1)))
    assert logits.shape == (9, 2)
    # ids that hash to the same buckets give the same logits
    assert torch.equal(model(ids + 4, torch.ones((9, 1))), logits)


def test_a_table_without_a_stacked_form_says_so():
    with pytest.raises(NotImplementedError, match="_HashedTable has no stacked form"):
        _HashedTable(1, 2, 2).stacked_layout()
