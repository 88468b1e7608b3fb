"""Would a generic vectorized engine for `--model-factory` models pay off? One epoch of SGD on N
replicas of a user-style model (own nn.Embedding tables, an MLP, dense gradients), two ways:

- sequential: N modules trained one after the other (what the process engine does per replica,
  without its logging);
- vmap: the N replicas' parameters stacked (`torch.func.stack_module_state`) and one
  `vmap(grad(loss of functional_call))` per step over N per-replica batches, then one stacked
  SGD update.

Both draw the same initial parameters and data orders, so the script also reports the largest
difference between replica r's final predictions the two ways (reduction-order rounding only).
Dropout is left out: `vmap(randomness="different")` draws from torch's global generator, not
from one seeded generator per replica, which an engine would have to solve first.

    python benchmarks/factory_vmap_speed.py --rows 100000 --replicas 1 4 8 --json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap


class UserModel(nn.Module):
    """What a user might write: per-field embeddings, concatenated, an MLP to one logit."""

    def __init__(self, vocab: list[int], dim: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.ModuleList(nn.Embedding(v, dim) for v in vocab)
        self.mlp = nn.Sequential(
            nn.Linear(dim * len(vocab), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        e = torch.cat([t(cat[..., f]) for f, t in enumerate(self.emb)], dim=-1)
        return self.mlp(e).squeeze(-1)


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--fields", type=int, default=8)
    ap.add_argument("--cardinality", type=int, default=1000)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
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
        print(json.dumps({"rows": args.rows, "threads": args.threads, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
