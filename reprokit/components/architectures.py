"""Model architectures (`model.arch`) and what engines need to know about them."""

from __future__ import annotations

from dataclasses import dataclass

from reprokit.components import ComponentInfo, Registry


@dataclass(frozen=True)
class ArchitectureCapabilities:
    """`stacked`: the vectorized engine implements it (embeddings → MLP → one linear head).
    `multitask`: built for several tasks, with a tower and head per task (mlp trains several tasks
    too, through one head with an output per task)."""

    stacked: bool
    multitask: bool


ARCHITECTURES: Registry[ArchitectureCapabilities] = Registry(
    "model",
    (
        ComponentInfo(
            "mlp",
            "mlp",
            "one MLP, one linear head with an output per task",
            ArchitectureCapabilities(stacked=True, multitask=False),
            "reprokit.nn.models:CTRModel",
        ),
        ComponentInfo(
            "shared-bottom",
            "shared-bottom",
            "the hidden MLP shared by all tasks, then a tower MLP and head per task",
            ArchitectureCapabilities(stacked=False, multitask=True),
            "reprokit.nn.models:SharedBottomModel",
        ),
        ComponentInfo(
            "mmoe",
            "mmoe",
            "expert MLPs mixed by a softmax gate per task, then a tower and head per task",
            ArchitectureCapabilities(stacked=False, multitask=True),
            "reprokit.nn.models:MMoEModel",
        ),
    ),
)
