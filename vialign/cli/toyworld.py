"""`vialign toyworld`: The synthetic toy world."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.cli.common import (
    out_console,
)

app = typer.Typer(help="The synthetic toy world.", no_args_is_help=True)


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
