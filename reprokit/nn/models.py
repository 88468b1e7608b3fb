"""The CTR model: field embeddings + numeric features → MLP → sigmoid heads.

Initialisation and dropout take explicit `torch.Generator`s so that the `init` and `dropout` sources
can be varied independently of each other and of everything else.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reprokit.nn.embeddings import create_embeddings
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


class CTRModel(nn.Module):
    """Embeddings of every categorical field, concatenated with numeric features, into an MLP."""

    def __init__(
        self,
        vocab_sizes: list[int],
        num_numeric: int,
        embedding_dim: int = 8,
        hidden: list[int] | tuple[int, ...] = (64, 32),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        n_tasks: int = 1,
        embedding: str = "table",
        sparse_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.embeddings = create_embeddings(embedding, vocab_sizes, embedding_dim, sparse_embeddings)
        width = self.embeddings.output_dim + num_numeric
        layers: list[nn.Module] = []
        for h in hidden:
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(create_activation(activation))
            if dropout > 0:
                layers.append(SeededDropout(dropout))
            width = h
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_tasks)

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Deterministic initialisation from one generator (Xavier-uniform weights, zero biases)."""
        self.embeddings.reset_parameters(generator)
        for module in [*self.mlp, self.head]:
            if isinstance(module, nn.Linear):
                bound = math.sqrt(6.0 / (module.in_features + module.out_features))
                nn.init.uniform_(module.weight, -bound, bound, generator=generator)
                nn.init.zeros_(module.bias)

    def set_dropout_generator(self, generator: torch.Generator) -> None:
        for module in self.modules():
            if isinstance(module, SeededDropout):
                module.generator = generator

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [batch, n_tasks]."""
        x = torch.cat([self.embeddings(cat), num], dim=1)
        return self.head(self.mlp(x))
