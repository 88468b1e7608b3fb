"""Vectorized N-replica engine against a plain sequential loop, on the same data and model.

    python benchmarks/ensemble_speed.py                       # 100k rows, N = 1, 4, 8, 16
    python benchmarks/ensemble_speed.py --replicas 8 --rows 20000 --device cuda

The reference is `reprokit.training.loop.train_replica` called for one replica after another
(the ordinary torch training code the `process` engine runs); the candidate is
`reprokit.training.vectorized.train_replicas` training all N at once. A second reference,
`plain_replica`, is the bare loop a user would write (forward, loss, backward, torch.optim step,
torch's default kernels), also one replica after another. All get the same encoded
data, configuration, seeds and intra-op thread count. Every (engine, N) runs in its own subprocess
so that its peak memory (ru_maxrss; `torch.cuda.max_memory_allocated` on CUDA) is its own; runs
alternate between the engines so that load from other users of a shared machine hits both alike.

Every (engine, N) runs `--repeats` times (default 3) and the run with the median training time is
reported, with all runs' training seconds beside it. Prints one JSON document: per N the wall and
CPU seconds of training (and of training + predicting), examples per second, peak memory, the
speedups (reference / vectorized: ratios, not absolute times), and max |Δp| between replica k of
the sequential and the vectorized engine. Beside them, the GEMM floor: the epoch's batched matrix
products alone (`gemm_floor_seconds`), which bounds the speedup this machine allows
(`speedup_ceiling_vs_plain`: the plain loop's time over the floor) whatever the engine's overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


#: The vectorized engine and its two references: reprokit's reference loop and a bare torch loop.
ENGINES = ["sequential", "plain", "vectorized"]


def _config(args: argparse.Namespace) -> Any:
    from reprokit.config import resolve_config

    return resolve_config(
        None,
        {
            "data.synth_rows": args.rows,
            "data.synth_fields": args.fields,
            "model.hidden": args.hidden,
            "optim.name": args.optim,
            "optim.batch_size": args.batch_size,
            "optim.epochs": args.epochs,
            "vary": args.vary,
            "device": args.device,
            "threads": args.threads,
            "replicas": max(args.replicas),
        },
    )


def _peak_memory_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(torch.device(device)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plain_replica(encoded: Any, config: Any, seeds: dict[str, int]) -> tuple[np.ndarray, float]:
    """Ordinary torch training code for one replica: no logging, grad norms or divergence checks,
    and torch's default (non-deterministic-mode) kernels; only the thread count is set.

    The second reference: what a user's own loop costs, so the speedup is not flattered by the
    reference loop's per-step bookkeeping or by deterministic mode.
    """
    import torch
    import torch.nn.functional as F

    from reprokit.training.loop import build_model, predict

    torch.set_num_threads(config.threads)
    torch.sparse.check_sparse_tensor_invariants.disable()  # torch's default, said explicitly
    model = build_model(config, encoded.vocab_sizes, encoded.train_num.shape[1], 1)
    model.reset_parameters(torch.Generator().manual_seed(seeds["init"]))
    optimizer = torch.optim.Adagrad(model.parameters(), lr=config.optim.lr)
    cat = torch.as_tensor(encoded.train_cat)
    num = torch.as_tensor(encoded.train_num)
    y = torch.as_tensor(encoded.train_y[:, :1])
    rng = np.random.default_rng(seeds["data-order"])
    start = time.perf_counter()
    for _ in range(config.optim.epochs):
        model.train()
        perm = torch.as_tensor(rng.permutation(cat.shape[0]))
        for lo in range(0, cat.shape[0], config.optim.batch_size):
            idx = perm[lo : lo + config.optim.batch_size]
            loss = F.binary_cross_entropy_with_logits(model(cat[idx], num[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    seconds = time.perf_counter() - start
    preds = predict(model, torch.as_tensor(encoded.eval_cat), torch.as_tensor(encoded.eval_num))
    return preds, seconds


def gemm_floor_seconds(encoded: Any, config: Any, n: int, repeats: int = 3) -> float:
    """Seconds that the batched GEMMs of one epoch of N replicas take alone (fastest of
    `repeats`): the stacked forward, weight-gradient and input-gradient products of every step
    with the vectorized engine's calls, shapes and layouts, and nothing else.

    A lower bound on any N-replica engine's time that does the same arithmetic on this machine,
    so `plain / floor` is the largest speedup over the plain loop that the hardware allows.
    """
    import torch

    torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    r, b = max(n, 2), config.optim.batch_size  # the engine trains a lone replica beside a copy
    emb_width = len(encoded.vocab_sizes) * config.model.embedding_dim
    widths = [emb_width + encoded.train_num.shape[1], *config.model.hidden]
    g = torch.Generator(device=device).manual_seed(0)

    def randn(*shape: int) -> Any:
        return torch.randn(shape, generator=g, device=device)

    weights = [randn(r, i, o) for i, o in zip(widths[:-1], widths[1:], strict=True)]
    biases = [randn(r, 1, o) for o in widths[1:]]
    head = randn(r, 1, widths[-1])  # the 1-wide head's weight, stored as a row
    acts = [randn(r, b, w) for w in widths]
    grads = [randn(r, b, w) for w in widths[1:]]
    w_grads = [torch.empty_like(w) for w in weights]
    in_grads = [
        randn(r, b, emb_width),
        *(torch.empty(r, b, w, device=device) for w in widths[1:-1]),
    ]
    logits, logit_grad, head_grad = randn(r, 1, b), randn(r, 1, b), torch.empty_like(head)
    steps = -(-encoded.n_train // b) * config.optim.epochs

    def step() -> None:
        for i, (w, bias) in enumerate(zip(weights, biases, strict=True)):
            torch.baddbmm(bias, acts[i], w, out=grads[i])  # forward (values do not matter)
        torch.bmm(head, acts[-1].transpose(1, 2), out=logits)
        torch.bmm(logit_grad, acts[-1], out=head_grad)
        for i in range(len(weights) - 1, -1, -1):
            torch.bmm(acts[i].transpose(1, 2), grads[i], out=w_grads[i])
            w = weights[i][:, :emb_width] if i == 0 else weights[i]
            torch.bmm(grads[i], w.transpose(1, 2), out=in_grads[i])

    best = float("inf")
    for _ in range(repeats):
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best * n / r  # the per-replica share, as the engine reports a lone replica


def child(args: argparse.Namespace) -> None:
    """Train N replicas with one engine, print a JSON line, save predictions (parity check)."""
    import torch

    from reprokit.sources import replica_seeds
    from reprokit.training.loop import train_replica
    from reprokit.training.vectorized import train_replicas

    with open(args.data, "rb") as fh:
        encoded = pickle.load(fh)
    config = _config(args)
    n = args.child_replicas
    seeds = [replica_seeds(config.seed, config.vary, r) for r in range(n)]
    if args.child == "gemm-floor":
        print(json.dumps({"gemm_floor_seconds": gemm_floor_seconds(encoded, config, n)}))
        return
    rss_data = _peak_memory_mb("cpu")
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if args.child == "plain":
        plain = [plain_replica(encoded, config, seeds[r]) for r in range(n)]
        predictions = [p for p, _ in plain]
        train_wall = float(sum(t for _, t in plain))
        steps, diverged = -1, 0
    else:
        if args.child == "sequential":
            outs = [train_replica(encoded, config, r, seeds[r]) for r in range(n)]
        else:
            outs = train_replicas(encoded, config, list(range(n)), seeds)
        predictions = [o.predictions for o in outs]
        train_wall = float(sum(o.train_seconds for o in outs))
        steps, diverged = int(outs[0].steps), int(sum(o.diverged for o in outs))
    if config.device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    np.save(args.predictions, np.stack(predictions))
    doc = {
        "engine": args.child,
        "replicas": n,
        "train_seconds": train_wall,
        "total_seconds": wall,
        "total_cpu_seconds": cpu,
        "examples_per_second": n * encoded.n_train * config.optim.epochs / train_wall,
        "peak_memory_mb": _peak_memory_mb(config.device),
        "rss_after_data_mb": rss_data,
        "steps": steps,
        "diverged": diverged,
    }
    print(json.dumps(doc))


def _run_child(args: argparse.Namespace, engine: str, n: int, data: str, preds: str) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--child-replicas", str(n), "--data", data]
    cmd += ["--predictions", preds]
    for key in ("rows", "fields", "hidden", "optim", "batch_size", "epochs", "vary", "device"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += ["--threads", str(args.threads), "--replicas", ",".join(map(str, args.replicas))]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{engine} N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    """The run with the median training time (the lower middle one for an even count), with
    every run's training seconds beside it."""
    ranked = sorted(runs, key=lambda r: r["train_seconds"])
    return {
        **ranked[(len(ranked) - 1) // 2],
        "train_seconds_runs": [r["train_seconds"] for r in runs],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--fields", type=int, default=8)
    parser.add_argument("--hidden", default="256-128-64")
    parser.add_argument("--optim", default="adagrad")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--vary", default="init,data-order")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--replicas", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16]
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per engine and N (the median is reported)"
    )
    parser.add_argument("--child", choices=[*ENGINES, "gemm-floor"], help=argparse.SUPPRESS)
    parser.add_argument("--child-replicas", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--predictions", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    from reprokit.data.encoding import load_encoded

    config = _config(args)
    encoded = load_encoded(config.data)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "encoded.pkl")
        with open(data, "wb") as fh:
            pickle.dump(encoded, fh)
        for n in args.replicas:
            runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
            for rep in range(args.repeats):
                # Alternate which engine goes first, so drifting machine load favours neither.
                order = ENGINES if rep % 2 == 0 else ENGINES[::-1]
                for engine in order:
                    run = _run_child(args, engine, n, data, f"{tmp}/{engine}-{n}.npy")
                    runs[engine].append(run)
                    print(f"N={n} {engine}: {run['train_seconds']:.2f}s", file=sys.stderr)
            seq, plain, vec = (_median_run(runs[e]) for e in ENGINES)
            floor = _run_child(args, "gemm-floor", n, data, "")["gemm_floor_seconds"]
            p_seq, p_vec = (np.load(f"{tmp}/{e}-{n}.npy") for e in ("sequential", "vectorized"))
            results.append(
                {
                    "replicas": n,
                    "sequential": seq,
                    "plain": plain,
                    "vectorized": vec,
                    "speedup_vs_plain_train": plain["train_seconds"] / vec["train_seconds"],
                    "speedup_train": seq["train_seconds"] / vec["train_seconds"],
                    "speedup_total_wall": seq["total_seconds"] / vec["total_seconds"],
                    "speedup_total_cpu": seq["total_cpu_seconds"] / vec["total_cpu_seconds"],
                    "max_abs_dp_vs_sequential": float(np.max(np.abs(p_seq - p_vec))),
                    "gemm_floor_seconds": floor,
                    "vectorized_gemm_share": floor / vec["train_seconds"],
                    "speedup_ceiling_vs_plain": plain["train_seconds"] / floor,
                    "speedup_ceiling_vs_sequential": seq["train_seconds"] / floor,
                }
            )
    doc = {
        "benchmark": "ensemble_speed",
        "reference": "reprokit.training.loop.train_replica, one replica after another",
        "plain_reference": "bare torch loop (forward, BCE, backward, torch.optim step; torch's default kernels), one replica after another",
        "data": {
            "rows": args.rows,
            "train_rows": int(encoded.n_train),
            "fields": args.fields,
            "vocab_sizes": list(encoded.vocab_sizes),
        },
        "model": {"hidden": args.hidden, "embedding_dim": config.model.embedding_dim},
        "optim": {"name": args.optim, "batch_size": args.batch_size, "epochs": args.epochs},
        "vary": list(config.vary),
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "results": results,
    }
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
