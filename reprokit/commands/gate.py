"""`reprokit gate RUN_DIR`: CI thresholds and baseline comparison; exit 0 pass, 1 fail, 2 bad."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from reprokit.commands.common import cli_errors, err_console, print_json

HELP = (
    "Judge a run against thresholds (and a baseline run) for CI.\n\n"
    "Exit status: 0 when every rule holds (always with --warn-only), 1 when a rule fails, 2 on bad "
    "input (missing or corrupt run directory, unknown metric or arm, no rule given).\n\n"
    "For a compare-activations run every arm is judged unless --arm names some. Against a baseline, "
    "arms are matched by name; a train-ensemble baseline serves every arm. A baseline must be "
    "measured on the same data (fingerprint) and differ from the run in at most one config key, "
    "the field under test, which the verdict reports; --allow-different lifts this check.\n\n"
    "An online run (reprokit online) is judged on one sync interval (--interval, default the "
    "first): --max-pd on the final shard's PD (--worst-shard: the largest over the shards), "
    "--min-auc-gain on the mean online − batch AUC, --min-auc on the mean online AUC.\n\n"
    "Examples:\n\n"
    "  reprokit gate runs/pr --max-pd 0.05 --use-ci-upper\n\n"
    "  reprokit gate runs/pr --baseline baseline/ --max-pd-increase 10 --max-auc-drop 0.005 "
    "--junit gate.xml\n\n"
    "  reprokit gate runs/cmp --arm smelu:beta=1 --min-auc 0.70 --json\n\n"
    "  reprokit gate runs/ranker --max-churn 0.1 --use-ci-upper\n\n"
    "  reprokit gate runs/stream --interval 4 --max-pd 0.3 --worst-shard --min-auc-gain 0"
)


def _table(result) -> Table:
    from reprokit.gate import describe_difference

    caption = "; ".join(
        f"differs from the baseline: {describe_difference(d)}" for d in result.differences
    )
    table = Table(
        title=f"reprokit gate: {result.verdict.upper()}",
        title_justify="left",
        caption=escape(caption) or None,
        caption_justify="left",
    )
    for column in ("rule", "unit", "quantity", "threshold", "observed", "result"):
        table.add_column(column, justify="right" if column in ("threshold", "observed") else "left")
    for r in result.rules:
        observed = "null" if r.observed is None else f"{r.observed:.6g}"
        if r.passed:
            verdict = "[green]pass[/]"
        else:
            verdict = "[yellow]warn[/]" if result.warn_only else "[red]FAIL[/]"
        table.add_row(
            escape(r.rule),
            escape(r.unit),
            escape(r.quantity),
            f"{r.comparison} {r.threshold:.6g}",
            observed,
            verdict,
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("gate", help=HELP)
    @cli_errors
    def gate_command(
        run_dir: Path = typer.Argument(
            ..., help="Run directory (or its summary.json / compare.json).", show_default=False
        ),
        max_pd: float | None = typer.Option(
            None, "--max-pd", help="Fail when PD[--metric] > VALUE."
        ),
        metric: str = typer.Option(
            "rel",
            "--metric",
            help="PD key for the PD rules: abs, rel, abs_mean, rel_mean, l2, rel_std or flip.",
        ),
        use_ci_upper: bool = typer.Option(
            False,
            "--use-ci-upper",
            help="Judge the upper bound of the confidence interval (PD and churn rules).",
        ),
        baseline: Path | None = typer.Option(
            None, "--baseline", help="Baseline run directory (or its summary.json / compare.json)."
        ),
        max_pd_increase: float | None = typer.Option(
            None, "--max-pd-increase", help="Fail when PD rose more than PCT % over the baseline."
        ),
        max_auc_drop: float | None = typer.Option(
            None,
            "--max-auc-drop",
            help="Fail when mean AUC fell more than VALUE below the baseline.",
        ),
        min_auc: float | None = typer.Option(None, "--min-auc", help="Fail when mean AUC < VALUE."),
        max_churn: float | None = typer.Option(
            None,
            "--max-churn",
            help="Fail when top-k churn per group > VALUE (runs made with --churn-by).",
        ),
        min_auc_gain: float | None = typer.Option(
            None,
            "--min-auc-gain",
            help="Online runs: fail when the mean online − batch AUC of the interval < VALUE.",
        ),
        worst_shard: bool = typer.Option(
            False,
            "--worst-shard",
            help="Online runs: judge --max-pd on the worst shard (default: the final shard).",
        ),
        interval: float | None = typer.Option(
            None,
            "--interval",
            help="Online runs: the sync interval to judge (default: the first of the run).",
        ),
        arm: list[str] | None = typer.Option(
            None, "--arm", help="Arm(s) of a compare run to judge (default: every arm)."
        ),
        warn_only: bool = typer.Option(
            False, "--warn-only", help="Report failed rules but exit 0 (informational gate)."
        ),
        allow_different: bool = typer.Option(
            False,
            "--allow-different",
            help="Compare with a baseline of other data, a changed setup (more than one config "
            "key) or no recorded provenance; the differences are still reported.",
        ),
        junit: Path | None = typer.Option(None, "--junit", help="Write JUnit XML to FILE."),
        json_out: bool = typer.Option(False, "--json", help="Print the verdict JSON on stdout."),
    ) -> None:
        from reprokit.gate import GateRules, evaluate, junit_xml, open_run
        from reprokit.store import atomic_write_bytes

        rules = GateRules(
            max_pd=max_pd,
            metric=metric,
            use_ci_upper=use_ci_upper,
            max_pd_increase=max_pd_increase,
            max_auc_drop=max_auc_drop,
            min_auc=min_auc,
            max_churn=max_churn,
            min_auc_gain=min_auc_gain,
            worst_shard=worst_shard,
            interval=interval,
            arms=list(arm or []),
            warn_only=warn_only,
            allow_different=allow_different,
        )
        run = open_run(run_dir)
        base = open_run(baseline) if baseline is not None else None
        result = evaluate(run, rules, base)
        if junit is not None:  # first: a path that cannot be written is one error line, no table
            atomic_write_bytes(junit, junit_xml(result).encode("utf-8"))
        err_console.print(_table(result))
        failed = [r for r in result.rules if not r.passed]
        for r in failed:
            err_console.print(f"[red]✗[/] {escape(r.unit)}: {escape(r.message)}", highlight=False)
        if json_out:
            print_json(result.to_dict())
        if result.exit_code:
            raise typer.Exit(result.exit_code)
