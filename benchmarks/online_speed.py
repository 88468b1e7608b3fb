"""Online training's stream throughput against offline training of the same model on the same
rows, in one run.

Prints one JSON document. Both sides start from the same batch model (one pass over the oldest
half of the built-in synthetic data, with timestamps) and go once over the same stream rows:

- ``offline``: the training copy's pass over the stream, shard by shard, nothing else;
- ``online``: `reprokit.runners.online.run_unit`: per shard, the serving copy evaluates it, then
  the training copy trains on it, syncing the touched rows every ``--sync-every`` steps and the
  dense weights every ``--dense-sync-every`` sparse syncs.

Examples per second on each side, their ratio (issue 14's target: ≥ 0.7 at a sync every 4
batches) and the per-example cost of the evaluation and the syncs. The two are interleaved
``--repeats`` times and the medians reported.

    python benchmarks/online_speed.py [--rows 100000] [--shards 10] [--sync-every 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from reprokit.config import resolve_config  # noqa: E402
from reprokit.runners.online import (  # noqa: E402
    OnlineOptions,
    load_stream,
    run_unit,
    train_batch_model,
)
from reprokit.sources import replica_seeds  # noqa: E402
from reprokit.training.online import OnlineReplica, pass_order  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--sync-every", type=int, default=4)
    parser.add_argument("--dense-sync-every", type=int, default=8)
    parser.add_argument("--embedding", default="table")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = resolve_config(
        None, {"data.synth_rows": args.rows, "model.embedding": args.embedding, "replicas": 1}
    )
    options = OnlineOptions(
        shards=args.shards,
        sync_intervals=(args.sync_every,),
        dense_sync_every=args.dense_sync_every,
    ).validate()
    stream = load_stream(cfg, options)
    seeds = replica_seeds(cfg.seed, cfg.vary, 0)
    state, _ = train_batch_model(stream, cfg, 0, seeds)
    enc = stream.encoded
    rows = len(enc.eval_y)

    def offline() -> float:
        trainer = OnlineReplica(
            cfg, enc.vocab_sizes, enc.train_num.shape[1], enc.train_y.shape[1], 0, seeds
        )
        trainer.load_state(state)
        start = time.perf_counter()
        for i, (lo, hi) in enumerate(stream.bounds):
            order = lo + pass_order(seeds["data-order"], i + 1, hi - lo)
            trainer.train_pass(
                stream.stream_cat, enc.eval_num, enc.eval_y, stream.stream_time, order
            )
        return time.perf_counter() - start

    def online() -> float:
        start = time.perf_counter()
        run_unit(stream, cfg, options, args.sync_every, 0, seeds, state, None)
        return time.perf_counter() - start

    offline(), online()  # warm-up
    off, on = [], []
    for _ in range(args.repeats):
        off.append(offline())
        on.append(online())
    off_s, on_s = statistics.median(off), statistics.median(on)
    doc = {
        "benchmark": "online_speed",
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
        "stream_rows": rows,
        "shards": args.shards,
        "batch_size": cfg.optim.batch_size,
        "embedding": cfg.model.embedding,
        "sync_every_steps": args.sync_every,
        "dense_sync_every": args.dense_sync_every,
        "offline_examples_per_second": rows / off_s,
        "online_examples_per_second": rows / on_s,
        "ratio": off_s / on_s,
        "target_ratio": 0.7,
        "overhead_us_per_example": (on_s - off_s) / rows * 1e6,
        "seconds": {"offline": off, "online": on},
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
