"""Embedding table kinds (`hashed`, `qr`): the spec grammar, the fixed 64-bit hash, the rows ids
read, the accounting (params, bytes, collision rate) and training in both engines."""

import json
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from engine_cases import SMALL, TOLERANCE
from engine_cases import seeds_for as _seeds
from engine_cases import small_config as _config
from typer.testing import CliRunner

import reprokit.training.vectorized as vec
from reprokit.cli import app
from reprokit.components.tables import EMBEDDING_TABLES, parse_table_spec
from reprokit.config import resolve_config
from reprokit.data.encoding import OOV_KEY, VocabSizes, encode, load_encoded, value_keys
from reprokit.data.layout import Dataset, DatasetSchema
from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import collision_rates, create_embeddings, embedding_account
from reprokit.nn.hashed import GOLDEN, HashedEmbeddings, bucket_of, splitmix64
from reprokit.nn.qr import QREmbeddings
from reprokit.runners.ensemble import choose_engine
from reprokit.sources import replica_seeds
from reprokit.training.loop import train_replica

# ---- spec grammar ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("table", "table"),
        ("hashed:buckets=8", "hashed:buckets=8,seed=0"),
        (" HASHED : seed=3 , buckets=8", "hashed:buckets=8,seed=3"),
        ("qr:buckets=4", "qr:buckets=4,op=mult"),
        ("qr:op=CONCAT,buckets=4", "qr:buckets=4,op=concat"),
    ],
)
def test_specs_resolve_to_one_canonical_string(spec, canonical):
    assert str(parse_table_spec(spec)) == canonical
    assert resolve_config(None, {"model.embedding": spec}).model.embedding == canonical
    assert EMBEDDING_TABLES.get(canonical).name == canonical.partition(":")[0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("hashed:buckets=0", "hashed parameter buckets must be at least 1, got 0"),
        ("hashed", "embedding table 'hashed' needs buckets: write hashed:buckets=N[,seed=0]"),
        ("hashed:buckets=x", "hashed parameter buckets must be an integer, got 'x'"),
        (
            "lsh",
            "unknown embedding table 'lsh'; choose one of: table; hashed:buckets=N[,seed=0]; "
            "qr:buckets=N[,op=mult|add|concat]",
        ),
        (
            "qr:buckets=3,width=2",
            "unknown parameter 'width' in 'qr:buckets=3,width=2'; embedding table 'qr' accepts: "
            "buckets, op",
        ),
        ("qr:buckets=3,op=max", "qr parameter op must be one of mult, add, concat, got 'max'"),
        ("table:x=1", "embedding table 'table' takes no parameters"),
        ("hashed:buckets=2,buckets=3", "parameter 'buckets' is given twice"),
    ],
)
def test_bad_specs_are_one_sentence(spec, message):
    with pytest.raises(ReprokitError) as exc:
        parse_table_spec(spec)
    assert message in str(exc.value)


@pytest.mark.parametrize("spec", ["hashed:buckets=0", "lsh", "qr:buckets=3,width=2"])
def test_bad_spec_on_the_command_line_exits_2_with_one_line(spec, tmp_path):
    args = ["train-ensemble", "--embedding", spec, "--synth-rows", "200", "--out", str(tmp_path)]
    one_error_line(CliRunner().invoke(app, args))


# ---- the hash -------------------------------------------------------------------------------------


def test_splitmix64_is_the_published_generator():
    # SplitMix64 seeded with 0 (state += gamma, then the finaliser): its first output, as printed
    # by the reference implementation (Vigna, prng.di.unimi.it/splitmix64.c)
    assert int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF
    # the second output: state 2·gamma, i.e. splitmix64(gamma)
    second = int(splitmix64(np.array([GOLDEN], dtype=np.uint64))[0])
    assert second == 0x6E789E6AA1B965F4


#: Computed once (this implementation) and frozen: a change of hash changes every run's rows.
FIXED_INT_IDS = [0, 1, 42, -7, 2**40]
FIXED_INT_ROWS = {0: [535, 465, 413, 752, 641], 7: [940, 533, 908, 363, 756]}
FIXED_STR_KEYS = {"user_1": 0xDF9946AB6C4ADAD0, "é": 0x2F19F3EF8BBF1ACB, "": 0xB4B2797457A0A6E4}
FIXED_STR_ROWS = [292, 44]  # user_1, é at 1000 buckets, seed 0


def test_hash_of_fixed_ids_is_fixed():
    keys = value_keys(np.array(FIXED_INT_IDS))
    assert keys[3] == np.uint64(2**64 - 7)  # an integer id is its own two's complement
    for seed, rows in FIXED_INT_ROWS.items():
        assert bucket_of(keys, 1000, seed).tolist() == rows
    strings = value_keys(np.array(list(FIXED_STR_KEYS), dtype=object))
    assert [int(k) for k in strings] == list(FIXED_STR_KEYS.values())
    assert bucket_of(strings[:2], 1000).tolist() == FIXED_STR_ROWS
    # integral floats are the integers they hold (a nullable int column read as float)
    assert value_keys(np.array([1.0, 42.0])).tolist() == [1, 42]


def test_hash_is_the_same_in_another_process_with_another_hash_seed():
    code = (
        "import json, numpy as np\n"
        "from reprokit.data.encoding import value_keys\n"
        "from reprokit.nn.hashed import bucket_of\n"
        f"ints = bucket_of(value_keys(np.array({FIXED_INT_IDS})), 1000, 7).tolist()\n"
        "strs = bucket_of(value_keys(np.array(['user_1', 'é'], dtype=object)), 1000).tolist()\n"
        "print(json.dumps([ints, strs, hash('user_1')]))\n"
    )
    outs = []
    for hash_seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(json.loads(done.stdout))
    for ints, strs, _ in outs:
        assert ints == FIXED_INT_ROWS[7] and strs == FIXED_STR_ROWS
    assert outs[0][2] != outs[1][2]  # Python's own str hash did change between the two


# ---- the encoding carries the raw-value keys ------------------------------------------------------


def _dataset(frame: pd.DataFrame) -> Dataset:
    schema = DatasetSchema(
        categorical=["user", "item"], numeric=[], labels=["label"], example_id=None
    )
    return Dataset(frame, schema)


def test_vocab_sizes_carry_the_key_of_each_index():
    frame = pd.DataFrame(
        {
            "user": ["b", "a", "c", None, "a"],
            "item": [10, 30, 20, 10, 30],
            "label": [0.0, 1.0, 0.0, 1.0, 1.0],
        }
    )
    enc = encode(_dataset(frame), _dataset(frame.iloc[:2]))
    sizes = enc.vocab_sizes
    assert isinstance(sizes, VocabSizes) and list(sizes) == [5, 4]  # a b c + null; 10 20 30
    users = value_keys(np.array(["a", "b", "c"], dtype=object))
    assert sizes.keys[0][0] == np.uint64(OOV_KEY) and list(sizes.keys[0][1:4]) == list(users)
    assert sizes.keys[1].tolist() == [OOV_KEY, 10, 20, 30]
    back = pickle.loads(pickle.dumps(sizes))  # the process engine sends it to workers
    assert list(back) == [5, 4] and all(
        np.array_equal(a, b) for a, b in zip(back.keys, sizes.keys, strict=True)
    )
    table = create_embeddings("hashed:buckets=7,seed=2", sizes, 3, sparse=False)
    for f in range(2):
        assert table.id_rows()[f].tolist() == bucket_of(sizes.keys[f], 7, 2).tolist()


def test_eval_values_unseen_in_training_are_hashed_by_their_raw_value():
    train = pd.DataFrame({"user": ["a", "b", "a"], "item": [10, 20, 10], "label": [0.0, 1.0, 1.0]})
    evals = pd.DataFrame(
        {"user": ["z", "a", "y", "z", None], "item": [99, 10, 20, 7, 10], "label": [1.0] * 5}
    )
    enc = encode(_dataset(train), _dataset(evals))
    # `table` reads every unseen value as the OOV index 0 ...
    assert enc.eval_cat[:, 0].tolist() == [0, 1, 0, 0, 0]
    # ... the raw view gives each eval-only value (sorted: y, z) an index past the vocabulary
    assert list(enc.vocab_sizes) == [3, 3]
    assert enc.eval_cat_raw[:, 0].tolist() == [4, 1, 3, 4, 0]  # a null stays OOV
    assert enc.eval_cat_raw[:, 1].tolist() == [4, 1, 2, 3, 1]  # 7 → 3, 99 → 4
    keys = enc.vocab_sizes.keys
    assert keys[0][3:].tolist() == value_keys(np.array(["y", "z"], dtype=object)).tolist()
    assert keys[1][3:].tolist() == [7, 99]
    table = _init(create_embeddings("hashed:buckets=5,seed=1", enc.vocab_sizes, 2, sparse=False))
    out = table(torch.as_tensor(enc.eval_cat_raw))
    for row, value in enumerate(evals["item"]):
        bucket = bucket_of(value_keys(np.array([value])), 5, 1)[0]
        assert torch.equal(out[row, 1], table.tables[1].weight[bucket])
    # the collision accounting still counts the training vocabulary only
    assert [len(r) for r in table.id_rows()] == [3, 3]
    assert enc.eval_ids(raw_values=True) is enc.eval_cat_raw
    assert enc.eval_ids(raw_values=False) is enc.eval_cat
    same = encode(_dataset(train), _dataset(train))
    assert same.eval_cat_raw is None and same.eval_ids(True) is same.eval_cat


def test_both_engines_predict_unseen_eval_values_through_their_hash(encoded):
    from reprokit.data.encoding import EncodedData

    unseen = EncodedData(**{**encoded.__dict__})
    raw = encoded.eval_cat.copy()
    keys = [
        np.concatenate([k, np.array([2**40 + 1, 2**40 + 2], np.uint64)])
        for k in encoded.vocab_sizes.keys
    ]
    unseen.vocab_sizes = VocabSizes(list(encoded.vocab_sizes), keys)
    raw[:50, 0] = encoded.vocab_sizes[0]  # eval-only value 2**40 + 1 of field 0
    raw[50:100, 0] = encoded.vocab_sizes[0] + 1  # and 2**40 + 2
    unseen.eval_cat = encoded.eval_cat.copy()
    unseen.eval_cat[:100, 0] = 0
    unseen.eval_cat_raw = raw
    cfg = _config("init", "hashed:buckets=40,seed=3")
    seeds = _seeds(cfg, range(2))
    ref = train_replica(unseen, cfg, 0, seeds[0])
    out = vec.train_replicas(unseen, cfg, [0, 1], seeds)
    assert np.abs(ref.predictions - out[0].predictions).max() < TOLERANCE
    table = create_embeddings(cfg.model.embedding, unseen.vocab_sizes, 2, sparse=False)
    b1, b2 = (table.row_of[table.starts[0] + encoded.vocab_sizes[0] + i].item() for i in (0, 1))
    oov = table.row_of[table.starts[0]].item()
    assert len({b1, b2, oov}) == 3  # three buckets: the predictions must tell them apart
    with_oov = train_replica(
        EncodedData(**{**unseen.__dict__, "eval_cat_raw": None}), cfg, 0, seeds[0]
    )
    assert not np.array_equal(with_oov.predictions[:100], ref.predictions[:100])
    assert np.array_equal(with_oov.predictions[100:], ref.predictions[100:])


# ---- the tables -----------------------------------------------------------------------------------


def _init(table, seed=0):
    table.reset_parameters(torch.Generator().manual_seed(seed))
    return table


def test_hashed_rows_follow_the_hash_in_forward_and_stacked_form():
    keys = [np.arange(30, dtype=np.uint64) * np.uint64(1000003), np.arange(9, dtype=np.uint64)]
    sizes = VocabSizes([30, 9], keys)
    table = _init(HashedEmbeddings(sizes, 4, buckets=5, seed=1))
    ids = torch.stack([torch.arange(30), torch.arange(30) % 9], dim=1)
    out = table(ids)
    for f in range(2):
        rows = bucket_of(keys[f], 5, 1)
        expected = table.tables[f].weight.detach()[torch.from_numpy(rows[ids[:, f].numpy()])]
        assert torch.equal(out[:, f], expected)
    layout = table.stacked_layout().to("cpu")
    assert layout.num_rows == 10 and table.stacked_weight().shape == (10, 4)
    assert torch.equal(table.stacked_weight()[layout.rows(ids)], out)
    assert torch.equal(table.stacked_weight()[layout.rows(ids[None])][0], out)  # [G, b, F]


@pytest.mark.parametrize("op", ["mult", "add", "concat"])
def test_qr_combines_quotient_and_remainder_rows(op):
    table = _init(QREmbeddings([11, 4], 6, buckets=3, op=op), seed=3)
    # field 0: ceil(11/3) = 4 quotient rows, 3 remainder rows; field 1: 2 and 3
    assert [t.num_embeddings for t in table.tables] == [4, 3, 2, 3]
    widths = [3, 3] if op == "concat" else [6, 6]
    assert [t.embedding_dim for t in table.tables[:2]] == widths
    ids = torch.stack([torch.arange(11), torch.arange(11) % 4], dim=1)
    out = table(ids)
    assert out.shape == (11, 2, 6)
    for f in range(2):
        q = table.tables[2 * f].weight.detach()
        r = table.tables[2 * f + 1].weight.detach()
        for i in ids[:, f].tolist():
            a, b = q[i // 3], r[i % 3]
            want = {"mult": a * b, "add": a + b, "concat": torch.cat([a, b])}[op]
            row = out[ids[:, f].tolist().index(i), f]
            assert torch.equal(row, want)
    assert len({tuple(v) for v in out[:, 0].tolist()}) == 11  # every id its own embedding


def test_qr_initial_embeddings_have_the_table_scale():
    for op in ("mult", "add", "concat"):
        table = _init(QREmbeddings([5000], 16, buckets=70, op=op))
        std = table(torch.arange(5000)[:, None]).std().item()
        assert 0.008 < std < 0.012, (op, std)


def test_qr_concat_needs_two_columns():
    with pytest.raises(ReprokitError, match="at least 2"):
        create_embeddings("qr:buckets=2,op=concat", [5], 1, sparse=False)


# ---- accounting -----------------------------------------------------------------------------------


def _collision_rate_by_hand(rows_per_id: list) -> float:
    owners: dict = {}
    for i, row in enumerate(rows_per_id):
        owners.setdefault(row, []).append(i)
    return 1.0 - len(owners) / len(rows_per_id)


def test_collision_rates():
    sizes = [101, 7]  # 100 and 6 training ids besides the OOV row
    one = create_embeddings("hashed:buckets=1", sizes, 2, sparse=False)
    per_field, overall = collision_rates(one)
    assert per_field == pytest.approx([1 - 1 / 100, 1 - 1 / 6])
    assert overall == pytest.approx(1 - 2 / 106)
    for spec in ("table", "qr:buckets=4", "qr:buckets=1000,op=add"):
        assert collision_rates(create_embeddings(spec, sizes, 2, sparse=False)) == ([0.0, 0.0], 0.0)
    hashed = create_embeddings("hashed:buckets=30,seed=5", sizes, 2, sparse=False)
    per_field, overall = collision_rates(hashed)
    rows = hashed.id_rows()
    expected = [_collision_rate_by_hand(list(r[1:])) for r in rows]
    assert per_field == pytest.approx(expected) and 0 < per_field[0] < 1
    # only the ids the training data holds count
    train_cat = np.array([[1, 0], [2, 3], [2, 3]])
    per_field, _ = collision_rates(hashed, train_cat)
    assert per_field[1] == 0.0
    assert per_field[0] == (0.5 if rows[0][1] == rows[0][2] else 0.0)


def test_embedding_account_counts_parameters_and_bytes():
    sizes = [101, 7]
    dim = 4
    cases = {
        "table": 108 * dim,
        "hashed:buckets=10": 2 * 10 * dim,
        "qr:buckets=10": (11 + 10 + 1 + 7) * dim,
        "qr:buckets=10,op=concat": (11 + 10 + 1 + 7) * dim // 2,
    }
    for spec, params in cases.items():
        table = create_embeddings(spec, sizes, dim, sparse=False)
        account = embedding_account(table, ["user", "item"])
        assert account["kind"] == str(parse_table_spec(spec))
        assert account["params"] == params and account["bytes"] == 4 * params
        assert set(account["field_collision_rate"]) == {"user", "item"}


# ---- both engines ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded():
    return load_encoded(resolve_config(None, SMALL).data)


def test_engine_choice_follows_the_registry():
    assert choose_engine(_config("init", "hashed:buckets=50")) == "vectorized"
    assert choose_engine(_config("init", "qr:buckets=8")) == "vectorized"
    odd = _config("init", "qr:buckets=8,op=concat", **{"model.embedding_dim": 5})
    assert choose_engine(odd) == "process"
    with pytest.raises(ReprokitError) as exc:
        choose_engine(
            _config(
                "init", "qr:buckets=8,op=concat", engine="vectorized", **{"model.embedding_dim": 5}
            )
        )
    assert str(exc.value) == (
        "--engine vectorized cannot train this configuration: qr:buckets=8,op=concat needs an "
        "even embedding dimension, got 5"
    )


@pytest.mark.parametrize(
    ("spec", "optimizer"),
    [
        ("hashed:buckets=40,seed=3", "adagrad"),
        ("hashed:buckets=40,seed=3", "adam"),
        ("qr:buckets=16", "adagrad"),
        ("qr:buckets=16,op=add", "sgd"),
        ("qr:buckets=16,op=concat", "adam"),
    ],
)
def test_replica_k_matches_the_process_engine(encoded, spec, optimizer):
    cfg = _config("init,data-order", spec, **{"optim.name": optimizer})
    seeds = _seeds(cfg, range(2))
    ref = [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]
    out = vec.train_replicas(encoded, cfg, [0, 1], seeds)
    for a, b in zip(ref, out, strict=True):
        assert np.abs(a.predictions - b.predictions).max() < TOLERANCE
        np.testing.assert_allclose(b.log.loss, a.log.loss, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(out[0].predictions, out[1].predictions)
    # hashing really changed the model: a `table` run from the same seeds predicts otherwise
    plain = train_replica(encoded, _config("init,data-order", "table"), 0, seeds[0])
    assert np.abs(plain.predictions - ref[0].predictions).max() > 1e-4


@pytest.mark.parametrize(
    "spec",
    ["hashed:buckets=40", "hashed:buckets=1", "table", "qr:buckets=16", "qr:buckets=16,op=concat"],
)
def test_control_arm_is_bitwise_identical_in_the_vectorized_engine(encoded, spec):
    cfg = _config("none", spec, **{"model.dropout": 0.1})
    outs = vec.train_replicas(encoded, cfg, [0, 1, 2], _seeds(cfg, range(3)))
    for out in outs[1:]:
        assert np.array_equal(out.predictions, outs[0].predictions)
        assert out.log.equals(outs[0].log)


@pytest.mark.parametrize(
    "spec",
    ["hashed:buckets=40", "qr:buckets=16", "qr:buckets=16,op=add", "qr:buckets=16,op=concat"],
)
def test_control_arm_is_bitwise_identical_in_the_reference_loop(encoded, spec):
    cfg = _config("none", spec)
    outs = [train_replica(encoded, cfg, r, s) for r, s in enumerate(_seeds(cfg, range(2)))]
    assert np.array_equal(outs[0].predictions, outs[1].predictions)
    assert outs[0].log.equals(outs[1].log)
    assert np.isfinite(outs[0].predictions).all() and math.isfinite(outs[0].log.loss.iloc[-1])


def test_train_ensemble_with_each_kind_through_the_cli(tmp_path):
    for spec, engine in (("hashed:buckets=30", "vectorized"), ("qr:buckets=8,op=add", "process")):
        out = tmp_path / spec.partition(":")[0]
        args = ["train-ensemble", "--embedding", spec, "--synth-rows", "600", "--epochs", "1"]
        args += ["--replicas", "2", "--engine", engine, "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        manifest = (out / "manifest.json").read_text()
        assert str(parse_table_spec(spec)) in manifest


def test_worker_processes_hash_like_the_parent(encoded, tmp_path):
    """The process engine's workers get the raw-value keys with the data (else they would hash
    the vocabulary indices and train another model)."""
    import pandas as pd

    from reprokit.runners.ensemble import train_ensemble

    cfg = _config("init", "hashed:buckets=25,seed=1", replicas=2, engine="process")
    train_ensemble(cfg, out=tmp_path / "run", workers=2, encoded=encoded)
    ref = train_replica(encoded, cfg, 1, replica_seeds(cfg.seed, cfg.vary, 1))
    frame = pd.read_parquet(tmp_path / "run/replicas/001/predictions.parquet")
    assert np.array_equal(frame["prediction"].to_numpy(), ref.predictions[:, 0])
    plain = VocabSizes(list(encoded.vocab_sizes), [np.arange(v) for v in encoded.vocab_sizes])
    lost = create_embeddings(cfg.model.embedding, plain, 2, sparse=False).id_rows()
    kept = create_embeddings(cfg.model.embedding, encoded.vocab_sizes, 2, sparse=False).id_rows()
    assert any(not np.array_equal(a, b) for a, b in zip(lost, kept, strict=True))
