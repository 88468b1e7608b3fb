"""CI rules over loaded run documents, and their verdict.

Pure functions: `evaluate(run, rules, baseline)` takes runs loaded by `reprokit.rundir.load_run` and
returns a `GateResult`; the `gate` command only parses options, prints and sets the exit code.

Rules (each optional, at least one required):

- ``max_pd``: PD[metric] <= VALUE (with ``use_ci_upper``: the upper bound of its CI).
- ``min_auc``: mean AUC over replicas >= VALUE.
- ``max_churn``: top-k churn per group <= VALUE (runs trained or measured with ``--churn-by``;
  with ``use_ci_upper``: the upper bound of its CI).
- ``max_pd_increase`` (needs a baseline): 100 * (PD - PD_base) / PD_base <= PCT. With
  ``use_ci_upper`` both runs are judged by their CI upper bounds (like with like).
- ``max_auc_drop`` (needs a baseline): AUC_base - AUC <= VALUE.

Units: a train-ensemble run is one unit; a compare-activations run has one unit per arm. By default
every arm is judged (strictest); ``arms`` restricts the rules to the named arms (slug or activation
spec). Against a baseline, units are matched by arm; a baseline with a single unit (a train-ensemble
run) serves every arm.

Provenance: a baseline comparison means something only on the same data and setup, so each unit and
its baseline unit must agree on the data fingerprint and differ in at most one key of the resolved
config (the field under test, e.g. ``model.activation``; ``data.path`` and the run name are
ignored). The fingerprint and config come from the summary document (``data``, ``config``), else
from the run directory's manifest. Anything else, a unit without them included, is refused unless
``allow_different``; the one allowed difference is reported with both values.

A run whose replicas all diverged has no PD (and no AUC): its rules fail, saying so.

Online runs (`reprokit online`, kind ``online``: manifest.json and online.json, no summary.json)
are judged on one sync interval (``interval``, default the first in online.json):

- ``max_pd``: the final shard's PD[metric] <= VALUE; with ``worst_shard`` the largest over the
  shards (with ``use_ci_upper``: of the CI upper bounds).
- ``min_auc_gain``: the interval's mean over shards of online AUC − batch AUC >= VALUE.
- ``min_auc``: the interval's mean online AUC >= VALUE.

Quantities name their place in online.json (``intervals[0].shards[5].pd.rel``). Baselines, churn
and arms do not apply to online runs and are refused (exit 2), as is a PD rule on a run of one
replica.

Exit codes: 0 every rule holds (or ``warn_only``), 1 a rule failed, 2 bad input (raised as
ReprokitError before any verdict).
"""

from __future__ import annotations

import functools
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from typing import Any

from reprokit.errors import ReprokitError
from reprokit.metrics.pd import PD_KEYS
from reprokit.overrides import same_arm
from reprokit.rundir import Run, as_float, load_run, read_json
from reprokit.runschema import ARM_STUDIES, MANIFEST, ONLINE, ONLINE_DOCUMENT

SCHEMA_VERSION = 1

EXIT_PASS = 0
EXIT_FAIL = 1

#: Config keys that do not change what a run measures (where its data lives or is kept while
#: training, what it is called).
IGNORED_CONFIG_KEYS = frozenset({"name", "data.path", "data.storage"})
ALLOW = "pass --allow-different to compare anyway"


@dataclass
class GateRules:
    max_pd: float | None = None
    metric: str = "rel"
    use_ci_upper: bool = False
    max_pd_increase: float | None = None  # percent
    max_auc_drop: float | None = None
    min_auc: float | None = None
    max_churn: float | None = None
    min_auc_gain: float | None = None  # online runs: mean online − batch AUC of the interval
    worst_shard: bool = False  # online runs: max-pd on the worst shard, not the final one
    interval: float | None = None  # online runs: the sync interval judged (default: the first)
    arms: list[str] = field(default_factory=list)
    warn_only: bool = False
    allow_different: bool = False  # compare with a baseline of other data or setup

    @property
    def needs_baseline(self) -> bool:
        return self.max_pd_increase is not None or self.max_auc_drop is not None

    @property
    def any_rule(self) -> bool:
        return any(
            v is not None
            for v in (
                self.max_pd,
                self.max_pd_increase,
                self.max_auc_drop,
                self.min_auc,
                self.max_churn,
                self.min_auc_gain,
            )
        )


@dataclass
class Unit:
    """One judged ensemble: a train-ensemble run, or one arm of a compare run."""

    name: str  # arm slug, or "" for a train-ensemble run
    label: str  # what users see: the activation spec, or the run name
    summary: dict[str, Any]
    run: Run | None = None  # the run it belongs to (its manifest holds the provenance)


@dataclass
class RuleResult:
    rule: str  # max-pd | min-auc | max-churn | max-pd-increase | max-auc-drop
    unit: str  # arm label or run name
    quantity: str  # e.g. "pd.rel", "pd_ci.rel[upper]", "auc.mean"
    comparison: str  # "<=" or ">="
    threshold: float
    observed: float | None
    passed: bool
    message: str
    baseline: float | None = None
    current: float | None = None
    #: baseline rules: the config key in which unit and baseline differ, {"key", "baseline",
    #: "current"} (the field under test), or None when they agree
    differs: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GateResult:
    run: str
    run_kind: str
    baseline: str | None
    rules: list[RuleResult]
    warn_only: bool = False
    allow_different: bool = False
    #: per unit compared with a baseline: {"unit", "baseline_unit", "key", "baseline", "current"}
    #: for each config key (or "data.fingerprint") that differs
    differences: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def verdict(self) -> str:
        if self.passed:
            return "pass"
        return "warn" if self.warn_only else "fail"

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.passed or self.warn_only else EXIT_FAIL

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "gate",
            "run": self.run,
            "run_kind": self.run_kind,
            "baseline": self.baseline,
            "warn_only": self.warn_only,
            "allow_different": self.allow_different,
            "differences": self.differences,
            "verdict": self.verdict,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "failed": sum(not r.passed for r in self.rules),
            "rules": [r.to_dict() for r in self.rules],
        }


# ------------------------------------------------------------------------------------------ units
def units(run: Run) -> list[Unit]:
    if run.kind in ARM_STUDIES:
        assert run.compare is not None
        return [
            Unit(
                name=a["name"],
                label=str(a.get("label") or a.get("activation") or a["name"]),
                summary=a,
                run=run,
            )
            for a in run.compare["arms"]
        ]
    if run.summary is None:
        raise ReprokitError(f"{run.path} has no summary to gate")
    return [Unit(name="", label=run.name, summary=run.summary, run=run)]


def _matches(unit: Unit, name: str) -> bool:
    """An arm is named by its label, its directory, or (studies over config keys) any spelling of
    its overrides: ``model.dropout=0.0`` names the arm labelled ``model.dropout=0``."""
    return name in (unit.name, unit.label) or same_arm(name, unit.summary.get("overrides"))


def select_units(run: Run, arms: list[str]) -> list[Unit]:
    """The units the rules apply to: every arm, or the named ones (unknown names are errors)."""
    all_units = units(run)
    if not arms or run.kind not in ARM_STUDIES:
        return all_units
    chosen = []
    for name in arms:
        found = [u for u in all_units if _matches(u, name)]
        if not found:
            known = ", ".join(u.label for u in all_units)
            raise ReprokitError(f"unknown arm {name!r} in {run.path}; its arms are {known}")
        chosen += [u for u in found if u not in chosen]
    return chosen


def baseline_unit(unit: Unit, baseline: Run, arms: list[str], current_is_compare: bool) -> Unit:
    base_units = units(baseline)
    if len(base_units) == 1:
        return base_units[0]
    if current_is_compare:
        found = [b for b in base_units if _matches(b, unit.name) or _matches(b, unit.label)]
        if not found:
            raise ReprokitError(
                f"the baseline {baseline.path} has no arm {unit.label!r}; "
                "choose the arms to gate with --arm"
            )
        return found[0]
    # A train-ensemble run against a compare baseline: --arm picks the baseline arm.
    if len(arms) != 1:
        known = ", ".join(b.label for b in base_units)
        raise ReprokitError(
            f"the baseline {baseline.path} is a compare-activations run; "
            f"name the arm to compare against with --arm (one of {known})"
        )
    found = [b for b in base_units if _matches(b, arms[0])]
    if not found:
        known = ", ".join(b.label for b in base_units)
        raise ReprokitError(f"unknown arm {arms[0]!r} in the baseline; its arms are {known}")
    return found[0]


# -------------------------------------------------------------------------------------- provenance
def _manifest(unit: Unit) -> dict[str, Any]:
    """The manifest of the unit's run directory (an arm's own one for a compare run), or {}."""
    run = unit.run
    if run is None or run.documents_only:
        return {}
    if run.kind in ARM_STUDIES:
        try:
            return run.arm_run(unit.summary).manifest or {}
        except ReprokitError:  # an arm directory that is gone: no provenance from it
            return {}
    return run.manifest or {}


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the config's sections; a setting whose value is a mapping (per-field
    widths) stays one key, so two changed widths are one difference, not two."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in _mapping_settings():
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@functools.cache
def _mapping_settings() -> frozenset[str]:
    """The dotted keys of config settings that hold a mapping (`model.field_dims`)."""
    import dataclasses
    import typing

    from reprokit.config import RunConfig

    def walk(cls: type, prefix: str) -> list[str]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                out += walk(hint, f"{prefix}{f.name}.")
            elif typing.get_origin(hint) is dict:
                out.append(f"{prefix}{f.name}")
        return out

    return frozenset(walk(RunConfig, ""))


def _default_config() -> dict[str, Any]:
    from reprokit.config import RunConfig

    return _flatten(RunConfig().to_dict())


def provenance(unit: Unit) -> tuple[str | None, dict[str, Any] | None]:
    """(data fingerprint, flattened resolved config) of a unit; None for what it does not record.

    Keys an older config lacks take today's defaults, so a baseline from before a new setting is
    compared as it ran rather than refused for every key added since."""
    config, data = unit.summary.get("config"), unit.summary.get("data")
    if not (isinstance(config, dict) and isinstance(data, dict)):
        manifest = _manifest(unit)
        config = config if isinstance(config, dict) else manifest.get("config")
        data = data if isinstance(data, dict) else manifest.get("data")
    fp = data.get("fingerprint") if isinstance(data, dict) else None
    flat = {**_default_config(), **_flatten(config)} if isinstance(config, dict) else None
    return (str(fp) if fp else None), flat


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def config_differences(
    baseline: dict[str, Any], current: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """(dotted key, baseline value, current value) for every key that differs, ignored ones aside."""
    keys = sorted((set(baseline) | set(current)) - IGNORED_CONFIG_KEYS)
    return [
        (k, baseline.get(k), current.get(k))
        for k in keys
        if not _same(baseline.get(k), current.get(k))
    ]


def _where(run: Run, unit: Unit) -> str:
    return f"{run.path} (arm {unit.label})" if run.kind in ARM_STUDIES else str(run.path)


def check_provenance(
    unit: Unit, run: Run, base: Unit, baseline: Run, allow_different: bool
) -> list[dict[str, Any]]:
    """The differences between a unit and its baseline unit; refuse (ReprokitError) other data,
    more than one differing config key, or a side without provenance, unless `allow_different`."""
    cur_fp, cur_cfg = provenance(unit)
    base_fp, base_cfg = provenance(base)
    here, there = _where(run, unit), _where(baseline, base)
    found: list[tuple[str, Any, Any]] = []
    if cur_fp and base_fp and cur_fp != base_fp:
        found.append(("data.fingerprint", base_fp, cur_fp))
    if cur_cfg is not None and base_cfg is not None:
        found += config_differences(base_cfg, cur_cfg)
    rows = [
        {"unit": unit.label, "baseline_unit": base.label, "key": k, "baseline": b, "current": c}
        for k, b, c in found
    ]
    if allow_different:
        return rows
    for side, where, fp, cfg in (
        ("baseline", there, base_fp, base_cfg),
        ("run", here, cur_fp, cur_cfg),
    ):
        if fp is None or cfg is None:
            what = " or ".join(
                w for w, v in (("data fingerprint", fp), ("resolved config", cfg)) if v is None
            )
            raise ReprokitError(
                f"{side} {where} lacks provenance (no {what}: made by an older reprokit, or by "
                f"reprokit pd), so it cannot be checked to measure the same data and setup; {ALLOW}"
            )
    if cur_fp != base_fp:
        raise ReprokitError(
            f"baseline {there} was measured on other data (fingerprint {base_fp}, this run "
            f"{cur_fp}); {ALLOW}"
        )
    if len(found) > 1:
        listed = "; ".join(f"{k}: {b!r} there, {c!r} here" for k, b, c in found)
        raise ReprokitError(
            f"baseline {there} differs from {here} in {len(found)} config keys ({listed}), but a "
            f"baseline comparison allows one, the field under test; {ALLOW}"
        )
    return rows


# -------------------------------------------------------------------------------------- quantities
def undefined_pd_reason(summary: dict[str, Any]) -> str | None:
    """Why a summary's PD is undefined because of divergence ("every replica diverged (2 of 2)",
    "only 1 of 3 replicas finished without diverging"), or None when divergence is not the cause.

    A summary counts in ``replicas`` only the replicas that did not diverge; ``diverged.count``
    holds the others (PD needs at least 2 of the former)."""
    diverged = summary.get("diverged")
    count = diverged.get("count") if isinstance(diverged, dict) else None
    healthy = summary.get("replicas")
    if not isinstance(count, int) or count <= 0 or not isinstance(healthy, int) or healthy >= 2:
        return None
    total = healthy + count
    if healthy <= 0:
        return f"every replica diverged ({count} of {total})"
    return f"only {healthy} of {total} replicas finished without diverging"


def pd_keys(summary: dict[str, Any]) -> list[str]:
    return [*PD_KEYS, *(k for k in summary.get("pd") or {} if k not in PD_KEYS)]


def ci_keys(summary: dict[str, Any]) -> list[str]:
    ci = summary.get("pd_ci") or {}
    return [k for k, v in ci.items() if isinstance(v, list | tuple) and len(v) == 2]


def pd_value(summary: dict[str, Any], metric: str, use_ci_upper: bool) -> float:
    if use_ci_upper:
        return as_float(((summary.get("pd_ci") or {}).get(metric) or [None, None])[1])
    return as_float((summary.get("pd") or {}).get(metric))


def auc_value(unit: Unit, where: str, option: str) -> float:
    auc = unit.summary.get("auc")
    if not isinstance(auc, dict) and unit.summary.get("replicas") == 0 and _diverged(unit):
        return math.nan  # no replica left to score: the rule fails, saying why
    if not isinstance(auc, dict):
        raise ReprokitError(
            f"{where} has no AUC (its evaluation data has no labels), so {option} cannot be judged"
        )
    return as_float(auc.get("mean"))


def churn_value(unit: Unit, where: str, use_ci_upper: bool) -> float:
    churn = unit.summary.get("churn")
    if not isinstance(churn, dict) and _diverged(unit):
        return math.nan  # PD (churn with it) is undefined: the rule fails, saying why
    if not isinstance(churn, dict):
        raise ReprokitError(
            f"{where} has no top-k churn (train or measure it with --churn-by COLUMN), so "
            "--max-churn cannot be judged"
        )
    if use_ci_upper:
        return as_float((churn.get("ci") or [None, None])[1])
    return as_float(churn.get("value"))


def _diverged(unit: Unit) -> str | None:
    return undefined_pd_reason(unit.summary)


def _known(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else x


def _fmt(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "null"
    return f"{x:.6g}"


# --------------------------------------------------------------------------------------- validate
def validate(rules: GateRules, run: Run, baseline: Run | None) -> None:
    """Refuse option combinations and names that cannot be judged (exit 2, before any verdict)."""
    if not rules.any_rule:
        raise ReprokitError(
            "no rule given; use --max-pd, --min-auc, --max-churn, --min-auc-gain (online runs), "
            "or --baseline with --max-pd-increase or --max-auc-drop"
        )
    if run.kind == ONLINE:
        validate_online(rules, run, baseline)
        return
    for option, given in (
        ("--min-auc-gain", rules.min_auc_gain is not None),
        ("--worst-shard", rules.worst_shard),
        ("--interval", rules.interval is not None),
    ):
        if given:
            raise ReprokitError(
                f"{option} applies only to online runs (reprokit online); {run.path} is a "
                f"{run.kind} run"
            )
    if rules.needs_baseline and baseline is None:
        raise ReprokitError("--max-pd-increase and --max-auc-drop need --baseline OTHER_RUN_DIR")
    if baseline is not None and not rules.needs_baseline:
        raise ReprokitError("--baseline needs --max-pd-increase or --max-auc-drop")
    if rules.allow_different and baseline is None:
        raise ReprokitError("--allow-different applies only with --baseline")
    for name, value in (
        ("--max-pd", rules.max_pd),
        ("--max-pd-increase", rules.max_pd_increase),
        ("--max-auc-drop", rules.max_auc_drop),
        ("--min-auc", rules.min_auc),
        ("--max-churn", rules.max_churn),
    ):
        if value is not None and not math.isfinite(value):
            raise ReprokitError(f"{name} must be a finite number, got {value}")
    if rules.max_pd is not None and rules.max_pd < 0:
        raise ReprokitError(f"--max-pd must be >= 0, got {rules.max_pd}")
    if rules.min_auc is not None and not 0 <= rules.min_auc <= 1:
        raise ReprokitError(f"--min-auc must be in [0, 1], got {rules.min_auc}")
    if rules.max_churn is not None and not 0 <= rules.max_churn <= 1:
        raise ReprokitError(f"--max-churn must be in [0, 1], got {rules.max_churn}")
    if (
        rules.arms
        and run.kind not in ARM_STUDIES
        and (baseline is None or baseline.kind not in ARM_STUDIES)
    ):
        raise ReprokitError("--arm applies only to compare-activations runs")
    pd_rule = rules.max_pd is not None or rules.max_pd_increase is not None
    if not pd_rule and rules.metric != "rel":
        raise ReprokitError("--metric needs --max-pd or --max-pd-increase")
    if not pd_rule and rules.max_churn is None and rules.use_ci_upper:
        raise ReprokitError("--use-ci-upper needs --max-pd, --max-pd-increase or --max-churn")
    runs = [run] + (
        [baseline] if baseline is not None and rules.max_pd_increase is not None else []
    )
    if rules.max_churn is not None:
        for unit in units(run):
            churn_value(unit, str(run.path), rules.use_ci_upper)
    for r in runs if pd_rule else []:
        for unit in units(r):
            keys = pd_keys(unit.summary)
            if rules.metric not in keys:
                raise ReprokitError(
                    f"unknown PD metric {rules.metric!r}; choose one of {', '.join(keys)}"
                )
            if rules.use_ci_upper and rules.metric not in ci_keys(unit.summary):
                with_ci = ", ".join(ci_keys(unit.summary)) or "none"
                raise ReprokitError(
                    f"--use-ci-upper needs a confidence interval, and {r.path} has none for PD "
                    f"{rules.metric!r} (keys with one: {with_ci})"
                )


# --------------------------------------------------------------------------------------- evaluate
def _rule(
    rule: str,
    unit: str,
    quantity: str,
    comparison: str,
    threshold: float,
    observed: float,
    undefined: str | None = None,
    **extra: Any,
) -> RuleResult:
    """One rule's result; `undefined` says why a missing value is missing (e.g. divergence)."""
    known = _known(observed)
    if known is None:
        passed = False
        why = "is infinite" if math.isinf(observed) else "is missing (null)"
        if undefined and not math.isinf(observed):
            why = f"is undefined because {undefined}"
        message = f"{quantity} {why}, so the rule cannot hold"
    else:
        passed = known <= threshold if comparison == "<=" else known >= threshold
        sign = comparison if passed else (">" if comparison == "<=" else "<")
        message = f"{quantity} = {_fmt(known)} {sign} {_fmt(threshold)}"
    return RuleResult(
        rule=rule,
        unit=unit,
        quantity=quantity,
        comparison=comparison,
        threshold=threshold,
        observed=known,
        passed=passed,
        message=message,
        **extra,
    )


def _baseline_reason(unit: Unit, base: Unit) -> str | None:
    """Why a baseline comparison has no value: this run's or the baseline's divergence."""
    if reason := _diverged(unit):
        return reason
    if reason := _diverged(base):
        return f"in the baseline {reason}"
    return None


def evaluate(run: Run, rules: GateRules, baseline: Run | None = None) -> GateResult:
    """Judge every rule for every selected unit of `run` (against `baseline` where needed).

    Against a baseline every unit's provenance is checked first (`check_provenance`), so other
    data or a changed setup is refused before any verdict."""
    validate(rules, run, baseline)
    if run.kind == ONLINE:
        return _evaluate_online(run, rules)
    metric = rules.metric
    pd_quantity = f"pd_ci.{metric}[upper]" if rules.use_ci_upper else f"pd.{metric}"
    is_compare = run.kind in ARM_STUDIES
    selected = select_units(run, rules.arms) if is_compare else units(run)
    pairs: list[tuple[Unit, Unit | None, dict[str, Any] | None]] = []
    differences: list[dict[str, Any]] = []
    for unit in selected:
        if baseline is None:
            pairs.append((unit, None, None))
            continue
        base = baseline_unit(unit, baseline, rules.arms, is_compare)
        found = check_provenance(unit, run, base, baseline, rules.allow_different)
        differences += found
        one = found[0] if len(found) == 1 else None
        differs = {k: one[k] for k in ("key", "baseline", "current")} if one else None
        pairs.append((unit, base, differs))
    results: list[RuleResult] = []
    for unit, base, differs in pairs:
        label = unit.label
        why = _diverged(unit)
        if rules.max_pd is not None:
            observed = pd_value(unit.summary, metric, rules.use_ci_upper)
            results.append(
                _rule("max-pd", label, pd_quantity, "<=", rules.max_pd, observed, undefined=why)
            )
        if rules.min_auc is not None:
            observed = auc_value(unit, str(run.path), "--min-auc")
            results.append(
                _rule("min-auc", label, "auc.mean", ">=", rules.min_auc, observed, undefined=why)
            )
        if rules.max_churn is not None:
            observed = churn_value(unit, str(run.path), rules.use_ci_upper)
            quantity = "churn.ci[upper]" if rules.use_ci_upper else "churn.value"
            results.append(
                _rule("max-churn", label, quantity, "<=", rules.max_churn, observed, undefined=why)
            )
        if base is None:
            continue
        assert baseline is not None
        both_why = _baseline_reason(unit, base)
        if rules.max_pd_increase is not None:
            cur = pd_value(unit.summary, metric, rules.use_ci_upper)
            ref = pd_value(base.summary, metric, rules.use_ci_upper)
            if math.isnan(cur) or math.isnan(ref):
                change = math.nan
            elif ref == 0 and cur == 0:
                change = 0.0
            elif ref == 0:
                change = math.inf
            else:
                change = (cur - ref) / ref * 100
            result = _rule(
                "max-pd-increase",
                label,
                f"{pd_quantity} change vs baseline (%)",
                "<=",
                rules.max_pd_increase,
                change,
                undefined=both_why,
                baseline=_known(ref),
                current=_known(cur),
                differs=differs,
            )
            if not result.passed and math.isinf(change):
                result.message = (
                    f"{pd_quantity} = {_fmt(cur)} but the baseline's is 0, "
                    "so any increase is infinite"
                )
            elif _known(change) is not None:
                result.message += f" (baseline {_fmt(ref)}, now {_fmt(cur)})"
            results.append(result)
        if rules.max_auc_drop is not None:
            cur = auc_value(unit, str(run.path), "--max-auc-drop")
            ref = auc_value(base, str(baseline.path), "--max-auc-drop")
            result = _rule(
                "max-auc-drop",
                label,
                "auc.mean drop vs baseline",
                "<=",
                rules.max_auc_drop,
                ref - cur,
                undefined=both_why,
                baseline=_known(ref),
                current=_known(cur),
                differs=differs,
            )
            if result.observed is not None:
                result.message += f" (baseline {_fmt(ref)}, now {_fmt(cur)})"
            results.append(result)
    return GateResult(
        run=str(run.path),
        run_kind=run.kind,
        baseline=str(baseline.path) if baseline is not None else None,
        rules=results,
        warn_only=rules.warn_only,
        allow_different=rules.allow_different,
        differences=differences,
    )


def describe_difference(d: dict[str, Any]) -> str:
    """One difference for people: "gelu: model.activation = 'relu' in the baseline, 'gelu' here"."""
    unit = d.get("unit") or "run"
    return f"{unit}: {d['key']} = {d['baseline']!r} in the baseline, {d['current']!r} here"


# ------------------------------------------------------------------------------------ online runs
def open_run(path: Any) -> Run:
    """`rundir.load_run`, plus online run directories (manifest kind ``online`` with online.json,
    no summary.json) and a bare online.json: what `gate` and `report` read."""
    from pathlib import Path

    path = Path(path)
    if path.is_file() and path.name == ONLINE_DOCUMENT:
        manifest = path.parent / MANIFEST
        run = Run(
            path=path,
            kind=ONLINE,
            manifest=read_json(manifest, "manifest.json") if manifest.is_file() else None,
            documents_only=True,
        )
        read_online(run)
        return run
    manifest_path = path / MANIFEST
    if path.is_dir() and manifest_path.is_file():
        manifest = read_json(manifest_path, "manifest.json")
        if manifest.get("kind") == ONLINE:
            run = Run(path=path, kind=ONLINE, manifest=manifest)
            read_online(run)
            return run
    return load_run(path)


def _online_path(run: Run) -> Any:
    return run.path if run.path.is_file() else run.path / ONLINE_DOCUMENT


def read_online(run: Run) -> dict[str, Any]:
    """The online.json of an online run, checked for what gate and report read."""
    path = _online_path(run)
    if not path.is_file():
        raise ReprokitError(
            f"{run.path} has no {ONLINE_DOCUMENT}; the online run has not finished (re-run "
            "reprokit online with the same options to resume it)"
        )
    doc = read_json(path, ONLINE_DOCUMENT)
    intervals = doc.get("intervals")
    if doc.get("kind") != ONLINE or not isinstance(intervals, list) or not intervals:
        raise ReprokitError(f"{path} is not an online.json (no kind 'online' or no intervals)")
    for i, entry in enumerate(intervals):
        shards = entry.get("shards") if isinstance(entry, dict) else None
        missing = [
            k
            for k in ("interval", "mean_auc_online", "mean_auc_batch", "mean_auc_gain")
            if not isinstance(entry, dict) or k not in entry
        ]
        if missing or not isinstance(shards, list) or not shards:
            what = f"lacks {missing[0]!r}" if missing else "lists no shards"
            raise ReprokitError(f"{path}: interval #{i} {what}")
        for j, shard in enumerate(shards):
            for key in ("shard", "auc_online", "auc_batch", "auc_gain", "pd", "synced_bytes"):
                if not isinstance(shard, dict) or key not in shard:
                    raise ReprokitError(f"{path}: interval #{i} shard #{j} lacks {key!r}")
    return doc


def online_interval(doc: dict[str, Any], interval: float | None, where: str) -> int:
    """The index in ``intervals`` of the sync interval asked for (None: the first)."""
    if interval is None:
        return 0
    values = [as_float(e["interval"]) for e in doc["intervals"]]
    for i, value in enumerate(values):
        if value == interval:
            return i
    known = ", ".join(f"{v:g}" for v in values)
    raise ReprokitError(f"{where} has no sync interval {interval:g}; its intervals are {known}")


def interval_text(entry: dict[str, Any]) -> str:
    """ "4 batches", "1 batch", "3600 time units": a sync interval for people."""
    value = as_float(entry.get("interval"))
    unit = {"batches": "batch", "time": "time unit"}.get(str(entry.get("unit")), "batch")
    return f"{value:g} {unit}{'' if value == 1 else 'es' if unit == 'batch' else 's'}"


def _online_pd(shard: dict[str, Any], metric: str, use_ci_upper: bool) -> float:
    return pd_value(shard, metric, use_ci_upper) if shard.get("pd") is not None else math.nan


def validate_online(rules: GateRules, run: Run, baseline: Run | None) -> None:
    """What an online run can be judged on (exit 2 for the rest, before any verdict)."""
    where = str(run.path)
    refused = [
        (
            baseline is not None or rules.needs_baseline,
            "a baseline (--baseline, --max-pd-increase, --max-auc-drop)",
        ),
        (rules.max_churn is not None, "--max-churn"),
        (bool(rules.arms), "--arm"),
    ]
    for given, option in refused:
        if given:
            raise ReprokitError(
                f"online runs are not judged with {option}; judge {where} with --max-pd, "
                "--min-auc-gain or --min-auc"
            )
    for name, value in (
        ("--max-pd", rules.max_pd),
        ("--min-auc", rules.min_auc),
        ("--min-auc-gain", rules.min_auc_gain),
        ("--interval", rules.interval),
    ):
        if value is not None and not math.isfinite(value):
            raise ReprokitError(f"{name} must be a finite number, got {value}")
    if rules.max_pd is not None and rules.max_pd < 0:
        raise ReprokitError(f"--max-pd must be >= 0, got {rules.max_pd}")
    if rules.min_auc is not None and not 0 <= rules.min_auc <= 1:
        raise ReprokitError(f"--min-auc must be in [0, 1], got {rules.min_auc}")
    if rules.max_pd is None:
        for option, given in (
            ("--metric", rules.metric != "rel"),
            ("--use-ci-upper", rules.use_ci_upper),
            ("--worst-shard", rules.worst_shard),
        ):
            if given:
                raise ReprokitError(f"{option} needs --max-pd")
    doc = read_online(run)
    entry = doc["intervals"][online_interval(doc, rules.interval, where)]
    if rules.max_pd is None:
        return
    with_pd = [s for s in entry["shards"] if isinstance(s.get("pd"), dict)]
    if not with_pd:
        raise ReprokitError(
            f"{where} has no PD between replicas (it ran {doc.get('replicas', 1)} replica(s); "
            "PD needs --replicas 2 or more), so --max-pd cannot be judged"
        )
    keys = pd_keys(with_pd[0])
    if rules.metric not in keys:
        raise ReprokitError(f"unknown PD metric {rules.metric!r}; choose one of {', '.join(keys)}")
    if rules.use_ci_upper and rules.metric not in ci_keys(with_pd[0]):
        with_ci = ", ".join(ci_keys(with_pd[0])) or "none"
        raise ReprokitError(
            f"--use-ci-upper needs a confidence interval, and {where} has none for PD "
            f"{rules.metric!r} (keys with one: {with_ci})"
        )


def _evaluate_online(run: Run, rules: GateRules) -> GateResult:
    """The online rules on one sync interval of online.json (validated already)."""
    doc = read_online(run)
    k = online_interval(doc, rules.interval, str(run.path))
    entry = doc["intervals"][k]
    shards = entry["shards"]
    unit_label = f"{run.name} (sync every {interval_text(entry)})"
    results: list[RuleResult] = []
    if rules.max_pd is not None:
        field_ = f"pd_ci.{rules.metric}[upper]" if rules.use_ci_upper else f"pd.{rules.metric}"
        values = [_online_pd(s, rules.metric, rules.use_ci_upper) for s in shards]
        if rules.worst_shard:
            # A shard without PD (null) is the worst of all: the rule cannot hold there.
            pick = next((i for i, v in enumerate(values) if math.isnan(v)), None)
            if pick is None:
                pick = max(range(len(values)), key=lambda i: values[i])
            which = f"worst of {len(shards)} shards"
        else:
            pick, which = len(shards) - 1, "final shard"
        quantity = f"intervals[{k}].shards[{pick}].{field_}"
        result = _rule("max-pd", unit_label, quantity, "<=", rules.max_pd, values[pick])
        result.message += f" ({which})"
        results.append(result)
    if rules.min_auc_gain is not None:
        quantity = f"intervals[{k}].mean_auc_gain"
        observed = as_float(entry["mean_auc_gain"])
        result = _rule("min-auc-gain", unit_label, quantity, ">=", rules.min_auc_gain, observed)
        if result.observed is not None:
            result.message += (
                f" (online {_fmt(as_float(entry['mean_auc_online']))}, "
                f"batch {_fmt(as_float(entry['mean_auc_batch']))})"
            )
        results.append(result)
    if rules.min_auc is not None:
        quantity = f"intervals[{k}].mean_auc_online"
        observed = as_float(entry["mean_auc_online"])
        results.append(_rule("min-auc", unit_label, quantity, ">=", rules.min_auc, observed))
    return GateResult(
        run=str(run.path),
        run_kind=run.kind,
        baseline=None,
        rules=results,
        warn_only=rules.warn_only,
    )


# ------------------------------------------------------------------------------------------ JUnit
def junit_xml(result: GateResult) -> str:
    """JUnit XML: one testcase per rule and unit, a <failure> element for each failed one."""
    failures = sum(not r.passed for r in result.rules)
    suites = ET.Element("testsuites", name="reprokit gate")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="reprokit gate",
        tests=str(len(result.rules)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("run", result.run),
        ("run_kind", result.run_kind),
        ("baseline", result.baseline or ""),
        ("warn_only", str(result.warn_only).lower()),
        ("allow_different", str(result.allow_different).lower()),
        ("verdict", result.verdict),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    for d in result.differences:
        ET.SubElement(props, "property", name="differs_from_baseline", value=describe_difference(d))
    for r in result.rules:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"reprokit.gate.{r.unit}",
            name=f"{r.rule}: {r.quantity} {r.comparison} {_fmt(r.threshold)}",
        )
        differs = (
            f"\nconfig differs from the baseline in {r.differs['key']}: "
            f"{r.differs['baseline']!r} there, {r.differs['current']!r} here"
            if r.differs
            else ""
        )
        if not r.passed:
            failure = ET.SubElement(case, "failure", message=r.message, type="GateRuleFailed")
            failure.text = (
                f"rule {r.rule} failed for {r.unit}: {r.message}"
                + (" (warn-only: the gate did not fail the build)" if result.warn_only else "")
                + differs
            )
        else:
            out = ET.SubElement(case, "system-out")
            out.text = r.message + differs
    ET.indent(suites)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
    )
