"""`run_stability`: a training-stability study, optimizers × learning-rate multipliers × replicas.

Each *cell* (one optimizer at one multiple of the base learning rate) is a train-ensemble run of
the same configuration in ``RUN_DIR/cells/<slug>/`` (resumed like any train-ensemble run), on data
encoded once. Per cell the study reports, following docs/methods.md §4 and the paper's
Table 2/3 conventions:

- the divergence ratio (diverged / tried replicas) and the reasons (nonfinite, unrecovered spike,
  collapse; see `reprokit.training.divergence`), loss spikes and how many recovered;
- final AUC / log-loss per task as mean ± std over the replicas that did not diverge;
- PD among the replicas that did not diverge (null when fewer than 2 are left);
- the clipping factor σ (Clippy's σ, or the gradient-clipping baselines' scale): its mean, its
  minimum and the fraction of steps in which some tensor was clipped (σ < 1).

Every Adagrad-family cell (adagrad, clippy*, adagrad+*: `reprokit.training.loop.
ACCUMULATOR_OPTIMIZERS`) starts its accumulator at the same A0 (default 0.1, the Clippy paper's):
torch's Adagrad starts at 0 and Clippy at 0.1, and that difference alone moves AUC by points, which
would read as the cost of clipping. Optimizers without an accumulator (adam, sgd) record None.

Run directory (kind ``stability``)::

    RUN_DIR/manifest.json       schema_version, kind, reprokit_version, config (the base config),
                                study {optimizers, lr_multipliers, initial_accumulator_value},
                                environment, created
    RUN_DIR/stability.json      the study document (what --json prints): cells, one per
                                (optimizer, lr multiplier), each with its summary numbers, its
                                divergence statistics and `run_dir` "cells/<slug>"
    RUN_DIR/summary.json        the same document (generic run-directory readers look for it)
    RUN_DIR/loss_curves.png/.svg training loss of every replica per cell, events marked
    RUN_DIR/cells/<slug>/       a train-ensemble run directory per cell
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from reprokit.config import RunConfig
from reprokit.environment import environment_fingerprint
from reprokit.errors import ReprokitError
from reprokit.runners.ensemble import (
    ProgressCallback,
    StepProgress,
    default_run_dir,
)
from reprokit.runners.executors import Executor
from reprokit.runners.study import Arm, ArmResult, StudyDir, run_study
from reprokit.store import (
    RunStore,
    atomic_write_bytes,
    atomic_write_json,
)

KIND = "stability"
DOCUMENT = "stability.json"
CELLS = "cells"
PLOT = "loss_curves"
DEFAULT_OPTIMIZERS = ("adagrad", "clippy", "adagrad+gradclip")
DEFAULT_MULTIPLIERS = (1.0, 2.0, 4.0, 8.0)
#: The study's accumulator start A0 when neither the caller nor the config names one (the paper's).
DEFAULT_INITIAL_ACCUMULATOR = 0.1
#: Event markers of the loss-curve plots (kind → matplotlib marker, colour).
EVENT_STYLE = {
    "spike": ("^", "#d62728"),
    "recovered": ("o", "#2ca02c"),
    "diverged": ("X", "#000000"),
    "nonfinite": ("X", "#9467bd"),
    "collapse": ("s", "#ff7f0e"),
}

#: progress(done, total, description) over all replicas of all cells.
StudyProgress = Callable[[int, int, str], None]


# ------------------------------------------------------------------------------------------ inputs
def parse_optimizers(text: str | list[str]) -> list[str]:
    """'adagrad,clippy' → ['adagrad', 'clippy'] (names of reprokit.optim.OPTIMIZER_NAMES)."""
    from reprokit.optim import OPTIMIZER_NAMES

    items = text if isinstance(text, list) else str(text).split(",")
    names = [str(n).strip().lower() for n in items if str(n).strip()]
    if not names:
        raise ReprokitError("--optimizers names no optimizer")
    for name in names:
        if name not in OPTIMIZER_NAMES:
            raise ReprokitError(
                f"unknown optimizer {name!r} in --optimizers; choose from {', '.join(OPTIMIZER_NAMES)}"
            )
    if len(set(names)) != len(names):
        raise ReprokitError("--optimizers names an optimizer twice")
    return names


def parse_multipliers(text: str | list[float]) -> list[float]:
    """'1,2,4,8' → [1.0, 2.0, 4.0, 8.0]; each a positive finite number, no repeats."""
    items = text if isinstance(text, list) else str(text).split(",")
    out = []
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ReprokitError(
                f"learning-rate multipliers must be numbers like 1,2,4,8, got {item!r}"
            ) from None
        if not (math.isfinite(value) and value > 0):
            raise ReprokitError(f"learning-rate multipliers must be positive, got {item!r}")
        out.append(value)
    if not out:
        raise ReprokitError("--lr-multipliers names no multiplier")
    if len(set(out)) != len(out):
        raise ReprokitError("--lr-multipliers repeats a value")
    return out


def cell_slug(optimizer: str, multiplier: float) -> str:
    """A directory name for a cell: 'adagrad+gradclip', ×4 → 'adagrad-gradclip_x4'."""
    name = re.sub(r"[^a-z0-9.]+", "-", optimizer.lower()).strip("-")
    return f"{name}_x{multiplier:g}"


def study_accumulator(config: RunConfig, initial_accumulator: float | None = None) -> float:
    """The study's A0: `initial_accumulator`, else the config's `optim.initial_accumulator_value`
    (a TOML file may set it), else DEFAULT_INITIAL_ACCUMULATOR; a finite number >= 0."""
    a0 = initial_accumulator
    if a0 is None:
        a0 = config.optim.initial_accumulator_value
    if a0 is None:
        a0 = DEFAULT_INITIAL_ACCUMULATOR
    try:
        a0 = float(a0)
    except (TypeError, ValueError):
        raise ReprokitError(f"--initial-accumulator must be a number, got {a0!r}") from None
    if not (math.isfinite(a0) and a0 >= 0):
        raise ReprokitError(f"--initial-accumulator must be a finite number >= 0, got {a0!r}")
    return a0


def cell_config(
    base: RunConfig, optimizer: str, multiplier: float, initial_accumulator: float
) -> RunConfig:
    """The cell's config: `optimizer` at `multiplier` × the base lr, accumulator start A0 for the
    Adagrad family and None (no accumulator) for the others."""
    from reprokit.training.loop import ACCUMULATOR_OPTIMIZERS

    cfg = copy.deepcopy(base)
    cfg.optim.name = optimizer
    cfg.optim.lr = base.optim.lr * multiplier
    has_accumulator = optimizer in ACCUMULATOR_OPTIMIZERS
    cfg.optim.initial_accumulator_value = float(initial_accumulator) if has_accumulator else None
    return cfg.validate()


def _check_optimizer(cfg: RunConfig) -> None:
    """Build the cell's optimizer on one scalar so arguments it refuses (Clippy's paper preset has
    no epsilon, so A0 = 0 would divide 0 by 0) fail before any cell trains."""
    import torch

    from reprokit.optim import make_optimizer
    from reprokit.training.loop import optimizer_kwargs

    probe = torch.zeros(1, requires_grad=True)
    try:
        make_optimizer(cfg.optim.name, [probe], cfg.optim.lr, **optimizer_kwargs(cfg))
    except ReprokitError as exc:
        a0 = cfg.optim.initial_accumulator_value
        raise ReprokitError(
            f"the {cfg.optim.name} cells cannot train with --initial-accumulator {a0:g}: {exc}"
        ) from None


def check_study(
    config: RunConfig,
    optimizers: list[str],
    multipliers: list[float],
    initial_accumulator: float | None = None,
) -> list[RunConfig]:
    """Every cell's config, in study order; bad settings fail here, before any work."""
    if config.replicas < 2:
        raise ReprokitError("a stability study needs at least 2 replicas per cell")
    a0 = study_accumulator(config, initial_accumulator)
    configs = [cell_config(config, o, m, a0) for o in optimizers for m in multipliers]
    for cfg in configs[:: len(multipliers)]:  # one per optimizer: the lr does not matter here
        _check_optimizer(cfg)
    return configs


# ----------------------------------------------------------------------------------- cell results
def _mean_std(values: list[float]) -> dict[str, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if len(arr) == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else math.nan}


def _sigma_stats(logs: list[pd.DataFrame]) -> dict[str, float] | None:
    frames = [f for f in logs if "sigma_min" in f.columns]
    if not frames:
        return None
    lo = np.concatenate([f["sigma_min"].to_numpy(np.float64) for f in frames])
    mean = np.concatenate([f["sigma_mean"].to_numpy(np.float64) for f in frames])
    ok = np.isfinite(lo) & np.isfinite(mean)
    if not ok.any():
        return None
    return {
        "mean": float(mean[ok].mean()),
        "min": float(lo[ok].min()),
        "clipped_fraction": float((lo[ok] < 1.0).mean()),
    }


def cell_result(store: RunStore, summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one cell from its train-ensemble run directory and summary."""
    manifest = store.manifest()
    n = int(manifest["config"]["replicas"])
    metrics = [store.replica_metrics(r) for r in range(n)]
    logs = [
        pd.read_parquet(store.replica_dir(r) / "train_log.parquet") for r in range(n)
    ]  # small: one row per step
    records = [m.get("divergence") or {} for m in metrics]
    diverged = [m["replica"] for m in metrics if m.get("diverged")]
    reasons: dict[str, int] = {}
    for m, rec in zip(metrics, records, strict=True):
        if m.get("diverged"):
            key = rec.get("reason") or "nonfinite"
            reasons[key] = reasons.get(key, 0) + 1
    spikes = [int(rec.get("spikes", 0)) for rec in records]
    recovered = [int(rec.get("recovered", 0)) for rec in records]
    labels = list(manifest["data"].get("labels") or ["label"])
    tasks: dict[str, Any] = {}
    for label in labels:
        doc = (summary.get("tasks") or {}).get(label, summary) if len(labels) > 1 else summary
        tasks[label] = {
            name: {
                "mean": (doc.get(name) or {}).get("mean", math.nan),
                "std": (doc.get(name) or {}).get("std", math.nan),
            }
            for name in ("auc", "logloss")
        }
        tasks[label]["pd"] = dict(doc.get("pd") or {})
    return {
        "replicas": n,
        "diverged": {
            "count": len(diverged),
            "ratio": len(diverged) / n if n else math.nan,
            "replicas": diverged,
            "reasons": reasons,
        },
        "spikes": {
            "total": int(sum(spikes)),
            "recovered": int(sum(recovered)),
            "replicas_with_spikes": int(sum(1 for s in spikes if s > 0)),
        },
        "auc": tasks[labels[0]]["auc"],
        "logloss": tasks[labels[0]]["logloss"],
        "pd": dict(summary.get("pd") or {}),
        "pd_ci": summary.get("pd_ci"),
        "pd_replicas": summary.get("replicas"),
        "tasks": tasks,
        "sigma": _sigma_stats(logs),
        "final_loss": _mean_std(
            [float(f["loss"].iloc[-10:].median()) if len(f) else math.nan for f in logs]
        ),
        "train_seconds": (summary.get("train_seconds") or {}).get("total"),
    }


# ------------------------------------------------------------------------------------------ the run
def _study(optimizers: list[str], multipliers: list[float], a0: float) -> dict[str, Any]:
    return {
        "optimizers": list(optimizers),
        "lr_multipliers": [float(m) for m in multipliers],
        "initial_accumulator_value": a0,
    }


def run_stability(
    config: RunConfig,
    optimizers: list[str] | str = DEFAULT_OPTIMIZERS[:],
    lr_multipliers: list[float] | str = DEFAULT_MULTIPLIERS[:],
    out: str | Path | None = None,
    workers: int = 1,
    force: bool = False,
    progress: StudyProgress | None = None,
    encoded: Any = None,
    initial_accumulator: float | None = None,
    replica_progress: ProgressCallback | None = None,
    step_progress: StepProgress | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Train every (optimizer, lr multiplier) cell into `out` (resuming it); return the document.

    `initial_accumulator`: the accumulator start A0 of every Adagrad-family cell (see
    `study_accumulator`: None takes the config's value, else 0.1).
    `replica_progress(done, total, metrics)` counts replicas over all cells like `progress`, with
    the finished replica's metrics and its `cell` label (only `cell` at a cell's start);
    `step_progress` follows each cell's optimizer steps (vectorized engine).
    """
    from reprokit import __version__

    optimizers = parse_optimizers(
        list(optimizers) if not isinstance(optimizers, str) else optimizers
    )
    multipliers = parse_multipliers(
        list(lr_multipliers) if not isinstance(lr_multipliers, str) else lr_multipliers
    )
    config = copy.deepcopy(config).validate()
    a0 = study_accumulator(config, initial_accumulator)
    cells_spec = [(o, m) for o in optimizers for m in multipliers]
    configs = check_study(config, optimizers, multipliers, a0)
    config.optim.initial_accumulator_value = a0  # the manifest's base config says which A0
    path = Path(out) if out is not None else default_run_dir(KIND)
    manifest = {
        "schema_version": 1,
        "kind": KIND,
        "reprokit_version": __version__,
        "config": config.to_dict(),
        "study": _study(optimizers, multipliers, a0),
        "environment": environment_fingerprint(config.device),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    arms = [
        Arm(
            label=f"{opt} ×{mult:g}",
            slug=cell_slug(opt, mult),
            overrides={
                "optim.name": opt,
                "optim.lr": cfg.optim.lr,
                "optim.initial_accumulator_value": cfg.optim.initial_accumulator_value,
            },
            config=cfg,
            fields={"optimizer": opt, "lr_multiplier": mult},
        )
        for (opt, mult), cfg in zip(cells_spec, configs, strict=True)
    ]
    study = StudyDir(root=path, kind=KIND, document=DOCUMENT, arms_dir=CELLS, manifest=manifest)

    def on_progress(done: int, total: int, info: dict[str, Any]) -> None:
        if progress:
            progress(done, total, info["arm"])
        if replica_progress:
            replica_progress(done, total, {**info["metrics"], "cell": info["arm"]})

    def finish(results: list[ArmResult]) -> dict[str, Any]:
        cells = [
            {
                "name": r.arm.slug,
                "optimizer": r.arm.fields["optimizer"],
                "lr_multiplier": r.arm.fields["lr_multiplier"],
                "lr": r.arm.config.optim.lr,
                "initial_accumulator_value": r.arm.config.optim.initial_accumulator_value,
                "run_dir": f"{CELLS}/{r.arm.slug}",
                **cell_result(RunStore(study.arm_path(r.arm)), r.summary),
            }
            for r in results
        ]
        doc = {
            "schema_version": 1,
            "kind": KIND,
            "reprokit_version": __version__,
            "run_dir": str(path),
            "optimizers": optimizers,
            "lr_multipliers": multipliers,
            "base_lr": config.optim.lr,
            "replicas": config.replicas,
            "labels": list((results[0].summary.get("data") or {}).get("labels") or ["label"]),
            "model": {
                "arch": config.model.arch,
                "hidden": list(config.model.hidden),
                "embedding_dim": config.model.embedding_dim,
            },
            "initial_accumulator_value": a0,
            "divergence_rule": vars(config.divergence).copy(),
            "cells": cells,
            "pd": {},  # PD is per cell (cells[i].pd); the key keeps generic summary readers working
            "plots": [f"{PLOT}.png", f"{PLOT}.svg"],
        }
        write_plots(path, doc)
        atomic_write_json(path / "summary.json", doc)
        return doc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined metrics of collapsed replicas
        return run_study(
            study,
            arms,
            finish,
            workers=workers,
            force=force,
            encoded=encoded,
            progress=on_progress,
            step_progress=step_progress,
            executor=executor,
        )


# ----------------------------------------------------------------------------------------- plots
def cell_curves(run_dir: Path, cell: dict[str, Any]) -> list[dict[str, Any]]:
    """Per replica of a cell: steps, losses, events and the diverged flag (from its files)."""
    store = RunStore(run_dir / cell["run_dir"])
    out = []
    for r in range(int(cell["replicas"])):
        d = store.replica_dir(r)
        log = pd.read_parquet(d / "train_log.parquet", columns=None)
        metrics = store.replica_metrics(r)
        events = (metrics.get("divergence") or {}).get("events") or []
        out.append(
            {
                "replica": r,
                "steps": log["step"].to_numpy(np.float64),
                "loss": log["loss"].to_numpy(np.float64),
                "events": events,
                "diverged": bool(metrics.get("diverged")),
            }
        )
    return out


def draw_loss_grid(fig: Any, run_dir: Path, doc: dict[str, Any]) -> None:
    """Rows: optimizers; columns: lr multipliers; each panel every replica's loss, events marked."""
    opts, mults = doc["optimizers"], doc["lr_multipliers"]
    axes = fig.subplots(len(opts), len(mults), squeeze=False, sharex=True)
    by_key = {(c["optimizer"], c["lr_multiplier"]): c for c in doc["cells"]}
    for i, opt in enumerate(opts):
        for j, mult in enumerate(mults):
            ax = axes[i][j]
            cell = by_key.get((opt, mult))
            if cell is None:
                ax.set_visible(False)
                continue
            finite_max: list[float] = []
            finite_med: list[float] = []
            for rep in cell_curves(run_dir, cell):
                steps, loss = rep["steps"], rep["loss"]
                style = "--" if rep["diverged"] else "-"
                ax.plot(steps, loss, style, linewidth=0.8, alpha=0.8)
                ok = np.isfinite(loss)
                if ok.any():
                    finite_max.append(float(loss[ok].max()))
                    finite_med.append(float(np.median(loss[ok])))
                for ev in rep["events"]:
                    marker, colour = EVENT_STYLE.get(ev.get("kind"), ("x", "#000000"))
                    pos = np.searchsorted(steps, ev.get("step", 0))
                    y = loss[min(pos, len(loss) - 1)] if len(loss) else 0.0
                    if not np.isfinite(y):
                        y = finite_max[-1] if finite_max else 0.0
                    ax.plot([ev.get("step", 0)], [y], marker, color=colour, markersize=6)
            if finite_max and max(finite_max) > 10 * max(min(finite_med), 1e-12):
                ax.set_yscale("log")  # blow-ups would flatten every other curve
            d = cell["diverged"]
            ax.set_title(f"{opt} ×{mult:g}: {d['count']}/{cell['replicas']} diverged", fontsize=8)
            if i == len(opts) - 1:
                ax.set_xlabel("step")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
            if j == 0:
                ax.set_ylabel("training loss")
    handles = [
        fig.axes[0].plot([], [], m, color=c, linestyle="none", label=k)[0]
        for k, (m, c) in EVENT_STYLE.items()
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)


def write_plots(path: Path, doc: dict[str, Any]) -> None:
    """loss_curves.png and .svg in the run directory (written atomically)."""
    import io

    import matplotlib as mpl
    from matplotlib.figure import Figure

    rows, cols = len(doc["optimizers"]), len(doc["lr_multipliers"])
    with mpl.rc_context({"font.size": 8, "svg.fonttype": "none", "svg.hashsalt": "reprokit"}):
        fig = Figure(figsize=(2.8 * cols + 0.6, 2.2 * rows + 0.8), layout="constrained")
        draw_loss_grid(fig, path, doc)
        for fmt in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
            atomic_write_bytes(path / f"{PLOT}.{fmt}", buf.getvalue())
