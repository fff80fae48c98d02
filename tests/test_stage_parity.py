"""A stage run through its CLI command and through a one-stage recipe writes the same outputs (timing
fields and the output paths themselves aside): the two entry points share settings defaults, library
calls and manifests."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from vialign.cli import app
from vialign.pipeline.recipe import Recipe, run_recipe
from vialign.records import read_samples, write_jsonl

TIMING = {"started_at", "duration_s"}


def comparable(value, paths: dict[str, str]):
    """A parsed JSON value without timing fields, with each output path replaced by its role."""
    if isinstance(value, dict):
        return {paths.get(k, k): comparable(v, paths) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [comparable(v, paths) for v in value]
    return paths.get(value, value) if isinstance(value, str) else value


def read_any(path: Path, paths: dict[str, str]):
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [comparable(json.loads(line), paths) for line in text.splitlines() if line.strip()]
    return comparable(json.loads(text), paths)


def one_stage(tmp_path: Path, uses: str, settings: dict) -> Path:
    recipe = Recipe.model_validate({"out": str(tmp_path / "run"), "stages": [{"name": "s", "uses": uses, "with": settings}]})
    return run_recipe(recipe, log=lambda m: None, show_progress=False)["s"]


def cli(*args: str) -> None:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def sample_file(toyworld, tmp_path_factory):
    path = tmp_path_factory.mktemp("parity") / "data.jsonl"
    write_jsonl(list(read_samples(toyworld / "corpus.jsonl"))[:120], path)
    return path


def test_validate(tmp_path, toyworld, sample_file):
    cli("data", "validate", str(sample_file), "--out", str(tmp_path / "cli"), "--image-root", str(toyworld), "--quiet")
    folder = one_stage(tmp_path, "validate", {"input": str(sample_file), "image_root": str(toyworld)})
    for name in ("valid.jsonl", "rejects.jsonl", "manifest.json"):
        assert read_any(tmp_path / "cli" / name, {}) == read_any(folder / name, {}), name


def test_templates(tmp_path, sample_file):
    cli("data", "templates", str(sample_file), "--out", str(tmp_path / "cli.json"))
    folder = one_stage(tmp_path, "templates", {"data": str(sample_file)})
    assert read_any(tmp_path / "cli.json", {}) == read_any(folder / "templates.json", {})


def test_pairs(tmp_path):
    ratings = [{"helpfulness": h, "correctness": h, "coherence": 4, "complexity": 2, "verbosity": 2} for h in (4, 1, 0)]
    groups = [{"id": f"g{i}", "question": f"Q{i}", "responses": ["a", "b", "c"], "ratings": ratings} for i in range(6)]
    rated = tmp_path / "rated.jsonl"
    write_jsonl(groups, rated)
    cli("prefer", "pairs", str(rated), "--out", str(tmp_path / "cli" / "pairs.jsonl"), "--trl-out",
        str(tmp_path / "cli" / "pairs.trl.jsonl"))  # fmt: skip
    folder = one_stage(tmp_path, "pairs", {"data": str(rated)})
    cli_paths = {str(tmp_path / "cli" / "pairs.jsonl"): "OUT"}
    recipe_paths = {str(folder / "pairs.jsonl"): "OUT"}
    for name in ("pairs.jsonl", "pairs.trl.jsonl"):
        assert read_any(tmp_path / "cli" / name, {}) == read_any(folder / name, {}), name
    assert read_any(tmp_path / "cli" / "pairs.manifest" / "manifest.json", cli_paths) == read_any(
        folder / "pairs.manifest" / "manifest.json", recipe_paths
    )


def test_tiny_model(tmp_path, toyworld):
    cli("model", "tiny", "--toyworld", str(toyworld), "--out", str(tmp_path / "cli"))
    folder = one_stage(tmp_path, "tiny_model", {"toyworld": str(toyworld)})
    ours, theirs = load_file(tmp_path / "cli" / "model.safetensors"), load_file(folder / "model.safetensors")
    assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)
    for name in ("config.json", "tokenizer.json"):
        assert read_any(tmp_path / "cli" / name, {}) == read_any(folder / name, {}), name
