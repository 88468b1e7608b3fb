"""The vectorized engine for `--model-factory` models: every replica's copy of the user's module
stacked with `torch.func`, one `vmap` of `grad(loss ∘ functional_call)` per step.

Replica r is trained like replica r of the reference loop (`loop.train_replica`), up to
floating-point reduction order:

- initialisation: replica r's `FactoryModel` is built, initialised from its `init` seed (and
  bit-flipped from its `bitflip` seed) by `loop.initial_model`, the reference loop's own code;
  the replicas' parameters and buffers are then stacked (`torch.func.stack_module_state`);
- data order: replica r's permutation of every epoch comes from its own `data-order` generator,
  and each replica gathers its own batch rows (the rows the reference loop's step reads);
- one step: `vmap` over replicas of `grad_and_value` of the reference loss (the mean over batch
  and tasks of the BCE with logits) of `functional_call(model, (params, buffers), (cat, num))`;
  the gradient norm of replica r is the square root of its squared gradient entries summed in
  float64, as the loop logs it (before any update);
- the optimizer (those the registry marks `stacked`: adagrad, sgd, adam) is torch.optim's dense
  update with the stacked rules of `reprokit.training.stacked.optimizers` (`DenseStackedOptimizer`);
  the user's embeddings have dense gradients here as in the loop (sparse ones are refused);
- async: one `StaleGradientQueue` per replica, seeded from its `async` seed, each due gradient an
  optimizer step of that replica alone.

What this engine can train is decided in one place, `reprokit.training.stacked.capability`
(`factory_reason`: dropout, buffers that change in training, sparse embedding gradients, a
forward or backward that fails under `vmap`, tried on a few rows), which `choose_engine` and
`train_replicas` ask; this module inspects no model itself.

A replica whose loss or gradient norm goes non-finite is frozen at that step (logged, never
updated again), like the loop's `break`. Replicas that would train identically (`--vary none`)
share one slot of the stack, so the control arm is bitwise equal by construction; one extra,
discarded slot trains last, so the scalar tails of elementwise kernels never touch a kept
replica, and the optimizer's buffers are padded to ALIGN elements (`DenseStackedOptimizer`):
a replica's numbers do not depend on its slot or on the stack's size (checked by
tests/test_factory_vmap.py). What cannot be padded is a parameter-only tensor under ~32 elements
per replica meeting a transcendental or fused operation inside the user's forward; such a
tensor may round by one ulp differently in different slots.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.training.divergence import SpikeDetector
from reprokit.training.loop import (
    EVAL_BATCH,
    ReplicaOutput,
    StaleGradientQueue,
    configure_determinism,
    eval_ids,
    initial_model,
)
from reprokit.training.stacked.optimizers import DenseStackedOptimizer

__all__ = ["StackedModule", "train_replicas"]

State = dict[str, torch.Tensor]


class StackedModule:
    """R copies of one module as stacked tensors: `params` (those that train, [R, ...] each, in
    the module's parameter order), `consts` (buffers and frozen parameters, [R, ...]) and a
    parameter-free skeleton (`base`, on the meta device) that `functional_call` runs."""

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        names = [n for n, p in models[0].named_parameters() if p.requires_grad]
        params, buffers = stack_module_state(list(models))
        self.names = names
        self.params: State = {n: params[n].detach() for n in names}
        self.consts: State = {n: t.detach() for n, t in params.items() if n not in self.params}
        self.consts.update({n: t.detach() for n, t in buffers.items()})
        self.base = copy.deepcopy(models[0]).to("meta")
        self.replicas = len(models)

    def step_function(self) -> Callable[..., tuple[State, tuple[torch.Tensor, torch.Tensor]]]:
        """`f(params, consts, cat, num, y) -> (grads, (loss, logits))`, every argument with a
        leading replica axis: replica r's gradient of the reference loss on its own batch."""
        base = self.base

        def loss(params: State, consts: State, cat, num, y):
            logits = functional_call(base, (params, consts), (cat, num))
            return F.binary_cross_entropy_with_logits(logits, y), logits.detach()

        return vmap(grad_and_value(loss, has_aux=True), randomness="error")

    def logits(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """Logits [R, batch, tasks] of every replica on the same rows (evaluation mode)."""
        base = self.base

        def forward(params: State, consts: State):
            return functional_call(base, (params, consts), (cat, num))

        self.base.eval()
        try:
            with torch.no_grad():
                return vmap(forward, randomness="error")(self.params, self.consts)
        finally:
            self.base.train()

    def grad_sq_norms(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Each replica's squared gradient norm [R] in float64 (parameter order, as the loop)."""
        parts = [g.double().pow(2).flatten(1).sum(1) for g in grads]
        return torch.stack(parts, dim=1).sum(1)


def train_replicas(
    encoded: Any,
    config: RunConfig,
    replicas: Sequence[int],
    seeds: Sequence[dict[str, int]],
    model_factory: Any = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[ReplicaOutput]:
    """Train `replicas` of the config's factory model (with their seeds) together; one output
    each, as `loop.train_replica` gives it. `on_step(done, total)` after every stacked step."""
    from reprokit.training.stacked.capability import check_supported

    check_supported(config, encoded, model_factory)
    if len(replicas) != len(seeds) or not replicas:
        raise ReprokitError("the vectorized engine needs one seed set per replica and at least one")
    configure_determinism(config)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(encoded, config, list(replicas), list(seeds), model_factory, on_step)
    finally:
        torch.set_num_threads(saved_threads)


def _train(
    encoded: Any,
    config: RunConfig,
    replicas: list[int],
    seeds: list[dict[str, int]],
    model_factory: Any,
    on_step: Callable[[int, int], None] | None,
) -> list[ReplicaOutput]:
    from reprokit.training.vectorized import _Log, _write_logs

    device = torch.device(config.device)
    group, slot_replicas = _slots(config, replicas, seeds)
    slot_seeds = [seeds[i] for i in slot_replicas]
    models = [
        initial_model(encoded, config, replicas[i], seeds[i], model_factory).to(device).train()
        for i in slot_replicas
    ]
    stack = StackedModule(models)
    del models
    n_slots = stack.replicas
    names = stack.names
    opt = DenseStackedOptimizer(
        [stack.params[name] for name in names],
        config.optim.name,
        config.optim.lr,
        config.optim.weight_decay,
        config.optim.initial_accumulator_value,
    )
    stack.params = dict(zip(names, opt.views, strict=True))  # the optimizer's padded buffers
    step_fn = stack.step_function()
    queues = (
        [StaleGradientQueue(config.async_staleness, s["async"]) for s in slot_seeds]
        if "async" in config.vary
        else None
    )
    order_rngs = [np.random.default_rng(s["data-order"]) for s in slot_seeds]

    cat = torch.as_tensor(encoded.train_cat, device=device)
    num = torch.as_tensor(encoded.train_num, device=device)
    y = torch.as_tensor(encoded.train_y, device=device)
    n, n_tasks = cat.shape[0], y.shape[1]
    bs = config.optim.batch_size
    labels = list(getattr(encoded, "label_names", [f"label_{t}" for t in range(n_tasks)]))
    alive = np.ones(n_slots, dtype=bool)
    steps = [0] * n_slots
    # per-iteration history [slots]; a replica's log is its slot's prefix up to the iteration it
    # froze at (written after the loop, as the stacked MLP engine does)
    hist_epoch: list[int] = []
    hist_loss: list[np.ndarray] = []
    hist_gn2: list[np.ndarray] = []
    hist_task: list[np.ndarray] = []
    last_logged = [-1] * n_slots
    it = 0
    total_steps = config.optim.epochs * -(-n // bs)
    start = time.perf_counter()
    for epoch in range(config.optim.epochs):
        perms = torch.as_tensor(np.stack([g.permutation(n) for g in order_rngs]), device=device)
        for lo in range(0, n, bs):
            idx = perms[:, lo : lo + bs]  # [slots, batch]: each replica's own rows
            encoded.rows_read(idx.numel())  # memory-mapped data: release what was read
            try:
                grads, (loss, logits) = step_fn(
                    stack.params, stack.consts, cat[idx], num[idx], y[idx]
                )
            except Exception as exc:  # the user's module on a batch the check did not try
                raise _user_error(exc, f"step {it} (batch of {idx.shape[1]} rows)") from exc
            grad_list = [grads[name] for name in names]
            with torch.no_grad():
                stats = torch.stack([loss.double(), stack.grad_sq_norms(grad_list)])
                loss_v, gn2_v = stats.cpu().numpy()  # the one host transfer of a step
                if n_tasks > 1:
                    per_task = F.binary_cross_entropy_with_logits(logits, y[idx], reduction="none")
                    hist_task.append(per_task.mean(1).cpu().numpy())
            hist_epoch.append(epoch)
            hist_loss.append(loss_v)
            hist_gn2.append(gn2_v)
            for r in np.flatnonzero(alive):
                last_logged[r] = it
            bad = alive & ~(np.isfinite(loss_v) & np.isfinite(gn2_v))
            for r in np.flatnonzero(bad):
                alive[r] = False  # frozen: no update from this gradient on
                opt.freeze(int(r))
            it += 1
            if queues is None:
                opt.step_all(grad_list)
            else:
                for r in np.flatnonzero(alive):
                    queues[r].push(steps[r], [g[r].clone() for g in grad_list])
                    for due in queues[r].due(steps[r]):
                        opt.step_replica(int(r), due)
            for r in range(n_slots):
                steps[r] += int(alive[r])
            if on_step is not None:
                on_step(it, total_steps)
            if not alive.any():
                break
        if not alive.any():
            break
    if queues is not None:
        for r in np.flatnonzero(alive):
            for due in queues[r].drain():
                opt.step_replica(int(r), due)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    logs = [_Log(SpikeDetector(config.divergence)) for _ in replicas]
    _write_logs(
        logs,
        labels,
        hist_epoch,
        [v[group] for v in hist_loss],
        [v[group] for v in hist_gn2],
        [v[group] for v in hist_task],
        [last_logged[g] for g in group],
    )
    share = (time.perf_counter() - start) / len(replicas)

    try:
        predictions = _predict(stack, encoded, config, device)
    except Exception as exc:
        raise _user_error(exc, "evaluation") from exc
    outputs = []
    for log, g in zip(logs, group, strict=True):
        log.detector.finish()
        diverged = not alive[g] or not bool(np.isfinite(predictions[g]).all())
        outputs.append(
            ReplicaOutput(
                predictions=np.array(predictions[g]),
                log=log.frame(),
                train_seconds=share,
                diverged=diverged or log.detector.diverged,
                threads=config.threads,
                steps=steps[g],
                detector=log.detector,
            )
        )
    return outputs


def _user_error(exc: Exception, where: str) -> ReprokitError:
    """An error of the user's module inside the stacked step, as one sentence."""
    if isinstance(exc, ReprokitError):
        return exc
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return ReprokitError(
        f"the model factory's module failed under torch.func.vmap at {where}: {text} "
        "(--engine process trains it one replica at a time)"
    )


def _slots(
    config: RunConfig, replicas: list[int], seeds: list[dict[str, int]]
) -> tuple[list[int], list[int]]:
    """(slot of every replica, the replica (index into `replicas`) each slot trains).

    Replicas that would train identically (the same seeds of every source this engine uses: a
    source that is not varied gives every replica replica 0's seed) share one slot, so the
    control arm's replicas are one computation, bitwise equal by construction. One more slot,
    a copy of the last, trains beside them and is thrown away: the scalar tail of an
    elementwise kernel over a stacked tensor lies in the last slot's elements, so no kept
    replica's numbers depend on the stack's size (and a lone replica gets the batched kernels
    of any larger stack)."""

    def key(replica: int, s: dict[str, int]) -> tuple:
        flipped = "bitflip" in config.vary and replica > 0  # `loop.initial_model`'s rule
        return (
            s["init"],
            s["data-order"],
            s["async"] if "async" in config.vary else None,
            s["bitflip"] if flipped else None,
        )

    first: dict[tuple, int] = {}
    group = [first.setdefault(key(r, s), len(first)) for r, s in zip(replicas, seeds, strict=True)]
    trains = [group.index(g) for g in range(len(first))]
    return group, [*trains, trains[-1]]


def _predict(
    stack: StackedModule, encoded: Any, config: RunConfig, device: torch.device
) -> np.ndarray:
    """Every replica's predictions [R, N_eval, T] float64 (sigmoid in float64, as the loop),
    in the loop's evaluation batches."""
    cat = torch.as_tensor(eval_ids(encoded, config), device=device)
    num = torch.as_tensor(encoded.eval_num, device=device)
    out = []
    for lo in range(0, cat.shape[0], EVAL_BATCH):
        logits = stack.logits(cat[lo : lo + EVAL_BATCH], num[lo : lo + EVAL_BATCH])
        out.append(torch.sigmoid(logits.double()).cpu().numpy())
        encoded.rows_read(logits.shape[1])
    if not out:
        return np.zeros((stack.replicas, 0, encoded.eval_y.shape[1]))
    return np.concatenate(out, axis=1)
