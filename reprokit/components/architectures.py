"""Model architectures (`model.arch`) and what engines need to know about them."""

from __future__ import annotations

from dataclasses import dataclass

from reprokit.components import ComponentInfo, Registry


@dataclass(frozen=True)
class ArchitectureCapabilities:
    """`stacked`: the vectorized engine implements it (embeddings → MLP → one linear head).
    `multitask`: built for several tasks, with a tower and head per task (mlp trains several tasks
    too, through one head with an output per task). `linear_part`: it has per-id linear weights
    (FM's first order, the wide part), a second table of the embedding's kind (`linear_table`)."""

    stacked: bool
    multitask: bool
    linear_part: bool = False


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
        ComponentInfo(
            "deepfm",
            "deepfm",
            "FM first-order and second-order terms plus a deep MLP (Guo et al. 2017)",
            ArchitectureCapabilities(stacked=False, multitask=False, linear_part=True),
            "reprokit.nn.ctr:DeepFMModel",
        ),
        ComponentInfo(
            "dcn-v2",
            "dcn-v2",
            "full-rank cross layers in parallel with a deep MLP (Wang et al. 2021)",
            ArchitectureCapabilities(stacked=False, multitask=False),
            "reprokit.nn.ctr:DCNv2Model",
        ),
        ComponentInfo(
            "wide-deep",
            "wide-deep",
            "a linear model of one-hot ids and numeric features plus a deep MLP (Cheng et al. 2016)",
            ArchitectureCapabilities(stacked=False, multitask=False, linear_part=True),
            "reprokit.nn.ctr:WideDeepModel",
        ),
        ComponentInfo(
            "dlrm",
            "dlrm",
            "bottom MLP on numeric features, pairwise dot interaction, top MLP (Naumov et al. 2019)",
            ArchitectureCapabilities(stacked=False, multitask=False),
            "reprokit.nn.ctr:DLRMModel",
        ),
    ),
)

#: Table kinds whose per-id linear weights (`linear_part`) are a table of the same kind: the ids
#: of an `mde` table are plain vocabulary indices, so its linear weights are a `table`.
LINEAR_TABLE_KINDS = {"table": "table", "hashed": "hashed", "qr": "qr", "mde": "table"}


def linear_table(arch: str, embedding: str) -> str | None:
    """The table spec of `arch`'s per-id linear weights for embedding spec `embedding` (None if
    the architecture has none); raises the one sentence when the kind cannot carry them."""
    from reprokit.components.tables import parse_table_spec
    from reprokit.errors import ReprokitError

    if not ARCHITECTURES.get(arch).capabilities.linear_part:
        return None
    spec = parse_table_spec(embedding)
    kind = LINEAR_TABLE_KINDS.get(spec.name)
    if kind is None or (spec.name == "qr" and spec.params.get("op") == "concat"):
        raise ReprokitError(
            f"{arch}'s per-id linear weights need a table, hashed, qr (op=mult or add) or mde "
            f"embedding, not {str(spec)!r}"
        )
    return str(spec) if kind == spec.name else kind


def parse_factory_spec(spec: str) -> tuple[str, str]:
    """`(source, function)` of a model factory spec: "path/to/file.py:build" (a file) or
    "package.module:build" (an importable module); the shape only, nothing is imported here."""
    from reprokit.errors import ReprokitError

    source, sep, function = spec.strip().rpartition(":")
    if not sep or not source or not function.isidentifier():
        raise ReprokitError(
            f"model factory {spec!r} must name FILE.py:FUNCTION or package.module:FUNCTION"
        )
    return source, function
