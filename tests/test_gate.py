"""`reprokit gate`: rules, exit codes (0 pass, 1 fail, 2 bad input), JSON verdict and JUnit XML."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cli_checks import one_error_line
from rundir_fixtures import make_compare, make_train_ensemble
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.errors import ReprokitError
from reprokit.gate import GateRules, evaluate, junit_xml
from reprokit.rundir import load_run

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    return {
        # Same truth, same seed; only the replica noise differs, so PD differs and AUC barely.
        "base": make_train_ensemble(root / "base", noise=0.04, examples=400),
        "same": make_train_ensemble(root / "same", noise=0.04, examples=400),
        "worse": make_train_ensemble(root / "worse", noise=0.08, examples=400),
        "weak": make_train_ensemble(root / "weak", noise=0.04, skill=0.6, examples=400),
        "cmp": make_compare(root / "cmp", examples=400),
    }


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def gate(*args: str):
    return runner.invoke(app, ["gate", *map(str, args)])


# ---------------------------------------------------------------------------------- exit codes
def test_pass_exits_0(runs):
    rel = summary(runs["base"])["pd"]["rel"]
    result = gate(runs["base"], "--max-pd", rel * 1.5, "--min-auc", 0.6, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "pass" and doc["passed"] and doc["exit_code"] == 0
    assert "PASS" in result.stderr  # the Rich verdict table is on stderr


def test_fail_exits_1(runs):
    rel = summary(runs["base"])["pd"]["rel"]
    result = gate(runs["base"], "--max-pd", rel * 0.5, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "fail" and doc["failed"] == 1
    (rule,) = doc["rules"]
    assert rule["rule"] == "max-pd" and not rule["passed"]
    assert rule["observed"] == pytest.approx(rel) and rule["threshold"] == pytest.approx(rel * 0.5)
    assert "FAIL" in result.stderr


def test_warn_only_reports_but_exits_0(runs):
    rel = summary(runs["base"])["pd"]["rel"]
    result = gate(runs["base"], "--max-pd", rel * 0.5, "--warn-only", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["verdict"] == "warn" and not doc["passed"] and doc["warn_only"]
    assert not doc["rules"][0]["passed"]
    assert "warn" in result.stderr.lower()


def test_baseline_regression_fails_and_same_run_passes(runs):
    base, worse = summary(runs["base"]), summary(runs["worse"])
    args = ["--baseline", runs["base"], "--max-pd-increase", 10, "--max-auc-drop", 0.005, "--json"]
    result = gate(runs["worse"], *args)
    assert result.exit_code == 1, result.output
    rules = {r["rule"]: r for r in json.loads(result.stdout)["rules"]}
    inc = rules["max-pd-increase"]
    expected = (worse["pd"]["rel"] - base["pd"]["rel"]) / base["pd"]["rel"] * 100
    assert inc["observed"] == pytest.approx(expected) and expected > 50
    assert inc["baseline"] == pytest.approx(base["pd"]["rel"])
    assert inc["current"] == pytest.approx(worse["pd"]["rel"])
    assert not inc["passed"]
    drop = rules["max-auc-drop"]
    assert drop["observed"] == pytest.approx(base["auc"]["mean"] - worse["auc"]["mean"])

    result = gate(runs["same"], *args)
    assert result.exit_code == 0, result.output
    assert all(r["passed"] for r in json.loads(result.stdout)["rules"])


def test_auc_drop_against_baseline_fails(runs):
    result = gate(runs["weak"], "--baseline", runs["base"], "--max-auc-drop", 0.005, "--json")
    assert result.exit_code == 1, result.output
    (rule,) = json.loads(result.stdout)["rules"]
    assert rule["rule"] == "max-auc-drop" and rule["observed"] > 0.005


def test_missing_run_directory_exits_2(tmp_path):
    line = one_error_line(gate(tmp_path / "nope", "--max-pd", 0.1))
    assert "run directory not found" in line
    line = one_error_line(gate(tmp_path, "--max-pd", 0.1))
    assert "not a reprokit run directory" in line


def test_missing_baseline_exits_2(runs, tmp_path):
    line = one_error_line(
        gate(runs["base"], "--baseline", tmp_path / "nope", "--max-pd-increase", 10)
    )
    assert "run directory not found" in line


def test_corrupt_summary_exits_2(tmp_path):
    run = make_train_ensemble(tmp_path / "run", replicas=2, examples=60)
    (run / "summary.json").write_text('{"schema_version": 1, "pd": {"rel": 0.0')
    assert "summary.json is corrupt" in one_error_line(gate(run, "--max-pd", 0.1))
    (run / "summary.json").write_text("[1, 2]")
    assert "summary.json is corrupt" in one_error_line(gate(run, "--max-pd", 0.1))
    (run / "summary.json").write_text('{"schema_version": 1}')
    assert "lacks key(s)" in one_error_line(gate(run, "--max-pd", 0.1))
    (run / "summary.json").unlink()
    assert "has no summary.json" in one_error_line(gate(run, "--max-pd", 0.1))


def test_newer_schema_exits_2(tmp_path):
    run = make_train_ensemble(tmp_path / "run", replicas=2, examples=60)
    doc = summary(run)
    (run / "summary.json").write_text(json.dumps({**doc, "schema_version": 99}))
    assert "schema_version 99" in one_error_line(gate(run, "--max-pd", 0.1))


def test_unknown_metric_and_bad_rules_exit_2(runs):
    line = one_error_line(gate(runs["base"], "--max-pd", 0.1, "--metric", "relative"))
    assert "unknown PD metric 'relative'" in line and "rel_std" in line
    line = one_error_line(gate(runs["base"]))
    assert "no rule given" in line
    line = one_error_line(gate(runs["base"], "--max-pd-increase", 10))
    assert "need --baseline" in line
    line = one_error_line(gate(runs["base"], "--baseline", runs["same"], "--max-pd", 0.1))
    assert "--baseline needs" in line
    line = one_error_line(gate(runs["base"], "--max-pd", -1))
    assert "--max-pd must be >= 0" in line
    line = one_error_line(gate(runs["base"], "--min-auc", 0.5, "--arm", "relu"))
    assert "--arm applies only to compare-activations runs" in line


def test_use_ci_upper(runs):
    doc = summary(runs["base"])
    lo, hi = doc["pd_ci"]["rel"]
    point = doc["pd"]["rel"]
    between = (point + hi) / 2  # the point estimate passes, the upper bound does not
    assert gate(runs["base"], "--max-pd", between).exit_code == 0
    result = gate(runs["base"], "--max-pd", between, "--use-ci-upper", "--json")
    assert result.exit_code == 1
    (rule,) = json.loads(result.stdout)["rules"]
    assert rule["observed"] == pytest.approx(hi) and rule["quantity"] == "pd_ci.rel[upper]"
    # Keys without a CI are refused with the list of keys that have one.
    line = one_error_line(gate(runs["base"], "--max-pd", 1, "--metric", "l2", "--use-ci-upper"))
    assert "--use-ci-upper needs a confidence interval" in line and "rel" in line


def test_other_pd_keys(runs):
    doc = summary(runs["base"])
    for key in ("abs", "abs_mean", "rel_mean", "l2", "rel_std", "flip"):
        result = gate(runs["base"], "--max-pd", 1.0, "--metric", key, "--json")
        assert result.exit_code == 0, result.output
        (rule,) = json.loads(result.stdout)["rules"]
        assert rule["observed"] == pytest.approx(doc["pd"][key]) and rule["quantity"] == f"pd.{key}"


# -------------------------------------------------------------------------------- compare runs
def test_compare_run_judges_every_arm_by_default(runs):
    doc = json.loads((runs["cmp"] / "compare.json").read_text())
    rels = {a["activation"]: a["pd"]["rel"] for a in doc["arms"]}
    threshold = (rels["smelu:beta=1"] + rels["gelu"]) / 2  # only smelu is below
    result = gate(runs["cmp"], "--max-pd", threshold, "--json")
    assert result.exit_code == 1
    rules = json.loads(result.stdout)["rules"]
    assert {r["unit"]: r["passed"] for r in rules} == {
        "relu": False,
        "smelu:beta=1": True,
        "gelu": False,
    }
    for name in ("smelu:beta=1", "smelu-beta-1"):  # spec or slug
        result = gate(runs["cmp"], "--max-pd", threshold, "--arm", name, "--json")
        assert result.exit_code == 0, result.output
        assert [r["unit"] for r in json.loads(result.stdout)["rules"]] == ["smelu:beta=1"]


def test_compare_unknown_arm_exits_2(runs):
    line = one_error_line(gate(runs["cmp"], "--max-pd", 1, "--arm", "swish"))
    assert "unknown arm 'swish'" in line and "smelu:beta=1" in line


def test_compare_against_compare_baseline_matches_arms(runs):
    result = gate(runs["cmp"], "--baseline", runs["cmp"], "--max-pd-increase", 0, "--json")
    assert result.exit_code == 0, result.output
    rules = json.loads(result.stdout)["rules"]
    assert len(rules) == 3 and all(r["observed"] == 0 for r in rules)


def test_train_ensemble_against_compare_baseline_needs_arm(runs):
    line = one_error_line(gate(runs["base"], "--baseline", runs["cmp"], "--max-auc-drop", 0.01))
    assert "name the arm to compare against with --arm" in line
    result = gate(
        runs["base"], "--baseline", runs["cmp"], "--max-auc-drop", 0.01, "--arm", "relu", "--json"
    )
    assert result.exit_code in (0, 1)
    (rule,) = json.loads(result.stdout)["rules"]
    cmp_doc = json.loads((runs["cmp"] / "compare.json").read_text())
    relu = next(a for a in cmp_doc["arms"] if a["activation"] == "relu")
    assert rule["baseline"] == pytest.approx(relu["auc"]["mean"])


def test_baseline_may_be_a_bare_summary_file_or_a_directory_holding_only_it(runs, tmp_path):
    result = gate(runs["same"], "--baseline", runs["base"] / "summary.json", "--max-pd-increase", 5)
    assert result.exit_code == 0, result.output
    stored = tmp_path / "baseline"
    stored.mkdir()
    (stored / "summary.json").write_text((runs["worse"] / "summary.json").read_text())
    result = gate(runs["same"], "--baseline", stored, "--max-pd-increase", 5, "--json")
    assert result.exit_code == 0, result.output  # PD fell against the noisier baseline
    assert json.loads(result.stdout)["baseline"] == str(stored)
    result = gate(stored, "--max-pd", 1e-9)
    assert result.exit_code == 1


# ----------------------------------------------------------------------------- JUnit and edge cases
def test_junit_xml_has_one_testcase_per_rule(runs, tmp_path):
    out = tmp_path / "ci" / "gate.xml"
    rel = summary(runs["worse"])["pd"]["rel"]
    result = gate(
        runs["worse"],
        "--max-pd",
        rel * 2,
        "--min-auc",
        0.99,
        "--baseline",
        runs["base"],
        "--max-pd-increase",
        10,
        "--max-auc-drop",
        0.5,
        "--junit",
        out,
    )
    assert result.exit_code == 1
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 4 and suite.get("tests") == "4" and suite.get("failures") == "2"
    failed = {c.get("name").split(":")[0] for c in cases if c.find("failure") is not None}
    assert failed == {"min-auc", "max-pd-increase"}
    failure = next(c for c in cases if c.get("name").startswith("min-auc")).find("failure")
    assert "auc.mean" in failure.get("message") and "< 0.99" in failure.get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["verdict"] == "fail" and props["baseline"] == str(runs["base"])


def test_junit_escapes_names(tmp_path):
    run = make_compare(
        tmp_path / "cmp",
        arms={"relu": (0.05, 1.5), '<x a="1">&': (0.03, 1.5)},
        replicas=2,
        examples=80,
    )
    result = evaluate(load_run(run), GateRules(max_pd=0.0))
    root = ET.fromstring(junit_xml(result))
    units = {c.get("classname") for c in root.iter("testcase")}
    assert 'reprokit.gate.<x a="1">&' in units


def test_null_pd_fails_the_rule(tmp_path):
    run = make_train_ensemble(tmp_path / "run", replicas=2, examples=60)
    doc = summary(run)
    doc["pd"]["rel"] = None
    (run / "summary.json").write_text(json.dumps(doc))
    result = evaluate(load_run(run), GateRules(max_pd=1.0))
    (rule,) = result.rules
    assert not rule.passed and rule.observed is None and "missing" in rule.message
    assert result.exit_code == 1


def test_zero_baseline_pd(tmp_path):
    ctl = make_train_ensemble(tmp_path / "ctl", replicas=2, examples=60, noise=0.0, vary=())
    assert summary(ctl)["pd"]["rel"] == 0
    rules = GateRules(max_pd_increase=10)
    same = evaluate(load_run(ctl), rules, load_run(ctl))
    assert same.passed and same.rules[0].observed == 0
    noisy = make_train_ensemble(tmp_path / "noisy", replicas=2, examples=60)
    worse = evaluate(load_run(noisy), rules, load_run(ctl))
    assert not worse.passed and "baseline's is 0" in worse.rules[0].message
    assert worse.to_dict()["rules"][0]["observed"] is None


def test_no_auc_without_labels_is_bad_input(tmp_path):
    run = make_train_ensemble(tmp_path / "run", replicas=2, examples=60)
    doc = summary(run)
    for key in ("auc", "logloss", "calibration"):
        doc.pop(key)
    (run / "summary.json").write_text(json.dumps(doc))
    with pytest.raises(ReprokitError, match="has no AUC"):
        evaluate(load_run(run), GateRules(min_auc=0.5))


def test_result_document_schema(runs):
    result = evaluate(load_run(runs["base"]), GateRules(max_pd=1.0, min_auc=0.5))
    doc = result.to_dict()
    assert doc["schema_version"] == 1 and doc["kind"] == "gate"
    assert set(doc) >= {"run", "run_kind", "baseline", "verdict", "passed", "rules", "exit_code"}
    for rule in doc["rules"]:
        assert set(rule) >= {"rule", "unit", "quantity", "threshold", "observed", "passed"}
        assert math.isfinite(rule["observed"])
