"""The single-replica reference training loop (the `process` engine trains one of these per replica).

Every random choice draws from a generator owned by one nondeterminism source, so a replica differs
from another in exactly the sources that were varied.

One step: forward → loss → backward → gradient norm (logged before any clipping) → the optimizer's
gradient transform, if it has one (`adagrad+gradclip`, `adagrad+agc`, ...) → optimizer step. The
optimizer comes from `reprokit.optim.make_optimizer` (every name of `OPTIMIZER_NAMES`).

The loss of a multitask model is the **mean** over tasks of each task's mean binary cross-entropy
(so one task gives the plain BCE, and the learning rate means the same whatever the task count);
the log also has one `loss_<label>` column per task when there are several.

`train_log` columns: step, epoch, loss, grad_norm (the run store adds `event`: the divergence events
of the step, '' if none; see `reprokit.training.divergence`), plus `sigma_min` / `sigma_mean` — the smallest and the mean
clipping factor σ over the dense parameter tensors in that step — for optimizers that clip
(Clippy's σ; the gradient-clipping baselines' scale), and `loss_<label>` per task for multitask runs.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from reprokit.components.optimizers import OPTIMIZERS, run_accumulator
from reprokit.components.tables import EMBEDDING_TABLES
from reprokit.config import RunConfig
from reprokit.nn.models import create_model
from reprokit.optim import ClippyAdagrad, OptimizerBundle, make_optimizer
from reprokit.training.divergence import SpikeDetector

EVAL_BATCH = 16384

#: Optimizers that update `nn.Embedding(sparse=True)` tables from sparse gradients (the rows of the
#: batch only), from the optimizer registry. Adam and the LAMB baseline need dense gradients.
SPARSE_GRAD_OPTIMIZERS = OPTIMIZERS.having("sparse_gradients")
#: Optimizers with an Adagrad accumulator (`optim.initial_accumulator_value` applies to them).
ACCUMULATOR_OPTIMIZERS = OPTIMIZERS.having("accumulator")


@dataclass
class ReplicaOutput:
    predictions: np.ndarray  # [N_eval, T] float64, in evaluation order
    log: pd.DataFrame  # step, epoch, loss, grad_norm
    train_seconds: float
    diverged: bool
    threads: int
    steps: int
    detector: SpikeDetector | None = None  # the loop's divergence detector (finished)
    table: dict[str, Any] | None = None  # a dynamic table's counters at the end (`stats`)


def threads_for_replica(config: RunConfig, replica: int) -> int:
    """Intra-op threads: fixed unless `threads` is varied, then 1..max_threads cycling by replica."""
    if "threads" in config.vary:
        return 1 + replica % max(config.max_threads, 2)
    return config.threads


def configure_determinism(config: RunConfig) -> None:
    """Deterministic kernels everywhere unless `gpu-kernels` is varied (CUDA only)."""
    if config.device.startswith("cuda"):
        if "gpu-kernels" in config.vary:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.deterministic = False
        else:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(True)
    # Sparse embedding gradients are built by torch itself; opting out explicitly silences a warning.
    torch.sparse.check_sparse_tensor_invariants.disable()


def sparse_embeddings(config: RunConfig) -> bool:
    """Sparse embedding gradients: when the optimizer and the table kind support them and there
    is no weight decay (torch's sparse Adagrad/SGD and Clippy's sparse path refuse weight decay)."""
    optimizer = OPTIMIZERS[config.optim.name].capabilities
    table = EMBEDDING_TABLES[config.model.embedding].capabilities
    return optimizer.sparse_gradients and table.sparse_gradients and config.optim.weight_decay == 0


def build_model(
    config: RunConfig, vocab_sizes: list[int], num_numeric: int, n_tasks: int
) -> torch.nn.Module:
    """The model `config.model.arch` names (a `CTRModel` for "mlp")."""
    m = config.model
    return create_model(
        m.arch,
        vocab_sizes,
        num_numeric,
        embedding_dim=m.embedding_dim,
        hidden=m.hidden,
        tower=m.tower,
        experts=m.experts,
        activation=m.activation,
        dropout=m.dropout,
        batch_norm=m.batch_norm,
        n_tasks=n_tasks,
        embedding=m.embedding,
        sparse_embeddings=sparse_embeddings(config),
        field_dims=m.field_dims,
        cross_layers=m.cross_layers,
    )


def optimizer_kwargs(config: RunConfig) -> dict[str, Any]:
    """Keyword arguments for `make_optimizer` from the config (see OptimConfig)."""
    opt = config.optim
    kw: dict[str, Any] = {}
    if opt.weight_decay:
        kw["weight_decay"] = opt.weight_decay
    a0 = run_accumulator(opt.name, opt.initial_accumulator_value)  # the registry's run default
    if a0 is not None:
        kw["initial_accumulator_value"] = a0
    return kw


def build_optimizer(config: RunConfig, model: torch.nn.Module) -> OptimizerBundle:
    """`(optimizer, gradient transform or None)` for `config.optim` via `make_optimizer`."""
    return make_optimizer(
        config.optim.name, list(model.parameters()), config.optim.lr, **optimizer_kwargs(config)
    )


def clipping_factors(bundle: OptimizerBundle, params: list[torch.Tensor]) -> torch.Tensor | None:
    """The clipping factors σ of the last step over dense parameter tensors (1-d), or None.

    Clippy: its per-tensor σ; gradient-clipping transforms: their `scale` statistic.
    """
    optimizer, transform = bundle
    if isinstance(optimizer, ClippyAdagrad):
        sig = optimizer.last_sigma
        dense = [sig[i] for i, p in enumerate(params) if i in sig and not _is_sparse(p)]
        return torch.stack(dense).double() if dense else None
    if transform is not None:
        scale = transform.last_stats.get("scale")
        return None if scale is None else scale.detach().double().reshape(-1)
    return None


def _is_sparse(p: torch.Tensor) -> bool:
    return p.grad is not None and p.grad.is_sparse


def flip_one_weight(model: torch.nn.Module, seed: int) -> tuple[str, int]:
    """Move one weight, chosen by `seed`, up by one ULP (the Summers & Dinneen instability probe)."""
    named = [(n, p) for n, p in model.named_parameters() if p.numel() > 0]
    sizes = np.array([p.numel() for _, p in named], dtype=np.int64)
    rng = np.random.default_rng(seed)
    flat = int(rng.integers(0, int(sizes.sum())))
    which = int(np.searchsorted(np.cumsum(sizes), flat, side="right"))
    offset = flat - int(sizes[:which].sum())
    name, param = named[which]
    with torch.no_grad():
        view = param.view(-1)
        view[offset] = torch.nextafter(view[offset], torch.tensor(math.inf, dtype=view.dtype))
    return name, offset


def _grad_norm(model: torch.nn.Module) -> float:
    total = 0.0
    for p in model.parameters():
        g = p.grad
        if g is None:
            continue
        values = g.coalesce().values() if g.is_sparse else g
        total += float(values.double().pow(2).sum())
    return math.sqrt(total)


class StaleGradientQueue:
    """Simulated asynchronous training: the gradient of step t is applied at step t + s, s ∈ 0..k.

    Staleness values come from the `async` seed; pending gradients are applied in the order they
    were computed, each as its own optimizer step, like a parameter server receiving late pushes.
    """

    def __init__(self, max_staleness: int, seed: int) -> None:
        self.max_staleness = max_staleness
        self.rng = np.random.default_rng(seed)
        self.pending: dict[int, list[list[torch.Tensor | None]]] = defaultdict(list)

    def push(self, step: int, grads: list[torch.Tensor | None]) -> None:
        delay = int(self.rng.integers(0, self.max_staleness + 1))
        self.pending[step + delay].append(grads)

    def due(self, step: int) -> list[list[torch.Tensor | None]]:
        return self.pending.pop(step, [])

    def drain(self) -> list[list[torch.Tensor | None]]:
        out = []
        for step in sorted(self.pending):
            out += self.pending.pop(step)
        return out


def _apply(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor | None]
) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    optimizer.step()


def predict(
    model: torch.nn.Module,
    cat: torch.Tensor,
    num: torch.Tensor,
    rows_read: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Predictions [N, T] float64 in chunks of `EVAL_BATCH` rows; `rows_read(rows)` after each
    (`EncodedData.rows_read`: memory-mapped evaluation data is not left resident)."""
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, cat.shape[0], EVAL_BATCH):
            logits = model(cat[start : start + EVAL_BATCH], num[start : start + EVAL_BATCH])
            out.append(torch.sigmoid(logits.double()).cpu().numpy())
            if rows_read is not None:
                rows_read(len(logits))
    return np.concatenate(out) if out else np.zeros((0, model.n_tasks))


def initial_model(
    encoded: Any,
    config: RunConfig,
    replica: int,
    seeds: dict[str, int],
    model_factory: Any = None,
) -> torch.nn.Module:
    """Replica `replica`'s model before its first step (on the CPU): built (the user's module with
    `config.model.factory`, seeded like ours: reprokit.nn.factory), initialised from its `init`
    seed and, when `bitflip` varies, one weight moved by one ULP (replicas after the first)."""
    if config.model.factory:
        from reprokit.nn.factory import build_factory_model

        model = build_factory_model(config, encoded, model_factory)
    else:
        n_tasks = encoded.train_y.shape[1]
        model = build_model(config, encoded.vocab_sizes, encoded.train_num.shape[1], n_tasks)
    model.reset_parameters(torch.Generator().manual_seed(seeds["init"]))
    if "bitflip" in config.vary and replica > 0:
        flip_one_weight(model, seeds["bitflip"])
    return model


def train_replica(
    encoded: Any,
    config: RunConfig,
    replica: int,
    seeds: dict[str, int],
    model_factory: Any = None,
) -> ReplicaOutput:
    """Train one replica on `encoded` (reprokit.data.encoding.EncodedData) and predict the eval
    split; with `config.model.factory`, the user's module (`model_factory`, else the spec's)."""
    configure_determinism(config)
    threads = threads_for_replica(config, replica)
    torch.set_num_threads(threads)
    device = torch.device(config.device)

    n_tasks = encoded.train_y.shape[1]
    labels = list(getattr(encoded, "label_names", [f"label_{t}" for t in range(n_tasks)]))
    model = initial_model(encoded, config, replica, seeds, model_factory)
    model.to(device)
    dropout_gen = torch.Generator(device=device).manual_seed(seeds["dropout"])
    model.set_dropout_generator(dropout_gen)
    table = model.embeddings if dynamic_table(config) else None
    if table is not None:
        table.start(seeds["admission"])
    times = getattr(encoded, "train_time", None)
    bundle = build_optimizer(config, model)
    optimizer, transform = bundle
    params = list(model.parameters())
    stale = (
        StaleGradientQueue(config.async_staleness, seeds["async"])
        if "async" in config.vary
        else None
    )
    detector = SpikeDetector(config.divergence)

    cat = torch.as_tensor(encoded.train_cat, device=device)
    num = torch.as_tensor(encoded.train_num, device=device)
    y = torch.as_tensor(encoded.train_y, device=device)
    order_rng = np.random.default_rng(seeds["data-order"])
    bs = config.optim.batch_size
    n = cat.shape[0]
    log: dict[str, list] = defaultdict(list)
    diverged = False
    step = 0
    start = time.perf_counter()
    for epoch in range(config.optim.epochs):
        model.train()
        perm = torch.as_tensor(order_rng.permutation(n), device=device)
        for lo in range(0, n, bs):
            idx = perm[lo : lo + bs]
            encoded.rows_read(len(idx))
            logits = model(cat[idx], num[idx])
            target = y[idx]
            # Mean over batch and tasks = mean over tasks of each task's mean BCE.
            loss = F.binary_cross_entropy_with_logits(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = float(loss.detach())
            grad_norm = _grad_norm(model)
            log["step"].append(step)
            log["epoch"].append(epoch)
            log["loss"].append(loss_value)
            log["grad_norm"].append(grad_norm)
            if n_tasks > 1:
                with torch.no_grad():
                    per_task = F.binary_cross_entropy_with_logits(
                        logits.detach(), target, reduction="none"
                    ).mean(0)
                for name, value in zip(labels, per_task.tolist(), strict=True):
                    log[f"loss_{name}"].append(value)
            detector.update(step, loss_value, grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                diverged = True
                if "sigma_min" in log:
                    _pad_sigma(log)
                break
            if transform is not None:
                transform.apply()
            if stale is None:
                optimizer.step()
            else:
                stale.push(step, [p.grad for p in params])
                for grads in stale.due(step):
                    _apply(optimizer, params, grads)
            _log_sigma(log, clipping_factors(bundle, params))
            if table is not None:
                rows = idx.cpu().numpy()
                table.after_step(encoded.train_cat[rows], _take(times, rows), optimizer)
                log["table_rows"].append(table.state.rows_in_use)
            step += 1
        if diverged:
            break
    if stale is not None and not diverged:
        for grads in stale.drain():
            _apply(optimizer, params, grads)
    detector.finish()
    train_seconds = time.perf_counter() - start

    ecat = torch.as_tensor(eval_ids(encoded, config), device=device)
    enum = torch.as_tensor(encoded.eval_num, device=device)
    predictions = predict(model, ecat, enum, encoded.rows_read)
    if not np.isfinite(predictions).all():
        diverged = True
    frame = _log_frame(log)
    return ReplicaOutput(
        predictions,
        frame,
        train_seconds,
        diverged or detector.diverged,
        threads,
        step,
        detector,
        table.state.stats(table.dim) if table is not None else None,
    )


def dynamic_table(config: RunConfig) -> bool:
    """Whether the config's embedding table changes during training (the registry says)."""
    return EMBEDDING_TABLES[config.model.embedding].capabilities.dynamic


def eval_ids(encoded: Any, config: RunConfig) -> np.ndarray:
    """The eval indices the config's table reads (raw values for kinds that hash them)."""
    raw = EMBEDDING_TABLES[config.model.embedding].capabilities.raw_eval_ids
    pick = getattr(encoded, "eval_ids", None)
    return pick(raw) if pick is not None else encoded.eval_cat


def _take(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[rows]


def _log_sigma(log: dict[str, list], sigma: torch.Tensor | None) -> None:
    if sigma is None or sigma.numel() == 0:
        if "sigma_min" in log:
            _pad_sigma(log)
        return
    lo, mean = torch.stack([sigma.min(), sigma.mean()]).tolist()
    _pad_sigma(log, lo, mean)


def _pad_sigma(log: dict[str, list], lo: float = math.nan, mean: float = math.nan) -> None:
    """Keep the σ columns as long as the others (NaN where a step has no σ)."""
    want = len(log["step"]) - 1
    for key, value in (("sigma_min", lo), ("sigma_mean", mean)):
        column = log[key]
        column.extend([math.nan] * (want - len(column)))
        column.append(value)


def _log_frame(log: dict[str, list]) -> pd.DataFrame:
    """The train_log frame (the `event` column is added when the replica is stored, from the
    detector's events and the post-training collapse check)."""
    steps = np.asarray(log["step"], dtype=np.int64)
    columns: dict[str, Any] = {
        "step": steps,
        "epoch": np.asarray(log["epoch"], dtype=np.int64),
        "loss": np.asarray(log["loss"], dtype=np.float64),
        "grad_norm": np.asarray(log["grad_norm"], dtype=np.float64),
    }
    extra = sorted(k for k in log if k.startswith(("loss_", "sigma_")))
    if "table_rows" in log:  # a diverged step stops before the table's update: it keeps its size
        sizes = list(log["table_rows"])
        sizes += sizes[-1:] * (len(steps) - len(sizes)) if sizes else [0] * len(steps)
        columns["table_rows"] = np.asarray(sizes, dtype=np.int64)
    for key in extra:
        values = list(log[key]) + [math.nan] * (len(steps) - len(log[key]))
        columns[key] = np.asarray(values, dtype=np.float64)
    return pd.DataFrame(columns)
