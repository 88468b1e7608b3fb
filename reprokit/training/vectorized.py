"""The `vectorized` engine: all replicas of a train-ensemble in one process, stacked parameters.

Replica r of this engine is trained like replica r of the reference loop (`loop.train_replica`), up
to floating-point reduction order:

- initialisation: the reference model is built and initialised from replica r's `init` seed (and
  bit-flipped from its `bitflip` seed), then its parameters are copied into slice r of the stack;
- data order: replica r's permutation of every epoch comes from its own `data-order` generator,
  and each replica gathers its own batch rows;
- dropout: replica r's masks come from a `torch.Generator` seeded with its `dropout` seed, drawn
  in the same order and shapes as the reference model draws them;
- async: one `StaleGradientQueue` per replica, seeded from its `async` seed;
- the optimizer (those the registry marks `stacked`: adagrad, sgd, adam) is re-implemented for
  stacked tensors with torch.optim's formulas; embedding tables of sparse optimizers (adagrad,
  sgd) are updated only in the rows a batch used, with the optimizer state updated in those rows
  only.

The parts live in `reprokit.training.stacked`, one module per job: `capability` (what this engine
can train, from the components' declared capabilities), `layout` (`Stack`, `build_stack`: every
replica's table rows as its table kind lays them out in one stacked table [R, V_pad, dim], the
dense layers as views of one flat [R, P_pad] buffer; the ALIGN padding), `optimizers` (the stacked
Adagrad / SGD / Adam) and `backward` (`Stepper`: the forward pass and torch's backward formulas
written out by hand, without the autograd graph, into reused buffers; embedding gradients
coalesced without a sort, on CPU by a compiled kernel with the same bits, see
reprokit/nn/_fused/engine_kernels.c). This module is the driver. Every per-replica block an
elementwise kernel sees is a multiple of ALIGN elements (batches are padded with zero-weight rows),
so a replica's bits never depend on its slot in the stack or on which replicas share it: the
control arm is bitwise identical and a resumed subset reproduces the replicas of a full run.
Replicas whose seeds coincide (a source that is not varied) share one generator draw.

Per replica, as in the reference: the train log (step, epoch, loss, grad_norm, `loss_<label>` per
task), a `SpikeDetector`, and divergence handling: a replica whose loss or gradient norm goes
non-finite is frozen (logged at that step, never updated again, excluded from the stale-gradient
drain) without disturbing the others. One host transfer per step (loss and grad-norm of all
replicas: the freezing decision needs them); the logs and detectors are written from the collected
values after the loop, with the values and order the per-step logging had.

A `--model-factory` model has no stacked layout of this kind: `train_replicas` hands it to
`reprokit.training.func_stack` (the user's module stacked with `torch.func`, one `vmap` of
`grad(functional_call)` per step).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.training.divergence import SpikeDetector
from reprokit.training.loop import (
    EVAL_BATCH,
    ReplicaOutput,
    StaleGradientQueue,
    configure_determinism,
    eval_ids,
)
from reprokit.training.stacked.backward import (
    Batch,
    EmbeddingGradAccumulator,
    Stepper,
    forward,
    grad_sq_norms,
)
from reprokit.training.stacked.capability import check_supported, unsupported_reason
from reprokit.training.stacked.dynamic import DynamicTables
from reprokit.training.stacked.layout import (
    ALIGN,
    SparseGrad,
    Stack,
    build_stack,
    flat_rows,
    pad_rows,
    round_up,
)
from reprokit.training.stacked.optimizers import RULES, StackedOptimizer

#: The engine's names: the driver's own and the parts of reprokit.training.stacked that callers
#: (and tests) import from here, where they lived before the split.
__all__ = [
    "ALIGN",
    "RULES",
    "Batch",
    "EmbeddingGradAccumulator",
    "SharedDraws",
    "SparseGrad",
    "Stack",
    "StackedOptimizer",
    "Stepper",
    "build_stack",
    "check_supported",
    "forward",
    "grad_sq_norms",
    "predict_stack",
    "train_replicas",
    "unsupported_reason",
]


class SharedDraws:
    """Per-replica random streams where replicas with equal seeds share one stream (and one draw).

    `groups[r]` is the stream index of replica r; `identity` when every replica has its own stream.
    """

    def __init__(self, seed_values: Sequence[int]) -> None:
        unique: dict[int, int] = {}
        self.groups = [unique.setdefault(int(s), len(unique)) for s in seed_values]
        self.seeds = list(unique)
        self.identity = self.groups == list(range(len(self.groups)))
        self.single = len(self.seeds) == 1

    def expand(self, drawn: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """[G, ...] per stream → [R, ...] per replica ([1, ...] when all share one stream)."""
        if self.single or self.identity:
            return drawn
        return drawn.index_select(0, index)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------
@dataclass
class _Log:
    """One replica's train_log columns, as the reference loop writes them (per-task losses
    `loss_<label>` for multitask models) plus its divergence detector."""

    detector: SpikeDetector
    step: list[int] = field(default_factory=list)
    epoch: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    task_loss: dict[str, list[float]] = field(default_factory=dict)
    table_rows: list[int] | None = None  # a dynamic table's size after each step

    def frame(self) -> pd.DataFrame:
        columns = {
            "step": np.asarray(self.step, dtype=np.int64),
            "epoch": np.asarray(self.epoch, dtype=np.int64),
            "loss": np.asarray(self.loss, dtype=np.float64),
            "grad_norm": np.asarray(self.grad_norm, dtype=np.float64),
        }
        for name in sorted(self.task_loss):
            columns[f"loss_{name}"] = np.asarray(self.task_loss[name], dtype=np.float64)
        if self.table_rows is not None:
            columns["table_rows"] = np.asarray(self.table_rows, dtype=np.int64)
        return pd.DataFrame(columns)


def _write_logs(
    logs: list[_Log],
    labels: list[str],
    epochs: list[int],
    losses: list[np.ndarray],
    gn2: list[np.ndarray],
    tasks: list[np.ndarray],
    last: list[int],
) -> None:
    """Each replica's log and detector from the per-iteration history: iterations 0..last[r]
    (its steps while alive, and the step it froze at), values as the per-step logging wrote them."""
    if not epochs:
        return
    loss_all = np.stack(losses)  # [iterations, R]
    gn_all = np.sqrt(np.stack(gn2))
    task_all = np.stack(tasks) if tasks else None  # [iterations, R, T]
    for r, log in enumerate(logs):
        k = last[r] + 1
        log.step = list(range(k))
        log.epoch = epochs[:k]
        log.loss = loss_all[:k, r].tolist()
        log.grad_norm = gn_all[:k, r].tolist()
        if task_all is not None:
            for t, name in enumerate(labels):
                log.task_loss[name] = task_all[:k, r, t].tolist()
        for step, (loss, norm) in enumerate(zip(log.loss, log.grad_norm, strict=True)):
            log.detector.update(step, loss, norm)


def predict_stack(
    stack: Stack,
    cat: torch.Tensor,
    num: torch.Tensor,
    rows_read: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Predictions of every replica [R, N, T] float64 (sigmoid in float64, as the reference);
    `rows_read(rows)` after each chunk (see `reprokit.training.loop.predict`)."""
    r = stack.replicas
    chunk = max(1024, EVAL_BATCH // max(r, 1)) // ALIGN * ALIGN
    base = torch.arange(r, device=cat.device).view(r, 1, 1) * stack.vocab_total
    out = []
    with torch.no_grad():
        for lo in range(0, cat.shape[0], chunk):
            c_cat, c_num = cat[lo : lo + chunk], num[lo : lo + chunk]
            size = c_cat.shape[0]
            c_cat, c_num = (pad_rows(t, round_up(size), 0) for t in (c_cat, c_num))
            logits, _ = forward(stack, flat_rows(stack, c_cat.unsqueeze(0), base), c_num[None])
            out.append(torch.sigmoid(logits.double())[:, :size].cpu().numpy())
            if rows_read is not None:
                rows_read(size)
    if not out:
        return np.zeros((r, 0, stack.weights[-1].shape[2]))
    return np.concatenate(out, axis=1)


def train_replicas(
    encoded: Any,
    config: RunConfig,
    replicas: Sequence[int],
    seeds: Sequence[dict[str, int]],
    on_step: Callable[[int, int], None] | None = None,
    model_factory: Any = None,
) -> list[ReplicaOutput]:
    """Train `replicas` (indices into the ensemble, with their seeds) together; one output each.

    `on_step(done, total)` is called after every optimizer step of the stack (all replicas step
    together), so a caller can show progress before the first replica finishes. A factory model
    (`config.model.factory`; `model_factory` the Python API's callable) is stacked by
    `reprokit.training.func_stack` instead."""
    if config.model.factory:
        from reprokit.training import func_stack

        return func_stack.train_replicas(encoded, config, replicas, seeds, model_factory, on_step)
    check_supported(config, encoded)
    if len(replicas) != len(seeds) or not replicas:
        raise ReprokitError("the vectorized engine needs one seed set per replica and at least one")
    configure_determinism(config)
    saved_threads = torch.get_num_threads()
    saved_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(config.threads)
    # Deterministic mode NaN-fills every fresh tensor (a full write pass per allocation); this
    # engine never reads memory it has not written, so the fill only costs time.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        return _train(encoded, config, list(replicas), list(seeds), on_step)
    finally:
        torch.set_num_threads(saved_threads)
        torch.utils.deterministic.fill_uninitialized_memory = saved_fill


def _train(
    encoded: Any,
    config: RunConfig,
    replicas: list[int],
    seeds: list[dict[str, int]],
    on_step: Callable[[int, int], None] | None = None,
) -> list[ReplicaOutput]:
    device = torch.device(config.device)
    n_real = len(replicas)
    if n_real == 1:
        # Batched GEMMs of one matrix take another kernel (gemv for the 1-wide head) than those of
        # two or more, so a lone replica trains beside a copy of itself: it then gets the same bits
        # as in any larger stack, which keeps resumed runs consistent.
        replicas, seeds = replicas * 2, seeds * 2
    stack = build_stack(config, encoded, replicas, seeds)
    n_rep = stack.replicas
    opt = StackedOptimizer(
        stack,
        config.optim.name,
        config.optim.lr,
        config.optim.weight_decay,
        config.optim.initial_accumulator_value,
    )
    replica_base = torch.arange(n_rep, device=device).view(n_rep, 1, 1) * stack.vocab_total

    order = SharedDraws([s["data-order"] for s in seeds])
    order_rngs = [np.random.default_rng(s) for s in order.seeds]
    order_index = torch.as_tensor(order.groups, device=device)
    drop = SharedDraws([s["dropout"] for s in seeds])
    drop_gens = [torch.Generator(device=device).manual_seed(s) for s in drop.seeds]
    drop_index = torch.as_tensor(drop.groups, device=device)
    queues = (
        [StaleGradientQueue(config.async_staleness, s["async"]) for s in seeds]
        if "async" in config.vary
        else None
    )
    hidden = [w.shape[2] for w in stack.weights[:-1]]
    n_tasks = stack.weights[-1].shape[2]
    p = stack.dropout

    cat = torch.as_tensor(encoded.train_cat, device=device)
    num = torch.as_tensor(encoded.train_num, device=device)
    y = torch.as_tensor(encoded.train_y, device=device)
    n = cat.shape[0]
    bs = config.optim.batch_size
    # rows of a replica's table (the layout's: field offsets added), int32 when they fit (half the
    # bytes to copy); a dynamic table's ids are mapped to rows step by step instead
    tables = DynamicTables(stack, encoded, device) if stack.dynamic is not None else None
    narrow = stack.vocab_total * n_rep < 2**31

    def table_rows(ids: torch.Tensor) -> torch.Tensor:
        rows = stack.layout.rows(ids) if tables is None else ids
        return rows.to(torch.int32) if narrow else rows

    # memory-mapped data (larger than memory) is gathered step by step; otherwise the whole split
    # is turned into table rows once and each epoch's rows are gathered in their orders at once
    mapped = encoded.is_mapped
    local_rows = cat if mapped else table_rows(cat)
    stepper = Stepper(stack)

    div_config = getattr(config, "divergence", None)
    logs = [_Log(SpikeDetector(div_config) if div_config else SpikeDetector()) for _ in seeds]
    labels = list(getattr(encoded, "label_names", [f"label_{t}" for t in range(n_tasks)]))
    alive = [True] * n_rep
    alive_np = np.ones(n_rep, dtype=bool)
    steps = [0] * n_rep
    # Per-iteration history [R] of every replica (losses, squared gradient norms, task losses);
    # each replica's log is its prefix up to the iteration it froze at (written after the loop).
    hist_epoch: list[int] = []
    hist_loss: list[np.ndarray] = []
    hist_gn2: list[np.ndarray] = []
    hist_task: list[np.ndarray] = []
    hist_rows: list[np.ndarray] = []  # a dynamic table's rows per replica after each step
    last_logged = [-1] * n_rep
    it = 0
    total_steps = config.optim.epochs * -(-n // bs)
    start = time.perf_counter()
    with torch.no_grad():
        for epoch in range(config.optim.epochs):
            perms = torch.as_tensor(np.stack([g.permutation(n) for g in order_rngs]), device=device)
            if not mapped:
                # the epoch's rows in each order at once: a step then reads a contiguous slice
                # instead of gathering scattered rows (cache misses on every step)
                epoch_data = [
                    t.index_select(0, perms.reshape(-1)).view(len(order_rngs), n, -1)
                    for t in (local_rows, num, y)
                ]
            for lo in range(0, n, bs):
                b = min(bs, n - lo)
                b_pad = round_up(b)  # aligned per-replica blocks (see ALIGN); pad rows weigh 0
                if mapped:
                    pick = perms[:, lo : lo + b].reshape(-1)
                    epoch_data = [
                        table_rows(cat[pick]).view(len(order_rngs), b, -1),
                        num[pick].view(len(order_rngs), b, -1),
                        y[pick].view(len(order_rngs), b, -1),
                    ]
                    encoded.rows_read(len(pick))
                first = 0 if mapped else lo
                rows_b, num_b, y_b = (
                    order.expand(pad_rows(t[:, first : first + b], b_pad, 1), order_index)
                    for t in epoch_data
                )
                if tables is not None:
                    ids_b = rows_b
                    rows_b = tables.rows(ids_b, b)
                masks = None
                if p > 0:
                    masks = []
                    for h in hidden:  # the reference's draws: one [b, h] per dropout layer per step
                        noise = torch.stack(
                            [torch.rand((b, h), generator=g, device=device) for g in drop_gens]
                        )
                        keep = pad_rows((noise >= p).to(noise.dtype), b_pad, 1)
                        masks.append(drop.expand(keep, drop_index))
                batch = Batch(rows_b + replica_base, num_b, y_b, masks, b)
                loss, task, flat_grad, table_grad = stepper(batch)
                if tables is not None:
                    tables.drop_miss_gradient(table_grad)
                stats = torch.stack([loss.double(), grad_sq_norms(flat_grad, table_grad, stack)])
                loss_v, gn2_v = stats.cpu().numpy()  # the one host transfer of a step
                hist_epoch.append(epoch)
                hist_loss.append(loss_v)
                hist_gn2.append(gn2_v)
                if task is not None:
                    hist_task.append(task.cpu().numpy())
                for r in np.flatnonzero(alive_np):
                    last_logged[r] = it
                bad = alive_np & ~(np.isfinite(loss_v) & np.isfinite(gn2_v))
                for r in np.flatnonzero(bad):
                    alive[r] = False  # frozen: no update from this gradient on
                    alive_np[r] = False
                it += 1
                if queues is None:
                    if all(alive):
                        opt.step_all(flat_grad, table_grad)
                    else:
                        for r in range(n_rep):
                            if alive[r]:
                                mine = table_grad.for_replica(r, stack.vocab_total)
                                opt.step_replica(r, flat_grad[r], mine)
                else:
                    for r in range(n_rep):
                        if not alive[r]:
                            continue
                        mine_table = table_grad.for_replica(r, stack.vocab_total).clone()
                        mine = (flat_grad[r].clone(), mine_table)
                        queues[r].push(steps[r], mine)  # type: ignore[arg-type]
                        for flat_r, table_r in queues[r].due(steps[r]):
                            opt.step_replica(r, flat_r, table_r)
                if tables is not None:
                    times = tables.times(perms, order.groups, lo, b)
                    tables.update(ids_b[:, :b], times, alive, opt)
                    hist_rows.append(tables.sizes())
                for r in range(n_rep):
                    steps[r] += int(alive[r])
                if on_step is not None:
                    on_step(it, total_steps)
                if not any(alive):
                    break
            if not any(alive):
                break
        if queues is not None:
            for r in range(n_rep):
                if alive[r]:
                    for flat_r, table_r in queues[r].drain():
                        opt.step_replica(r, flat_r, table_r)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    _write_logs(logs[:n_real], labels, hist_epoch, hist_loss, hist_gn2, hist_task, last_logged)
    if tables is not None:
        tables.write_sizes(logs[:n_real], hist_rows, last_logged)
    share = (time.perf_counter() - start) / n_real

    ecat = torch.as_tensor(eval_ids(encoded, config), device=device)
    enum = torch.as_tensor(encoded.eval_num, device=device)
    predictions = predict_stack(stack, ecat, enum, encoded.rows_read)
    outputs = []
    for r in range(n_real):
        detector = logs[r].detector
        detector.finish()
        diverged = not alive[r] or not bool(np.isfinite(predictions[r]).all())
        outputs.append(
            ReplicaOutput(
                predictions=np.ascontiguousarray(predictions[r]),
                log=logs[r].frame(),
                train_seconds=share,
                diverged=diverged or detector.diverged,
                threads=config.threads,
                steps=steps[r],
                detector=detector,
                table=None if tables is None else tables.stats(r),
            )
        )
    return outputs
