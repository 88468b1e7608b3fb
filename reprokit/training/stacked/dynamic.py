"""The vectorized engine's side of a dynamic table (`collisionless`): each replica's ids map to
rows through its own admission state, step by step, and the rows it creates or evicts are written
into that replica's slice of the stacked table, as the reference loop's
`CollisionlessEmbeddings.after_step` writes them into its own table.

Per step: `rows` maps the batch's ids to rows (an id without a row reads the zero miss row);
after the backward pass `drop_miss_gradient` zeroes the miss row's gradient (the reference model
masks misses, so none reaches it there either: the row stays zero and its optimizer state stays
the initial one); after the optimizer step `update` applies the batch to every live replica's
state: new rows get `initial_rows`, evicted rows are zeroed and their optimizer state reset to the
miss row's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from reprokit.nn.collisionless import initial_rows
from reprokit.training.stacked.layout import SparseGrad, Stack

__all__ = ["DynamicTables"]


class DynamicTables:
    """Every replica's dynamic table of a `Stack` whose `dynamic` is set."""

    def __init__(self, stack: Stack, encoded: Any, device: torch.device) -> None:
        assert stack.dynamic is not None
        self.stack, self.tables, self.device = stack, stack.dynamic, device
        self.miss_row = self.tables[0].state.miss_row
        times = getattr(encoded, "train_time", None)
        self.train_time = None if times is None else np.asarray(times, dtype=np.float64)
        self.steps: list[Any] = []  # each replica's grouped ids of the current step (`Step`)

    def rows(self, ids: torch.Tensor, b: int) -> torch.Tensor:
        """Rows [R, b_pad, F] of each replica's table for a training step's ids [R or 1, b_pad,
        F], of which the first `b` are real (the padding repeats the first example); each
        replica's map slots are kept for the step's `update`."""
        local = ids.cpu().numpy()
        out, self.steps = [], []
        for r, t in enumerate(self.tables):
            mine = local[min(r, len(local) - 1)]
            rows, step = t.state.step_rows(mine[:b])
            pad = np.broadcast_to(rows[:1], (len(mine) - b, rows.shape[1]))
            out.append(np.concatenate([rows, pad]))
            self.steps.append(step)
        return torch.from_numpy(np.stack(out)).to(self.device)

    def drop_miss_gradient(self, grad: SparseGrad) -> None:
        """Zero the gradient of every replica's miss row (in place)."""
        miss = torch.remainder(grad.rows, self.stack.vocab_total) == self.miss_row
        grad.values[miss] = 0.0

    def times(
        self, perms: torch.Tensor, groups: list[int], lo: int, b: int
    ) -> list[np.ndarray | None]:
        """Each replica's example times of the step (None without timestamps)."""
        if self.train_time is None:
            return [None] * len(self.tables)
        order = perms[:, lo : lo + b].cpu().numpy()
        return [self.train_time[order[groups[r]]] for r in range(len(self.tables))]

    @torch.no_grad()
    def update(
        self,
        ids: torch.Tensor,
        times: list[np.ndarray | None],
        alive: list[bool],
        optimizer: Any,
    ) -> None:
        """Apply the step's ids [R or 1, b, F] to every live replica's table."""
        local = ids.cpu().numpy()
        table, dim = self.stack.table, self.stack.dim
        for r, t in enumerate(self.tables):
            if not alive[r]:
                continue
            mine = local[min(r, len(local) - 1)]
            created, fields, keys, evicted = t.state.update(mine, times[r], self.steps[r])
            if len(created):
                values = torch.from_numpy(initial_rows(t.init_seed, fields, keys, dim))
                table[r, torch.from_numpy(created).to(self.device)] = values.to(table.device)
            if len(evicted):
                index = torch.from_numpy(evicted).to(self.device)
                table[r, index] = 0.0
                for states in optimizer.state.values():
                    rows = states[0]  # the table's state (the flat buffer's is second)
                    if rows.shape == table.shape:
                        rows[r, index] = rows[r, self.miss_row].clone()

    def sizes(self) -> np.ndarray:
        return np.array([t.state.rows_in_use for t in self.tables], dtype=np.int64)

    def write_sizes(self, logs: list[Any], history: list[np.ndarray], last: list[int]) -> None:
        """Each replica's `table_rows` log column: its sizes up to its last logged step."""
        sizes = np.stack(history) if history else np.zeros((0, len(self.tables)), dtype=np.int64)
        for r, log in enumerate(logs):
            log.table_rows = sizes[: last[r] + 1, r].tolist()

    def stats(self, r: int) -> dict[str, Any]:
        return self.tables[r].state.stats(self.stack.dim)
