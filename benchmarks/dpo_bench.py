"""DPO benchmark, a ratio against a baseline measured in this script.

- `dpo vs trl`: wall time of one DPO epoch with vialign (reference log-probs cached on disk beforehand)
  ÷ TRL's DPOTrainer (reference model run online), the same tiny toy-world LLaVA, the same pairs, batch
  size, learning rate and sigmoid loss, one process, CPU. Medians over interleaved repeats; the training
  loop only (model loading, tokenization and the one-off reference pass are outside both timings).

    .venv/bin/python benchmarks/dpo_bench.py [--pairs 128] [--batch 8] [--repeats 3] [--model tiny|smollm2]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_models import KINDS, build_bench_model
from PIL import Image

from vialign.models.loading import load_llava
from vialign.prefer.pairs import trl_record
from vialign.records import write_jsonl
from vialign.toyworld.annotations import best_and_worst_pairs
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld
from vialign.train.dpo import DPOSettings, train_dpo


def vialign_epoch(root: Path, settings: DPOSettings, run: int) -> float:
    manifest = train_dpo(
        root / "tiny",
        root / "pairs.jsonl",
        root / f"ours{run}",
        settings,
        image_root=root / "world",
        show_progress=False,
    )
    assert manifest.counts["reference_computed"] == 0 or run < 0
    return manifest.counts["train_seconds"]


def trl_epoch(root: Path, pairs: list[dict], batch: int, lr: float, run: int) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, processor = load_llava(root / "tiny")
    rows = []
    for p in pairs:
        row = trl_record(p)
        row["images"] = [Image.open(root / "world" / i).convert("RGB") for i in row["images"]]
        rows.append(row)
    config = DPOConfig(
        output_dir=str(root / f"trl{run}"),
        use_cpu=True,
        max_length=None,
        beta=0.1,
        loss_type=["sigmoid"],
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.03,
        save_strategy="no",
        report_to=[],
        logging_steps=1000,
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model).eval(),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=KINDS, default="tiny")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_toyworld(
            root / "world", ToyWorldSettings(size=600, annotation_images=args.pairs, eval_scenes=1)
        )
        build_bench_model(args.model, root / "world", root / "tiny")
        pairs = best_and_worst_pairs(root / "world", args.pairs)
        write_jsonl(pairs, root / "pairs.jsonl")
        settings = DPOSettings(
            use_cpu=True,
            batch_size=args.batch,
            epochs=1,
            lr=5e-5,
            ref_cache_dir=root / "refs",
            logging_steps=1000,
        )
        vialign_epoch(root, settings, -1)  # fills the reference cache
        ours, theirs = [], []
        for run in range(args.repeats):
            ours.append(vialign_epoch(root, settings, run))
            theirs.append(trl_epoch(root, pairs, args.batch, 5e-5, run))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(
        f"dpo vs trl: ratio {o / t:.2f} (one DPO epoch, vialign with cached reference log-probs ÷ TRL "
        f"DPOTrainer with its online reference; {len(pairs)} pairs, batch {args.batch}, {args.model} LLaVA, CPU; "
        f"medians of {args.repeats}: {o:.2f} s vs {t:.2f} s; runs {[round(x, 2) for x in ours]} vs "
        f"{[round(x, 2) for x in theirs]})"
    )


if __name__ == "__main__":
    main()
