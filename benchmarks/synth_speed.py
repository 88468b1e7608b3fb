"""Time the synthetic generator (and the split + encoder) on 1M rows against a plain reference.

The reference is the least any generator must do: draw the same number of uniform integer ids and
normal floats with numpy and build a DataFrame. ``ratio`` = generator time / reference time; the
absolute target is ``synth_seconds`` < 10 for 1M rows (8 fields, 4 numeric), encoding ~1-2 s.

    python benchmarks/synth_speed.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reprokit.data.encoding import encode  # noqa: E402
from reprokit.data.splits import split_dataset  # noqa: E402
from reprokit.data.synth import generate_dataset  # noqa: E402


def reference(rows: int, fields: int, numeric: int, cardinality: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {f"c{f}": rng.integers(0, cardinality, rows) for f in range(fields)}
    num = rng.standard_normal((rows, numeric), dtype=np.float32)
    cols.update({f"n{k}": num[:, k] for k in range(numeric)})
    cols["label"] = (rng.random(rows) < 0.2).astype(np.int8)
    return pd.DataFrame(cols)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--numeric", type=int, default=4)
    parser.add_argument("--cardinality", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (args.rows, args.fields, args.cardinality, args.numeric)
    rows, fields, card, numeric = shape

    ref = timed(lambda: reference(rows, fields, numeric, card, 0), args.repeats)
    synth = timed(lambda: generate_dataset(rows, fields, card, numeric, 0), args.repeats)
    drift = timed(
        lambda: generate_dataset(rows, fields, card, numeric, 0, tasks=2, drift=1.0), args.repeats
    )
    dataset = generate_dataset(rows, fields, card, numeric, 0)
    split = timed(lambda: split_dataset(dataset), args.repeats)
    train, ev = split_dataset(dataset)
    enc = timed(lambda: encode(train, ev), args.repeats)
    doc = {
        "benchmark": "synth_speed",
        "rows": rows,
        "fields": fields,
        "numeric": numeric,
        "cardinality": card,
        "repeats": args.repeats,
        "reference_seconds": round(ref, 4),
        "synth_seconds": round(synth, 4),
        "synth_drift_2tasks_seconds": round(drift, 4),
        "ratio": round(synth / ref, 2),
        "split_seconds": round(split, 4),
        "encode_seconds": round(enc, 4),
        "target_synth_seconds": 10.0,
        "ok": synth < 10.0,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
