"""Does a LLaVA read its images? The mean per-token NLL of the answers with each sample's own image
against the same samples with their images rotated among them (every sample gets another's image). A
model that ignores its images scores both alike; LLaVA's projector pretraining is meant to open that gap."""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import torch
from pydantic import Field

from vialign.choices import ChatFormatName, Dtype
from vialign.config import Settings
from vialign.manifest import fingerprint_file, stage_manifest
from vialign.models.encoding import IGNORE_INDEX, encode_all
from vialign.models.loading import load_llava
from vialign.models.precision import autocast, default_device, resolve_dtype
from vialign.records import read_samples
from vialign.stage import StageContext
from vialign.train.core import labelled_token_loss, training_encoder
from vialign.train.data import SFTCollator, SFTDataset
from vialign.train.settings import SFTSettings


class RelianceSettings(Settings):
    chat_format: ChatFormatName = Field("plain", description="how the samples were trained (plain: captions)")
    limit: int = Field(64, ge=2, description="samples with one image each")
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    dtype: Dtype = "auto"


@torch.no_grad()
def answer_nll(model, collator: SFTCollator, rows: list[dict], batch_size: int, compute: str) -> float:
    """Mean NLL per answer token, the logits computed at trained positions only (as the trainer does)."""
    total, tokens = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(model.device) for k, v in collator(rows[start : start + batch_size]).items()}
        labels, positions = batch.pop("labels"), batch.pop("trained_positions")
        with autocast(compute, model.device):
            outputs = model(**batch, logits_to_keep=positions)
        targets = labels[:, 1:].index_select(1, positions)
        total += float(labelled_token_loss(outputs, targets, num_items_in_batch=1))
        tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
    return total / max(tokens, 1)


def image_reliance(model_path: str, data: Path, image_root: Path, settings: RelianceSettings) -> dict:
    model, processor = load_llava(model_path, device=default_device())
    model.eval()
    compute = resolve_dtype(settings.dtype, model.device)
    encoder = training_encoder(
        processor,
        SFTSettings(chat_format=settings.chat_format, mode="response"),
        "response",
        image_root=image_root,
    )
    samples = [s for s in read_samples(data) if len(s.images) == 1][: settings.limit]
    items, _ = encode_all(encoder, samples)
    dataset = SFTDataset(items, image_root)
    rows = [dataset[i] for i in range(len(dataset))]
    if len(rows) < 2:
        raise ValueError(
            f"{data}: fewer than 2 one-image samples could be encoded; the check compares images"
        )
    order = list(range(len(rows)))
    random.Random(settings.seed).shuffle(order)
    shift = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}  # a derangement
    swapped = [{**row, "images": rows[shift[i]]["images"]} for i, row in enumerate(rows)]
    collator = SFTCollator.of(processor)
    own = answer_nll(model, collator, rows, settings.batch_size, compute)
    other = answer_nll(model, collator, swapped, settings.batch_size, compute)
    return {
        "samples": len(rows),
        "own_images_nll": round(own, 4),
        "other_images_nll": round(other, 4),
        "gap": round(other - own, 4),
    }


def run_stage(ctx: StageContext) -> None:
    data, model = ctx.path("data"), ctx.take("model")
    with stage_manifest(ctx.out, "train.image_reliance", ctx.settings) as manifest:
        result = image_reliance(model, data, ctx.path("image_root", data.parent), ctx.settings)
        ctx.out.mkdir(parents=True, exist_ok=True)
        (ctx.out / "reliance.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
        manifest.inputs = {str(data): fingerprint_file(data), "model": str(model)}
        manifest.counts = result
    ctx.say(
        f"answer NLL with own images {result['own_images_nll']:.4f}, with other samples' images "
        f"{result['other_images_nll']:.4f} (gap {result['gap']:+.4f}) over {result['samples']} samples"
    )
