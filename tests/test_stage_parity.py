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

TIMING = {
    "started_at",
    "duration_s",
    "tokens_per_s",
    "steady_tokens_per_s",
    "train_seconds",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "free_bytes",  # the device's free memory when training began
}


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
    recipe = Recipe.model_validate(
        {"out": str(tmp_path / "run"), "stages": [{"name": "s", "uses": uses, "with": settings}]}
    )
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
    cli(
        "data",
        "validate",
        str(sample_file),
        "--out",
        str(tmp_path / "cli"),
        "--image-root",
        str(toyworld),
        "--quiet",
    )
    folder = one_stage(tmp_path, "validate", {"input": str(sample_file), "image_root": str(toyworld)})
    for name in ("valid.jsonl", "rejects.jsonl", "manifest.json"):
        assert read_any(tmp_path / "cli" / name, {}) == read_any(folder / name, {}), name


def test_templates(tmp_path, sample_file):
    cli("data", "templates", str(sample_file), "--out", str(tmp_path / "cli.json"))
    folder = one_stage(tmp_path, "templates", {"data": str(sample_file)})
    assert read_any(tmp_path / "cli.json", {}) == read_any(folder / "templates.json", {})


def test_pairs(tmp_path):
    ratings = [
        {"helpfulness": h, "correctness": h, "coherence": 4, "complexity": 2, "verbosity": 2}
        for h in (4, 1, 0)
    ]
    groups = [
        {"id": f"g{i}", "question": f"Q{i}", "responses": ["a", "b", "c"], "ratings": ratings}
        for i in range(6)
    ]
    rated = tmp_path / "rated.jsonl"
    write_jsonl(groups, rated)
    cli(
        "prefer",
        "pairs",
        str(rated),
        "--out",
        str(tmp_path / "cli" / "pairs.jsonl"),
        "--trl-out",
        str(tmp_path / "cli" / "pairs.trl.jsonl"),
    )
    trl = tmp_path / "recipe" / "pairs.trl.jsonl"
    folder = one_stage(tmp_path, "pairs", {"data": str(rated), "trl_out": str(trl)})
    cli_paths = {
        str(tmp_path / "cli" / "pairs.jsonl"): "OUT",
        str(tmp_path / "cli" / "pairs.trl.jsonl"): "TRL",
    }
    recipe_paths = {str(folder / "pairs.jsonl"): "OUT", str(trl): "TRL"}
    assert read_any(tmp_path / "cli" / "pairs.jsonl", {}) == read_any(folder / "pairs.jsonl", {})
    assert read_any(tmp_path / "cli" / "pairs.trl.jsonl", {}) == read_any(trl, {})
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


def same_weights(a: Path, b: Path) -> bool:
    ours, theirs = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours)


def test_toyworld(tmp_path):
    cli(
        "toyworld",
        "generate",
        "--out",
        str(tmp_path / "cli"),
        "--size",
        "60",
        "--set",
        "annotation_images=4",
        "--set",
        "eval_scenes=4",
        "--quiet",
    )
    folder = one_stage(tmp_path, "toyworld", {"size": 60, "annotation_images": 4, "eval_scenes": 4})

    def files_of(root: Path) -> list[Path]:  # stage.json: the recipe's own bookkeeping
        return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "stage.json")

    files = files_of(tmp_path / "cli")
    assert files == files_of(folder)
    for name in files:
        if name.name != "manifest.json":
            assert (tmp_path / "cli" / name).read_bytes() == (folder / name).read_bytes(), name


def test_sft_trains_the_same_weights(tmp_path, tiny_model_dir, toyworld, sample_file):
    common = {"max_steps": 2, "batch_size": 4, "use_cpu": True, "dtype": "float32"}
    cli(
        "train",
        "sft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(sample_file),
        "--out",
        str(tmp_path / "cli"),
        "--image-root",
        str(toyworld),
        *[x for k, v in common.items() for x in ("--set", f"{k}={v}")],
    )
    folder = one_stage(
        tmp_path,
        "sft",
        {"model": str(tiny_model_dir), "data": str(sample_file), "image_root": str(toyworld), **common},
    )
    assert same_weights(tmp_path / "cli", folder)
    speed = {"tokens_per_s", "steady_tokens_per_s", "train_seconds"}
    ours, theirs = (json.loads((f / "manifest.json").read_text()) for f in (tmp_path / "cli", folder))
    for m in (ours, theirs):
        m["counts"] = {k: v for k, v in m["counts"].items() if k not in speed}
    assert comparable(ours, {}) == comparable(theirs, {})


def test_select(tmp_path, sample_file):
    scored = tmp_path / "scored.jsonl"
    rows = [json.loads(line) for line in sample_file.read_text().splitlines()]
    for k, row in enumerate(rows):
        row["meta"]["curation"] = {"question_score": (k * 37 % 101) / 101, "answer_score": (k * 53 % 97) / 97}
    write_jsonl(rows, scored)
    cli("curate", "select", str(scored), "--out", str(tmp_path / "cli"), "--question-keep", "0.5")
    folder = one_stage(tmp_path, "select", {"data": str(scored), "question_keep": 0.5})
    for name in ("selected.jsonl", "decisions.jsonl", "summary.json"):
        assert read_any(tmp_path / "cli" / name, {}) == read_any(folder / name, {}), name


def test_gap(tmp_path, toyworld):
    from vialign.models.tiny import TinyModelSettings
    from vialign.train.lm import train_lm
    from vialign.train.settings import LMTrainSettings

    lm = tmp_path / "lm"
    train_lm(toyworld, lm, TinyModelSettings(), LMTrainSettings(max_steps=1, use_cpu=True))
    data = tmp_path / "text.jsonl"
    write_jsonl(list(read_samples(toyworld / "text" / "corpus.jsonl"))[:20], data)
    cli("align", "gap", str(data), "--llm", str(lm), "--out", str(tmp_path / "cli"))
    folder = one_stage(tmp_path, "gap", {"data": str(data), "llm": str(lm)})
    for name in ("input.nll.jsonl", "gap.json"):
        assert read_any(tmp_path / "cli" / name, {}) == read_any(folder / name, {}), name


def test_sample(tmp_path, tiny_model_dir, toyworld, sample_file):
    cli(
        "prefer",
        "sample",
        str(sample_file),
        "--model",
        str(tiny_model_dir),
        "--image-root",
        str(toyworld),
        "--out",
        str(tmp_path / "cli.jsonl"),
        "--limit",
        "4",
        "--k",
        "2",
        "--set",
        "params.max_new_tokens=8",
        "--quiet",
    )
    folder = one_stage(
        tmp_path,
        "sample",
        {
            "data": str(sample_file),
            "target": str(tiny_model_dir),
            "image_root": str(toyworld),
            "runner": {"limit": 4},
            "k": 2,
            "params": {"max_new_tokens": 8},
        },
    )
    assert read_any(tmp_path / "cli.jsonl", {}) == read_any(folder / "groups.jsonl", {})


def cli_args(kind: str, inputs: dict, settings: dict, out: Path) -> list[str]:
    """The command line that runs stage `kind` with these inputs and settings (every setting by --set)."""
    from vialign.stages import STAGES

    stage = STAGES[kind]
    args = stage.command.split()
    for spec in stage.inputs:
        if spec.name in inputs:
            values = inputs[spec.name] if isinstance(inputs[spec.name], list) else [inputs[spec.name]]
            args += [
                str(v) for value in values for v in ([value] if spec.flag is None else [spec.flag, value])
            ]

    def flat(prefix: str, value) -> list[str]:
        if isinstance(value, dict):
            return [x for k, v in value.items() for x in flat(f"{prefix}{k}.", v)]
        return ["--set", f"{prefix[:-1]}={json.dumps(value)}"]

    return [*args, *flat("", settings), "--out", str(out), "--quiet"]


def same_outputs(cli_root: Path, folder: Path, ignore: frozenset[str] = frozenset()) -> None:
    """Every file the CLI wrote equals the recipe stage's; JSON compared without timing fields and with
    each run's own folder written as ROOT."""

    def parsed(path: Path, root: Path):
        text = path.read_text().replace(str(root), "ROOT")
        if path.suffix == ".jsonl":
            return [comparable(json.loads(line), {}) for line in text.splitlines() if line.strip()]
        value = comparable(json.loads(text), {})
        return {k: v for k, v in value.items() if k not in ignore} if isinstance(value, dict) else value

    mine = sorted(p.relative_to(cli_root) for p in cli_root.rglob("*") if p.is_file())
    theirs = sorted(
        p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.name != "stage.json"
    )
    assert mine == theirs
    for name in mine:
        if name.suffix in (".json", ".jsonl"):
            assert parsed(cli_root / name, cli_root) == parsed(folder / name, folder), name
        elif name.suffix == ".safetensors":
            ours, theirs = load_file(cli_root / name), load_file(folder / name)
            assert ours.keys() == theirs.keys() and all((ours[k] == theirs[k]).all() for k in ours), name


def stage_both_ways(tmp_path: Path, kind: str, inputs: dict, settings: dict, ignore=frozenset()) -> Path:
    from vialign.stages import STAGES

    out_file = STAGES[kind].out_file
    cli_root = tmp_path / "cli"
    cli_root.mkdir(parents=True)
    cli(*cli_args(kind, inputs, settings, cli_root / out_file if out_file else cli_root))
    folder = one_stage(tmp_path, kind, {**inputs, **settings})
    same_outputs(cli_root, folder, ignore)
    return folder


@pytest.fixture(scope="module")
def tiny_lm(toyworld, tmp_path_factory):
    from vialign.models.tiny import TinyModelSettings
    from vialign.train.lm import train_lm
    from vialign.train.settings import LMTrainSettings

    lm = tmp_path_factory.mktemp("lm") / "lm"
    train_lm(toyworld, lm, TinyModelSettings(), LMTrainSettings(max_steps=1, use_cpu=True))
    return lm


def test_rewrite_and_oracle_review(tmp_path, tiny_lm, sample_file):
    settings = {
        "rewrite_params": {"max_new_tokens": 6},
        "review_params": {"max_new_tokens": 2},
        "runner": {"limit": 5},
    }
    folder = stage_both_ways(
        tmp_path / "rewrite", "rewrite", {"data": str(sample_file), "llm": str(tiny_lm)}, settings
    )
    rewritten = folder / "rewritten.jsonl"
    assert sum(1 for _ in read_samples(rewritten)) == sum(1 for _ in read_samples(sample_file))
    assert sum(1 for _ in read_samples(folder / "rewritten.rewrites.jsonl")) == 5
    reviewed = stage_both_ways(tmp_path / "oracle", "oracle_review", {"data": str(rewritten)}, {})
    facts = json.loads((reviewed / "rewritten.facts.json").read_text())
    assert facts["answers"] > 0 and facts["oracle_review"]["accepted_with_changed_facts"] == 0


def test_train_lm_assemble_and_import(tmp_path, toyworld):
    settings = {"max_steps": 1, "use_cpu": True, "model": {"text_layers": 1}}
    lm = stage_both_ways(tmp_path / "lm", "train_lm", {"toyworld": str(toyworld)}, settings)
    stage_both_ways(tmp_path / "assemble", "assemble", {"lm": str(lm)}, {"model": {"vision_layers": 1}})
    stage_both_ways(tmp_path / "import", "import_model", {"source": "tiny:smollm2"}, {})


def test_judge_and_eval(tmp_path, tiny_model_dir, toyworld):
    groups = [
        {
            "id": f"g{i}",
            "question": "Q",
            "responses": ["a red circle", "a blue square"],
            "truth": {"scene": s},
        }
        for i, s in enumerate(
            json.loads(line)["meta"]["truth"]["scene"]
            for line in (toyworld / "corpus.jsonl").read_text().splitlines()[:4]
        )
    ]
    write_jsonl(groups, tmp_path / "groups.jsonl")
    stage_both_ways(
        tmp_path / "judge", "judge", {"data": str(tmp_path / "groups.jsonl")}, {"judge": "toyworld-oracle"}
    )
    inputs = {"target": str(tiny_model_dir), "data": str(toyworld / "eval"), "image_root": str(toyworld)}
    # results.json holds the run's time, so the manifest's fingerprint of it differs; the file itself is
    # compared without its timing fields
    settings = {"benches": ["vqa", "text"], "limit": 3}
    stage_both_ways(tmp_path / "eval", "eval", inputs, settings, frozenset({"outputs"}))


def test_reward_model_training_scoring_and_dpo(tmp_path, tiny_model_dir, toyworld, sample_file):
    from vialign.records import read_jsonl

    train = {"train": {"max_steps": 2, "batch_size": 2, "use_cpu": True, "dtype": "float32"}, "heldout": 0.2}
    rm = {"model": str(tiny_model_dir), "kind": "answers", "image_root": str(toyworld)}
    rm["annotations"] = [str(toyworld / "annotations" / "answers.jsonl")]
    answers_rm = stage_both_ways(tmp_path / "rm", "train_rm", rm, train)
    scoring = {"data": str(sample_file), "answers_rm": str(answers_rm), "image_root": str(toyworld)}
    stage_both_ways(tmp_path / "score", "score", scoring, {"runner": {"limit": 6}})
    pairs = []
    for group in list(read_jsonl(toyworld / "annotations" / "answers.jsonl"))[:4]:
        ranked = sorted(group["candidates"], key=lambda c: -c["score"])
        turn = {"from": "human", "value": f"<image>\n{group['question']}"}
        pairs.append(
            {"id": group["group_id"], "image": group["image"], "conversations": [turn]}
            | {"chosen": ranked[0]["answer"], "rejected": ranked[-1]["answer"]}
        )
    write_jsonl(pairs, tmp_path / "pairs.jsonl")
    dpo = {"model": str(tiny_model_dir), "data": str(tmp_path / "pairs.jsonl"), "image_root": str(toyworld)}
    common = {"max_steps": 1, "batch_size": 2, "use_cpu": True, "dtype": "float32"}
    stage_both_ways(tmp_path / "dpo", "dpo", dpo, common)


def test_annotation_export(tmp_path, toyworld):
    from vialign.annotate.app import AnnotateSettings
    from vialign.annotate.store import AnnotationStore, read_items

    settings = AnnotateSettings()
    groups, _ = read_items(toyworld / "annotations" / "answers.jsonl", settings.criteria)
    store = AnnotationStore(tmp_path / "ann.sqlite")
    store.add_items(groups[:3], "test")
    stage_both_ways(tmp_path / "export", "annotate_export", {"db": str(tmp_path / "ann.sqlite")}, {})
