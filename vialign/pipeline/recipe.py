"""`vialign run RECIPE.yaml`: stages in order, with content-addressed caching.

A recipe names its stages; each uses a stage kind from the registry (exact names) with settings:

    out: runs/toy
    vars: {seed: 0, steps: 300}
    stages:
      - {name: world, uses: toyworld, with: {size: 4000, seed: 0}}
      - {name: sft, uses: sft, with: {model: "${stage1}", data: "${world}/corpus.jsonl", seed: "{{seed}}"}}

`{{var}}` is replaced by a recipe variable; `${stage}` by that earlier stage's output folder. A stage's
key hashes its kind, its resolved settings, the output fingerprints of the stages it reads and the
fingerprints of any outside file it names and the vialign version; its settings are validated first
(defaults and presets applied), so a changed default reruns the stage. Its output lives in `OUT/stages/NAME-KEY/` with `stage.json`
written last. A stage whose folder has a finished `stage.json` is skipped, so a rerun (or another recipe
sharing the same upstream stages, e.g. another seed) reuses it; a stage that failed leaves no
`stage.json`, its resumable parts (`*.partial.jsonl`) stay, and the rerun picks up there.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vialign import __version__
from vialign.config import read_yaml_section
from vialign.manifest import (
    MANIFEST_NAME,
    fingerprint_dir,
    fingerprint_file,
    fingerprint_listing,
    fingerprint_settings,
    write_atomically,
)

REF = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
VAR = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    uses: str
    settings: dict[str, Any] = Field(default_factory=dict, alias="with")


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    out: Path = Path("runs/recipe")
    vars: dict[str, Any] = Field(default_factory=dict)
    stages: list[StageSpec]

    @model_validator(mode="after")
    def _names_and_order(self) -> Recipe:
        from vialign.stages import STAGES

        seen: set[str] = set()
        for stage in self.stages:
            if stage.name in seen:
                raise ValueError(f"two stages are named {stage.name!r}")
            if stage.uses not in STAGES:
                raise ValueError(
                    f"stage {stage.name!r} uses unknown kind {stage.uses!r}; known: {sorted(STAGES)}"
                )
            missing = [r for r in references(stage.settings) if r not in seen]
            if missing:
                raise ValueError(f"stage {stage.name!r} reads {missing}, which no earlier stage produces")
            seen.add(stage.name)
        return self


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    data = read_yaml_section(path, None)
    if overrides:
        data.setdefault("vars", {}).update(overrides)
    return Recipe.model_validate(data)


def references(value: Any) -> list[str]:
    if isinstance(value, str):
        return REF.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


def substitute(value: Any, folders: dict[str, Path], variables: dict[str, Any]) -> Any:
    if isinstance(value, str):
        whole = VAR.fullmatch(value.strip())
        if whole:  # "{{steps}}" keeps the variable's type
            return variables[whole.group(1)]
        text = VAR.sub(lambda m: str(variables[m.group(1)]), value)
        return REF.sub(lambda m: str(folders[m.group(1)]), text)
    if isinstance(value, dict):
        return {k: substitute(v, folders, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, folders, variables) for v in value]
    return value


def outside_inputs(value: Any, run_root: Path) -> dict[str, str]:
    """Fingerprints of the existing files a stage names outside the run folder (its raw inputs)."""
    found: dict[str, str] = {}
    if isinstance(value, str) and ("/" in value or value.endswith((".jsonl", ".json", ".yaml"))):
        path = Path(value)
        if path.exists() and not path.resolve().is_relative_to(run_root.resolve()):
            # folders outside the run (image roots, checkpoints) can be huge: name, size and mtime suffice
            found[value] = fingerprint_file(path) if path.is_file() else fingerprint_listing(path)
    elif isinstance(value, dict):
        for v in value.values():
            found.update(outside_inputs(v, run_root))
    elif isinstance(value, list):
        for v in value:
            found.update(outside_inputs(v, run_root))
    return found


def prepared(stage: StageSpec, given: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A stage's inputs and validated settings (defaults and presets applied), errors naming the stage."""
    from vialign.stages import STAGES

    try:
        return STAGES[stage.uses].prepare(given)
    except ValueError as exc:
        raise ValueError(f"stage {stage.name!r} ({stage.uses}): {' '.join(str(exc).split())}") from None


def check_every_stage(recipe: Recipe, root: Path) -> None:
    """Validate every stage's settings before the first one runs (upstream folders as placeholders)."""
    placeholders = {s.name: root / "stages" / s.name for s in recipe.stages}
    for stage in recipe.stages:
        prepared(stage, substitute(stage.settings, placeholders, recipe.vars))


def output_fingerprint(folder: Path) -> str:
    """What a stage produced: its files, less the records of how it ran (manifests hold times)."""
    return fingerprint_dir(folder, "**/*", skip=frozenset({MANIFEST_NAME, "stage.json"}))


def run_recipe(
    recipe: Recipe,
    *,
    from_stage: str | None = None,
    force: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
    show_progress: bool = True,
) -> dict[str, Path]:
    """Run (or reuse) every stage in order; returns each stage's output folder. Also writes
    `OUT/run.json`, the map from stage names to folders."""
    from vialign.stage import StageContext
    from vialign.stages import STAGES

    names = [s.name for s in recipe.stages]
    for name in (*force, *([from_stage] if from_stage else [])):
        if name not in names:
            raise ValueError(f"no stage named {name!r} in this recipe; stages: {names}")
    forced = set(force) | (set(names[names.index(from_stage) :]) if from_stage else set())
    root = Path(recipe.out)
    check_every_stage(recipe, root)
    folders: dict[str, Path] = {}
    fingerprints: dict[str, str] = {}
    for stage in recipe.stages:
        given = substitute(stage.settings, folders, recipe.vars)
        inputs, validated = prepared(stage, given)
        settings = {**inputs, **(validated.model_dump(mode="json") if validated is not None else {})}
        key_parts = {
            "kind": stage.uses,
            "vialign": __version__,
            "inputs": inputs,
            "settings": settings,
            "reads": {r: fingerprints[r] for r in sorted(set(references(stage.settings)))},
            "outside": outside_inputs(given, root),
        }
        key = fingerprint_settings(key_parts).removeprefix("sha256:")[:16]
        folder = root / "stages" / f"{stage.name}-{key}"
        record = folder / "stage.json"
        if stage.name in forced and folder.exists():
            shutil.rmtree(folder)
        if record.is_file():
            done = orjson.loads(record.read_bytes())
            log(f"[skip] {stage.name} ({stage.uses}): finished earlier, same inputs and settings")
            folders[stage.name], fingerprints[stage.name] = folder, done["output_fingerprint"]
            continue
        log(f"[run] {stage.name} ({stage.uses})" + (" (resuming)" if folder.exists() else ""))
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        kind = STAGES[stage.uses]
        say = lambda text: log("  " + text)  # noqa: E731
        kind.run_function()(StageContext(kind.output_in(folder), inputs, validated, show_progress, say))
        fingerprint = output_fingerprint(folder)
        write_atomically(
            record,
            orjson.dumps(
                {
                    "name": stage.name,
                    "kind": stage.uses,
                    "key": key,
                    "settings": settings,
                    "reads": key_parts["reads"],
                    "outside": key_parts["outside"],
                    "output_fingerprint": fingerprint,
                    "status": "finished",
                    "duration_s": round(time.perf_counter() - t0, 2),
                },
                option=orjson.OPT_INDENT_2,
            ),
        )
        log(f"[done] {stage.name} in {time.perf_counter() - t0:.1f} s → {folder}")
        folders[stage.name], fingerprints[stage.name] = folder, fingerprint
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.json").write_bytes(
        orjson.dumps({k: str(v) for k, v in folders.items()}, option=orjson.OPT_INDENT_2)
    )
    return folders
