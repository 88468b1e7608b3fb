"""Where replica batches train: an executor takes batches of replica indices, runs a task on each
and hands every finished replica's record back to the driver, which writes it through the run
store. Workers therefore need no shared file system (a cluster executor is one more
implementation of the same interface).

`LocalExecutor` runs batches in this process or in a pool of spawned worker processes; workers
receive the task's payload (the encoded data) once, through the pool initializer.
`reprokit.runners.ray_backend.RayExecutor` runs them as Ray tasks; `make_executor` picks one for
`--backend`.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import torch

from reprokit.errors import ReprokitError


@dataclass
class ReplicaRecord:
    """One trained replica, as the driver stores it (predictions, metrics, train log)."""

    replica: int
    predictions: pd.DataFrame
    metrics: dict[str, Any]
    train_log: pd.DataFrame


#: task(payload, batch) → the records of the batch's replicas (a list, or an iterator that yields
#: each as soon as it is ready).
BatchTask = Callable[[Any, list[int]], Iterable[ReplicaRecord]]


class Executor(Protocol):
    def run(
        self, task: BatchTask, payload: Any, batches: list[list[int]]
    ) -> Iterator[ReplicaRecord]:
        """Yield every replica's record as its batch finishes (in any order)."""
        ...


_WORKER_STATE: dict[str, Any] = {}


def _init_worker(task: BatchTask, payload: Any) -> None:
    # One inter-op thread per worker; the task sets its intra-op thread count per replica.
    torch.set_num_interop_threads(1)
    _WORKER_STATE["task"] = task
    _WORKER_STATE["payload"] = payload


def _run_in_worker(batch: list[int]) -> list[ReplicaRecord]:
    return list(_WORKER_STATE["task"](_WORKER_STATE["payload"], batch))


@dataclass
class LocalExecutor:
    """This machine: in this process (`workers` <= 1, or a single batch) or in spawned processes."""

    workers: int = 1

    def run(
        self, task: BatchTask, payload: Any, batches: list[list[int]]
    ) -> Iterator[ReplicaRecord]:
        batches = [b for b in batches if b]
        if self.workers <= 1 or len(batches) <= 1:
            saved = torch.get_num_threads()
            try:
                for batch in batches:
                    yield from task(payload, batch)
            finally:
                torch.set_num_threads(saved)
            return
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.workers, len(batches)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(task, payload),
        ) as pool:
            futures = [pool.submit(_run_in_worker, batch) for batch in batches]
            for fut in as_completed(futures):
                yield from fut.result()


#: Where replica tasks run: `local` (this machine) or `ray` (a Ray cluster, optional extra).
BACKENDS = ("local", "ray")


def make_executor(
    backend: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    replicas_per_task: int | None = None,
    verbose: bool = False,
) -> Executor:
    """The executor of `--backend`: bad combinations (and Ray missing) fail here, before any
    data is read or any replica trained."""
    name = (backend or "local").strip().lower()
    if name not in BACKENDS:
        raise ReprokitError(f"unknown --backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if name == "local":
        for flag, value in (
            ("--ray-address", ray_address),
            ("--replicas-per-task", replicas_per_task),
        ):
            if value is not None:
                raise ReprokitError(f"{flag} applies to --backend ray only")
        return LocalExecutor(workers)
    from reprokit.runners.ray_backend import RayExecutor

    address = ray_address.strip() if ray_address is not None else None
    if address == "":
        raise ReprokitError("--ray-address is empty; name HOST:PORT, ray://HOST:PORT or auto")
    return RayExecutor(
        address=address, workers=workers, replicas_per_task=replicas_per_task, verbose=verbose
    )
