"""What a model family is to vialign: where its parts live, how its processor expands an image into
tokens, what a forward pass takes besides the ids, and how a tiny one is built. A family is a module
of `vialign/models/families/` holding one `ModelFamily`; `vialign.models.families.FAMILIES` lists them
by exact name."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from vialign.models.tiny import TinyModelSettings
from vialign.records import IMAGE_TAG, Sample, confined_image_path


def height_width(file: Path) -> tuple[int, int]:
    with Image.open(file) as image:  # reads the header only
        width, height = image.size
    return height, width


def repeated_image_token(processor: ProcessorMixin, sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Each image as its processor's image token, repeated as many times as the processor's rule says."""
    return [[processor.image_token_id] * n for n in processor_token_counts(processor, sizes)]


def text_config_as_is(text_config: Any) -> Any:
    return text_config


TinyBuilder = Callable[[PreTrainedTokenizerBase, TinyModelSettings], tuple[PreTrainedModel, ProcessorMixin]]


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]  # the `config.model_type` of its checkpoints
    processor_classes: tuple[str, ...]  # the classes of their processors
    # part (vision, projector, llm) → parameter-name prefixes; the first part that matches wins
    parts: dict[str, tuple[str, ...]]
    projector_modules: tuple[str, ...]  # what PEFT saves whole when the projector trains beside LoRA
    image_inputs: tuple[str, ...]  # the image processor's outputs a forward pass takes
    # whether every image becomes the same number of tokens, whatever its size (no image is read to encode)
    fixed_image_tokens: bool
    build_tiny: TinyBuilder
    # where they vary, each image (by its height, width) as the ids its image token becomes
    image_spans: Callable[[Any, Sequence[tuple[int, int]]], list[list[int]]] = repeated_image_token
    # how a record's <image> is written: `image_text`, of which the processor expands `image_token`, and
    # what follows each image a turn starts with (see `EncoderSettings`)
    image_token: str = IMAGE_TAG
    image_text: str = IMAGE_TAG
    image_separator: str = "\n"
    image_glued_to_role: bool = False  # SmolVLM writes `User:<image>` where text alone is `User: text`
    language_model: str = "language_model"  # the language model's module name (LoRA's scope, compile)
    # the chat format a fine-tuning stage uses where LLaVA's presets say vicuna_v1 and none is set
    native_chat_format: str = "vicuna_v1"
    # whether a caller gives 1-D position ids (from the attention mask, for left padding); an M-RoPE
    # family computes its own from the mask
    one_d_positions: bool = True
    # inputs a forward pass takes besides ids and images (`batch`, the packed rows or None, the processor)
    with_model_inputs: Callable[[dict, list | None, Any], dict] | None = None
    # the config of a causal LM that holds the language model's weights (`model import` of the checkpoint)
    text_lm_config: Callable[[Any], Any] = text_config_as_is
    load_processor: Callable[[str, bool], Any] | None = None  # default: AutoProcessor
    save_processor: Callable[[Any, Path], None] | None = None  # default: the processor's save_pretrained

    def encoder_fields(self) -> dict[str, str | bool]:
        """The `EncoderSettings` that write this family's images."""
        return {
            "image_token": self.image_token,
            "image_text": self.image_text,
            "image_separator": self.image_separator,
            "image_glued_to_role": self.image_glued_to_role,
        }

    def chat_format(self, preset: str) -> str:
        """A stage preset's chat format for this family: its own where the preset is LLaVA's vicuna_v1."""
        return self.native_chat_format if preset == "vicuna_v1" else preset

    def model_inputs(self, processor: Any) -> Callable[[dict, list | None], dict] | None:
        """What a collator calls to complete a batch for this family, if anything."""
        if self.with_model_inputs is None:
            return None
        return functools.partial(self.with_model_inputs, processor=processor)

    def part_of(self, name: str) -> str:
        for part, prefixes in self.parts.items():
            if name.startswith(prefixes):
                return part
        raise ValueError(f"parameter {name!r} belongs to no known part of a {self.name} model")

    def is_projector(self, name: str) -> bool:
        """Whether a parameter is the projector's, under any wrapper's prefix (PEFT, a reward model)."""
        return any(prefix in name for prefix in self.parts["projector"])


def processor_token_counts(processor: ProcessorMixin, sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Image tokens for images of these (height, width), by the processor's own rule (the one its
    `__call__` expands image placeholders with)."""
    data = processor._get_num_multimodal_tokens(image_sizes=[list(size) for size in sizes])
    return [int(n) for n in data["num_image_tokens"]]


@dataclass
class ImageSpansOf:
    """Per sample, each of its images as the ids its image token becomes, from the images' sizes (their
    headers only) and the family's rule: what the encoder writes for a family whose image tokens depend
    on the image. Image files are taken as unchanging, as the encoded-data cache takes the corpus' images."""

    family: ModelFamily
    processor: Any
    image_root: str | Path | None
    # spans by image size: a corpus has few distinct sizes, and the processor's rule is not free
    known: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def __call__(self, sample: Sample) -> list[list[int]]:
        if not sample.images:
            return []
        if self.image_root is None:
            raise ValueError("the image root is needed to size this family's image tokens")
        return self.of_files([confined_image_path(self.image_root, path) for path in sample.images])

    def of_files(self, files: Sequence[Path]) -> list[list[int]]:
        return self.of_sizes([height_width(file) for file in files])

    def of_sizes(self, sizes: Sequence[tuple[int, int]]) -> list[list[int]]:
        new = [size for size in dict.fromkeys(sizes) if size not in self.known]
        if new:
            self.known.update(zip(new, self.family.image_spans(self.processor, new), strict=True))
        return [self.known[size] for size in sizes]

    def key(self) -> dict[str, Any]:
        """What the spans depend on besides the images: the cache key of an encoding made with them."""
        return {
            "family": self.family.name,
            "image_processor": self.processor.image_processor.to_dict(),
            "image_root": str(self.image_root),
        }
