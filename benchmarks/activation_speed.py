"""Forward+backward time of reprokit's activations against ``torch.relu``, in one run.

Prints one JSON document: per thread count, the median seconds per forward+backward for each
activation on a float32 tensor (default 4M elements), and each activation's ratio to ReLU. The
candidates are interleaved round by round, in a fresh random order each round, so that load from
other processes and the after-effects of one candidate on the next (caches, torch's OpenMP worker
threads, the allocator) hit them alike; ratios, not absolute times, are the result.

``smelu`` / ``gsmelu`` are what reprokit runs: the fused compiled kernels where they are built
(``fused_available``), else the torch-ops path. ``smelu_torch`` / ``gsmelu_torch`` force the
torch-ops path (as ``REPROKIT_DISABLE_FUSED=1`` does). Issue 3's target is
``smelu_over_relu <= 1`` at every thread count.

    python benchmarks/activation_speed.py [--numel 4000000] [--repeats 50] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from reprokit.nn import _fused  # noqa: E402
from reprokit.nn import functional as RF  # noqa: E402

# name -> (function, whether it may use the fused kernels)
CANDIDATES = {
    "relu": (torch.relu, True),
    "smelu": (lambda x: RF.smelu(x, 1.0), True),
    "smelu_torch": (lambda x: RF.smelu(x, 1.0), False),
    "gsmelu": (lambda x: RF.gsmelu(x, 0.5, 1.5, 1.0, 0.0), True),
    "gsmelu_torch": (lambda x: RF.gsmelu(x, 0.5, 1.5, 1.0, 0.0), False),
    "smelu_where": (
        lambda x: torch.where(
            x <= -1.0, torch.zeros_like(x), torch.where(x >= 1.0, x, (x + 1.0) ** 2 / 4.0)
        ),
        True,
    ),
    "gelu": (torch.nn.functional.gelu, True),
    "silu": (torch.nn.functional.silu, True),
}
# smelu_where (a naive torch.where formula, ~20x ReLU) is left out by default: its many temporaries
# disturb the allocator and caches for whichever candidate runs next.
DEFAULT = ["relu", "smelu", "smelu_torch", "gsmelu", "gsmelu_torch", "gelu", "silu"]


def _once(name: str, x: torch.Tensor, grad: torch.Tensor) -> float:
    fn, may_fuse = CANDIDATES[name]
    x.grad = None
    with contextlib.nullcontext() if may_fuse else _fused.disabled():
        start = time.perf_counter()
        fn(x).backward(grad)
        return time.perf_counter() - start


def measure(
    numel: int, repeats: int, warmup: int, threads: int, names: list[str], seed: int
) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(numel, generator=gen).mul_(2.0).requires_grad_(True)
    grad = torch.randn(numel, generator=gen)
    for name in names:
        for _ in range(warmup):
            _once(name, x, grad)
    order = random.Random(seed + threads)
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in order.sample(names, len(names)):
            times[name].append(_once(name, x, grad))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    paired = {
        name: statistics.median(t / r for t, r in zip(ts, times["relu"], strict=True))
        for name, ts in times.items()
    }
    return {
        "threads": threads,
        "median_s": {name: round(v, 6) for name, v in median.items()},
        "ratio_to_relu": {name: round(v / median["relu"], 3) for name, v in median.items()},
        # the median over rounds of (time / ReLU's time in the same round): less sensitive to
        # load that changes over the run than the ratio of the medians
        "paired_ratio_to_relu": {name: round(v, 3) for name, v in paired.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=4_000_000)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the round order")
    args = parser.parse_args(argv)
    names = ["relu"] + [n for n in (args.only or DEFAULT) if n != "relu"]
    results = [
        measure(args.numel, args.repeats, args.warmup, t, names, args.seed) for t in args.threads
    ]

    def over_relu(name: str) -> dict[str, float] | None:
        if name not in names:
            return None
        return {str(r["threads"]): r["ratio_to_relu"][name] for r in results}

    smelu = over_relu("smelu")
    smelu_paired = (
        None
        if smelu is None
        else {str(r["threads"]): r["paired_ratio_to_relu"]["smelu"] for r in results}
    )
    doc = {
        "schema_version": 2,
        "benchmark": "activation_forward_backward",
        "numel": args.numel,
        "dtype": "float32",
        "repeats": args.repeats,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "fused_available": _fused.available(),
        "fused_enabled": _fused.enabled(),
        "fused_threading": _fused.threading_backend,
        "results": results,
        "smelu_over_relu": smelu,
        "smelu_over_relu_paired": smelu_paired,
        "smelu_torch_over_relu": over_relu("smelu_torch"),
        "gsmelu_over_relu": over_relu("gsmelu"),
        "smelu_no_slower_than_relu": None if smelu is None else max(smelu.values()) <= 1.0,
    }
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
