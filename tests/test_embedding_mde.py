"""`mde:alpha=A[,base_dim=D]` (mixed-dimension embeddings): the spec grammar, the widths of the
α-power rule against a hand computation, the projections and their parameters, the engines."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from engine_cases import SMALL, TOLERANCE
from engine_cases import seeds_for as _seeds
from engine_cases import small_config as _config
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.components.tables import parse_table_spec
from reprokit.config import resolve_config
from reprokit.data.encoding import load_encoded
from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import create_embeddings, embedding_account
from reprokit.nn.mde import MixedDimEmbeddings, mde_widths
from reprokit.runners.ensemble import choose_engine
from reprokit.sources import replica_seeds
from reprokit.training import vectorized as vec
from reprokit.training.loop import train_replica

# ---- spec grammar ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("mde:alpha=0.5", "mde:alpha=0.5"),
        (" MDE : base_dim=16 , alpha=.25", "mde:alpha=0.25,base_dim=16"),
        ("mde:alpha=1", "mde:alpha=1.0"),
        ("mde:alpha=0", "mde:alpha=0.0"),
    ],
)
def test_specs_resolve_to_one_canonical_string(spec, canonical):
    assert str(parse_table_spec(spec)) == canonical
    assert resolve_config(None, {"model.embedding": spec}).model.embedding == canonical


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mde:alpha=-1", "mde parameter alpha must be a number from 0 to 1, got '-1'"),
        ("mde:alpha=1.5", "mde parameter alpha must be a number from 0 to 1, got '1.5'"),
        ("mde:alpha=nan", "mde parameter alpha must be a number from 0 to 1, got 'nan'"),
        ("mde:alpha=x", "mde parameter alpha must be a number from 0 to 1, got 'x'"),
        ("mde", "embedding table 'mde' needs alpha: write mde:alpha=A[,base_dim=D]"),
        ("mde:base_dim=4", "embedding table 'mde' needs alpha: write mde:alpha=A[,base_dim=D]"),
        ("mde:alpha=0.5,base_dim=0", "mde parameter base_dim must be at least 1, got 0"),
        ("mde:alpha=0.5,dims=3", "embedding table 'mde' accepts: alpha, base_dim"),
        ("lsh", "mde:alpha=A[,base_dim=D]"),
    ],
)
def test_bad_specs_are_one_sentence(spec, message):
    with pytest.raises(ReprokitError) as exc:
        parse_table_spec(spec)
    assert message in str(exc.value)


@pytest.mark.parametrize("spec", ["mde:alpha=-1", "mde", "mde:alpha=oops"])
def test_bad_spec_on_the_command_line_exits_2_with_one_line(spec, tmp_path):
    args = ["train-ensemble", "--embedding", spec, "--synth-rows", "200", "--out", str(tmp_path)]
    one_error_line(CliRunner().invoke(app, args))
    assert not (tmp_path / "manifest.json").exists()


# ---- widths ---------------------------------------------------------------------------------------


def test_widths_follow_the_alpha_power_rule_by_hand():
    # rows n = (33, 3, 9, 3000), d0 = 8, α = 0.5: λ = 8·√3, the smallest field (n = 3) gets 8;
    # 8·√(3/33) = 2.41 → 2 → 2;  8·√(3/9) = 4.62 → 5 → 2^round(2.32) = 4;
    # 8·√(3/3000) = 0.25 → 0 → clamped to 1 → 1
    assert mde_widths([33, 3, 9, 3000], 0.5, 8) == [2, 8, 4, 1]
    # α = 1, d0 = 16: 16·2/6 = 5.33 → 5 → 4; 16·2/3 = 10.67 → 11 → 2^round(3.46) = 8
    assert mde_widths([2, 6, 3], 1.0, 16) == [16, 4, 8]
    # α = 0: every field gets base_dim; a base_dim off the powers of two is rounded like the rest
    assert mde_widths([5, 500, 50000], 0.0, 8) == [8, 8, 8]
    assert mde_widths([5, 500], 0.0, 12) == [16, 16]
    assert mde_widths([], 0.5, 8) == []


def test_widths_of_a_table_built_from_training_vocabularies():
    cfg = resolve_config(None, {"data.synth_rows": 800, "data.synth_fields": 3})
    encoded = load_encoded(cfg.data)
    n = [int(v) for v in encoded.vocab_sizes]
    table = create_embeddings("mde:alpha=0.5,base_dim=16", encoded.vocab_sizes, 4, sparse=False)
    expected = []
    for v in n:  # the rule written out once more, per field, in plain Python
        d = 16 if v == min(n) else max(1, round(16 * (min(n) / v) ** 0.5))
        expected.append(2 ** round(math.log2(d)))
    assert table.widths == expected
    assert [t.weight.shape for t in table.tables] == [
        (v, w) for v, w in zip(n, expected, strict=True)
    ]


# ---- forward and accounting -----------------------------------------------------------------------


def _table(spec="mde:alpha=0.5", sizes=(3, 9, 33), dim=8, seed=0):
    table = create_embeddings(spec, list(sizes), dim, sparse=False)
    table.reset_parameters(torch.Generator().manual_seed(seed))
    return table


def test_output_is_each_fields_row_projected_to_the_common_width():
    table = _table()
    assert isinstance(table, MixedDimEmbeddings) and table.widths == [8, 4, 2]
    ids = torch.tensor([[0, 1, 2], [2, 8, 32], [1, 0, 17]])
    out = table(ids)
    assert out.shape == (3, 3, 8) and table.output_dim == 24
    for f in range(3):
        row = table.tables[f].weight[ids[:, f]]
        proj = table.projections[f]
        want = row if f == 0 else row @ proj.weight.T  # field 0 is already 8 wide: no projection
        assert torch.equal(out[:, f], want)
    assert isinstance(table.projections[0], torch.nn.Identity)


def test_params_and_bytes_count_the_projections_by_hand():
    table = _table()
    # tables 3·8 + 9·4 + 33·2, projections 4·8 + 2·8 (none for the 8-wide field)
    params = 3 * 8 + 9 * 4 + 33 * 2 + 4 * 8 + 2 * 8
    account = embedding_account(table, ["a", "b", "c"])
    assert account["kind"] == "mde:alpha=0.5"
    assert account["params"] == params == 174 and account["bytes"] == 4 * params
    assert account["collision_rate"] == 0.0
    assert account["field_collision_rate"] == {"a": 0.0, "b": 0.0, "c": 0.0}
    # base_dim above the embedding dimension: every field is projected down
    wide = _table("mde:alpha=0.5,base_dim=16", dim=4)
    assert wide.widths == [16, 8, 4]
    assert wide.num_params() == 3 * 16 + 9 * 8 + 33 * 4 + (16 + 8) * 4


def test_alpha_zero_is_the_plain_table_draw_for_draw():
    ids = torch.tensor([[0, 1, 2], [2, 8, 32]])
    plain = _table("table", seed=4)
    assert torch.equal(_table("mde:alpha=0", seed=4)(ids), plain(ids))


def test_initial_projected_embeddings_have_the_table_scale():
    # rows N(0, 0.01) through N(0, 1/d) projections: std 0.01 (torch's Linear default would give
    # about 0.01/√3, an unprojected N(0, 1) about 1)
    table = _table("mde:alpha=0.25", sizes=(2, 4000), dim=64, seed=1)
    assert table.widths == [64, 8]
    with torch.no_grad():
        out = table(torch.stack([torch.arange(4000) % 2, torch.arange(4000)], dim=1))
    assert abs(float(out[:, 1].std()) - 0.01) < 0.0015


# ---- engines --------------------------------------------------------------------------------------


def test_auto_stacks_mde():
    assert choose_engine(_config("init", "mde:alpha=0.5")) == "vectorized"
    assert choose_engine(_config("init", "table", **{"model.field_dims": "c0=4"})) == "vectorized"
    assert choose_engine(_config("init", "mde:alpha=0.5", engine="vectorized")) == "vectorized"


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_control_arm_is_bitwise_identical_and_init_arm_is_not(optimizer):
    encoded = load_encoded(resolve_config(None, SMALL).data)
    extra = {"optim.name": optimizer, "model.dropout": 0.1}
    cfg = _config("none", "mde:alpha=0.5", **extra)
    seeds = [replica_seeds(cfg.seed, cfg.vary, r) for r in range(2)]
    outs = [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]
    assert np.array_equal(outs[0].predictions, outs[1].predictions)
    assert outs[0].log.equals(outs[1].log)
    assert np.isfinite(outs[0].predictions).all() and math.isfinite(outs[0].log.loss.iloc[-1])
    varied = _config("init", "mde:alpha=0.5", **extra)
    other = train_replica(encoded, varied, 1, replica_seeds(varied.seed, varied.vary, 1))
    assert not np.array_equal(other.predictions, outs[0].predictions)


def test_train_ensemble_through_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["train-ensemble", "--embedding", "MDE:alpha=.5", "--synth-rows", "600"]
    args += ["--epochs", "1", "--replicas", "2", "--vary", "none", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "mde:alpha=0.5" in (out / "manifest.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    block = summary["embedding"]
    assert block["kind"] == "mde:alpha=0.5" and block["collision_rate"] == 0.0
    cfg = resolve_config(
        None, {"data.synth_rows": 600, "model.embedding": "mde:alpha=0.5", "vary": "none"}
    )
    encoded = load_encoded(cfg.data)
    table = create_embeddings(
        cfg.model.embedding, encoded.vocab_sizes, cfg.model.embedding_dim, False
    )
    assert block["params"] == table.num_params()
    preds = [pd.read_parquet(out / f"replicas/{r:03d}/predictions.parquet") for r in range(2)]
    assert np.array_equal(preds[0]["prediction"].to_numpy(), preds[1]["prediction"].to_numpy())


# ---- the vectorized engine's stacked form -----------------------------------------------------------

#: Mixed widths in every test below: the α-rule's 16 (base_dim above the embedding dimension: every
#: field projected), explicit widths 16, 8 (no projection) and 1 (its row gradient a per-replica
#: gemv, like torch's) on a `table`, and 2 over the α-rule's 8.
STACKED = [
    ("mde:alpha=0.5,base_dim=16", {}),
    ("table", {"model.field_dims": "c0=16,c2=1"}),
    ("mde:alpha=0.5", {"model.field_dims": "c1=2"}),
]


def test_stacked_layout_pads_rows_and_keeps_the_projections():
    from reprokit.data.encoding import VocabSizes
    from reprokit.nn.mde import build_embeddings

    sizes = VocabSizes([3, 9, 5], keys=[], names=["a", "b", "c"])
    table = build_embeddings("table", sizes, 4, False, field_dims={"a": 6, "c": 2})
    table.reset_parameters(torch.Generator().manual_seed(0))
    layout = table.stacked_layout()
    assert (layout.num_rows, layout.dim, layout.out_dim) == (17, 6, 4)
    assert layout.offsets.tolist() == [0, 3, 12] and layout.widths == (6, 4, 2)
    assert layout.projected == (True, False, True)
    weight = table.stacked_weight()
    assert weight.shape == (17, 6)
    assert torch.equal(weight[:3], table.tables[0].weight)
    assert torch.equal(weight[3:12, :4], table.tables[1].weight) and not weight[3:12, 4:].any()
    assert torch.equal(weight[12:, :2], table.tables[2].weight) and not weight[12:, 2:].any()
    first, last = table.stacked_projections()
    assert torch.equal(first, table.projections[0].weight) and first.shape == (4, 6)
    assert torch.equal(last, table.projections[2].weight) and last.shape == (4, 2)


@pytest.mark.parametrize(("spec", "extra"), STACKED)
def test_one_step_gradients_are_autograds(spec, extra):
    """The hand-written backward against autograd on the reference model: rows g·P_f (nothing in
    the padded columns) and projections gᵀ·rows, per replica, from one batch."""
    from reprokit.training.loop import build_model
    from reprokit.training.stacked.backward import Batch, Stepper
    from reprokit.training.stacked.layout import build_stack, pad_rows, round_up

    cfg = _config("init", spec, **extra)
    encoded = load_encoded(cfg.data)
    seeds = _seeds(cfg, range(2))
    stack = build_stack(cfg, encoded, [0, 1], seeds)
    b = 50
    cat, num, y = (
        torch.as_tensor(a[:b]) for a in (encoded.train_cat, encoded.train_num, encoded.train_y)
    )
    base = torch.arange(2).view(2, 1, 1) * stack.vocab_total
    padded = [pad_rows(t, round_up(b), 0)[None] for t in (stack.layout.rows(cat), num, y)]
    stepper = Stepper(stack)
    with torch.no_grad():
        loss, _, _, table_grad = stepper(Batch(padded[0] + base, padded[1], padded[2], None, b))
    for r in range(2):
        model = build_model(cfg, encoded.vocab_sizes, num.shape[1], 1)
        model.reset_parameters(torch.Generator().manual_seed(seeds[r]["init"]))
        ref = torch.nn.functional.binary_cross_entropy_with_logits(model(cat, num), y)
        ref.backward()
        assert abs(float(loss[r]) - float(ref.detach())) < 1e-6
        emb = model.embeddings
        linears = [p for p in emb.projections if isinstance(p, torch.nn.Linear)]
        assert len(linears) == len(stepper.p_grads) >= 1
        for proj, grad in zip(linears, stepper.p_grads, strict=True):
            torch.testing.assert_close(grad[r], proj.weight.grad, rtol=1e-4, atol=1e-9)
        dense = torch.zeros_like(stack.table[r])
        mine = table_grad.for_replica(r, stack.vocab_total)
        dense.index_add_(0, mine.rows - r * stack.vocab_total, mine.values)
        start = 0
        for table, w in zip(emb.tables, emb.widths, strict=True):
            rows = dense[start : start + table.num_embeddings]
            torch.testing.assert_close(
                rows[:, :w], table.weight.grad.to_dense(), rtol=1e-4, atol=1e-8
            )
            assert not rows[:, w:].any()  # the padding gets no gradient
            start += table.num_embeddings


@pytest.mark.parametrize("optimizer", ["adagrad", "adam", "sgd"])
@pytest.mark.parametrize(("spec", "extra"), STACKED)
def test_replica_k_matches_the_process_engine(spec, extra, optimizer):
    cfg = _config("init,data-order", spec, **{"optim.name": optimizer, **extra})
    encoded = load_encoded(cfg.data)
    seeds = _seeds(cfg, range(2))
    ref = [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]
    out = vec.train_replicas(encoded, cfg, [0, 1], seeds)
    for a, b in zip(ref, out, strict=True):
        assert np.abs(a.predictions - b.predictions).max() < TOLERANCE
        np.testing.assert_allclose(b.log.loss, a.log.loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.log.grad_norm, a.log.grad_norm, rtol=1e-4)
    assert not np.array_equal(out[0].predictions, out[1].predictions)


@pytest.mark.parametrize(("spec", "extra"), STACKED)
def test_control_arm_is_bitwise_identical_in_the_vectorized_engine(spec, extra):
    cfg = _config("none", spec, **{"model.dropout": 0.1, **extra})
    encoded = load_encoded(cfg.data)
    outs = vec.train_replicas(encoded, cfg, [0, 1, 2], _seeds(cfg, range(3)))
    for out in outs[1:]:
        assert np.array_equal(out.predictions, outs[0].predictions)
        assert out.log.equals(outs[0].log)


def test_a_replica_alone_has_the_bits_it_has_in_a_stack():
    spec, extra = STACKED[1]
    cfg = _config("init,data-order", spec, **extra)
    encoded = load_encoded(cfg.data)
    seeds = _seeds(cfg, range(3))
    full = vec.train_replicas(encoded, cfg, [0, 1, 2], seeds)
    alone = vec.train_replicas(encoded, cfg, [2], seeds[2:])
    assert np.array_equal(alone[0].predictions, full[2].predictions)
    assert alone[0].log.equals(full[2].log)


def test_padding_stays_zero_through_training(monkeypatch):
    """Every optimizer step leaves the padded columns of the stacked rows exactly 0."""
    from reprokit.training.stacked import layout

    built = []
    original = layout.build_stack

    def keep(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(vec, "build_stack", keep)
    spec, extra = STACKED[1]
    for optimizer in ("adagrad", "adam"):
        cfg = _config("init", spec, **{"optim.name": optimizer, **extra})
        vec.train_replicas(load_encoded(cfg.data), cfg, [0, 1], _seeds(cfg, range(2)))
        stack = built[-1]
        start = 0
        for f, w in enumerate(stack.layout.widths):
            n = int(stack.layout.offsets[f + 1]) if f + 1 < len(stack.layout.widths) else None
            rows = stack.table[:, start:n]
            assert rows[..., :w].abs().sum() > 0 and not rows[..., w:].any()
            start = n


def test_train_ensemble_vectorized_through_the_cli(tmp_path):
    out = tmp_path / "run"
    args = ["train-ensemble", "--embedding", "mde:alpha=0.5,base_dim=16", "--synth-rows", "600"]
    args += ["--epochs", "1", "--replicas", "2", "--engine", "vectorized", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["engine"] == "vectorized"
    block = json.loads((out / "summary.json").read_text())["embedding"]
    assert block["field_dims"] == {f"c{f}": 16 for f in range(8)}
