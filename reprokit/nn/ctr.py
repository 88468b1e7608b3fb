"""The classic CTR architectures: DeepFM, DCN-v2, Wide & Deep and DLRM (`model.arch`).

Every model receives its embedding table (`EmbeddingTable`, output [batch, fields, dim]: with
`mde` or `model.field_dims` the rows are projected to the common width, so the pairwise
interactions below see equal widths per field) and, where it has a per-id linear part, a second
table of the same kind whose width is the task count (`linear`, built by `create_model`). Each has
an output per task, like `mlp` (one head with T outputs; the FM and interaction terms are shared by
the tasks). Initialisation: the tables' own `reset_parameters`, then Xavier-uniform weights and zero
biases of every linear layer (cross layers included) in registration order, all from the `init`
generator; dropout is `SeededDropout` in the MLPs, fed by the `dropout` generator.

- `DeepFMModel` (Guo et al., IJCAI 2017): logit = b + Σ_f w[f, id_f] + w_numᵀ·num
  + ½ Σ_k [(Σ_f e_fk)² − Σ_f e_fk²] + head(MLP([e_1 … e_F, num])). The FM term pairs the
  categorical fields' embeddings; numeric features enter the linear and the deep part.
- `DCNv2Model` (Wang et al., WWW 2021), FuxiCTR's default `parallel` structure: x_0 = [e_1 … e_F,
  num], `cross_layers` full-rank cross layers x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l next to the deep
  MLP on x_0, head over [x_L, MLP(x_0)].
- `WideDeepModel` (Cheng et al., DLRS 2016): logit = b + Σ_f w[f, id_f] + w_numᵀ·num (the wide
  part: a linear model of one-hot ids and numeric features) + head(MLP([e_1 … e_F, num])).
- `DLRMModel` (Naumov et al., arXiv 1906.00091): z = bottom MLP(num) (the `hidden` widths, then a
  layer to the embedding width), the dot products ⟨u_i, u_j⟩ for i < j of u = [z, e_1 … e_F], then
  the top MLP (`hidden`) and head on [z, dots]. Without numeric features there is no z.
"""

from __future__ import annotations

import torch
from torch import nn

from reprokit.nn.embeddings import EmbeddingTable
from reprokit.nn.models import _EmbeddedInput, _init_linears, _mlp

__all__ = [
    "DCNv2Model",
    "DLRMModel",
    "DeepFMModel",
    "WideDeepModel",
    "dot_interaction",
    "fm_second_order",
]


def fm_second_order(emb: torch.Tensor) -> torch.Tensor:
    """FM's pairwise term Σ_{i<j} ⟨e_i, e_j⟩ = ½ Σ_k [(Σ_f e_fk)² − Σ_f e_fk²]: [batch, F, D] → [batch]."""
    return 0.5 * (emb.sum(1).pow(2) - emb.pow(2).sum(1)).sum(1)


def dot_interaction(vectors: torch.Tensor) -> torch.Tensor:
    """DLRM's interaction: ⟨u_i, u_j⟩ for every pair i < j (row-major): [batch, n, D] → [batch, n(n−1)/2]."""
    gram = torch.bmm(vectors, vectors.transpose(1, 2))
    i, j = torch.triu_indices(vectors.shape[1], vectors.shape[1], offset=1, device=vectors.device)
    return gram[:, i, j]


class _LinearPart(nn.Module):
    """b + Σ_f w[f, id_f] + w_numᵀ·num per task: the per-id weights are a table of width T."""

    def __init__(self, linear: EmbeddingTable, num_numeric: int, n_tasks: int) -> None:
        super().__init__()
        self.table = linear
        self.numeric = nn.Linear(num_numeric, n_tasks) if num_numeric else None
        self.bias = nn.Parameter(torch.zeros(n_tasks))

    def reset_parameters(self, generator: torch.Generator) -> None:
        self.table.reset_parameters(generator)
        if self.numeric is not None:
            _init_linears([self.numeric], generator)
        nn.init.zeros_(self.bias)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        out = self.table(cat).sum(1) + self.bias
        return out if self.numeric is None else out + self.numeric(num)


def _check_linear(linear: EmbeddingTable | None, n_tasks: int, arch: str) -> EmbeddingTable:
    if linear is None or linear.dim != n_tasks:
        raise ValueError(f"{arch} needs its per-id linear table, {n_tasks} wide")
    return linear


class _DeepModel(_EmbeddedInput):
    """Embeddings → the deep MLP (`hidden`) → `head`; subclasses add their own part."""

    options: tuple[str, ...] = ()

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        hidden: list[int] | tuple[int, ...],
        activation: str,
        dropout: float,
        batch_norm: bool,
        n_tasks: int,
    ) -> None:
        super().__init__(embeddings, num_numeric, n_tasks)
        self.mlp, self.deep_width = _mlp(self.input_dim, hidden, activation, dropout, batch_norm)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """The tables' own initialisation, then Xavier-uniform / zero bias for every linear layer."""
        _reset(self, generator)


class WideDeepModel(_DeepModel):
    """Wide & Deep: a linear model of one-hot ids and numeric features + the deep MLP's logit."""

    arch = "wide-deep"  # how a refused linear table names the model

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        hidden: list[int] | tuple[int, ...] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_tasks: int = 1,
        linear: EmbeddingTable | None = None,
    ) -> None:
        super().__init__(embeddings, num_numeric, hidden, activation, dropout, batch_norm, n_tasks)
        self.linear = _LinearPart(_check_linear(linear, n_tasks, self.arch), num_numeric, n_tasks)
        self.head = nn.Linear(self.deep_width, n_tasks)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        return self.linear(cat, num) + self.head(self.mlp(self._input(cat, num)))


class DeepFMModel(WideDeepModel):
    """DeepFM: first-order linear part + FM second-order term + deep MLP (see the module
    docstring); Wide & Deep's parts plus the FM term."""

    arch = "deepfm"

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        emb = self.embeddings(cat)
        deep = self.head(self.mlp(torch.cat([emb.flatten(1), num], dim=1)))
        return self.linear(cat, num) + fm_second_order(emb).unsqueeze(1) + deep


class CrossLayer(nn.Module):
    """One full-rank DCN-v2 cross layer: x_{l+1} = x_0 ⊙ (W x_l + b) + x_l."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DCNv2Model(_DeepModel):
    """DCN-v2, parallel structure: `cross_layers` cross layers beside the deep MLP, one head."""

    options = ("cross_layers",)

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        hidden: list[int] | tuple[int, ...] = (64, 32),
        cross_layers: int = 3,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_tasks: int = 1,
    ) -> None:
        super().__init__(embeddings, num_numeric, hidden, activation, dropout, batch_norm, n_tasks)
        self.cross = nn.ModuleList(CrossLayer(self.input_dim) for _ in range(cross_layers))
        self.head = nn.Linear(self.input_dim + self.deep_width, n_tasks)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        x0 = self._input(cat, num)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(torch.cat([x, self.mlp(x0)], dim=1))


class DLRMModel(_EmbeddedInput):
    """DLRM: bottom MLP on the numeric features, pairwise dot interaction, top MLP and head."""

    options: tuple[str, ...] = ()

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        hidden: list[int] | tuple[int, ...] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_tasks: int = 1,
    ) -> None:
        super().__init__(embeddings, num_numeric, n_tasks)
        dim = embeddings.dim
        self.bottom: nn.Sequential | None = None
        if num_numeric:
            layers, width = _mlp(num_numeric, hidden, activation, dropout, batch_norm)
            self.bottom = nn.Sequential(*layers, nn.Linear(width, dim), _activation(activation))
        n = embeddings.num_fields + (1 if num_numeric else 0)
        top_in = n * (n - 1) // 2 + (dim if num_numeric else 0)
        self.top, width = _mlp(top_in, hidden, activation, dropout, batch_norm)
        self.head = nn.Linear(width, n_tasks)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """The table's own initialisation, then Xavier-uniform / zero bias for every linear layer."""
        _reset(self, generator)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        emb = self.embeddings(cat)
        if self.bottom is None:
            return self.head(self.top(dot_interaction(emb)))
        z = self.bottom(num)
        dots = dot_interaction(torch.cat([z.unsqueeze(1), emb], dim=1))
        return self.head(self.top(torch.cat([z, dots], dim=1)))


def _reset(model: _EmbeddedInput, generator: torch.Generator) -> None:
    """The embedding table, then the linear part (its table and numeric weights), then every other
    linear layer in registration order (a table's own layers, e.g. mde's projections, are its own)."""
    model.embeddings.reset_parameters(generator)
    owned = {id(m) for m in model.embeddings.modules()}
    linear = getattr(model, "linear", None)
    if linear is not None:
        linear.reset_parameters(generator)
        owned |= {id(m) for m in linear.modules()}
    _init_linears([m for m in model.modules() if id(m) not in owned], generator)


def _activation(spec: str) -> nn.Module:
    from reprokit.nn.registry import create_activation

    return create_activation(spec)
