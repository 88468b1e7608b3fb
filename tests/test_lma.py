"""`lma` (LSH-based memory allocation, Desai et al.): signatures against a brute-force MinHash over
co-occurring-value sets, slots against an independent pure-Python re-implementation of the whole
pipeline, sharing by similarity within a field, the layout, the spec and config errors, the
accounting, both engines and the control arm through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
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
from reprokit.data.encoding import VocabSizes, load_encoded
from reprokit.errors import ReprokitError
from reprokit.nn.embeddings import collision_rates, create_embeddings, embedding_account
from reprokit.nn.lma import LMAEmbeddings, minhash_signatures, projection
from reprokit.training.loop import train_replica

# ---- an independent pure-Python LMA (the module docstring's formulas, integer by integer) ---------

MASK = 2**64 - 1


def mix(x: int) -> int:
    """SplitMix64's step (state += golden gamma, then the finaliser), Python integers."""
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def H(tag: int, *parts: int) -> int:
    z = mix(tag)
    for p in parts:
        z = mix(z ^ p)
    return z


def cooccurring(cat: np.ndarray, f: int, i: int) -> set[tuple[int, int]]:
    """The tokens (field, index) of the other fields in the rows where field f holds i."""
    rows = [n for n in range(len(cat)) if cat[n, f] == i]
    return {(g, int(cat[n, g])) for n in rows for g in range(cat.shape[1]) if g != f}


def brute_signature(cat: np.ndarray, f: int, i: int, s_count: int, seed: int) -> list[int] | None:
    tokens = cooccurring(cat, f, i)
    if not tokens:
        return None
    return [min(H(1, seed, s, g, j) for g, j in tokens) for s in range(s_count)]


def brute_slots(sig: list[int] | None, chunks: int, bits: int, slots: int, seed: int) -> list[int]:
    if sig is None:
        return [H(4, seed, j) % slots for j in range(chunks)]
    x = [(mix(v) >> 24) - 2**39 for v in sig]
    out = []
    for j in range(chunks):
        code = 0
        for b in range(bits):
            p = [[1, -1, 0, 0, 0, 0][H(2, seed, j, b, s) % 6] for s in range(len(sig))]
            if sum(a * c for a, c in zip(p, x, strict=True)) > 0:
                code |= 1 << b
        out.append(H(3, seed, j, code) % slots)
    return out


#: 7 training rows of (user, item, genre). Users 1 and 2 rated the same items {1, 2} (in different
#: rows), user 3 only item 3 (disjoint); items 1 and 2 were rated by the same users with the same
#: genre; field 2's index 3 never occurs; index 0 (out of vocabulary) occurs in row 5.
CAT = np.array([[1, 1, 1], [2, 1, 1], [1, 2, 1], [2, 2, 1], [3, 3, 2], [0, 3, 2], [2, 1, 1]])
SIZES = [4, 4, 4]


def _sizes(cat: np.ndarray = CAT, sizes: list[int] = SIZES) -> VocabSizes:
    keys = [np.arange(v, dtype=np.uint64) for v in sizes]
    return VocabSizes(sizes, keys, [f"f{f}" for f in range(len(sizes))], cat)


def _init(table, seed=0):
    table.reset_parameters(torch.Generator().manual_seed(seed))
    return table


@pytest.mark.parametrize(("s_count", "seed"), [(5, 0), (3, 7)])
def test_signatures_are_the_brute_force_minhash(s_count, seed):
    sigs, seen = minhash_signatures(CAT, SIZES, s_count, seed)
    for f in range(3):
        for i in range(4):
            want = brute_signature(CAT, f, i, s_count, seed)
            assert seen[f][i] == (want is not None)
            if want is not None:
                assert [int(v) for v in sigs[f][i]] == want, (f, i)


def test_signatures_in_blocks_equal_one_pass(monkeypatch):
    import reprokit.nn.lma as lma

    rng = np.random.default_rng(3)
    cat = rng.integers(0, 9, size=(500, 2))
    whole = minhash_signatures(cat, [9, 9], 4, 1)
    monkeypatch.setattr(lma, "_BLOCK", 4 * 2 * 37)  # 37 rows a block (4 signatures, 2 fields)
    blocked = minhash_signatures(cat, [9, 9], 4, 1)
    for a, b in zip(whole[0] + whole[1], blocked[0] + blocked[1], strict=True):
        assert np.array_equal(a, b)


def test_signatures_are_computed_once_per_training_array(monkeypatch):
    import reprokit.nn.lma as lma

    calls = []
    real = lma.minhash_signatures
    monkeypatch.setattr(lma, "minhash_signatures", lambda *a: calls.append(1) or real(*a))
    cat = CAT.copy()
    first = create_embeddings("lma:memory=64", _sizes(cat), 8, sparse=False)
    again = create_embeddings("lma:memory=32,chunk=2", _sizes(cat), 8, sparse=False)
    assert len(calls) == 1
    other = create_embeddings("lma:memory=64", _sizes(cat.copy()), 8, sparse=False)  # new array
    assert len(calls) == 2 and torch.equal(first.slot_of, other.slot_of)
    assert again.slot_of.shape == (12, 4)


@pytest.mark.parametrize(
    ("spec", "dim"),
    [("lma:memory=24,bits=5,signatures=6", 4), ("lma:memory=30,chunk=1,signatures=4,seed=3", 3)],
)
def test_slots_match_an_independent_implementation(spec, dim):
    table = create_embeddings(spec, _sizes(), dim, sparse=False)
    lookup = table.slot_of.numpy()
    for f in range(3):
        for i in range(4):
            sig = brute_signature(CAT, f, i, table.signatures, table.seed) if i else None
            want = brute_slots(sig, table.chunks, table.bits, table.slots, table.seed)
            assert lookup[table.starts[f] + i].tolist() == want, (f, i)


def test_the_sets_are_the_cooccurring_other_field_values():
    assert cooccurring(CAT, 0, 1) == cooccurring(CAT, 0, 2) == {(1, 1), (1, 2), (2, 1)}
    assert cooccurring(CAT, 0, 3) == {(1, 3), (2, 2)}
    assert cooccurring(CAT, 2, 2) == {(0, 3), (0, 0), (1, 3)}  # index 0 of field 0 is a token
    sigs, _ = minhash_signatures(CAT, SIZES, 16, 0)
    assert np.array_equal(sigs[0][1], sigs[0][2]) and np.array_equal(sigs[1][1], sigs[1][2])
    assert not (sigs[0][1] == sigs[0][3]).any()  # disjoint sets: no minimum in common


def test_values_with_identical_cooccurrence_sets_read_identical_slots():
    table = create_embeddings("lma:memory=4000,chunk=1", _sizes(), 4, sparse=False)
    lookup = table.slot_of.numpy()
    # users 1 and 2 (never in one row) rated the same items: the same four slots; so do items 1, 2
    assert np.array_equal(lookup[1], lookup[2])
    assert np.array_equal(lookup[4 + 1], lookup[4 + 2])
    # user 3's items are disjoint from theirs: (for this seed) no slot in common
    assert not (lookup[3] == lookup[1]).any()
    # out-of-vocabulary index 0 of every field and the never-seen index 3 of field 2 share the
    # fixed OOV slots, although index 0 of field 0 occurs in training
    oov = [H(4, 0, j) % table.slots for j in range(4)]
    for f in range(3):
        assert lookup[table.starts[f]].tolist() == oov
    assert lookup[2 * 4 + 3].tolist() == oov
    # of the 9 indices 1..3, users 1 = 2 and items 1 = 2 share, f2's 3 is the OOV set, and the
    # others are apart from each other and the OOV set
    others = {tuple(lookup[table.starts[f] + i]) for f in range(3) for i in range(1, 4)}
    assert len(others) == 7
    per_field, _ = collision_rates(table, CAT)  # sharing by similarity counts as collision
    assert per_field == pytest.approx([1 - 2 / 3, 1 - 2 / 3, 0])


def test_within_a_field_similar_users_share_memory_and_dissimilar_ones_only_by_chance():
    """300 users in 60 groups of 5; the users of a group rated the same 8 items (each user in rows
    of their own, in a shuffled order), groups' item sets are disjoint; a second field is the item
    id, a third the item's genre (one of 4, so sets of other groups overlap a little)."""
    rng = np.random.default_rng(5)
    groups, per_group, items_each = 60, 5, 8
    rows = []
    for u in range(groups * per_group):
        g = u // per_group
        for item in range(g * items_each, (g + 1) * items_each):
            rows.append([u + 1, item + 1, item % 4 + 1])
    cat = np.array(rows)[rng.permutation(len(rows))]
    sizes = [groups * per_group + 1, groups * items_each + 1, 5]
    table = create_embeddings("lma:memory=4096", _sizes(cat, sizes), 8, sparse=False)
    users = table.slot_of.numpy()[1 : groups * per_group + 1]  # [300, 2 chunks] of 1024 slots
    same = users.reshape(groups, per_group, -1)
    assert (same == same[:, :1]).all()  # every group reads one slot tuple
    firsts = same[:, 0]  # one user a group: every pair has disjoint items
    pairs = [(a, b) for a in range(groups) for b in range(a + 1, groups)]
    shared = np.mean([(firsts[a] == firsts[b]).mean() for a, b in pairs])
    assert shared < 5 / table.slots  # chance is about 1 / 1024 a chunk
    assert len({tuple(x) for x in firsts}) == groups


def test_projection_entries_have_the_reference_probabilities():
    p = projection(4, 16, 256, 0)
    assert set(np.unique(p)) == {-1, 0, 1}
    share = [(p == v).mean() for v in (1, -1, 0)]
    assert share == pytest.approx([1 / 6, 1 / 6, 2 / 3], abs=0.01)


def test_forward_concatenates_the_memory_rows_in_both_forms():
    table = _init(create_embeddings("lma:memory=32,chunk=2", _sizes(), 6, sparse=False), seed=4)
    assert table.memory.weight.shape == (16, 2) and table.chunks == 3
    ids = torch.from_numpy(CAT)
    out = table(ids)
    memory, lookup = table.memory.weight.detach(), table.slot_of
    assert out.shape == (7, 3, 6)
    for n in range(7):
        for f in range(3):
            slots = lookup[table.starts[f] + int(CAT[n, f])]
            assert torch.equal(out[n, f], torch.cat([memory[s] for s in slots]))
    layout = table.stacked_layout().to("cpu")
    assert (layout.num_rows, layout.dim) == (16, 2)
    rows = layout.rows(ids)
    assert rows.shape == (7, 9)  # 3 fields × 3 chunks
    assert torch.equal(table.stacked_weight()[rows].view(7, 3, 6), out)
    assert torch.equal(layout.rows(ids[None])[0], rows)  # [G, b, F] too
    # a draw for draw N(0, 0.01) memory
    big = _init(create_embeddings("lma:memory=40000", _sizes(), 4, sparse=False))
    assert 0.0095 < big.memory.weight.std().item() < 0.0105


def test_accounting():
    table = create_embeddings("lma:memory=8,chunk=2", _sizes(), 4, sparse=False)  # 4 slots
    account = embedding_account(table, ["a", "b", "c"], CAT)
    assert account["params"] == 8 and account["bytes"] == 32
    assert account["kind"] == "lma:memory=8,chunk=2,signatures=32,seed=0"
    lookup = table.slot_of.numpy()
    rates, n_ids, n_tuples = [], 0, 0
    for f in range(3):  # by hand: distinct slot tuples among the distinct training ids
        ids = sorted(set(CAT[:, f].tolist()) - {0})
        tuples = {tuple(lookup[table.starts[f] + i]) for i in ids}
        rates.append(1 - len(tuples) / len(ids))
        n_ids, n_tuples = n_ids + len(ids), n_tuples + len(tuples)
    per_field, overall = collision_rates(table, CAT)
    assert per_field == pytest.approx(rates)
    assert overall == pytest.approx(1 - n_tuples / n_ids)
    assert account["field_collision_rate"] == dict(zip("abc", per_field, strict=True))
    one_slot = create_embeddings("lma:memory=4", _sizes(), 4, sparse=False)  # every id one slot
    assert collision_rates(one_slot, CAT)[0] == pytest.approx([1 - 1 / 3, 1 - 1 / 3, 1 - 1 / 2])


def test_slots_are_the_same_in_another_process_with_another_hash_seed():
    code = (
        "import json, numpy as np\n"
        "from reprokit.data.encoding import VocabSizes\n"
        "from reprokit.nn.embeddings import create_embeddings\n"
        f"cat = np.array({CAT.tolist()})\n"
        "sizes = VocabSizes([4, 4, 4], [np.arange(4, dtype=np.uint64)] * 3, None, cat)\n"
        "t = create_embeddings('lma:memory=4096', sizes, 8, sparse=False)\n"
        "print(json.dumps(t.slot_of.tolist()))\n"
    )
    outs = []
    for hash_seed in ("1", "999"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.append(json.loads(done.stdout))
    here = create_embeddings("lma:memory=4096", _sizes(), 8, sparse=False).slot_of.tolist()
    assert outs[0] == outs[1] == here
    assert here[1] == FROZEN_SLOTS  # a change of hash changes every run's slots


#: Field 0's index 1 of the table above (1024 slots, bits 14, 32 signatures), computed once.
FROZEN_SLOTS = [748, 612]


# ---- specs and errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("lma:memory=64", "lma:memory=64,signatures=32,seed=0"),
        (" LMA : bits=5, chunk=2 ,memory=64", "lma:memory=64,chunk=2,bits=5,signatures=32,seed=0"),
        ("lma:memory=64,signatures=8,seed=2", "lma:memory=64,signatures=8,seed=2"),
    ],
)
def test_specs_resolve_to_one_canonical_string(spec, canonical):
    assert str(parse_table_spec(spec)) == canonical
    assert resolve_config(None, {"model.embedding": spec}).model.embedding == canonical
    assert EMBEDDING_TABLES.get(canonical).name == "lma"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lma:memory=0", "lma parameter memory must be at least 1, got 0"),
        ("lma", "embedding table 'lma' needs memory: write lma:memory=M[,chunk=C,bits=B,"),
        ("lma:memory=64,bits=65", "lma parameter bits must be at most 64, got 65"),
        ("lma:memory=64,signatures=0", "lma parameter signatures must be at least 1, got 0"),
        (
            "lma:memory=64,width=2",
            "unknown parameter 'width' in 'lma:memory=64,width=2'; embedding table 'lma' accepts: "
            "memory, chunk, bits, signatures, seed",
        ),
    ],
)
def test_bad_specs_are_one_sentence(spec, message):
    with pytest.raises(ReprokitError) as exc:
        parse_table_spec(spec)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("spec", "dim", "message"),
    [
        ("lma:memory=64,chunk=3", 8, "lma chunk 3 must divide the embedding dimension 8"),
        ("lma:memory=62", 8, "lma memory 62 must be a multiple of chunk 4"),
        ("lma:memory=63", 6, "lma memory 63 must be a multiple of chunk 2"),  # default gcd(6, 4)
    ],
)
def test_shape_errors_are_refused_at_config_time(spec, dim, message):
    for engine in ("process", "vectorized"):
        with pytest.raises(ReprokitError, match=message):
            resolve_config(
                None, {"model.embedding": spec, "model.embedding_dim": dim, "engine": engine}
            )
    with pytest.raises(ReprokitError, match=message):  # the Python API, the same sentence
        create_embeddings(spec, _sizes(), dim, sparse=False)


def test_default_chunk_divides_any_dimension():
    for dim, chunk in ((8, 4), (6, 2), (5, 1), (12, 4)):
        table = create_embeddings(f"lma:memory={4 * dim}", _sizes(), dim, sparse=False)
        assert table.chunk == chunk and table.chunks == dim // chunk


def test_one_field_has_nothing_to_cooccur_with():
    with pytest.raises(ReprokitError, match="lma needs at least 2 categorical fields, got 1"):
        minhash_signatures(CAT[:, :1], [4], 4, 0)


def test_a_plain_list_has_no_training_indices():
    with pytest.raises(ReprokitError, match="needs the training split's indices"):
        create_embeddings("lma:memory=64", [4, 4, 4], 8, sparse=False)
    with pytest.raises(ReprokitError, match="outside the vocabulary"):
        LMAEmbeddings(_sizes(sizes=[4, 2, 4]), 8, memory=64)


@pytest.mark.parametrize(
    "spec", ["lma:memory=0", "lma:memory=64,chunk=3", "lma:memory=64,foo=1", "lma:memory=62"]
)
def test_bad_spec_on_the_command_line_exits_2_with_one_line(spec, tmp_path):
    args = ["train-ensemble", "--embedding", spec, "--synth-rows", "200", "--out", str(tmp_path)]
    one_error_line(CliRunner().invoke(app, args))


# ---- both engines ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded():
    return load_encoded(resolve_config(None, SMALL).data)


@pytest.mark.parametrize(
    ("spec", "optimizer"),
    [
        ("lma:memory=256", "adagrad"),
        ("lma:memory=256,chunk=2,bits=3", "adam"),
        ("lma:memory=128,chunk=8", "sgd"),
        ("lma:memory=256,chunk=1", "adagrad"),
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
    plain = train_replica(encoded, _config("init,data-order", "table"), 0, seeds[0])
    assert np.abs(plain.predictions - ref[0].predictions).max() > 1e-4


@pytest.mark.parametrize("spec", ["lma:memory=256", "lma:memory=64,chunk=2"])
def test_control_arm_is_bitwise_identical_in_both_engines(encoded, spec):
    cfg = _config("none", spec, **{"model.dropout": 0.1})
    seeds = _seeds(cfg, range(3))
    for outs in (
        vec.train_replicas(encoded, cfg, [0, 1, 2], seeds),
        [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds[:2])],
    ):
        for out in outs[1:]:
            assert np.array_equal(out.predictions, outs[0].predictions)
            assert out.log.equals(outs[0].log)
        assert np.isfinite(outs[0].predictions).all()


@pytest.mark.parametrize("engine", ["vectorized", "process"])
def test_control_arm_through_the_cli_has_zero_pd(tmp_path, engine):
    out = tmp_path / engine
    args = ["train-ensemble", "--embedding", "lma:memory=512", "--synth-rows", "800"]
    args += ["--epochs", "1", "--hidden", "16-8", "--replicas", "3", "--vary", "none"]
    args += ["--engine", engine, "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["pd"]["abs"] == 0.0 and doc["pd"]["rel"] == 0.0
    assert "lma:memory=512,signatures=32,seed=0" in (out / "manifest.json").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["embedding"]["params"] == 512
    assert summary["embedding"]["kind"] == "lma:memory=512,signatures=32,seed=0"
