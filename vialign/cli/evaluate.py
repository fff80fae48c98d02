"""`vialign eval`: Evaluate models: POPE, captions, VQA, multiple choice, text retention, judge."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from vialign.choices import PopeParser
from vialign.cli.common import (
    ConfigOpt,
    QuietOpt,
    SetOpt,
    err_console,
    out_console,
    settings_or_exit,
)

app = typer.Typer(
    help="Evaluate models: POPE, captions, VQA, multiple choice, text retention, judge.", no_args_is_help=True
)


@app.command("run")
def eval_run(
    model: Annotated[str, typer.Option("--model", help="checkpoint folder (or an OpenAI-compatible URL)")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="folder with pope/, caption/, vqa/, mc/, text/, judge/",
            exists=True,
            file_okay=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for results.json and the resumable predictions")],
    benches: Annotated[
        str | None, typer.Option("--bench", help="comma-separated: pope,caption,vqa,mc,text,judge")
    ] = None,
    image_root: Annotated[
        Path | None, typer.Option("--image-root", help="folder image paths are relative to (default: --data)")
    ] = None,
    pope_parser: Annotated[
        PopeParser | None, typer.Option(help="first_sentence (LLaVA's eval) or exact (lmms-eval)")
    ] = None,
    judge_target: Annotated[
        str | None, typer.Option("--judge", help="judge model: checkpoint folder or OpenAI-compatible URL")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="first N items of every benchmark")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run the evaluation benchmarks and write results.json with provenance and per-sample predictions."""
    from vialign.evaluate.run import EvalSettings, run_eval

    overrides = list(set_ or []) + ([f"judge.target={judge_target}"] if judge_target else [])
    options = {"benches": benches.split(",") if benches else None, "pope_parser": pope_parser, "limit": limit}
    settings = settings_or_exit(EvalSettings, config, "eval", options, overrides)
    try:
        results = run_eval(model, data, out, settings, image_root=image_root, show_progress=not quiet)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    view = Table(title=f"{model} on {data}")
    for column in ("benchmark", "metric", "value"):
        view.add_column(column, justify="right" if column == "value" else "left")
    for name, entry in results["benchmarks"].items():
        for metric, value in entry["metrics"].items():
            if "/" not in metric:
                view.add_row(name, metric, f"{value:.4f}")
        for note in entry.get("notes", []):
            err_console.print(f"[yellow]note[/yellow] {name}: {note}")
    out_console.print(view)
    out_console.print(f"results → {out / 'results.json'}")


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

    from vialign.evaluate.compare import compare_results

    paths = [p / "results.json" if p.is_dir() else p for p in results]
    rows = compare_results(paths, resamples=resamples, seed=seed, all_metrics=all_metrics)
    view = Table(title="comparison (95% bootstrap intervals; deltas paired over shared samples)")
    view.add_column("benchmark")
    view.add_column("metric")
    for k, path in enumerate(paths):
        view.add_column(f"[{k}] {path.parent.name or path.name}", justify="right")
        if k:
            view.add_column(f"Δ [{k}]−[0]", justify="right")

    def show(value, interval) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")

    for row in rows:
        cells = [show(row["values"][0], row["intervals"][0])]
        for k in range(1, len(paths)):
            cells += [
                show(row["values"][k], row["intervals"][k]),
                show(row["deltas"][k - 1], row["delta_intervals"][k - 1]),
            ]
        view.add_row(row["bench"], row["metric"], *cells)
    out_console.print(view)
    if out:
        out.write_bytes(
            orjson.dumps({"files": [str(p) for p in paths], "rows": rows}, option=orjson.OPT_INDENT_2)
        )
