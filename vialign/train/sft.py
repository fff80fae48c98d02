"""`train sft`: LLaVA-style SFT with exact label masks from the encoder (VIT/LIT, templates detected or
given), stage presets and padding-free packing, on the shared trainer (`vialign/train/core.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accelerate import PartialState

from vialign.data.templates import detected_templates, read_template_file
from vialign.manifest import Manifest, fingerprint_file, fingerprint_settings, stage_manifest
from vialign.models.encoded_cache import encode_dataset
from vialign.models.encoding import ChatEncoder
from vialign.models.loading import load_llava, load_processor
from vialign.records import read_samples
from vialign.stage import StageContext
from vialign.train.core import prepare_for_training, run_trainer, save_run, training_encoder, write_quarantine
from vialign.train.data import PackedSFTCollator, SFTCollator, SFTDataset
from vialign.train.settings import SFTSettings


def sft_collator(processor: Any, settings: SFTSettings) -> SFTCollator:
    if settings.packing:
        return PackedSFTCollator.of(
            processor, row_tokens=settings.pack_tokens, max_tokens=settings.max_length
        )
    return SFTCollator.of(processor)


def training_templates(settings: SFTSettings, mode: str, data: str | Path) -> dict[str, Any] | None:
    """The template list a run excludes from LIT loss, with its threshold (both go into the manifest): a
    given file, else templates detected over the training data; None when off or not in mode lit."""
    if mode != "lit" or settings.templates == "none":
        return None
    if settings.templates is not None:
        return {**read_template_file(settings.templates), "detected": False}
    return detected_templates(read_samples(data), settings.template_min_frac)


def preview_encoder(
    model: str,
    data: Path,
    mode: str,
    templates: str | None,
    chat_format: str | None,
    max_length: int | None,
    image_root: Path | None = None,
) -> tuple[Any, ChatEncoder, dict[str, Any] | None]:
    """(processor, encoder, template list) that `preview-labels` shows: training's templates and length."""
    processor = load_processor(model)
    training = SFTSettings(
        templates=templates, chat_format=chat_format, **({"max_length": max_length} if max_length else {})
    )
    template_list = training_templates(training, mode, data)
    return processor, training_encoder(processor, training, mode, template_list, image_root), template_list


def train_sft(
    model_path: str | Path,
    data: str | Path,
    out: str | Path,
    settings: SFTSettings,
    image_root: str | Path | None = None,
    resume: str | bool | None = None,
    callbacks: list | None = None,
) -> Manifest | None:
    """Train and export; returns the manifest on the main process (None on the other ranks)."""
    out = Path(out)
    main_process = PartialState().is_main_process
    with stage_manifest(out, "train.sft", write=main_process) as manifest:
        model, processor = load_llava(model_path)
        template_file = training_templates(settings, settings.resolved("mode"), data)
        encoder = training_encoder(processor, settings, settings.resolved("mode"), template_file, image_root)
        items, report = encode_dataset(encoder, data, workers=settings.encode_workers)
        out.mkdir(parents=True, exist_ok=True)
        if main_process:
            write_quarantine(out, report)
        if not items:
            raise ValueError(
                f"no sample of {data} could be encoded (e.g. {next(iter(report.quarantined.values()), 'empty file')}); "
                f"every reason is in {out / 'quarantine.jsonl'}"
            )
        model, trainable = prepare_for_training(model, settings)
        dataset = SFTDataset(items, image_root)
        result = run_trainer(
            model, dataset, sft_collator(processor, settings), out, settings, resume, callbacks
        )
        save_run(model, processor, out, settings, result)
        if not main_process:
            return None
        manifest.inputs = {str(data): fingerprint_file(data), "model": str(model_path)}
        manifest.settings = {
            **settings.model_dump(mode="json"),
            "resolved": {
                **{
                    k: settings.resolved(k)
                    for k in ("train_vision", "train_projector", "train_llm", "chat_format", "mode")
                },
                "chat_format": encoder.settings.chat_format,
                "dtype": settings.compute_dtype(),
            },
            "templates": template_file or settings.templates,
            "fingerprint": fingerprint_settings(settings),
        }
        manifest.counts = {
            "encoded": report.encoded,
            "truncated": report.truncated,
            "quarantined": len(report.quarantined),
            "trainable_parameters": trainable,
            **result.manifest_counts(),
        }
    return manifest


def run_stage(ctx: StageContext) -> None:
    manifest = train_sft(
        ctx.take("model"),
        ctx.take("data"),
        ctx.out,
        ctx.settings,
        ctx.take("image_root", None),
        ctx.take("resume", None),
    )
    if manifest is None:  # not the main process of a distributed run
        return
    c = manifest.counts
    ctx.say(
        f"trained {c['steps']} steps, loss {c['train_loss']:.4f}, {c['tokens_per_s']:.0f} tokens/s; "
        f"{c['encoded']} samples, {c['truncated']} truncated, {c['quarantined']} quarantined → {ctx.out}"
    )
