"""Turn a run directory into one self-contained HTML page and its JSON twin."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from reprokit import __version__
from reprokit.errors import ReprokitError
from reprokit.gate import open_run
from reprokit.jsonio import to_json
from reprokit.report.context import build_context
from reprokit.report.sections import PD_KEYS, fmt, sections_for
from reprokit.store import atomic_write_bytes

SCHEMA_VERSION = 1

#: The page may load nothing: inline styles and inline SVG only; no scripts at all.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


def _num(value: Any, digits: int = 4) -> str:
    return fmt(value, digits)


def _ci(value: Any) -> str:
    if not value or any(v is None or (isinstance(v, float) and math.isnan(v)) for v in value):
        return ""
    return f"[{fmt(value[0])}, {fmt(value[1])}]"


def _pm(stats: dict[str, Any] | None, digits: int = 4) -> str:
    if not stats or stats.get("mean") is None:
        return "n/a"
    text = fmt(stats["mean"], digits)
    if stats.get("std") is not None:
        text += f" ± {fmt(stats['std'], 2)}"
    return text


def _val(value: Any) -> str:
    """A config value for display: None as '(none)', booleans as yes/no."""
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _count(value: Any) -> str:
    """A count (rows, parameters, ids): whole numbers with thousands separators, a mean over
    replicas that is not whole with one decimal; None/NaN as 'n/a'."""
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "n/a"
    return f"{int(v):,}" if v.is_integer() else f"{v:,.1f}"


def _size(value: Any) -> str:
    """A byte count in binary units (KiB, MiB, GiB), so a table's memory reads at a glance."""
    if value is None or isinstance(value, bool):
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{_count(v)} B" if unit == "B" else f"{v:,.1f} {unit}"
        v /= 1024
    raise AssertionError("unreachable")


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("reprokit", "report/templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=_num, ci=_ci, pm=_pm, val=_val, count=_count, size=_size)
    return env


@dataclass
class Report:
    html: str
    document: dict[str, Any]


def build_report(run_dir: str | Path) -> Report:
    """Load the run directory and render every section registered for its kind."""
    run = open_run(run_dir)
    ctx = build_context(run)
    rendered = []
    sections_doc: dict[str, Any] = {}
    for section in sections_for(ctx.kind):
        out = section.build(ctx)
        if out is None:
            continue
        rendered.append({"section": section, "out": out, "view": out.view or out.data})
        sections_doc[section.id] = {"title": section.title, **out.data}
        if out.notes:
            sections_doc[section.id]["notes"] = out.notes
    document = {
        "schema_version": SCHEMA_VERSION,
        "kind": "report",
        "run_kind": ctx.kind,
        "run_dir": str(run.path),
        "title": ctx.title,
        "reprokit_version": __version__,
        "sections": sections_doc,
    }
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=ctx.title,
            kind=ctx.kind,
            csp=CSP,
            sections=rendered,
            pd_keys=PD_KEYS,
            version=__version__,
        )
    )
    return Report(html=html, document=document)


def _atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def twin_path(out: Path) -> Path:
    return out.with_suffix(".json")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, Path, Report]:
    """Render and write `out` (default RUN_DIR/report.html) and its JSON twin, atomically."""
    run_dir = Path(run_dir)
    home = run_dir.parent if run_dir.is_file() else run_dir  # RUN_DIR/summary.json: beside it
    out = Path(out) if out is not None else home / "report.html"
    if out.suffix.lower() == ".json":
        raise ReprokitError(f"--out {out} ends in .json; that name is reserved for the JSON twin")
    if out.is_dir():
        raise ReprokitError(f"--out {out} is a directory; give a file name such as report.html")
    report = build_report(run_dir)
    twin = twin_path(out)
    _atomic_write_text(to_json(report.document) + "\n", twin)
    _atomic_write_text(report.html, out)
    return out, twin, report


def load_twin(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
