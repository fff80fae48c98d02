"""Local batched generation with transformers: left padding, greedy or sampled, images per request."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from vialign.models.encoding import ChatEncoder, encode_prompt


@torch.no_grad()
def generate_batch(
    model,
    processor,
    encoder: ChatEncoder,
    questions: Sequence[str],
    images: Sequence[Path | None],
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
) -> list[str]:
    """One answer per question; `<image>` in a question needs its image, encoded like training prompts."""
    prompts = [encode_prompt(encoder, q) for q in questions]
    width = max(len(p) for p in prompts)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    inputs = {"input_ids": input_ids, "attention_mask": attention}
    present = [Image.open(p).convert("RGB") for p in images if p is not None]
    if present:
        inputs["pixel_values"] = processor.image_processor(images=present, return_tensors="pt")[
            "pixel_values"
        ]
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, **sampling)
    return [processor.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out]
