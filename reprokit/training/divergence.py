"""Loss-divergence detection: non-finite steps, loss spikes, recovery and full divergence.

Operational versions of Tang et al.'s (KDD 2023) micro- and full divergence (docs/methods.md §4);
the thresholds are design choices, all in `config.DivergenceConfig`:

- **nonfinite**: the loss or the gradient norm of a step is NaN/Inf. The replica diverged; the
  training loops stop updating it at that step.
- **spike**: the step's loss has a robust z-score above `threshold` (default 6) against the trailing
  `window` (default 50) of *normal* steps: z = (loss − median) / scale with
  scale = max(1.4826·MAD, 1 % of |median|, 1e-12) (1.4826·MAD estimates σ of normal noise; the
  floor keeps an almost constant loss from turning rounding noise into spikes). Only upward jumps
  count, so the fast fall of the loss at the start of training never counts. Before `min_history`
  (default 20) normal steps exist, a z-score means little; then a step is a spike when its loss is
  above `warmup_factor` (3) × the median of the steps so far — the typical Adagrad blow-up of the
  first steps (with a zero accumulator the first update moves every weight by the learning rate).
  While a spike is open, its steps do not enter the trailing window.
- **recovered** (micro-divergence): within `recovery_steps` (K, default 50) steps of the spike the
  loss is back under median + `recover_z`·scale (default 3) of the pre-spike window.
- **diverged** (full divergence): the spike did not recover within K steps, or was still open when
  training ended (the evaluated model is the spiked one). Detection stops there.
- **collapse**: after training, every task's evaluation AUC is within max(`collapse_auc`, 3σ₀) of
  0.5, where σ₀ = sqrt((P+Q+1)/(12·P·Q)) is the standard deviation of the AUC of a random ranking
  of P positives and Q negatives (Mann-Whitney), *and* the model either predicts a constant (all
  evaluation predictions within one percentage point of each other), had a
  spike or a non-finite step, or ended with a higher loss than it started with. That is the paper's
  full divergence whose loss does not stay high: the model blew up and settled at predicting the
  base rate (its loss then sits *below* the initial loss, so loss-based recovery cannot see it),
  with AUC at chance ("binary-classification AUC drops to 0.5"). An under-trained model with an
  AUC near 0.5 but no blow-up is not flagged.

A replica is `diverged` for any of nonfinite, an unrecovered spike, or collapse; diverged replicas
are reported (`metrics.json`: `diverged`, `divergence`) and excluded from PD.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reprokit.config import DivergenceConfig

#: 1.4826·MAD is a consistent estimator of σ for normal noise.
MAD_TO_SIGMA = 1.4826
#: The robust scale is at least this fraction of |median| (and at least ABS_SCALE_FLOOR).
REL_SCALE_FLOOR = 0.01
ABS_SCALE_FLOOR = 1e-12

EVENT_KINDS = ("spike", "recovered", "diverged", "nonfinite", "collapse")


@dataclass
class Event:
    """One divergence event. `value` is the loss of that step (or the AUC for `collapse`)."""

    step: int
    kind: str
    value: float | None = None
    z: float | None = None  # robust z-score of a spike
    baseline: float | None = None  # the pre-spike window median (spike / recovered / diverged)
    steps_since_spike: int | None = None  # recovered / diverged after a spike

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def robust_center_scale(values: np.ndarray) -> tuple[float, float]:
    """(median, max(1.4826·MAD, 1 %·|median|, 1e-12)) of `values`."""
    med = float(np.median(values))
    mad = float(np.median(np.abs(values - med)))
    return med, max(MAD_TO_SIGMA * mad, REL_SCALE_FLOOR * abs(med), ABS_SCALE_FLOOR)


@dataclass
class _OpenSpike:
    step: int
    median: float
    scale: float


@dataclass
class SpikeDetector:
    """Streaming detector: feed every training step with `update`, then call `finish`."""

    config: DivergenceConfig = field(default_factory=DivergenceConfig)
    events: list[Event] = field(default_factory=list)
    diverged: bool = False
    reason: str | None = None  # "nonfinite" | "spike" | "collapse"

    def __post_init__(self) -> None:
        self._window: deque[float] = deque(maxlen=self.config.window)
        self._open: _OpenSpike | None = None
        self._last_step: int | None = None

    def _emit(self, event: Event) -> Event:
        self.events.append(event)
        return event

    def update(self, step: int, loss: float, grad_norm: float = 0.0) -> Event | None:
        """Observe one step; return the event it produced, if any."""
        self._last_step = step
        if self.diverged:
            return None
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.diverged, self.reason = True, "nonfinite"
            value = loss if math.isfinite(loss) else None
            return self._emit(Event(step, "nonfinite", value=value))
        cfg = self.config
        spike = self._open
        if spike is not None:
            since = step - spike.step
            if loss <= spike.median + cfg.recover_z * spike.scale:
                self._open = None
                self._window.append(loss)
                return self._emit(
                    Event(step, "recovered", loss, baseline=spike.median, steps_since_spike=since)
                )
            if since >= cfg.recovery_steps:
                self.diverged, self.reason = True, "spike"
                return self._emit(
                    Event(step, "diverged", loss, baseline=spike.median, steps_since_spike=since)
                )
            return None
        if self._window:
            med, scale = robust_center_scale(np.fromiter(self._window, dtype=np.float64))
            z = (loss - med) / scale
            if len(self._window) >= cfg.min_history:
                is_spike = z > cfg.threshold
            else:  # warm-up: too few steps for a z-score
                is_spike = loss > cfg.warmup_factor * med and z > cfg.threshold
            if is_spike:
                self._open = _OpenSpike(step, med, scale)
                return self._emit(Event(step, "spike", loss, z=z, baseline=med))
        self._window.append(loss)
        return None

    def finish(self) -> Event | None:
        """End of training: a spike still open counts as full divergence."""
        spike = self._open
        if spike is None or self.diverged or self._last_step is None:
            return None
        self._open = None
        self.diverged, self.reason = True, "spike"
        return self._emit(
            Event(
                self._last_step,
                "diverged",
                baseline=spike.median,
                steps_since_spike=self._last_step - spike.step,
            )
        )

    def check_collapse(
        self,
        aucs: list[float | None],
        tolerances: list[float] | None = None,
        constant: bool = False,
        loss_rose: bool = False,
        step: int | None = None,
    ) -> Event | None:
        """Flag a collapsed model (see the module docstring): every task's AUC within its
        tolerance of 0.5 (default `collapse_auc`), after a spike / non-finite step, or with
        constant predictions (`constant`), or a final loss above the initial one (`loss_rose`)."""
        if self.diverged or not aucs:
            return None
        if not all(a is not None and math.isfinite(a) for a in aucs):
            return None
        tols = tolerances or [self.config.collapse_auc] * len(aucs)
        tols = [max(t, self.config.collapse_auc) for t in tols]
        near = all(abs(float(a) - 0.5) <= t for a, t in zip(aucs, tols, strict=True))  # type: ignore[arg-type]
        blew_up = any(e.kind in ("spike", "nonfinite") for e in self.events)
        if near and (constant or loss_rose or blew_up):
            self.diverged, self.reason = True, "collapse"
            at = step if step is not None else (self._last_step or 0)
            mean_auc = float(np.mean([float(a) for a in aucs]))  # type: ignore[arg-type]
            return self._emit(Event(at, "collapse", value=mean_auc))
        return None

    def record(self) -> dict[str, Any]:
        """The `divergence` entry of a replica's metrics.json."""
        kinds = [e.kind for e in self.events]
        return {
            "diverged": self.diverged,
            "reason": self.reason,
            "spikes": kinds.count("spike"),
            "recovered": kinds.count("recovered"),
            "events": [e.to_dict() for e in self.events],
        }


def detect(
    losses: Any,
    config: DivergenceConfig | None = None,
    steps: Any = None,
    grad_norms: Any = None,
) -> SpikeDetector:
    """Run a detector over a whole loss series (steps default to 0, 1, ...) and finish it."""
    losses = np.asarray(losses, dtype=np.float64)
    steps = np.arange(len(losses)) if steps is None else np.asarray(steps)
    grads = np.zeros(len(losses)) if grad_norms is None else np.asarray(grad_norms, np.float64)
    detector = SpikeDetector(config or DivergenceConfig())
    for s, loss, g in zip(steps, losses, grads, strict=True):
        detector.update(int(s), float(loss), float(g))
    detector.finish()
    return detector


def event_column(events: list[Event] | list[dict[str, Any]], steps: Any) -> np.ndarray:
    """An `event` column for a train log: the event kind at its step, '' elsewhere."""
    steps = np.asarray(steps)
    out = np.full(len(steps), "", dtype=object)
    position = {int(s): i for i, s in enumerate(steps)}
    for e in events:
        step, kind = (e.step, e.kind) if isinstance(e, Event) else (e["step"], e["kind"])
        i = position.get(int(step))
        if i is not None:
            out[i] = kind if not out[i] else f"{out[i]},{kind}"
    return out


#: Steps averaged (median) at the start and at the end of training for the collapse check.
EDGE_STEPS = 10
#: Predictions whose max − min over the evaluation set is at most this (one percentage point) are
#: "constant": a model that settled at the base rate (healthy models spread over tens of points).
CONSTANT_SPREAD = 0.01


#: A final loss counts as risen only when it is this share above the first steps' loss (and above
#: their noise): on random labels the loss wanders by a fraction of a percent around ln 2.
LOSS_RISE_FRACTION = 0.02


def loss_rose(losses: Any) -> bool:
    """Whether the median loss of the last EDGE_STEPS steps is clearly above that of the first
    ones: by LOSS_RISE_FRACTION of it and by 3 robust standard deviations of those first steps."""
    x = np.asarray(losses, dtype=np.float64)
    if len(x) < 2:
        return False
    k = max(1, min(EDGE_STEPS, len(x) // 2))
    head = x[:k][np.isfinite(x[:k])]
    with np.errstate(invalid="ignore"):
        last = np.nanmedian(x[-k:])
    if len(head) == 0 or not math.isfinite(last):
        return False
    first, scale = robust_center_scale(head)
    margin = max(LOSS_RISE_FRACTION * abs(first), 3.0 * scale if len(head) >= 3 else 0.0)
    return bool(last > first + margin)


def random_auc_sd(labels: Any) -> float:
    """σ₀ = sqrt((P+Q+1)/(12·P·Q)): the standard deviation of the AUC of a random ranking."""
    y = np.asarray(labels, dtype=np.float64)
    p = float(np.count_nonzero(y == 1.0))
    q = float(len(y) - p)
    if p == 0 or q == 0:
        return math.nan
    return math.sqrt((p + q + 1.0) / (12.0 * p * q))


def assess_replica(
    log: pd.DataFrame,
    config: DivergenceConfig,
    aucs: list[float | None],
    detector: SpikeDetector | None = None,
    constant: bool = False,
    tolerances: list[float] | None = None,
) -> dict[str, Any]:
    """The divergence record of one trained replica (engine-independent).

    `detector` is the loop's own online detector (already finished); without one (the vectorized
    engine) the train log's loss and grad-norm series are replayed through a new one. `aucs` are the
    evaluation AUCs per task and `constant` whether every task's predictions are constant, for the
    collapse check.
    """
    if detector is None:
        grads = log["grad_norm"] if "grad_norm" in log.columns else None
        detector = detect(log["loss"], config, steps=log["step"], grad_norms=grads)
    last = int(log["step"].iloc[-1]) if len(log) else 0
    detector.check_collapse(list(aucs), tolerances, constant, loss_rose(log["loss"]), step=last)
    return detector.record()


def replica_divergence(
    out: Any, encoded: Any, run_config: Any
) -> tuple[bool, dict[str, Any], dict[str, Any], pd.DataFrame]:
    """Assess a trained replica (either engine's `ReplicaOutput`) for the run store.

    Returns (diverged, accuracy of the first task — None values when diverged, extra metrics.json
    entries — `divergence` and, for several tasks, `tasks` with each task's accuracy —, the train
    log with its `event` column).
    """
    import warnings

    from reprokit.metrics.accuracy import replica_accuracy

    preds = np.asarray(out.predictions, dtype=np.float64)
    names = list(encoded.label_names)
    finite = bool(np.isfinite(preds).all()) and bool(((preds >= 0) & (preds <= 1)).all())
    per_task: dict[str, dict[str, float | None]] = {}
    for t, name in enumerate(names):
        if finite:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                per_task[name] = replica_accuracy(encoded.eval_y[:, t], preds[:, t])
        else:
            per_task[name] = {"auc": None, "logloss": None, "calibration": None}
    aucs = [per_task[n]["auc"] for n in names] if finite else []
    spread = preds.max(axis=0) - preds.min(axis=0) if finite and len(preds) else np.zeros(1)
    constant = bool((spread <= CONSTANT_SPREAD).all())
    log = out.log.copy()
    detector = getattr(out, "detector", None)
    tols = [3.0 * random_auc_sd(encoded.eval_y[:, t]) for t in range(len(names))]
    tols = [t if math.isfinite(t) else 0.0 for t in tols]
    record = assess_replica(log, run_config.divergence, aucs, detector, constant, tols)
    if out.diverged and not record["diverged"]:  # non-finite predictions without a bad step
        record["diverged"], record["reason"] = True, "nonfinite"
    diverged = bool(record["diverged"])
    if finite:
        record["eval_auc"] = [per_task[n]["auc"] for n in names]
    if len(log):
        log["event"] = event_column(record["events"], log["step"]).astype(str)
    empty = {"auc": None, "logloss": None, "calibration": None}
    accuracy = empty if diverged else dict(per_task[names[0]])
    extra: dict[str, Any] = {"divergence": record}
    if len(names) > 1:
        extra["tasks"] = {n: (empty if diverged else per_task[n]) for n in names}
    return diverged, accuracy, extra, log


def summary_without_pd(
    predictions: np.ndarray, task: int, labels: np.ndarray, healthy: int
) -> dict[str, Any]:
    """A summary document for fewer than 2 replicas that did not diverge: PD keys null (NaN),
    accuracy of the one healthy replica if there is one.

    `predictions` [M, N, T]: the healthy replicas when `healthy` > 0 (else any; then unused).
    """
    import warnings

    from reprokit.metrics.accuracy import replica_accuracy
    from reprokit.metrics.pd import PD_KEYS

    nan = math.nan
    n = int(predictions.shape[1])
    doc: dict[str, Any] = {
        "schema_version": 1,
        "replicas": int(healthy),
        "examples": n,
        "pd": {k: nan for k in PD_KEYS},
        "pd_ci": {
            "rel": [nan, nan],
            "abs": [nan, nan],
            "level": 0.95,
            "method": "bootstrap over replicas",
        },
        "pd_per_pair": {"abs": [], "rel": []},
        "flip_threshold": 0.5,
        "pd_by_bucket": [],
        "pd_per_example_hist": {"edges": [], "counts": []},
        "note": "fewer than 2 replicas finished without diverging; PD is undefined",
    }
    if healthy >= 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acc = replica_accuracy(labels, predictions[0, :, task])
        for name, value in acc.items():
            doc[name] = {"mean": value, "std": nan, "per_replica": [value], "ensemble": value}
    return doc
