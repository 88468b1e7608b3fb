"""Benchmark: reprokit's PD computation vs the straightforward numpy pairwise loop.

Both sides compute every PD key (abs, rel, abs_mean, rel_mean, l2, rel_std, flip), the per-pair
values and the bootstrap CI over replicas, on the same random predictions. reprokit's side is the
full `summarize` (which also adds PD buckets and the per-example histogram). Prints one JSON
document: wall and CPU seconds, speedup, peak traced memory, and whether the results agree.
CPU seconds sum over threads; on a shared machine they are steadier than wall time.

    python benchmarks/pd_speed.py                      # 10 million examples x 16 replicas
    python benchmarks/pd_speed.py --examples 1000000 --replicas 8 --dtype float64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reprokit.metrics.pd import EPS, PD_KEYS, default_threads  # noqa: E402
from reprokit.metrics.stats import replica_bootstrap_ci  # noqa: E402
from reprokit.metrics.summary import summarize  # noqa: E402


def make_predictions(m: int, n: int, dtype: str, seed: int) -> np.ndarray:
    """CTR-like predictions: a shared logit per example plus per-replica noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((m, n), dtype=dtype)
    base = rng.normal(-2.0, 1.5, size=n).astype(np.float32)
    for r in range(m):
        noise = rng.standard_normal(n, dtype=np.float32) * np.float32(0.1)
        out[r] = 1.0 / (1.0 + np.exp(-(base + noise)))
    return out


def reference(preds: np.ndarray, threshold: float, seed: int) -> dict:
    """The plain way: float64 copy, then for i < j every key's pairwise term on full arrays."""
    p = np.clip(preds.astype(np.float64), EPS, 1.0 - EPS)
    m = p.shape[0]
    per_pair: dict[str, list[float]] = {"abs": [], "rel": [], "l2": [], "flip": []}
    for i in range(m):
        for j in range(i + 1, m):
            d = p[i] - p[j]
            per_pair["abs"].append(np.mean(np.abs(d)))
            per_pair["rel"].append(np.mean(np.abs(d) / ((p[i] + p[j]) / 2.0)))
            per_pair["l2"].append(np.sqrt(np.mean(d * d)))
            per_pair["flip"].append(np.mean((p[i] >= threshold) != (p[j] >= threshold)))
    pbar = p.mean(axis=0)
    dev = np.abs(p - pbar).mean(axis=0)
    values = {
        "abs": float(np.mean(per_pair["abs"])),
        "rel": float(np.mean(per_pair["rel"])),
        "abs_mean": float(np.mean(dev)),
        "rel_mean": float(np.mean(dev / pbar)),
        "l2": float(np.mean(per_pair["l2"])),
        "rel_std": float(np.mean(p.std(axis=0, ddof=1) / pbar)),
        "flip": float(np.mean(per_pair["flip"])),
    }
    ci = {k: replica_bootstrap_ci(np.array(per_pair[k]), m, seed=seed) for k in ("rel", "abs")}
    return {"pd": values, "pd_per_pair": per_pair, "pd_ci": ci}


def timed(fn, *args, **kwargs):
    tracemalloc.start()
    tracemalloc.reset_peak()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, cpu, peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--examples", type=int, default=10_000_000)
    ap.add_argument("--replicas", type=int, default=16)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="reprokit threads (default: CPUs)")
    ap.add_argument("--skip-reference", action="store_true", help="time reprokit only")
    args = ap.parse_args(argv)

    preds = make_predictions(args.replicas, args.examples, args.dtype, args.seed)
    load_before = os.getloadavg()[0]  # the machines here are shared: read timings with this
    ours, ours_s, ours_cpu, ours_peak = timed(
        summarize, preds, None, flip_threshold=args.threshold, seed=args.seed, threads=args.threads
    )
    doc: dict = {
        "benchmark": "pd_speed",
        "examples": args.examples,
        "replicas": args.replicas,
        "pairs": args.replicas * (args.replicas - 1) // 2,
        "input_dtype": args.dtype,
        "input_mb": round(preds.nbytes / 2**20, 1),
        "threads": args.threads or default_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "load_average_before": round(load_before, 2),
        "reprokit_seconds": round(ours_s, 3),
        "reprokit_cpu_seconds": round(ours_cpu, 3),
        "reprokit_peak_traced_mb": round(ours_peak / 2**20, 1),
    }
    if not args.skip_reference:
        ref, ref_s, ref_cpu, ref_peak = timed(reference, preds, args.threshold, args.seed)
        max_rel = 0.0
        for key in PD_KEYS:
            a, b = ours["pd"][key], ref["pd"][key]
            max_rel = max(max_rel, abs(a - b) / max(abs(b), 1e-300))
        for key in ("abs", "rel"):
            a, b = np.asarray(ours["pd_per_pair"][key]), np.asarray(ref["pd_per_pair"][key])
            max_rel = max(max_rel, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))))
            ci_a, ci_b = np.asarray(ours["pd_ci"][key]), np.asarray(ref["pd_ci"][key])
            max_rel = max(max_rel, float(np.max(np.abs(ci_a - ci_b) / np.abs(ci_b))))
        doc.update(
            {
                "reference": "numpy loop over pairs i<j on full float64 arrays",
                "reference_seconds": round(ref_s, 3),
                "reference_cpu_seconds": round(ref_cpu, 3),
                "reference_peak_traced_mb": round(ref_peak / 2**20, 1),
                "speedup": round(ref_s / ours_s, 2),
                "cpu_time_ratio": round(ref_cpu / ours_cpu, 2),
                "max_relative_difference": max_rel,
                "agree": bool(max_rel < 1e-9),
            }
        )
    doc["pd"] = ours["pd"]
    doc["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
