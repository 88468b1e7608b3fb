"""The Ray backend against the local one: one ensemble, the same bytes, how long each takes.

    python benchmarks/backend_scaling.py                         # 16 replicas, 1 and 2 Ray workers
    python benchmarks/backend_scaling.py --replicas 8 --rows 5000 --engines process

For each engine (`process`: one replica per task; `vectorized`: the stack cut into one slice per
worker) it trains the same `--replicas` ensemble

* `local`: `LocalExecutor(1)`, in this process, one replica after another (the reference; timed
  after a first, untimed ensemble that warms the process up);
* `ray-W` for W in `--ray-workers` (default 1 and 2): a Ray instance started here with W CPUs
  (loopback only, as `--backend ray` starts one; `startup_seconds` is ray.init), each replica
  batch one task.

Before its ensemble, each Ray instance runs tasks that train nothing and only send a real
replica's record back (`EchoPayload`): the first W of them start the worker processes
(`worker_start_seconds`: a fresh process imports torch and reprokit's engines), the next N measure what a
task costs beyond its training (`task_overhead_seconds`: scheduling, the payload, the record's
trip back, per task and worker slot). `driver_write_seconds_per_replica` is what the driver
spends storing one record, the serial part that no number of machines shortens.

Each instance then trains the ensemble twice: `cold` (the workers' first training: torch's first
kernels, thread pools, allocations, which the local reference paid in its untimed warm-up) and
`warm` (the steady state, `speedup_warm_vs_local`). Every ensemble writes through the run store
into its own directory and must give predictions byte-identical to `local` (`identical`). Per
run: wall seconds and the replicas' own training seconds (`train_seconds`, from their metrics; on
a shared machine they vary from run to run).

`model` turns the figures into what K machines of C CPUs would give (an estimate, not a
measurement) for the process engine: T(K) = startup + driver_fixed + max(ceil(N / (K * C)) *
(t_replica + task_overhead), N * driver_write), with this machine's t_replica (local training
seconds per replica), driver_fixed (the local run's wall time less its training: manifest,
summary) and startup (ray.init + worker start + the cold ensemble's extra time); it assumes the cluster's CPUs are as fast as
these and tasks independent (they are: no shared state but the payload).

Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _config(args: argparse.Namespace, engine: str) -> Any:
    from reprokit.config import resolve_config

    return resolve_config(
        None,
        {
            "data.synth_rows": args.rows,
            "model.hidden": args.hidden,
            "optim.epochs": args.epochs,
            "optim.batch_size": args.batch_size,
            "vary": ["init", "data-order"],
            "engine": engine,
            "threads": 1,
            "replicas": args.replicas,
        },
    )


def _predictions(run: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(run.glob("replicas/*/predictions.parquet"))]


def _train(config: Any, encoded: Any, out: Path, executor: Any) -> dict[str, Any]:
    from reprokit.runners.ensemble import train_ensemble
    from reprokit.store import RunStore

    start = time.perf_counter()
    train_ensemble(config, out=out, encoded=encoded, executor=executor)
    wall = time.perf_counter() - start
    store = RunStore(out)
    train = sum(store.replica_metrics(r)["train_seconds"] for r in range(config.replicas))
    return {"wall_seconds": wall, "train_seconds": train}


def _per_replica(run: dict[str, Any], replicas: int, workers: int) -> dict[str, Any]:
    """Wall time the W workers did not spend training, per replica (includes the driver's fixed
    costs: manifest, summary)."""
    busy = run["train_seconds"] / workers
    run["non_training_seconds_per_replica"] = max(0.0, run["wall_seconds"] - busy) / replicas
    return run


@dataclass
class EchoPayload:
    """A finished replica's record, sent back by every echo task: what a task costs without the
    training (scheduling, the payload, the record's trip back)."""

    record: Any
    config: Any = None


def _echo(payload: EchoPayload, batch: list[int]) -> list[Any]:
    from dataclasses import replace

    import reprokit.training.loop
    import reprokit.training.vectorized  # noqa: F401  (what a training task imports first)

    return [replace(payload.record, replica=r) for r in batch]


def _template_record(run: Path) -> Any:
    import pandas as pd

    from reprokit.runners.executors import ReplicaRecord
    from reprokit.runschema import PREDICTIONS, TRAIN_LOG
    from reprokit.store import RunStore

    store = RunStore(run)
    d = store.replica_dir(0)
    return ReplicaRecord(
        0,
        pd.read_parquet(d / PREDICTIONS),
        store.replica_metrics(0),
        pd.read_parquet(d / TRAIN_LOG),
    )


def _driver_write_seconds(record: Any, replicas: int, workdir: Path) -> float:
    """What the driver spends storing one record (the part that does not scale with machines)."""
    from reprokit.store import RunStore

    store = RunStore(workdir)
    start = time.perf_counter()
    for r in range(replicas):
        store.write_replica(r, record.predictions, record.metrics, record.train_log)
    return (time.perf_counter() - start) / replicas


def _echo_seconds(executor: Any, payload: EchoPayload, replicas: int) -> float:
    start = time.perf_counter()
    got = list(executor.run(_echo, payload, [[r] for r in range(replicas)]))
    assert sorted(rec.replica for rec in got) == list(range(replicas))
    return time.perf_counter() - start


def bench_engine(args: argparse.Namespace, engine: str, workdir: Path) -> dict[str, Any]:
    from reprokit.runners.ensemble import load_run_data
    from reprokit.runners.executors import LocalExecutor
    from reprokit.runners.ray_backend import RayExecutor, start_local_ray

    config = _config(args, engine)
    encoded, _ = load_run_data(config)
    n = config.replicas
    # a first local ensemble warms this process (imports, kernels); the second is the reference
    _train(config, encoded, workdir / f"{engine}-local-warmup", LocalExecutor(1))
    local = _train(config, encoded, workdir / f"{engine}-local", LocalExecutor(1))
    reference = _predictions(workdir / f"{engine}-local")
    local["driver_fixed_seconds"] = max(0.0, local["wall_seconds"] - local["train_seconds"])
    out: dict[str, Any] = {"local": _per_replica(local, n, 1)}
    echo = EchoPayload(_template_record(workdir / f"{engine}-local"))
    local["driver_write_seconds_per_replica"] = _driver_write_seconds(
        echo.record, n, workdir / f"{engine}-writes"
    )
    for workers in args.ray_workers:
        start = time.perf_counter()
        ray = start_local_ray(num_cpus=workers)
        startup = time.perf_counter() - start
        entry: dict[str, Any] = {"workers": workers, "startup_seconds": startup}
        try:
            with RayExecutor() as executor:  # tasks that only send a record back
                first = _echo_seconds(executor, echo, workers)  # starts the W worker processes
                again = _echo_seconds(executor, echo, n)
            entry["worker_start_seconds"] = first
            entry["task_overhead_seconds"] = again * workers / n
            for phase in ("cold", "warm"):  # the first ensemble warms torch in the workers
                run_dir = workdir / f"{engine}-ray{workers}-{phase}"
                with RayExecutor() as executor:  # uses the instance started above
                    run = _train(config, encoded, run_dir, executor)
                run["identical"] = _predictions(run_dir) == reference
                entry[phase] = _per_replica(run, n, workers)
        finally:
            ray.shutdown()
        entry["speedup_warm_vs_local"] = local["wall_seconds"] / entry["warm"]["wall_seconds"]
        out[f"ray-{workers}"] = entry
    return out


def model(results: dict[str, Any], replicas: int, cpus_per_machine: int) -> dict[str, Any]:
    """What K machines of C CPUs would give for the process engine, from this machine's figures."""
    proc = results.get("process")
    if not proc:
        return {}
    local = proc["local"]
    t_replica = local["train_seconds"] / replicas
    fixed = local["driver_fixed_seconds"]
    rays = [v for k, v in proc.items() if k.startswith("ray-")]
    overhead = max(r["task_overhead_seconds"] for r in rays)
    startup = max(
        r["startup_seconds"]
        + r["worker_start_seconds"]
        + max(0.0, r["cold"]["wall_seconds"] - r["warm"]["wall_seconds"])
        for r in rays
    )
    write = local["driver_write_seconds_per_replica"]
    predicted = {}
    for k in (1, 2, 4, 8, 16, 32):
        waves = math.ceil(replicas / (k * cpus_per_machine))
        seconds = startup + fixed + max(waves * (t_replica + overhead), replicas * write)
        predicted[str(k)] = {
            "seconds": seconds,
            "waves": waves,
            "speedup_vs_local": local["wall_seconds"] / seconds,
        }
    return {
        "formula": "T(K) = startup + driver_fixed + max(ceil(N / (K*C)) * (t_replica + "
        "task_overhead), N * driver_write)",
        "N": replicas,
        "C": cpus_per_machine,
        "t_replica_seconds": t_replica,
        "task_overhead_seconds": overhead,
        "driver_fixed_seconds": fixed,
        "driver_write_seconds_per_replica": write,
        "startup_seconds": startup,
        "local_seconds": local["wall_seconds"],
        "predicted": predicted,
        "note": "an estimate from this machine's figures, not a measurement: a cluster's CPUs, "
        "network and object store differ, and the startup of a running cluster (--ray-address "
        "auto) is only the connection plus the workers' first import. Once ceil(N/(K*C)) = 1 "
        "more machines cannot help; the fixed costs bound the speedup at local / (startup + "
        "driver_fixed + t_replica + task_overhead).",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--hidden", default="64-32")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", default="process,vectorized")
    parser.add_argument("--cpus-per-machine", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    with tempfile.TemporaryDirectory(prefix="reprokit-backend-") as tmp:
        results = {engine: bench_engine(args, engine, Path(tmp)) for engine in engines}
    doc = {
        "benchmark": "backend_scaling",
        "machine": {"cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
        "ensemble": {
            "replicas": args.replicas,
            "rows": args.rows,
            "hidden": args.hidden,
            "epochs": args.epochs,
            "vary": "init,data-order",
            "threads_per_replica": 1,
        },
        "results": results,
        "model": model(results, args.replicas, args.cpus_per_machine),
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
