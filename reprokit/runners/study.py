"""The study engine: the same ensemble once per arm, every arm paired with the others by seed.

An arm is a set of dotted config overrides (``model.activation=smelu:beta=1``,
``optim.name=clippy,optim.lr=0.1``, ``vary=["init"]``) applied to one base config. Replica k of
every arm gets the same per-source seeds (they derive from the base seed, the source and k), so
arms compare replica by replica (`reprokit.metrics.paired`).

Every study (`compare`, `compare-activations`, `attribute`, `stability`) goes through here for
what they share: turning overrides into validated configs before any training, the study
directory (one train-ensemble run directory per arm under ``arms/`` or ``cells/``, a lock, resume,
refusal of another study), training the arms in order with one progress callback, and the
document of paired arms (`compare_document`). A preset only says which arms and what extra
fields its document has.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reprokit.components.optimizers import accumulator_start
from reprokit.config import RunConfig, merge_dotted
from reprokit.errors import ReprokitError
from reprokit.jsonio import to_json
from reprokit.metrics.churn import ChurnGroups
from reprokit.metrics.paired import (
    TEST_METHODS,
    TEST_METRICS,
    paired_tests,
    replicas_needed,
    smallest_p_holm,
)
from reprokit.metrics.stats import pareto_front
from reprokit.overrides import overrides_label, same_arm
from reprokit.runners.ensemble import StepProgress, train_ensemble
from reprokit.runners.executors import Executor
from reprokit.runschema import LOCK, MANIFEST, REPLICAS, STUDY_DOCUMENTS, SUMMARY
from reprokit.store import (
    RunStore,
    atomic_write_json,
    comparable_manifest,
    first_difference,
    read_json,
    run_lock,
    with_current_defaults,
)

log = logging.getLogger("reprokit")

ARMS_DIR = "arms"
#: File stem of the trade-off plot every paired study draws (``pareto.png`` / ``.svg``).
PLOT_STEM = "pareto"

#: progress(done, total, info): done/total count replicas over all arms; info has "arm" (label),
#: "arm_index", "arms" and the finished replica's "metrics" (empty at the start of an arm).
StudyProgress = Callable[[int, int, dict[str, Any]], None]


# ------------------------------------------------------------------------------------------ arms
@dataclass
class Arm:
    """One arm of a study: what users see (`label`), where it lives (`slug`), how it differs from
    the base config (`overrides`), its resolved `config`, and extra fields of its document entry."""

    label: str
    slug: str
    overrides: dict[str, Any]
    config: RunConfig
    fields: dict[str, Any] = field(default_factory=dict)
    given: dict[str, Any] = field(default_factory=dict)  # the overrides as the user wrote them


def slugify(label: str) -> str:
    """A directory name for an arm: file-system safe, readable, at most 80 characters."""
    slug = re.sub(r"[^A-Za-z0-9.=+-]+", "_", label).strip("_.") or "arm"
    return slug[:80]


#: Keys an arm may not override: every arm trains on the same data (loaded once, so the
#: comparison is of models, not datasets) with the same replicas and seeds (the pairing).
SHARED_KEYS = ("data.", "replicas", "seed")


def check_shared(overrides: dict[str, Any], where: str) -> None:
    for key in overrides:
        norm = key.replace("-", "_")
        if any(norm == k or (k.endswith(".") and norm.startswith(k)) for k in SHARED_KEYS):
            raise ReprokitError(
                f"{where} sets {key}, but every arm of a study shares the data, the replica count "
                "and the seeds (that is what pairs the arms); set it for the whole study instead"
            )


def arm_config(config: RunConfig, overrides: dict[str, Any], where: str) -> RunConfig:
    """A validated copy of `config` with `overrides` applied: the same checks and sentences as a
    TOML file or a CLI option (`where` names the arm in them)."""
    check_shared(overrides, where)
    arm = copy.deepcopy(config)
    merge_dotted(arm, overrides, where)
    if not arm.vary:
        arm.vary = ["none"]
    try:
        return arm.validate()
    except ReprokitError as exc:  # range and name checks do not say which arm they judged
        message = str(exc)
        raise ReprokitError(message if where in message else f"{where}: {message}") from None


def canonical_overrides(config: RunConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides as the validated config holds them (``SmeLU:beta=1.0`` → ``smelu:beta=1``)."""
    doc = config.to_dict()
    out = {}
    for key in overrides:
        value: Any = doc
        for part in key.replace("-", "_").split("."):
            value = value[part]
        out[key] = value
    return out


def make_arms(
    config: RunConfig,
    specs: Sequence[dict[str, Any]],
    labels: Sequence[str] | None = None,
    slugs: Sequence[str] | None = None,
    fields: Sequence[dict[str, Any]] | None = None,
) -> list[Arm]:
    """Arms from override dicts: every config is built (and so validated) here, before any
    training; two arms with the same label or directory are refused."""
    arms: list[Arm] = []
    for i, overrides in enumerate(specs):
        given = labels[i] if labels is not None else overrides_label(overrides)
        cfg = arm_config(config, overrides, f"--arm {given!r}")
        canonical = canonical_overrides(cfg, overrides)
        # the label is what the user wrote; the directory follows the canonical values, so that
        # two spellings of one arm (SmeLU:beta=1.0, smelu) resume the same run
        label = given
        slug = slugs[i] if slugs is not None else slugify(overrides_label(canonical))
        arms.append(
            Arm(label, slug, canonical, cfg, dict(fields[i]) if fields else {}, dict(overrides))
        )
    check_distinct(arms)
    return arms


def check_distinct(arms: Sequence[Arm]) -> None:
    labels: set[str] = set()
    slugs: dict[str, str] = {}
    for arm in arms:
        if arm.label in labels:
            raise ReprokitError(f"arm {arm.label!r} is given twice")
        if arm.slug in slugs:
            raise ReprokitError(
                f"arms {slugs[arm.slug]!r} and {arm.label!r} map to the same directory {arm.slug!r}"
            )
        labels.add(arm.label)
        slugs[arm.slug] = arm.label


def baseline_index(arms: Sequence[Arm], baseline: str | None) -> int:
    """Index of the reference arm: the one labelled `baseline` (or whose slug it is), else 0."""
    if baseline is None:
        return 0
    for i, arm in enumerate(arms):
        if baseline in (arm.label, arm.slug) or same_arm(baseline, arm.given):
            return i
    raise ReprokitError(
        f"--baseline {baseline!r} is not one of the arms ({', '.join(a.label for a in arms)})"
    )


# ------------------------------------------------------------------------------ study directory
@dataclass
class StudyDir:
    """Where a study lives and what must agree when it is resumed.

    `document` is the study's own file (``compare.json``, ``stability.json``); `kind` the run kind
    written in it; `arms_dir` the subdirectory of the per-arm runs; `manifest` (optional) a study
    manifest whose `kind`, `config` (less the replica count) and `study` keys must agree.
    """

    root: Path
    kind: str
    document: str
    arms_dir: str = ARMS_DIR
    manifest: dict[str, Any] | None = None

    def arm_path(self, arm: Arm) -> Path:
        return self.root / self.arms_dir / arm.slug

    def check(self, arms: Sequence[Arm], force: bool) -> None:
        """Refuse (before any training) a path that is a file, a foreign non-empty directory,
        another study, or an arm directory trained with another config; creates nothing."""
        root = self.root
        if root.exists() and not root.is_dir():
            raise ReprokitError(f"{root} exists and is not a directory")
        doc_path = root / self.document
        for other in STUDY_DOCUMENTS:
            if other != self.document and (root / other).exists() and not force:
                raise ReprokitError(
                    f"{root} holds another study ({other}), not {_a(self.kind)} one; choose another "
                    "--out or pass --force"
                )
        if self.manifest is None and (root / MANIFEST).exists() and not force:
            kind = read_json(root / MANIFEST, "manifest").get("kind")
            raise ReprokitError(
                f"{root} holds {_a(str(kind))} run, not {_a(self.kind)} study; choose another --out or "
                "pass --force"
            )
        if doc_path.exists():
            kind = read_json(doc_path, self.document).get("kind")  # a broken file is reported
            if kind not in (None, self.kind) and not force:
                raise ReprokitError(
                    f"{root} holds {_a(str(kind))} study, not {_a(self.kind)} one; choose another --out "
                    "or pass --force"
                )
        if self.manifest is not None and (root / MANIFEST).exists() and not force:
            old = read_json(root / MANIFEST, "manifest")
            if _study_key(old) != _study_key(self.manifest):
                raise ReprokitError(
                    f"{root} holds another study or run; choose another --out or pass --force "
                    "to overwrite it"
                )
        is_study = doc_path.exists() or (root / self.arms_dir).is_dir()
        if self.manifest is not None:
            is_study = is_study or (root / MANIFEST).exists()
        foreign = root.is_dir() and not is_study and any(p.name != LOCK for p in root.iterdir())
        if foreign and not force:
            raise ReprokitError(
                f"{root} exists, is not empty and is not {_a(self.kind)} run directory (it is "
                "not a reprokit run directory at all); choose another --out or pass --force"
            )
        if not force:
            for arm in arms:
                _check_arm_config(self.arm_path(arm), arm.config)

    def prepare(self, force: bool) -> None:
        """Create the directory, clear another study's arms with `force`, write the manifest."""
        root = self.root
        mpath = root / MANIFEST
        if force and root.is_dir() and not self._holds_this_study():
            # --force over another study or run: what it wrote goes, so no reader mixes the two
            for name in (self.arms_dir, ARMS_DIR, REPLICAS):
                shutil.rmtree(root / name, ignore_errors=True)
            for name in (*STUDY_DOCUMENTS, self.document, MANIFEST, SUMMARY):
                (root / name).unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        if self.manifest is not None:
            if mpath.exists() and _study_key(read_json(mpath)) == _study_key(self.manifest):
                old = read_json(mpath)
                if old.get("config", {}).get("replicas") != self.manifest["config"]["replicas"]:
                    atomic_write_json(mpath, {**old, "config": self.manifest["config"]})
            else:
                atomic_write_json(mpath, self.manifest)

    def _holds_this_study(self) -> bool:
        """Whether the directory holds this study (perhaps unfinished): then `--force` only
        retrains arms of another config; anything else there is another study or run."""
        root = self.root
        if any((root / d).exists() for d in STUDY_DOCUMENTS if d != self.document):
            return False
        doc = root / self.document
        if doc.exists() and read_json(doc, self.document).get("kind") not in (None, self.kind):
            return False
        mpath = root / MANIFEST
        if self.manifest is not None:
            return mpath.exists() and _study_key(read_json(mpath)) == _study_key(self.manifest)
        return not mpath.exists()  # a manifest here is a train-ensemble run's


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _study_key(doc: dict[str, Any]) -> str:
    """What two study manifests must share: kind, config (a larger replica count extends a study,
    so it is left out) and the study's own settings."""
    config = {k: v for k, v in (doc.get("config") or {}).items() if k != "replicas"}
    return to_json({"kind": doc.get("kind"), "config": config, "study": doc.get("study")})


def _check_arm_config(arm_dir: Path, config: RunConfig) -> None:
    """Refuse early (before any arm trains) when an existing arm was run with another config;
    train_ensemble checks the whole manifest again when the arm starts (data, seeds)."""
    manifest = arm_dir / MANIFEST
    if not manifest.exists():
        return
    stored = comparable_manifest(
        {"config": with_current_defaults(read_json(manifest, "manifest").get("config"))}
    )
    wanted = comparable_manifest({"config": config.to_dict()})
    if stored != wanted:
        raise ReprokitError(
            f"{arm_dir} holds a run of another configuration "
            f"({first_difference(stored, wanted)}); choose another --out or pass --force"
        )


# ------------------------------------------------------------------------------------- training
@dataclass
class ArmResult:
    arm: Arm
    summary: dict[str, Any]
    wall_seconds: float


def run_study(
    study: StudyDir,
    arms: Sequence[Arm],
    finish: Callable[[list[ArmResult]], dict[str, Any]],
    *,
    workers: int = 1,
    force: bool = False,
    encoded: Any = None,
    churn: ChurnGroups | None = None,
    progress: StudyProgress | None = None,
    step_progress: StepProgress | None = None,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Train every arm into its directory (resuming it), then write `finish(results)` as the
    study's document; the whole study holds the directory's lock. `executor` runs every arm's
    replica batches (default: `LocalExecutor(workers)`; `RayExecutor` for a Ray cluster)."""
    study.check(arms, force)
    for note in study_notes(arms):
        log.warning("%s", note)
    if encoded is None:
        from reprokit.data.encoding import load_encoded

        encoded = load_encoded(arms[0].config.data)
    with run_lock(study.root):
        study.prepare(force)
        total = sum(a.config.replicas for a in arms)
        # replicas of later arms that a resumed study already holds count as done from the start
        ready = [_finished_replicas(study.arm_path(a), a.config.replicas) for a in arms]
        results: list[ArmResult] = []
        offset = 0
        for index, arm in enumerate(arms):
            later = sum(ready[index + 1 :])

            def on_progress(
                done: int,
                _total: int,
                metrics: dict[str, Any],
                arm: Arm = arm,
                index: int = index,
                offset: int = offset + later,
            ) -> None:
                if progress:
                    info = {
                        "arm": arm.label,
                        "arm_index": index,
                        "arms": len(arms),
                        "metrics": metrics,
                    }
                    progress(offset + done, total, info)

            start = time.perf_counter()
            summary = train_ensemble(
                arm.config,
                out=study.arm_path(arm),
                workers=workers,
                force=force,
                progress=on_progress,
                encoded=encoded,
                churn=churn,
                step_progress=step_progress,
                executor=executor,
            )
            results.append(ArmResult(arm, summary, time.perf_counter() - start))
            offset += arm.config.replicas
        doc = finish(results)
        atomic_write_json(study.root / study.document, doc)
    return doc


def _finished_replicas(arm_dir: Path, replicas: int) -> int:
    if not (arm_dir / MANIFEST).exists():
        return 0
    store = RunStore(arm_dir)
    return sum(store.is_finished(r) for r in range(replicas))


def study_notes(arms: Sequence[Arm]) -> list[str]:
    """What a reader of the comparison must know that the overrides do not say: arms whose
    Adagrad-family accumulator starts differ only because their optimizers' defaults differ
    (Adagrad 0, Clippy 0.1), which moves AUC and PD as much as the optimizer does."""
    starts = {
        arm.label: accumulator_start(
            arm.config.optim.name, arm.config.optim.initial_accumulator_value
        )
        for arm in arms
    }
    known = {label: a0 for label, a0 in starts.items() if a0 is not None}
    if len(set(known.values())) <= 1:
        return []
    shown = ", ".join(f"{label}: {a0:g}" for label, a0 in known.items())
    return [
        f"the arms start the Adagrad accumulator at different values ({shown}), each "
        "optimizer's default; set optim.initial_accumulator_value (in the base config or every "
        "arm) to compare the optimizers alone"
    ]


# ------------------------------------------------------------------------------------ documents
def pareto_labels(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Labels of the arms on the Pareto front of (PD rel: lower is better, AUC: higher is better)."""
    points = []
    for entry in entries:
        pd_rel = (entry.get("pd") or {}).get("rel")
        auc = (entry.get("auc") or {}).get("mean")
        points.append([math.nan if pd_rel is None else pd_rel, math.nan if auc is None else auc])
    if not points:
        return []
    return [entries[k]["label"] for k in pareto_front(points, maximize=[False, True])]


def compare_document(
    kind: str,
    summaries: Sequence[dict[str, Any]],
    arms: Sequence[Arm],
    base: int,
    *,
    wall_seconds: Sequence[float] | None = None,
    test_method: str = "permutation",
    seed: int = 0,
    arms_dir: str = ARMS_DIR,
) -> dict[str, Any]:
    """The document of a paired study (``compare.json``, docs/contracts.md): per arm its summary,
    label, overrides, directory and paired tests against the baseline (Holm across arms), then
    the Pareto front."""
    if len(summaries) != len(arms):
        raise ReprokitError("one summary per arm is needed")
    if test_method not in TEST_METHODS:
        raise ReprokitError(
            f"unknown paired test {test_method!r}; choose {' or '.join(TEST_METHODS)}"
        )
    n_paired = min(int(summary["replicas"]) for summary in summaries)
    tests = paired_tests(summaries, base, method=test_method, seed=seed)
    entries = []
    for k, (summary, arm) in enumerate(zip(summaries, arms, strict=True)):
        seconds = summary.get("train_seconds")
        per_replica_seconds = seconds.get("mean") if isinstance(seconds, dict) else None
        total_seconds = seconds.get("total") if isinstance(seconds, dict) else seconds
        entry = {
            **summary,
            **arm.fields,
            "label": arm.label,
            "overrides": dict(arm.overrides),
            "name": arm.slug,
            "run_dir": f"{arms_dir}/{arm.slug}",
            "train_seconds": float(total_seconds) if total_seconds is not None else math.nan,
            "train_seconds_per_replica": (
                float(per_replica_seconds) if per_replica_seconds is not None else math.nan
            ),
            "test": tests[k]["rel"] if tests[k] is not None else None,
            "tests": tests[k],
        }
        if wall_seconds is not None:
            entry["wall_seconds"] = float(wall_seconds[k])
        entries.append(entry)
    for entry, arm in zip(entries, arms, strict=True):
        entry["accumulator_start"] = accumulator_start(
            arm.config.optim.name, arm.config.optim.initial_accumulator_value
        )
    return {
        "schema_version": 1,
        "kind": kind,
        "baseline": arms[base].label,
        "arms": entries,
        "notes": study_notes(arms),
        "pareto": pareto_labels(entries),
        "test": {
            "method": test_method,
            "metrics": {metric: meaning for metric, meaning in TEST_METRICS},
            "statistic": "mean over replicas of (arm - baseline), replica k paired by shared seeds",
            "correction": "holm across the non-baseline arms, per metric",
            "smallest_p_holm": smallest_p_holm(n_paired, len(arms) - 1),
            "replicas_needed_for_0.05": replicas_needed(len(arms) - 1),
        },
    }


def finish_document(
    doc: dict[str, Any], config: RunConfig, root: Path, plot: bool
) -> dict[str, Any]:
    """The run fields every paired study's document carries, and its trade-off plot."""
    doc["replicas"] = config.replicas
    doc["vary"] = list(config.vary)
    doc["seed"] = config.seed
    doc["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    doc["run_dir"] = str(root)
    if plot:
        from reprokit.runners.compare_plot import plot_tradeoff

        doc["plots"] = plot_tradeoff(doc, root, stem=PLOT_STEM)
    return doc


def paired_document(
    kind: str,
    results: Sequence[ArmResult],
    base: int,
    root: Path,
    *,
    test: str = "permutation",
    plot: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A paired study's whole document from its trained arms: `compare_document`, the preset's
    `extra` keys (before the plot, which may use them), then `finish_document`."""
    arms = [r.arm for r in results]
    doc = compare_document(
        kind,
        [r.summary for r in results],
        arms,
        base,
        wall_seconds=[r.wall_seconds for r in results],
        test_method=test,
        seed=arms[0].config.seed,
    )
    doc.update(extra or {})
    return finish_document(doc, arms[0].config, root, plot)
