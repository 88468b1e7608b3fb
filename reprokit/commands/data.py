"""`reprokit data synth / movielens / import / criteo / avazu / describe`: make or ingest data.

Every subcommand writes one parquet file in reprokit's layout (schema in the parquet metadata),
prints a short Rich summary on stderr, and with ``--json`` the describe document on stdout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from reprokit.commands.common import cli_errors, err_console, print_json
from reprokit.data.ctr_logs import DEFAULT_BLOCK_SIZE, DEFAULT_MIN_COUNT
from reprokit.data.describe import describe_dataset, describe_file, describe_table
from reprokit.data.layout import Dataset, write_dataset
from reprokit.errors import ReprokitError

if TYPE_CHECKING:
    from reprokit.data.ctr_logs import IngestResult
    from reprokit.data.importer import ImportedDataset

JSON_HELP = "Print the dataset's describe document (JSON) on stdout."


def _finish(
    kind: str,
    dataset: Dataset,
    out: Path,
    seconds: float,
    as_json: bool,
    imported: ImportedDataset | None = None,
) -> None:
    """Summary table (and document) of a written dataset; for an import also the decisions it made
    on the user's behalf (row ids dropped, text labels mapped, a date column taken as the time),
    so none of them is silent."""
    doc = describe_dataset(dataset, out)
    doc["kind"] = kind
    doc["seconds"] = round(seconds, 3)
    table = describe_table(doc)
    if imported is not None:
        doc["dropped"] = dict(imported.dropped)
        doc["positive"] = {col: list(values) for col, values in imported.positive.items()}
        doc["inferred_timestamp"] = imported.inferred_timestamp
        doc["date_columns"] = list(imported.date_columns)
        for col, why in imported.dropped.items():
            table.add_row(col, f"dropped ({why})", "keep it with --categorical or --numeric", "0")
    err_console.print(table)
    if imported is not None:
        for col, values in imported.positive.items():
            shown = ", ".join(map(repr, values))
            err_console.print(f"label {col}: {shown} → 1, every other value → 0", markup=False)
        if imported.inferred_timestamp is not None:
            ts, kind = imported.inferred_timestamp, imported.inferred_timestamp_from
            err_console.print(f"timestamp: {ts} ({kind} → seconds)", markup=False)
        if imported.date_columns:
            err_console.print(
                f"date columns {', '.join(imported.date_columns)} are kept as features; "
                "to use one as the time, give --timestamp COL",
                markup=False,
            )
    err_console.print(f"wrote {out} ({len(dataset):,} rows) in {seconds:.2f} s")
    if as_json:
        print_json(doc)


def _parse_cardinality(text: str) -> int | list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ReprokitError(
            f"--cardinality must be an integer or a comma-separated list, got {text!r}"
        ) from None
    if not values:
        raise ReprokitError("--cardinality needs at least one value")
    return values[0] if len(values) == 1 else values


def _synth_log(
    fmt: str,
    rows: int,
    out: Path,
    seed: int,
    base_rate: float | None,
    ignored: list[str],
    as_json: bool,
) -> None:
    """`data synth --format criteo|avazu`: a generated raw log instead of a parquet dataset."""
    from reprokit.data.ctr_synth import SYNTH_FORMATS, write_synth_log

    if fmt not in SYNTH_FORMATS:
        raise ReprokitError(f"--format must be parquet, criteo or avazu, got {fmt!r}")
    if ignored:
        raise ReprokitError(
            f"{ignored[0]} applies to --format parquet only (a {fmt} log has {fmt}'s own columns)"
        )
    if out.suffix == ".parquet":
        raise ReprokitError(
            f"--format {fmt} writes a text log, not parquet; give --out {fmt}.txt (or .gz)"
        )
    doc = write_synth_log(fmt, rows, out, seed=seed, base_rate=base_rate)
    err_console.print(
        f"wrote {out} ({rows:,} {fmt} rows, positive rate {doc['positive_rate']:.4f}, "
        f"{doc['bytes'] / 1e6:,.1f} MB) in {doc['seconds']:.2f} s",
        markup=False,
    )
    if as_json:
        print_json(doc)


def _finish_log(result: IngestResult, as_json: bool) -> None:
    """Per-field summary of an import: vocabulary size and how many rows were rare or empty."""
    from rich.table import Table

    doc = result.doc
    rows = result.rows
    table = Table(title=f"{doc['format']}: {rows:,} rows, --min-count {doc['min_count']}")
    for col in ("field", "vocab (ids)", "distinct", "rare → 0", "empty → 1", "transform"):
        table.add_column(col, justify="left" if col in ("field", "transform") else "right")
    for f in doc["fields"]:
        table.add_row(
            f["name"],
            f"{f['vocab_size']:,}",
            f"{f['distinct_values']:,}",
            f"{100.0 * f['oov_rows'] / rows:.1f}%",
            f"{100.0 * f['missing_rows'] / rows:.1f}%",
            f["transform"],
        )
    err_console.print(table)
    seconds = doc["seconds"]["total"]
    rate = rows / seconds if seconds > 0 else float("inf")
    err_console.print(
        f"wrote {result.path} ({rows:,} rows, {len(doc['fields'])} fields) in {seconds:.2f} s "
        f"({rate:,.0f} rows/s)",
        markup=False,
    )
    if as_json:
        print_json({**doc, "kind": f"data-{doc['format']}", "path": str(result.path)})


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(
        name="data",
        help="Make or ingest a dataset in reprokit's parquet layout (synth, movielens, import, "
        "criteo, avazu, describe).",
        no_args_is_help=True,
    )
    app.add_typer(data_app, name="data")

    @data_app.command("synth")
    @cli_errors
    def synth_command(
        out: Path = typer.Option(
            Path("synth.parquet"),
            "--out",
            "-o",
            help="Output parquet; with --format criteo|avazu a text log (.gz: gzip).",
        ),
        fmt: str = typer.Option(
            "parquet",
            "--format",
            help="parquet (a reprokit dataset), or criteo / avazu: a raw log in that layout "
            "for `reprokit data criteo|avazu` (uses --rows, --seed and --base-rate only).",
        ),
        rows: int = typer.Option(20_000, "--rows", help="Number of rows."),
        fields: int = typer.Option(8, "--fields", help="Categorical fields c0..c{F-1}."),
        cardinality: str = typer.Option(
            "1000", "--cardinality", help="Ids per field: one number, or one per field (a,b,c)."
        ),
        numeric: int = typer.Option(4, "--numeric", help="Numeric features n0..n{K-1}."),
        seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same bytes."),
        zipf: float = typer.Option(1.1, "--zipf", help="Zipf exponent of the id frequencies."),
        base_rate: float | None = typer.Option(
            None,
            "--base-rate",
            help="Target share of positives (default 0.2; criteo 0.25, avazu 0.17).",
        ),
        tasks: int = typer.Option(1, "--tasks", help="Label columns: label, label_1, ..."),
        timestamp: bool = typer.Option(
            True, "--timestamp/--no-timestamp", help="Add a timestamp column (30 days)."
        ),
        drift: float = typer.Option(
            0.0, "--drift", help="How far the teacher moves over time (0 = no drift, 1 = a lot)."
        ),
        noise: float = typer.Option(0.5, "--noise", help="Std of the Gaussian logit noise."),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Generate a synthetic CTR dataset (Zipf ids, random teacher network labels).

        Example: reprokit data synth --rows 100000 --out data/synth.parquet

        Raw log: reprokit data synth --format criteo --rows 2000000 --out criteo.txt.gz
        """
        if fmt != "parquet":
            given = {
                "--fields": fields != 8,
                "--cardinality": cardinality != "1000",
                "--numeric": numeric != 4,
                "--zipf": zipf != 1.1,
                "--tasks": tasks != 1,
                "--no-timestamp": not timestamp,
                "--drift": drift != 0.0,
                "--noise": noise != 0.5,
            }
            _synth_log(fmt, rows, out, seed, base_rate, [k for k, v in given.items() if v], as_json)
            return
        from reprokit.data.synth import generate_dataset

        base_rate = 0.2 if base_rate is None else base_rate
        start = time.perf_counter()
        dataset = generate_dataset(
            rows,
            fields,
            _parse_cardinality(cardinality),
            numeric,
            seed,
            zipf_exponent=zipf,
            base_rate=base_rate,
            tasks=tasks,
            timestamp=timestamp,
            drift=drift,
            noise=noise,
        )
        write_dataset(dataset.frame, dataset.schema, out)
        _finish("data-synth", dataset, out, time.perf_counter() - start, as_json)

    @data_app.command("movielens")
    @cli_errors
    def movielens_command(
        path: Path = typer.Option(
            ..., "--path", help="Directory with GroupLens u.* files or RecBole ml-100k.* files."
        ),
        out: Path = typer.Option(
            Path("movielens-100k.parquet"), "--out", "-o", help="Output parquet."
        ),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Convert a local MovieLens-100k copy (label = rating >= 4).

        Example: reprokit data movielens --path ~/data/ml-100k --out data/ml100k.parquet
        """
        from reprokit.data.movielens import load_movielens

        start = time.perf_counter()
        dataset = load_movielens(path)
        write_dataset(dataset.frame, dataset.schema, out)
        _finish("data-movielens", dataset, out, time.perf_counter() - start, as_json)

    @data_app.command("import")
    @cli_errors
    def import_command(
        file: Path = typer.Argument(..., help="CSV/TSV (optionally compressed) or parquet file."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Output parquet (default: FILE's stem + .reprokit.parquet)."
        ),
        label: list[str] | None = typer.Option(
            None, "--label", help="Label column(s); repeat or comma-separate (default: label*)."
        ),
        categorical: list[str] | None = typer.Option(
            None, "--categorical", help="Columns to treat as categorical (comma list)."
        ),
        numeric: list[str] | None = typer.Option(
            None, "--numeric", help="Columns to treat as numeric (comma list)."
        ),
        drop: list[str] | None = typer.Option(None, "--drop", help="Columns to leave out."),
        example_id: str | None = typer.Option(
            None, "--example-id", help="Unique integer id column (default: example_id or row)."
        ),
        timestamp: str | None = typer.Option(
            None, "--timestamp", help="Time column, numbers or dates (default: timestamp)."
        ),
        label_threshold: float | None = typer.Option(
            None, "--label-threshold", help="Binarise numeric labels as value >= THRESHOLD."
        ),
        positive: list[str] | None = typer.Option(
            None,
            "--positive",
            help="For a text label: this value is 1, every other value 0 (e.g. '>50K', yes); "
            "repeat it (or comma-separate) to name several spellings ('>50K' and '>50K.'); "
            "values are compared after stripping surrounding whitespace.",
        ),
        max_categories: int = typer.Option(
            1000,
            "--max-categories",
            help="Integer columns with at most this many values are categorical.",
        ),
        name: str | None = typer.Option(None, "--name", help="Dataset name (default: FILE stem)."),
        as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
    ) -> None:
        """Import a CSV or parquet file with a label column, inferring column roles.

        Integer columns named like ids (ID, user_id, id_user, userId, adID, any case) are
        categorical. A row id, a column with a different value in every row that is text (uuid)
        or an id-named or consecutive integer (ID, a row counter), is dropped unless --categorical
        or --numeric names it.

        Example: reprokit data import clicks.csv --label click --categorical ad --out clicks.parquet

        Text label: reprokit data import adult.csv --label income --positive '>50K'

        A single date column (ISO text or datetimes) is the timestamp unless --timestamp names one.
        """
        from reprokit.data.importer import import_file

        start = time.perf_counter()
        if out is None:
            out = file.with_name(file.name.split(".")[0] + ".reprokit.parquet")
        dataset = import_file(
            file,
            out,
            name=name,
            labels=label,
            categorical=categorical,
            numeric=numeric,
            drop=drop,
            example_id=example_id,
            timestamp=timestamp,
            label_threshold=label_threshold,
            positive=positive,
            max_categories=max_categories,
        )
        _finish("data-import", dataset, out, time.perf_counter() - start, as_json, dataset)

    def _log_command(kind: str):
        @cli_errors
        def command(
            file: Path = typer.Argument(..., help=f"The {kind} log (plain text or gzip)."),
            out: Path = typer.Option(
                Path(f"{kind}.parquet"), "--out", "-o", help="Output parquet."
            ),
            min_count: int = typer.Option(
                DEFAULT_MIN_COUNT[kind],
                "--min-count",
                help="Values seen fewer times share the out-of-vocabulary id 0 (BARS' "
                "min_categr_count).",
            ),
            rows: int | None = typer.Option(None, "--rows", help="Take only the first N rows."),
            block_mib: float = typer.Option(
                DEFAULT_BLOCK_SIZE / (1 << 20),
                "--block-mib",
                help="MiB of text read per block (memory is about a few blocks).",
            ),
            as_json: bool = typer.Option(False, "--json", help="Print the ingest document."),
        ) -> None:
            from reprokit.commands.ingest_progress import IngestProgress
            from reprokit.data.ctr_logs import import_log

            with IngestProgress(kind, limit=rows) as progress:
                result = import_log(
                    kind,
                    file,
                    out,
                    min_count=min_count,
                    rows=rows,
                    block_size=max(1024, int(block_mib * (1 << 20))),
                    progress=progress,
                )
            _finish_log(result, as_json)

        return command

    criteo_help = (
        "Import a Criteo log (label, I1-I13, C1-C26, tab-separated, no header; plain or gzip) "
        "with BARS conventions: counts x -> floor(ln(x)^2) if x > 2, values rarer than "
        "--min-count -> id 0, empty cells -> id 1; streamed in two passes."
        "\n\nExample: reprokit data criteo train.txt.gz --out criteo.parquet"
    )
    avazu_help = (
        "Import an Avazu log (CSV with a header: id, click, hour YYMMDDHH, C1, banner_pos, "
        "site_*, app_*, device_*, C14-C21; plain or gzip) with BARS conventions: id dropped, "
        "hour -> hour of day, weekday, is_weekend and timestamp; values rarer than --min-count "
        "-> id 0, empty cells -> id 1; streamed in two passes."
        "\n\nExample: reprokit data avazu train.gz --out avazu.parquet"
    )
    data_app.command("criteo", help=criteo_help)(_log_command("criteo"))
    data_app.command("avazu", help=avazu_help)(_log_command("avazu"))

    @data_app.command("describe")
    @cli_errors
    def describe_command(
        file: Path = typer.Argument(..., help="Dataset parquet (or a CSV/parquet to infer)."),
        as_json: bool = typer.Option(False, "--json", help="Print the document on stdout."),
    ) -> None:
        """Rows, columns by role, cardinalities, label base rates, time range and missing values.

        Example: reprokit data describe data/synth.parquet --json
        """
        doc = describe_file(file)
        err_console.print(describe_table(doc))
        if as_json:
            print_json(doc)
