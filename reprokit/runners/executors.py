"""Where replica tasks run: in this process, or in a pool of spawned worker processes.

Workers receive the encoded data once (pool initializer), pin their thread count per task, and write
their replica's files themselves, so the parent only collects small metric dictionaries.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

ReplicaTask = Callable[[Any, int], dict[str, Any]]

_WORKER_STATE: dict[str, Any] = {}


def _init_worker(task: ReplicaTask, payload: Any) -> None:
    # One inter-op thread per worker; the task sets its intra-op thread count per replica.
    torch.set_num_interop_threads(1)
    _WORKER_STATE["task"] = task
    _WORKER_STATE["payload"] = payload


def _run_in_worker(replica: int) -> dict[str, Any]:
    return _WORKER_STATE["task"](_WORKER_STATE["payload"], replica)


def run_local(
    task: ReplicaTask, payload: Any, replicas: list[int], workers: int = 1
) -> Iterator[dict[str, Any]]:
    """Yield each replica's result as it finishes. `workers > 1` uses spawned processes."""
    if workers <= 1 or len(replicas) <= 1:
        saved = torch.get_num_threads()
        try:
            for r in replicas:
                yield task(payload, r)
        finally:
            torch.set_num_threads(saved)
        return
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(replicas)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(task, payload),
    ) as pool:
        futures = [pool.submit(_run_in_worker, r) for r in replicas]
        for fut in as_completed(futures):
            yield fut.result()
