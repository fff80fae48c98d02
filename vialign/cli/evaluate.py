"""`vialign eval`: Evaluate models: POPE, captions, VQA, multiple choice, text retention, judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vialign.cli.common import (
    out_console,
)

app = typer.Typer(
    help="Evaluate models: POPE, captions, VQA, multiple choice, text retention, judge.", no_args_is_help=True
)


@app.command("compare")
def eval_compare(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="results.json files (or their folders); deltas are against the first", exists=True
        ),
    ],
    resamples: Annotated[int, typer.Option(help="bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    all_metrics: Annotated[bool, typer.Option("--all-metrics", help="also per-category metrics")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="write the comparison as JSON")] = None,
) -> None:
    """A table of metrics with deltas against the first file and bootstrap 95% intervals."""
    import orjson

    from vialign.evaluate.compare import compare_results, comparison_table

    paths = [p / "results.json" if p.is_dir() else p for p in results]
    rows = compare_results(paths, resamples=resamples, seed=seed, all_metrics=all_metrics)
    out_console.print(comparison_table(paths, rows))
    if out:
        out.write_bytes(
            orjson.dumps({"files": [str(p) for p in paths], "rows": rows}, option=orjson.OPT_INDENT_2)
        )
