"""A packaged recipe run once per seed, then one report over every seed: what `vialign demo` and
`vialign lab` do. Stages that do not depend on the seed are shared through the recipe cache."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from vialign.pipeline.recipe import Recipe, load_recipe, run_recipe, substitute
from vialign.report.html import ReportSettings, write_report


def packaged_recipe(name: str, out: Path, variables: dict[str, Any]) -> Recipe:
    recipe = load_recipe(resources.files("vialign.pipeline").joinpath("recipes", name))
    return recipe.model_copy(update={"out": out, "vars": {**recipe.vars, **variables}})


def merged_over_seeds(resolved: list[dict[str, Any]]) -> dict[str, Any]:
    """The report settings of every seed as one: each model's eval folders, each gap claim's folders and
    the rewrite-fact folders listed seed by seed. A stage that does not depend on the seed has one folder
    for every seed (the cache shares it): it is listed once, so it is not counted as several seeds."""
    first = resolved[0]
    merged = {**first, "runs": {label: [r["runs"][label][0] for r in resolved] for label in first["runs"]}}
    merged["claims"] = [
        {**claim, "gap": distinct(r["claims"][k]["gap"][0] for r in resolved) if claim.get("gap") else []}
        for k, claim in enumerate(first.get("claims", []))
    ]
    merged["rewrite_facts"] = distinct(r["rewrite_facts"][0] for r in resolved if r.get("rewrite_facts"))
    if first.get("lab_results"):  # a value per seed, even where seeds share the folder
        merged["lab_results"] = {
            **first["lab_results"],
            "reliance": [
                r["lab_results"]["reliance"][0] for r in resolved if r["lab_results"].get("reliance")
            ],
        }
    return merged


def distinct(folders: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(folders))


def run_seeds(
    recipe_name: str,
    out: Path,
    variables: dict[str, Any],
    *,
    seed: int,
    seeds: int,
    console: Console,
    note: str,
) -> Path:
    out = Path(out)
    t0 = time.perf_counter()
    per_seed = []
    for s in range(seed, seed + seeds):
        console.print(f"[bold]seed {s}[/bold]")
        recipe = packaged_recipe(recipe_name, out, {**variables, "seed": s})
        folders = run_recipe(
            recipe, log=lambda m: console.print("  " + m, markup=False, highlight=False), show_progress=False
        )
        per_seed.append((recipe, folders))
    report_stage = next(st for st in per_seed[0][0].stages if st.name == "report")
    resolved = [substitute(report_stage.settings, folders, recipe.vars) for recipe, folders in per_seed]
    settings = ReportSettings(**{**merged_over_seeds(resolved), "first_seed": seed})
    notes = [note, f"{seeds} seed(s) from {seed}; elapsed {time.perf_counter() - t0:.0f} s"]
    report = write_report(out, settings.model_copy(update={"notes": notes}))
    console.print(f"finished in {time.perf_counter() - t0:.1f} s; report: {report}")
    return report


@dataclass(frozen=True)
class SeededRun:
    """A packaged recipe as a command: its variables for `--quick`, and the note the report shows."""

    recipe: str
    quick_vars: dict[str, Any]
    note: str
    quick_note: str

    def run(self, out: Path, *, quick: bool, seed: int, seeds: int, console: Console) -> Path:
        variables = self.quick_vars if quick else {}
        note = self.quick_note if quick else self.note
        return run_seeds(self.recipe, out, variables, seed=seed, seeds=seeds, console=console, note=note)
