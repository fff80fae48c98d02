"""Reward-model scoring benchmark, a ratio against a baseline measured in this script.

- `rm scoring`: samples/s of `vialign curate score`'s scorer with batched forwards (FORWARD samples, all
  their turns, per forward) ÷ one sample at a time, both reward models (questions + answers), the same
  toy-world samples; scores are checked to agree.

    .venv/bin/python benchmarks/rm_scoring_bench.py [--samples 256] [--forward 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from vialign.curate.score import CurationScorer, ScoreSettings, load_scorers
from vialign.curate.train import RewardTrainSettings, train_reward_model
from vialign.models.loading import build_tiny_model
from vialign.models.tiny import TinyModelSettings
from vialign.records import read_samples
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld


def build(root: Path) -> dict[str, Path]:
    generate_toyworld(root / "world", ToyWorldSettings(size=600, annotation_images=40, eval_scenes=1))
    build_tiny_model(root / "world", root / "tiny", TinyModelSettings())
    settings = RewardTrainSettings(train={"max_steps": 2, "batch_size": 2, "use_cpu": True})
    paths = {}
    for kind in ("questions", "answers"):
        paths[kind] = root / f"rm_{kind}"
        train_reward_model(
            root / "tiny",
            [root / "world" / "annotations" / f"{kind}.jsonl"],
            kind,
            paths[kind],
            settings,
            image_root=root / "world",
        )
    return paths


def timed(scorer: CurationScorer, samples: list, chunk: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    rows = [row for k in range(0, len(samples), chunk) for row in scorer(samples[k : k + chunk])]
    return time.perf_counter() - t0, rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--forward", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build(root)
        models = load_scorers(paths, ScoreSettings())
        samples = list(read_samples(root / "world" / "corpus.jsonl"))[: args.samples]
        turns = sum(len(s.answers) for s in samples)
        timed(CurationScorer(models, root / "world", 1), samples[:8], 1)  # warm-up
        single_s, single = timed(CurationScorer(models, root / "world", 1), samples, 1)
        batch_s, batched = timed(CurationScorer(models, root / "world", args.forward), samples, 64)
    worst = max(
        abs(a - b)
        for x, y in zip(single, batched, strict=True)
        for a, b in zip(
            [x.value["question_score"], *x.value["answer_scores"]],
            [y.value["question_score"], *y.value["answer_scores"]],
            strict=True,
        )
    )
    n = len(samples)
    print(
        f"rm scoring: ratio {single_s / batch_s:.2f} (samples/s batched, {args.forward} samples per forward, "
        f"÷ one sample at a time; {n} samples, {turns} answer turns, both reward models; "
        f"{n / batch_s:.1f} vs {n / single_s:.1f} samples/s; largest score difference {worst:.1e})"
    )


if __name__ == "__main__":
    main()
