"""`reprokit report RUN_DIR`: one self-contained HTML page and its JSON twin."""

from __future__ import annotations

from pathlib import Path

import typer

from reprokit.commands.common import cli_errors, err_console, print_json

HELP = (
    "Write one self-contained HTML report (inline SVG plots, no scripts, no network) for a run.\n\n"
    "Reads a run directory (train-ensemble, compare, compare-activations, attribute, stability, "
    "online) and writes RUN_DIR/report.html "
    "(or --out) plus a JSON twin with the same numbers beside it (report.json).\n\n"
    "Examples:\n\n"
    "  reprokit report runs/ens\n\n"
    "  reprokit report runs/cmp --out cmp.html\n\n"
    "  reprokit report runs/ens --json > report.json"
)


def register(app: typer.Typer) -> None:
    @app.command("report", help=HELP)
    @cli_errors
    def report_command(
        run_dir: Path = typer.Argument(..., help="Run directory to report on.", show_default=False),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="HTML file to write (default: RUN_DIR/report.html)."
        ),
        json_out: bool = typer.Option(False, "--json", help="Also print the JSON twin on stdout."),
    ) -> None:
        from reprokit.report import write_report

        with err_console.status("rendering report"):
            html_path, twin, report = write_report(run_dir, out)
        size = html_path.stat().st_size
        err_console.print(
            f"wrote [bold]{html_path}[/] ({size / 1024:.0f} KiB, "
            f"{len(report.document['sections'])} sections) and {twin.name}",
            highlight=False,
        )
        if json_out:
            print_json(report.document)
