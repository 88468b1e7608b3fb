"""What the vectorized engine can train, from the config and the components' declared capabilities.

For reprokit's own models nothing is built to find out: the sources say whether replicas need
processes of their own, and the registries in `reprokit.components` (optimizers, architectures,
embedding tables, and the activations' `capabilities`) say whether the engine has a stacked
implementation. A `--model-factory` model declares nothing, so `factory_reason` builds it and
tries it on a few training rows (its torch.func path, `reprokit.training.func_stack`). The
reasons are sentences that `choose_engine` and `check_supported` put after
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


def unsupported_reason(
    config: RunConfig, encoded: Any = None, model_factory: Any = None
) -> str | None:
    """Why this engine cannot train `config` (then `auto` uses one process per replica), or None.

    For reprokit's own models the decision depends on the config only (`encoded` is accepted for
    callers that have the data); a factory model (`model.factory`, or the Python API's
    `model_factory`) is checked on `encoded` by `factory_reason`.
    """
    for source in PROCESS_SOURCES:
        if source in config.vary:
            return f"the {source!r} source needs a separate process per replica"
    optimizer = OPTIMIZERS.get(config.optim.name).capabilities
    if not optimizer.stacked:
        return f"the {config.optim.name!r} optimizer is not implemented for stacked parameters"
    if config.model.factory:
        return factory_reason(config, encoded, model_factory)
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


def factory_reason(config: RunConfig, encoded: Any, model_factory: Any = None) -> str | None:
    """Why `reprokit.training.func_stack` cannot train the config's factory model, or None.

    The module is built (as replica 0 is) and inspected, then tried on the first training rows:
    - dropout (a `SeededDropout` or any torch dropout module with p > 0): each replica's masks
      come from its own seeded generator, which `vmap` cannot draw from;
    - an embedding with `sparse=True`: `torch.func.grad` gives dense gradients only;
    - one training step the reference loop's way (on a copy): a buffer it changes (BatchNorm's
      running statistics, a counter) cannot be carried per replica through `functional_call`;
      a sparse gradient; with weight decay, a parameter without gradient (torch.optim skips it,
      a stacked update would decay it);
    - the engine's own vmapped step and evaluation forward on two stacked copies: an error
      there (random numbers drawn in `forward`, `.item()` or data-dependent control flow, an
      operation without a batching rule) is the reason, in one sentence.
    """
    if encoded is None:
        return "a --model-factory model is checked on its training rows, which were not given"
    import copy

    import torch
    import torch.nn.functional as F
    from torch import nn

    from reprokit.nn.factory import build_factory_model
    from reprokit.nn.models import SeededDropout
    from reprokit.training.func_stack import StackedModule

    model = build_factory_model(config, encoded, model_factory).train()
    for name, module in model.inner.named_modules():
        dropout = isinstance(module, (SeededDropout, nn.modules.dropout._DropoutNd))
        if dropout and float(getattr(module, "p", 0.0)) > 0:
            return (
                f"the model has dropout ({name or type(module).__name__}): per-replica seeded "
                "dropout generators are not supported inside torch.func.vmap"
            )
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and module.sparse:
            return (
                f"the model's embedding {name} has sparse gradients (sparse=True), and "
                "torch.func.grad gives dense ones only"
            )
    rows = min(8, int(encoded.train_cat.shape[0]))
    cat = torch.as_tensor(encoded.train_cat[:rows])
    num = torch.as_tensor(encoded.train_num[:rows])
    y = torch.as_tensor(encoded.train_y[:rows])

    probe = copy.deepcopy(model)
    before = {n: b.detach().clone() for n, b in probe.inner.named_buffers()}
    try:
        F.binary_cross_entropy_with_logits(probe(cat, num), y).backward()
    except Exception as exc:  # the user's code: its error, in one sentence
        return f"its training step fails ({_first_line(exc)})"
    for name, buffer in probe.inner.named_buffers():
        if name in before and not torch.equal(buffer, before[name]):
            return (
                f"the model's buffer {name} changes in training (running statistics such as "
                "BatchNorm's), which stacked replicas under torch.func.vmap cannot carry"
            )
    for name, param in probe.inner.named_parameters():
        if param.grad is not None and param.grad.is_sparse:
            return f"the model's parameter {name} gets a sparse gradient"
        if config.optim.weight_decay and param.requires_grad and param.grad is None:
            return (
                f"with weight decay, the model's parameter {name} gets no gradient (torch.optim "
                "leaves it alone, a stacked update would decay it)"
            )

    stack = StackedModule([model, copy.deepcopy(model)])
    try:
        step = stack.step_function()
        step(stack.params, stack.consts, *(t.expand(2, *t.shape) for t in (cat, num, y)))
        stack.logits(cat, num)
    except Exception as exc:
        if "random operation" in str(exc):
            return (
                "the model draws random numbers in its forward (F.dropout, torch.rand, ...): "
                "per-replica seeded generators are not supported inside torch.func.vmap"
            )
        return f"its forward or backward fails under torch.func.vmap ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_supported(config: RunConfig, encoded: Any = None, model_factory: Any = None) -> None:
    """Raise the one sentence that says why the engine cannot train `config`, if it cannot."""
    reason = unsupported_reason(config, encoded, model_factory)
    if reason is not None:
        raise ReprokitError(f"the vectorized engine cannot train this configuration: {reason}")
