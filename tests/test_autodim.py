"""`reprokit autodim`: the search table, the bi-level cadence, derivation, the retrained widths,
the random baseline's budget, a label-free field, the study document and bad input."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import RunConfig
from reprokit.errors import ReprokitError
from reprokit.nn.autodim import AutoDimEmbeddings, gumbel_temperature
from reprokit.runners.autodim import (
    AutoDimSettings,
    autodim,
    base_config,
    majority_dims,
    parse_candidates,
    random_dims,
    run_search,
    search_agreement,
    table_params,
)
from tests.cli_checks import one_error_line


def _toy(n: int = 1200, vocab: int = 30, seed: int = 0) -> types.SimpleNamespace:
    """Three fields: the label is the dot product of rank-8 latent vectors of `a` and `b`;
    `noise` never enters it."""
    rng = np.random.default_rng(seed)
    a, b, c = (rng.integers(1, vocab, n) for _ in range(3))
    ua, vb = rng.normal(size=(vocab, 8)), rng.normal(size=(vocab, 8))
    p = 1.0 / (1.0 + np.exp(-(ua[a] * vb[b]).sum(1)))
    y = (rng.random(n) < p).astype(np.float32)[:, None]
    return types.SimpleNamespace(
        train_cat=np.stack([a, b, c], 1).astype(np.int64),
        train_num=np.zeros((n, 0), np.float32),
        train_y=y,
        vocab_sizes=[vocab] * 3,
        field_names=["a", "b", "noise"],
    )


def _config(batch_size: int = 128) -> RunConfig:
    cfg = RunConfig()
    cfg.optim.batch_size = batch_size
    return cfg.validate()


# ------------------------------------------------------------------------------- search table
def test_temperature_schedule_is_the_papers() -> None:
    for t in (0, 1, 10, 1000, 19_799, 19_800, 19_801, 50_000):
        assert gumbel_temperature(t) == pytest.approx(max(0.01, 1.0 - 0.00005 * t), abs=1e-12)
    assert gumbel_temperature(1000) == pytest.approx(0.95)
    assert gumbel_temperature(10**6) == 0.01


def test_gumbel_softmax_weights_match_an_independent_computation() -> None:
    table = AutoDimEmbeddings([5, 7], [2, 4, 8])
    table.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        table.alpha.copy_(torch.tensor([[0.3, -0.2, 1.0], [0.0, 0.5, -1.0]]))
    table.uniform, table.temperature = False, 0.7
    table.generator = torch.Generator().manual_seed(123)
    got = table.mixing_weights().detach()
    u = torch.rand((2, 3), generator=torch.Generator().manual_seed(123)).double()
    g = -torch.log(-torch.log(u))
    alpha = table.alpha.detach().double()
    logp = alpha - torch.logsumexp(alpha, dim=1, keepdim=True)
    want = torch.exp((logp + g) / 0.7)
    want = want / want.sum(1, keepdim=True)
    assert torch.allclose(got.double(), want, atol=1e-6)
    table.uniform = True
    assert torch.equal(table.mixing_weights(), torch.full((2, 3), 1 / 3))


def test_weight_sharing_slices_share_storage() -> None:
    table = AutoDimEmbeddings([6, 9], [2, 4, 8])
    table.reset_parameters(torch.Generator().manual_seed(1))
    assert len(list(table.tables[0].parameters())) == 1  # one d_N table per field, no copies
    for f in range(2):
        weight = table.tables[f].weight
        assert weight.shape[1] == 8
        for n, d in enumerate((2, 4, 8)):
            view = table.candidate_view(f, n)
            assert view.shape == (weight.shape[0], d)
            assert view.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
            assert view.data_ptr() == weight.data_ptr()  # the *first* d coordinates
    with torch.no_grad():
        table.tables[1].weight[3, 1] = 42.0
    assert all(table.candidate_view(1, n)[3, 1].item() == 42.0 for n in range(3))
    # candidate 0 (d=2) alone gives gradient to the first 2 coordinates only
    table.uniform = False
    table.generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        table.alpha.copy_(torch.tensor([[50.0, -50.0, -50.0]] * 2))
    table.temperature = 0.01
    ids = torch.tensor([[1, 2], [3, 4], [5, 6]])
    table(ids).sum().backward()
    grad = table.tables[0].weight.grad
    assert grad[:, 2:].abs().max().item() == 0.0
    assert grad[:, :2].abs().max().item() > 0.0


# ------------------------------------------------------------------------------------ cadence
@pytest.mark.parametrize("warmup,every", [(5, 10), (0, 3)])
def test_bilevel_alternation_at_the_stated_cadence(warmup: int, every: int) -> None:
    enc = _toy(n=900)
    settings = AutoDimSettings(
        candidates=(2, 4), search_epochs=2, warmup_steps=warmup, alpha_every=every
    )
    cfg = base_config(_config(64), settings)
    result = run_search(enc, cfg, settings, 0)
    steps = result["steps"]
    assert steps == 2 * math.ceil((900 - 100) / 64)  # 800 search rows, the last batch kept (32)
    want = [t for t in range(warmup, steps) if (t - warmup + 1) % every == 0]
    assert result["alpha_steps"] == want
    traj = result["trajectory"]
    for t, probs in zip(traj["step"], traj["probabilities"], strict=True):
        if t < warmup + every - 1:  # α has not moved before its first step
            assert np.allclose(probs, 0.5)
    assert result["final_temperature"] == pytest.approx(1 - 0.00005 * (steps - 1))
    same = run_search(enc, cfg, settings, 0, variant="same-batch")
    assert same["alpha_steps"] == list(range(warmup, steps))
    again = run_search(enc, cfg, settings, 0)  # a search is a function of its seed
    assert again["probabilities"] == result["probabilities"]
    other = run_search(enc, cfg, settings, 1)
    assert other["seed"] != result["seed"]


def test_field_without_effect_on_the_label_gets_the_smallest_width() -> None:
    enc = _toy(n=6000, vocab=50)
    settings = AutoDimSettings(
        candidates=(2, 16), search_epochs=3, warmup_steps=40, alpha_lr=0.05, search_lr=0.003
    )
    cfg = base_config(_config(128), settings)
    per_seed = [run_search(enc, cfg, settings, k)["dims"] for k in range(3)]
    final = majority_dims(per_seed)
    assert final["noise"] == 2
    assert final["a"] == 16 and final["b"] == 16  # the interacting ids get the large width


# ------------------------------------------------------------------------------------- derive
def test_majority_ties_go_to_the_smaller_width_and_agreement() -> None:
    seeds = [{"x": 8, "y": 2, "z": 4}, {"x": 2, "y": 2, "z": 16}, {"x": 8, "y": 2, "z": 8}]
    assert majority_dims(seeds) == {"x": 8, "y": 2, "z": 4}
    assert majority_dims(seeds[:2]) == {"x": 2, "y": 2, "z": 4}
    agree = search_agreement(seeds)
    assert agree["all_agree"] == pytest.approx(1 / 3)

    def pearson(u: list[float], v: list[float]) -> float:
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        num = sum((a - mu) * (b - mv) for a, b in zip(u, v, strict=True))
        den = math.sqrt(sum((a - mu) ** 2 for a in u) * sum((b - mv) ** 2 for b in v))
        return num / den

    rows = [[s["x"], s["y"], s["z"]] for s in seeds]
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert agree["pearson"] == pytest.approx(sum(pearson(rows[i], rows[j]) for i, j in pairs) / 3)
    constant = search_agreement([{"x": 2, "y": 2}, {"x": 2, "y": 4}])
    assert constant["pearson"] is None and constant["all_agree"] == 0.5


def test_random_has_the_searched_parameter_budget() -> None:
    names = [f"f{i}" for i in range(6)]
    vocab = [100] * 6
    searched = dict(zip(names, [2, 2, 16, 4, 2, 8], strict=True))
    rand = random_dims(names, vocab, (2, 4, 8, 16), searched, seed=7)
    assert rand != searched
    assert sum(v * rand[f] for f, v in zip(names, vocab, strict=True)) == sum(
        v * searched[f] for f, v in zip(names, vocab, strict=True)
    )
    assert random_dims(names, vocab, (2, 4, 8, 16), searched, seed=7) == rand  # seeded
    uneven = [10, 300, 55, 1000, 7, 120]
    near = random_dims(names, uneven, (2, 4, 8, 16), searched, seed=7)
    target = table_params(searched, names, uneven)
    assert abs(table_params(near, names, uneven) - target) <= 0.02 * target


# ------------------------------------------------------------------------------------ retrain
def test_study_retrains_the_derived_widths(tmp_path: Path) -> None:
    from reprokit.config import config_from_dict
    from reprokit.data.encoding import load_encoded
    from reprokit.rundir import load_run
    from reprokit.training.loop import build_model

    cfg = RunConfig()
    cfg.data.synth_rows, cfg.data.synth_fields, cfg.data.synth_cardinality = 1500, 3, 40
    cfg.replicas, cfg.optim.epochs, cfg.optim.batch_size, cfg.vary = 2, 1, 128, ["init"]
    cfg = cfg.validate()
    settings = AutoDimSettings(
        candidates=(2, 4), search_seeds=2, search_epochs=1, warmup_steps=2, alpha_every=2
    )
    out = tmp_path / "ad"
    enc = load_encoded(cfg.data)
    doc = autodim(cfg, settings, out, encoded=enc, plot=False)
    assert doc["kind"] == "autodim" and doc["schema_version"] == 1
    assert [m["method"] for m in doc["methods"]] == [
        "full",
        "autodim",
        "autodim-s",
        "mde",
        "random",
    ]
    assert doc["dims"] == majority_dims(doc["dims_per_seed"])
    assert set(doc["search_agreement"]) >= {"all_agree", "pearson"}
    methods = {m["method"]: m for m in doc["methods"]}
    for name, method in methods.items():
        manifest = json.loads((out / "arms" / name / "manifest.json").read_text())
        arm_cfg = config_from_dict(manifest["config"])
        if name != "mde":
            assert manifest["config"]["model"]["field_dims"] == method["dims"]
        model = build_model(arm_cfg, enc.vocab_sizes, enc.train_num.shape[1], 1)
        widths = [t.embedding_dim for t in model.embeddings.tables]
        assert widths == [method["dims"][f] for f in enc.field_names]
        assert model.embeddings.dim == 4  # every width is projected to the largest candidate
        assert method["params"] == model.embeddings.num_params()
        assert set(method) >= {"dims", "params", "auc", "logloss", "pd", "pd_ci"}
        assert method["table_params"] == sum(
            v * method["dims"][f] for f, v in zip(enc.field_names, enc.vocab_sizes, strict=True)
        )
    assert methods["full"]["dims"] == dict.fromkeys(enc.field_names, 4)
    assert methods["full"]["tests"] is None and methods["autodim"]["tests"]["auc"]["n"] == 2
    run = load_run(out)
    assert run.kind == "autodim" and {a["label"] for a in run.compare["arms"]} >= {"autodim"}
    # resuming trains nothing new and gives the same document
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "search").iterdir()}
    assert sorted(stamps) == [
        "bilevel-0.json",
        "bilevel-1.json",
        "same-batch-0.json",
        "same-batch-1.json",
    ]
    again = autodim(cfg, settings, out, encoded=enc, plot=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "search").iterdir()} == stamps
    assert again["dims"] == doc["dims"] and again["dims_per_seed"] == doc["dims_per_seed"]
    result = CliRunner().invoke(app, ["gate", str(out), "--arm", "autodim", "--max-pd", "10"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    sections = json.loads((out / "report.json").read_text())["sections"]
    search = sections["autodim-search"]
    assert [r["final"] for r in search["rows"]] == [doc["dims"][f] for f in enc.field_names]
    assert [r["method"] for r in sections["autodim-methods"]["rows"]][:2] == ["full", "autodim"]
    assert 'aria-label="autodim-alpha"' in (out / "report.html").read_text()


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args,needle",
    [
        (["--candidates", "0,4"], "positive widths"),
        (["--candidates", "8"], "at least two distinct widths"),
        (["--candidates", "4,4"], "at least two distinct widths"),
        (["--candidates", "2,x"], "comma-separated whole widths"),
        (["--objective", "pd"], "unknown --objective"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = CliRunner().invoke(
        app, ["autodim", "--synth-rows", "300", "--out", str(tmp_path / "x"), *args]
    )
    assert needle in one_error_line(result)
    assert not (tmp_path / "x").exists()


def test_no_categorical_fields_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[data]\nsynth_fields = 0\nsynth_rows = 400\n")
    result = CliRunner().invoke(
        app, ["autodim", "--config", str(config), "--out", str(tmp_path / "x")]
    )
    assert "has none" in one_error_line(result)


def test_api_raises_the_same_sentences() -> None:
    with pytest.raises(ReprokitError, match="at least two distinct"):
        parse_candidates("16")
    with pytest.raises(ReprokitError, match="positive widths"):
        parse_candidates([0, 4])


def test_auc_pd_pick_and_candidate_sets() -> None:
    from reprokit.runners.autodim import objective_sets, pick_from_front

    points = [
        {"auc": 0.780, "pd_rel": 0.120, "table_params": 50},  # dominated by 2
        {"auc": 0.7802, "pd_rel": 0.100, "table_params": 40},  # front, within 0.001 of 0.781
        {"auc": 0.781, "pd_rel": 0.110, "table_params": 60},  # front, best AUC
        {"auc": 0.770, "pd_rel": 0.090, "table_params": 10},  # front, too far below in AUC
    ]
    assert pick_from_front(points, 0.001) == 1
    assert pick_from_front(points, 0.0) == 2
    assert pick_from_front(points, 0.02) == 3
    searches = [
        {"checkpoints": [{"dims": {"a": 2}}, {"dims": {"a": 4}}]},
        {"checkpoints": [{"dims": {"a": 4}}, {"dims": {"a": 8}}]},
    ]
    assert objective_sets(searches, {"a": 8}) == [{"a": 8}, {"a": 2}, {"a": 4}]
