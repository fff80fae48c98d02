"""Idefics3 (`Idefics3ForConditionalGeneration`; SmolVLM, whose language model is SmolLM2): a SigLIP-style
vision model, a pixel-shuffle connector, a Llama language model (`model.text_model`). An image is resized,
split into crops in rows and columns beside a downscaled whole, and written as its crops'
`<fake_token_around_image><row_r_col_c><image>…` then `<fake_token_around_image><global-img><image>…
<fake_token_around_image>`: not one token repeated, so each image is the ids of the processor's own
expansion text for its size. SmolVLM's chat template glues an image that opens a turn to its role
(`User:<image>`, where text alone is `User: text`). A forward pass takes `pixel_values` (crops) and
`pixel_attention_mask`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    PreTrainedTokenizerBase,
)
from transformers.models.idefics3 import Idefics3ImageProcessorPil

from vialign.models.families.base import ModelFamily
from vialign.models.tiny import TinyModelSettings, random_model, text_config
from vialign.records import IMAGE_TAG

CROP_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
IMAGE_TOKENS = ("<fake_token_around_image>", IMAGE_TAG, "<global-img>", *CROP_TOKENS)
END_OF_UTTERANCE = "<end_of_utterance>"


def image_spans(processor: Any, sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Each image as the ids of the text the processor writes for it (its crops' grid, then the whole)."""
    images_kwargs = processor._merge_kwargs()["images_kwargs"]
    spans = []
    for height, width in sizes:
        _, rows, cols = processor.image_processor.get_number_of_image_patches(height, width, images_kwargs)
        text = processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)
        spans.append(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return spans


def pixel_shuffle_factor(settings: TinyModelSettings) -> int:
    """The connector's scale factor: 2 where the patch grid's side allows it, else 3 (SmolVLM uses both)."""
    side = settings.image_size // settings.patch_size
    for factor in (2, 3):
        if side % factor == 0:
            return factor
    raise ValueError(
        f"idefics3: a patch grid of side {side} is divisible by neither 2 nor 3; change patch_size"
    )


def build_tiny_idefics3(
    tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings
) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    factor = pixel_shuffle_factor(settings)
    config = Idefics3Config(
        vision_config={
            "hidden_size": settings.vision_hidden,
            "intermediate_size": settings.vision_intermediate or settings.vision_hidden * 2,
            "num_hidden_layers": settings.vision_layers,
            "num_attention_heads": settings.vision_heads,
            "image_size": settings.image_size,
            "patch_size": settings.patch_size,
        },
        text_config=text_config(tokenizer, settings).to_dict(),
        scale_factor=factor,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TAG),
    )
    model = random_model(Idefics3ForConditionalGeneration, config, tokenizer, settings.seed)
    side = settings.image_size
    images = Idefics3ImageProcessorPil(
        do_image_splitting=True, max_image_size={"longest_edge": side}, size={"longest_edge": 2 * side}
    )
    seq_len = (side // settings.patch_size) ** 2 // factor**2
    processor = Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=tokenizer.chat_template,
    )
    return model, processor


IDEFICS3 = ModelFamily(
    name="idefics3",
    model_types=("idefics3",),
    processor_classes=("Idefics3Processor",),
    parts={
        "vision": ("model.vision_model.",),
        "projector": ("model.connector.",),
        "llm": ("model.text_model.", "lm_head."),
    },
    projector_modules=("connector",),
    image_inputs=("pixel_values", "pixel_attention_mask"),
    fixed_image_tokens=False,
    build_tiny=build_tiny_idefics3,
    image_spans=image_spans,
    image_separator="",
    image_glued_to_role=True,
    native_chat_format="tokenizer",
    language_model="text_model",
)
