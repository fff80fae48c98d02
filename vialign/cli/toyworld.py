"""`vialign toyworld`: The synthetic toy world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.cli.common import (
    ConfigOpt,
    QuietOpt,
    SetOpt,
    out_console,
    settings_or_exit,
)

app = typer.Typer(help="The synthetic toy world.", no_args_is_help=True)


@app.command("generate")
def toyworld_generate(
    out: Annotated[Path, typer.Option("--out", help="output folder (also the image root)")],
    seed: Annotated[int | None, typer.Option(help="random seed; same seed, same bytes")] = None,
    size: Annotated[int | None, typer.Option(help="visual instruction samples")] = None,
    image_size: Annotated[int | None, typer.Option(help="image side in pixels")] = None,
    corrupt_share: Annotated[float | None, typer.Option(help="share of soft samples corrupted")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Generate the toy world: images, teacher-manner corpus, text corpus, annotations, eval sets."""
    from vialign.progress import progress_reporter
    from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

    options = {"seed": seed, "size": size, "image_size": image_size, "corrupt_share": corrupt_share}
    settings = settings_or_exit(ToyWorldSettings, config, "toyworld", options, set_)
    with progress_reporter(not quiet) as report:
        manifest = generate_toyworld(out, settings, progress=report)
    out_console.print(
        f"toy world in {out}: {manifest.counts['samples']} samples, "
        f"{manifest.counts['images']} images, {manifest.duration_s:.1f} s"
    )


@app.command("facts")
def toyworld_facts(
    rewritten: Annotated[
        Path, typer.Argument(help="output of `vialign align rewrite` on toy data", exists=True)
    ],
) -> None:
    """Share of rewritten answers whose facts are preserved (checked with the toy world's claim reader)."""
    from vialign.records import read_samples
    from vialign.toyworld.checks import rewrite_fact_report

    c = rewrite_fact_report(read_samples(rewritten))
    n = max(c["answers"], 1)
    table = Table(title=f"facts in {rewritten}")
    table.add_column("measure")
    table.add_column("answers", justify="right")
    table.add_column("share", justify="right")
    for key in (
        "answers",
        "kept_rewrite",
        "final_preserved",
        "raw_preserved",
        "accepted_with_changed_facts",
        "refused_though_preserved",
    ):
        table.add_row(key.replace("_", " "), str(c[key]), f"{c[key] / n:.1%}")
    out_console.print(table)
