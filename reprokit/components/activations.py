"""What engines need to know about an activation (its entries live in reprokit.nn.registry)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActivationCapabilities:
    """`stacked`: the vectorized engine can apply it to stacked replicas as it is (no trained
    parameters or buffers of its own)."""

    stacked: bool = True
