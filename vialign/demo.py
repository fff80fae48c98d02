"""The built-in demo. For now: the toy world, validation, statistics, a tiny LLaVA, and a smoke run
of the real SFT trainer (LIT labels) that checks the loss falls. The pipeline issue turns this into
the full method comparison.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vialign.data.stats import dataset_stats
from vialign.data.validate import ValidateSettings, validate_file
from vialign.models.loading import build_tiny_from_toyworld
from vialign.models.tiny import TinyModelSettings
from vialign.toyworld.generate import ToyWorldSettings, generate_toyworld
from vialign.train.settings import SFTSettings
from vialign.train.sft import train_sft


def smoke_train(
    model_dir: Path, toyworld: Path, out: Path, steps: int, seed: int
) -> tuple[float, float, float]:
    """A short LIT finetune through the real trainer; (first loss, last loss, seconds)."""
    settings = SFTSettings(
        use_cpu=True, max_steps=steps, batch_size=8, lr=5e-4, warmup_ratio=0.05, logging_steps=1, seed=seed
    )
    manifest = train_sft(model_dir, toyworld / "corpus.jsonl", out, settings, image_root=toyworld)
    losses = [row["loss"] for row in json.loads((out / "log_history.json").read_text()) if "loss" in row]
    k = max(1, len(losses) // 5)
    return sum(losses[:k]) / k, sum(losses[-k:]) / k, manifest.counts["train_seconds"]


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

    first, last, seconds = smoke_train(model_dir, world, out / "smoke-sft", steps, seed)
    verdict = "[green]falls[/green]" if last < first else "[red]does not fall[/red]"
    console.print(
        f"[bold]smoke run[/bold]: {steps} steps in {seconds:.1f} s, loss {first:.3f} → {last:.3f} ({verdict})"
    )
    console.print(f"demo finished in {time.perf_counter() - t0:.1f} s; outputs under {out}")
    if last >= first:
        raise SystemExit("smoke run: the loss did not fall")
