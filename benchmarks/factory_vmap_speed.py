"""Would a generic vectorized engine for `--model-factory` models pay off? Two modes.

`--mode engine` (the default) times reprokit's own two paths for a factory model: the process
engine (`training.loop.train_replica`, one replica after the other, what `--engine process` runs
with one worker) against the vectorized engine's torch.func path (`training.func_stack`, all
replicas stacked, one `vmap(grad_and_value(functional_call))` per step), on reprokit's synthetic
data with this file's `build` as the factory (`UserModel`: per-field nn.Embedding tables, an MLP,
the numeric features). Both paths log, check divergence and predict the eval split exactly as a
run does. Wall and CPU seconds (`time.process_time`, all of this process's threads) per path and
replica count, the load average before each measurement, and the largest |Δp| between replica r
of the two paths; every cell is repeated `--repeats` times (median and all values reported),
after one untimed warm-up of both paths (the first `torch.func` call imports torch._dynamo).

`--mode bare` is the earlier measurement without reprokit around it: one epoch of SGD on N
replicas, sequential modules against stacked parameters and one vmap per step.

    python benchmarks/factory_vmap_speed.py --rows 20000 --replicas 1 2 4 8 16 --repeats 3
    python benchmarks/factory_vmap_speed.py --mode bare --rows 50000 --replicas 1 4 8

Dropout is left out: `vmap(randomness="different")` draws from torch's global generator, not
from one seeded generator per replica, so the engine refuses models with dropout.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap


class UserModel(nn.Module):
    """What a user might write: per-field embeddings, concatenated (with the numeric features, if
    any), an MLP to one logit."""

    def __init__(self, vocab: list[int], dim: int = 8, hidden: int = 64, n_numeric: int = 0):
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(v, dim) for v in vocab)
        self.mlp = nn.Sequential(
            nn.Linear(dim * len(vocab) + n_numeric, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, cat: torch.Tensor, num: torch.Tensor | None = None) -> torch.Tensor:
        e = torch.cat([t(cat[..., f]) for f, t in enumerate(self.emb)], dim=-1)
        if num is not None:
            e = torch.cat([e, num], dim=-1)
        return self.mlp(e).squeeze(-1)


def build(schema) -> UserModel:
    """The factory `--mode engine` trains (`benchmarks/factory_vmap_speed.py:build`); its first
    hidden width is `--hidden` (passed through the environment, since reprokit calls build)."""
    hidden = int(os.environ.get("FACTORY_VMAP_HIDDEN", "64"))
    return UserModel(schema.vocab_sizes, schema.embedding_dim, hidden, schema.n_numeric)


def data(rows: int, fields: int, card: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, card, size=(rows, fields))
    logit = (np.sin(cat[:, 0]) + np.cos(cat[:, 1] * 0.3)) * 1.5
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return torch.as_tensor(cat), torch.as_tensor(y)


def models(n: int, vocab: list[int]) -> list[UserModel]:
    out = []
    for r in range(n):
        torch.manual_seed(100 + r)
        out.append(UserModel(vocab))
    return out


def sequential(ms, cat, y, orders, bs, lr) -> float:
    start = time.perf_counter()
    for m, order in zip(ms, orders, strict=True):
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        for lo in range(0, len(order), bs):
            idx = order[lo : lo + bs]
            loss = F.binary_cross_entropy_with_logits(m(cat[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def vectorized(ms, cat, y, orders, bs, lr) -> tuple[float, dict]:
    params, buffers = stack_module_state(ms)
    base = copy.deepcopy(ms[0]).to("meta")

    def loss_fn(p, b, c, t):
        return F.binary_cross_entropy_with_logits(functional_call(base, (p, b), (c,)), t)

    step_grad = vmap(grad(loss_fn))
    order = torch.stack(orders)  # [N, rows]
    start = time.perf_counter()
    for lo in range(0, order.shape[1], bs):
        idx = order[:, lo : lo + bs]  # [N, batch]
        g = step_grad(params, buffers, cat[idx], y[idx])
        with torch.no_grad():
            for k in params:
                params[k] -= lr * g[k]
    return time.perf_counter() - start, params


def _timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def engine_mode(args: argparse.Namespace) -> dict:
    """reprokit's process engine against its torch.func path, per replica count."""
    from reprokit.config import resolve_config
    from reprokit.data.encoding import load_encoded
    from reprokit.sources import replica_seeds
    from reprokit.training import func_stack
    from reprokit.training.loop import train_replica

    cfg = resolve_config(
        None,
        {
            "data.synth_rows": args.rows,
            "data.synth_fields": args.fields,
            "data.synth_cardinality": args.cardinality,
            "optim.batch_size": args.batch_size,
            "optim.epochs": args.epochs,
            "optim.name": args.optimizer,
            "threads": args.threads,
            "vary": "init,data-order",
            "model.factory": f"{__file__}:build",
        },
    )
    encoded = load_encoded(cfg.data)

    def process(n: int) -> list:
        seeds = [replica_seeds(cfg.seed, cfg.vary, r) for r in range(n)]
        return [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]

    def vmapped(n: int) -> list:
        seeds = [replica_seeds(cfg.seed, cfg.vary, r) for r in range(n)]
        return func_stack.train_replicas(encoded, cfg, list(range(n)), seeds)

    process(1), vmapped(1)  # warm-up: imports (torch._dynamo on the first torch.func call)
    results = []
    for n in args.replicas:
        cell: dict = {"replicas": n, "load": [], "process": [], "vmap": []}
        diff = 0.0
        for _ in range(args.repeats):
            cell["load"].append(round(os.getloadavg()[0], 2))
            wall, cpu, ref = _timed(lambda n=n: process(n))
            cell["process"].append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})
            wall, cpu, out = _timed(lambda n=n: vmapped(n))
            cell["vmap"].append({"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)})
            for a, b in zip(ref, out, strict=True):
                diff = max(diff, float(np.abs(a.predictions - b.predictions).max()))
        for key in ("wall_s", "cpu_s"):
            p = float(np.median([m[key] for m in cell["process"]]))
            v = float(np.median([m[key] for m in cell["vmap"]]))
            cell[f"process_{key}"], cell[f"vmap_{key}"] = round(p, 3), round(v, 3)
            cell[f"speedup_{key[:-2]}"] = round(p / v, 2)
        cell["max_abs_pred_diff"] = diff
        results.append(cell)
        if not args.json:
            short = {k: v for k, v in cell.items() if k not in ("process", "vmap")}
            print(short, flush=True)
    return {
        "mode": "engine",
        "rows": args.rows,
        "train_rows": int(encoded.train_cat.shape[0]),
        "fields": args.fields,
        "cardinality": args.cardinality,
        "batch_size": args.batch_size,
        "hidden": [args.hidden, args.hidden // 2],
        "epochs": args.epochs,
        "optimizer": args.optimizer,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "results": results,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("engine", "bare"), default="engine")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--cardinality", type=int, default=1000)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1, help="engine mode")
    ap.add_argument("--optimizer", default="adagrad", help="engine mode: adagrad, sgd or adam")
    ap.add_argument("--repeats", type=int, default=3, help="engine mode")
    ap.add_argument("--hidden", type=int, default=64, help="the model's first hidden width")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ["FACTORY_VMAP_HIDDEN"] = str(args.hidden)
    if args.mode == "engine":
        doc = engine_mode(args)
        if args.json:
            print(json.dumps(doc, indent=1))
        return
    torch.set_num_threads(args.threads)
    cat, y = data(args.rows, args.fields, args.cardinality)
    vocab = [args.cardinality] * args.fields
    rows = []
    for n in args.replicas:
        orders = [
            torch.as_tensor(np.random.default_rng(r).permutation(args.rows)) for r in range(n)
        ]
        seq_models = models(n, vocab)
        t_seq = sequential(seq_models, cat, y, orders, args.batch_size, 0.05)
        t_vec, stacked = vectorized(models(n, vocab), cat, y, orders, args.batch_size, 0.05)
        base = copy.deepcopy(seq_models[0])
        probe = cat[:2048]
        diff = 0.0
        with torch.no_grad():
            for r, m in enumerate(seq_models):
                p = {k: v[r] for k, v in stacked.items()}
                diff = max(diff, float((functional_call(base, p, (probe,)) - m(probe)).abs().max()))
        rows.append(
            {
                "replicas": n,
                "sequential_s": round(t_seq, 3),
                "vmap_s": round(t_vec, 3),
                "speedup": round(t_seq / t_vec, 2),
                "max_logit_diff": diff,
            }
        )
        if not args.json:
            print(rows[-1], flush=True)
    if args.json:
        doc = {"mode": "bare", "rows": args.rows, "threads": args.threads, "results": rows}
        print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
