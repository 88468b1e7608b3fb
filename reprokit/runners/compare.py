"""`compare_activations`: the same ensemble once per activation arm, paired by seed, then compared.

Flow: parse and check the arms → load the data once → per arm, `train_ensemble` into
``RUN_DIR/arms/<slug>/`` with the same config except ``model.activation`` (so replica k of every arm
shares every seed: a paired design) → paired tests of each arm against the baseline, Holm-corrected
across arms → Pareto front on (PD ``rel`` ↓, AUC ↑) → ``compare.json`` and the trade-off plot.

Arms (``split_arms``): a comma or semicolon list of activation specs. A spec's own parameters
also use commas (``gsmelu:alpha=0.5,beta=1.5``), so a comma-separated piece that is a bare
``key=value`` (an ``=`` and no ``:``) continues the previous spec; any other piece starts a new
arm. ``;`` always separates arms.

Sweeps (``parse_sweep``): ``family:param=LO..HI:N`` (N evenly spaced values, ends included,
default N = 5) or ``family:param=V1|V2|V3``; other parameters stay fixed, e.g.
``gsmelu:alpha=0.5,beta=0.1..2:4``. Values are rounded to 6 significant digits, so a spec's label
is exactly what the model uses.

Paired statistics, per replica k (docs/methods.md §5: the replica is the unit):

* PD: replica k's contribution to ``rel``, ``c_k = mean_{j != k} rel(k, j)`` over the pairwise
  ``rel`` values of the summary; ``mean_k c_k`` is exactly the arm's ``rel``, so the test compares
  the quantity the table shows. Caveat: the c_k of one arm share pairs and are therefore not
  independent, so the p-value is approximate (indicative with few replicas; use N >= 10 for claims).
* AUC: replica k's own AUC (independent across k).

The test is a sign-flip permutation test of mean(arm − baseline) (default; exact for M ≤ 13) or a
Wilcoxon signed-rank test (``reprokit.metrics.stats.paired_test``). p-values are Holm-corrected
across the non-baseline arms, separately for each metric. The contract's ``test`` entry of each arm
is the PD one; ``tests`` holds both.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.metrics.churn import ChurnGroups
from reprokit.metrics.stats import holm, pair_matrix, paired_test, pareto_front
from reprokit.nn.registry import create_activation, parse_spec
from reprokit.runners.ensemble import StepProgress, default_run_dir, train_ensemble
from reprokit.runschema import LOCK
from reprokit.store import (
    atomic_write_json,
    comparable_manifest,
    first_difference,
    read_json,
    run_lock,
)

KIND = "compare-activations"
COMPARE_FILE = "compare.json"
ARMS_DIR = "arms"
PLOT_STEM = "pareto"

#: Arms of a bare `reprokit compare-activations`: ReLU (baseline), two SmeLU widths, GELU, Swish.
DEFAULT_ARMS: tuple[str, ...] = ("relu", "smelu:beta=0.5", "smelu:beta=1", "gelu", "swish")

#: The arm a sweep is compared against when no --arms are given.
SWEEP_BASELINE = "relu"

#: Paired tests: (document key, what the per-replica value is).
TEST_METRICS: tuple[tuple[str, str], ...] = (
    ("rel", "replica's mean pairwise PD rel against the other replicas of its arm"),
    ("auc", "replica's AUC"),
)
TEST_METHODS = ("permutation", "wilcoxon")

#: progress(done, total, info): done/total count replicas over all arms; info has arm, arm_index,
#: arms and the finished replica's metrics (empty at the start of an arm).
CompareProgress = Callable[[int, int, dict[str, Any]], None]

_MAX_SWEEP_POINTS = 50


# ------------------------------------------------------------------------------------- arm parsing
def canonical_spec(spec: str) -> str:
    """The registry's canonical string of a spec; bad specs raise ReprokitError."""
    text = spec.strip()
    if not text:
        raise ReprokitError("an activation spec is empty")
    return str(parse_spec(text))


def split_arms(text: str) -> list[str]:
    """Split an arm list into specs (see the module docstring for the separator rule)."""
    specs: list[str] = []
    for group in text.split(";"):
        current: list[str] = []
        for piece in (p.strip() for p in group.split(",")):
            if not piece:
                continue
            continues = "=" in piece and ":" not in piece
            if continues:
                if not current:
                    raise ReprokitError(
                        f"arm list {text!r}: parameter {piece!r} does not follow an activation name"
                    )
                current.append(piece)
            else:
                if current:
                    specs.append(",".join(current))
                current = [piece]
        if current:
            specs.append(",".join(current))
    return specs


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ReprokitError(f"sweep {where!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ReprokitError(f"sweep {where!r}: {text!r} is not a finite number")
    return value


def _round6(value: float) -> float:
    return float(f"{value:.6g}")


def parse_sweep(text: str) -> list[str]:
    """Expand ``family:param=LO..HI:N`` or ``family:param=V1|V2|..`` into canonical arm specs."""
    name, colon, rest = text.strip().partition(":")
    if not colon or not rest.strip():
        raise ReprokitError(
            f"sweep {text!r} must look like smelu:beta=0.1..2.0:8 or smelu:beta=0.25|0.5|1"
        )
    items = [p.strip() for p in rest.split(",") if p.strip()]
    swept = [i for i, item in enumerate(items) if ".." in item or "|" in item]
    if len(swept) != 1:
        raise ReprokitError(
            f"sweep {text!r} must vary exactly one parameter (LO..HI:N or V1|V2|..), "
            f"found {len(swept)}"
        )
    key, eq, value = items[swept[0]].partition("=")
    key = key.strip()
    if not eq or not key:
        raise ReprokitError(f"sweep {text!r}: {items[swept[0]]!r} must look like param=LO..HI:N")
    value = value.strip()
    if ".." in value:
        lo_text, _, hi_part = value.partition("..")
        hi_text, colon_n, n_text = hi_part.partition(":")
        lo, hi = _number(lo_text, text), _number(hi_text, text)
        if colon_n:
            try:
                count = int(n_text)
            except ValueError:
                raise ReprokitError(
                    f"sweep {text!r}: the number of points {n_text!r} is not an integer"
                ) from None
        else:
            count = 5
        if not 2 <= count <= _MAX_SWEEP_POINTS:
            raise ReprokitError(
                f"sweep {text!r}: the number of points must be between 2 and {_MAX_SWEEP_POINTS}"
            )
        if lo == hi:
            raise ReprokitError(f"sweep {text!r}: the range {lo:g}..{hi:g} is empty")
        values = [_round6(v) for v in np.linspace(lo, hi, count)]
    else:
        values = [_round6(_number(v.strip(), text)) for v in value.split("|") if v.strip()]
        if len(values) < 2:
            raise ReprokitError(f"sweep {text!r} lists fewer than 2 values")
    specs = []
    for v in values:
        params = list(items)
        params[swept[0]] = f"{key}={v!r}"
        specs.append(canonical_spec(f"{name}:{','.join(params)}"))
    if len(set(specs)) != len(specs):
        raise ReprokitError(f"sweep {text!r} gives the same value twice after rounding")
    return specs


def arm_slug(spec: str) -> str:
    """Directory name of an arm under ``arms/``: the registry's slug (``smelu_beta-0.5``)."""
    return parse_spec(spec).slug


def resolve_arms(
    arms: str | Sequence[str] | None = None,
    baseline: str | None = None,
    sweeps: str | Sequence[str] | None = None,
) -> tuple[list[str], str]:
    """Canonical arm specs (baseline first if it was not listed) and the baseline spec.

    ``arms``: a list of specs or one string in the `split_arms` syntax; None means DEFAULT_ARMS, or
    only the sweep plus ReLU when a sweep is given. Every spec is built once here, so a bad name or
    parameter fails before any training.
    """
    if isinstance(arms, str):
        listed = split_arms(arms)
        if not listed:
            raise ReprokitError("--arms is empty; give at least one activation spec")
    elif arms is not None:
        listed = [s for a in arms for s in split_arms(a)]
        if not listed:
            raise ReprokitError("no arms given; give at least one activation spec")
    else:
        listed = []
    sweep_list = [sweeps] if isinstance(sweeps, str) else list(sweeps or [])
    swept = [s for text in sweep_list for s in parse_sweep(text)]
    if arms is None:
        listed = [SWEEP_BASELINE] if swept else list(DEFAULT_ARMS)
    specs = [canonical_spec(s) for s in listed] + swept
    base = canonical_spec(baseline) if baseline is not None else specs[0]
    if base not in specs:
        specs.insert(0, base)
    seen: dict[str, str] = {}
    for spec in specs:
        if spec in seen:
            raise ReprokitError(f"arm {spec!r} is given twice")
        slug = arm_slug(spec)
        if slug in seen.values():
            raise ReprokitError(f"arms {spec!r} and another arm map to the same directory {slug!r}")
        seen[spec] = slug
        create_activation(spec)  # parameters are checked by the activation itself
    if len(specs) < 2:
        raise ReprokitError(
            f"compare-activations needs at least 2 arms, got only {specs[0]!r}; add --arms"
        )
    return specs, base


# ------------------------------------------------------------------------------------- statistics
def healthy_replicas(summary: dict[str, Any]) -> list[int]:
    """Replica indices that the summary's per-replica and per-pair values refer to.

    Diverged replicas are excluded from PD and accuracy, so the lists skip them.
    """
    diverged = sorted(int(r) for r in (summary.get("diverged") or {}).get("replicas", []))
    total = int(summary["replicas"]) + len(diverged)
    return [r for r in range(total) if r not in set(diverged)]


def per_replica_pd(
    summary: dict[str, Any], replicas: Iterable[int], key: str = "rel"
) -> np.ndarray:
    """c_k = mean over the other listed replicas j of pairwise PD `key`(k, j), per listed k."""
    index = {r: i for i, r in enumerate(healthy_replicas(summary))}
    values = np.asarray(summary["pd_per_pair"][key], dtype=np.float64)
    m = len(index)
    if values.shape != (m * (m - 1) // 2,):
        raise ReprokitError(
            f"summary lists {values.size} pairwise values for {m} replicas; it is inconsistent"
        )
    mat = pair_matrix(values, m)
    pos = [index[r] for r in replicas]
    if len(pos) < 2:
        return np.full(len(pos), np.nan)
    sub = mat[np.ix_(pos, pos)]
    return sub.sum(axis=1) / (len(pos) - 1)


def per_replica_metric(summary: dict[str, Any], replicas: Iterable[int], key: str) -> np.ndarray:
    """Per-replica accuracy metric (`auc`, `logloss`) of the listed replicas (NaN if absent)."""
    entry = summary.get(key)
    wanted = list(replicas)
    if not isinstance(entry, dict) or entry.get("per_replica") is None:
        return np.full(len(wanted), np.nan)
    index = {r: i for i, r in enumerate(healthy_replicas(summary))}
    values = [entry["per_replica"][index[r]] for r in wanted]
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _paired_values(
    arm: dict[str, Any], base: dict[str, Any], metric: str
) -> tuple[list[int], np.ndarray, np.ndarray]:
    common = sorted(set(healthy_replicas(arm)) & set(healthy_replicas(base)))
    if metric in ("rel", "abs"):
        return common, per_replica_pd(arm, common, metric), per_replica_pd(base, common, metric)
    return common, per_replica_metric(arm, common, metric), per_replica_metric(base, common, metric)


def paired_tests(
    summaries: Sequence[dict[str, Any]],
    baseline_index: int,
    method: str = "permutation",
    seed: int = 0,
) -> list[dict[str, dict[str, Any]] | None]:
    """For every arm but the baseline: {metric: test} with Holm-corrected p across arms per metric.

    A test entry is {"metric", "method", "statistic" (mean of arm − baseline over replicas),
    "p_value", "p_holm", "n", "replicas", "reason"}; the baseline gets None.
    """
    if method not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {method!r}; choose {' or '.join(TEST_METHODS)}")
    base = summaries[baseline_index]
    results: list[dict[str, dict[str, Any]] | None] = [
        None if i == baseline_index else {} for i in range(len(summaries))
    ]
    for metric, meaning in TEST_METRICS:
        raw: list[float] = []
        for i, arm in enumerate(summaries):
            if i == baseline_index:
                continue
            common, x, y = _paired_values(arm, base, metric)
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() < 2:
                test = {
                    "statistic": math.nan,
                    "p_value": math.nan,
                    "n": int(ok.sum()),
                    "reason": f"fewer than 2 replicas with a finite {metric} in both arms",
                }
            else:
                test = paired_test(x[ok], y[ok], method=method, seed=seed)
                test["test_statistic"] = test["statistic"]
                test["statistic"] = float(np.mean(x[ok] - y[ok]))
            entry = results[i]
            assert entry is not None
            entry[metric] = {
                "metric": metric,
                "method": method,
                "per_replica": meaning,
                "statistic": float(test["statistic"]),
                "test_statistic": float(test.get("test_statistic", math.nan)),
                "p_value": float(test["p_value"]),
                "n": int(test["n"]),
                "replicas": [r for r, good in zip(common, ok, strict=True) if good],
                "reason": test.get("reason"),
            }
            raw.append(float(test["p_value"]))
        adjusted = iter(holm(raw).tolist()) if raw else iter(())
        for entry in results:
            if entry is not None:
                entry[metric]["p_holm"] = float(next(adjusted))
    return results


def pareto_specs(arms: Sequence[dict[str, Any]]) -> list[str]:
    """Activation specs on the Pareto front of (PD rel: lower is better, AUC: higher is better)."""
    points = []
    for arm in arms:
        pd_rel = (arm.get("pd") or {}).get("rel")
        auc = (arm.get("auc") or {}).get("mean")
        points.append([math.nan if pd_rel is None else pd_rel, math.nan if auc is None else auc])
    if not points:
        return []
    return [arms[k]["activation"] for k in pareto_front(points, maximize=[False, True])]


def families(specs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Families with several arms that differ in exactly one parameter: the curves of the plot.

    {family name: {"param": name, "specs": [...] sorted by that parameter's value}}.
    """
    groups: dict[str, list[Any]] = {}
    for spec in specs:
        parsed = parse_spec(spec)
        groups.setdefault(parsed.name, []).append(parsed)
    out: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        if len(members) < 2:
            continue
        keys = set().union(*(m.params for m in members))
        varying = [k for k in sorted(keys) if len({m.params.get(k) for m in members}) > 1]
        if len(varying) != 1 or not all(
            isinstance(m.params.get(varying[0]), float) for m in members
        ):
            continue
        param = varying[0]
        members = sorted(members, key=lambda m: m.params[param])
        out[name] = {"param": param, "specs": [str(m) for m in members]}
    return out


def smallest_p_holm(replicas: int, comparisons: int) -> float:
    """The smallest Holm-adjusted p any arm can reach: exact two-sided p >= 2 / 2^n, times m."""
    return min(1.0, comparisons * 2.0 / 2.0**replicas) if comparisons else math.nan


def replicas_needed(comparisons: int, alpha: float = 0.05) -> int:
    """Fewest replicas for which `smallest_p_holm` is at most `alpha`."""
    return max(2, math.ceil(math.log2(2.0 * max(comparisons, 1) / alpha)))


def build_compare_document(
    summaries: Sequence[dict[str, Any]],
    specs: Sequence[str],
    baseline: str,
    *,
    wall_seconds: Sequence[float] | None = None,
    test_method: str = "permutation",
    seed: int = 0,
) -> dict[str, Any]:
    """The compare.json document (docs/contracts.md) from each arm's train-ensemble summary."""
    if len(summaries) != len(specs):
        raise ReprokitError("one summary per arm is needed")
    base_index = list(specs).index(baseline)
    n_paired = min(int(summary["replicas"]) for summary in summaries)
    tests = paired_tests(summaries, base_index, method=test_method, seed=seed)
    arms = []
    for k, (summary, spec) in enumerate(zip(summaries, specs, strict=True)):
        slug = arm_slug(spec)
        seconds = summary.get("train_seconds")
        per_replica_seconds = seconds.get("mean") if isinstance(seconds, dict) else None
        total_seconds = seconds.get("total") if isinstance(seconds, dict) else seconds
        entry = {
            **summary,
            "activation": spec,
            "name": slug,
            "run_dir": f"{ARMS_DIR}/{slug}",
            "train_seconds": float(total_seconds) if total_seconds is not None else math.nan,
            "train_seconds_per_replica": (
                float(per_replica_seconds) if per_replica_seconds is not None else math.nan
            ),
            "test": tests[k]["rel"] if tests[k] is not None else None,
            "tests": tests[k],
        }
        if wall_seconds is not None:
            entry["wall_seconds"] = float(wall_seconds[k])
        arms.append(entry)
    return {
        "schema_version": 1,
        "kind": KIND,
        "baseline": baseline,
        "arms": arms,
        "pareto": pareto_specs(arms),
        "families": families(specs),
        "test": {
            "method": test_method,
            "metrics": {metric: meaning for metric, meaning in TEST_METRICS},
            "statistic": "mean over replicas of (arm - baseline), replica k paired by shared seeds",
            "correction": "holm across the non-baseline arms, per metric",
            "smallest_p_holm": smallest_p_holm(n_paired, len(specs) - 1),
            "replicas_needed_for_0.05": replicas_needed(len(specs) - 1),
        },
    }


# ------------------------------------------------------------------------------------- the runner
def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReprokitError(f"{out} exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK for p in out.iterdir()):
        is_compare = (out / COMPARE_FILE).exists() or (out / ARMS_DIR).is_dir()
        if not is_compare and not force:
            raise ReprokitError(
                f"{out} exists, is not empty and is not a compare-activations run directory; "
                "choose another --out or pass --force"
            )
    if (out / COMPARE_FILE).exists():
        read_json(out / COMPARE_FILE, COMPARE_FILE)  # a broken file is reported, not overwritten


def check_inputs(
    config: RunConfig,
    arms: str | Sequence[str] | None = None,
    baseline: str | None = None,
    out: str | Path | None = None,
    *,
    sweep: str | Sequence[str] | None = None,
    force: bool = False,
    test: str = "permutation",
) -> tuple[list[str], str, Path]:
    """Check everything that can be checked before training; (arm specs, baseline, run dir).

    Creates nothing, so a command can call it before it starts a progress bar.
    """
    if test not in TEST_METHODS:
        raise ReprokitError(f"unknown paired test {test!r}; choose {' or '.join(TEST_METHODS)}")
    specs, base = resolve_arms(arms, baseline, sweep)
    if config.replicas < 2:
        raise ReprokitError("compare-activations needs at least 2 replicas per arm")
    root = Path(out) if out is not None else default_run_dir(KIND)
    _prepare_out(root, force)
    if not force:
        config = validated(config)
        for spec in specs:
            _check_arm_config(root / ARMS_DIR / arm_slug(spec), arm_config(config, spec))
    return specs, base, root


def validated(config: RunConfig) -> RunConfig:
    """A validated copy of `config` (validating twice is safe: an empty `vary` means "none")."""
    config = copy.deepcopy(config)
    if not config.vary:
        config.vary = ["none"]
    return config.validate()


def arm_config(config: RunConfig, spec: str) -> RunConfig:
    """`config` with only the activation replaced (a copy): the config of one arm."""
    arm = copy.deepcopy(config)
    arm.model.activation = spec
    return arm


def _check_arm_config(arm_dir: Path, config: RunConfig) -> None:
    """Refuse early (before any arm trains) when an existing arm was run with another config.

    train_ensemble checks the whole manifest again when the arm starts (data fingerprint, seeds).
    """
    manifest = arm_dir / "manifest.json"
    if not manifest.exists():
        return
    stored = comparable_manifest({"config": read_json(manifest, "manifest").get("config")})
    wanted = comparable_manifest({"config": config.to_dict()})
    if stored != wanted:
        raise ReprokitError(
            f"{arm_dir} holds a run of another configuration "
            f"({first_difference(stored, wanted)}); choose another --out or pass --force"
        )


def compare_activations(
    config: RunConfig,
    arms: str | Sequence[str] | None = None,
    baseline: str | None = None,
    out: str | Path | None = None,
    *,
    sweep: str | Sequence[str] | None = None,
    workers: int = 1,
    force: bool = False,
    test: str = "permutation",
    plot: bool = True,
    progress: CompareProgress | None = None,
    encoded: Any = None,
    churn: ChurnGroups | None = None,
    step_progress: StepProgress | None = None,
) -> dict[str, Any]:
    """Train `config` once per activation arm into ``out/arms/<slug>/`` and compare the arms.

    `churn` (see `reprokit.runners.ensemble.load_run_data`) adds top-k churn per group to every
    arm's summary. `step_progress` follows each arm's optimizer steps (vectorized engine).

    Every arm uses `config` with only ``model.activation`` replaced, so replica k of every arm has
    the same seeds. Re-running on the same `out` resumes every arm. Returns the compare.json
    document (also written to ``out/compare.json``), with the plot files under ``out/``.
    """
    specs, base, root = check_inputs(
        config, arms, baseline, out, sweep=sweep, force=force, test=test
    )
    config = validated(config)
    if encoded is None:
        from reprokit.data.encoding import load_encoded

        encoded = load_encoded(config.data)

    with run_lock(root):  # one live study per directory
        total = len(specs) * config.replicas
        summaries: list[dict[str, Any]] = []
        wall: list[float] = []
        for index, spec in enumerate(specs):
            offset = index * config.replicas

            def on_progress(
                done: int,
                _total: int,
                metrics: dict[str, Any],
                spec: str = spec,
                index: int = index,
                offset: int = offset,
            ) -> None:
                if progress:
                    info = {"arm": spec, "arm_index": index, "arms": len(specs), "metrics": metrics}
                    progress(offset + done, total, info)

            start = time.perf_counter()
            summary = train_ensemble(
                arm_config(config, spec),
                out=root / ARMS_DIR / arm_slug(spec),
                workers=workers,
                force=force,
                progress=on_progress,
                encoded=encoded,
                churn=churn,
                step_progress=step_progress,
            )
            wall.append(time.perf_counter() - start)
            summaries.append(summary)

        doc = build_compare_document(
            summaries, specs, base, wall_seconds=wall, test_method=test, seed=config.seed
        )
        doc["replicas"] = config.replicas
        doc["vary"] = list(config.vary)
        doc["seed"] = config.seed
        doc["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        doc["run_dir"] = str(root)
        if plot:
            from reprokit.runners.compare_plot import plot_tradeoff

            doc["plots"] = plot_tradeoff(doc, root, stem=PLOT_STEM)
        atomic_write_json(root / COMPARE_FILE, doc)
    return doc
