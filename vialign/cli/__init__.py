"""The one `vialign` command: a module per command group under `vialign.cli`. Heavy imports (torch,
transformers) happen inside the commands that need them."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from vialign.cli import annotate, curate, data, evaluate, model, toyworld
from vialign.cli.common import QuietOpt, err_console, out_console
from vialign.cli.stages import add_stage_commands
from vialign.progress import library_bars_off_terminal


class ClearErrors(TyperGroup):
    """Bad input ends in one line naming the problem and exit code 2, never a traceback: every command's
    ValueError (settings, records, encodings, JSON) and OSError (missing or unreadable files) is
    reported here. `VIALIGN_DEBUG=1` shows the traceback instead."""

    def invoke(self, ctx: click.Context):
        library_bars_off_terminal()
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as exc:
            if os.environ.get("VIALIGN_DEBUG"):
                raise
            message = " ".join(str(exc).split()) or type(exc).__name__
            err_console.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(getattr(exc, "code", 2)) from exc


main = typer.Typer(
    help="Curate, align, tune and evaluate LLaVA-style visual instruction data.",
    no_args_is_help=True,
    cls=ClearErrors,
    add_completion=False,
)
# group: its help, and the module of its commands that are not stages (None: stages only)
GROUPS = {
    "data": ("Check and describe datasets.", data),
    "toyworld": ("The synthetic toy world.", toyworld),
    "model": ("Build and inspect models.", model),
    "train": ("Train: SFT with VIT/LIT label masks, DPO, inner-LLM pretraining.", None),
    "align": ("Writing-manner alignment: rewrite, review, gap.", None),
    "curate": ("Human-preference curation: reward models, scoring, cascade selection.", curate),
    "eval": ("Evaluate models: POPE, captions, VQA, multiple choice, text retention, judge.", evaluate),
    "prefer": ("AI-feedback preference data: sample, judge, pairs.", None),
    "annotate": ("Human annotation: the rating web UI and its export.", annotate),
}


def add_seeded_run(name: str, runner: str, doc: str) -> None:
    """`vialign NAME`: a built-in recipe run once per seed, then one report (the demo and the lab)."""

    def command(
        out: Annotated[Path | None, typer.Option("--out", help="run folder (default runs/NAME)")] = None,
        quick: Annotated[
            bool, typer.Option("--quick", help="tiny sizes (the lab: a tiny random LM): a smoke run")
        ] = False,
        seed: Annotated[int, typer.Option(help="first seed")] = 0,
        seeds: Annotated[
            int, typer.Option(help="runs with seeds seed, seed+1, ... (the report shows the spread)")
        ] = 1,
    ) -> None:
        module, attribute = runner.split(":")
        seeded = getattr(importlib.import_module(module), attribute)
        seeded.run(out or Path(f"runs/{name}"), quick=quick, seed=seed, seeds=seeds, console=out_console)

    command.__doc__ = doc
    main.command(name)(command)


add_seeded_run(
    "demo",
    "vialign.demo:DEMO",
    """The built-in demo on CPU: curate, align, tune (VIT vs LIT) and prefer (DPO) on the toy world, each
    evaluated against its baseline; writes OUT/report.html.""",
)
add_seeded_run(
    "lab",
    "vialign.lab:LAB",
    """The lab: SmolLM2-135M-Instruct inside a LLaVA; every arm (VIT, LIT, rewritten data under its own and
    an oracle review, RM-curated data, DPO with two judges) from one stage-1 checkpoint, evaluated on the
    same held-out sets; writes OUT/report.html with the claims table.""",
)


@main.command("run")
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
            raise ValueError(f"--var {item!r} must look like name=value")
        variables[name] = yaml.safe_load(value)
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
    out_console.print(f"{len(folders)} stages finished; map in {Path(loaded.out) / 'run.json'}")


def build_app() -> typer.Typer:
    from vialign.stages import STAGES

    groups = {}
    for name, (help_text, module) in GROUPS.items():
        groups[name] = module.app if module else typer.Typer(no_args_is_help=True)
        groups[name].info.help = help_text
    add_stage_commands(groups, STAGES)
    for name, group in groups.items():
        main.add_typer(group, name=name)
    return main


app = build_app()
