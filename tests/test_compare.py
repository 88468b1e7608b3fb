"""compare-activations: arm and sweep parsing, paired statistics, Holm, Pareto, and end to end."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.errors import ReprokitError
from reprokit.runners.compare import (
    DEFAULT_ARMS,
    arm_slug,
    build_compare_document,
    families,
    paired_tests,
    pareto_specs,
    parse_sweep,
    per_replica_pd,
    resolve_arms,
    split_arms,
)

runner = CliRunner()


# ------------------------------------------------------------------------------------- arm parsing
def test_split_arms_keeps_parameter_commas_inside_a_spec():
    assert split_arms("relu,smelu:beta=0.5,gelu") == ["relu", "smelu:beta=0.5", "gelu"]
    assert split_arms("relu,gsmelu:alpha=0.5,beta=1.5,swish") == [
        "relu",
        "gsmelu:alpha=0.5,beta=1.5",
        "swish",
    ]
    assert split_arms("relu; gsmelu:alpha=0.5,beta=1.5 ;gelu:approximate=tanh") == [
        "relu",
        "gsmelu:alpha=0.5,beta=1.5",
        "gelu:approximate=tanh",
    ]
    assert split_arms(" relu ,, smelu ") == ["relu", "smelu"]
    with pytest.raises(ReprokitError, match="does not follow an activation name"):
        split_arms("beta=1,relu")


def test_resolve_arms_canonicalises_and_places_the_baseline():
    specs, base = resolve_arms(None)
    assert specs == [
        "relu",
        "smelu:beta=0.5",
        "smelu:beta=1",
        "gelu:approximate=none",
        "swish:beta=1",
    ]
    assert len(specs) == len(DEFAULT_ARMS) and base == "relu"
    specs, base = resolve_arms("smelu:beta=1,gelu", baseline="relu")
    assert specs == ["relu", "smelu:beta=1", "gelu:approximate=none"] and base == "relu"
    specs, base = resolve_arms(["smelu:beta=1", "relu"], baseline="RELU")
    assert specs == ["smelu:beta=1", "relu"] and base == "relu"
    # A sweep alone is compared against ReLU.
    specs, base = resolve_arms(None, sweeps="smelu:beta=0.5|1")
    assert specs == ["relu", "smelu:beta=0.5", "smelu:beta=1"] and base == "relu"
    assert len({arm_slug(s) for s in specs}) == 3


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ("relu,nosuch", "unknown activation 'nosuch'"),
        ("relu,smelu:beta=-1", "beta"),
        ("relu,smelu:width=1", "unknown parameter 'width'"),
        ("smelu,smelu:beta=1", "given twice"),
        ("relu", "at least 2 arms"),
        ("", "empty"),
    ],
)
def test_resolve_arms_refuses_bad_specs(arms, message):
    with pytest.raises(ReprokitError, match=message):
        resolve_arms(arms)


def test_parse_sweep_range_and_list():
    specs = parse_sweep("smelu:beta=0.1..2.0:8")
    expected = [float(f"{v:.6g}") for v in np.linspace(0.1, 2.0, 8)]
    assert len(specs) == 8
    assert [float(s.split("=")[1]) for s in specs] == expected
    assert specs[0] == "smelu:beta=0.1" and specs[-1] == "smelu:beta=2"
    assert parse_sweep("smelu:beta=0.25|0.5|1") == [
        "smelu:beta=0.25",
        "smelu:beta=0.5",
        "smelu:beta=1",
    ]
    assert len(parse_sweep("smelu:beta=0.5..1.5")) == 5  # default number of points
    # Other parameters stay fixed; the swept one may come in any position.
    assert parse_sweep("gsmelu:alpha=0.5,beta=1|2") == [
        "gsmelu:alpha=0.5,beta=1,g=1,t=0",
        "gsmelu:alpha=0.5,beta=2,g=1,t=0",
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("smelu:beta=1", "exactly one parameter"),
        ("smelu", "must look like"),
        ("gsmelu:alpha=1|2,beta=1|2", "exactly one parameter"),
        ("smelu:beta=0.1..2:1", "between 2 and"),
        ("smelu:beta=0.1..2:x", "not an integer"),
        ("smelu:beta=a..2:3", "not a number"),
        ("smelu:beta=1..1:3", "empty"),
        ("smelu:beta=1|1.0000001", "same value twice"),
        ("smelu:beta=-1..1:3", "beta"),
        ("nosuch:beta=1|2", "unknown activation"),
    ],
)
def test_parse_sweep_refuses_bad_sweeps(sweep, message):
    with pytest.raises(ReprokitError, match=message):
        parse_sweep(sweep)


def test_families_groups_one_varying_parameter():
    specs, _ = resolve_arms("relu,smelu:beta=1,smelu:beta=0.5,gelu,gelu:approximate=tanh")
    assert families(specs) == {
        "smelu": {"param": "beta", "specs": ["smelu:beta=0.5", "smelu:beta=1"]}
    }


# ------------------------------------------------------------------------------------- statistics
def _summary(pair_rel, auc, diverged=()):
    """A minimal summary document: M healthy replicas with pairwise rel and per-replica AUC."""
    m = len(auc)
    assert len(pair_rel) == m * (m - 1) // 2
    return {
        "replicas": m,
        "pd": {"rel": float(np.mean(pair_rel)), "abs": float(np.mean(pair_rel)) / 10},
        "pd_per_pair": {"rel": list(pair_rel), "abs": [v / 10 for v in pair_rel]},
        "auc": {"mean": float(np.mean(auc)), "std": float(np.std(auc, ddof=1)), "per_replica": auc},
        "diverged": {"count": len(diverged), "replicas": list(diverged)},
        "train_seconds": {"mean": 1.0, "total": float(m)},
    }


def _exact_sign_flip(d):
    """Two-sided exact sign-flip p-value of mean(d), by enumerating every sign pattern."""
    d = np.asarray(d, dtype=float)
    observed = abs(d.mean())
    stats = [abs(np.mean(d * np.array(s))) for s in itertools.product((1, -1), repeat=d.size)]
    return float(np.mean(np.asarray(stats) >= observed - 1e-12))


def _holm_by_hand(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_per_replica_pd_averages_to_rel_and_skips_diverged():
    rng = np.random.default_rng(3)
    pairs = rng.uniform(0.1, 0.3, size=10)  # 5 replicas
    s = _summary(pairs, [0.7] * 5)
    c = per_replica_pd(s, range(5))
    mat = np.zeros((5, 5))
    i, j = np.triu_indices(5, 1)
    mat[i, j] = mat[j, i] = pairs
    assert np.allclose(c, mat.sum(axis=1) / 4)
    assert math.isclose(c.mean(), s["pd"]["rel"])
    # Replica 2 diverged: the 4 healthy replicas are 0, 1, 3, 4 and pairs refer to them.
    s = _summary(pairs[:6], [0.7] * 4, diverged=[2])
    c = per_replica_pd(s, [0, 3, 4])
    sub = np.zeros((4, 4))
    i, j = np.triu_indices(4, 1)
    sub[i, j] = sub[j, i] = pairs[:6]
    keep = [0, 2, 3]  # positions of replicas 0, 3, 4
    assert np.allclose(c, sub[np.ix_(keep, keep)].sum(axis=1) / 2)


def test_paired_tests_match_exact_sign_flip_and_holm():
    rng = np.random.default_rng(0)
    m = 6
    base = _summary(rng.uniform(0.2, 0.3, 15), list(rng.uniform(0.70, 0.72, m)))
    arms = [
        base,
        _summary(rng.uniform(0.05, 0.1, 15), list(rng.uniform(0.70, 0.72, m))),  # clearly lower PD
        _summary(rng.uniform(0.18, 0.32, 15), list(rng.uniform(0.69, 0.73, m))),  # about the same
        _summary(rng.uniform(0.1, 0.25, 15), list(rng.uniform(0.60, 0.62, m))),  # lower AUC
    ]
    tests = paired_tests(arms, 0, method="permutation")
    assert tests[0] is None
    for metric in ("rel", "auc"):
        raw = []
        for k in (1, 2, 3):
            if metric == "rel":
                x, y = per_replica_pd(arms[k], range(m)), per_replica_pd(base, range(m))
            else:
                x = np.array(arms[k]["auc"]["per_replica"])
                y = np.array(base["auc"]["per_replica"])
            t = tests[k][metric]
            assert math.isclose(t["statistic"], float(np.mean(x - y)), abs_tol=1e-12)
            assert math.isclose(t["p_value"], _exact_sign_flip(x - y), rel_tol=1e-9)
            assert t["n"] == m and t["replicas"] == list(range(m))
            raw.append(t["p_value"])
        expected = _holm_by_hand(raw)
        got = [tests[k][metric]["p_holm"] for k in (1, 2, 3)]
        assert np.allclose(got, expected)
        assert all(h >= p for h, p in zip(got, raw, strict=True))
    # Six replicas all in the same direction: the smallest exact two-sided p, 2 / 2^6.
    assert math.isclose(tests[1]["rel"]["p_value"], 2 / 64)
    assert tests[1]["rel"]["statistic"] < 0 and tests[3]["auc"]["statistic"] < 0


def test_paired_tests_wilcoxon_and_unpairable_arms():
    from scipy import stats

    base = _summary([0.2, 0.25, 0.3], [0.70, 0.71, 0.72])
    arm = _summary([0.1, 0.12, 0.2], [0.69, 0.715, 0.70])
    tests = paired_tests([base, arm], 0, method="wilcoxon")
    x, y = np.array([0.69, 0.715, 0.70]), np.array([0.70, 0.71, 0.72])
    assert math.isclose(tests[1]["auc"]["p_value"], stats.wilcoxon(x, y).pvalue)
    assert tests[1]["auc"]["p_holm"] == tests[1]["auc"]["p_value"]  # one comparison
    # Two replicas diverged in the arm: only one replica in common, so no test (NaN), with a reason.
    lone = {
        "replicas": 1,
        "pd_per_pair": {"rel": [], "abs": []},
        "auc": {"per_replica": [0.7]},
        "diverged": {"count": 2, "replicas": [1, 2]},
    }
    tests = paired_tests([base, lone], 0)
    assert math.isnan(tests[1]["rel"]["p_value"]) and "fewer than 2" in tests[1]["rel"]["reason"]
    with pytest.raises(ReprokitError, match="unknown paired test"):
        paired_tests([base, arm], 0, method="t-test")


def test_pareto_front_on_a_hand_made_example():
    def arm(spec, pd_rel, auc):
        return {"activation": spec, "pd": {"rel": pd_rel}, "auc": {"mean": auc}}

    arms = [
        arm("a", 0.10, 0.70),  # on the front
        arm("b", 0.20, 0.72),  # on the front: best AUC
        arm("c", 0.15, 0.69),  # dominated by a
        arm("d", 0.10, 0.70),  # equal to a: equal points do not dominate each other
        arm("e", 0.05, None),  # no AUC: never on the front
        arm("f", 0.20, 0.71),  # dominated by b (same PD, lower AUC)
        arm("g", 0.08, 0.65),  # on the front: lowest PD with an AUC
    ]
    assert pareto_specs(arms) == ["a", "b", "d", "g"]


def test_build_compare_document_follows_the_contract():
    base = _summary([0.2, 0.25, 0.3], [0.70, 0.71, 0.72])
    arm = _summary([0.1, 0.12, 0.2], [0.69, 0.715, 0.70])
    doc = build_compare_document([base, arm], ["relu", "smelu:beta=1"], "relu")
    assert doc["schema_version"] == 1 and doc["kind"] == "compare-activations"
    assert doc["baseline"] == "relu" and doc["pareto"] == ["relu", "smelu:beta=1"]
    first, second = doc["arms"]
    assert first["test"] is None and first["name"] == "relu" and first["run_dir"] == "arms/relu"
    assert second["name"] == "smelu_beta-1" and second["run_dir"] == "arms/smelu_beta-1"
    assert set(second["test"]) >= {"metric", "statistic", "p_value", "p_holm"}
    assert second["test"]["metric"] == "rel" and second["train_seconds"] == 3.0
    with pytest.raises(ReprokitError):
        build_compare_document([base], ["relu", "smelu"], "relu")


# ------------------------------------------------------------------------------------- end to end
# Small but learnable (AUC about 0.67), so no replica trips the divergence detector's collapse check.
TINY = [
    "--synth-rows", "3000", "--replicas", "3", "--epochs", "1", "--hidden", "8",
    "--embedding-dim", "4", "--batch-size", "64", "--lr", "0.1",
]  # fmt: skip
TINY_CONFIG = {
    "data.synth_rows": 3000, "optim.epochs": 1, "model.hidden": [8], "model.embedding_dim": 4,
    "optim.batch_size": 64, "optim.lr": 0.1,
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    args = ["compare-activations", "--arms", "relu", "--sweep", "smelu:beta=0.5|1", *TINY]
    result = runner.invoke(app, [*args, "--vary", "init,data-order", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, result, args


def test_cli_end_to_end_writes_contract_and_plots(tiny_run):
    out, result, _ = tiny_run
    doc = json.loads(result.stdout)
    assert doc == json.loads((out / "compare.json").read_text())
    assert doc["kind"] == "compare-activations" and doc["schema_version"] == 1
    assert doc["baseline"] == "relu" and doc["replicas"] == 3
    assert [a["activation"] for a in doc["arms"]] == ["relu", "smelu:beta=0.5", "smelu:beta=1"]
    assert doc["families"]["smelu"]["specs"] == ["smelu:beta=0.5", "smelu:beta=1"]
    assert set(doc["pareto"]) <= {a["activation"] for a in doc["arms"]} and doc["pareto"]
    for arm in doc["arms"]:
        for key in ("pd", "pd_ci", "pd_per_pair", "auc", "logloss", "activation", "name"):
            assert key in arm
        assert set(arm["pd"]) == {"abs", "rel", "abs_mean", "rel_mean", "l2", "rel_std", "flip"}
        assert arm["run_dir"] == f"arms/{arm['name']}"
        assert (out / arm["run_dir"] / "summary.json").exists()
        assert arm["train_seconds"] > 0 and arm["replicas"] == 3 and arm["diverged"]["count"] == 0
        assert arm["auc"]["mean"] > 0.6
        if arm["activation"] != "relu":
            assert 0.0 <= arm["test"]["p_value"] <= arm["test"]["p_holm"] <= 1.0
    png, svg = out / "pareto.png", out / "pareto.svg"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in svg.read_text() and "smelu:beta=0.5" in svg.read_text()
    assert doc["plots"] == ["pareto.png", "pareto.svg"]
    # The Rich table goes to stderr, one row per arm.
    assert "smelu:beta=0.5" in result.stderr and "p PD (Holm)" in result.stderr
    assert "no arm can reach p(Holm) < 0.05" in result.stderr  # 3 replicas: at best 2 × 2/8
    assert doc["test"]["smallest_p_holm"] == 0.5
    # The report loader accepts the directory.
    from reprokit.rundir import load_run

    run = load_run(out)
    assert run.kind == "compare-activations" and len(run.arm_entries()) == 3
    assert run.arm_run(run.arm_entries()[1]).summary["activation"] == "smelu:beta=0.5"


def test_paired_design_shares_every_seed(tiny_run):
    out, _, _ = tiny_run
    manifests = [json.loads(p.read_text()) for p in sorted(out.glob("arms/*/manifest.json"))]
    assert len(manifests) == 3
    seeds = [m["replica_seeds"] for m in manifests]
    assert all(s == seeds[0] for s in seeds)
    assert set(seeds[0]) == {"000", "001", "002"}
    # Replicas differ from each other in the varied sources only, and replica k of every arm got the
    # same seeds as written by the training itself.
    assert seeds[0]["000"]["init"] != seeds[0]["001"]["init"]
    assert seeds[0]["000"]["dropout"] == seeds[0]["001"]["dropout"]
    for k in ("000", "001", "002"):
        written = [json.loads((p / k / "metrics.json").read_text())["seeds"] for p in
                   sorted(out.glob("arms/*/replicas"))]  # fmt: skip
        assert all(w == seeds[0][k] for w in written)
    # The configs are equal except for the activation.
    configs = [m["config"] for m in manifests]
    activations = {c["model"].pop("activation") for c in configs}
    assert activations == {"relu", "smelu:beta=0.5", "smelu:beta=1"}
    assert all(c == configs[0] for c in configs)
    assert len({m["data"]["fingerprint"] for m in manifests}) == 1


def test_rerun_resumes_without_training(tiny_run):
    out, first, args = tiny_run
    marker = out / "arms" / "relu" / "replicas" / "000" / "metrics.json"
    before = marker.stat().st_mtime_ns
    result = runner.invoke(app, [*args, "--vary", "init,data-order", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert marker.stat().st_mtime_ns == before
    old, new = json.loads(first.stdout), json.loads(result.stdout)
    for doc in (old, new):
        doc.pop("created")
        for arm in doc["arms"]:
            arm.pop("wall_seconds")
    assert old == new
    # Another config on the same directory is refused (exit 2, one line) unless --force.
    result = runner.invoke(app, [*args, "--vary", "init", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_python_api(tmp_path):
    from reprokit.config import resolve_config
    from reprokit.runners.compare import compare_activations

    config = resolve_config(
        None,
        {**TINY_CONFIG, "replicas": 2},
    )
    seen = []
    doc = compare_activations(
        config,
        ["relu", "swish"],
        baseline="swish",
        out=tmp_path / "api",
        plot=False,
        progress=lambda done, total, info: seen.append((done, total, info.get("arm"))),
    )
    assert doc["baseline"] == "swish:beta=1"
    assert [a["activation"] for a in doc["arms"]] == ["relu", "swish:beta=1"]
    assert doc["arms"][1]["test"] is None and doc["arms"][0]["test"]["n"] == 2
    assert seen[-1][:2] == (4, 4) and {s[2] for s in seen} == {"relu", "swish:beta=1"}
    assert "plots" not in doc and not (tmp_path / "api" / "pareto.png").exists()
    assert config.model.activation == "relu"  # the caller's config is not modified


@pytest.mark.parametrize(
    "args",
    [
        ["--arms", "relu,nosuch"],
        ["--arms", "relu,smelu:beta=0"],
        ["--sweep", "smelu:beta=1"],
        ["--sweep", "smelu:beta=0.1..2:1"],
        ["--arms", "relu"],
        ["--baseline", "smelu:alpha=1"],
        ["--test", "t-test"],
        ["--replicas", "1"],
        ["--vary", "nosuch"],
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args):
    result = runner.invoke(app, ["compare-activations", *args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()  # refused before any training


def test_out_that_is_not_a_compare_directory_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    result = runner.invoke(
        app, ["compare-activations", "--arms", "relu,smelu", *TINY, "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and "not a compare-activations run directory" in result.stderr


def test_smallest_reachable_p_and_replicas_needed():
    from reprokit.runners.compare import replicas_needed, smallest_p_holm

    assert smallest_p_holm(8, 4) == 4 * 2 / 256
    assert smallest_p_holm(4, 2) == 0.25 and smallest_p_holm(3, 8) == 1.0
    assert replicas_needed(4) == 8 and replicas_needed(1) == 6 and replicas_needed(8) == 9
    for m in range(1, 20):
        n = replicas_needed(m)
        assert smallest_p_holm(n, m) <= 0.05 < smallest_p_holm(n - 1, m)
    # The exact sign-flip test really reaches that bound: all differences of one sign.
    assert math.isclose(_exact_sign_flip(np.arange(1.0, 9.0)), 2 / 256)


def test_sweep_plot_has_a_parameter_panel(tmp_path):
    from reprokit.runners.compare_plot import plot_tradeoff

    specs = ["relu", *parse_sweep("smelu:beta=0.5|1|2")]
    rng = np.random.default_rng(1)
    summaries = [
        _summary(list(rng.uniform(0.1, 0.2, 6)), list(rng.uniform(0.7, 0.72, 4))) for _ in specs
    ]
    for s in summaries:
        s["pd_ci"] = {"rel": [s["pd"]["rel"] - 0.01, s["pd"]["rel"] + 0.01]}
    doc = build_compare_document(summaries, specs, "relu")
    assert doc["families"] == {"smelu": {"param": "beta", "specs": specs[1:]}}
    assert plot_tradeoff(doc, tmp_path, stem="p") == ["p.png", "p.svg"]
    svg = (tmp_path / "p.svg").read_text()
    assert "smelu: PD rel and AUC by beta" in svg and "relu (baseline)" in svg


def test_control_arm_vary_none_gives_zero_pd_in_every_arm(tmp_path):
    from reprokit.config import resolve_config
    from reprokit.runners.compare import compare_activations

    config = resolve_config(
        None,
        {**TINY_CONFIG, "replicas": 3, "vary": "none"},
    )
    assert list(config.vary) == []
    doc = compare_activations(config, "relu;smelu", out=tmp_path / "c", plot=False)
    assert doc["vary"] == []
    for arm in doc["arms"]:
        assert all(v == 0.0 for v in arm["pd"].values())
        assert len(set(arm["auc"]["per_replica"])) == 1  # bitwise identical replicas
    test = doc["arms"][1]["tests"]["rel"]
    assert test["statistic"] == 0.0 and test["p_value"] == 1.0
    # The AUC difference is the same in every replica, so the paired test is as strong as n allows.
    auc = doc["arms"][1]["tests"]["auc"]
    assert auc["statistic"] != 0.0 and math.isclose(auc["p_value"], 2 / 2**3)


def test_churn_by_measures_every_arm_and_the_gate_judges_each(tmp_path):
    from reprokit.config import resolve_config
    from reprokit.metrics.churn import topk_churn
    from reprokit.runners.ensemble import load_run_data
    from reprokit.store import RunStore

    out = tmp_path / "churn"
    args = ["compare-activations", "--arms", "relu;smelu:beta=1", *TINY, "--vary", "init"]
    result = runner.invoke(
        app, [*args, "--churn-by", "c2", "--top-k", "3", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert "top-3 churn" in result.stderr  # the table's column
    config = resolve_config(None, {**TINY_CONFIG, "replicas": 3, "vary": "init"})
    _, churn = load_run_data(config, "c2", 3)
    for arm in doc["arms"]:
        _, _, preds = RunStore(out / "arms" / arm["name"]).load_predictions()
        expected = topk_churn(preds[:, :, 0], churn.groups, 3)
        assert arm["churn"]["value"] == pytest.approx(expected.value, abs=1e-12)
        assert arm["churn"]["by"] == "c2"
    worst = max(arm["churn"]["value"] for arm in doc["arms"])
    best = min(arm["churn"]["value"] for arm in doc["arms"])
    assert best < worst
    gate = runner.invoke(app, ["gate", str(out), "--max-churn", str(best), "--json"])
    verdict = json.loads(gate.stdout)
    assert gate.exit_code == 1 and [r["passed"] for r in verdict["rules"]].count(True) == 1
