"""LLaVA-1.5 (`LlavaForConditionalGeneration`): a vision tower, an MLP projector, a language model;
every image becomes the same number of `<image>` tokens (the tower's patches, CLS dropped or kept)."""

from __future__ import annotations

from typing import Any

from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerBase

from vialign.models.families.base import ModelFamily
from vialign.models.tiny import (
    TinyModelSettings,
    image_processor,
    random_model,
    select_strategy,
    text_config,
    vision_config,
)
from vialign.records import IMAGE_TAG


def llava_config_fields(tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings) -> dict[str, Any]:
    """What a tiny LLaVA's config holds, LLaVA-1.5's and LLaVA-NeXT's alike."""
    return {
        "vision_config": vision_config(settings),
        "text_config": text_config(tokenizer, settings),
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TAG),
        "vision_feature_select_strategy": select_strategy(settings)[0],
        "vision_feature_layer": -1,
        "projector_hidden_act": "gelu",
    }


def llava_processor_fields(tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings) -> dict[str, Any]:
    """What a tiny LLaVA's processor takes besides its image processor, LLaVA-1.5's and LLaVA-NeXT's alike."""
    strategy, additional = select_strategy(settings)
    return {
        "tokenizer": tokenizer,
        "patch_size": settings.patch_size,
        "vision_feature_select_strategy": strategy,
        "num_additional_image_tokens": additional,
        "chat_template": tokenizer.chat_template,
        "image_token": IMAGE_TAG,
    }


def build_tiny_llava(
    tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    config = LlavaConfig(**llava_config_fields(tokenizer, settings))
    model = random_model(LlavaForConditionalGeneration, config, tokenizer, settings.seed)
    processor = LlavaProcessor(
        image_processor=image_processor(settings), **llava_processor_fields(tokenizer, settings)
    )
    return model, processor


LLAVA = ModelFamily(
    name="llava-1.5",
    model_types=("llava",),
    processor_classes=("LlavaProcessor",),
    parts={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    projector_modules=("multi_modal_projector",),
    image_inputs=("pixel_values",),
    fixed_image_tokens=True,
    build_tiny=build_tiny_llava,
)
