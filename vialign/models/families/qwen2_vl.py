"""Qwen2-VL (`Qwen2VLForConditionalGeneration`): a ViT at native resolution whose 2×2 patch merger is
the projector (`model.visual.merger`), images written `<|vision_start|><|image_pad|><|vision_end|>` with
`<|image_pad|>` expanded to the image's merged patches (its `image_grid_thw`), and M-RoPE: 3-D position ids
(time, height, width) for image tokens, the text's continuing after an image from its largest index. A
forward pass takes `pixel_values` (flattened patches), `image_grid_thw` and `mm_token_type_ids`; a packed
row takes the position ids of each of its samples, restarted, as transformers reads packing: text
positions first, then the three M-RoPE rows (shape 4 × batch × length)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel
from transformers.utils import is_torchvision_available

from vialign.models.families.base import ModelFamily
from vialign.models.tiny import TinyModelSettings, random_model

IMAGE_PAD, VISION_START, VISION_END, VIDEO_PAD = (
    "<|image_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|video_pad|>",
)
VISION_TOKENS = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# Qwen2-VL-Instruct's chat template (ChatML, a default system prompt, an image item written as
# <|vision_start|><|image_pad|><|vision_end|>)
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def image_only_processor(image_processor: Any, tokenizer: PreTrainedTokenizerBase) -> Qwen2VLProcessor:
    """A Qwen2VLProcessor for images, without its video processor. transformers builds one only with a
    video processor, which needs torchvision, and no torchvision loads beside the CPU torch this project
    pins; images need neither, so the processor is assembled from its parts (where torchvision is
    installed, `AutoProcessor` loads the whole one from the same folder)."""
    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    processor.image_processor, processor.tokenizer, processor.video_processor = (
        image_processor,
        tokenizer,
        None,
    )
    processor.chat_template = tokenizer.chat_template
    processor.image_token, processor.video_token = IMAGE_PAD, VIDEO_PAD
    processor.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    processor.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    return processor


def load_processor(path: str, trust_remote_code: bool = False) -> Any:
    if is_torchvision_available():
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    return image_only_processor(AutoImageProcessor.from_pretrained(path), tokenizer)


def save_processor(processor: Any, out: Path) -> None:
    if processor.video_processor is not None:
        processor.save_pretrained(out)
        return
    processor.tokenizer.save_pretrained(out)
    processor.image_processor.save_pretrained(out)
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))


def build_tiny_qwen2_vl(
    tokenizer: PreTrainedTokenizerBase, settings: TinyModelSettings
) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    head_dim = settings.text_hidden // settings.text_heads
    third = head_dim // 2 // 3  # M-RoPE splits the rotary half of each head between time, height, width
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": settings.text_hidden,
            "intermediate_size": settings.text_intermediate,
            "num_hidden_layers": settings.text_layers,
            "num_attention_heads": settings.text_heads,
            "num_key_value_heads": settings.text_heads,
            "max_position_embeddings": settings.max_positions,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [head_dim // 2 - 2 * third, third, third],
            },
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": settings.vision_layers,
            "embed_dim": settings.vision_hidden,
            "hidden_size": settings.text_hidden,
            "num_heads": settings.vision_heads,
            "patch_size": settings.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PAD),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_PAD),
        vision_start_token_id=tokenizer.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END),
    )
    model = random_model(Qwen2VLForConditionalGeneration, config, tokenizer, settings.seed)
    unit = settings.patch_size * 2  # a merged patch's side
    images = Qwen2VLImageProcessorPil(
        patch_size=settings.patch_size,
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=unit * unit,
        max_pixels=(settings.image_size * 2) ** 2,
    )
    return model, image_only_processor(images, tokenizer)


def qwen2_text_config(text_config: Any) -> Qwen2Config:
    """Qwen2-VL's language model as a plain Qwen2: the same layers and weights; on text alone M-RoPE's
    three position rows are equal, which is 1-D RoPE with the same frequencies."""
    fields = text_config.to_dict()
    rope = {k: v for k, v in (fields.get("rope_parameters") or {}).items() if k != "mrope_section"}
    keep = set(Qwen2Config().to_dict()) - {"model_type", "transformers_version", "architectures"}
    return Qwen2Config(**{**{k: v for k, v in fields.items() if k in keep}, "rope_parameters": rope})


def token_types(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """`mm_token_type_ids`: 1 at image tokens, 0 elsewhere."""
    return (input_ids == image_token_id).int()


def mrope_positions(
    input_ids: torch.Tensor, grids: torch.Tensor, image_token_id: int, merge: int
) -> torch.Tensor:
    """One sample's 3 × length M-RoPE position ids, from transformers' own `get_rope_index` (the model
    computes the same for an unpacked batch), which needs only the merge size from its model."""
    model = SimpleNamespace(
        config=SimpleNamespace(vision_config=SimpleNamespace(spatial_merge_size=merge)),
        get_vision_position_ids=functools.partial(Qwen2VLModel.get_vision_position_ids, None),
    )
    ids = input_ids[None]
    positions, _ = Qwen2VLModel.get_rope_index(
        model, ids, token_types(ids, image_token_id), image_grid_thw=grids if len(grids) else None
    )
    return positions[:, 0]


def with_model_inputs(batch: dict[str, Any], rows: list[list[dict[str, Any]]] | None, processor: Any) -> dict:
    """`mm_token_type_ids`, and for a packed batch (`rows`: its samples row by row) the 4-row position
    ids: each sample's text positions and M-RoPE positions restarted at 0, so no sample sees another's."""
    image_id = processor.image_token_id
    batch["mm_token_type_ids"] = token_types(batch["input_ids"], image_id)
    if rows is None:
        return batch
    merge = processor.image_processor.merge_size
    grids = iter(batch.get("image_grid_thw", torch.zeros(0, 3, dtype=torch.long)))
    text = batch["position_ids"]
    spatial = text[None].repeat(3, 1, 1)
    for k, row in enumerate(rows):
        start = 0
        for sample in row:
            n = len(sample["input_ids"])
            ids = batch["input_ids"][k, start : start + n]
            sample_grids = [next(grids) for _ in sample.get("images", [])]
            stacked = torch.stack(sample_grids) if sample_grids else torch.zeros(0, 3, dtype=torch.long)
            spatial[:, k, start : start + n] = mrope_positions(ids, stacked, image_id, merge)
            start += n
    batch["position_ids"] = torch.cat([text[None], spatial])
    return batch


QWEN2_VL = ModelFamily(
    name="qwen2-vl",
    model_types=("qwen2_vl",),
    processor_classes=("Qwen2VLProcessor",),
    parts={
        "projector": ("model.visual.merger.",),
        "vision": ("model.visual.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    projector_modules=("merger",),
    image_inputs=("pixel_values", "image_grid_thw"),
    fixed_image_tokens=False,
    build_tiny=build_tiny_qwen2_vl,
    image_token=IMAGE_PAD,
    image_text=VISION_START + IMAGE_PAD + VISION_END,
    image_separator="",
    native_chat_format="tokenizer",
    one_d_positions=False,
    text_lm_config=qwen2_text_config,
    with_model_inputs=with_model_inputs,
    load_processor=load_processor,
    save_processor=save_processor,
)
