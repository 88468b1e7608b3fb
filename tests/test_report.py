"""`reprokit report`: sections, escaping, self-containment, JSON twin, errors (no browser)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import pytest
from rundir_fixtures import make_compare, make_train_ensemble
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.errors import ReprokitError
from reprokit.report import build_report, figures, sections_for, write_report
from reprokit.report.context import pareto_front
from reprokit.rundir import load_run

ENSEMBLE_SECTIONS = [
    "verdict",
    "configuration",
    "pd-table",
    "accuracy",
    "pd-vs-auc",
    "pd-distribution",
    "pd-by-bucket",
    "calibration",
    "training-loss",
    "replicas",
]
COMPARE_SECTIONS = [*ENSEMBLE_SECTIONS[:5], "paired-tests", *ENSEMBLE_SECTIONS[5:]]
# The registry (and a real run, whose summary always has an `embedding` block) also lists the
# Embedding table section; the fixture run dirs carry no `embedding` block, so they leave it out.
_AT = ENSEMBLE_SECTIONS.index("training-loss") + 1
REGISTRY_ENSEMBLE_SECTIONS = [*ENSEMBLE_SECTIONS[:_AT], "embedding", *ENSEMBLE_SECTIONS[_AT:]]
REGISTRY_COMPARE_SECTIONS = [
    *REGISTRY_ENSEMBLE_SECTIONS[:5],
    "paired-tests",
    *REGISTRY_ENSEMBLE_SECTIONS[5:],
]
XSS = "<script>alert(1)</script>"

runner = CliRunner()


class _Refs(HTMLParser):
    """Every tag and every attribute that can make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "srcset", "action", "data", "poster"):
                self.refs.append((tag, name, value or ""))


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory) -> Path:
    return make_compare(tmp_path_factory.mktemp("runs") / "cmp", replicas=4, examples=500)


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory) -> Path:
    return make_train_ensemble(tmp_path_factory.mktemp("runs") / "ens", replicas=5, examples=300)


def _section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def test_registry_lists_sections_per_kind():
    assert [s.id for s in sections_for("train-ensemble")] == REGISTRY_ENSEMBLE_SECTIONS
    for kind in ("compare-activations", "compare"):
        assert [s.id for s in sections_for(kind)] == REGISTRY_COMPARE_SECTIONS
    assert [s.id for s in sections_for("stability")] == [
        "verdict", "configuration", "divergence", "loss-curves"
    ]  # fmt: skip
    assert "online-auc" in [s.id for s in sections_for("online")]
    with pytest.raises(ReprokitError, match="no sections for 'no-such-kind'"):
        sections_for("no-such-kind")


def test_compare_report_has_every_section_and_plot(compare_run: Path):
    report = build_report(compare_run)
    assert _section_ids(report.html) == COMPARE_SECTIONS
    assert list(report.document["sections"]) == COMPARE_SECTIONS
    for fig in ("pd-vs-auc", "pd-distribution", "pd-by-bucket", "calibration", "training-loss"):
        assert f'aria-label="{fig}"' in report.html
    verdict = report.document["sections"]["verdict"]
    assert verdict["headline"].startswith("Best on the Pareto front: smelu:beta=1")
    assert verdict["best"] == "smelu:beta=1" and verdict["pd_change_percent"] < -30
    # The PD table shows every key for every arm, with the CIs of the summary.
    doc = json.loads((compare_run / "compare.json").read_text())
    table = report.document["sections"]["pd-table"]
    for arm in doc["arms"]:
        cells = table["arms"][arm["activation"]]
        assert set(cells) >= {"abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip"}
        assert cells["rel"]["value"] == pytest.approx(arm["pd"]["rel"])
        assert cells["rel"]["ci"] == pytest.approx(arm["pd_ci"]["rel"])
        assert f"{arm['pd']['rel']:.4g}" in report.html
    assert report.document["sections"]["pd-vs-auc"]["pareto"] == [
        {"relu": "relu", "smelu-beta-1": "smelu:beta=1"}.get(n, n) for n in ("relu", "smelu-beta-1")
    ]


def test_ensemble_report_sections_and_headline(ensemble_run: Path):
    report = build_report(ensemble_run)
    assert _section_ids(report.html) == ENSEMBLE_SECTIONS
    summary = json.loads((ensemble_run / "summary.json").read_text())
    headline = report.document["sections"]["verdict"]["headline"]
    lo, hi = summary["pd_ci"]["rel"]
    assert headline.startswith(f"PD rel = {summary['pd']['rel']:.4g} [{lo:.4g}, {hi:.4g}]")
    assert "over 5 replicas; AUC" in headline
    assert f"AUC {summary['auc']['mean']:.3f} ± {summary['auc']['std']:.3f}" in headline
    assert headline in report.html
    rows = report.document["sections"]["replicas"]["rows"]
    assert [r["replica"] for r in rows] == ["000", "001", "002", "003", "004"]
    assert rows[2]["auc"] == pytest.approx(summary["auc"]["per_replica"][2])


def test_per_example_pd_matches_the_prediction_files(ensemble_run: Path):
    """The distribution section is computed from the replica files; its mean is the summary's
    abs_mean, and its histogram counts every example."""
    import numpy as np
    import pandas as pd

    report = build_report(ensemble_run)
    dist = report.document["sections"]["pd-distribution"]
    arm = next(iter(dist["arms"].values()))
    preds = np.stack(
        [
            pd.read_parquet(p)["prediction"].to_numpy()
            for p in sorted(ensemble_run.glob("replicas/*/predictions.parquet"))
        ]
    )
    per_example = np.abs(preds - preds.mean(axis=0)).mean(axis=0)
    assert arm["abs"]["mean"] == pytest.approx(per_example.mean(), rel=1e-9)
    assert arm["abs"]["max"] == pytest.approx(per_example.max(), rel=1e-9)
    assert sum(arm["counts"]) == preds.shape[1]
    summary = json.loads((ensemble_run / "summary.json").read_text())
    assert arm["abs"]["mean"] == pytest.approx(summary["pd"]["abs_mean"], rel=1e-6)


def test_calibration_and_loss_sections_use_labels_and_logs(ensemble_run: Path):
    doc = build_report(ensemble_run).document["sections"]
    calib = next(iter(doc["calibration"]["arms"].values()))
    bins = calib["ensemble_bins"]
    assert sum(bins["count"]) == 300
    assert all(0 <= r <= 1 for r in bins["observed_rate"] if r is not None)
    assert len(calib["replica_bins"]) == 5
    loss = next(iter(doc["training-loss"]["arms"].values()))
    assert set(loss) == {"000", "001", "002", "003", "004"}
    assert all(r["points"] == 60 and r["final"] < r["first"] for r in loss.values())


def test_report_is_self_contained(compare_run: Path):
    html = build_report(compare_run).html
    parser = _Refs()
    parser.feed(html)
    assert "script" not in parser.tags
    assert not {"link", "img", "iframe", "object", "embed"} & set(parser.tags)
    # The only references are in-page anchors (#section) and SVG-internal ids.
    assert all(value.startswith("#") for _, _, value in parser.refs), parser.refs[:5]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:|//)", html, re.I)
    assert "@import" not in html
    assert "<!DOCTYPE svg" not in html and "<?xml" not in html
    csp = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', html)
    assert csp and csp.group(1) == "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def test_run_name_and_arm_names_are_escaped(tmp_path: Path):
    run = make_compare(
        tmp_path / "xss",
        name=XSS,
        arms={"relu": (0.06, 1.5), XSS: (0.03, 1.5), "a$b$&c": (0.05, 1.4)},
        baseline="relu",
        replicas=3,
        examples=200,
    )
    html = build_report(run).html
    assert XSS not in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<title>reprokit report: &lt;script&gt;alert(1)&lt;/script&gt;</title>" in html
    assert "a$b$&amp;c" in html  # literal, not mathtext, and escaped
    ens = make_train_ensemble(tmp_path / "ens-xss", name=XSS, data_name=XSS, replicas=2)
    html = build_report(ens).html
    assert XSS not in html and "<script" not in html.lower()
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2  # title and dataset name


def test_cli_writes_page_and_twin_atomically(compare_run: Path, tmp_path: Path):
    out = tmp_path / "out" / "cmp.html"
    result = runner.invoke(app, ["report", str(compare_run), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    twin = out.with_suffix(".json")
    assert out.exists() and twin.exists()
    doc = json.loads(twin.read_text())
    assert doc["schema_version"] == 1 and doc["kind"] == "report"
    assert doc["run_kind"] == "compare-activations"
    assert json.loads(result.stdout) == doc
    assert "wrote" in result.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["cmp.html", "cmp.json"]  # no temp files
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_cli_default_out_is_inside_the_run_dir(tmp_path: Path):
    run = make_train_ensemble(tmp_path / "ens", replicas=3, examples=150)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert (run / "report.html").exists()
    doc = json.loads((run / "report.json").read_text())
    assert doc["run_kind"] == "train-ensemble"
    assert list(doc["sections"]) == ENSEMBLE_SECTIONS
    assert result.stdout == ""


def _bad(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path: Path):
    assert "run directory not found" in _bad(["report", str(tmp_path / "missing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a reprokit run directory" in _bad(["report", str(empty)])

    run = make_train_ensemble(tmp_path / "ens", replicas=2, examples=100)
    assert ".json" in _bad(["report", str(run), "--out", str(tmp_path / "r.json")])

    (run / "replicas" / "001" / "predictions.parquet").write_bytes(b"not parquet")
    assert "replica 001 predictions.parquet is corrupt" in _bad(["report", str(run)])

    run2 = make_train_ensemble(tmp_path / "ens2", replicas=2, examples=100)
    (run2 / "summary.json").write_text("{truncated")
    assert "summary.json is corrupt" in _bad(["report", str(run2)])

    run3 = make_train_ensemble(tmp_path / "ens3", replicas=2, examples=100)
    manifest = json.loads((run3 / "manifest.json").read_text())
    (run3 / "manifest.json").write_text(json.dumps({**manifest, "kind": "online"}))
    assert "online.json" in _bad(["report", str(run3)])  # an online run that never finished

    cmp = make_compare(tmp_path / "cmp", replicas=2, examples=100)
    import shutil

    shutil.rmtree(cmp / "arms" / "gelu")
    assert "arm 'gelu' has no run directory" in _bad(["report", str(cmp)])


def test_misaligned_replicas_are_reordered_or_refused(tmp_path: Path):
    import pyarrow.parquet as pq

    run = make_train_ensemble(tmp_path / "ens", replicas=3, examples=120)
    before = build_report(run).document["sections"]["pd-distribution"]
    path = run / "replicas" / "002" / "predictions.parquet"
    table = pq.read_table(path)
    pq.write_table(table.take(list(range(119, -1, -1))), path)  # same examples, reversed
    after = build_report(run).document["sections"]["pd-distribution"]
    assert after == before
    pq.write_table(table.slice(0, 100), path)
    with pytest.raises(ReprokitError, match="has 100 examples"):
        build_report(run)


def test_control_arm_and_diverged_replicas_are_flagged(tmp_path: Path):
    ctl = make_train_ensemble(tmp_path / "ctl", replicas=3, examples=100, vary=())
    verdict = build_report(ctl).document["sections"]["verdict"]
    assert verdict["status"] == "warning"
    assert any("leaks" in n for n in verdict["notes"])
    div = make_train_ensemble(tmp_path / "div", replicas=3, examples=100, diverged=(1,))
    report = build_report(div)
    verdict = report.document["sections"]["verdict"]
    assert verdict["status"] == "warning" and "Diverged replicas: 001." in verdict["notes"]
    assert report.document["sections"]["training-loss"]["arms"]["relu"]["001"]["non_finite"] == 30


def test_pareto_front():
    points = {"a": (0.05, 0.75), "b": (0.03, 0.74), "c": (0.04, 0.73), "d": (0.03, 0.76)}
    assert pareto_front(points) == ["d"]
    points = {"a": (0.05, 0.75), "b": (0.03, 0.74), "c": (0.04, 0.73)}
    assert pareto_front(points) == ["a", "b"]
    assert pareto_front({"a": (float("nan"), 0.7), "b": (0.1, 0.6)}) == ["b"]


def test_loader_accepts_bare_documents_but_report_needs_the_directory(compare_run: Path):
    run = load_run(compare_run / "compare.json")
    assert run.kind == "compare-activations" and run.documents_only
    with pytest.raises(ReprokitError, match="needs the whole run directory"):
        build_report(compare_run / "compare.json")


def test_write_report_returns_paths(ensemble_run: Path, tmp_path: Path):
    html, twin, report = write_report(ensemble_run, tmp_path / "r.html")
    assert html == tmp_path / "r.html" and twin == tmp_path / "r.json"
    assert html.read_text(encoding="utf-8") == report.html


def test_report_and_gate_of_a_real_train_ensemble_run(tmp_path: Path):
    """End to end on a run directory written by `reprokit train-ensemble` itself."""
    run = tmp_path / "real"
    args = ["--replicas", "3", "--vary", "init,data-order", "--synth-rows", "2000", "--epochs", "1"]
    trained = runner.invoke(app, ["train-ensemble", *args, "--out", str(run)])
    assert trained.exit_code == 0, trained.output

    result = runner.invoke(app, ["report", str(run), "--json"])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text(encoding="utf-8")
    assert _section_ids(html) == REGISTRY_ENSEMBLE_SECTIONS
    doc = json.loads(result.stdout)
    summary = json.loads((run / "summary.json").read_text())
    sections = doc["sections"]
    assert sections["verdict"]["headline"].startswith(f"PD rel = {summary['pd']['rel']:.4g}")
    assert "over 3 replicas" in sections["verdict"]["headline"]
    dist = next(iter(sections["pd-distribution"]["arms"].values()))
    assert dist["abs"]["mean"] == pytest.approx(summary["pd"]["abs_mean"], rel=1e-6)
    assert len(sections["replicas"]["rows"]) == 3
    assert all(
        r["points"] > 0 for r in next(iter(sections["training-loss"]["arms"].values())).values()
    )
    assert "Varied sources: init, data-order." in sections["verdict"]["notes"]

    gate = runner.invoke(app, ["gate", str(run), "--max-pd", "1", "--min-auc", "0.5", "--json"])
    assert gate.exit_code == 0, gate.output
    again = runner.invoke(
        app, ["gate", str(run), "--baseline", str(run), "--max-pd-increase", "0", "--json"]
    )
    assert again.exit_code == 0 and json.loads(again.stdout)["rules"][0]["observed"] == 0


# ---- cosmetics found in a user trial --------------------------------------------------------------
SVG = "{http://www.w3.org/2000/svg}"


def _tick_labels(svg: str, name: str) -> list[tuple[float, str]]:
    """(x, text) of every labelled tick of a figure's x axis, read from its inline SVG."""
    root = ET.fromstring(str(svg))
    axis = next(g for g in root.iter(f"{SVG}g") if g.get("id") == f"{name}-matplotlib.axis_1")
    out = []
    for tick in axis.findall(f"{SVG}g"):
        if "xtick_" in (tick.get("id") or ""):
            for t in tick.iter(f"{SVG}text"):
                out.append((float(t.get("x", "nan")), "".join(t.itertext()).strip()))
    return out


def _buckets(lo: float, hi: float, k: int = 12) -> list[dict]:
    r = (hi / lo) ** (1 / k)
    return [
        {"lo": lo * r**i, "hi": lo * r ** (i + 1), "abs_mean": 0.01 + i / 1000} for i in range(k)
    ]


@pytest.mark.parametrize(
    "lo, hi", [(0.015, 0.09), (0.02, 0.3), (0.05, 0.6), (0.001, 0.9), (1e-6, 0.99), (0.42, 0.47)]
)
def test_bucket_chart_log_axis_has_few_plain_labels_that_do_not_overlap(lo, hi):
    """The trial's axis read `2×10⁻²3×10⁻²4×10⁻²...`: a mathtext label on every minor tick."""
    svg = figures.pd_by_bucket([SimpleNamespace(label="a")], [_buckets(lo, hi)])
    ticks = _tick_labels(svg, "pd-by-bucket")
    assert 2 <= len(ticks) <= 9, ticks
    values = [float(text) for _, text in ticks]  # plain numbers: "0.02", not "2×10−2"
    assert values == sorted(values)
    char = 9 * 0.62  # DejaVu Sans digit width at the 9 px tick font, generously
    for (x0, a), (x1, b) in zip(ticks, ticks[1:], strict=False):
        assert x1 - x0 > (len(a) + len(b)) / 2 * char + 4, (a, b, x1 - x0)


@pytest.mark.parametrize("steps", [4, 6, 10, 1000])
def test_training_loss_axis_ticks_are_whole_steps(steps):
    rep = SimpleNamespace(
        loss_steps=list(range(steps)), loss=[1 / (s + 1) for s in range(steps)], name="000"
    )
    svg = figures.loss_curves([SimpleNamespace(label="a")], [SimpleNamespace(replicas=[rep])])
    labels = [text for _, text in _tick_labels(svg, "training-loss")]
    assert len(labels) >= 2 and all(re.fullmatch(r"\d+", t) for t in labels), labels


def test_configuration_of_imported_data_leaves_out_synthetic_settings(tmp_path: Path):
    run = make_train_ensemble(
        tmp_path / "imported", replicas=2, examples=50, config={"data": {"path": "/d/clicks"}}
    )
    report = build_report(run)
    config = report.document["sections"]["configuration"]["config"]
    assert config["data.path"] == "/d/clicks" and config["data.split"] == "random"
    assert not [k for k in config if k.startswith("data.synth_")]
    assert "synth_rows" not in report.html
    synthetic = build_report(make_train_ensemble(tmp_path / "synth", replicas=2, examples=50))
    assert synthetic.document["sections"]["configuration"]["config"]["data.synth_rows"] == 2000


@pytest.fixture(scope="module")
def stability_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "stab"
    args = ["stability", "--optimizers", "adagrad,adam", "--lr-multipliers", "1,1e5",
            "--replicas", "2", "--epochs", "1", "--synth-rows", "2000", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def test_stability_divergence_table_puts_std_on_its_own_line(stability_run: Path):
    html = build_report(stability_run).html
    table = html.split('id="divergence"')[1].split("</table>")[0]
    assert '<table class="compact">' in table
    assert re.search(r'<td class="n">0\.\d+<span class="ci">± ', table), table
    assert " ± " not in re.sub(r'<span class="ci">± ', "", table)  # no "mean ± std" on one line


CHROMIUM = shutil.which("chromium")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")
def test_stability_divergence_table_fits_a_1280_px_window(stability_run: Path, tmp_path: Path):
    """Measured by the browser: no table of the stability report needs horizontal scrolling."""
    html = build_report(stability_run).html
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe = (
        "<script>document.body.setAttribute('data-widths', Array.from("
        "document.querySelectorAll('section .scroll')).map(function (d) { return "
        "d.closest('section').id + ':' + d.scrollWidth + ':' + d.clientWidth; }).join(' '));"
        "</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe + "</body>"), encoding="utf-8")
    profile = tmp_path / "profile"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1280,2400"]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    widths = re.search(r'data-widths="([^"]*)"', dom).group(1).split()
    measured = {w.split(":")[0]: tuple(map(int, w.split(":")[1:])) for w in widths}
    assert "divergence" in measured, widths
    for section, (scroll, client) in measured.items():
        assert scroll <= client, f"{section} table is {scroll}px wide in a {client}px box"
