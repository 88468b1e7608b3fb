"""Contract-conformant run directories made from random predictions, for report and gate tests.

They follow `docs/contracts.md` (train-ensemble and compare-activations run directories). Summary
numbers come from `reprokit.metrics.summary.summarize` when it exists, else from the small reference
implementation below, which follows the same formulas.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import rankdata

from reprokit.data.layout import atomic_write_table

EPS = 1e-7


def _atomic_json(doc: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(_nulls(doc), indent=2))
    os.replace(tmp, path)


def _nulls(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nulls(v) for v in value]
    if isinstance(value, np.generic):
        return _nulls(value.item())
    return value


# -------------------------------------------------------------------------------- reference metrics
def _auc(p: np.ndarray, y: np.ndarray) -> float:
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logloss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _pair_pd(preds: np.ndarray, threshold: float = 0.5) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"abs": [], "rel": [], "l2": [], "flip": []}
    for i, j in combinations(range(len(preds)), 2):
        d = np.abs(preds[i] - preds[j])
        out["abs"].append(d.mean())
        out["rel"].append((d / ((preds[i] + preds[j]) / 2)).mean())
        out["l2"].append(math.sqrt(np.mean(d**2)))
        out["flip"].append(np.mean((preds[i] >= threshold) != (preds[j] >= threshold)))
    return {k: np.asarray(v) for k, v in out.items()}


def _pd(preds: np.ndarray) -> dict[str, float]:
    pairs = _pair_pd(preds)
    mean = preds.mean(axis=0)
    dev = np.abs(preds - mean).mean(axis=0)
    return {
        "abs": float(pairs["abs"].mean()),
        "rel": float(pairs["rel"].mean()),
        "abs_mean": float(dev.mean()),
        "rel_mean": float((dev / mean).mean()),
        "l2": float(pairs["l2"].mean()),
        "rel_std": float((preds.std(axis=0, ddof=1) / mean).mean()),
        "flip": float(pairs["flip"].mean()),
    }


def _stats(values: list[float], ensemble: float) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else math.nan,
        "per_replica": [float(v) for v in arr],
        "ensemble": float(ensemble),
    }


def reference_summary(preds: np.ndarray, labels: np.ndarray | None, seed: int = 0) -> dict:
    """The contract's summary document computed with plain numpy (fixtures only)."""
    preds = np.clip(np.asarray(preds, dtype=np.float64), EPS, 1 - EPS)
    m, n = preds.shape
    pairs = _pair_pd(preds)
    # Bootstrap over replicas: resample replicas, average pairwise PD over pairs of distinct draws.
    pair_mat = {key: np.zeros((m, m)) for key in ("rel", "abs")}
    for k, (i, j) in enumerate(combinations(range(m), 2)):
        for key in pair_mat:
            pair_mat[key][i, j] = pair_mat[key][j, i] = pairs[key][k]
    rng = np.random.default_rng(seed)
    boot: dict[str, list[float]] = {"rel": [], "abs": []}
    for _ in range(1000):
        pick = rng.integers(0, m, m)
        distinct = pick[:, None] != pick[None, :]
        if not distinct.any():
            continue
        for key in boot:
            boot[key].append(float(pair_mat[key][np.ix_(pick, pick)][distinct].mean()))
    mean = preds.mean(axis=0)
    dev = np.abs(preds - mean).mean(axis=0)
    edges = np.linspace(0.0, 1.0, 11)
    buckets = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (mean >= lo) & ((mean < hi) if hi < 1 else (mean <= hi))
        buckets.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "count": int(sel.sum()),
                "abs_mean": float(dev[sel].mean()) if sel.any() else math.nan,
                "rel_mean": float((dev[sel] / mean[sel]).mean()) if sel.any() else math.nan,
            }
        )
    counts, hist_edges = np.histogram(dev, bins=20)
    doc: dict[str, Any] = {
        "schema_version": 1,
        "replicas": m,
        "examples": n,
        "pd": _pd(preds),
        "pd_ci": {
            "rel": [float(np.quantile(boot["rel"], 0.025)), float(np.quantile(boot["rel"], 0.975))],
            "abs": [float(np.quantile(boot["abs"], 0.025)), float(np.quantile(boot["abs"], 0.975))],
            "level": 0.95,
            "method": "bootstrap over replicas",
        },
        "pd_per_pair": {"abs": pairs["abs"].tolist(), "rel": pairs["rel"].tolist()},
        "flip_threshold": 0.5,
        "pd_by_bucket": buckets,
        "pd_per_example_hist": {"edges": hist_edges.tolist(), "counts": counts.tolist()},
    }
    if labels is not None:
        doc["auc"] = _stats([_auc(p, labels) for p in preds], _auc(mean, labels))
        doc["logloss"] = _stats([_logloss(p, labels) for p in preds], _logloss(mean, labels))
        doc["calibration"] = _stats(
            [p.mean() / labels.mean() for p in preds], mean.mean() / labels.mean()
        )
    return doc


def summarize(preds: np.ndarray, labels: np.ndarray | None) -> dict:
    """The project's summarize when it exists (kind added by the caller), else the reference one."""
    try:
        from reprokit.metrics.summary import summarize as project_summarize
    except ImportError:
        return reference_summary(preds, labels)
    import inspect

    fast = (
        {"n_resamples": 999}
        if "n_resamples" in inspect.signature(project_summarize).parameters
        else {}
    )
    return dict(project_summarize(preds, labels, **fast))


def summarize_healthy(preds: np.ndarray, labels: np.ndarray | None, healthy: list[int]) -> dict:
    """Like the runner: PD over the replicas that did not diverge; with fewer than 2 the project's
    PD-less summary (null PD keys, accuracy of the one healthy replica if any)."""
    if len(healthy) >= 2:
        return summarize(preds[healthy], labels)
    from reprokit.training.divergence import summary_without_pd

    kept = preds[healthy] if healthy else preds
    return summary_without_pd(kept[:, :, None], 0, labels, len(healthy))


def fixture_fingerprint(truth_seed: int, examples: int) -> str:
    """The data fingerprint of fixture runs: equal exactly when they predict the same examples."""
    return hashlib.sha256(f"fixture:{truth_seed}:{examples}".encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------- run writers
def _environment() -> dict[str, Any]:
    return {
        "python": "3.11.2",
        "torch": "2.13.0",
        "numpy": np.__version__,
        "platform": "Linux-x86_64",
        "device": "cpu",
        "threads": 1,
        "deterministic_algorithms": True,
    }


def _config(replicas: int, vary: list[str], activation: str, name: str | None) -> dict[str, Any]:
    config = {
        "data": {"path": None, "split": "random", "eval_fraction": 0.2, "split_seed": 0,
                 "label": None, "synth_rows": 2000, "synth_fields": 8,
                 "synth_cardinality": 1000, "synth_numeric": 4, "synth_seed": 0},
        "model": {"embedding_dim": 8, "hidden": [64, 32], "activation": activation,
                  "dropout": 0.0, "embedding": "table"},
        "optim": {"name": "adagrad", "lr": 0.05, "batch_size": 256, "epochs": 2,
                  "weight_decay": 0.0},
        "replicas": replicas, "vary": vary, "seed": 0, "device": "cpu", "threads": 1,
        "max_threads": 4, "async_staleness": 2, "engine": "vectorized",
    }  # fmt: skip
    if name is not None:
        config["name"] = name
    return config


def make_train_ensemble(
    path: str | Path,
    *,
    replicas: int = 4,
    examples: int = 400,
    noise: float = 0.05,
    skill: float = 1.5,
    seed: int = 0,
    activation: str = "relu",
    vary: tuple[str, ...] = ("init", "data-order"),
    name: str | None = None,
    data_name: str = "synthetic",
    steps: int = 60,
    diverged: tuple[int, ...] = (),
    truth_seed: int = 1234,
    nan_diverged: bool = False,
    provenance: bool = True,
    fingerprint: str | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write a train-ensemble run directory whose replicas differ by `noise` on the logit scale.

    Labels and the true logits depend only on `truth_seed`, so several runs (arms, baselines)
    predict the same examples (and share a data fingerprint). Larger `skill` gives a higher AUC;
    larger `noise` a larger PD. Replicas in `diverged` are flagged and left out of PD, as the runner
    does; with `nan_diverged` they predict NaN. Like the runner the summary carries its provenance
    (`reprokit_version`, `config`, `data`) unless `provenance=False` (an older reprokit: the
    manifest still has `config` and `data`). `config` overrides keys of the resolved config, e.g.
    {"optim": {"lr": 0.1}}.
    """
    path = Path(path)
    truth = np.random.default_rng(truth_seed)
    logit = truth.normal(-1.0, 1.2, examples)
    labels = (truth.random(examples) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    rng = np.random.default_rng(seed)
    base = skill / 1.5 * logit + rng.normal(0, 0.6, examples)
    preds = np.stack(
        [1 / (1 + np.exp(-(base + rng.normal(0, noise, examples)))) for _ in range(replicas)]
    )
    if nan_diverged:
        preds[list(diverged)] = np.nan
    example_id = np.arange(examples, dtype=np.int64) + 10_000
    healthy = [r for r in range(replicas) if r not in diverged]
    summary = summarize_healthy(preds, labels, healthy)
    summary["kind"] = "train-ensemble"
    summary["diverged"] = {"count": len(diverged), "replicas": sorted(diverged)}
    resolved = _config(replicas, list(vary), activation, name)
    for section, values in (config or {}).items():
        if isinstance(values, dict):
            resolved[section] = {**resolved.get(section, {}), **values}
        else:
            resolved[section] = values
    data_block = {
        "name": data_name,
        "path": None,
        "train_rows": examples * 4,
        "eval_rows": examples,
        "labels": ["label"],
        "fingerprint": fingerprint or fixture_fingerprint(truth_seed, examples),
    }
    if provenance:
        summary.update(reprokit_version="0.1.0", config=resolved, data=data_block)

    seeds = {
        f"{r:03d}": {src: (seed * 1000 + r if src in vary else seed * 1000) for src in
                     ("init", "data-order", "dropout", "bitflip", "async", "threads")}
        for r in range(replicas)
    }  # fmt: skip
    manifest = {
        "schema_version": 1,
        "kind": "train-ensemble",
        "reprokit_version": "0.1.0",
        "config": resolved,
        "sources": {
            "varied": list(vary),
            "available": ["init", "data-order", "dropout", "bitflip", "async", "threads"],
        },
        "replica_seeds": seeds,
        "environment": _environment(),
        "engine": "vectorized",
        "created": "2025-01-01T00:00:00+00:00",
        "data": data_block,
    }
    if name is not None:
        manifest["name"] = name
    _atomic_json(manifest, path / "manifest.json")
    for r in range(replicas):
        rdir = path / "replicas" / f"{r:03d}"
        table = pa.table(
            {"example_id": example_id, "label": labels, "prediction": preds[r].astype(np.float64)}
        )
        atomic_write_table(table, rdir / "predictions.parquet")
        step = np.arange(1, steps + 1, dtype=np.int64)
        loss = 0.45 + 0.35 * np.exp(-step / (steps / 4)) + rng.normal(0, 0.01, steps)
        if r in diverged:
            loss[steps // 2 :] = np.nan
        log = pa.table(
            {
                "step": step,
                "epoch": (step - 1) * 2 // steps,
                "loss": loss,
                "grad_norm": np.abs(rng.normal(1.0, 0.2, steps)),
            }
        )
        atomic_write_table(log, rdir / "train_log.parquet")
        k = healthy.index(r) if r in healthy else None

        def per_replica(key: str, default: float = math.nan, k: int | None = k) -> float:
            values = (summary.get(key) or {}).get("per_replica") or []
            return values[k] if k is not None and k < len(values) else default

        metrics = {
            "replica": r,
            "auc": per_replica("auc"),
            "logloss": per_replica("logloss"),
            "calibration": per_replica("calibration"),
            "train_seconds": 1.5 + 0.1 * r,
            "diverged": r in diverged,
            "seeds": seeds[f"{r:03d}"],
            "threads": 1,
            "steps": steps,
        }
        _atomic_json(metrics, rdir / "metrics.json")
    _atomic_json(summary, path / "summary.json")
    return path


def slug(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-") or "arm"


def make_compare(
    path: str | Path,
    *,
    arms: dict[str, tuple[float, float]] | None = None,
    baseline: str = "relu",
    replicas: int = 4,
    examples: int = 400,
    seed: int = 0,
    name: str | None = None,
    **arm_options: Any,
) -> Path:
    """Write a compare-activations run directory: `arms` maps activation spec → (noise, skill).

    `arm_options` go to every arm's `make_train_ensemble` (e.g. `provenance`, `config`)."""
    path = Path(path)
    arms = arms or {"relu": (0.06, 1.5), "smelu:beta=1": (0.03, 1.48), "gelu": (0.055, 1.2)}
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not an arm")
    entries = []
    for spec, (noise, skill) in arms.items():
        arm_slug = slug(spec)
        arm_dir = make_train_ensemble(
            path / "arms" / arm_slug,
            replicas=replicas,
            examples=examples,
            noise=noise,
            skill=skill,
            seed=seed,
            activation=spec,
            name=name,
            **arm_options,
        )
        summary = json.loads((arm_dir / "summary.json").read_text())
        entries.append(
            {
                **summary,
                "activation": spec,
                "name": arm_slug,
                "run_dir": f"arms/{arm_slug}",
                "train_seconds": 6.0 + noise,
                "test": None,
            }
        )
    base = next(e for e in entries if e["activation"] == baseline)
    for entry in entries:
        if entry is base:
            continue
        diff = np.subtract(entry["pd_per_pair"]["rel"], base["pd_per_pair"]["rel"])
        p = 0.03 if abs(diff.mean()) > 0.01 else 0.6
        entry["test"] = {
            "metric": "rel",
            "statistic": float(diff.mean()),
            "p_value": p,
            "p_holm": min(1.0, p * (len(entries) - 1)),
        }
    front = []
    for e in entries:
        pd_e, auc_e = e["pd"]["rel"], e["auc"]["mean"]
        dominated = any(
            o is not e
            and o["pd"]["rel"] <= pd_e
            and o["auc"]["mean"] >= auc_e
            and (o["pd"]["rel"] < pd_e or o["auc"]["mean"] > auc_e)
            for o in entries
        )
        if not dominated:
            front.append(e["activation"])
    doc = {
        "schema_version": 1,
        "kind": "compare-activations",
        "baseline": baseline,
        "arms": entries,
        "pareto": front,
    }
    if name is not None:
        doc["name"] = name
    _atomic_json(doc, path / "compare.json")
    return path
