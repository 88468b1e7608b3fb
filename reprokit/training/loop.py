"""The single-replica reference training loop (the `process` engine trains one of these per replica).

Every random choice draws from a generator owned by one nondeterminism source, so a replica differs
from another in exactly the sources that were varied.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.nn.models import CTRModel

EVAL_BATCH = 16384


@dataclass
class ReplicaOutput:
    predictions: np.ndarray  # [N_eval, T] float64, in evaluation order
    log: pd.DataFrame  # step, epoch, loss, grad_norm
    train_seconds: float
    diverged: bool
    threads: int
    steps: int


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


def build_model(config: RunConfig, vocab_sizes: list[int], num_numeric: int, n_tasks: int) -> CTRModel:
    return CTRModel(
        vocab_sizes=vocab_sizes,
        num_numeric=num_numeric,
        embedding_dim=config.model.embedding_dim,
        hidden=config.model.hidden,
        activation=config.model.activation,
        dropout=config.model.dropout,
        batch_norm=config.model.batch_norm,
        n_tasks=n_tasks,
        embedding=config.model.embedding,
        sparse_embeddings=config.optim.name in ("adagrad", "sgd", "clippy"),
    )


def build_optimizer(config: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = config.optim
    params = list(model.parameters())
    if opt.name == "adagrad":
        return torch.optim.Adagrad(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "sgd":
        return torch.optim.SGD(params, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.name == "adam":
        return torch.optim.Adam(params, lr=opt.lr, weight_decay=opt.weight_decay)
    raise ReprokitError(f"optimizer {opt.name!r} is not available in this build")


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


def predict(model: CTRModel, cat: torch.Tensor, num: torch.Tensor) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, cat.shape[0], EVAL_BATCH):
            logits = model(cat[start : start + EVAL_BATCH], num[start : start + EVAL_BATCH])
            out.append(torch.sigmoid(logits.double()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features))


def train_replica(encoded: Any, config: RunConfig, replica: int, seeds: dict[str, int]) -> ReplicaOutput:
    """Train one replica on `encoded` (reprokit.data.encoding.EncodedData) and predict the eval split."""
    configure_determinism(config)
    threads = threads_for_replica(config, replica)
    torch.set_num_threads(threads)
    device = torch.device(config.device)

    n_tasks = encoded.train_y.shape[1]
    model = build_model(config, encoded.vocab_sizes, encoded.train_num.shape[1], n_tasks)
    model.reset_parameters(torch.Generator().manual_seed(seeds["init"]))
    if "bitflip" in config.vary and replica > 0:
        flip_one_weight(model, seeds["bitflip"])
    model.to(device)
    dropout_gen = torch.Generator(device=device).manual_seed(seeds["dropout"])
    model.set_dropout_generator(dropout_gen)
    optimizer = build_optimizer(config, model)
    params = list(model.parameters())
    stale = (
        StaleGradientQueue(config.async_staleness, seeds["async"]) if "async" in config.vary else None
    )

    cat = torch.as_tensor(encoded.train_cat, device=device)
    num = torch.as_tensor(encoded.train_num, device=device)
    y = torch.as_tensor(encoded.train_y, device=device)
    order_rng = np.random.default_rng(seeds["data-order"])
    bs = config.optim.batch_size
    n = cat.shape[0]
    log: dict[str, list] = {"step": [], "epoch": [], "loss": [], "grad_norm": []}
    diverged = False
    step = 0
    start = time.perf_counter()
    for epoch in range(config.optim.epochs):
        model.train()
        perm = torch.as_tensor(order_rng.permutation(n), device=device)
        for lo in range(0, n, bs):
            idx = perm[lo : lo + bs]
            logits = model(cat[idx], num[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value = float(loss.detach())
            grad_norm = _grad_norm(model)
            log["step"].append(step)
            log["epoch"].append(epoch)
            log["loss"].append(loss_value)
            log["grad_norm"].append(grad_norm)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                diverged = True
                break
            if stale is None:
                optimizer.step()
            else:
                stale.push(step, [p.grad for p in params])
                for grads in stale.due(step):
                    _apply(optimizer, params, grads)
            step += 1
        if diverged:
            break
    if stale is not None and not diverged:
        for grads in stale.drain():
            _apply(optimizer, params, grads)
    train_seconds = time.perf_counter() - start

    ecat = torch.as_tensor(encoded.eval_cat, device=device)
    enum = torch.as_tensor(encoded.eval_num, device=device)
    predictions = predict(model, ecat, enum)
    if not np.isfinite(predictions).all():
        diverged = True
    frame = pd.DataFrame(
        {
            "step": np.asarray(log["step"], dtype=np.int64),
            "epoch": np.asarray(log["epoch"], dtype=np.int64),
            "loss": np.asarray(log["loss"], dtype=np.float64),
            "grad_norm": np.asarray(log["grad_norm"], dtype=np.float64),
        }
    )
    return ReplicaOutput(predictions, frame, train_seconds, diverged, threads, step)
