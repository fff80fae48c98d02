"""Tiny models built from configs: real transformers classes of each family, only small. The settings and
the parts every family shares (vision tower, image processor, text config) are here; each family builds
its model in its own module (`vialign/models/families/`).

CLIP towers use `vision_feature_select_strategy="default"` (drop CLS) with one additional image
token in the processor's count; SigLIP towers have no CLS, so "full" with none. Any other pairing
makes image tokens and image features disagree.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from pydantic import Field, model_validator
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerBase,
    SiglipVisionConfig,
)
from transformers.models.clip import CLIPImageProcessorPil
from transformers.models.siglip import SiglipImageProcessorPil

from vialign.choices import Family, Vision
from vialign.config import Settings

T = TypeVar("T")


class TinyModelSettings(Settings):
    family: Family = Field(
        "toy",
        description="toy, llava-1.5, smollm2: a LLaVA-1.5 around the toy world's trained tokenizer, "
        "Llama-2's or SmolLM2's; llava-next: a LLaVA-NeXT (AnyRes) around Llama-2's",
    )
    vision: Vision = "clip"
    image_size: int = Field(48, ge=16)
    patch_size: int = Field(16, ge=2)
    vision_hidden: int = 64
    vision_intermediate: int | None = Field(None, description="default: twice vision_hidden")
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 344
    max_positions: int = 1024
    vocab_size: int = Field(512, description="tokenizer vocabulary to train")
    anyres_tiles: list[tuple[int, int]] = Field(
        default_factory=lambda: [(1, 2), (2, 1), (2, 2)],
        description="llava-next: the grid pinpoints, in tiles of image_size (rows, columns)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _divisible(self) -> TinyModelSettings:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        for hidden, heads, what in (
            (self.vision_hidden, self.vision_heads, "vision"),
            (self.text_hidden, self.text_heads, "text"),
        ):
            if hidden % heads:
                raise ValueError(f"{what} hidden size {hidden} is not divisible by {heads} heads")
        return self

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def vision_config(s: TinyModelSettings) -> CLIPVisionConfig | SiglipVisionConfig:
    common = dict(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate or s.vision_hidden * 2,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
    )
    return CLIPVisionConfig(**common) if s.vision == "clip" else SiglipVisionConfig(**common)


def image_processor(s: TinyModelSettings) -> CLIPImageProcessorPil | SiglipImageProcessorPil:
    if s.vision == "clip":
        side = {"shortest_edge": s.image_size}
        return CLIPImageProcessorPil(size=side, crop_size={"height": s.image_size, "width": s.image_size})
    return SiglipImageProcessorPil(size={"height": s.image_size, "width": s.image_size})


def select_strategy(s: TinyModelSettings) -> tuple[str, int]:
    """(vision_feature_select_strategy, num_additional_image_tokens) that keep tokens and features equal."""
    return ("default", 1) if s.vision == "clip" else ("full", 0)


def random_model(model_class: type[T], config: Any, tokenizer: PreTrainedTokenizerBase, seed: int) -> T:
    """A model of random weights (seeded) that generates with the tokenizer's pad and end tokens."""
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def text_config(tokenizer: PreTrainedTokenizerBase, s: TinyModelSettings) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_heads,
        max_position_embeddings=s.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
