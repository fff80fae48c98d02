"""Reliability trials, SIGKILL at a random moment, then resume; compared with an uninterrupted run.

`--mode train`: `vialign train sft` killed (often while a checkpoint is being written), resumed with
`--resume last`; its final weights compared bit for bit. `--mode pipeline`: `vialign demo --quick` killed
anywhere in its stages, run again; every evaluation's metrics and the report's tables compared with an
uninterrupted demo's, and every stage that had finished before the kill must be reused, not recomputed.
Prints `identical in N of T trials` (the ratio of BENCHMARKS.md's `kill trials` lines).

    .venv/bin/python benchmarks/kill_trials.py --trials 10
    .venv/bin/python benchmarks/kill_trials.py --mode pipeline --trials 10
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
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


# the venv's own vialign, whatever is on PATH
VIALIGN = [sys.executable, "-m", "vialign.cli"]


def command(model: Path, data: Path, world: Path, out: Path, resume: bool) -> list[str]:
    args = [*VIALIGN, "train", "sft", "--model", str(model), "--data", str(data), "--image-root", str(world)]
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
    parser.add_argument("--mode", choices=["train", "pipeline"], default="train")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    root = Path(tempfile.mkdtemp(prefix="kill-trials-"))
    if args.mode == "pipeline":
        pipeline_trials(root, args.trials, rng, env)
        return
    train_trials(root, args.trials, rng, env)


def train_trials(root: Path, trials: int, rng: random.Random, env: dict[str, str]) -> None:
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
    for trial in range(trials):
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
        f"resumed bit-identical in {identical} of {trials} trials "
        f"({during_save} killed with an unfinished checkpoint on disk)"
    )


def demo(out: Path) -> list[str]:
    return [*VIALIGN, "demo", "--quick", "--out", str(out)]


def finished_stages(out: Path) -> set[str]:
    """Stage folders whose run record is written: what a resume must reuse."""
    return {p.parent.name for p in (out / "stages").glob("*/stage.json")}


def stage_lines(log: str, word: str) -> set[str]:
    return set(re.findall(rf"\[{word}\] (\S+) \(", log))


def results(out: Path) -> dict:
    """Every evaluation's metrics, and the report's summary, comparison and gap tables."""
    run = json.loads((out / "run.json").read_text())
    metrics = {
        name: {
            b: e["metrics"]
            for b, e in json.loads((Path(f) / "results.json").read_text())["benchmarks"].items()
        }
        for name, f in sorted(run.items())
        if name.startswith("eval_")
    }
    page = (out / "report.html").read_text()
    tables = re.findall(r"<table (?:id=summary|class=cmp|id=gap)>.*?</table>", page, re.S)
    return {"metrics": metrics, "tables": tables}


def pipeline_trials(root: Path, trials: int, rng: random.Random, env: dict[str, str]) -> None:
    t0 = time.perf_counter()
    whole = subprocess.run(demo(root / "whole"), env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    seconds = time.perf_counter() - t0
    reference = results(root / "whole")
    stages = len(stage_lines(whole.stdout, "run"))
    print(f"uninterrupted demo --quick: {seconds:.0f} s, {stages} stages")
    identical = 0
    for trial in range(trials):
        out = root / f"trial{trial}"
        proc = subprocess.Popen(demo(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 0.95) * seconds)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = finished_stages(out)
        resumed = subprocess.run(demo(out), env=env, capture_output=True, text=True)
        ran, reused = stage_lines(resumed.stdout, "run"), stage_lines(resumed.stdout, "skip")
        recomputed = {folder for folder in before if folder.rsplit("-", 1)[0] in ran}
        same = resumed.returncode == 0 and not recomputed and results(out) == reference
        identical += same
        print(
            f"trial {trial}: killed with {len(before)} of {stages} stages finished; resume rc {resumed.returncode}, "
            f"{len(reused)} cache hits, {len(ran)} run, recomputed {sorted(recomputed) or 'none'}, identical {same}"
        )
        if resumed.returncode != 0:
            print(resumed.stderr[-1500:])
    print(
        f"pipeline kill trials: identical in {identical} of {trials} trials (ratio {identical / trials:.2f})"
    )


if __name__ == "__main__":
    main()
