"""`report` and `gate` on online run directories (reprokit online): the sections hold the numbers
of online.json, and the gate's verdicts and exit codes follow values computed from it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_error_line
from rundir_fixtures import make_train_ensemble
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.errors import ReprokitError
from reprokit.gate import GateRules, evaluate, open_run
from reprokit.report import build_report, write_report
from reprokit.report.render import _count, _size
from reprokit.report.sections import fmt

runner = CliRunner()

TINY = [
    "online",
    "--synth-rows",
    "2400",
    "--shards",
    "4",
    "--sync-intervals",
    "1,4",
    "--batch-size",
    "64",
]
SECTIONS = [
    "online-intervals",
    "online-auc",
    "online-pd",
    "online-table",
    "online-bytes",
    "online-failure",
    "configuration",
]


def _online(out: Path, *extra: str) -> Path:
    result = runner.invoke(app, [*TINY, *extra, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Three replicas, a collisionless table, and a failure at shard 2 after a snapshot per shard."""
    root = tmp_path_factory.mktemp("online")
    return _online(
        root / "stream",
        "--replicas",
        "3",
        "--vary",
        "init,data-order",
        "--embedding",
        "collisionless:min_count=2",
        "--snapshot-every",
        "1",
        "--fail-at",
        "2",
    )


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    """One replica (no PD), the default table kind, no failure run."""
    root = tmp_path_factory.mktemp("online1")
    return _online(root / "one", "--replicas", "1")


def _doc(path: Path) -> dict:
    return json.loads((path / "online.json").read_text())


def _section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}".*?</section>', html, re.S)
    assert match, f"no section {sid}"
    return match.group(0)


def _svg(html: str, name: str) -> str:
    match = re.search(rf'<svg role="img" aria-label="{name}".*?</svg>', html, re.S)
    assert match, f"no figure {name}"
    return match.group(0)


# ------------------------------------------------------------------------------------- report
def test_report_shows_every_online_section_with_the_documents_numbers(run):
    doc = _doc(run)
    report = build_report(run)
    html = report.html
    assert re.findall(r'<section id="([^"]+)"', html) == SECTIONS
    assert list(report.document["sections"]) == SECTIONS
    assert report.document["run_kind"] == "online"

    intervals = _section(html, "online-intervals")
    for entry in doc["intervals"]:
        shards = entry["shards"]
        gain = np.mean([s["auc_online"] - s["auc_batch"] for s in shards])
        assert entry["mean_auc_gain"] == pytest.approx(gain)  # the document agrees with itself
        for value in (entry["mean_auc_online"], entry["mean_auc_batch"], entry["mean_auc_gain"]):
            assert fmt(value) in intervals
        assert _size(entry["sparse_bytes_per_sync"]) in intervals
        assert fmt(shards[-1]["pd"]["rel"]) in intervals  # the final shard's PD
    twin = report.document["sections"]["online-intervals"]["intervals"]
    assert [r["mean_auc_gain"] for r in twin] == [e["mean_auc_gain"] for e in doc["intervals"]]
    best = max(doc["intervals"], key=lambda e: e["mean_auc_gain"])
    label = f"sync every {best['interval']:g} batch" + ("es" if best["interval"] != 1 else "")
    assert label in report.document["sections"]["online-intervals"]["headline"]

    auc = _section(html, "online-auc")
    for entry in doc["intervals"]:
        for shard in entry["shards"]:
            assert fmt(shard["auc_online"]) in auc and fmt(shard["auc_batch"]) in auc
    svg = _svg(html, "online-auc")
    assert "batch model" in svg and "failure at shard 2" in svg  # the batch line and the marker

    pd = _section(html, "online-pd")
    for shard in doc["intervals"][0]["shards"]:
        lo, hi = shard["pd_ci"]["rel"]
        assert fmt(shard["pd"]["rel"]) in pd and f"[{fmt(lo)}, {fmt(hi)}]" in pd
    assert "fill-opacity: 0.15" in _svg(html, "online-pd")  # the CI band

    table = _section(html, "online-table")
    last = doc["intervals"][0]["shards"][-1]["table"]
    for key in ("rows_final", "admitted", "expired"):
        assert _count(last[key]) in table
    figure = _svg(html, "online-table")
    assert all(title in figure for title in ("rows in the table", "admitted", "expired"))

    synced = _section(html, "online-bytes")
    for entry in doc["intervals"]:
        total = sum(s["synced_bytes"]["sparse"] for s in entry["shards"])
        assert _size(total) in synced
        for shard in entry["shards"]:
            assert _size(shard["synced_bytes"]["dense"]) in synced

    failure = doc["failure"]
    section = _section(html, "online-failure")
    assert failure["fail_at"] == 2 and failure["restored_from_shard"] == 1
    assert "the snapshot after shard 1" in section
    assert f"<td>{int(failure['lost_updates'])}</td>" in section
    for shard in failure["shards"]:
        assert shard["delta"] == pytest.approx(shard["auc_failure"] - shard["auc_no_failure"])
        assert fmt(shard["delta"]) in section
    catch_up = failure["catch_up_shards"]
    facts = report.document["sections"]["online-failure"]["facts"]
    assert facts["shards until caught up"] == (
        "not within the stream" if catch_up is None else catch_up
    )


def test_sections_without_data_are_left_out(single):
    doc = _doc(single)
    assert all(s["pd"] is None for e in doc["intervals"] for s in e["shards"])
    assert doc["failure"] is None
    html = build_report(single).html
    ids = re.findall(r'<section id="([^"]+)"', html)
    assert "online-pd" not in ids and "online-failure" not in ids
    has_table = any(s["table"] for e in doc["intervals"] for s in e["shards"])
    assert ("online-table" in ids) == has_table
    assert ids[:2] == ["online-intervals", "online-auc"] and "online-bytes" in ids
    assert "failure at shard" not in _svg(html, "online-auc")


def test_report_cli_writes_the_page_and_refuses_an_unfinished_run(run, tmp_path):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "online-failure" in out.read_text() and (tmp_path / "r.json").is_file()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(run / "manifest.json", unfinished / "manifest.json")
    line = one_error_line(runner.invoke(app, ["report", str(unfinished)]))
    assert "has no online.json" in line and "resume" in line


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
def test_the_page_renders_in_chromium_with_every_section(run, tmp_path):
    html_path, _, _ = write_report(run, tmp_path / "online.html")
    base = [
        "/usr/bin/chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*base, "--dump-dom", html_path.as_uri()], capture_output=True, timeout=120, check=True
    ).stdout.decode()
    assert re.findall(r'<section id="([^"]+)"', dom) == SECTIONS
    assert dom.count("<svg") >= 4  # AUC, PD, table, bytes
    shot = tmp_path / "online.png"
    subprocess.run(
        [*base, "--window-size=1280,3000", f"--screenshot={shot}", html_path.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:4] == b"\x89PNG"


# --------------------------------------------------------------------------------------- gate
def gate(*args):
    return runner.invoke(app, ["gate", *map(str, args), "--json"])


def _verdict(result) -> dict:
    return json.loads(result.stdout)


def test_max_pd_judges_the_final_shard(run):
    final = _doc(run)["intervals"][0]["shards"][-1]["pd"]["rel"]
    ok = gate(run, "--max-pd", final * 1.001)
    assert ok.exit_code == 0, ok.output
    (rule,) = _verdict(ok)["rules"]
    assert rule["observed"] == pytest.approx(final)
    assert rule["quantity"] == "intervals[0].shards[3].pd.rel"
    bad = gate(run, "--max-pd", final * 0.999)
    assert bad.exit_code == 1 and _verdict(bad)["verdict"] == "fail"
    assert "(final shard)" in _verdict(bad)["rules"][0]["message"]


def test_worst_shard_and_ci_upper(run):
    shards = _doc(run)["intervals"][0]["shards"]
    values = [s["pd"]["rel"] for s in shards]
    worst, final = max(values), values[-1]
    threshold = worst * 0.999
    result = gate(run, "--max-pd", threshold, "--worst-shard")
    assert result.exit_code == 1
    (rule,) = _verdict(result)["rules"]
    assert rule["observed"] == pytest.approx(worst)
    assert rule["quantity"] == f"intervals[0].shards[{int(np.argmax(values))}].pd.rel"
    assert gate(run, "--max-pd", threshold).exit_code == (0 if final <= threshold else 1)
    upper = shards[-1]["pd_ci"]["rel"][1]
    result = gate(run, "--max-pd", upper * 1.001, "--use-ci-upper")
    assert result.exit_code == 0, result.output
    assert _verdict(result)["rules"][0]["observed"] == pytest.approx(upper)
    uppers = [s["pd_ci"]["rel"][1] for s in shards]
    result = gate(run, "--max-pd", max(uppers) * 0.999, "--use-ci-upper", "--worst-shard")
    assert result.exit_code == 1
    assert _verdict(result)["rules"][0]["observed"] == pytest.approx(max(uppers))


def test_min_auc_gain_and_the_interval_option(run):
    doc = _doc(run)
    for k, entry in enumerate(doc["intervals"]):
        gain = float(np.mean([s["auc_online"] - s["auc_batch"] for s in entry["shards"]]))
        args = ["--min-auc-gain", gain - 1e-9]
        if k:
            args += ["--interval", f"{entry['interval']:g}"]
        ok = gate(run, *args)
        assert ok.exit_code == 0, ok.output
        (rule,) = _verdict(ok)["rules"]
        assert rule["quantity"] == f"intervals[{k}].mean_auc_gain"
        assert rule["observed"] == pytest.approx(gain)
        args[1] = gain + 1e-6
        assert gate(run, *args).exit_code == 1
    final = doc["intervals"][1]["shards"][-1]["pd"]["rel"]
    result = gate(run, "--interval", "4", "--max-pd", final * 1.001)
    assert result.exit_code == 0, result.output
    assert "sync every 4 batches" in _verdict(result)["rules"][0]["unit"]


def test_junit_and_warn_only(run, tmp_path):
    doc = _doc(run)
    gain = doc["intervals"][0]["mean_auc_gain"]
    final = doc["intervals"][0]["shards"][-1]["pd"]["rel"]
    out = tmp_path / "gate.xml"
    args = ["--max-pd", final * 2, "--min-auc-gain", gain + 0.5, "--junit", out]
    assert gate(run, *args).exit_code == 1
    suite = ET.parse(out).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failed = [c for c in cases if c.find("failure") is not None]
    assert [c.get("name").split(":")[0] for c in failed] == ["min-auc-gain"]
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["run_kind"] == "online" and props["verdict"] == "fail"
    warned = gate(run, *args, "--warn-only")
    assert warned.exit_code == 0 and _verdict(warned)["verdict"] == "warn"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--max-pd", "0.5", "--interval", "3"], "has no sync interval 3; its intervals are 1, 4"),
        (["--max-churn", "0.1"], "not judged with --max-churn"),
        (["--min-auc-gain", "0", "--worst-shard"], "--worst-shard needs --max-pd"),
        (["--max-pd", "0.5", "--metric", "nope"], "unknown PD metric 'nope'"),
        (["--min-auc-gain", "nan"], "--min-auc-gain must be a finite number"),
        (["--max-auc-drop", "0.1", "--baseline", "{run}"], "not judged with a baseline"),
    ],
)
def test_bad_online_gates_are_one_line_exit_2(run, args, says):
    args = [a.replace("{run}", str(run)) for a in args]
    line = one_error_line(runner.invoke(app, ["gate", str(run), *args]))
    assert says in line
    with pytest.raises(ReprokitError, match=re.escape(says)):  # the API says the same
        rules = GateRules()
        for flag, value in zip(args[::2], args[1::2], strict=False):
            if flag == "--baseline":
                continue
            name = flag[2:].replace("-", "_")
            setattr(rules, name, value if name == "metric" else float(value))
        if "--worst-shard" in args:
            rules.worst_shard = True
        evaluate(open_run(run), rules, open_run(run) if "--baseline" in args else None)


def test_a_rule_the_run_cannot_answer_is_exit_2(single, tmp_path):
    line = one_error_line(runner.invoke(app, ["gate", str(single), "--max-pd", "0.5"]))
    assert "no PD between replicas" in line and "--replicas 2" in line
    gain = _doc(single)["intervals"][0]["mean_auc_gain"]
    assert gate(single, "--min-auc-gain", gain - 1e-9).exit_code == 0
    ensemble = make_train_ensemble(tmp_path / "ens", examples=80)
    line = one_error_line(runner.invoke(app, ["gate", str(ensemble), "--min-auc-gain", "0"]))
    assert "--min-auc-gain applies only to online runs" in line
    bare = gate(single / "online.json", "--min-auc-gain", gain - 1e-9)
    assert bare.exit_code == 0, bare.output  # a bare online.json is judged too
