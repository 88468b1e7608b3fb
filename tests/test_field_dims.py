"""`model.field_dims` (explicit per-field embedding widths): the config's types and errors, the
table's widths and parameters against a hand computation, the engines, the CLI and the summary."""

import json
import math

import numpy as np
import pytest
import torch
from cli_checks import one_error_line
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.config import RunConfig, config_from_dict, resolve_config
from reprokit.data.encoding import VocabSizes, load_encoded
from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import create_embeddings
from reprokit.nn.mde import MixedDimEmbeddings, build_embeddings, mde_widths
from reprokit.overrides import overrides_label, parse_arm
from reprokit.runners.ensemble import choose_engine, train_ensemble
from reprokit.sources import replica_seeds
from reprokit.training.loop import train_replica

# ---- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"user_id": 16, "item_id": 8},
        "user_id=16,item_id=8",
        " user_id = 16 , item_id=8 ",
    ],
)
def test_every_spelling_resolves_to_one_mapping(value):
    cfg = resolve_config(None, {"model.field_dims": value})
    assert cfg.model.field_dims == {"user_id": 16, "item_id": 8}


def test_default_is_empty_and_an_old_manifest_without_the_key_loads():
    assert RunConfig().model.field_dims == {}
    doc = RunConfig().to_dict()
    del doc["model"]["field_dims"]
    assert config_from_dict(doc).validate().model.field_dims == {}
    stored = resolve_config(None, {"model.field_dims": "a=4"}).to_dict()
    assert config_from_dict(json.loads(json.dumps(stored))).model.field_dims == {"a": 4}


def test_toml_table_and_inline_table(tmp_path):
    section = tmp_path / "section.toml"
    section.write_text("[model]\nembedding = 'mde:alpha=0.5'\n[model.field_dims]\nuser_id = 16\n")
    inline = tmp_path / "inline.toml"
    inline.write_text("[model]\nfield_dims = {user_id = 16, item_id = 2}\n")
    assert resolve_config(section).model.field_dims == {"user_id": 16}
    assert resolve_config(inline).model.field_dims == {"user_id": 16, "item_id": 2}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"user_id": 0}, "model.field_dims.user_id must be a positive width (at least 1), got 0"),
        ({"user_id": -4}, "model.field_dims.user_id must be a positive width (at least 1), got -4"),
        ({"user_id": 2.5}, "model.field_dims.user_id must be an integer, got 2.5"),
        ({"user_id": True}, "model.field_dims.user_id must be an integer, got True"),
        ({"user_id": "x"}, "model.field_dims.user_id must be an integer, got 'x'"),
        ("user_id=x", "model.field_dims.user_id must be an integer, got 'x'"),
        ("user_id", "model.field_dims must look like name=width[,name=width...]"),
        (16, "model.field_dims must be a table of names = integers, e.g. {user_id = 16"),
        ([16, 8], "model.field_dims must be a table of names = integers"),
    ],
)
def test_bad_values_are_one_sentence_from_the_api(value, message):
    cfg = RunConfig()
    cfg.model.field_dims = value
    with pytest.raises(ReprokitError) as exc:
        cfg.validate()
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_wrong_toml_type_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nfield_dims = 16\n")
    with pytest.raises(ReprokitError) as exc:
        resolve_config(path)
    assert str(exc.value).startswith(f"model.field_dims in {path} must be a table of names")


@pytest.mark.parametrize("kind", ["hashed:buckets=8", "qr:buckets=4"])
def test_other_kinds_refuse_per_field_widths(kind):
    with pytest.raises(ReprokitError) as exc:
        resolve_config(None, {"model.embedding": kind, "model.field_dims": "c0=4"})
    assert str(exc.value).startswith(
        "model.field_dims (per-field widths) works with the table and mde embeddings, not 'hashed"
        if kind.startswith("hashed")
        else "model.field_dims (per-field widths) works with the table and mde embeddings, not 'qr"
    )


def test_an_arm_of_reprokit_compare_reads_an_inline_table():
    arm = parse_arm("model.field_dims={user_id=16,item_id=8}")
    assert arm == {"model.field_dims": {"user_id": 16, "item_id": 8}}
    assert overrides_label(arm) == "model.field_dims={user_id=16,item_id=8}"


# ---- the table ------------------------------------------------------------------------------------

SIZES = VocabSizes([3, 9, 33], keys=[], names=["a", "b", "c"])


def _built(kind, field_dims, dim=8, seed=0):
    table = build_embeddings(kind, SIZES, dim, sparse=False, field_dims=field_dims)
    table.reset_parameters(torch.Generator().manual_seed(seed))
    return table


def test_table_with_widths_params_by_hand():
    table = _built("table", {"a": 16, "c": 2})
    assert isinstance(table, MixedDimEmbeddings) and table.spec == "table"
    assert table.widths == [16, 8, 2]
    # rows 3·16 + 9·8 + 33·2; projections 16·8 (a) and 2·8 (c); b is 8 wide: none
    assert table.num_params() == 3 * 16 + 9 * 8 + 33 * 2 + 16 * 8 + 2 * 8 == 330
    assert isinstance(table.projections[1], torch.nn.Identity)
    assert table.field_widths(["a", "b", "c"]) == {"a": 16, "b": 8, "c": 2}


def test_mde_widths_override_the_alpha_rule_only_for_named_fields():
    assert mde_widths([3, 9, 33], 0.5, 8) == [8, 4, 2]
    table = _built("mde:alpha=0.5", {"b": 1})
    assert table.widths == [8, 1, 2] and table.spec == "mde:alpha=0.5"
    assert table.num_params() == 3 * 8 + 9 * 1 + 33 * 2 + 1 * 8 + 2 * 8


def test_a_named_field_keeps_its_rows_and_projects_them():
    table = _built("table", {"a": 3})
    ids = torch.tensor([[0, 1, 2], [2, 8, 32]])
    out = table(ids)
    proj = table.projections[0].weight  # [8, 3]
    assert torch.equal(out[:, 0], table.tables[0].weight[ids[:, 0]] @ proj.T)
    assert torch.equal(out[:, 1], table.tables[1].weight[ids[:, 1]])


def test_no_widths_is_the_kinds_own_table_draw_for_draw():
    ids = torch.tensor([[0, 1, 2], [2, 8, 32]])
    plain = create_embeddings("table", SIZES, 8, sparse=False)
    plain.reset_parameters(torch.Generator().manual_seed(3))
    assert torch.equal(_built("table", {}, seed=3)(ids), plain(ids))
    # naming a field at the embedding width changes nothing either
    assert torch.equal(_built("table", {"b": 8}, seed=3)(ids), plain(ids))


def test_unknown_field_names_the_fields_the_data_has():
    with pytest.raises(ReprokitError) as exc:
        build_embeddings("table", SIZES, 8, sparse=False, field_dims={"user": 4, "a": 2})
    assert str(exc.value) == (
        "model.field_dims names 'user', which the data does not have; its categorical fields: a, b, c"
    )


# ---- engines and the CLI --------------------------------------------------------------------------

SMALL = {
    "data.synth_rows": 1200,
    "data.synth_fields": 3,
    "data.synth_cardinality": 150,
    "optim.epochs": 1,
    "optim.batch_size": 64,
    "model.hidden": "16-8",
}


def test_control_arm_is_bitwise_identical_in_the_reference_loop():
    cfg = resolve_config(None, {**SMALL, "vary": "none", "model.field_dims": "c0=16,c2=2"})
    encoded = load_encoded(cfg.data)
    outs = [train_replica(encoded, cfg, r, replica_seeds(cfg.seed, cfg.vary, r)) for r in range(2)]
    assert np.array_equal(outs[0].predictions, outs[1].predictions)
    assert np.isfinite(outs[0].predictions).all() and math.isfinite(outs[0].log.loss.iloc[-1])


def test_train_ensemble_api_refuses_an_unknown_field_before_training(tmp_path):
    cfg = resolve_config(None, {**SMALL, "replicas": 2, "model.field_dims": "user_id=4"})
    with pytest.raises(ReprokitError) as exc:
        train_ensemble(cfg, out=tmp_path / "run")
    assert str(exc.value) == (
        "model.field_dims names 'user_id', which the data does not have; its categorical "
        "fields: c0, c1, c2"
    )
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_summary_block_shows_every_fields_width_and_the_params(tmp_path):
    out = tmp_path / "run"
    args = ["train-ensemble", "--field-dims", "c0=16,c2=2", "--synth-rows", "600"]
    args += ["--epochs", "1", "--replicas", "2", "--vary", "init", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    block = json.loads((out / "summary.json").read_text())["embedding"]
    encoded = load_encoded(resolve_config(None, {"data.synth_rows": 600}).data)
    n = [int(v) for v in encoded.vocab_sizes]
    assert block["kind"] == "table" and block["collision_rate"] == 0.0
    # the built-in data has 8 fields c0..c7; the 6 not named keep the embedding width 8
    assert encoded.field_names == [f"c{f}" for f in range(8)]
    assert block["field_dims"] == {"c0": 16, "c2": 2, **{f"c{f}": 8 for f in (1, 3, 4, 5, 6, 7)}}
    rows = n[0] * 16 + n[2] * 2 + 8 * sum(n[f] for f in (1, 3, 4, 5, 6, 7))
    assert block["params"] == rows + 16 * 8 + 2 * 8  # plus the two projections to width 8
    assert block["bytes"] == 4 * block["params"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"]["field_dims"] == {"c0": 16, "c2": 2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--field-dims", "c9=4"], "error: model.field_dims names 'c9', which the data does not"),
        (["--field-dims", "c0=0"], "error: model.field_dims.c0 must be a positive width"),
        (
            ["--field-dims", "c0=4.5"],
            "error: model.field_dims.c0 in command-line options must be an integer, got '4.5'",
        ),
        (
            ["--field-dims", "c0=4", "--embedding", "hashed:buckets=8"],
            "error: model.field_dims (per-field widths) works with the table and mde embeddings",
        ),
    ],
)
def test_bad_field_dims_on_the_command_line_exit_2_with_one_line(extra, message, tmp_path):
    args = ["train-ensemble", *extra, "--synth-rows", "400", "--out", str(tmp_path / "run")]
    line = one_error_line(CliRunner().invoke(app, args))
    assert line.startswith(message), line
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_auto_engine_trains_field_dims_where_the_stack_cannot():
    cfg = resolve_config(None, {**SMALL, "model.field_dims": "c0=4"})
    from reprokit.components.tables import EMBEDDING_TABLES

    stacked = EMBEDDING_TABLES.get("mde").capabilities.stacked
    assert choose_engine(cfg) == ("vectorized" if stacked else "process")
