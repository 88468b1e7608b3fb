"""Time one ``ClippyAdagrad.step()`` against ``torch.optim.Adagrad.step()`` on the same parameters.

Parameters: an MLP 256-128-64-1 plus a few embedding tables (default 4 x 50 000 x 16, about 3.2M
parameters), all with dense gradients. Each optimizer steps its own copy of the parameters, with the
same fixed gradients; the optimizers are timed round-robin (so machine noise hits all of them
alike) after a warm-up, and the median per step is reported, for ``foreach=False`` and ``True``.

Prints one JSON document; ``ratio_*`` = Clippy time / Adagrad time (target: <= 1.5).

    python benchmarks/clippy_speed.py [--device cuda] [--repeats 60] [--warmup 10] [--threads 1]

On a shared, loaded machine ``--threads 1`` gives steadier ratios (oversubscribed OpenMP threads
make every kernel's time erratic).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reprokit.optim import ClippyAdagrad  # noqa: E402

TARGET_RATIO = 1.5


def make_params(tables: int, rows: int, dim: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(rows, dim)] * tables
    widths = [256, 128, 64, 1]
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        shapes += [(fan_out, fan_in), (fan_out,)]
    return [(torch.randn(s, generator=gen) * 0.1).to(device) for s in shapes]


def build(kind: str, values: list[torch.Tensor], grads: list[torch.Tensor], foreach: bool):
    params = [torch.nn.Parameter(v.clone()) for v in values]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    lr = 1e-3
    if kind == "adagrad":
        opt = torch.optim.Adagrad(params, lr=lr, initial_accumulator_value=0.1, foreach=foreach)
    elif kind == "clippy_paper":
        opt = ClippyAdagrad.from_preset("paper", params, lr, foreach=foreach)
    elif kind == "clippy_tfrs":
        opt = ClippyAdagrad.from_preset("tfrs", params, lr, foreach=foreach)
    else:
        raise ValueError(kind)
    return opt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tables", type=int, default=4)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    values = make_params(args.tables, args.rows, args.dim, device)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(v.shape, generator=gen).to(device) for v in values]
    kinds = ("adagrad", "clippy_paper", "clippy_tfrs")
    results: dict[str, dict[str, float]] = {}
    for foreach in (False, True):
        opts = {k: build(k, values, grads, foreach) for k in kinds}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for i in range(args.warmup + args.repeats):
            for k in kinds:  # round-robin: noise hits every optimizer alike
                sync()
                t0 = time.perf_counter()
                opts[k].step()
                sync()
                if i >= args.warmup:
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[f"foreach={foreach}"] = {
            **{f"{k}_ms": round(med[k] * 1e3, 4) for k in kinds},
            "ratio_paper": round(med["clippy_paper"] / med["adagrad"], 3),
            "ratio_tfrs": round(med["clippy_tfrs"] / med["adagrad"], 3),
        }
    worst = max(max(r["ratio_paper"], r["ratio_tfrs"]) for r in results.values())
    doc = {
        "schema_version": 1,
        "benchmark": "clippy_speed",
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_params": sum(v.numel() for v in values),
        "n_tensors": len(values),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "statistic": "median seconds per step, in ms",
        "results": results,
        "target_ratio": TARGET_RATIO,
        "worst_ratio": worst,
        "target_met": worst <= TARGET_RATIO,
    }
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
