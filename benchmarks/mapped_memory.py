"""Training on data larger than one DataFrame: peak memory of `train-ensemble` on a large dataset
file read into memory (`--storage memory`) against the same run from memory-mapped files
(`--storage mapped`), in one run.

The dataset is written first (``--rows``, default 10 million; Criteo-shaped: 39 categorical
fields of Zipf-distributed ids, a label, an example id), in row groups, without ever holding it
whole. Each side is one `reprokit train-ensemble` child process (1 epoch, ``--replicas``, the
process engine, a fresh cache for the mapped side, which therefore includes building it). Its
memory is sampled from ``/proc/PID/status`` every 0.2 s: anonymous memory (RssAnon: what an
out-of-memory kill counts) and file-backed resident pages (RssFile: the mapped files' pages,
which the kernel can drop at any time), and the child's peak RSS comes from ``os.wait4``. The
``in_memory_bytes`` is the size of the encoded arrays themselves (int64 indices, float32 labels
and features), the floor of what any in-memory representation needs. Both sides' predictions
are compared (they must be identical).

    python benchmarks/mapped_memory.py [--rows 10000000] [--replicas 2] [--dir /tmp/reprokit-mapped]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from reprokit.data.layout import SCHEMA_KEY, DatasetSchema  # noqa: E402

FIELDS = 39
CHUNK = 1 << 20


def write_dataset(path: Path, rows: int, seed: int = 0) -> None:
    """Criteo-shaped ids (Zipf over per-field vocabularies of 10 .. 1M values) and a label that
    depends on three fields, written a row group at a time."""
    rng = np.random.default_rng(seed)
    vocab = np.geomspace(10, 1_000_000, FIELDS).astype(np.int64)
    weight = rng.normal(size=(3, 1000))
    names = [f"f{j}" for j in range(FIELDS)]
    schema = DatasetSchema(categorical=names, numeric=[], labels=["label"], name="large")
    arrow = pa.schema(
        [("example_id", pa.int64()), ("label", pa.int8())] + [(n, pa.int32()) for n in names],
        metadata={SCHEMA_KEY: json.dumps(schema.to_dict())},
    )
    with pq.ParquetWriter(path, arrow, compression="lz4") as writer:
        for lo in range(0, rows, CHUNK):
            n = min(CHUNK, rows - lo)
            ids = [np.minimum(rng.zipf(1.3, n) - 1, v - 1).astype(np.int32) for v in vocab]
            logit = sum(weight[k][ids[k] % 1000] for k in range(3)) - 1.0
            label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
            columns = [pa.array(np.arange(lo, lo + n, dtype=np.int64)), pa.array(label)]
            writer.write_table(
                pa.Table.from_arrays(columns + [pa.array(i) for i in ids], schema=arrow)
            )


def _status_kib(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile", "VmRSS"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def run_side(args: argparse.Namespace, data: Path, storage: str, work: Path) -> dict:
    out = work / f"run-{storage}"
    shutil.rmtree(out, ignore_errors=True)  # train every replica (a kept run would resume)
    env = {**os.environ, "REPROKIT_CACHE_DIR": str(work / "cache")}
    cmd = [sys.executable, "-c", "from reprokit.cli import main; main()", "train-ensemble"]
    cmd += ["--data", str(data), "--storage", storage, "--replicas", str(args.replicas)]
    cmd += ["--vary", "init,data-order", "--epochs", "1", "--batch-size", str(args.batch_size)]
    cmd += ["--engine", "process", "--out", str(out), "--force"]
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    start = time.perf_counter()
    with open(work / f"{storage}.err", "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                for key, value in _status_kib(proc.pid).items():
                    peaks[key] = max(peaks[key], value)
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{storage}: exit {code}: {(work / f'{storage}.err').read_text()[-2000:]}")
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "peak_anon_mib": round(peaks["RssAnon"] / 1024, 1),
        "peak_file_mib": round(peaks["RssFile"] / 1024, 1),
        "run": str(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dir", type=Path, default=None, help="Work directory (default: temp).")
    parser.add_argument("--sides", default="memory,mapped", help="Which sides to run.")
    args = parser.parse_args()

    import pandas as pd

    work = args.dir or Path(tempfile.mkdtemp(prefix="reprokit-mapped-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"large-{args.rows}.parquet"
    try:
        started = time.perf_counter()
        if not data.exists():
            write_dataset(data, args.rows)
        write_seconds = time.perf_counter() - started
        shutil.rmtree(work / "cache", ignore_errors=True)  # the mapped side builds its cache
        sides = {s: run_side(args, data, s, work) for s in args.sides.split(",")}
        n_eval = int(round(args.rows * 0.2))
        n_train = args.rows - n_eval
        in_memory = args.rows * FIELDS * 8 + args.rows * 4 + args.rows * 8  # ids, labels, ids
        same = None
        if len(sides) == 2:
            same = all(
                pd.read_parquet(
                    Path(sides["memory"]["run"]) / f"replicas/{r:03d}/predictions.parquet"
                ).equals(
                    pd.read_parquet(
                        Path(sides["mapped"]["run"]) / f"replicas/{r:03d}/predictions.parquet"
                    )
                )
                for r in range(args.replicas)
            )
        doc = {
            "benchmark": "mapped_memory",
            "rows": args.rows,
            "train_rows": n_train,
            "fields": FIELDS,
            "replicas": args.replicas,
            "file_mib": round(data.stat().st_size / 2**20, 1),
            "write_seconds": round(write_seconds, 1),
            "in_memory_bytes_mib": round(in_memory / 2**20, 1),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            **sides,
            "same_predictions": same,
        }
        for side in sides.values():
            side["anon_vs_in_memory"] = round(side["peak_anon_mib"] * 2**20 / in_memory, 3)
        print(json.dumps(doc, indent=2))
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
