"""What the vectorized engine can train, from the config and the components' declared capabilities.

Nothing is built to find out: the sources say whether replicas need processes of their own, and the
registries in `reprokit.components` (optimizers, architectures, embedding tables, and the
activations' `capabilities`) say whether the engine has a stacked implementation. The reasons are sentences that `choose_engine` and `check_supported` put after
"... cannot train this configuration: ".
"""

from __future__ import annotations

from typing import Any

from reprokit.components.architectures import ARCHITECTURES
from reprokit.components.optimizers import OPTIMIZERS
from reprokit.components.tables import EMBEDDING_TABLES, parse_table_spec
from reprokit.config import RunConfig
from reprokit.errors import ReprokitError

#: Sources whose replicas differ in process-wide state, so each needs a process of its own.
PROCESS_SOURCES = ("threads", "gpu-kernels")


def unsupported_reason(config: RunConfig, encoded: Any = None) -> str | None:
    """Why this engine cannot train `config` (then `auto` uses one process per replica), or None.

    `encoded` is accepted for callers that have the data; the decision depends on the config only.
    """
    for source in PROCESS_SOURCES:
        if source in config.vary:
            return f"the {source!r} source needs a separate process per replica"
    optimizer = OPTIMIZERS.get(config.optim.name).capabilities
    if not optimizer.stacked:
        return f"the {config.optim.name!r} optimizer is not implemented for stacked parameters"
    if config.model.factory:
        return "a --model-factory model is trained by the reference loop only"
    if not ARCHITECTURES.get(config.model.arch).capabilities.stacked:
        return f"the {config.model.arch!r} model is not implemented for stacked parameters"
    if config.optim.weight_decay and optimizer.sparse_gradients:
        # the stacked optimizer updates the table sparsely; the reference loop would not
        return "weight decay (the reference loop then uses dense embedding gradients)"
    if not EMBEDDING_TABLES.get(config.model.embedding).capabilities.stacked:
        return f"the {config.model.embedding!r} embedding is not implemented for stacked parameters"
    if config.model.field_dims and not EMBEDDING_TABLES.get("mde").capabilities.stacked:
        # per-field widths make any table the mixed-dimension one (reprokit.nn.mde)
        return "per-field widths (model.field_dims) are not implemented for stacked parameters"
    table = parse_table_spec(config.model.embedding)
    if table.name == "qr" and table.params["op"] == "concat" and config.model.embedding_dim % 2:
        # the stacked form lays the two halves out as fields of their own, of one width
        return f"{table} needs an even embedding dimension, got {config.model.embedding_dim}"
    if config.model.hidden:  # the layers between the linear ones must be stateless
        if config.model.batch_norm:
            return "the MLP has a BatchNorm1d layer with parameters or buffers"
        from reprokit.nn.registry import parse_spec  # torch: only for configs that get this far

        activation = parse_spec(config.model.activation).info
        if not activation.capabilities.stacked:
            name = activation.module.__name__
            return f"the MLP has a {name} layer with parameters or buffers"
    return None


def check_supported(config: RunConfig, encoded: Any = None) -> None:
    """Raise the one sentence that says why the engine cannot train `config`, if it cannot."""
    reason = unsupported_reason(config, encoded)
    if reason is not None:
        raise ReprokitError(f"the vectorized engine cannot train this configuration: {reason}")
