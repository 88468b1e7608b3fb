"""The nondeterminism sources a user can vary, and the per-replica seeds derived for each.

One base seed feeds a `numpy.random.SeedSequence` per (source, replica). A source that is varied gets a
different seed in every replica; a source that is not varied gets the replica-0 seed in all of them, so
replicas differ in exactly what the user named and nothing else.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

from reprokit.errors import ReprokitError

#: Every source, in the order docs/methods.md §7 lists them. Names are a public contract.
SOURCES: tuple[str, ...] = (
    "init",
    "data-order",
    "dropout",
    "bitflip",
    "async",
    "admission",
    "threads",
    "gpu-kernels",
)

#: Sources that only make sense on a CUDA device.
CUDA_ONLY: frozenset[str] = frozenset({"gpu-kernels"})

SOURCE_HELP: dict[str, str] = {
    "init": "parameter initialisation (dense layers and embeddings)",
    "data-order": "the shuffling permutation of every epoch",
    "dropout": "dropout masks (own torch.Generator)",
    "bitflip": "one initial weight moved by one ULP, else identical",
    "async": "simulated asynchronous training: gradients applied with random staleness 0..k",
    "admission": "the probabilistic admission filter of a collisionless table (its draws)",
    "threads": "intra-op thread count (reduction order)",
    "gpu-kernels": "nondeterministic CUDA kernels allowed (atomics); CUDA only",
}


def parse_vary(spec: str | Iterable[str], device: str = "cpu") -> tuple[str, ...]:
    """Parse `--vary` ("init,data-order", "all", "none") into a canonical, ordered tuple.

    `all` expands to every source that applies on `device`; `none` is the control arm (empty tuple).
    """
    if not isinstance(spec, str):
        items = [s for s in spec if s]
        if not items:  # an already-parsed control arm (e.g. a config validated twice)
            return ()
    else:
        items = [s.strip() for s in spec.split(",") if s.strip()]
        if not items:
            raise ReprokitError("--vary is empty; use 'none' for the control arm")
    on_cuda = device.startswith("cuda")
    chosen: set[str] = set()
    for item in items:
        if item == "none":
            if len(items) > 1:
                raise ReprokitError("--vary none cannot be combined with other sources")
            return ()
        if item == "all":
            chosen.update(s for s in SOURCES if on_cuda or s not in CUDA_ONLY)
            continue
        if item not in SOURCES:
            raise ReprokitError(
                f"unknown nondeterminism source {item!r}; choose from "
                f"{', '.join(SOURCES)}, all, none"
            )
        if item in CUDA_ONLY and not on_cuda:
            raise ReprokitError(
                f"source {item!r} needs a CUDA device (--device cuda); this run is on {device}"
            )
        chosen.add(item)
    return tuple(s for s in SOURCES if s in chosen)


def _source_key(source: str) -> int:
    # Stable across Python processes (unlike hash()), so seeds are the same on every machine.
    return zlib.crc32(source.encode())


def source_seed(base_seed: int, source: str, replica: int) -> int:
    """The 63-bit seed of one source in one replica."""
    seq = np.random.SeedSequence(entropy=int(base_seed), spawn_key=(_source_key(source), replica))
    return int(seq.generate_state(1, dtype=np.uint64)[0]) & ((1 << 63) - 1)


def replica_seeds(base_seed: int, varied: Iterable[str], replica: int) -> dict[str, int]:
    """Seeds of every source for one replica: varied sources use the replica index, others replica 0."""
    varied = set(varied)
    return {s: source_seed(base_seed, s, replica if s in varied else 0) for s in SOURCES}
