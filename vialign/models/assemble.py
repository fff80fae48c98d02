"""Build a LLaVA from parts, as LLaVA is built from Vicuna + CLIP: a language model checkpoint, a vision
tower (a checkpoint, or a tiny config), and a fresh projector. Same code for tiny and real parts.

The loaded language model and vision tower are moved into the LLaVA as modules (no second copy of
their weights), so assembling a 7B model needs about one model's memory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipVisionModel,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from vialign.config import Settings
from vialign.models.loading import save_llava
from vialign.models.tiny import TinyModelSettings, image_processor, select_strategy, vision_config
from vialign.models.tokenizer import CHAT_TEMPLATE, with_typed_content
from vialign.records import IMAGE_TAG
from vialign.stage import StageContext

VISION_OF = {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}


def ensure_image_token(tokenizer) -> bool:
    """Add `<image>` as a special token if the LM's tokenizer lacks it; True when the vocabulary grew."""
    if IMAGE_TAG in tokenizer.get_vocab():
        return False
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TAG]})
    return True


class AssembleSettings(Settings):
    vision: str = Field("tiny-clip", description="vision checkpoint folder, or tiny-clip / tiny-siglip")
    # LLaVA-1.5 feeds the projector from the penultimate layer (mm_vision_select_layer -2).
    vision_feature_layer: int = Field(-2, description="hidden layer whose features feed the projector")
    seed: int = 0
    model: TinyModelSettings = Field(
        default_factory=TinyModelSettings, description="the tiny tower's shape (vision tiny-clip/tiny-siglip)"
    )

    def tower(self) -> str | TinyModelSettings:
        if self.vision.startswith("tiny-"):
            return self.model.model_copy(update={"vision": self.vision.removeprefix("tiny-")})
        return self.vision


def load_vision(vision: str | Path | TinyModelSettings, seed: int = 0):
    """(vision model, image processor, strategy, additional tokens, patch size)."""
    if isinstance(vision, TinyModelSettings):
        torch.manual_seed(seed)
        strategy, additional = select_strategy(vision)
        return (
            AutoModel.from_config(vision_config(vision)),
            image_processor(vision),
            strategy,
            additional,
            vision.patch_size,
        )
    config = AutoConfig.from_pretrained(str(vision))
    if config.model_type in VISION_OF:  # a full CLIP/SigLIP checkpoint: take its vision half
        model = VISION_OF[config.model_type].from_pretrained(str(vision), use_safetensors=True)
    elif config.model_type.endswith("vision_model"):
        model = AutoModel.from_pretrained(str(vision), use_safetensors=True)
    else:
        raise ValueError(f"{vision} is a {config.model_type} model; give a vision tower (CLIP or SigLIP)")
    is_clip = model.config.model_type.startswith("clip")
    return (
        model,
        AutoImageProcessor.from_pretrained(str(vision)),
        "default" if is_clip else "full",
        1 if is_clip else 0,
        model.config.patch_size,
    )


def assemble_llava(
    lm_path: str | Path,
    vision: str | Path | TinyModelSettings,
    out: str | Path,
    *,
    vision_feature_layer: int = -2,
    seed: int = 0,
) -> LlavaForConditionalGeneration:
    tokenizer = AutoTokenizer.from_pretrained(str(lm_path))
    lm = AutoModelForCausalLM.from_pretrained(str(lm_path), use_safetensors=True)
    if ensure_image_token(tokenizer):
        lm.resize_token_embeddings(len(tokenizer))
    tokenizer.chat_template = with_typed_content(tokenizer.chat_template or CHAT_TEMPLATE)
    tower, image_proc, strategy, additional, patch = load_vision(vision, seed)
    config = LlavaConfig(
        vision_config=tower.config,
        text_config=lm.config,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TAG),
        vision_feature_select_strategy=strategy,
        vision_feature_layer=vision_feature_layer,
        projector_hidden_act="gelu",
    )
    with torch.device("meta"):
        llava = LlavaForConditionalGeneration(config)
    llava.model.language_model = lm.model
    llava.lm_head = lm.lm_head
    llava.model.vision_tower = tower
    torch.manual_seed(seed)
    llava.model.multi_modal_projector = LlavaMultiModalProjector(config).to(lm.dtype)
    meta = [n for n, t in [*llava.named_parameters(), *llava.named_buffers()] if t.is_meta]
    if meta:
        raise RuntimeError(f"assembly left parameters unset: {meta[:3]}")
    llava.generation_config.pad_token_id = tokenizer.pad_token_id
    llava.generation_config.eos_token_id = tokenizer.eos_token_id
    processor = LlavaProcessor(
        image_processor=image_proc,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=additional,
        chat_template=tokenizer.chat_template,
        image_token=IMAGE_TAG,
    )
    save_llava(llava, processor, out)
    return llava


def run_stage(ctx: StageContext) -> None:
    s = ctx.settings
    model = assemble_llava(
        ctx.take("lm"), s.tower(), ctx.out, vision_feature_layer=s.vision_feature_layer, seed=s.seed
    )
    ctx.say(f"LLaVA assembled in {ctx.out}: {sum(p.numel() for p in model.parameters()):,} parameters")
