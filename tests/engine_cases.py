"""The small training setup the embedding-kind tests share: a config of the built-in synthetic
data, per-replica seeds, and both engines trained on the same replicas."""

from __future__ import annotations

from typing import Any

from reprokit.config import resolve_config
from reprokit.sources import replica_seeds
from reprokit.training import vectorized as vec
from reprokit.training.loop import train_replica

SMALL = {
    "data.synth_rows": 1500,
    "data.synth_fields": 3,
    "data.synth_cardinality": 200,
    "optim.epochs": 1,
    "optim.batch_size": 70,
    "model.hidden": "16-8",
}
#: max |Δp| between replica k of the two engines (measured ≤ 1e-7 for every kind on SMALL)
TOLERANCE = 1e-5


def small_config(vary: str, embedding: str, **extra: Any):
    """SMALL with `vary`, the embedding spec and any other dotted overrides."""
    return resolve_config(None, {**SMALL, "vary": vary, "model.embedding": embedding, **extra})


def seeds_for(cfg: Any, replicas: Any) -> list[dict[str, int]]:
    return [replica_seeds(cfg.seed, cfg.vary, r) for r in replicas]


def train_both(encoded: Any, cfg: Any, replicas: int = 2) -> tuple[list, list]:
    """(reference loop outputs, vectorized engine outputs) of replicas 0..replicas-1."""
    seeds = seeds_for(cfg, range(replicas))
    ref = [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]
    return ref, vec.train_replicas(encoded, cfg, list(range(replicas)), seeds)
