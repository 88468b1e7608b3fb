"""Forward+backward time of reprokit's activations against ``torch.relu``, in one run.

Prints one JSON document: per thread count, the median seconds per forward+backward for each
activation on a float32 tensor (default 4M elements), and each activation's ratio to ReLU. The
candidates are interleaved round by round (ReLU, SmeLU, ..., ReLU, SmeLU, ...) so that load from
other processes hits them alike; ratios, not absolute times, are the result.

    python benchmarks/activation_speed.py [--numel 4000000] [--repeats 30] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from reprokit.nn import functional as RF  # noqa: E402

CANDIDATES = {
    "relu": torch.relu,
    "smelu": lambda x: RF.smelu(x, 1.0),
    "gsmelu": lambda x: RF.gsmelu(x, 0.5, 1.5, 1.0, 0.0),
    "smelu_where": lambda x: torch.where(
        x <= -1.0, torch.zeros_like(x), torch.where(x >= 1.0, x, (x + 1.0) ** 2 / 4.0)
    ),
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
}


def _once(fn, x: torch.Tensor, grad: torch.Tensor) -> float:
    x.grad = None
    start = time.perf_counter()
    fn(x).backward(grad)
    return time.perf_counter() - start


def measure(numel: int, repeats: int, warmup: int, threads: int, names: list[str]) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=gen).mul_(2.0).requires_grad_(True)
    grad = torch.randn(numel, generator=gen)
    for name in names:
        for _ in range(warmup):
            _once(CANDIDATES[name], x, grad)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(_once(CANDIDATES[name], x, grad))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "threads": threads,
        "median_s": {name: round(v, 6) for name, v in median.items()},
        "ratio_to_relu": {name: round(v / median["relu"], 3) for name, v in median.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=None)
    args = parser.parse_args(argv)
    names = ["relu"] + [n for n in (args.only or CANDIDATES) if n != "relu"]
    results = [measure(args.numel, args.repeats, args.warmup, t, names) for t in args.threads]
    doc = {
        "schema_version": 1,
        "benchmark": "activation_forward_backward",
        "numel": args.numel,
        "dtype": "float32",
        "repeats": args.repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
        "smelu_over_relu": {str(r["threads"]): r["ratio_to_relu"]["smelu"] for r in results},
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
