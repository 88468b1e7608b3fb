"""`data.storage = "mapped"`: the dataset encoded piece by piece into memory-mapped files must be
the in-memory encoding bit for bit, train the same replicas, travel to workers as paths, and
fail (or be killed) without leaving a cache a later run would trust."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import reprokit.data.mapped as mapped
from reprokit.cli import app
from reprokit.config import DataConfig
from reprokit.data.encoding import EncodedData, load_encoded
from reprokit.data.layout import SCHEMA_KEY, DatasetSchema
from reprokit.data.mapped_array import MappedArray, open_mapped
from reprokit.errors import ReprokitError
from tests.cli_checks import one_error_line

ARRAYS = (
    "train_cat",
    "train_num",
    "train_y",
    "eval_cat",
    "eval_num",
    "eval_y",
    "train_example_id",
    "eval_example_id",
    "train_time",
    "eval_cat_raw",
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPROKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(mapped, "READ_ROWS", 97)  # many pieces, cut across row groups


def _user_file(path, n: int = 1500, seed: int = 0, numeric: bool = True) -> str:
    """What a user's file looks like: string ids with gaps, 64-bit ids, a float category with
    missing values, shuffled example ids, numbers with NaN and inf, a `click` label."""
    rng = np.random.default_rng(seed)
    users = np.array([f"u{i}" for i in rng.integers(0, 200, n)], dtype=object)
    users[rng.random(n) < 0.05] = None
    cat3 = rng.integers(0, 40, n).astype(float)
    cat3[rng.random(n) < 0.03] = np.nan
    frame = pd.DataFrame(
        {
            "example_id": rng.permutation(n).astype(np.int64) * 7 + 3,
            "user": users,
            "ad": (rng.integers(0, 150, n) + 2**62).astype(np.int64),
            "cat3": cat3,
            "click": (rng.random(n) < 0.3).astype(np.int64),
            "ts": rng.integers(0, 10**6, n).astype(np.int64),
        }
    )
    numeric_names = []
    if numeric:
        x2 = rng.normal(5, 2, n)
        x2[rng.random(n) < 0.1] = np.nan
        x2[3] = np.inf
        frame["x1"], frame["x2"] = rng.normal(size=n), x2
        numeric_names = ["x1", "x2"]
    schema = DatasetSchema(
        categorical=["user", "ad", "cat3"],
        numeric=numeric_names,
        labels=["click"],
        example_id="example_id",
        timestamp="ts",
        name="users",
    )
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({SCHEMA_KEY: json.dumps(schema.to_dict())})
    pq.write_table(table, path, row_group_size=211)
    return str(path)


def _same(a: EncodedData, b: EncodedData) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None, name
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), name
    assert list(a.vocab_sizes) == list(b.vocab_sizes)
    for ka, kb in zip(a.vocab_sizes.keys, b.vocab_sizes.keys, strict=True):
        assert np.array_equal(ka, kb)
    assert a.numeric_mean == b.numeric_mean and a.numeric_std == b.numeric_std
    assert (a.field_names, a.numeric_names, a.label_names) == (
        b.field_names,
        b.numeric_names,
        b.label_names,
    )


@pytest.mark.parametrize("split", ["random", "temporal"])
def test_mapped_encoding_is_the_in_memory_one_bit_for_bit(tmp_path, split):
    path = _user_file(tmp_path / "users.parquet")
    memory = load_encoded(DataConfig(path=path, split=split, storage="memory"))
    fresh = load_encoded(DataConfig(path=path, split=split, storage="mapped"))
    assert fresh.is_mapped and not memory.is_mapped
    assert isinstance(fresh.train_cat, MappedArray) and fresh.eval_cat_raw is not None
    _same(memory, fresh)
    _same(memory, load_encoded(DataConfig(path=path, split=split, storage="mapped")))  # cached
    assert fresh.vocab_sizes.train_cat is fresh.train_cat  # for the kinds fitted to the data


def test_the_cache_is_reused_and_keyed_by_the_split(tmp_path, monkeypatch):
    path = _user_file(tmp_path / "users.parquet")
    first = load_encoded(DataConfig(path=path, storage="mapped"))
    built = list((tmp_path / "cache" / "encoded").iterdir())
    assert len(built) == 1 and (built[0] / "meta.json").exists()

    def refuse(*args, **kwargs):
        raise AssertionError("encoded again although the cache is complete")

    monkeypatch.setattr(mapped, "_encode_into", refuse)
    again = load_encoded(DataConfig(path=path, storage="mapped"))
    assert np.array_equal(first.train_cat, again.train_cat)
    with pytest.raises(AssertionError, match="encoded again"):
        load_encoded(DataConfig(path=path, storage="mapped", split_seed=1))


def test_a_failed_encode_leaves_no_cache_and_the_next_run_builds_it(tmp_path, monkeypatch):
    path = _user_file(tmp_path / "users.parquet")
    real = mapped.column_stats

    def boom(column):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mapped, "column_stats", boom)
    with pytest.raises(ReprokitError, match="cannot write the memory-mapped training data"):
        load_encoded(DataConfig(path=path, storage="mapped"))
    assert list((tmp_path / "cache" / "encoded").iterdir()) == []  # no half-written directory
    monkeypatch.setattr(mapped, "column_stats", real)
    # a build killed with SIGKILL leaves its temporary directory; the next build removes it
    dead = _dead_pid()
    encoded_dir = tmp_path / "cache" / "encoded"
    target = mapped._cache_key(Path(path), _schema(path), DataConfig(path=path))
    abandoned = encoded_dir / f".{target}.tmp-{dead}-x1"
    abandoned.mkdir()
    (abandoned / "train_cat.npy").write_bytes(b"half")
    _same(
        load_encoded(DataConfig(path=path, storage="memory")),
        load_encoded(DataConfig(path=path, storage="mapped")),
    )
    assert not abandoned.exists()
    assert [p.name for p in encoded_dir.iterdir()] == [target]


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _schema(path: str) -> DatasetSchema:
    return DatasetSchema.from_dict(json.loads(pq.read_schema(path).metadata[SCHEMA_KEY]))


def test_mapped_arrays_pickle_as_their_paths(tmp_path):
    path = _user_file(tmp_path / "users.parquet", n=4000)
    enc = load_encoded(DataConfig(path=path, storage="mapped"))
    blob = pickle.dumps(enc)
    small = sum(getattr(enc, n).nbytes for n in mapped._SMALL) + sum(
        k.nbytes for k in enc.vocab_sizes.keys
    )
    big = sum(getattr(enc, n).nbytes for n in mapped._BIG if getattr(enc, n) is not None)
    assert len(blob) < small + 20_000 < big  # the mapped arrays are not in it
    back = pickle.loads(blob)
    assert back.is_mapped and back.train_cat.npy_path == enc.train_cat.npy_path
    assert back.vocab_sizes.train_cat.npy_path == enc.train_cat.npy_path
    _same(enc, back)
    part = pickle.loads(pickle.dumps(enc.train_cat[5:9]))  # a slice travels as its values
    assert type(part) is np.ndarray and np.array_equal(part, enc.train_cat[5:9])


def _rss_file_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssFile:"):
                return int(line.split()[1])
    pytest.skip("no RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_release_drops_the_mapped_pages_from_this_process(tmp_path):
    np.save(tmp_path / "big.npy", np.arange(8 << 20, dtype=np.int64))  # 64 MiB
    arr = open_mapped(tmp_path / "big.npy")
    before = _rss_file_kib()
    assert int(arr[::512].sum()) == int(np.arange(0, 8 << 20, 512).sum())  # touch every page
    touched = _rss_file_kib()
    arr.release()
    after = _rss_file_kib()
    assert touched - before > 48 << 10  # most of the 64 MiB became resident
    assert after - before < 8 << 10
    assert int(arr[-1]) == (8 << 20) - 1  # still readable


def test_auto_maps_only_large_files(tmp_path, monkeypatch):
    path = _user_file(tmp_path / "users.parquet")
    assert not mapped.use_mapped(DataConfig(path=path))
    monkeypatch.setattr(mapped, "AUTO_BYTES", 1000)
    assert mapped.use_mapped(DataConfig(path=path))
    assert not mapped.use_mapped(DataConfig())  # the built-in synthetic data
    with pytest.raises(ReprokitError, match="needs a dataset file"):
        mapped.use_mapped(DataConfig(storage="mapped"))


def _train(tmp_path, path, out, *extra, subprocess_run: bool = False):
    """`train-ensemble` on `path`: in this process, or (`subprocess_run`) as a user runs it, with
    stderr redirected to a file as in CI. Returns an object with returncode and stderr."""
    args = ["train-ensemble", "--data", path, "--replicas", "2", "--vary", "init,data-order"]
    args += ["--epochs", "1", "--out", str(tmp_path / out), *extra]
    if not subprocess_run:
        result = CliRunner().invoke(app, args)
        return SimpleNamespace(returncode=result.exit_code, stderr=result.stderr)
    cmd = [sys.executable, "-c", "from reprokit.cli import main; main()", *args]
    with open(tmp_path / f"{out}.err", "w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err, check=False)
    proc.stderr = (tmp_path / f"{out}.err").read_text()
    return proc


@pytest.mark.parametrize("engine", ["process", "vectorized"])
def test_training_on_mapped_data_gives_the_same_predictions(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("REPROKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = _user_file(tmp_path / "users.parquet", numeric=False)
    for storage in ("memory", "mapped"):
        proc = _train(tmp_path, path, storage, "--storage", storage, "--engine", engine)
        assert proc.returncode == 0, proc.stderr
    for r in range(2):
        name = f"replicas/{r:03d}/predictions.parquet"
        a = pd.read_parquet(tmp_path / "memory" / name)
        b = pd.read_parquet(tmp_path / "mapped" / name)
        assert a.equals(b)
    # the storage is not part of the configuration a resume compares: one more replica, mapped
    proc = _train(tmp_path, path, "memory", "--storage", "mapped", "--engine", engine)
    assert proc.returncode == 0, proc.stderr


def test_mapped_training_in_spawned_workers_and_churn(tmp_path, monkeypatch):
    monkeypatch.setenv("REPROKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = _user_file(tmp_path / "users.parquet", numeric=False)
    lines = []
    for storage in ("memory", "mapped"):  # the same refusal either way
        proc = _train(tmp_path, path, storage, "--storage", storage, "--churn-by", "user")
        assert proc.returncode == 2
        lines.append(one_error_line(proc))
    assert lines[0] == lines[1] and "missing values in the evaluation data" in lines[0]
    common = ("--engine", "process", "--churn-by", "ad")
    proc = _train(tmp_path, path, "memory", "--storage", "memory", *common)
    assert proc.returncode == 0, proc.stderr
    proc = _train(
        tmp_path,
        path,
        "mapped",
        "--storage",
        "mapped",
        "--workers",
        "2",
        *common,
        subprocess_run=True,
    )
    assert proc.returncode == 0, proc.stderr
    for r in range(2):
        name = f"replicas/{r:03d}/predictions.parquet"
        assert pd.read_parquet(tmp_path / "memory" / name).equals(
            pd.read_parquet(tmp_path / "mapped" / name)
        )
    a = json.loads((tmp_path / "memory" / "summary.json").read_text())
    b = json.loads((tmp_path / "mapped" / "summary.json").read_text())
    assert a["churn"] == b["churn"]


def test_bad_storage_settings_are_one_line(tmp_path, monkeypatch):
    path = _user_file(tmp_path / "users.parquet")
    monkeypatch.setenv("REPROKIT_CACHE_DIR", "/proc/no-such-dir")
    proc = _train(tmp_path, path, "run", "--storage", "mapped", subprocess_run=True)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "REPROKIT_CACHE_DIR" in line
    proc = _train(tmp_path, path, "run2", "--storage", "disk")
    assert proc.returncode == 2
    assert "unknown storage 'disk'" in one_error_line(proc)
