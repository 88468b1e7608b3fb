"""`reprokit autodim`: AutoDim's per-field embedding-width search, retrained per method and
compared (the workflow lives in `reprokit.runners.autodim`; this module parses and prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, err_console, fmt_significant
from reprokit.commands.compare import _power_note, _replicas_in_file, run_paired_study
from reprokit.jsonio import as_float
from reprokit.metrics.churn import DEFAULT_TOP_K

#: Replicas per method when neither --replicas nor the config file says.
DEFAULT_REPLICAS = 4
DEFAULT_VARY = "init,data-order"


def _dims_text(dims: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items())


def render_autodim_table(doc: dict[str, Any]) -> Table:
    """One row per method: table params, AUC, log-loss, PD rel [CI], p (Holm) vs full."""
    agree = doc.get("search_agreement") or {}
    pearson = agree.get("pearson")
    caption = (
        f"{doc.get('replicas')} replicas per method, vary {','.join(doc.get('vary') or [])}; "
        f"searched widths {_dims_text(doc.get('dims') or {})}\n"
        f"search agreement over {agree.get('seeds')} seeds: all agree on "
        f"{fmt_significant(agree.get('all_agree'), 3)} of the fields, mean pairwise Pearson "
        f"{'n/a' if pearson is None else f'{pearson:.3f}'}; paired tests against full"
    )
    objective = doc.get("objective")
    if objective:
        gain = objective.get("vs_autodim") or {}
        caption += (
            f"\nauc-pd picked {_dims_text(objective.get('picked') or {})} "
            f"(ΔAUC {fmt_significant(gain.get('auc'), 3)}, ΔPD rel "
            f"{fmt_significant(gain.get('pd_rel'), 3)} vs autodim; cost "
            f"{(objective.get('cost') or {}).get('trainings')} quick trainings)"
        )
    table = Table(
        title=f"autodim: {doc.get('run_dir', '')}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption_justify="left",
        caption=caption + _power_note(doc),
    )
    for name in (
        "method",
        "table params",
        "emb params",
        "AUC mean±std",
        "logloss",
        "PD rel [95% CI]",
        "p AUC (Holm)",
        "p PD (Holm)",
    ):
        table.add_column(name, justify="left" if name == "method" else "right", no_wrap=True)
    for m in doc.get("methods") or []:
        auc, pd = m.get("auc") or {}, m.get("pd") or {}
        ci = (m.get("pd_ci") or {}).get("rel") or [None, None]
        tests = m.get("tests") or {}

        def p(
            metric: str, tests: dict[str, Any] = tests, base: bool = m["method"] == "full"
        ) -> str:
            return (
                "baseline" if base else fmt_significant((tests.get(metric) or {}).get("p_holm"), 3)
            )

        table.add_row(
            m["method"],
            f"{m.get('table_params'):,}",
            f"{as_float(m.get('params')):,.0f}",
            f"{as_float(auc.get('mean')):.4f}±{as_float(auc.get('std')):.4f}",
            f"{as_float((m.get('logloss') or {}).get('mean')):.4f}",
            f"{fmt_significant(pd.get('rel'), 3)} [{fmt_significant(ci[0], 3)}, "
            f"{fmt_significant(ci[1], 3)}]",
            p("auc"),
            p("rel"),
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("autodim")
    @cli_errors
    def autodim_command(
        ctx: typer.Context,
        candidates: Annotated[
            str, typer.Option("--candidates", help="Candidate widths, comma-separated.")
        ] = "2,4,8,16,32",
        search_seeds: Annotated[
            int, typer.Option("--search-seeds", help="Searches, one per seed; majority decides.")
        ] = 3,
        search_epochs: Annotated[
            int, typer.Option("--search-epochs", help="Epochs of each search.")
        ] = 2,
        alpha_every: Annotated[
            int,
            typer.Option("--alpha-every", help="Weight steps per α step on a validation batch."),
        ] = 10,
        warmup_steps: Annotated[
            int | None,
            typer.Option(
                "--warmup-steps",
                help="Weight steps with uniform α first. [default: a fifth of the search's steps]",
                show_default=False,
            ),
        ] = None,
        search_lr: Annotated[
            float, typer.Option("--search-lr", help="Adam learning rate of the search's weights.")
        ] = 0.001,
        alpha_lr: Annotated[
            float, typer.Option("--alpha-lr", help="Adam learning rate of α.")
        ] = 0.05,
        checkpoints: Annotated[
            int,
            typer.Option("--checkpoints", help="Argmax widths kept per search (auc-pd's sets)."),
        ] = 5,
        objective: Annotated[
            str,
            typer.Option(
                "--objective",
                help="auc: AutoDim's widths; auc-pd: also the PD-aware pick from the search's "
                "width sets (two quick replicas each).",
            ),
        ] = "auc",
        auc_tolerance: Annotated[
            float,
            typer.Option(
                "--auc-tolerance", help="auc-pd: AUC given up at most for lower PD on the front."
            ),
        ] = 0.001,
        test: Annotated[
            str, typer.Option("--test", help="Paired test against full: permutation or wilcoxon.")
        ] = "permutation",
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option(
                "--replicas",
                "-n",
                help=opt.with_default("Replicas per method.", str(DEFAULT_REPLICAS)),
            ),
        ] = None,
        vary: Annotated[
            str | None,
            typer.Option("--vary", help=opt.with_default("Sources varied.", DEFAULT_VARY)),
        ] = None,
        hidden: opt.Hidden = None,
        dropout: opt.Dropout = None,
        lr: opt.LearningRate = None,
        batch_size: opt.BatchSize = None,
        epochs: opt.Epochs = None,
        synth_rows: opt.SynthRows = None,
        seed: opt.Seed = None,
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
                help=opt.out_help("Run directory (re-running resumes it).", "autodim"),
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite another study or run there.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print autodim.json on stdout.")
        ] = False,
    ) -> None:
        """Search a width per categorical field (AutoDim), retrain it and the baselines, compare.

        Per search seed a weight-sharing table of the largest candidate width is searched
        (Gumbel-softmax α per field, α stepped on a validation batch every --alpha-every weight
        steps after a uniform warm-up); each field gets the majority argmax across seeds. Then
        full, autodim, autodim-s, mde and random retrain as paired arms (vs full). Writes
        RUN_DIR/search/, RUN_DIR/arms/<method>/, RUN_DIR/autodim.json; `reprokit report RUN_DIR`
        draws α trajectories and widths, `reprokit gate RUN_DIR --arm autodim` gates a method.

        Examples:
          reprokit autodim --replicas 4 --out runs/autodim
          reprokit autodim --data ml100k.parquet --candidates 2,4,8,16 --objective auc-pd
        """
        from reprokit.config import load_toml, resolve_config
        from reprokit.runners.autodim import (
            AutoDimSettings,
            autodim,
            check_autodim,
            check_data,
            methods_total_replicas,
            parse_candidates,
        )
        from reprokit.runners.ensemble import load_run_data

        if replicas is None and not _replicas_in_file(config):
            replicas = DEFAULT_REPLICAS
        params = {**ctx.params, "replicas": replicas}
        if vary is None and not (config is not None and "vary" in load_toml(config)):
            params["vary"] = DEFAULT_VARY
        cfg = resolve_config(config, opt.run_overrides(**params))
        settings = AutoDimSettings(
            candidates=parse_candidates(candidates),
            search_seeds=search_seeds,
            search_epochs=search_epochs,
            alpha_every=alpha_every,
            warmup_steps=warmup_steps,
            search_lr=search_lr,
            alpha_lr=alpha_lr,
            checkpoints=checkpoints,
            objective=objective,
            auc_tolerance=auc_tolerance,
        )
        if out is None:
            from reprokit.runners.ensemble import default_run_dir

            out = default_run_dir("autodim")
        check_autodim(cfg, settings, out, force=force, test=test)
        executor = opt.executor_option(ctx)
        encoded, churn = load_run_data(cfg, None, DEFAULT_TOP_K)
        check_data(encoded)

        def on_search(done: int, total: int, info: dict[str, Any]) -> None:
            if info.get("variant") is not None:
                err_console.print(
                    f"search {done + 1}/{total}: {info['variant']} seed {info['seed']}",
                    highlight=False,
                )

        run_paired_study(
            lambda **kw: autodim(
                cfg,
                settings,
                out,
                workers=workers,
                executor=executor,
                force=force,
                test=test,
                encoded=encoded,
                churn=churn,
                search_progress=on_search,
                **kw,
            ),
            methods_total_replicas(cfg, settings),
            json_out,
            render=render_autodim_table,
        )
