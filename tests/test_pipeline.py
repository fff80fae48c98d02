"""Recipes: content-addressed caching, --from/--force, resume after a failed stage; the quick demo end
to end with its report opened in headless Chromium."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vialign.cli import app
from vialign.pipeline.recipe import Recipe, load_recipe, run_recipe

runner = CliRunner()


def small_recipe(tmp_path, min_frac=0.1, world_size=60):
    return {
        "out": str(tmp_path / "run"),
        "vars": {"size": world_size},
        "stages": [
            {
                "name": "world",
                "uses": "toyworld",
                "with": {
                    "size": "{{size}}",
                    "annotation_images": 2,
                    "eval_scenes": 2,
                    "eval_text_per_task": 1,
                    "workers": 1,
                },
            },
            {
                "name": "validate",
                "uses": "validate",
                "with": {"input": "${world}/corpus.jsonl", "image_root": "${world}"},
            },
            {
                "name": "templates",
                "uses": "templates",
                "with": {"data": "${validate}/valid.jsonl", "min_frac": min_frac},
            },
        ],
    }


def ran(log_lines):
    return [line.split()[1] for line in log_lines if line.startswith("[run]")]


def test_stages_are_reused_when_inputs_and_settings_are_unchanged(tmp_path):
    logs: list[str] = []
    first = run_recipe(Recipe.model_validate(small_recipe(tmp_path)), log=logs.append, show_progress=False)
    assert ran(logs) == ["world", "validate", "templates"]
    assert json.loads((tmp_path / "run" / "run.json").read_text()) == {k: str(v) for k, v in first.items()}
    logs.clear()
    again = run_recipe(Recipe.model_validate(small_recipe(tmp_path)), log=logs.append, show_progress=False)
    assert ran(logs) == [] and again == first
    logs.clear()
    changed = run_recipe(
        Recipe.model_validate(small_recipe(tmp_path, min_frac=0.2)), log=logs.append, show_progress=False
    )
    assert ran(logs) == ["templates"], "only the stage whose settings changed reruns"
    assert changed["templates"] != first["templates"] and changed["validate"] == first["validate"]
    logs.clear()
    run_recipe(
        Recipe.model_validate(small_recipe(tmp_path, world_size=70)), log=logs.append, show_progress=False
    )
    assert ran(logs) == ["world", "validate", "templates"], "a changed input reruns everything downstream"
    record = json.loads((first["validate"] / "stage.json").read_text())
    assert record["status"] == "finished" and set(record["reads"]) == {"world"}


def test_force_and_from(tmp_path):
    recipe = Recipe.model_validate(small_recipe(tmp_path))
    run_recipe(recipe, log=lambda m: None, show_progress=False)
    logs: list[str] = []
    run_recipe(recipe, force=("validate",), log=logs.append, show_progress=False)
    assert ran(logs) == ["validate"], "validate reran; its output is identical, so templates is reused"
    logs.clear()
    run_recipe(recipe, from_stage="validate", log=logs.append, show_progress=False)
    assert ran(logs) == ["validate", "templates"]
    with pytest.raises(ValueError, match="no stage named 'nope'"):
        run_recipe(recipe, from_stage="nope", log=logs.append, show_progress=False)


def test_a_failed_stage_leaves_finished_ones_and_the_rerun_resumes(tmp_path):
    spec = small_recipe(tmp_path)
    spec["stages"][1]["with"]["input"] = "${world}/missing.jsonl"  # fails when the stage runs
    with pytest.raises(OSError, match=r"missing\.jsonl"):
        run_recipe(Recipe.model_validate(spec), log=lambda m: None, show_progress=False)
    world = next((tmp_path / "run" / "stages").glob("world-*"))
    assert (world / "stage.json").is_file()
    assert not any((d / "stage.json").exists() for d in (tmp_path / "run" / "stages").glob("validate-*"))
    logs: list[str] = []
    run_recipe(Recipe.model_validate(small_recipe(tmp_path)), log=logs.append, show_progress=False)
    assert ran(logs) == ["validate", "templates"]


def test_recipes_are_checked_before_anything_runs(tmp_path):
    spec = small_recipe(tmp_path)
    spec["stages"][2]["with"]["data"] = "${later}/x.jsonl"
    with pytest.raises(ValueError, match="reads \\['later'\\]"):
        Recipe.model_validate(spec)
    spec = small_recipe(tmp_path)
    spec["stages"][1]["uses"] = "validat"
    with pytest.raises(ValueError, match="unknown kind 'validat'"):
        Recipe.model_validate(spec)
    spec = small_recipe(tmp_path)
    spec["stages"][2]["name"] = "world"
    with pytest.raises(ValueError, match="two stages are named 'world'"):
        Recipe.model_validate(spec)


def test_cli_run_with_variables(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(small_recipe(tmp_path)))
    result = runner.invoke(app, ["run", str(path), "--var", "size=50", "--quiet"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert len((Path(run["world"]) / "corpus.jsonl").read_text().splitlines()) == 50
    assert runner.invoke(app, ["run", str(path), "--from", "nope"]).exit_code == 2


def test_shipped_recipes_parse():
    root = Path(__file__).resolve().parents[1]
    for path in [
        root / "vialign" / "pipeline" / "recipes" / "toy_demo.yaml",
        *sorted((root / "recipes").glob("*.yaml")),
    ]:
        recipe = load_recipe(path)
        assert recipe.stages, path


@pytest.mark.slow
def test_quick_demo_writes_a_report_that_renders_in_chromium(tmp_path):
    result = runner.invoke(app, ["demo", "--quick", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    again = subprocess.run(
        [sys.executable, "-m", "vialign.cli", "demo", "--quick", "--out", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[run]" not in again.stdout and again.stdout.count("[skip]") == result.output.count("[run]"), (
        "a second demo in a new process (another hash seed) reuses every stage"
    )
    report = tmp_path / "demo" / "report.html"
    text = report.read_text()
    for title in (
        "Response-only VIT vs LIT",
        "Full corpus vs RM-curated subset",
        "Teacher-manner vs rewritten data",
        "SFT vs SFT + DPO",
        "Writing-manner gap",
        "Dataset viewer",
    ):
        assert title in text, title
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip(
            "Debian chromium is not installed and `make test` could not install it (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(report.as_uri())
        assert page.locator("#summary tbody tr").count() == 5
        assert page.locator("table.cmp").count() == 4
        # the quick demo's barely trained inner LLM has every rewrite refused: no gap to plot, and it says so
        gap = json.loads(next((tmp_path / "demo" / "stages").glob("gap-*/gap.json")).read_text())
        plots = ["#metric-bars", "#loss-curves", "#reward-histograms"]
        if gap["delta_mean_nll"] is None:
            assert page.locator("#gap-note").inner_text() == gap["note"]
        else:
            plots.append("#gap-histograms")
        for plot in plots:
            assert page.eval_on_selector(plot, "img => img.complete && img.naturalWidth > 100"), plot
        images = page.eval_on_selector_all(
            "img.sample-image", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)"
        )
        assert images and all(images)
        assert page.locator(".card").count() > 0 and page.locator(".rewrite").count() > 0
        page.screenshot(path=str(tmp_path / "demo" / "report.png"), full_page=True)
        browser.close()
    assert (tmp_path / "demo" / "report.png").stat().st_size > 20_000


def test_sample_stage_filtering_on_subsets_no_record_has_names_the_field(tmp_path):
    from vialign.stage import StageContext
    from vialign.stages import STAGES

    data = tmp_path / "d.jsonl"
    data.write_text(
        json.dumps(
            {
                "id": "r1",
                "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "So."}],
            }
        )
        + "\n"
    )
    kind = STAGES["sample"]
    inputs, settings = kind.prepare({"data": str(data), "target": "unused", "subsets": ["detail"]})
    with pytest.raises(ValueError, match=r"no record has meta\.subset.*--subset NAME"):
        kind.run_function()(StageContext(tmp_path / "out" / "groups.jsonl", inputs, settings))


def recipe_without_min_frac(tmp_path, **templates_with):
    data = small_recipe(tmp_path)
    data["stages"][2]["with"] = {"data": "${validate}/valid.jsonl", **templates_with}
    return Recipe.model_validate(data)


def test_cache_key_is_the_validated_settings_and_the_vialign_version(tmp_path, monkeypatch):
    from vialign.data import templates as templates_module
    from vialign.pipeline import recipe as recipe_module

    logs: list[str] = []
    first = run_recipe(recipe_without_min_frac(tmp_path), log=logs.append, show_progress=False)
    logs.clear()
    default = templates_module.TemplateSettings().min_frac
    run_recipe(recipe_without_min_frac(tmp_path, min_frac=default), log=logs.append, show_progress=False)
    assert ran(logs) == [], "writing the default out is the same stage"

    class ChangedDefault(templates_module.TemplateSettings):
        min_frac: float = 0.5

    monkeypatch.setattr(templates_module, "TemplateSettings", ChangedDefault)
    logs.clear()
    changed = run_recipe(recipe_without_min_frac(tmp_path), log=logs.append, show_progress=False)
    assert ran(logs) == ["templates"], "a changed default reruns the stage that uses it"
    assert json.loads((changed["templates"] / "templates.json").read_text())["min_frac"] == 0.5
    monkeypatch.undo()
    monkeypatch.setattr(recipe_module, "__version__", "999.0")
    logs.clear()
    again = run_recipe(recipe_without_min_frac(tmp_path), log=logs.append, show_progress=False)
    assert ran(logs) == ["world", "validate", "templates"] and again["world"] != first["world"]


def test_bad_settings_of_a_later_stage_stop_the_recipe_before_anything_runs(tmp_path):
    logs: list[str] = []
    recipe = recipe_without_min_frac(tmp_path, min_frac=2.0)
    with pytest.raises(ValueError, match=r"stage 'templates' \(templates\).*min_frac"):
        run_recipe(recipe, log=logs.append, show_progress=False)
    assert ran(logs) == [] and not (tmp_path / "run" / "stages").exists()
