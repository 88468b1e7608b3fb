"""Monolith's collisionless table: the keyed hash map, admission by count and by probability on
hand-worked streams, expiry, lookup misses, capacity, optimizer-state reset, accounting, and
training in both engines (control arm exact, engines agreeing)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from cli_checks import one_error_line
from engine_cases import SMALL, seeds_for, small_config, train_both
from typer.testing import CliRunner

import reprokit.training.vectorized as vec
from reprokit.cli import app
from reprokit.components.tables import parse_table_spec
from reprokit.config import resolve_config
from reprokit.data.encoding import VocabSizes, load_encoded
from reprokit.errors import ReprokitError
from reprokit.nn.collisionless import (
    AdmissionState,
    CollisionlessEmbeddings,
    admission_probability,
    initial_rows,
)
from reprokit.nn.embeddings import collision_rates
from reprokit.nn.keymap import KeyedSlots
from reprokit.training.loop import train_replica

# ---- the keyed map ---------------------------------------------------------------------------


def test_keyed_slots_agree_with_a_dict_through_collisions_and_rehashes():
    rng = np.random.default_rng(5)
    table = KeyedSlots({"row": (np.int64, -1)}, capacity=16)
    truth: dict[tuple[int, int], int] = {}
    for _ in range(30):
        fields = rng.integers(0, 3, 200).astype(np.int32)
        keys = rng.integers(0, 400, 200).astype(np.uint64) * np.uint64(2**40)  # same low bits
        pairs = np.unique(np.stack([fields.astype(np.uint64), keys]), axis=1)
        f, k = pairs[0].astype(np.int32), pairs[1]
        slots, new = table.find_or_insert(f, k)
        for fi, ki, si, ni in zip(
            f.tolist(), k.tolist(), slots.tolist(), new.tolist(), strict=True
        ):
            assert ni == ((fi, ki) not in truth)
            if ni:
                table.column["row"][si] = len(truth)
                truth[(fi, ki)] = len(truth)
        assert len(set(slots.tolist())) == len(slots)  # distinct ids, distinct slots
    assert table.size == len(truth) and table.generation > 0  # it grew from 16 slots
    f = np.array([p[0] for p in truth], dtype=np.int32)
    k = np.array([p[1] for p in truth], dtype=np.uint64)
    assert table.column["row"][table.find(f, k)].tolist() == list(truth.values())
    # the same key in another field is another id; absent ids are not found and not inserted
    absent = table.find(np.array([7, 0], dtype=np.int32), np.array([0, 2**63 + 1], dtype=np.uint64))
    assert absent.tolist() == [-1, -1] and table.size == len(truth)


# ---- admission, expiry, capacity on hand-worked streams --------------------------------------


def _state(**options) -> AdmissionState:
    keys = [np.array([900, 901, 902, 903], dtype=np.uint64), np.array([7, 8], dtype=np.uint64)]
    return AdmissionState(keys, [4, 2], **options)


def _batch(*ids: int) -> np.ndarray:
    """A batch of one-field-0 examples (field 1 always index 0)."""
    return np.array([[i, 0] for i in ids], dtype=np.int64)


def test_count_filter_admits_at_the_kth_occurrence():
    state = _state(min_count=3)
    created = []
    # a = index 1, b = index 2; field 1's index 0 is in every example
    for batch in [_batch(1), _batch(1), _batch(2), _batch(1, 1), _batch(2, 2)]:
        rows, fields, keys, _ = state.update(batch)
        created.append(sorted(zip(fields.tolist(), keys.tolist(), strict=True)))
    # field 1's id 7 is seen once per example: 1, 2, 3 (admitted at batch 3)
    assert created == [[], [], [(1, 7)], [(0, 901)], [(0, 902)]]
    # refused occurrences: a twice, b once, field-1 id twice
    assert state.counts == {"admitted": 3, "filtered": 5, "rejected_full": 0, "expired": 0}
    assert state.rows(_batch(1, 2, 3)).tolist() == [[0, 4], [1, 4], [6, 4]]  # 3: miss row 6
    assert state.miss_row == 6


def test_probabilistic_filter_admits_with_the_monolith_probability():
    k = 4
    p = 1 - 0.05 ** (1 / k)
    assert admission_probability(k, np.array([1, k]))[0] == pytest.approx(p)
    assert admission_probability(k, np.array([1, k]))[1] == pytest.approx(0.95)
    n = 20000
    keys = [np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)]
    for occurrences, expected in ((1, p), (3, 1 - (1 - p) ** 3)):
        state = AdmissionState(keys, [n], min_count=k, filter="probabilistic", admission_seed=11)
        state.update(np.repeat(np.arange(n), occurrences)[:, None])
        share = state.counts["admitted"] / n
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / n)

    # the draws are the seed's: the same seed admits the same ids, another seed others
    def admitted(seed: int) -> np.ndarray:
        state = AdmissionState(keys, [n], min_count=k, filter="probabilistic", admission_seed=seed)
        state.update(np.arange(n)[:, None])
        return state.rows(np.arange(n)[:, None])[:, 0] != state.miss_row

    assert np.array_equal(admitted(3), admitted(3))
    assert not np.array_equal(admitted(3), admitted(4))


def test_probabilistic_decisions_do_not_depend_on_batch_order():
    keys = [np.arange(500, dtype=np.uint64)]
    ids = np.arange(500)
    one = AdmissionState(keys, [500], min_count=2, filter="probabilistic", admission_seed=1)
    two = AdmissionState(keys, [500], min_count=2, filter="probabilistic", admission_seed=1)
    one.update(ids[:, None])
    two.update(ids[::-1, None])  # other order, same per-id history
    held = lambda s: set(s.slots.keys[s.slots.column["row"] >= 0].tolist())  # noqa: E731
    assert held(one) == held(two) and 0 < len(held(one)) < 500


def test_expiry_evicts_exactly_the_ids_idle_for_expire_steps():
    state = _state(expire=2)
    state.update(_batch(1, 2))  # step 1: a, b (and field 1's 7)
    state.update(_batch(1))  # step 2: a; b idle 1 step
    assert state.counts["expired"] == 0
    _, _, _, evicted = state.update(_batch(1))  # step 3: b idle 2 steps → evicted
    assert evicted.tolist() == [1] and state.counts["expired"] == 1
    assert state.rows(_batch(2))[0, 0] == state.miss_row
    rows, _, keys, _ = state.update(_batch(2))  # b comes back: re-admitted (count kept)
    assert keys.tolist() == [902] and rows.tolist() == [1]  # the lowest free row again


def test_expiry_uses_the_data_timestamps_when_there_are_any():
    state = _state(expire=100)
    state.update(_batch(1, 2), times=np.array([1000.0, 1050.0]))
    _, _, _, evicted = state.update(_batch(3), times=np.array([1120.0]))
    # clock 1120: a (last 1000) idle 120 ≥ 100 → out; b (last 1050) idle 70 → kept;
    # field 1's id 7 was updated at 1120 → kept
    assert evicted.tolist() == [0]
    assert state.counts["expired"] == 1
    _, _, _, evicted = state.update(_batch(3), times=np.array([1150.0]))
    assert evicted.tolist() == [1]  # b idle exactly 100


def test_capacity_refuses_admissions_beyond_it():
    keys = [np.arange(10, dtype=np.uint64)]
    state = AdmissionState(keys, [2])
    state.update(np.array([[3], [4], [5], [5]]))
    assert state.rows_in_use == 2 and state.counts["rejected_full"] == 2  # 5's two occurrences
    assert state.rows(np.array([[3], [4], [5]]))[:, 0].tolist() == [0, 1, 2]  # 2: miss row


def test_bad_specs_are_one_sentence():
    for spec, message in (
        ("collisionless:min_count=0", "collisionless parameter min_count must be at least 1"),
        ("collisionless:filter=bloom", "must be one of count, probabilistic"),
        ("collisionless:expire=0", "collisionless parameter expire must be at least 1"),
    ):
        with pytest.raises(ReprokitError, match=message):
            parse_table_spec(spec)
    assert str(parse_table_spec("collisionless")) == "collisionless:min_count=1,filter=count"


def test_bad_spec_on_the_command_line_exits_2_with_one_line(tmp_path):
    args = ["train-ensemble", "--embedding", "collisionless:min_count=-1", "--synth-rows", "200"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x")])
    assert "min_count must be at least 1" in one_error_line(result)
    assert not (tmp_path / "x").exists()


# ---- the module: misses, rows, optimizer state -----------------------------------------------


def _table(**options) -> CollisionlessEmbeddings:
    sizes = VocabSizes([4, 2], [np.array([0, 10, 11, 12], np.uint64), np.array([0, 5], np.uint64)])
    table = CollisionlessEmbeddings(sizes, 3, sparse=True, **options)
    table.reset_parameters(torch.Generator().manual_seed(0))
    return table


def test_a_lookup_miss_reads_zeros_sends_no_gradient_and_inserts_nothing():
    table = _table()
    ids = torch.tensor([[1, 1], [2, 0]])
    table.eval()  # evaluation: a pure lookup
    assert torch.equal(table(ids), torch.zeros(2, 2, 3))
    assert table.state.slots.size == 0 and table.num_params() == 0
    table.train()  # a training step's lookup: the ids get filter counters (at 0), no rows
    out = table(ids)
    assert torch.equal(out, torch.zeros(2, 2, 3))
    out.sum().backward()
    grad = table.table.weight.grad.coalesce()
    assert torch.count_nonzero(grad.values()) == 0
    assert table.num_params() == 0 and table.state.rows_in_use == 0
    assert (table.state.slots.column["count"] == 0).all()


def test_admitted_rows_start_from_their_ids_initial_values():
    table = _table()
    opt = torch.optim.Adagrad(table.parameters(), lr=0.1, initial_accumulator_value=0.1)
    table.after_step(np.array([[1, 1], [2, 1]]), None, opt)
    out = table(torch.tensor([[2, 1], [3, 0]])).detach()
    expected = initial_rows(table.init_seed, np.array([0, 1]), np.array([11, 5], np.uint64), 3)
    assert torch.equal(out[0], torch.from_numpy(expected))
    assert torch.equal(out[1], torch.zeros(2, 3))  # index 3 and the OOV index: no rows
    assert table.num_params() == 3 * 3  # ids 10, 11 and 5


def test_initial_rows_are_n_0_001_and_depend_only_on_the_id():
    keys = np.arange(4000, dtype=np.uint64)
    rows = initial_rows(7, np.zeros(4000, dtype=np.int64), keys, 8)
    assert abs(rows.std() - 0.01) < 0.0003 and abs(rows.mean()) < 0.0003
    again = initial_rows(7, np.zeros(2, dtype=np.int64), keys[[3999, 5]], 8)
    assert np.array_equal(again, rows[[3999, 5]])
    assert not np.array_equal(initial_rows(8, np.zeros(2, np.int64), keys[:2], 8), rows[:2])


def test_eviction_resets_the_rows_optimizer_state():
    torch.sparse.check_sparse_tensor_invariants.disable()
    table = _table(expire=1)
    opt = torch.optim.Adagrad(table.parameters(), lr=0.1, initial_accumulator_value=0.25)
    table.after_step(np.array([[1, 1]]), None, opt)  # ids 10 and 5 admitted (rows 0 and 3)
    out = table(torch.tensor([[1, 1]]))
    out.sum().backward()
    opt.step()
    state = opt.state[table.table.weight]["sum"]
    assert (state[0] > 0.25).all()
    table.after_step(np.array([[2, 1]]), None, opt)  # 10 idle one step → evicted
    assert table.state.counts["expired"] == 1
    assert torch.equal(table.table.weight[0].detach(), torch.zeros(3))
    assert torch.equal(state[0], torch.full((3,), 0.25))


def test_collision_rate_is_zero():
    table = _table()
    per_field, overall = collision_rates(table, np.array([[1, 1], [2, 1], [3, 1]]))
    assert per_field == [0.0, 0.0] and overall == 0.0


# ---- training in both engines ---------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded():
    return load_encoded(resolve_config(None, SMALL).data)


def _config(vary, embedding, **extra):
    return small_config(vary, embedding, **{"optim.epochs": 2, **extra})  # expiry needs time


@pytest.mark.parametrize(
    ("spec", "optimizer"),
    [
        ("collisionless", "adagrad"),
        ("collisionless:min_count=3,expire=8", "adagrad"),
        ("collisionless:min_count=2,filter=probabilistic,capacity=100", "sgd"),
        ("collisionless:min_count=2,expire=5", "adam"),
    ],
)
def test_the_engines_agree(encoded, spec, optimizer):
    cfg = _config("init,data-order,admission", spec, **{"optim.name": optimizer})
    ref, out = train_both(encoded, cfg)
    for a, b in zip(ref, out, strict=True):
        assert a.table == b.table  # the same admissions, refusals and evictions
        assert np.array_equal(a.log.table_rows, b.log.table_rows)
        assert np.abs(a.predictions - b.predictions).max() < 1e-5
        np.testing.assert_allclose(b.log.loss, a.log.loss, rtol=1e-5, atol=1e-6)
    assert ref[0].table["admitted"] > 0
    if "expire" in spec:
        assert ref[0].table["expired"] > 0
    if "filter=probabilistic" in spec:  # the admission seeds differ: so do the tables
        assert ref[0].table != ref[1].table


@pytest.mark.parametrize("engine", ["process", "vectorized"])
def test_control_arm_is_bitwise_identical(encoded, engine):
    spec = "collisionless:min_count=2,filter=probabilistic,expire=6"
    cfg = _config("none", spec)
    seeds = seeds_for(cfg, range(3))
    if engine == "vectorized":
        outs = vec.train_replicas(encoded, cfg, [0, 1, 2], seeds)
    else:
        outs = [train_replica(encoded, cfg, r, s) for r, s in enumerate(seeds)]
    for out in outs[1:]:
        assert np.array_equal(out.predictions, outs[0].predictions)
        assert out.log.equals(outs[0].log) and out.table == outs[0].table


def test_admission_varies_only_a_probabilistic_table(encoded):
    def pd_of(spec):
        cfg = _config("admission", spec)
        outs = vec.train_replicas(encoded, cfg, [0, 1], seeds_for(cfg, range(2)))
        return np.abs(outs[0].predictions - outs[1].predictions).max()

    assert pd_of("collisionless:min_count=2") == 0.0
    assert pd_of("collisionless:min_count=2,filter=probabilistic") > 0.0


def test_train_ensemble_reports_the_table_and_its_growth(tmp_path):
    out = tmp_path / "run"
    args = ["train-ensemble", "--embedding", "collisionless:min_count=2,expire=20"]
    args += ["--synth-rows", "800", "--epochs", "1", "--replicas", "2", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    block = summary["embedding"]
    per = block["per_replica"]
    assert block["kind"] == "collisionless:min_count=2,filter=count,expire=20"
    assert block["collision_rate"] == 0.0 and len(per) == 2
    assert block["rows_final"] == np.mean([p["rows_final"] for p in per])
    assert block["params"] == block["rows_final"] * 8
    log = pd.read_parquet(out / "replicas/000/train_log.parquet")
    assert log.table_rows.iloc[-1] == per[0]["rows_final"]
    assert log.table_rows.iloc[0] <= log.table_rows.max()
    metrics = json.loads((out / "replicas/000/metrics.json").read_text())
    assert metrics["table"] == per[0]


def test_attribute_measures_admission_only_where_the_table_draws_admissions():
    from reprokit.runners.attribute import applicable_sources

    assert "admission" not in applicable_sources("cpu", None, "collisionless:min_count=3")
    assert "admission" not in applicable_sources("cpu", None, "table")
    probabilistic = "collisionless:min_count=3,filter=probabilistic"
    assert "admission" in applicable_sources("cpu", None, probabilistic)
    assert applicable_sources("cpu", ["admission", "init"], "table") == ["init", "admission"]


def test_a_run_whose_expiry_evicts_most_rows_says_so(tmp_path):
    out = tmp_path / "run"
    args = ["train-ensemble", "--embedding", "collisionless:expire=3", "--synth-rows", "600"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--replicas", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    block = json.loads((out / "summary.json").read_text())["embedding"]
    assert block["expired"] > 0.5 * block["admitted"]
    assert "expire is meant for data in time order" in block["note"]
    assert "note: expiry evicted" in result.stderr
    plain = tmp_path / "plain"
    args[2] = "collisionless"
    CliRunner().invoke(app, [*args, "--epochs", "1", "--replicas", "2", "--out", str(plain)])
    assert "note" not in json.loads((plain / "summary.json").read_text())["embedding"]
