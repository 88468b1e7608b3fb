"""What a report is built from: a loaded run, seen as one or more *arms* with their replica files.

A train-ensemble run is one arm; a compare-activations run has one arm per activation. Sections are
written against this view, so most of them serve every kind. A new kind of run directory registers a
context builder with `register_context` (and its own sections in `reprokit.report.sections`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from reprokit.errors import ReprokitError
from reprokit.metrics.pd import EPS
from reprokit.metrics.stats import pareto_front as stats_pareto_front
from reprokit.rundir import (
    TRAIN_ENSEMBLE,
    Replica,
    Run,
    align_to,
    as_float,
    prediction_columns,
)
from reprokit.runschema import ARM_STUDIES

#: `reprokit pd --out DIR`: a directory holding only a summary.json of kind "pd".
PD = "pd"

RELIABILITY_BINS = 10
LOSS_POINTS = 300


@dataclass
class ReplicaStats:
    name: str
    metrics: dict[str, Any]
    loss_steps: np.ndarray
    loss: np.ndarray
    reliability: dict[str, list[float]] | None  # mean_prediction, observed_rate, count per bin
    # (None for a replica left out of PD: diverged, or non-finite predictions)


@dataclass
class ArmStats:
    """Numbers computed from an arm's replica files (two streaming passes over predictions).

    Like the summary, the per-example numbers leave out replicas that diverged (or predicted
    non-finite values): `pd_replicas` names the ones used; with none the arrays are empty."""

    examples: int
    per_example_abs: np.ndarray  # mean_m |p_m - p̄| per example
    per_example_mean: np.ndarray  # p̄ per example
    has_labels: bool
    replicas: list[ReplicaStats]
    ensemble_reliability: dict[str, list[float]] | None
    pd_replicas: list[str] = field(default_factory=list)

    @property
    def has_pd(self) -> bool:
        """Whether per-example PD is defined: at least 2 replicas without divergence."""
        return len(self.pd_replicas) >= 2

    @property
    def has_predictions(self) -> bool:
        return bool(self.pd_replicas)


def _downsample(steps: np.ndarray, values: np.ndarray, points: int = LOSS_POINTS):
    """Average consecutive chunks so a long log becomes at most `points` points (NaN-aware)."""
    if len(values) <= points:
        return steps.astype(float), values.astype(float)
    chunks = np.array_split(np.arange(len(values)), points)
    xs = np.array([steps[c].mean() for c in chunks])
    with np.errstate(all="ignore"):
        ys = np.array(
            [np.nanmean(values[c]) if np.isfinite(values[c]).any() else np.nan for c in chunks]
        )
    return xs, ys


def _reliability(p: np.ndarray, y: np.ndarray, edges: np.ndarray) -> dict[str, list[float]]:
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
    count = np.bincount(idx, minlength=len(edges) - 1).astype(float)
    sum_p = np.bincount(idx, weights=p, minlength=len(edges) - 1)
    sum_y = np.bincount(idx, weights=y, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, sum_p / count, np.nan)
        rate = np.where(count > 0, sum_y / count, np.nan)
    return {
        "mean_prediction": mean_p.tolist(),
        "observed_rate": rate.tolist(),
        "count": count.astype(int).tolist(),
    }


def _quantile_edges(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:
        edges = np.array([0.0, 1.0])
    edges[0], edges[-1] = 0.0, 1.0
    return edges


def _enters_pd(rep: Replica, p: np.ndarray) -> bool:
    """A replica's predictions enter the per-example numbers unless it diverged (the summary
    leaves it out of PD too) or predicted NaN/inf."""
    return not rep.metrics.get("diverged") and bool(np.isfinite(p).all())


def compute_arm_stats(replicas: list[Replica], manifest: dict[str, Any] | None) -> ArmStats:
    """Stream the replicas' predictions twice (sum, then deviations) so memory stays O(N)."""
    ref_ids = None
    total = None
    labels = None
    used: list[str] = []
    for rep in replicas:
        frame = rep.predictions()
        pred_col, label_col = prediction_columns(frame, manifest)
        if ref_ids is None:
            ref_ids = frame["example_id"].to_numpy() if "example_id" in frame.columns else None
            if label_col is not None:
                labels = frame[label_col].to_numpy(dtype=np.float64)
        else:
            frame = align_to(ref_ids, frame, f"replica {rep.name} predictions.parquet")
        p = np.clip(frame[pred_col].to_numpy(dtype=np.float64), EPS, 1 - EPS)
        if total is None:
            total = np.zeros_like(p)
        if len(p) != len(total):
            raise ReprokitError(
                f"replica {rep.name} has {len(p)} predictions but replica 000 has {len(total)}"
            )
        if _enters_pd(rep, p):
            total += p
            used.append(rep.name)
    assert total is not None
    examples = len(total)
    mean = total / len(used) if used else np.empty(0)
    dev = np.zeros_like(mean)
    edges = _quantile_edges(mean, RELIABILITY_BINS) if used else np.array([0.0, 1.0])
    stats: list[ReplicaStats] = []
    for rep in replicas:
        reliability = None
        if rep.name in used:
            where = f"replica {rep.name} predictions.parquet"
            frame = align_to(ref_ids, rep.predictions(), where)
            pred_col, _ = prediction_columns(frame, manifest)
            p = np.clip(frame[pred_col].to_numpy(dtype=np.float64), EPS, 1 - EPS)
            dev += np.abs(p - mean)
            if labels is not None:
                reliability = _reliability(p, labels, edges)
        log = rep.train_log
        steps, loss = _downsample(
            log["step"].to_numpy(dtype=np.float64), log["loss"].to_numpy(dtype=np.float64)
        )
        stats.append(
            ReplicaStats(
                name=rep.name,
                metrics=rep.metrics,
                loss_steps=steps,
                loss=loss,
                reliability=reliability,
            )
        )
    if used:
        dev /= len(used)
    return ArmStats(
        examples=examples,
        per_example_abs=dev,
        per_example_mean=mean,
        has_labels=labels is not None,
        replicas=stats,
        ensemble_reliability=(
            _reliability(mean, labels, edges) if labels is not None and used else None
        ),
        pd_replicas=used,
    )


@dataclass
class Arm:
    """One ensemble: its summary document and (lazily) the numbers from its replica files."""

    name: str
    label: str
    summary: dict[str, Any]
    run: Run
    is_baseline: bool = False
    test: dict[str, Any] | None = None
    train_seconds: float | None = None

    @cached_property
    def stats(self) -> ArmStats:
        return compute_arm_stats(self.run.replicas(), self.run.manifest)

    def pd(self, key: str = "rel") -> float:
        return as_float((self.summary.get("pd") or {}).get(key))

    def ci(self, key: str = "rel") -> tuple[float, float] | None:
        ci = (self.summary.get("pd_ci") or {}).get(key)
        if isinstance(ci, list | tuple) and len(ci) == 2:
            return as_float(ci[0]), as_float(ci[1])
        return None

    def metric(self, name: str, field_: str = "mean") -> float:
        return as_float((self.summary.get(name) or {}).get(field_))


@dataclass
class ReportContext:
    run: Run
    kind: str
    title: str
    arms: list[Arm]
    baseline: Arm | None = None
    pareto: list[str] = field(default_factory=list)  # arm names on the PD/AUC Pareto front

    @property
    def is_compare(self) -> bool:
        return self.kind in ARM_STUDIES

    def manifest_arm(self) -> Arm:
        """The arm whose manifest stands for the run's configuration (baseline, else first)."""
        return self.baseline or self.arms[0]


ContextBuilder = Callable[[Run], ReportContext]
_CONTEXTS: dict[str, ContextBuilder] = {}


def register_context(*kinds: str) -> Callable[[ContextBuilder], ContextBuilder]:
    def decorate(func: ContextBuilder) -> ContextBuilder:
        for kind in kinds:
            _CONTEXTS[kind] = func
        return func

    return decorate


def build_context(run: Run) -> ReportContext:
    if run.documents_only and run.kind != PD:
        raise ReprokitError(
            f"{run.path} is a single document; `reprokit report` needs the whole run directory"
        )
    builder = _CONTEXTS.get(run.kind)
    if builder is None:
        raise ReprokitError(
            f"reprokit report does not support {run.kind!r} runs yet; it reads "
            f"{', '.join(sorted(_CONTEXTS))} run directories"
        )
    return builder(run)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated in (lower PD, higher AUC); NaNs never dominate and are never on it."""
    names = list(points)
    front = stats_pareto_front([points[n] for n in names], maximize=[False, True]) if names else []
    return [names[k] for k in front]


@register_context(TRAIN_ENSEMBLE)
def _train_ensemble_context(run: Run) -> ReportContext:
    assert run.summary is not None
    config = (run.manifest or {}).get("config") or {}
    label = (config.get("model") or {}).get("activation") or run.name
    arm = Arm(name=run.name, label=str(label), summary=run.summary, run=run)
    return ReportContext(
        run=run, kind=run.kind, title=run.name, arms=[arm], baseline=None, pareto=[arm.name]
    )


@register_context(*ARM_STUDIES)
def _compare_context(run: Run) -> ReportContext:
    assert run.compare is not None
    baseline_spec = run.compare.get("baseline")
    arms: list[Arm] = []
    for entry in run.arm_entries():
        arms.append(
            Arm(
                name=entry["name"],
                label=str(entry.get("label") or entry.get("activation") or entry["name"]),
                summary=entry,
                run=run.arm_run(entry),
                is_baseline=baseline_spec
                in (entry.get("label"), entry.get("activation"), entry["name"]),
                test=entry.get("test") if isinstance(entry.get("test"), dict) else None,
                train_seconds=as_float(entry.get("train_seconds")),
            )
        )
    baseline = next((a for a in arms if a.is_baseline), None)
    stored = run.compare.get("pareto")
    if isinstance(stored, list) and stored:
        names = {a.label: a.name for a in arms} | {a.name: a.name for a in arms}
        pareto = [names[s] for s in stored if s in names]
    else:
        pareto = pareto_front({a.name: (a.pd("rel"), a.metric("auc")) for a in arms})
    title = run.name
    return ReportContext(
        run=run, kind=run.kind, title=title, arms=arms, baseline=baseline, pareto=pareto
    )


@register_context(PD)
def _pd_context(run: Run) -> ReportContext:
    """A `reprokit pd --out DIR` directory: one ensemble known only by its summary document."""
    assert run.summary is not None
    source = (run.summary.get("data") or {}).get("path")
    label = Path(source).name if isinstance(source, str) and source else run.name
    arm = Arm(name=run.name, label=label, summary=run.summary, run=run)
    return ReportContext(
        run=run, kind=run.kind, title=run.name, arms=[arm], baseline=None, pareto=[arm.name]
    )
