"""AutoDim's search-time embedding (Zhao et al., arXiv 2006.14827; `shared/reference/embeddings.md`
§2.1): one table per field of the largest candidate width d_N, candidate n reading the first d_n
coordinates of it (weight sharing, the variant the paper keeps), a linear map per candidate back
to d_N (shared by every field, as the paper's text says), a BatchNorm without affine parameters
per candidate (so the candidates' magnitudes are comparable; its channels are (field, coordinate),
so every field is normalised on its own), and the architecture weights α [fields, candidates]
mixing the candidates through a Gumbel-softmax:

    p_m^n = softmax_n((log softmax(α_m)_n + g_n) / τ),   g = −log(−log u),  u ~ U(0, 1)
    τ(t) = max(0.01, 1 − 0.00005·t)                       (t: the weight step)

The Gumbel noise is drawn per batch and field from the table's own `torch.Generator` (never the
global one), so a search is a function of its seed. During warm-up (`uniform = True`) p = 1/N for
every candidate: the paper's pre-training trick, which trains every candidate fairly before α
starts to choose. The table is an `EmbeddingTable`, so a `CTRModel` takes it like any other.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reprokit.nn.embeddings import EmbeddingTable, init_rows

__all__ = ["AutoDimEmbeddings", "gumbel_temperature"]

#: τ(t) = max(TAU_MIN, 1 − TAU_RATE·t), the paper's schedule.
TAU_MIN = 0.01
TAU_RATE = 0.00005


def gumbel_temperature(step: int) -> float:
    """The Gumbel-softmax temperature at weight step `step` (0-based): max(0.01, 1 − 0.00005·t)."""
    return max(TAU_MIN, 1.0 - TAU_RATE * float(step))


class AutoDimEmbeddings(EmbeddingTable):
    """The weight-sharing search table (see the module docstring): [batch, fields, d_N] out."""

    def __init__(self, vocab_sizes: Sequence[int], candidates: Sequence[int]) -> None:
        super().__init__()
        self.candidates = tuple(sorted(int(c) for c in candidates))
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_fields = len(self.vocab_sizes)
        self.dim = self.candidates[-1]
        self.tables = nn.ModuleList(nn.Embedding(v, self.dim) for v in self.vocab_sizes)
        self.projections = nn.ModuleList(nn.Linear(d, self.dim) for d in self.candidates)
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(self.num_fields * self.dim, affine=False) for _ in self.candidates
        )
        self.alpha = nn.Parameter(torch.zeros(self.num_fields, len(self.candidates)))
        self.temperature = 1.0
        self.uniform = True
        self.generator: torch.Generator | None = None

    @property
    def num_rows(self) -> int:
        return sum(self.vocab_sizes)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything but α (the weights W of the bi-level problem)."""
        return [p for name, p in self.named_parameters() if name != "alpha"]

    def reset_parameters(self, generator: torch.Generator) -> None:
        init_rows(self.tables, generator)
        for d, proj in zip(self.candidates, self.projections, strict=True):
            nn.init.normal_(proj.weight, mean=0.0, std=d**-0.5, generator=generator)
            nn.init.zeros_(proj.bias)
        with torch.no_grad():
            self.alpha.zero_()

    def candidate_view(self, field: int, n: int) -> torch.Tensor:
        """Candidate n's embedding rows of `field`: the first d_n columns of the shared table (a
        view, no copy: every candidate trains the same leading coordinates)."""
        return self.tables[field].weight[:, : self.candidates[n]]

    def probabilities(self) -> torch.Tensor:
        """α as probabilities, softmax over candidates per field [fields, candidates] (detached)."""
        return torch.softmax(self.alpha.detach(), dim=1)

    def mixing_weights(self) -> torch.Tensor:
        """p [fields, candidates]: uniform during warm-up, else the Gumbel-softmax of α at the
        current temperature (fresh noise from `generator` on every call in training mode; none
        in eval mode)."""
        n = len(self.candidates)
        if self.uniform:
            return self.alpha.new_full((self.num_fields, n), 1.0 / n)
        logp = F.log_softmax(self.alpha, dim=1)
        if self.training:
            u = torch.rand(logp.shape, generator=self.generator, dtype=logp.dtype)
            u = u.clamp_(1e-10, 1.0 - 1e-7).to(logp.device)
            logp = logp - torch.log(-torch.log(u))
        return torch.softmax(logp / self.temperature, dim=1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch = ids.shape[0]
        raw = torch.stack([t(ids[:, f]) for f, t in enumerate(self.tables)], dim=1)  # [B, F, dN]
        outs = []
        for d, proj, norm in zip(self.candidates, self.projections, self.norms, strict=True):
            x = proj(raw[..., :d])  # [B, F, d_N]
            outs.append(norm(x.reshape(batch, -1)).reshape(batch, self.num_fields, self.dim))
        stacked = torch.stack(outs, dim=2)  # [B, F, N, d_N]
        p = self.mixing_weights()
        return (stacked * p[None, :, :, None]).sum(dim=2)
