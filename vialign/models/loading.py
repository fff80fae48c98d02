"""One door for models: a tiny LLaVA built here and a real HF LLaVA checkpoint load the same way.

Weights load from safetensors only, and remote code runs only when the user asks for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedModel,
    ProcessorMixin,
)

from vialign.manifest import Manifest, fingerprint_dir, stage_manifest
from vialign.models.families import TINY_FAMILIES, ModelFamily, TinyFamily, family_of
from vialign.models.families.tokenizers import family_tokenizer
from vialign.models.tiny import TinyModelSettings
from vialign.models.tokenizer import texts_of, train_tokenizer
from vialign.stage import StageContext


def load_llava(
    path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load a LLaVA-style model and its processor from a local folder (or a hub id when online)."""
    source = str(path)
    if Path(source).exists() and not (Path(source) / "config.json").is_file():
        raise FileNotFoundError(f"{source} has no config.json: not a transformers checkpoint folder")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    if not Path(source).exists() and (
        offline or source.startswith(("/", ".", "~")) or source.count("/") != 1
    ):
        raise FileNotFoundError(
            f"{source}: no such checkpoint folder" + (" (the hub is offline)" if offline else "")
        )
    processor = load_processor(source, trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        source, dtype=dtype or "auto", use_safetensors=True, trust_remote_code=trust_remote_code
    )
    if device:
        model = model.to(device)
    return model.eval(), processor


def load_processor(source: str | Path, trust_remote_code: bool = False) -> ProcessorMixin:
    """A checkpoint's processor, as its family loads it."""
    family = known_family(AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code))
    if family is not None and family.load_processor is not None:
        return family.load_processor(str(source), trust_remote_code)
    return AutoProcessor.from_pretrained(str(source), trust_remote_code=trust_remote_code)


def processor_image_tokens(processor: ProcessorMixin) -> int:
    """Image tokens per image as a LlavaProcessor expands `<image>` (patches, plus CLS unless dropped), for
    a family whose count is fixed. Not the processor's `_get_num_multimodal_tokens`: LlavaProcessor's reads
    `crop_size`, which a SigLIP image processor does not have."""
    size = processor.image_processor.crop_size or processor.image_processor.size
    side = size.get("height") or size.get("shortest_edge")
    dropped = 1 if processor.vision_feature_select_strategy == "default" else 0
    return (side // processor.patch_size) ** 2 + processor.num_additional_image_tokens - dropped


def save_llava(model: PreTrainedModel, processor: ProcessorMixin, out: str | Path) -> Path:
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    save_processor(processor, out)
    return out


def save_processor(processor: ProcessorMixin, out: str | Path) -> None:
    family = known_family(processor)
    if family is not None and family.save_processor is not None:
        family.save_processor(processor, Path(out))
    else:
        processor.save_pretrained(out)


def known_family(thing: object) -> ModelFamily | None:
    """The family of a model, config or processor, or None for one vialign has no module for."""
    try:
        return family_of(thing)
    except ValueError:
        return None


def model_fingerprint(path: str | Path) -> str:
    """Identity of a checkpoint folder: its config, weights and processor files."""
    return fingerprint_dir(path, "*.*")


def build_tiny_model(toyworld: str | Path | None, out: str | Path, settings: TinyModelSettings) -> Manifest:
    """A tiny model of a family saved as a plain transformers checkpoint. Family `toy`: a LLaVA around a
    tokenizer trained on the toy world's corpora; a real family: its own tokenizer and chat template."""
    out = Path(out)
    with stage_manifest(out, "model.tiny") as manifest:
        inputs: dict[str, str] = {}
        tiny = TINY_FAMILIES[settings.family]
        if tiny.tokenizer == "toy":
            if toyworld is None:
                raise ValueError("family 'toy' trains its tokenizer on a toy world: give --toyworld DIR")
            corpora = [Path(toyworld) / "corpus.jsonl", Path(toyworld) / "text" / "corpus.jsonl"]
            tokenizer = train_tokenizer(texts_of(corpora), vocab_size=settings.vocab_size)
            inputs = {str(p): fingerprint_dir(p.parent, p.name) for p in corpora}
        else:
            tokenizer = family_tokenizer(tiny.tokenizer)
        model, processor = tiny.family.build_tiny(tokenizer, settings)
        save_llava(model, processor, out)
        (out / "README.md").write_text(model_card(settings.family, tiny, type(model).__name__))
        manifest.inputs = inputs
        manifest.settings = settings.model_dump(mode="json")
        manifest.counts = {"parameters": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}
        manifest.outputs = {"model": model_fingerprint(out)}
    return manifest


def model_card(name: str, tiny: TinyFamily, model_class: str) -> str:
    return (
        f"# A tiny random {tiny.family.name} model (`vialign model tiny --family {name}`)\n\n"
        f"A `{model_class}` with random weights and a few small layers, for tests and dry runs of vialign "
        f"recipes on a CPU: it has learned nothing.\n\nTokenizer: {tiny.card}.\n"
    )


def run_stage(ctx: StageContext) -> None:
    settings = ctx.settings
    manifest = build_tiny_model(ctx.take("toyworld", None), ctx.out, settings)
    c = manifest.counts
    ctx.say(
        f"tiny {settings.family} model in {ctx.out}: {c['parameters']:,} parameters, vocabulary {c['vocab']}"
    )
