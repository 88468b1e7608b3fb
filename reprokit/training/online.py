"""One replica of Monolith-style online training: a training copy that learns from the stream and
a serving copy that predicts, kept apart and synced on a schedule (Liu et al. 2022, §2.3–2.4).

The reference loop's parts (model, optimizer, seeds, deterministic kernels, a dynamic table's
`after_step`) train the copy; this module adds what online training needs:

- `train_pass(rows, ...)`: one pass over some rows in a given order, calling `on_step` after each
  optimizer step (the sync schedule hangs there);
- `ServingCopy`: the model the users see. `sync_sparse` copies the embedding rows that changed in
  the training copy since the last sync (the "touched keys": a row changes exactly when an update
  reached it) together with a dynamic table's id → row map; `sync_dense` copies every other
  parameter and buffer. Both count the bytes they push (a row: its floats plus its 8-byte key);
- `state` / `load_state`: everything that determines the rest of the stream (parameters,
  optimizer state, the dropout generator, a dynamic table's admission state, the step count), so
  a snapshot restored gives bit-identical training.

Order within a pass: the replica's `data-order` seed and the pass's key (the shard number) seed a
permutation of the rows, so the stream is consumed in time order shard by shard and shuffled
within each shard, and a resumed run draws the same orders.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.training.loop import (
    build_model,
    build_optimizer,
    configure_determinism,
    dynamic_table,
    flip_one_weight,
    predict,
    threads_for_replica,
)

__all__ = ["OnlineReplica", "ServingCopy", "SyncCounter", "pass_order"]

KEY_BYTES = 8  # a row pushed to the serving copy carries its 64-bit key


def pass_order(seed: int, key: int, rows: int) -> np.ndarray:
    """The order of one pass over `rows` rows: a permutation from (data-order seed, pass key)."""
    return np.random.default_rng([int(seed), int(key)]).permutation(rows)


@dataclass
class SyncCounter:
    """Bytes pushed to the serving copy (since the counter was last read) and syncs so far."""

    sparse_bytes: int = 0
    dense_bytes: int = 0
    sparse_syncs: int = 0
    dense_syncs: int = 0
    rows_pushed: int = 0

    def take(self) -> dict[str, int]:
        """The bytes and rows since the last `take` (then zero)."""
        out = {"sparse": self.sparse_bytes, "dense": self.dense_bytes, "rows": self.rows_pushed}
        self.sparse_bytes = self.dense_bytes = self.rows_pushed = 0
        return out


def _embedding_names(model: torch.nn.Module) -> set[str]:
    """Model-level names of the embedding table's row-wise parameters (the table says which)."""
    return {f"embeddings.{name}" for name in model.embeddings.row_parameter_names()}


class OnlineReplica:
    """The training copy of replica `replica` (its seeds `seeds`) of `config`."""

    def __init__(
        self,
        config: RunConfig,
        vocab_sizes: Any,
        n_numeric: int,
        n_tasks: int,
        replica: int,
        seeds: dict[str, int],
    ) -> None:
        configure_determinism(config)
        self.config, self.replica, self.seeds = config, replica, seeds
        self.threads = threads_for_replica(config, replica)
        torch.set_num_threads(self.threads)
        self.device = torch.device(config.device)
        self.shape = (vocab_sizes, n_numeric, n_tasks)
        self.model = build_model(config, vocab_sizes, n_numeric, n_tasks)
        self.model.reset_parameters(torch.Generator().manual_seed(seeds["init"]))
        if "bitflip" in config.vary and replica > 0:
            flip_one_weight(self.model, seeds["bitflip"])
        self.model.to(self.device)
        self.dropout = torch.Generator(device=self.device).manual_seed(seeds["dropout"])
        self.model.set_dropout_generator(self.dropout)
        self.table = self.model.embeddings if dynamic_table(config) else None
        if self.table is not None:
            self.table.start(seeds["admission"])
        self.optimizer, self.transform = build_optimizer(config, self.model)
        self.steps = 0

    # -- training ----------------------------------------------------------------------------
    def train_pass(
        self,
        cat: np.ndarray,
        num: np.ndarray,
        y: np.ndarray,
        times: np.ndarray | None,
        order: np.ndarray,
        on_step: Callable[[np.ndarray | None], None] | None = None,
    ) -> int:
        """One pass over the rows in `order`, in batches of `optim.batch_size`; `on_step(batch
        times)` after every optimizer step. Returns the steps taken."""
        torch.set_num_threads(self.threads)
        self.model.train()
        bs, taken = self.config.optim.batch_size, 0
        cat_t = torch.as_tensor(cat, device=self.device)
        num_t = torch.as_tensor(num, device=self.device)
        y_t = torch.as_tensor(y, device=self.device)
        for lo in range(0, len(order), bs):
            rows = order[lo : lo + bs]
            idx = torch.as_tensor(rows, device=self.device)
            logits = self.model(cat_t[idx], num_t[idx])
            loss = F.binary_cross_entropy_with_logits(logits, y_t[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not math.isfinite(float(loss.detach())):
                raise ReprokitError(
                    f"replica {self.replica} diverged at online step {self.steps} (non-finite "
                    "loss); lower --lr or use --optimizer clippy"
                )
            if self.transform is not None:
                self.transform.apply()
            self.optimizer.step()
            batch_times = None if times is None else times[rows]
            if self.table is not None:
                self.table.after_step(cat[rows], batch_times, self.optimizer)
            self.steps += 1
            taken += 1
            if on_step is not None:
                on_step(batch_times)
        return taken

    def predict(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        return predict_rows(self.model, cat, num, self.device)

    def table_stats(self) -> dict[str, Any] | None:
        return None if self.table is None else self.table.state.stats(self.table.dim)

    # -- snapshots ---------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything that determines the rest of the stream (copied: later steps don't touch it)."""
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "dropout": self.dropout.get_state(),
            "table": None if self.table is None else copy.deepcopy(self.table.state),
            "table_init_seed": None if self.table is None else self.table.init_seed,
            "steps": self.steps,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.dropout.set_state(state["dropout"])
        if self.table is not None:
            self.table.state = copy.deepcopy(state["table"])
            self.table.init_seed = state["table_init_seed"]
            self.table._step = None
        self.steps = int(state["steps"])


def predict_rows(
    model: torch.nn.Module, cat: np.ndarray, num: np.ndarray, device: torch.device
) -> np.ndarray:
    """Predictions [n, tasks] of `model` in evaluation mode."""
    return predict(model, torch.as_tensor(cat, device=device), torch.as_tensor(num, device=device))


class ServingCopy:
    """The serving model of one replica: a copy of the training model that changes only when it
    is synced (see the module docstring)."""

    def __init__(self, source: OnlineReplica) -> None:
        self.source, self.device = source, source.device
        self.model = build_model(source.config, *source.shape)
        self.model.to(self.device)
        self.model.load_state_dict(source.model.state_dict())
        self.model.eval()
        self.sparse_names = _embedding_names(self.model)
        if source.table is not None:
            self.model.embeddings.state = copy.deepcopy(source.table.state)
            self.model.embeddings.init_seed = source.table.init_seed
        self.counter = SyncCounter()

    def sync_sparse(self) -> int:
        """Copy the embedding rows that differ from the training copy's; returns rows pushed."""
        train = dict(self.source.model.named_parameters())
        pushed = 0
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name not in self.sparse_names:
                    continue
                changed = (param != train[name]).any(dim=1).nonzero().squeeze(1)
                if len(changed):
                    param[changed] = train[name][changed]
                pushed += len(changed)
                self.counter.sparse_bytes += len(changed) * (
                    param.shape[1] * param.element_size() + KEY_BYTES
                )
        if self.source.table is not None:  # the id → row map travels with the rows
            self.model.embeddings.state = copy.deepcopy(self.source.table.state)
        self.counter.sparse_syncs += 1
        self.counter.rows_pushed += pushed
        return pushed

    def sync_dense(self) -> None:
        """Copy every parameter and buffer that is not an embedding row."""
        train = self.source.model.state_dict()
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                if name in self.sparse_names:
                    continue
                value.copy_(train[name])
                self.counter.dense_bytes += value.numel() * value.element_size()
        self.counter.dense_syncs += 1

    def predict(self, cat: np.ndarray, num: np.ndarray) -> np.ndarray:
        return predict_rows(self.model, cat, num, self.device)

    def state(self) -> dict[str, Any]:
        return {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "table": copy.deepcopy(getattr(self.model.embeddings, "state", None)),
            "counter": copy.copy(self.counter),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if state.get("table") is not None:
            self.model.embeddings.state = copy.deepcopy(state["table"])
        self.counter = copy.copy(state["counter"])
