"""Every `vialign …` command in README.md's code blocks runs as written, in the README's order (a folder
per section, starting from what earlier sections made), with its defaults: exit 0 and the files it names
with --out. Placeholders (CKPT, data.jsonl, …) are filled with small files; SCALE only shrinks sizes,
steps and token counts. It runs as a CPU with bf16 and as one without. A command that cannot run here is in
SKIP, with the reason."""

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vialign.cli import app
from vialign.records import read_samples, write_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"

# command (as written, comment dropped) → why it is not run here
SKIP = {
    "vialign annotate serve world/annotations/answers.jsonl --db ratings.sqlite --image-root world": (
        "a server that runs until stopped; tests/test_annotate.py serves and rates"
    ),
    "vialign annotate export --db ratings.sqlite --out rated.jsonl": (
        "needs the ratings a served session stored; tests/test_annotate.py exports them"
    ),
    "vialign prefer judge groups.jsonl --judge http://127.0.0.1:8000/v1 --image-root world --out rated.jsonl": (
        "needs a judge server (tests/test_openai_backend.py runs one)"
    ),
    "vialign demo": "the full demo (`make demo`)",
    "vialign demo --quick": "tests/test_pipeline.py runs it",
    "vialign demo --seeds 3": "three full demos",
    "vialign run recipes/llava15-7b.yaml --var base=/models/llava-1.5-7b-hf ...": "a 7B model on GPUs",
    "vialign run RECIPE.yaml --from sft": "RECIPE is any recipe; tests/test_pipeline.py runs --from",
    "vialign run RECIPE.yaml --force score": "RECIPE is any recipe; tests/test_pipeline.py runs --force",
    "vialign lab": "SmolLM2-135M on CPU for hours",
    "vialign lab --seeds 3": "three labs",
    "vialign lab --quick": "tests/test_lab.py runs it",
}
# sizes, steps and token counts only: never a device, dtype or other behaviour
SMALLER = " --set eval_scenes=6 --set eval_text_per_task=3 --set eval_ifeval=3 --set annotation_images=16"
SCALE = [
    (r"--size 8000", "--size 120" + SMALLER),
    (r"annotation_images=1500", "annotation_images=16"),
    (r"text_size=12000", "text_size=120"),
    (r"max_steps=\d+", "max_steps=2"),
    (r"max_new_tokens=\d+", "max_new_tokens=12"),
]


def soft_samples(path: Path, n: int) -> Path:
    samples = [s for s in read_samples(Path("world/corpus.jsonl")) if s.meta.format_class == "open_ended"]
    write_jsonl(samples[:n], path)
    return path


def first_samples(path: Path, n: int, source: Path) -> Path:
    write_jsonl(list(read_samples(source))[:n], path)
    return path


def readme_blocks() -> list[list[str]]:
    """The `vialign` lines of each fenced code block, continuation lines joined, trailing comments dropped."""
    blocks, block, pending = [], None, ""
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            if block:
                blocks.append(block)
            block = [] if block is None else None
            continue
        if block is None:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if line.startswith("vialign "):
            block.append(re.sub(r"\s+#.*$", "", line).strip())
    return blocks


def readme_commands() -> list[str]:
    return [command for block in readme_blocks() for command in block]


def start_block(folder: Path, made: dict[str, Path]) -> None:
    """A README section starts from what earlier sections made (linked); what it writes is its own."""
    folder.mkdir()
    for name, target in made.items():
        (folder / name).symlink_to(target)


def own_output(args: list[str]) -> None:
    """A command writing where an earlier section's output is linked writes its own copy, not theirs (with
    its companions: OUT.partial.jsonl, OUT.identity.json, STEM.manifest)."""
    for flag in ("--out", "--trl-out", "--db"):
        if flag in args:
            top = Path(args[args.index(flag) + 1]).parts[0]
            for link in Path().iterdir():
                if link.is_symlink() and (link.name == top or link.name.startswith(top.split(".")[0] + ".")):
                    link.unlink()


def filled(command: str, model: Path, toyworld: Path) -> list[str]:
    """Placeholders become small real files (made when the command needs them); SCALE shrinks sizes."""
    for pattern, value in SCALE:
        command = re.sub(pattern, value, command)
    words = []
    for word in shlex.split(command.replace("[--json]", "--json"))[1:]:
        if word == "CKPT":
            word = str(model)
        elif word in ("M", "sft") and words[-1] == "--model":
            word = "s2"  # the README's LIT model (M is its reward models' backbone; sft its SFT model)
        elif word == "data.jsonl":
            word = str(first_samples(Path("data.jsonl"), 40, toyworld / "corpus.jsonl"))
        elif word == "corpus.jsonl":
            word = "world/corpus.jsonl"
        elif word in ("soft.jsonl", "prompts.jsonl"):
            word = str(soft_samples(Path(word), 3))
        elif word == "eval/s2-dpo":
            word = "eval/s2"  # the DPO model's evaluation is the line above with another model: compare it with itself
        words.append(word)
    return words


def run(args: list[str]):
    return CliRunner().invoke(app, args)


def test_the_readme_lists_the_commands_this_test_knows():
    commands = readme_commands()
    assert len(commands) > 30 and any(c.startswith("vialign train sft") for c in commands)
    assert set(SKIP) <= set(commands), f"stale SKIP entries: {set(SKIP) - set(commands)}"
    for _, value in SCALE:
        assert not re.search(r"use_cpu|dtype|device", value), "SCALE shrinks sizes only"


@pytest.mark.slow
@pytest.mark.parametrize("bf16_cpu", ["1", "0"], ids=["cpu-with-bf16", "cpu-without-bf16"])
def test_every_readme_command_runs_as_written(bf16_cpu, tiny_model_dir, toyworld, tmp_path, monkeypatch):
    monkeypatch.setenv("VIALIGN_CPU_BF16", bf16_cpu)
    ran, made = [], {}
    for number, block in enumerate(readme_blocks()):
        folder = tmp_path / f"section{number}"
        start_block(folder, made)
        monkeypatch.chdir(folder)
        for command in block:
            if command in SKIP:
                continue
            args = filled(command, tiny_model_dir, toyworld)
            own_output(args)
            result = run(args)
            assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}"
            for flag in ("--out", "--trl-out"):
                if flag in args:
                    target = Path(args[args.index(flag) + 1])
                    assert target.exists() and (target.is_file() or any(target.iterdir())), (command, flag)
            ran.append(command)
        made.update({p.name: p.resolve() for p in folder.iterdir()})
    assert len(ran) == len(readme_commands()) - len(SKIP), ran


def test_the_lab_table_is_generated_from_the_reported_run_and_its_verdicts_follow_the_rule():
    import json

    from vialign.report.html import verdict
    from vialign.report.lab_results import README_END, README_START, lab_markdown

    data = json.loads((README.parent / "docs" / "lab-results.json").read_text())
    text = README.read_text()
    assert text.count(README_START) == 1 and text.count(README_END) == 1
    table = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert table == lab_markdown(data), (
        "regenerate: python -m vialign.report.lab_results docs/lab-results.json"
    )
    assert {"pope_accuracy", "pope_yes_ratio", "vqa_accuracy"} <= set(data["arms"]["vit"])
    assert all(len(values) == len(data["seeds"]) for arm in data["arms"].values() for values in arm.values())
    for claim in data["claims"]:
        assert claim["verdict"] == verdict(
            claim["expect"], claim["deltas"], claim["interval"], claim["margin"]
        )
