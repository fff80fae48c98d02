"""SFT benchmarks on the tiny toy-world LLaVA, each a ratio against a baseline run in this same script.

- `sft vs trl`: real (non-pad) training tokens per second, vialign's SFT ÷ TRL's SFTTrainer, same model,
  same samples, same batch size, same number of steps, one process.
- `padding`: share of pad tokens per batch with length grouping (8 batches per sorted group, the setting
  `--set group_by_length=true` uses), and without (random batches, the default).
- `lit vs response`: LIT step time ÷ response-only step time.

    .venv/bin/python benchmarks/sft_bench.py [--steps 60] [--batch 16]
    .venv/bin/python benchmarks/sft_bench.py --model smollm2 --steps 12 --batch 8 --repeats 1 (`sft vs trl` only)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from bench_models import KINDS, build_bench_model
from torch.utils.data import RandomSampler

from vialign.models.encoding import ChatEncoder, EncoderSettings, encode_all
from vialign.models.loading import load_llava, processor_image_tokens
from vialign.records import read_samples, write_jsonl
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld
from vialign.train.data import padding_share
from vialign.train.sampling import ShuffledLengthGroupedSampler
from vialign.train.settings import SFTSettings
from vialign.train.sft import train_sft


class TokenCounter:
    """Counts real tokens the model sees, by a forward pre-hook; the same for both trainers."""

    def __init__(self, model: torch.nn.Module):
        self.tokens = 0
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        mask = kwargs.get("attention_mask")
        if mask is not None and module.training:
            self.tokens += int(mask.sum())


def vialign_tokens_per_s(
    model_dir: Path, data: Path, world: Path, out: Path, steps: int, batch: int, mode: str
) -> float:
    settings = SFTSettings(
        use_cpu=True, max_steps=steps, batch_size=batch, lr=5e-4, mode=mode, logging_steps=1000
    )
    manifest = train_sft(model_dir, data, out, settings, image_root=world)
    return manifest.counts["tokens_per_s"], manifest.counts["train_seconds"]


def trl_tokens_per_s(model_dir: Path, samples: list, world: Path, out: Path, steps: int, batch: int) -> float:
    from datasets import Dataset
    from PIL import Image
    from trl import SFTConfig, SFTTrainer

    from vialign.records import chat_messages

    def row(s):
        messages = chat_messages(s)
        for m in messages:
            if isinstance(m["content"], str):
                m["content"] = [{"type": "text", "text": m["content"]}]
        return {"messages": messages, "images": [Image.open(world / s.image).convert("RGB")]}

    dataset = Dataset.from_list([row(s) for s in samples])
    model, processor = load_llava(model_dir)
    counter = TokenCounter(model)
    config = SFTConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=5e-4,
        use_cpu=True,
        report_to=[],
        logging_steps=1000,
        save_strategy="no",
        max_length=None,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    t0 = time.perf_counter()
    trainer.train()
    return counter.tokens / (time.perf_counter() - t0)


def compare_with_trl(root: Path, world: Path, used: list, args: argparse.Namespace) -> None:
    ours, theirs = [], []
    for r in range(args.repeats):
        ours.append(
            vialign_tokens_per_s(
                root / "model",
                root / "data.jsonl",
                world,
                root / f"ours{r}",
                args.steps,
                args.batch,
                "response",
            )[0]
        )
        theirs.append(trl_tokens_per_s(root / "model", used, world, root / f"trl{r}", args.steps, args.batch))
        print(f"repeat {r}: vialign {ours[-1]:.0f} tok/s, trl {theirs[-1]:.0f} tok/s", flush=True)
    print(
        f"sft vs trl ({args.model}): ratio {statistics.median(ours) / statistics.median(theirs):.2f} "
        f"(vialign {statistics.median(ours):.0f} vs TRL SFTTrainer {statistics.median(theirs):.0f} real tokens/s, "
        f"batch {args.batch}, {args.steps} steps)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=KINDS, default="tiny")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    root = Path(tempfile.mkdtemp(prefix="vialign-bench-"))
    world = root / "world"
    generate_toyworld(world, ToyWorldSettings(seed=0, size=8000, annotation_images=0, eval_scenes=1))
    build_bench_model(args.model, world, root / "model")
    samples = [s for s in read_samples(world / "corpus.jsonl")]
    used = samples[: args.steps * args.batch]
    write_jsonl(used, root / "data.jsonl")
    if args.model != "tiny":
        return compare_with_trl(root, world, used, args)

    # padding: the real corpus, batch 32, grouped vs random sampling
    _, processor = load_llava(root / "model")
    encoder = ChatEncoder(
        processor.tokenizer, EncoderSettings(image_tokens=processor_image_tokens(processor))
    )
    encoded, _ = encode_all(encoder, samples)
    lengths = [len(e) for _, e in encoded]
    grouped = ShuffledLengthGroupedSampler(lengths, 32, seed=0, megabatch_batches=8).batches()
    shuffled = list(RandomSampler(range(len(lengths)), generator=torch.Generator().manual_seed(0)))
    share_grouped = padding_share(lengths, grouped)
    share_random = padding_share(lengths, [shuffled[i : i + 32] for i in range(0, len(shuffled), 32)])
    print(
        f"padding: {share_grouped:.3f} with length grouping, {share_random:.3f} without (batch 32, {len(lengths)} samples)"
    )

    # lit vs response and vialign vs trl, interleaved repeats, median
    ours, theirs, lit_t, resp_t = [], [], [], []
    for r in range(args.repeats):
        tps, _ = vialign_tokens_per_s(
            root / "model", root / "data.jsonl", world, root / f"ours{r}", args.steps, args.batch, "response"
        )
        ours.append(tps)
        theirs.append(trl_tokens_per_s(root / "model", used, world, root / f"trl{r}", args.steps, args.batch))
        _, seconds_lit = vialign_tokens_per_s(
            root / "model", root / "data.jsonl", world, root / f"lit{r}", args.steps, args.batch, "lit"
        )
        _, seconds_resp = vialign_tokens_per_s(
            root / "model", root / "data.jsonl", world, root / f"resp{r}", args.steps, args.batch, "response"
        )
        lit_t.append(seconds_lit)
        resp_t.append(seconds_resp)
        print(
            f"repeat {r}: vialign {ours[-1]:.0f} tok/s, trl {theirs[-1]:.0f} tok/s, lit {seconds_lit:.2f} s, response {seconds_resp:.2f} s"
        )
    print(
        f"sft vs trl: ratio {statistics.median(ours) / statistics.median(theirs):.2f} "
        f"(vialign {statistics.median(ours):.0f} vs TRL SFTTrainer {statistics.median(theirs):.0f} real tokens/s, "
        f"batch {args.batch}, {args.steps} steps)"
    )
    print(
        f"lit vs response: ratio {statistics.median(lit_t) / statistics.median(resp_t):.3f} "
        f"(median train time {statistics.median(lit_t):.2f} s vs {statistics.median(resp_t):.2f} s)"
    )
    print(
        f"padding: ratio {share_grouped:.3f} (share of pad tokens with length grouping; {share_random:.3f} without)"
    )


if __name__ == "__main__":
    main()
