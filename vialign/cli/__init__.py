"""The one `vialign` command: a module per command group under `vialign.cli`. Heavy imports (torch,
transformers) happen inside the commands that need them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from vialign.cli import align, annotate, curate, data, evaluate, model, prefer, toyworld, train
from vialign.cli.common import QuietOpt, err_console, out_console


class ClearErrors(TyperGroup):
    """Bad input ends in one line naming the problem and exit code 2, never a traceback: every command's
    ValueError (settings, records, encodings, JSON) and OSError (missing or unreadable files) is
    reported here. `VIALIGN_DEBUG=1` shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as exc:
            if os.environ.get("VIALIGN_DEBUG"):
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            err_console.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from exc


app = typer.Typer(
    help="Curate, align, tune and evaluate LLaVA-style visual instruction data.",
    no_args_is_help=True,
    cls=ClearErrors,
)
for name, group in (
    ("data", data),
    ("toyworld", toyworld),
    ("model", model),
    ("train", train),
    ("align", align),
    ("curate", curate),
    ("eval", evaluate),
    ("prefer", prefer),
    ("annotate", annotate),
):
    app.add_typer(group.app, name=name)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="run folder")] = Path("runs/demo"),
    quick: Annotated[
        bool, typer.Option("--quick", help="tiny sizes: a smoke run in under 2 minutes")
    ] = False,
    seed: Annotated[int, typer.Option(help="first seed")] = 0,
    seeds: Annotated[
        int, typer.Option(help="runs with seeds seed, seed+1, ... (the report shows the spread)")
    ] = 1,
) -> None:
    """The built-in demo on CPU: curate, align, tune (VIT vs LIT) and prefer (DPO) on the toy world, each
    evaluated against its baseline; writes OUT/report.html."""
    from vialign.demo import run_demo

    run_demo(out, quick=quick, seed=seed, seeds=seeds, console=out_console)


@app.command("run")
def run(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML", exists=True, dir_okay=False)],
    out: Annotated[
        Path | None, typer.Option("--out", help="run folder (default: the recipe's `out`)")
    ] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="rerun this stage and every later one")
    ] = None,
    force: Annotated[list[str] | None, typer.Option("--force", help="rerun this stage (repeatable)")] = None,
    var: Annotated[
        list[str] | None, typer.Option("--var", help="recipe variable: name=value (repeatable)")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a recipe's stages in order; a stage whose inputs and settings are unchanged is reused."""
    import yaml

    from vialign.pipeline.recipe import load_recipe, run_recipe

    variables = {}
    for item in var or []:
        name, sep, value = item.partition("=")
        if not sep:
            err_console.print(f"[red]error:[/red] --var {item!r} must look like name=value")
            raise typer.Exit(2)
        variables[name] = yaml.safe_load(value)
    try:
        loaded = load_recipe(recipe, variables)
        if out is not None:
            loaded = loaded.model_copy(update={"out": out})
        folders = run_recipe(
            loaded,
            from_stage=from_stage,
            force=tuple(force or ()),
            log=lambda m: out_console.print(m, markup=False, highlight=False),
            show_progress=not quiet,
        )
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    out_console.print(f"{len(folders)} stages finished; map in {Path(loaded.out) / 'run.json'}")
