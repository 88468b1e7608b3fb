"""CTR models: field embeddings + numeric features → MLP(s) → one logit per task.

Every model receives its embedding table (an `EmbeddingTable`, TorchRec-style injection) and
flattens its [batch, fields, dim] output in front of the numeric features; `create_model` builds
the table the config names and the architecture `ARCHITECTURES` names.

- `CTRModel` (`model.arch = "mlp"`): one MLP and one linear head with an output per task.
- `SharedBottomModel` (`"shared-bottom"`): the MLP is shared by all tasks (hard sharing); each
  task has its own tower MLP and a one-output head.
- `MMoEModel` (`"mmoe"`, Ma et al., KDD 2018): `experts` expert MLPs, one softmax gate per task
  over the experts (a linear layer of the shared input), the gate-weighted sum of the experts'
  outputs goes into the task's tower and head.

Initialisation and dropout take explicit `torch.Generator`s so that the `init` and `dropout` sources
can be varied independently of each other and of everything else.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reprokit.components.architectures import ARCHITECTURES
from reprokit.nn.embeddings import EmbeddingTable
from reprokit.nn.registry import create_activation


class SeededDropout(nn.Module):
    """Inverted dropout whose masks come from its own generator (the `dropout` source)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        noise = torch.rand(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        return x * (noise >= self.p).to(x.dtype) / (1.0 - self.p)


def _mlp(
    width: int,
    hidden: list[int] | tuple[int, ...],
    activation: str,
    dropout: float,
    batch_norm: bool,
) -> tuple[nn.Sequential, int]:
    """Linear → [BatchNorm] → activation → [dropout] per width; returns (layers, output width)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(create_activation(activation))
        if dropout > 0:
            layers.append(SeededDropout(dropout))
        width = h
    return nn.Sequential(*layers), width


def _init_linears(modules: list[nn.Module], generator: torch.Generator) -> None:
    """Xavier-uniform weights and zero biases, drawn from `generator` (the `init` source)."""
    for module in modules:
        if isinstance(module, nn.Linear):
            bound = math.sqrt(6.0 / (module.in_features + module.out_features))
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            nn.init.zeros_(module.bias)


class _EmbeddedInput(nn.Module):
    """What every architecture shares: the injected embedding table (registered first, so its
    parameters come first), the embedded input and its seeded dropout."""

    def __init__(self, embeddings: EmbeddingTable, num_numeric: int, n_tasks: int) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.input_dim = self.embeddings.output_dim + num_numeric
        self.n_tasks = int(n_tasks)

    def set_dropout_generator(self, generator: torch.Generator) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def _input(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Embedded categorical fields, then the numeric features: [batch, input_dim]."""
        return torch.cat([self.embeddings(cat).flatten(1), num], dim=1)


class CTRModel(_EmbeddedInput):
    """Embeddings of every categorical field, concatenated with numeric features, into an MLP."""

    options: tuple[str, ...] = ()  # keywords of `create_model` this architecture takes

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
        self.mlp, width = _mlp(self.input_dim, hidden, activation, dropout, batch_norm)
        self.head = nn.Linear(width, n_tasks)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from one generator (Xavier-uniform weights, zero biases)."""
        self.embeddings.reset_parameters(generator)
        _init_linears([*self.mlp, self.head], generator)

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        return self.head(self.mlp(self._input(cat, num)))


class _MultiTaskBase(_EmbeddedInput):
    """Embeddings, per-task towers and heads; subclasses define the shared part (`_shared`)."""

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        activation: str,
        dropout: float,
        batch_norm: bool,
        n_tasks: int,
    ) -> None:
        super().__init__(embeddings, num_numeric, n_tasks)
        self._mlp_args = (activation, dropout, batch_norm)

    def _build_towers(self, width: int, tower: list[int] | tuple[int, ...]) -> None:
        towers, heads = [], []
        for _ in range(self.n_tasks):
            layers, out = _mlp(width, tower, *self._mlp_args)
            towers.append(layers)
            heads.append(nn.Linear(out, 1))
        self.towers = nn.ModuleList(towers)
        self.heads = nn.ModuleList(heads)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from one generator (Xavier-uniform weights, zero biases)."""
        self.embeddings.reset_parameters(generator)
        _init_linears([m for m in self.modules() if m is not self.embeddings], generator)

    def _shared(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        inputs = self._shared(self._input(cat, num))
        logits = [
            head(tower(z)) for z, tower, head in zip(inputs, self.towers, self.heads, strict=True)
        ]
        return torch.cat(logits, dim=1)


class SharedBottomModel(_MultiTaskBase):
    """Shared-bottom multitask model: one `hidden` MLP for all tasks, a tower + head per task."""

    options = ("tower",)

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        hidden: list[int] | tuple[int, ...] = (64, 32),
        tower: list[int] | tuple[int, ...] = (16,),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_tasks: int = 2,
    ) -> None:
        super().__init__(embeddings, num_numeric, activation, dropout, batch_norm, n_tasks)
        self.bottom, width = _mlp(self.input_dim, hidden, activation, dropout, batch_norm)
        self._build_towers(width, tower)

    def _shared(self, x: torch.Tensor) -> list[torch.Tensor]:
        z = self.bottom(x)
        return [z] * self.n_tasks


class MMoEModel(_MultiTaskBase):
    """Multi-gate mixture of experts: `experts` MLPs, a softmax gate per task, a tower per task."""

    options = ("tower", "experts")

    def __init__(
        self,
        embeddings: EmbeddingTable,
        num_numeric: int,
        hidden: list[int] | tuple[int, ...] = (64, 32),
        tower: list[int] | tuple[int, ...] = (16,),
        experts: int = 4,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_tasks: int = 2,
    ) -> None:
        super().__init__(embeddings, num_numeric, activation, dropout, batch_norm, n_tasks)
        built = [
            _mlp(self.input_dim, hidden, activation, dropout, batch_norm) for _ in range(experts)
        ]
        self.experts = nn.ModuleList(layers for layers, _ in built)
        width = built[0][1]
        self.gates = nn.ModuleList(nn.Linear(self.input_dim, experts) for _ in range(self.n_tasks))
        self._build_towers(width, tower)

    def gate_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax gate weights [batch, n_tasks, experts] of the shared input `x`."""
        return torch.stack([torch.softmax(gate(x), dim=1) for gate in self.gates], dim=1)

    def _shared(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, E, H]
        mixed = torch.bmm(self.gate_weights(x), outs)  # [B, T, H]
        return list(mixed.unbind(1))


def create_model(
    arch: str,
    vocab_sizes: list[int],
    num_numeric: int,
    *,
    embedding_dim: int = 8,
    hidden: list[int] | tuple[int, ...] = (64, 32),
    tower: list[int] | tuple[int, ...] = (16,),
    experts: int = 4,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
    n_tasks: int = 1,
    embedding: str = "table",
    sparse_embeddings: bool = False,
    field_dims: dict[str, int] | None = None,
    cross_layers: int = 3,
) -> nn.Module:
    """The model `arch` names (`reprokit.components.architectures.ARCHITECTURES`), given the
    embedding table `embedding` (and per-field widths `field_dims`) name, built first, as its
    parameters come first; architectures with per-id linear weights (deepfm, wide-deep) get a
    second table, `n_tasks` wide, of the kind `linear_table` names."""
    from reprokit.components.architectures import linear_table
    from reprokit.nn.embeddings import create_embeddings
    from reprokit.nn.mde import build_embeddings

    cls = ARCHITECTURES.get(arch).load()
    table = build_embeddings(embedding, vocab_sizes, embedding_dim, sparse_embeddings, field_dims)
    linear_kind = linear_table(arch, embedding)
    common = dict(
        hidden=hidden,
        activation=activation,
        dropout=dropout,
        batch_norm=batch_norm,
        n_tasks=n_tasks,
    )
    own = {"tower": tower, "experts": experts, "cross_layers": cross_layers}
    if linear_kind is not None:
        common["linear"] = create_embeddings(linear_kind, vocab_sizes, n_tasks, sparse_embeddings)
    return cls(table, num_numeric, **common, **{k: own[k] for k in cls.options})
