"""`reprokit attribute`: one arm per nondeterminism source, the control and all — which source
causes the PD."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, fmt_significant
from reprokit.commands.compare import (
    DEFAULT_REPLICAS,
    _power_note,
    _replicas_in_file,
    run_paired_study,
)
from reprokit.jsonio import as_float
from reprokit.metrics.churn import DEFAULT_TOP_K

MODES = {"control": "control", "alone": "alone", "all": "all sources", "leave-one-out": "left out"}


def render_attribution_table(doc: dict[str, Any]) -> Table:
    """One row per arm, sorted by PD rel within each mode: PD rel [CI], PD abs, AUC, p vs control."""
    table = Table(
        title=f"attribute: {doc.get('run_dir', '')}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
        caption=(
            f"{doc.get('replicas')} replicas per arm; {doc.get('verdict')}.\n{doc.get('note')}"
            + "".join(f"\nnote: {n}" for n in doc.get("notes") or [])
            + _power_note(doc)
        ),
    )
    for name in (
        "source",
        "mode",
        "PD rel [95% CI]",
        "PD abs",
        "flip",
        "AUC mean±std",
        "p PD (Holm)",
    ):
        table.add_column(name, justify="left" if name in ("source", "mode") else "right")
    tests = {a["label"]: (a.get("tests") or {}).get("rel") or {} for a in doc["arms"]}
    for entry in doc["sources"]:
        pd = entry.get("pd") or {}
        ci = (entry.get("pd_ci") or {}).get("rel") or [None, None]
        auc = entry.get("auc") or {}
        p = tests.get(entry["label"], {}).get("p_holm")
        table.add_row(
            entry["source"] if entry["mode"] != "all" else "all",
            MODES[entry["mode"]],
            f"{fmt_significant(pd.get('rel'), 3)} [{fmt_significant(ci[0], 3)}, "
            f"{fmt_significant(ci[1], 3)}]",
            fmt_significant(pd.get("abs"), 3),
            fmt_significant(pd.get("flip"), 3),
            f"{as_float(auc.get('mean')):.4f}±{as_float(auc.get('std')):.4f}",
            "control" if entry["mode"] == "control" else fmt_significant(p, 3),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("attribute")
    @cli_errors
    def attribute_command(
        ctx: typer.Context,
        sources: Annotated[
            str | None,
            typer.Option(
                "--sources",
                help="Comma-separated sources to attribute (default: every source the device "
                "allows: init, data-order, dropout, bitflip, async, threads on CPU, and admission "
                "with a probabilistic collisionless table).",
                show_default=False,
            ),
        ] = None,
        leave_one_out: Annotated[
            bool,
            typer.Option(
                "--leave-one-out/--no-leave-one-out",
                help="Also one arm per source with every other source varied.",
            ),
        ] = False,
        test: Annotated[
            str, typer.Option("--test", help="Paired test against the control arm.")
        ] = "permutation",
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option(
                "--replicas",
                "-n",
                help=opt.with_default("Replicas per arm.", str(DEFAULT_REPLICAS)),
            ),
        ] = None,
        dropout: opt.Dropout = None,
        epochs: opt.Epochs = None,
        lr: opt.LearningRate = None,
        hidden: opt.Hidden = None,
        synth_rows: opt.SynthRows = None,
        seed: opt.Seed = None,
        device: opt.Device = None,
        engine: opt.Engine = None,
        workers: opt.Workers = 1,
        backend: opt.Backend = "local",
        ray_address: opt.RayAddress = None,
        replicas_per_task: opt.ReplicasPerTask = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help=opt.out_help("Run directory (re-running resumes every arm).", "attribute"),
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite arms of another config.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print attribute.json on stdout.")
        ] = False,
        churn_by: opt.ChurnBy = None,
        top_k: opt.TopK = DEFAULT_TOP_K,
    ) -> None:
        """Which nondeterminism source causes the PD: one arm per source alone, plus the control
        (none: PD exactly 0) and all sources; --leave-one-out adds all-but-one arms.

        Arms share per-replica seeds, so they are paired; PD contributions are not additive, so
        read each source alone next to all-but-that-source. `reprokit report RUN_DIR` draws the
        attribution chart; `reprokit gate RUN_DIR --arm init --max-pd X` gates one source.

        Examples:
          reprokit attribute --replicas 6 --dropout 0.1
          reprokit attribute --data ml100k.parquet --sources init,data-order,dropout --leave-one-out
        """
        from reprokit.config import resolve_config
        from reprokit.runners.attribute import attribute, check_attribute
        from reprokit.runners.ensemble import load_run_data

        if replicas is None and not _replicas_in_file(config):
            replicas = DEFAULT_REPLICAS
        cfg = resolve_config(config, opt.run_overrides(**{**ctx.params, "replicas": replicas}))
        chosen = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
        study_arms, _, _ = check_attribute(cfg, chosen, leave_one_out, out, force, test)
        executor = opt.executor_option(ctx)
        encoded, churn = load_run_data(cfg, churn_by, top_k)
        run_paired_study(
            lambda **kw: attribute(
                cfg,
                chosen,
                leave_one_out,
                out,
                workers=workers,
                executor=executor,
                force=force,
                test=test,
                encoded=encoded,
                churn=churn,
                **kw,
            ),
            sum(a.config.replicas for a in study_arms),
            json_out,
            render=render_attribution_table,
        )
