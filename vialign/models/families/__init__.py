"""Model families, a module each, behind one interface (`base.ModelFamily`) and one exact-name registry;
the real tokenizers tiny models are built around are in `tokenizers`."""

from __future__ import annotations

from typing import Any

from vialign.models.families.base import ModelFamily
from vialign.models.families.llava import LLAVA
from vialign.models.families.llava_next import LLAVA_NEXT

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (LLAVA, LLAVA_NEXT)}

# `model tiny --family NAME`: the family whose model is built, and the tokenizer it is built around
# (`toy`: trained on the toy world; else a real one from `tokenizers.FAMILY_TOKENIZERS`)
TINY_FAMILIES: dict[str, tuple[ModelFamily, str]] = {
    "toy": (LLAVA, "toy"),
    "llava-1.5": (LLAVA, "llava-1.5"),
    "smollm2": (LLAVA, "smollm2"),
    "llava-next": (LLAVA_NEXT, "llava-1.5"),
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
