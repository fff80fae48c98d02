"""`packing`: real (non-pad) training tokens/s of `train sft` with padding-free packing ÷ the same run with
padded batches (same samples, same random order, same steps), on the tiny toy-world LLaVA and on a
SmolLM2-sized LLaVA (LoRA r16); and the pad share of each, over the batches that run draws.

    .venv/bin/python benchmarks/packing_bench.py [--steps 40] [--batch 16] [--skip-smollm2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from torch.utils.data import RandomSampler

from vialign.models.encoding import encode_all
from vialign.models.loading import build_tiny_model, load_llava
from vialign.models.tiny import TinyModelSettings
from vialign.records import read_samples, write_jsonl
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld
from vialign.train.core import training_encoder
from vialign.train.data import SFTDataset
from vialign.train.settings import LoraSettings, SFTSettings
from vialign.train.sft import sft_collator, train_sft


def pad_share(model_dir: Path, data: Path, world: Path, s: SFTSettings, steps: int) -> float:
    """Pad tokens ÷ all tokens over the first `steps` random batches, as the collator lays them out."""
    _, processor = load_llava(model_dir)
    items, _ = encode_all(training_encoder(processor, s, s.resolved("mode")), read_samples(data))
    dataset = SFTDataset(items, None)
    order = list(RandomSampler(dataset, generator=torch.Generator().manual_seed(0)))
    collate = sft_collator(processor, s)
    real = total = 0
    for step in range(steps):
        batch = [i % len(order) for i in range(step * s.batch_size, (step + 1) * s.batch_size)]
        rows = [
            {"input_ids": items[order[i]][1].input_ids, "labels": items[order[i]][1].labels} for i in batch
        ]
        ids = collate(rows)["input_ids"]
        real += sum(len(r["input_ids"]) for r in rows)
        total += ids.numel()
    return 1 - real / total


def compare(name: str, model_dir: Path, data: Path, world: Path, out: Path, base: dict, steps: int) -> None:
    results = {}
    for packing in (False, True):
        s = SFTSettings(**base, packing=packing)
        manifest = train_sft(model_dir, data, out / f"{name}-{packing}", s, image_root=world)
        results[packing] = (manifest.counts["tokens_per_s"], pad_share(model_dir, data, world, s, steps))
    (padded, pad_padded), (packed, pad_packed) = results[False], results[True]
    print(
        f"packing {name}: ratio {packed / padded:.2f} ({packed:.0f} vs {padded:.0f} real tokens/s; "
        f"pad share {pad_packed:.3f} packed vs {pad_padded:.3f} padded)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--smollm2-steps", type=int, default=12)
    parser.add_argument("--smollm2-batch", type=int, default=8)
    parser.add_argument("--skip-smollm2", action="store_true")
    args = parser.parse_args()
    common = dict(use_cpu=True, warmup_ratio=0.0, scheduler="constant", logging_steps=1000, templates="none")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = root / "world"
        generate_toyworld(world, ToyWorldSettings(seed=0, size=2000, annotation_images=0, eval_scenes=1))
        build_tiny_model(world, root / "tiny", TinyModelSettings())
        data = root / "train.jsonl"
        write_jsonl(list(read_samples(world / "corpus.jsonl")), data)
        compare(
            "tiny",
            root / "tiny",
            data,
            world,
            root,
            dict(common, max_steps=args.steps, batch_size=args.batch, lr=5e-4),
            args.steps,
        )
        if not args.skip_smollm2:
            from smollm2_train_bench import build_inputs

            model, small, world2 = build_inputs(root / "smollm2", 400)
            lora = LoraSettings(enabled=True, r=16, alpha=32, dropout=0.0, merge_on_save=False)
            compare(
                "smollm2",
                model,
                small,
                world2,
                root,
                dict(common, max_steps=args.smollm2_steps, batch_size=args.smollm2_batch, lr=2e-4, lora=lora),
                args.smollm2_steps,
            )


if __name__ == "__main__":
    main()
