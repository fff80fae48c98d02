"""Reliability trials for training resume: `vialign train sft` is killed with SIGKILL at a random moment
(often while a checkpoint is being written), resumed with `--resume last`, and its final weights are
compared with an uninterrupted run's. Prints how many trials resumed bit-identically.

    .venv/bin/python benchmarks/kill_trials.py --trials 10
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

from vialign.models.loading import build_tiny_model
from vialign.models.tiny import TinyModelSettings
from vialign.records import read_samples, write_jsonl
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld

SETTINGS = [
    "--set",
    "use_cpu=true",
    "--set",
    "batch_size=4",
    "--set",
    "max_steps=120",
    "--set",
    "save_steps=2",
    "--set",
    "logging_steps=1",
    "--set",
    "warmup_ratio=0.1",
    "--set",
    "group_by_length=false",
]


def command(model: Path, data: Path, world: Path, out: Path, resume: bool) -> list[str]:
    args = ["vialign", "train", "sft", "--model", str(model), "--data", str(data), "--image-root", str(world)]
    return [*args, "--out", str(out), *SETTINGS, *(["--resume", "last"] if resume else [])]


def wait_for_first_checkpoint(out: Path, proc: subprocess.Popen) -> float:
    """Training has begun once the first checkpoint folder appears; returns that moment."""
    while not (out / "checkpoints" / "checkpoint-2").exists() and proc.poll() is None:
        time.sleep(0.005)
    return time.perf_counter()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return LlavaForConditionalGeneration.from_pretrained(folder).state_dict()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    world = root / "world"
    generate_toyworld(
        world,
        ToyWorldSettings(
            seed=3, size=200, annotation_images=10, eval_scenes=10, eval_text_per_task=5, workers=1
        ),
    )
    build_tiny_model(world, root / "model", TinyModelSettings())
    data = root / "train.jsonl"
    write_jsonl(list(read_samples(world / "corpus.jsonl"))[:160], data)
    proc = subprocess.Popen(
        command(root / "model", data, world, root / "whole", False),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    training_started = wait_for_first_checkpoint(root / "whole", proc)
    assert proc.wait() == 0
    window = time.perf_counter() - training_started
    reference = weights(root / "whole")
    identical, during_save = 0, 0
    for trial in range(args.trials):
        out = root / f"trial{trial}"
        proc = subprocess.Popen(
            command(root / "model", data, world, out, False),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_first_checkpoint(out, proc)
        time.sleep(rng.uniform(0.0, window * 0.9))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        folders = sorted((out / "checkpoints").glob("checkpoint-*")) if (out / "checkpoints").is_dir() else []
        unsealed = [f.name for f in folders if not (f / "vialign-complete").is_file()]
        during_save += bool(unsealed)
        resumed = subprocess.run(
            command(root / "model", data, world, out, True), env=env, capture_output=True, text=True
        )
        same = resumed.returncode == 0 and all(torch.equal(reference[k], v) for k, v in weights(out).items())
        identical += same
        print(
            f"trial {trial}: {len(folders)} checkpoints, unfinished {unsealed or 'none'}, "
            f"resume rc {resumed.returncode}, identical {same}"
        )
    print(
        f"resumed bit-identical in {identical} of {args.trials} trials "
        f"({during_save} killed with an unfinished checkpoint on disk)"
    )


if __name__ == "__main__":
    main()
