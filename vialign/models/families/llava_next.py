"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`, AnyRes): each image is resized to the best of the
grid pinpoints, cut into tiles the tower sees one by one beside a downscaled whole, and the tiles'
features are unpadded back to the image's aspect ratio with a learned newline after every row. So an
image's token count depends on its size (the processor's rule), and a forward pass takes each image's
`image_sizes` beside its tiles' `pixel_values`."""

from __future__ import annotations

from transformers import (
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    PreTrainedTokenizerBase,
)
from transformers.models.llava_next import LlavaNextImageProcessorPil

from vialign.models.families.base import ModelFamily
from vialign.models.families.llava import llava_config_fields, llava_processor_fields
from vialign.models.tiny import TinyModelSettings, random_model


def grid_pinpoints(settings: TinyModelSettings) -> list[list[int]]:
    return [[rows * settings.image_size, cols * settings.image_size] for rows, cols in settings.anyres_tiles]


def build_tiny_llava_next(
    tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings
) -> tuple[LlavaNextForConditionalGeneration, LlavaNextProcessor]:
    pinpoints = grid_pinpoints(settings)
    config = LlavaNextConfig(**llava_config_fields(tokenizer, settings), image_grid_pinpoints=pinpoints)
    model = random_model(LlavaNextForConditionalGeneration, config, tokenizer, settings.seed)
    side = settings.image_size
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(image_processor=images, **llava_processor_fields(tokenizer, settings))
    return model, processor


LLAVA_NEXT = ModelFamily(
    name="llava-next",
    model_types=("llava_next",),
    processor_classes=("LlavaNextProcessor",),
    parts={
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.", "model.image_newline"),
        "llm": ("model.language_model.", "lm_head."),
    },
    projector_modules=("multi_modal_projector",),
    image_inputs=("pixel_values", "image_sizes"),
    fixed_image_tokens=False,
    build_tiny=build_tiny_llava_next,
)
