"""The built-in demo: the toy-world recipe (`vialign/pipeline/recipes/toy_demo.yaml`) end to end, once per
seed, then one report over every seed. Seed-independent stages (the world, the inner LLM, stage 1, the
reward models, curation, rewriting) run once and are reused by the other seeds through the recipe cache.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from rich.console import Console

from vialign.pipeline.recipe import Recipe, load_recipe, run_recipe
from vialign.report.html import ReportSettings, write_report

QUICK = {
    "size": 600,
    "text_size": 800,
    "annotation_images": 60,
    "eval_scenes": 30,
    "lm_steps": 60,
    "stage1_steps": 40,
    "sft_steps": 30,
    "rm_steps": 20,
    "prompts": 24,
    "dpo_steps": 8,
    "eval_limit": 24,
    "rewrite_limit": 40,
}


def demo_recipe(out: Path, quick: bool, seed: int) -> Recipe:
    recipe = load_recipe(resources.files("vialign.pipeline").joinpath("recipes", "toy_demo.yaml"))
    variables = {**recipe.vars, **(QUICK if quick else {}), "seed": seed}
    return recipe.model_copy(update={"out": out, "vars": variables})


def run_demo(out: Path, *, quick: bool, seed: int, console: Console, seeds: int = 1) -> Path:
    out = Path(out)
    t0 = time.perf_counter()
    per_seed = []
    for s in range(seed, seed + seeds):
        console.print(f"[bold]seed {s}[/bold]")
        recipe = demo_recipe(out, quick, s)
        folders = run_recipe(
            recipe, log=lambda m: console.print("  " + m, markup=False, highlight=False), show_progress=False
        )
        per_seed.append((recipe, folders))
    report_stage = next(st for st in per_seed[0][0].stages if st.name == "report")
    resolved = [substituted(report_stage.settings, folders) for _, folders in per_seed]
    runs = {label: [r["runs"][label][0] for r in resolved] for label in resolved[0]["runs"]}
    settings = ReportSettings(**{**resolved[0], "runs": runs})
    notes = [
        "quick demo: tiny sizes, numbers are a smoke check, not a result"
        if quick
        else "full demo: tiny models on 2 CPU cores; differences within the intervals are noise",
        f"{seeds} seed(s) from {seed}; elapsed {time.perf_counter() - t0:.0f} s",
    ]
    report = write_report(out, settings.model_copy(update={"notes": notes}))
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s; report: {report}")
    return report


def substituted(settings: dict, folders: dict[str, Path]) -> dict:
    from vialign.pipeline.recipe import substitute

    return substitute(settings, folders, {})
