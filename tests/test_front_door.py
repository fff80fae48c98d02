"""The front door: every training command runs with its defaults on a CPU with bf16 and on one without,
nothing downloads kernels at run time, and progress in a log is lines, not bar frames."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vialign.cli import app
from vialign.progress import ProgressLines
from vialign.records import read_jsonl, read_samples, write_jsonl


@pytest.fixture(scope="module")
def inputs(toyworld, tmp_path_factory):
    """A few training samples and DPO pairs from the toy world."""
    root = tmp_path_factory.mktemp("front")
    write_jsonl(list(read_samples(toyworld / "corpus.jsonl"))[:24], root / "sft.jsonl")
    pairs = []
    for group in list(read_jsonl(toyworld / "annotations" / "answers.jsonl"))[:4]:
        ranked = sorted(group["candidates"], key=lambda c: -c["score"])
        question = {"from": "human", "value": f"<image>\n{group['question']}"}
        pairs.append(
            {
                "id": group["group_id"],
                "image": group["image"],
                "conversations": [question],
                "chosen": ranked[0]["answer"],
                "rejected": ranked[-1]["answer"],
            }
        )
    write_jsonl(pairs, root / "pairs.jsonl")
    return root


@pytest.fixture(scope="module")
def family_models(tiny_model_dir, tmp_path_factory):
    """Tiny LLaVAs on the toy tokenizer and on the real ones (Llama-2's from wordllama, SmolLM2's)."""
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings

    models = {"toy": tiny_model_dir}
    for family in ("llava-1.5", "smollm2"):
        models[family] = tmp_path_factory.mktemp(family)
        build_tiny_model(None, models[family], TinyModelSettings(family=family))
    return models


def training_commands(model, world, inputs, out):
    """Each training command as a user types it; only the step count (and size) is cut for the test."""
    steps = ["--set", "max_steps=1", "--set", "batch_size=4"]
    return {
        "train sft": [
            *("train", "sft", "--model", model, "--data", inputs / "sft.jsonl", "--image-root", world),
            *("--out", out / "sft", *steps),
        ],
        "train dpo": [
            *("train", "dpo", "--model", model, "--data", inputs / "pairs.jsonl", "--image-root", world),
            *("--out", out / "dpo", *steps),
        ],
        "train lm": ["train", "lm", "--toyworld", world, "--out", out / "lm", *steps],
        "curate train-rm": [
            *(
                "curate",
                "train-rm",
                "--model",
                model,
                "--annotations",
                world / "annotations" / "questions.jsonl",
            ),
            *("--kind", "questions", "--image-root", world, "--out", out / "rm"),
            *("--set", "train.max_steps=1", "--set", "train.batch_size=4"),
        ],
    }


@pytest.mark.parametrize("family", ["toy", "llava-1.5", "smollm2"])
@pytest.mark.parametrize("bf16_cpu", ["1", "0"], ids=["cpu-with-bf16", "cpu-without-bf16"])
def test_every_training_command_runs_with_defaults_on_both_kinds_of_cpu(
    bf16_cpu, family, family_models, toyworld, inputs, tmp_path, monkeypatch
):
    monkeypatch.setenv("VIALIGN_CPU_BF16", bf16_cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("VIALIGN_PROGRESS_INTERVAL", "0")
    expected = "bfloat16" if bf16_cpu == "1" else "float32"
    for name, args in training_commands(family_models[family], toyworld, inputs, tmp_path).items():
        if name == "train lm" and family != "toy":
            continue  # the inner LLM it trains has the toy world's own tokenizer
        result = CliRunner().invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, (name, result.output)
        assert "\r" not in result.output, f"{name}: no bar frames when stderr is not a terminal"
        assert "train steps: 1/1" in result.output, f"{name}: a progress line with the step"
        out = args[args.index("--out") + 1]
        manifest = json.loads((out / "manifest.json").read_text())
        training = [p for p in manifest["precision"] if p["device"] == "cpu" and p["setting"] == "auto"]
        assert training and {p["dtype"] for p in training} == {expected}, (name, manifest["precision"])
        assert all(f"VIALIGN_CPU_BF16={bf16_cpu}" in p["reason"] for p in training), name
        assert manifest["settings"].get("use_cpu", manifest["settings"].get("train", {}).get("use_cpu")) in (
            False,
            None,
        ), f"{name} ran without use_cpu"


def test_training_goes_to_the_gpu_only_where_there_is_one_and_use_cpu_overrides(monkeypatch):
    from vialign.models.precision import training_device
    from vialign.train.core import training_arguments
    from vialign.train.settings import SFTSettings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device(False) == "cpu"
    assert training_arguments(Path("/tmp/x"), SFTSettings(dtype="float32")).use_cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_device(False) == "cuda" and training_device(True) == "cpu"
    assert SFTSettings().device() == "cuda" and SFTSettings(use_cpu=True).device() == "cpu"


def test_vialign_turns_hub_kernels_off_unless_asked(tmp_path):
    from transformers.integrations.hub_kernels import _kernels_enabled

    assert os.environ["USE_HUB_KERNELS"] == "NO" and not _kernels_enabled()
    probe = "import os, vialign; print(os.environ.get('USE_HUB_KERNELS'))"
    env = {k: v for k, v in os.environ.items() if k not in ("USE_HUB_KERNELS", "VIALIGN_HUB_KERNELS")}
    seen = {
        ask: subprocess.run(
            [sys.executable, "-c", probe],
            env={**env, "USE_HUB_KERNELS": "YES", **({"VIALIGN_HUB_KERNELS": ask} if ask else {})},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for ask in ("", "1")
    }
    assert seen == {"": "NO", "1": "YES"}, "off by default; VIALIGN_HUB_KERNELS=1 leaves transformers' choice"


def test_progress_lines_come_at_the_start_every_interval_and_at_the_end():
    now = [0.0]
    lines = []
    report = ProgressLines(interval=10.0, write=lines.append, clock=lambda: now[0])
    report("load", 0, 1)
    for _ in range(100):
        now[0] += 0.5
        report("rewrite", 1, 100)
    assert len(lines) == 1 + 1 + 4 + 1, lines
    assert lines[0] == "load: 0/1, 0.00/s, elapsed 0:00, eta ?"
    assert lines[1] == "rewrite: 1/100, 2.00/s, elapsed 0:00, eta 0:50"
    assert lines[2] == "rewrite: 21/100, 2.00/s, elapsed 0:10, eta 0:40"
    assert lines[-1] == "rewrite: 100/100, 2.00/s, elapsed 0:50"


@pytest.mark.parametrize("bf16_cpu", ["1", "0"])
def test_auto_resolves_alike_for_training_generation_and_scoring(bf16_cpu, tiny_model_dir, monkeypatch):
    from vialign.curate.score import ScoreSettings
    from vialign.curate.train import RewardTrainSettings
    from vialign.generation.local import TransformersBackend
    from vialign.models.precision import default_device, resolve_dtype
    from vialign.train.dpo import DPOSettings
    from vialign.train.settings import LMTrainSettings, SFTSettings

    monkeypatch.setenv("VIALIGN_CPU_BF16", bf16_cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = "bfloat16" if bf16_cpu == "1" else "float32"
    trainers = {cls().compute_dtype() for cls in (SFTSettings, DPOSettings, LMTrainSettings)}
    trainers.add(RewardTrainSettings().train.compute_dtype())
    scoring = resolve_dtype(ScoreSettings().dtype, default_device(ScoreSettings().device))
    generation = TransformersBackend.load(tiny_model_dir).compute
    assert trainers == {scoring} == {generation} == {expected}
