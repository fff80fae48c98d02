"""`vialign align`: Writing-manner alignment: rewrite, review, gap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.choices import BackendName, ChatFormatName, Engine
from vialign.cli.common import (
    ConfigOpt,
    QuietOpt,
    SetOpt,
    out_console,
    runner_overrides,
    settings_or_exit,
)

app = typer.Typer(help="Writing-manner alignment: rewrite, review, gap.", no_args_is_help=True)


@app.command("rewrite")
def align_rewrite(
    input: Annotated[Path, typer.Argument(help="validated JSONL", exists=True, dir_okay=False)],
    llm: Annotated[
        str, typer.Option("--llm", help="inner LLM: checkpoint folder, or an OpenAI-compatible URL")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="output JSONL (a .partial.jsonl beside it makes the run resumable)")
    ],
    backend: Annotated[BackendName | None, typer.Option(help="default: from --llm")] = None,
    engine: Annotated[Engine | None, typer.Option(help="where batches run")] = None,
    limit: Annotated[int | None, typer.Option(help="first N records only")] = None,
    shard: Annotated[str | None, typer.Option(help="i/N: every N-th record from the i-th")] = None,
    batch_size: Annotated[int | None, typer.Option(help="records per batch")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Rewrite soft-format answers in the inner LLM's own manner, then review each for unchanged meaning."""
    from vialign.align.rewrite import RewriteSettings, rewrite_file

    settings = settings_or_exit(RewriteSettings, config, "rewrite", {"backend": backend}, set_)
    runner = runner_overrides(settings.runner, engine=engine, limit=limit, shard=shard, batch_size=batch_size)
    table = rewrite_file(
        input, llm, out, settings.model_copy(update={"runner": runner}), show_progress=not quiet
    )
    view = Table(title=f"rewrite {input}")
    columns = (
        "rewritten",
        "kept",
        "failed",
        "hard",
        "verdict.same",
        "verdict.different",
        "verdict.unparsable",
    )
    view.add_column("subset")
    for column in columns:
        view.add_column(column, justify="right")
    for subset, counts in sorted(table.items()):
        view.add_row(subset, *(str(counts[c]) for c in columns))
    out_console.print(view)


@app.command("gap")
def align_gap(
    input: Annotated[
        Path, typer.Argument(help="JSONL whose answers are scored", exists=True, dir_okay=False)
    ],
    llm: Annotated[str, typer.Option("--llm", help="inner LLM checkpoint folder")],
    out: Annotated[Path, typer.Option("--out", help="folder for per-sample NLL, summary and histogram")],
    vs: Annotated[Path | None, typer.Option("--vs", help="a second dataset to compare")] = None,
    chat_format: Annotated[ChatFormatName | None, typer.Option("--format", help="chat format")] = None,
    subsets: Annotated[
        str | None, typer.Option(help="comma-separated subsets to score (default all)")
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Writing-manner gap: the inner LLM's per-token NLL of the answers, text only."""
    from vialign.align.gap import GapSettings, gap_files

    options = {"chat_format": chat_format, "subsets": subsets.split(",") if subsets else None}
    settings = settings_or_exit(GapSettings, config, "gap", options, set_)
    datasets = {"input": input, **({"vs": vs} if vs else {})}
    reports, summary = gap_files(
        llm, datasets, out, subsets=settings.subsets, chat_format=settings.chat_format
    )
    view = Table(title=f"writing-manner gap under {llm}")
    for column in ("dataset", "samples", "mean NLL", "token-weighted", "median"):
        view.add_column(column, justify="left" if column == "dataset" else "right")
    for name, r in reports.items():
        s = r.summary()
        view.add_row(
            str(datasets[name]),
            str(s["samples"]),
            f"{s['mean_nll']:.4f}",
            f"{s['token_mean_nll']:.4f}",
            f"{s['median_nll']:.4f}",
        )
    out_console.print(view)
    if vs:
        out_console.print(f"delta (vs − input): {summary['delta_mean_nll']:+.4f}")
