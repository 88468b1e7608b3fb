"""The collisionless table's throughput against a Python dict, and the vectorized engine's step
time with each embedding kind against `table`, in one run.

Prints one JSON document:

- ``collisionless``: a stream of ``--ids`` (10 M) Zipf(s = 1.05) draws over ``--distinct`` (1 M)
  random 64-bit ids, in batches of ``--batch`` ids. Per batch, what a training step asks of the
  table: look every id up (a miss reads the zero row) and apply the update (count, admit with
  ``min_count`` = 2, create rows, stamp the last update). `reprokit` is
  :class:`reprokit.nn.collisionless.AdmissionState` (``step_rows_of``, whose probe of the map the
  update reuses, + ``update_keys``, as the engines call them); `dict` is the
  same bookkeeping in plain Python dicts, id by id. Both must end with the same rows for the same
  ids (checked). Target (issue 13): ``speedup`` ≥ 5.
- ``torchrec_mch``: TorchRec's managed-collision module (``MCHManagedCollisionModule``: sorted
  raw-id buffer, remap by ``searchsorted``, profile every ``eviction_interval`` batches) on the
  first ``--torchrec-ids`` (1 M) ids of the same stream, profiling every batch (the admission
  decisions of every step, as Monolith's filter makes them), when ``torchrec`` and
  ``fbgemm-gpu-cpu`` import (a reference row only, never a dependency; ``pip install --no-deps
  --target DIR torchrec==1.8.0 fbgemm-gpu-cpu==1.8.0 tensordict pyvers pyre-extensions``, then
  ``--torchrec-path DIR``).
- ``step_time``: the vectorized engine training ``--replicas`` replicas on the built-in synthetic
  data with each kind (after one warm-up run; the fastest of 3), seconds per optimizer step and
  the ratio to `table` (the kinds it cannot stack are listed with the engine's reason).

    python benchmarks/embedding_speed.py [--ids 10000000] [--distinct 1000000] [--batch 65536]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from reprokit.nn.collisionless import AdmissionState  # noqa: E402

KINDS = [
    "table",
    "hashed:buckets=1000",
    "qr:buckets=32",
    "mde:alpha=0.5",
    "lma:memory=4096",
    "collisionless",
    "collisionless:min_count=3,expire=50",
    "collisionless:min_count=2,filter=probabilistic",
]


def zipf_stream(n: int, distinct: int, s: float, seed: int) -> np.ndarray:
    """`n` draws of P(rank k) ∝ k^−s over `distinct` ranks, each rank a random 64-bit id."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, distinct + 1, dtype=np.float64) ** -s
    cdf = np.cumsum(weights) / weights.sum()
    ranks = np.searchsorted(cdf, rng.random(n), side="right")
    ids = np.unique(
        rng.integers(0, 2**63 - 1, size=distinct + distinct // 100 + 16, dtype=np.int64)
    )
    ids = rng.permutation(ids)[:distinct].astype(np.uint64)  # distinct random 64-bit ids
    return ids[np.minimum(ranks, distinct - 1)]


def run_reprokit(stream: np.ndarray, batch: int, distinct: int, min_count: int) -> tuple:
    state = AdmissionState([np.zeros(0, np.uint64)], [distinct], min_count=min_count)
    fields = np.zeros(batch, dtype=np.int32)
    start = time.perf_counter()
    for lo in range(0, len(stream), batch):
        keys = stream[lo : lo + batch]
        _, step = state.step_rows_of(fields[: len(keys)], keys)  # the step's lookup
        state.update_keys(fields[: len(keys)], keys, step=step)  # its update
    seconds = time.perf_counter() - start
    slots = state.slots
    held = slots.column["row"] >= 0
    return seconds, dict(
        zip(slots.keys[held].tolist(), slots.column["row"][held].tolist(), strict=True)
    )


def run_dict(stream: np.ndarray, batch: int, min_count: int) -> tuple:
    rows: dict[int, int] = {}
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    miss = -1
    start = time.perf_counter()
    step = 0
    for lo in range(0, len(stream), batch):
        keys = stream[lo : lo + batch].tolist()
        step += 1
        [rows.get(k, miss) for k in keys]  # the step's lookup
        for k in keys:  # its update
            if k in rows:
                last[k] = step
                continue
            c = counts.get(k, 0) + 1
            counts[k] = c
            if c >= min_count:
                rows[k] = len(rows)
                last[k] = step
    return time.perf_counter() - start, rows


def run_torchrec(stream: np.ndarray, batch: int, distinct: int) -> dict:
    try:
        import torch
        from torchrec.modules.mc_modules import (
            DistanceLFU_EvictionPolicy,
            MCHManagedCollisionModule,
        )
        from torchrec.sparse.jagged_tensor import JaggedTensor
    except Exception as exc:  # not installed, or not importable next to this torch
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
    module = MCHManagedCollisionModule(
        zch_size=distinct,
        device=torch.device("cpu"),
        eviction_policy=DistanceLFU_EvictionPolicy(),
        eviction_interval=1,
        input_hash_size=2**63 - 1,
    )
    module.train()
    values = torch.from_numpy(stream.view(np.int64))
    start = time.perf_counter()
    for lo in range(0, len(values), batch):
        chunk = values[lo : lo + batch]
        features = {
            "t": JaggedTensor(values=chunk, lengths=torch.ones_like(chunk, dtype=torch.int32))
        }
        features = module.profile(features)
        module.remap(features)
    seconds = time.perf_counter() - start
    return {
        "available": True,
        "ids": len(values),
        "seconds": seconds,
        "ids_per_second": len(values) / seconds,
        "eviction_interval": 1,
    }


def step_times(replicas: int, rows: int, epochs: int, repeats: int = 3) -> dict:
    from reprokit.config import resolve_config
    from reprokit.data.encoding import load_encoded
    from reprokit.errors import ReprokitError
    from reprokit.sources import replica_seeds
    from reprokit.training import vectorized as vec

    base = {"data.synth_rows": rows, "optim.epochs": epochs, "vary": "init,data-order"}
    encoded = load_encoded(resolve_config(None, base).data)
    out: dict = {}
    warm = resolve_config(None, {**base, "engine": "vectorized"})
    vec.train_replicas(encoded, warm, [0, 1], [replica_seeds(0, warm.vary, r) for r in (0, 1)])
    for kind in KINDS:
        try:
            cfg = resolve_config(None, {**base, "model.embedding": kind, "engine": "vectorized"})
            vec.check_supported(cfg, encoded)
        except ReprokitError as exc:
            out[kind] = {"stacked": False, "reason": str(exc)}
            continue
        seeds = [replica_seeds(cfg.seed, cfg.vary, r) for r in range(replicas)]
        times = []
        for _ in range(repeats):  # the fastest of a few: the least disturbed by other load
            start = time.perf_counter()
            result = vec.train_replicas(encoded, cfg, list(range(replicas)), seeds)
            times.append(time.perf_counter() - start)
        seconds = min(times)
        steps = result[0].steps
        out[kind] = {"stacked": True, "seconds_per_step": seconds / steps, "steps": steps}
    ref = out["table"]["seconds_per_step"]
    for entry in out.values():
        if entry.get("stacked"):
            entry["ratio_to_table"] = entry["seconds_per_step"] / ref
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=10_000_000)
    parser.add_argument("--distinct", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--zipf", type=float, default=1.05)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--torchrec-path", default=None, help="a folder holding torchrec")
    parser.add_argument(
        "--torchrec-ids", type=int, default=1_000_000, help="the stream's first ids for TorchRec"
    )
    parser.add_argument("--skip-steps", action="store_true", help="only the table throughput")
    args = parser.parse_args()
    if args.torchrec_path:
        sys.path.insert(0, args.torchrec_path)

    stream = zipf_stream(args.ids, args.distinct, args.zipf, seed=0)
    ours_s, ours_rows = run_reprokit(stream, args.batch, args.distinct, args.min_count)
    dict_s, dict_rows = run_dict(stream, args.batch, args.min_count)
    same_ids = set(ours_rows) == set(dict_rows)
    doc = {
        "benchmark": "embedding_speed",
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "collisionless": {
            "ids": args.ids,
            "distinct_in_stream": int(len(np.unique(stream))),
            "batch": args.batch,
            "min_count": args.min_count,
            "rows_created": len(ours_rows),
            "same_ids_admitted_as_dict": same_ids,
            "reprokit_seconds": ours_s,
            "dict_seconds": dict_s,
            "reprokit_ids_per_second": args.ids / ours_s,
            "dict_ids_per_second": args.ids / dict_s,
            "speedup": dict_s / ours_s,
            "target_speedup": 5.0,
        },
        "torchrec_mch": run_torchrec(stream[: args.torchrec_ids], args.batch, args.distinct),
    }
    if not args.skip_steps:
        doc["step_time"] = {
            "replicas": args.replicas,
            "rows": args.rows,
            "kinds": step_times(args.replicas, args.rows, args.epochs),
        }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
