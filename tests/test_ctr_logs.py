"""`reprokit data criteo / avazu` and `data synth --format criteo|avazu`: the BARS conventions on
hand-worked rows, streaming equals an in-memory reference, bounded memory, and bad input."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from cli_checks import one_error_line
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.data.ctr_logs import (
    CRITEO_CATEGORICAL,
    CRITEO_COLUMNS,
    CRITEO_NUMERIC,
    criteo_bucket,
    import_log,
    read_ingest_doc,
)
from reprokit.data.ctr_synth import AVAZU_COLUMNS, write_synth_log
from reprokit.data.layout import read_dataset
from reprokit.errors import ReprokitError

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, ["data", *map(str, args)])


def criteo_line(label: int, ints: dict[str, str], cats: dict[str, str]) -> str:
    """One Criteo row; unnamed counts are 7 and unnamed categories 'c0'."""
    values = [str(label)]
    values += [ints.get(n, "7") for n in CRITEO_NUMERIC]
    values += [cats.get(n, "c0") for n in CRITEO_CATEGORICAL]
    return "\t".join(values)


# --- the transform and the min-count mapping, by hand -----------------------------------------
def test_criteo_bucket_hand_worked():
    # x <= 2 stays (negatives too); else floor(ln(x)^2): ln 3 = 1.0986 -> 1.207, ln 8 = 2.0794 ->
    # 4.324, ln 10 = 2.3026 -> 5.302, ln 20 = 2.9957 -> 8.974, ln 100 = 4.6052 -> 21.21,
    # ln 1000 = 6.9078 -> 47.72
    x = np.array([-3, -1, 0, 1, 2, 3, 8, 10, 20, 100, 1000])
    assert criteo_bucket(x).tolist() == [-3, -1, 0, 1, 2, 1, 4, 5, 8, 21, 47]


def test_criteo_rows_hand_worked(tmp_path):
    rows = [
        (1, {"I1": "3", "I2": "-1"}, {"C1": "a", "C2": "x"}),
        (0, {"I1": "20", "I2": "-1"}, {"C1": "a", "C2": "y"}),
        (0, {"I1": "", "I2": "0"}, {"C1": "b", "C2": "x"}),
        (1, {"I1": "1", "I2": ""}, {"C1": "", "C2": "y"}),
        (0, {"I1": "20", "I2": "5"}, {"C1": "a", "C2": "z"}),
    ]
    path = tmp_path / "day_0.txt"
    path.write_text("\n".join(criteo_line(*r) for r in rows) + "\n")
    out = tmp_path / "criteo.parquet"
    import_log("criteo", path, out, min_count=2)
    ds = read_dataset(out)
    frame = ds.frame
    # I1 buckets 1, 8, missing, 1, 8: counts {1: 2, 8: 2}, tie by value -> 1 is id 2, 8 is id 3
    assert frame["I1"].tolist() == [2, 3, 1, 2, 3]
    # I2 values -1, -1, 0, missing, 5 (5 -> floor(ln 5^2) = 2): only -1 is seen twice
    assert frame["I2"].tolist() == [2, 2, 0, 1, 0]
    # C1: a three times (id 2), b once (OOV 0), empty (missing 1)
    assert frame["C1"].tolist() == [2, 2, 0, 1, 2]
    # C2: x and y twice each (x first by value), z once
    assert frame["C2"].tolist() == [2, 3, 2, 3, 0]
    assert frame["C3"].tolist() == [2] * 5 and frame["I3"].tolist() == [2] * 5
    assert frame["label"].tolist() == [1, 0, 0, 1, 0]
    assert frame["example_id"].tolist() == [0, 1, 2, 3, 4]
    assert ds.schema.categorical == CRITEO_NUMERIC + CRITEO_CATEGORICAL
    assert ds.schema.labels == ["label"] and ds.schema.numeric == []
    doc = read_ingest_doc(out)
    fields = {f["name"]: f for f in doc["fields"]}
    assert fields["C1"] == {
        "name": "C1",
        "vocab_size": 3,
        "distinct_values": 2,
        "oov_rows": 1,
        "missing_rows": 1,
        "transform": "none",
    }
    assert fields["I2"]["vocab_size"] == 3 and fields["I2"]["oov_rows"] == 2
    assert fields["I1"]["transform"] == "floor(ln(x)^2) if x > 2 else x"
    assert doc["min_count"] == 2 and doc["rows"] == 5
    # --rows takes the first rows; the default --min-count (10) makes every value rare here
    import_log("criteo", path, out, rows=3)
    head = read_dataset(out).frame
    assert len(head) == 3 and head["C1"].tolist() == [0, 0, 0] and head["I1"].tolist() == [0, 0, 1]


def test_avazu_hour_features_hand_worked(tmp_path):
    header = ",".join(AVAZU_COLUMNS)
    filler = ",".join(["1005", "0"] + ["f"] * 19)

    def line(click: int, hour: str, site: str) -> str:
        parts = filler.split(",")
        parts[2] = site  # site_id
        return f"123,{click},{hour}," + ",".join(parts)

    lines = [
        line(1, "14102100", "s1"),  # Tuesday 2014-10-21 00:00 UTC
        line(0, "14102523", "s1"),  # Saturday 23:00
        line(0, "14102614", "s2"),  # Sunday 14:00
    ]
    path = tmp_path / "train.gz"
    path.write_bytes(gzip.compress(("\n".join([header, *lines]) + "\n").encode()))
    out = tmp_path / "avazu.parquet"
    import_log("avazu", path, out)  # min_count 2
    ds = read_dataset(out)
    frame = ds.frame
    assert "id" not in frame.columns and ds.schema.labels == ["click"]
    assert ds.schema.timestamp == "timestamp"
    assert frame["timestamp"].tolist() == [
        1413849600,
        1413849600 + 4 * 86400 + 23 * 3600,
        1413849600 + 5 * 86400 + 14 * 3600,
    ]
    # raw values: hour 0, 23, 14 (each once: OOV), weekday 2, 6, 0 (%w), weekend 0, 1, 1
    assert frame["hour"].tolist() == [0, 0, 0]
    assert frame["weekday"].tolist() == [0, 0, 0]
    assert frame["is_weekend"].tolist() == [0, 2, 2]
    assert frame["site_id"].tolist() == [2, 2, 0]
    assert frame["C1"].tolist() == [2, 2, 2]
    import_log("avazu", path, out, min_count=1)
    frame = read_dataset(out).frame
    # all counts 1 for hour: ids by value 0 -> 2, 14 -> 3, 23 -> 4; weekday 0 -> 2, 2 -> 3, 6 -> 4
    assert frame["hour"].tolist() == [2, 4, 3]
    assert frame["weekday"].tolist() == [3, 4, 2]
    assert frame["is_weekend"].tolist() == [3, 2, 2]  # 1 twice first, then 0


# --- streaming equals an in-memory reference ----------------------------------------------
def reference_criteo(path: Path, min_count: int) -> pd.DataFrame:
    """The whole file in pandas, encoded with plain Python: the rules written out once more."""
    raw = pd.read_csv(
        path, sep="\t", header=None, names=CRITEO_COLUMNS, dtype=str, keep_default_na=False
    )
    out = {"example_id": np.arange(len(raw), dtype=np.int64), "label": raw["label"].astype("int8")}
    for name in CRITEO_NUMERIC + CRITEO_CATEGORICAL:
        values = raw[name].tolist()
        if name in CRITEO_NUMERIC:
            values = [
                "" if v == "" else (int(v) if int(v) <= 2 else math.floor(math.log(int(v)) ** 2))
                for v in values
            ]
        counts: dict = {}
        for v in values:
            if v != "":
                counts[v] = counts.get(v, 0) + 1
        kept = sorted(
            (v for v, n in counts.items() if n >= min_count), key=lambda v: (-counts[v], v)
        )
        ids = {v: i + 2 for i, v in enumerate(kept)}
        out[name] = np.array([1 if v == "" else ids.get(v, 0) for v in values], dtype=np.int32)
    return pd.DataFrame(out)


def test_streamed_import_equals_in_memory_reference(tmp_path):
    path = tmp_path / "criteo.txt.gz"
    write_synth_log("criteo", 3000, path, seed=3)
    whole = tmp_path / "whole.parquet"
    tiny = tmp_path / "tiny.parquet"
    import_log("criteo", path, whole, min_count=3)
    blocks: list[int] = []
    progress = lambda n_pass, rows: blocks.append(rows) if n_pass == 1 else None  # noqa: E731
    import_log("criteo", path, tiny, min_count=3, block_size=64 << 10, progress=progress)
    assert len(blocks) > 5 and blocks[-1] == 3000  # ~260 rows per block
    expected = reference_criteo(path, 3)
    for out in (whole, tiny):
        pd.testing.assert_frame_equal(read_dataset(out).frame, expected)
    assert read_ingest_doc(tiny)["fields"] == read_ingest_doc(whole)["fields"]


def mixed_criteo_log(path: Path, rows: int = 1200) -> None:
    """Criteo rows whose categories mix 8 hex digits (the packed path), shorter and longer text,
    upper case, non-ASCII, NUL bytes and empty cells; some columns all of one width, some all
    empty, some mixed within a block; counts with large, negative and missing values."""
    rng = np.random.default_rng(11)
    odd = ["ab", "7", "0123456789abcdef", "ABCDEF01", "é", "ü8", "abcdef0", "x y", "a", "a\x00"]
    hexes = [f"{v:08x}" for v in rng.choice(2**32, size=40, replace=False)] + ["00000000"]
    lines = []
    for i in range(rows):
        ints = {n: str(int(rng.lognormal(2, 2))) for n in CRITEO_NUMERIC}
        ints["I2"] = str(int(rng.integers(-3, 3)))
        ints["I5"] = str(int(rng.integers(0, 10**12)))  # wider than 8 digits
        ints["I3"] = "" if i % 3 else str(i % 7)
        cats = {n: hexes[int(rng.zipf(1.3)) % len(hexes)] for n in CRITEO_CATEGORICAL}
        cats["C1"] = odd[int(rng.integers(len(odd)))] if rng.random() < 0.3 else cats["C1"]
        cats["C2"] = "" if rng.random() < 0.4 else cats["C2"]
        cats["C3"] = ["ab", "cd", "ef", "é", "a\x00"][int(rng.integers(5))]  # all 2 bytes
        cats["C4"] = ""  # always empty
        cats["C5"] = odd[int(rng.integers(len(odd)))]  # never packs alone
        cats["C6"] = "" if rng.random() < 0.5 else odd[int(rng.integers(4))]
        lines.append(criteo_line(int(rng.integers(2)), ints, cats))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_packed_keys_equal_the_string_path(tmp_path, monkeypatch):
    # the packed uint64 path (any text of at most 8 ASCII bytes) against the string path for
    # every cell (PACKED_BYTES = 0), small parser chunks (several per block) and the
    # independent reference: the same parquet, byte for byte in its columns and documents
    from reprokit.data import ctr_logs

    path = tmp_path / "mixed.txt"
    mixed_criteo_log(path)
    expected = reference_criteo(path, 3)
    fast = import_log("criteo", path, tmp_path / "fast.parquet", min_count=3)
    monkeypatch.setattr(ctr_logs, "PARSE_BLOCK_SIZE", 4096)
    chunked = import_log(
        "criteo", path, tmp_path / "chunked.parquet", min_count=3, block_size=32 << 10
    )
    monkeypatch.setattr(ctr_logs, "PACKED_BYTES", 0)
    strings = import_log("criteo", path, tmp_path / "strings.parquet", min_count=3)
    tables = [pq.read_table(r.path) for r in (fast, chunked, strings)]
    for result, table in zip((fast, chunked, strings), tables, strict=True):
        pd.testing.assert_frame_equal(read_dataset(result.path).frame, expected)
        assert table.equals(tables[0], check_metadata=True)
        for a, b in zip(result.fields, fast.fields, strict=True):
            assert a.vocabulary.equals(b.vocabulary), a.name
    vocab = {f.name: f.vocabulary.to_pylist() for f in fast.fields}
    assert {"é", "0123456789abcdef", "a", "a\x00"} <= set(vocab["C5"])
    assert sorted(vocab["C3"]) == ["a\x00", "ab", "cd", "ef", "é"]
    assert vocab["C4"] == [] and read_dataset(fast.path).frame["C4"].eq(1).all()
    assert all(isinstance(v, int) for v in vocab["I5"])


def test_avazu_packed_keys_equal_the_string_path(tmp_path, monkeypatch):
    from reprokit.data import ctr_logs

    path = tmp_path / "train.csv"
    write_synth_log("avazu", 2000, path, seed=4)
    fast = import_log("avazu", path, tmp_path / "fast.parquet")
    monkeypatch.setattr(ctr_logs, "PACKED_BYTES", 0)
    strings = import_log("avazu", path, tmp_path / "strings.parquet")
    assert pq.read_table(fast.path).equals(pq.read_table(strings.path), check_metadata=True)
    raw = pd.read_csv(path, dtype=str)
    frame = read_dataset(fast.path).frame
    for name in ("site_id", "C14", "banner_pos"):  # 8 hex digits, 4-5 digits, 1 digit
        counts = raw[name].value_counts()
        kept = sorted((v for v, n in counts.items() if n >= 2), key=lambda v: (-counts[v], v))
        ids = {v: i + 2 for i, v in enumerate(kept)}
        assert frame[name].tolist() == [ids.get(v, 0) for v in raw[name]], name


def test_synth_logs_are_seeded_and_learnable(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    doc = write_synth_log("avazu", 4000, a, seed=5)
    write_synth_log("avazu", 4000, b, seed=5)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_text().splitlines()[0] == ",".join(AVAZU_COLUMNS)
    assert 0.13 < doc["positive_rate"] < 0.21
    c = tmp_path / "c.txt"
    write_synth_log("criteo", 20000, c, seed=5)
    frame = read_dataset(import_log("criteo", c, tmp_path / "c.parquet").path).frame
    assert 0.21 < frame["label"].mean() < 0.29
    # the labels depend on the features: a field's ids split the click rate well apart
    rates = frame.groupby("C3")["label"].agg(["mean", "size"])
    common = rates[rates["size"] >= 100]["mean"]
    assert common.max() - common.min() > 0.15


# --- bounded memory -------------------------------------------------------------------------
PEAK_SCRIPT = """
import resource, sys
from reprokit.data.ctr_logs import import_log
import_log("criteo", sys.argv[1], sys.argv[2], block_size=256 << 10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_kib(path: Path, out: Path) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.split()[-1])


def test_streamed_import_memory_stays_bounded(tmp_path):
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    write_synth_log("criteo", 10_000, small, seed=1)
    write_synth_log("criteo", 150_000, large, seed=1)
    text_mib = (large.stat().st_size - small.stat().st_size) / 2**20  # ~34 MiB more text
    grown_mib = peak_kib(large, tmp_path / "l.parquet") - peak_kib(small, tmp_path / "s.parquet")
    grown_mib /= 1024
    # holding the file would cost more than its text; streaming costs the (slowly growing)
    # vocabularies only
    assert text_mib > 30
    assert grown_mib < 0.5 * text_mib, (grown_mib, text_mib)
    assert len(read_dataset(tmp_path / "l.parquet")) == 150_000


# --- the CLI and bad input ------------------------------------------------------------------
def test_cli_synth_and_import_round_trip(tmp_path):
    log = tmp_path / "criteo.txt.gz"
    result = invoke("synth", "--format", "criteo", "--rows", 2000, "--out", log, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 2000
    out = tmp_path / "c.parquet"
    result = invoke("criteo", log, "--out", out, "--min-count", 2, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["rows"] == 2000 and doc["min_count"] == 2 and len(doc["fields"]) == 39
    assert "rows/s" in result.stderr and "pass 2/2" in result.stderr
    assert len(read_dataset(out)) == 2000
    result = invoke("synth", "--format", "avazu", "--rows", 500, "--out", tmp_path / "x.parquet")
    assert "text log" in one_error_line(result)
    result = invoke("synth", "--format", "avazu", "--fields", 3, "--out", tmp_path / "a.csv")
    assert "--fields applies to --format parquet only" in one_error_line(result)


def test_criteo_wrong_column_count(tmp_path):
    path = tmp_path / "bad.txt"
    good = criteo_line(0, {}, {})
    path.write_text("\n".join([good, good, good.rsplit("\t", 1)[0], good]) + "\n")
    line = one_error_line(invoke("criteo", path, "--out", tmp_path / "o.parquet"))
    assert "line 3 has 39 column(s)" in line and "40 tab-separated columns" in line
    assert not (tmp_path / "o.parquet").exists()
    # far into the file, in a later block: the line counts every block before it
    lines = [good] * 3000
    lines[2345] += "\textra"
    path.write_text("\n".join(lines) + "\n")
    for block_size in (16 << 10, 1 << 20):
        with pytest.raises(ReprokitError, match="line 2346 has 41 column"):
            import_log("criteo", path, tmp_path / "o.parquet", block_size=block_size)


def test_bad_logs_exit_2(tmp_path):
    avazu = tmp_path / "test.csv"
    avazu.write_text("id,hour,C1,site_id\n1,14102100,1005,a\n")
    line = one_error_line(invoke("avazu", avazu, "--out", tmp_path / "o.parquet"))
    assert "has no 'click' column" in line
    hours = tmp_path / "hours.csv"
    hours.write_text("id,click,hour,C1\n1,0,2014-10-21,1005\n")
    assert "not YYMMDDHH" in one_error_line(invoke("avazu", hours))
    labels = tmp_path / "labels.txt"
    labels.write_text(criteo_line(3, {}, {}) + "\n")
    assert "holds 3, not 0/1" in one_error_line(invoke("criteo", labels))
    text = tmp_path / "text.txt"
    text.write_text(criteo_line(0, {"I1": "abc"}, {}) + "\n")
    assert "is not a readable criteo log" in one_error_line(invoke("criteo", text))
    latin = tmp_path / "latin1.txt"  # bytes that are not UTF-8, in a short and a long cell
    for cell in ("caf\xe9", "caf\xe9 au lait"):
        latin.write_bytes((criteo_line(0, {}, {"C7": cell}) + "\n").encode("latin-1"))
        line = one_error_line(invoke("criteo", latin))
        assert "is not a readable criteo log" in line and "'C7'" in line and "UTF-8" in line
    assert "file not found" in one_error_line(invoke("criteo", tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert "is empty" in one_error_line(invoke("criteo", empty))
    result = invoke("criteo", labels, "--min-count", 0)
    assert "--min-count must be at least 1" in one_error_line(result)


@pytest.mark.parametrize("kind", ["criteo", "avazu"])
def test_imported_logs_train(tmp_path, kind):
    log = tmp_path / f"{kind}.txt"
    write_synth_log(kind, 3000, log, seed=2)
    data = import_log(kind, log, tmp_path / "d.parquet", min_count=2).path
    result = runner.invoke(
        app,
        [
            "train-ensemble",
            "--data",
            str(data),
            "--replicas",
            "2",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["replicas"] == 2
