"""The built-in demo. For now: the toy world, validation, statistics, a tiny LLaVA, and a smoke run
that trains it for a few steps on toy samples and checks that the loss falls. The pipeline issue
turns this into the full method comparison.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from vialign.data.stats import dataset_stats
from vialign.data.validate import ValidateSettings, validate_file
from vialign.models.loading import build_tiny_from_toyworld, load_llava
from vialign.models.tiny import TinyModelSettings
from vialign.records import IMAGE_TAG, Sample, read_samples
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld


def chat_messages(sample: Sample) -> list[dict]:
    """LLaVA turns → transformers chat messages with a typed image part."""
    messages = []
    for turn in sample.conversations:
        if turn.role == "human" and IMAGE_TAG in turn.value:
            text = turn.value.replace(IMAGE_TAG, "").strip()
            messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]})
        else:
            messages.append({"role": "user" if turn.role == "human" else "assistant", "content": turn.value})
    return messages


def smoke_batch(samples: list[Sample], root: Path, processor) -> dict[str, torch.Tensor]:
    """Every real token is a target here (the smoke run checks learning, not label masks)."""
    texts = [processor.apply_chat_template(chat_messages(s)) for s in samples]
    images = [Image.open(root / s.image).convert("RGB") for s in samples]
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].clone()
    image_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TAG)
    labels[(batch["attention_mask"] == 0) | (labels == image_id)] = -100
    batch["labels"] = labels
    return batch


def smoke_train(model_dir: Path, toyworld: Path, steps: int, seed: int) -> tuple[float, float, float]:
    torch.manual_seed(seed)
    model, processor = load_llava(model_dir)
    model.train()
    samples = [s for s in read_samples(toyworld / "corpus.jsonl") if s.meta.corruption is None]
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = model(**smoke_batch(rng.sample(samples, 8), toyworld, processor)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    k = max(1, steps // 5)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k, time.perf_counter() - t0


def run_demo(out: Path, *, quick: bool, seed: int, console: Console) -> None:
    out = Path(out)
    world, model_dir = out / "toyworld", out / "tiny-llava"
    size, steps = (1000, 30) if quick else (4000, 120)
    t0 = time.perf_counter()
    manifest = generate_toyworld(
        world, ToyWorldSettings(seed=seed, size=size, annotation_images=100, eval_scenes=100)
    )
    console.print(
        f"[bold]toy world[/bold]: {manifest.counts['samples']} samples, {manifest.counts['images']} images in {manifest.duration_s:.1f} s"
    )

    summary = validate_file(world / "corpus.jsonl", out / "validated", ValidateSettings(image_root=world))
    console.print(f"[bold]validate[/bold]: {summary.valid} valid, {summary.rejected} rejected")

    stats = dataset_stats(out / "validated" / "valid.jsonl")
    table = Table(title="corpus by subset and format class")
    for column in ("subset", "class", "samples"):
        table.add_column(column)
    for (subset, cls), n in sorted(stats.by_subset_class.items()):
        table.add_row(subset, cls, str(n))
    console.print(table)

    built = build_tiny_from_toyworld(world, model_dir, TinyModelSettings(seed=seed))
    console.print(
        f"[bold]tiny LLaVA[/bold]: {built.counts['parameters']:,} parameters, vocabulary {built.counts['vocab']}, saved to {model_dir}"
    )

    first, last, seconds = smoke_train(model_dir, world, steps, seed)
    verdict = "[green]falls[/green]" if last < first else "[red]does not fall[/red]"
    console.print(
        f"[bold]smoke run[/bold]: {steps} steps in {seconds:.1f} s, loss {first:.3f} → {last:.3f} ({verdict})"
    )
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {out}")
    if last >= first:
        raise SystemExit("smoke run: the loss did not fall")
