"""`reprokit online`: Monolith-style online training over the data's time order."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from reprokit.commands import options as opt
from reprokit.commands.common import cli_errors, err_console, fmt_significant, print_json
from reprokit.commands.progress import TrainingProgress
from reprokit.errors import ReprokitError


def _numbers(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ReprokitError(f"{option} must be comma-separated numbers, got {text!r}") from None
    return tuple(int(v) if v.is_integer() else v for v in values)


def online_table(doc: dict[str, Any], title: str) -> Any:
    """One row per sync interval: mean AUC online and batch, the gain, PD at the first and last
    shard, bytes per sync; then the failure experiment."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, caption_justify="left")
    for name in ("sync every", "AUC online", "AUC batch", "gain", "PD rel first → last shard"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("sparse / dense syncs", justify="right")
    table.add_column("bytes / sparse sync", justify="right")
    for entry in doc["intervals"]:
        shards = entry["shards"]
        pd = [(s.get("pd") or {}).get("rel") for s in shards]
        unit = "" if entry.get("unit") == "batches" else " (time)"
        table.add_row(
            f"{entry['interval']:g}{unit}",
            f"{entry['mean_auc_online']:.4f}",
            f"{entry['mean_auc_batch']:.4f}",
            f"{entry['mean_auc_gain']:+.4f}",
            f"{fmt_significant(pd[0], 3)} → {fmt_significant(pd[-1], 3)}",
            f"{entry['sparse_syncs']:g} / {entry['dense_syncs']:g}",
            f"{entry['sparse_bytes_per_sync']:,.0f}",
        )
    failure = doc.get("failure")
    caption = (
        f"{doc['replicas']} replicas (vary {','.join(doc['vary']) or 'none'}), "
        f"{doc['batch_rows']:,} batch rows, {doc['stream_rows']:,} stream rows in "
        f"{doc['shards']} shards; dense weights every {doc['dense_sync_every']} sparse syncs"
    )
    if failure:
        catch = failure.get("catch_up_shards")
        caption += (
            f"\nfailure at shard {failure['fail_at']} (interval {failure['interval']:g}): "
            f"restored the snapshot after shard {failure['restored_from_shard']}, "
            f"{failure['lost_updates']:g} updates lost; "
            + (f"caught up after {catch} shard(s)" if catch is not None else "did not catch up")
        )
        if failure.get("note"):
            caption += f"\nnote: {failure['note']}"
    table.caption = caption
    return table


def register(app: typer.Typer) -> None:
    @app.command("online")
    @cli_errors
    def online_command(
        ctx: typer.Context,
        data: opt.DataPath = None,
        config: opt.ConfigFile = None,
        replicas: Annotated[
            int | None,
            typer.Option("--replicas", "-n", help=opt.config_help("replicas", "Replicas.")),
        ] = None,
        vary: opt.Vary = None,
        embedding: opt.Embedding = None,
        embedding_dim: opt.EmbeddingDim = None,
        hidden: opt.Hidden = None,
        dropout: opt.Dropout = None,
        optimizer: opt.Optimizer = None,
        lr: opt.LearningRate = None,
        batch_size: opt.BatchSize = None,
        label: opt.Label = None,
        synth_rows: opt.SynthRows = None,
        seed: opt.Seed = None,
        device: opt.Device = None,
        threads: opt.Threads = None,
        batch_fraction: Annotated[
            float,
            typer.Option(
                "--batch-fraction", help="Share of the rows (the oldest) the batch model trains on."
            ),
        ] = 0.5,
        shards: Annotated[
            int, typer.Option("--shards", help="Chronological shards of the rest (the stream).")
        ] = 10,
        sync_intervals: Annotated[
            str,
            typer.Option(
                "--sync-intervals",
                help="Sparse sync intervals to compare, in optimizer steps (or time units with "
                "--sync-unit time), e.g. 1,4,16.",
            ),
        ] = "1,4,16",
        sync_unit: Annotated[
            str, typer.Option("--sync-unit", help="batches or time (the data's timestamp).")
        ] = "batches",
        dense_sync_every: Annotated[
            int,
            typer.Option("--dense-sync-every", help="Dense weights every N sparse syncs."),
        ] = 8,
        snapshot_every: Annotated[
            int | None,
            typer.Option(
                "--snapshot-every",
                help="Snapshot the training copy after every S-th shard (after shards S-1, "
                "2S-1, ...; shards are numbered from 0): the resume points after a kill and "
                "what --fail-at restores.",
            ),
        ] = None,
        fail_at: Annotated[
            int | None,
            typer.Option(
                "--fail-at",
                help="Also run the first interval with the training copy lost at the start of "
                "shard K (1..shards-1) and restored from the last snapshot before it.",
            ),
        ] = None,
        churn_by: opt.ChurnBy = None,
        top_k: opt.TopK = 10,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", "-o", help=opt.out_help("Run directory (re-running resumes it).", "online")
            ),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Replace a run of another config in --out.")
        ] = False,
        json_out: Annotated[
            bool, typer.Option("--json", help="Print online.json on stdout.")
        ] = False,
    ) -> None:
        """Online training over the data's time order: a batch model, then per shard evaluate
        with the serving copy and train the training copy, synced every interval (Monolith).

        Example: reprokit online --data ml100k.parquet --replicas 4 --vary init,data-order
        --embedding collisionless --sync-intervals 1,4,16 --snapshot-every 2 --fail-at 5
        """
        from reprokit.config import resolve_config
        from reprokit.runners.ensemble import default_run_dir
        from reprokit.runners.online import OnlineOptions, load_stream, run_online

        cfg = resolve_config(config, opt.run_overrides(**ctx.params))
        options = OnlineOptions(
            batch_fraction=batch_fraction,
            shards=shards,
            sync_intervals=_numbers(sync_intervals, "--sync-intervals"),
            sync_unit=sync_unit,
            dense_sync_every=dense_sync_every,
            snapshot_every=snapshot_every,
            fail_at=fail_at,
            churn_by=churn_by,
            top_k=top_k,
        ).validate()
        stream = load_stream(cfg, options)
        run_dir = out if out is not None else default_run_dir("online")
        units = cfg.replicas * (len(options.sync_intervals) + (fail_at is not None))
        with TrainingProgress("online training", units) as progress:
            doc = run_online(
                cfg, options, run_dir, force=force, stream=stream, progress=progress.replicas
            )
        err_console.print(online_table(doc, title=f"online: {run_dir}"))
        if json_out:
            print_json(doc)
