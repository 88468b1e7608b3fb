"""The report's "Embedding table" section on run directories written by reprokit itself: a dynamic
(collisionless) table with its growth figure, a static `table` run with per-field widths (no
figure), a compare study (only the dynamic arm drawn, as its replica mean) and old summaries
without the block or logs without `table_rows`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from reprokit.cli import app
from reprokit.report import build_report
from reprokit.report.render import _count, _size

runner = CliRunner()
TINY = ["--synth-rows", "600", "--epochs", "1", "--replicas", "2"]
DYNAMIC = "collisionless:min_count=2,expire=20"


def _train(out: Path, *extra: str) -> Path:
    result = runner.invoke(app, ["train-ensemble", *TINY, *extra, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def dynamic_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "dyn", "--embedding", DYNAMIC)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("runs") / "tab", "--field-dims", "c0=4,c1=16")


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _section(html: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}".*?</section>', html, re.S)
    assert match, f"no section {sid}"
    return match.group(0)


def _cells(section_html: str) -> list[str]:
    """Every table cell's text, tags stripped."""
    cells = re.findall(r"<td[^>]*>(.*?)</td>", section_html, re.S)
    return [re.sub(r"<[^>]+>", " ", c).strip() for c in cells]


def _log_rows(run: Path) -> dict[str, list[int]]:
    """Each replica's table_rows column, read straight from its train_log.parquet."""
    return {
        rep.name: pd.read_parquet(rep / "train_log.parquet")["table_rows"].tolist()
        for rep in sorted((run / "replicas").iterdir())
    }


def test_dynamic_table_section_numbers_and_growth_figure(dynamic_run: Path):
    block = _summary(dynamic_run)["embedding"]
    assert block["kind"].startswith("collisionless")
    report = build_report(dynamic_run)
    ids = re.findall(r'<section id="([^"]+)"', report.html)
    assert ids.index("embedding") == ids.index("training-loss") + 1  # next to the loss curves
    html = _section(report.html, "embedding")
    cells = _cells(html)
    # kv table: name, value pairs; numbers as the summary has them (means over replicas)
    kv = dict(zip(cells[0:18:2], cells[1:18:2], strict=True))
    assert kv["kind"] == block["kind"]
    assert kv["parameters"] == f"{int(block['params']):,}"
    assert kv["rows at end"] == f"{int(block['rows_final']):,}"
    for key, name in [("admitted", "admitted"), ("filtered", "filtered"), ("expired", "expired")]:
        assert kv[name] == f"{int(block[key]):,}"
    assert kv["rejected (full)"] == f"{int(block['rejected_full']):,}"
    assert kv["memory"] == f"{int(block['bytes'])} B"
    assert kv["collision rate (all fields)"] == "0"
    # params of a dynamic table = rows left × embedding dim
    dim = json.loads((dynamic_run / "manifest.json").read_text())["config"]["model"]
    assert block["params"] == block["rows_final"] * dim["embedding_dim"]
    # the growth figure, inline, with one line per replica
    assert 'aria-label="table-size"' in html and "Table size over training" in html
    section = report.document["sections"]["embedding"]
    logs = _log_rows(dynamic_run)
    arm = next(iter(section["table_rows"]))
    assert set(section["table_rows"][arm]) == set(logs) == {"000", "001"}
    for name, rows in logs.items():
        curve = section["table_rows"][arm][name]
        assert curve == {
            "steps": len(rows), "first": rows[0], "max": max(rows), "final": rows[-1]
        }  # fmt: skip
    # the last logged size is what the summary says training left, replica by replica
    per_replica = section["per_replica"][arm]
    assert [r["replica"] for r in per_replica] == ["000", "001"]
    assert [r["rows_final"] for r in per_replica] == [logs["000"][-1], logs["001"][-1]]
    assert section["arms"][arm]["rows_final"] == pytest.approx(
        np.mean([r[-1] for r in logs.values()])
    )
    assert "Table counters per replica" in html
    assert set(section["fields"]) == set(block["field_collision_rate"])


def test_table_run_shows_widths_and_no_growth_figure(table_run: Path):
    block = _summary(table_run)["embedding"]
    assert block["kind"] == "table" and "admitted" not in block
    report = build_report(table_run)
    html = _section(report.html, "embedding")
    cells = _cells(html)
    kv = dict(zip(cells[0:8:2], cells[1:8:2], strict=True))
    assert kv["kind"] == "table"
    assert kv["parameters"] == f"{block['params']:,}"
    assert kv["memory"].startswith(f"{block['bytes'] / 1024:,.1f} KiB")
    assert f"({block['bytes']:,} B)" in kv["memory"]
    assert "rows at end" not in html and "admitted" not in html
    assert "<svg" not in html and "Table size over training" not in html
    # per field: collision rate and width, in the summary's field order
    assert "embedding width" in html
    fields = report.document["sections"]["embedding"]["fields"]
    assert list(fields) == list(block["field_dims"])
    arm = next(iter(report.document["sections"]["embedding"]["arms"]))
    assert {f: c[arm]["width"] for f, c in fields.items()} == block["field_dims"]
    assert block["field_dims"]["c0"] == 4 and block["field_dims"]["c1"] == 16
    field_cells = cells[8:]
    assert field_cells[:3] == ["c0", "0", "4"] and field_cells[3:6] == ["c1", "0", "16"]
    assert report.document["sections"]["embedding"]["table_rows"] == {}


def test_old_summary_without_the_block_still_renders(table_run: Path, tmp_path: Path):
    old = tmp_path / "old"
    shutil.copytree(table_run, old)
    summary = _summary(old)
    del summary["embedding"]
    (old / "summary.json").write_text(json.dumps(summary))
    report = build_report(old)
    ids = re.findall(r'<section id="([^"]+)"', report.html)
    assert "embedding" not in ids and "embedding" not in report.document["sections"]
    assert {"verdict", "pd-table", "training-loss", "replicas"} <= set(ids)


def test_dynamic_run_whose_logs_lack_table_rows(dynamic_run: Path, tmp_path: Path):
    """A dynamic run from before the log column: the table, no figure, a note that says why."""
    old = tmp_path / "old-dyn"
    shutil.copytree(dynamic_run, old)
    for log in old.glob("replicas/*/train_log.parquet"):
        frame = pd.read_parquet(log).drop(columns=["table_rows"])
        frame.to_parquet(log)
    summary = _summary(old)
    summary["embedding"]["kind"] = "<script>alert(1)</script>"  # escaped like every string
    (old / "summary.json").write_text(json.dumps(summary))
    html = _section(build_report(old).html, "embedding")
    assert "<svg" not in html
    assert "have no table_rows column" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "rows at end" in html


def test_compare_draws_only_dynamic_arms_as_replica_means(tmp_path: Path):
    out = tmp_path / "cmp"
    args = ["compare", "--arm", "model.embedding=table", "--arm", f'model.embedding="{DYNAMIC}"']
    result = runner.invoke(app, [*args, *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "compare.json").read_text())
    report = build_report(out)
    section = report.document["sections"]["embedding"]
    html = _section(report.html, "embedding")
    by_kind = {}
    for arm in doc["arms"]:
        label = str(arm.get("label") or arm.get("activation") or arm["name"])
        row = section["arms"][label]
        assert row["params"] == arm["embedding"]["params"]
        assert row["kind"] == arm["embedding"]["kind"]
        by_kind[arm["embedding"]["kind"].split(":")[0]] = (label, arm)
    table_label, table_arm = by_kind["table"]
    dyn_label, dyn_arm = by_kind["collisionless"]
    assert f"{table_arm['embedding']['params']:,}" in html
    assert section["arms"][table_label].get("rows_final") is None
    assert "—" in html  # the static arm has no admission counters
    # only the dynamic arm is drawn, as the mean over its replicas
    assert list(section["table_rows"]) == [dyn_label]
    logs = _log_rows(out / dyn_arm["run_dir"])
    mean = section["table_rows"][dyn_label]["mean"]
    assert mean["final"] == pytest.approx(np.mean([r[-1] for r in logs.values()]))
    assert mean["max"] == pytest.approx(np.max(np.mean(list(logs.values()), axis=0)))
    assert 'aria-label="table-size"' in html and "mean over each arm" in html
    assert len(section["per_replica"][dyn_label]) == 2


def test_count_and_size_filters():
    assert _count(29488) == "29,488" and _count(40.0) == "40" and _count(602.5) == "602.5"
    assert _count(None) == "n/a" and _count(float("nan")) == "n/a"
    assert _size(160.0) == "160 B" and _size(117952) == "115.2 KiB"
    assert _size(3 * 1024**3) == "3.0 GiB" and _size(None) == "n/a"
