"""Reward model: a LLaVA backbone and a linear head to one scalar, read at the last real token.

Training and scoring share one preprocessing path (`RewardInputs`): the same text layout, the same
image mode and the same length limit. The settings are saved with the model and scoring checks them, so
the mismatch in Align2LLaVA's public scripts (`pad` in training, `square` in scoring) cannot happen.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import orjson
import torch
from PIL import Image
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from vialign.choices import GroupKind
from vialign.config import Settings
from vialign.models.encoding import ChatEncoder, EncoderSettings, encode_prompt
from vialign.models.families import family_of
from vialign.models.families.base import ImageSpansOf, height_width
from vialign.models.loading import load_llava, model_fingerprint, processor_image_tokens, save_llava
from vialign.records import IMAGE_TAG

RewardKind = GroupKind
HEAD_FILE = "reward_head.safetensors"
CARD_FILE = "reward.json"


class PreprocessSettings(Settings):
    """Everything that turns a candidate into model inputs; must be identical in training and scoring."""

    image_mode: Literal["pad", "resize", "processor"] = Field(
        "pad",
        description="pad: pad to a square with the processor's mean colour (LLaVA-1.5); resize: stretch "
        "to a square; processor: the image processor's own resize and crop",
    )
    template: Literal["raw", "vicuna_v1"] = Field(
        "raw", description="raw: the text as is after BOS; vicuna_v1: as the user turn of a chat prompt"
    )
    max_length: int = Field(1024, ge=8, description="tokens after image expansion; longer text is cut")


def questions_text(questions: Sequence[str], n_images: int = 1) -> str:
    """`<image>` then the conversation's questions joined by newlines (Align2LLaVA's question RM input)."""
    body = "\n".join(q.replace(IMAGE_TAG, "").strip() for q in questions)
    return f"{IMAGE_TAG}\n" * n_images + body


def answer_text(question: str, answer: str, n_images: int = 1) -> str:
    """`<image>` then `Question: q`, `Answer: a` on their own lines (Align2LLaVA's answer RM input)."""
    return (
        f"{IMAGE_TAG}\n" * n_images
        + f"Question: {question.replace(IMAGE_TAG, '').strip()}\nAnswer: {answer}\n"
    )


class InputTooLong(ValueError):
    pass


class RewardInputs:
    """Text → token ids (image tags expanded as the model's family writes them) and image files → the
    inputs a forward pass takes, one way for every use."""

    def __init__(self, processor: Any, settings: PreprocessSettings):
        self.processor, self.settings = processor, settings
        self.tokenizer = processor.tokenizer
        self.family = family_of(processor)
        fixed = self.family.fixed_image_tokens
        if settings.image_mode == "resize" and not fixed:
            raise ValueError(
                f"image_mode resize stretches images to the vision tower's input square, and a "
                f"{self.family.name} model reads images at their own size: use pad or processor"
            )
        self.encoder = ChatEncoder(
            self.tokenizer,
            EncoderSettings(
                **self.family.encoder_fields(),
                chat_format=self.family.chat_format("vicuna_v1"),
                mode="response",
                image_tokens=processor_image_tokens(processor) if fixed else 0,
                max_length=settings.max_length,
            ),
        )
        self.spans = None if fixed else ImageSpansOf(self.family, processor, None)
        self.truncated = 0

    def ids(self, text: str, images: Sequence[Path] = ()) -> list[int]:
        """The ids of a candidate whose `<image>` tags stand for `images` (needed where an image's token
        count depends on its size)."""
        spans = self.spans.of_sizes([self.prepared_size(p) for p in images]) if self.spans else None
        if self.settings.template == "vicuna_v1":
            ids = encode_prompt(self.encoder, text, spans=spans)
        else:
            ids = [self.tokenizer.bos_token_id] if self.encoder.add_bos else []
            own = iter(spans or ())
            for part in re.split(f"({re.escape(IMAGE_TAG)})", text):
                if part == IMAGE_TAG:
                    ids += self.image_ids(next(own, None))
                elif part:
                    ids += self.encoder.ids(part)
        return self.cut(ids)

    def image_ids(self, span: Sequence[int] | None) -> list[int]:
        """One image as the family writes it (LLaVA's `<image>`, Qwen2-VL's start and end around it),
        its image token become `span` (default: `image_tokens` image tokens)."""
        image_id = self.encoder.image_token_id
        span = [image_id] * self.encoder.settings.image_tokens if span is None else list(span)
        ids: list[int] = []
        for token in self.encoder.ids(self.encoder.settings.image_text):
            ids += span if token == image_id else [token]
        return ids

    def cut(self, ids: list[int]) -> list[int]:
        """Drop trailing text tokens beyond max_length; an image span is never cut."""
        limit = self.settings.max_length
        if len(ids) <= limit:
            return ids
        image_id = self.encoder.image_token_id
        last_image = max((i for i, t in enumerate(ids) if t == image_id), default=-1)
        if last_image >= limit - 1:
            raise InputTooLong(
                f"{len(ids)} tokens and the image span ends at token {last_image + 1}; max_length is {limit}"
            )
        self.truncated += 1
        return ids[:limit]

    def image(self, path: Path) -> Image.Image:
        image = Image.open(path).convert("RGB")
        mode = self.settings.image_mode
        if mode == "processor":
            return image
        side = max(image.size)
        if mode == "resize":
            target = self.image_side()
            return image.resize((target, target), Image.Resampling.BICUBIC)
        mean = self.processor.image_processor.image_mean
        square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in mean))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        return square

    def prepared_size(self, path: Path) -> tuple[int, int]:
        """(height, width) of the image `image` makes of a file, read from its header."""
        height, width = height_width(path)
        if self.settings.image_mode == "pad":
            return max(height, width), max(height, width)
        if self.settings.image_mode == "resize":
            return self.image_side(), self.image_side()
        return height, width

    def image_side(self) -> int:
        ip = self.processor.image_processor
        size = ip.crop_size or ip.size
        return size.get("height") or size.get("shortest_edge")

    def image_inputs(self, paths: Sequence[Path]) -> dict[str, torch.Tensor]:
        """The image processor's outputs the family's forward pass takes, for these images in order."""
        processed = self.processor.image_processor(images=[self.image(p) for p in paths], return_tensors="pt")
        return {name: processed[name] for name in self.family.image_inputs}


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for right or left padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(dim=1)


class RewardModel(nn.Module):
    """LLaVA backbone (optionally wrapped by peft) + linear head; `forward` returns one score per row."""

    def __init__(self, llava: nn.Module, head: nn.Linear | None = None):
        super().__init__()
        self.llava = llava
        hidden = self.base_llava.config.text_config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1))
            nn.init.zeros_(head.bias)
        self.head = head

    @property
    def base_llava(self) -> nn.Module:
        return self.llava.get_base_model() if hasattr(self.llava, "get_base_model") else self.llava

    @property
    def config(self) -> Any:
        return self.base_llava.config

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.base_llava.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs=gradient_checkpointing_kwargs
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """`inputs`: the family's image inputs (and Qwen2-VL's token types)."""
        if family_of(self.base_llava).one_d_positions:
            # Positions count real tokens only, so a left-padded row sees the positions a right-padded one
            # does (an M-RoPE model computes its own from the attention mask, as it does at inference).
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        # The inner model gives hidden states without computing vocabulary logits for every token.
        hidden = self.base_llava.model(
            input_ids=input_ids, attention_mask=attention_mask, **inputs
        ).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1)


def bradley_terry_loss(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean of −log σ(s_better − s_worse) over `pairs` (rows of [better, worse] indices into `scores`)."""
    if pairs.numel() == 0:
        return scores.sum() * 0.0
    return -nn.functional.logsigmoid(scores[pairs[:, 0]] - scores[pairs[:, 1]]).mean()


class RewardCard(Settings):
    """What a saved reward model is: its kind, its preprocessing, and where it came from."""

    kind: RewardKind
    preprocess: PreprocessSettings
    base_model: str
    base_fingerprint: str | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


def save_reward_model(model: RewardModel, processor: Any, card: RewardCard, out: str | Path) -> Path:
    """The backbone as a plain transformers checkpoint (LoRA merged), the head, and the card."""
    out = Path(out)
    llava = model.llava.merge_and_unload() if hasattr(model.llava, "merge_and_unload") else model.llava
    save_llava(llava, processor, out / "backbone")
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, out / HEAD_FILE)
    (out / CARD_FILE).write_bytes(orjson.dumps(card.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
    return out


@dataclass
class LoadedRewardModel:
    model: RewardModel
    processor: Any
    card: RewardCard
    path: Path
    fingerprint: str

    @cached_property
    def inputs(self) -> RewardInputs:
        return RewardInputs(self.processor, self.card.preprocess)


def load_reward_model(
    path: str | Path, *, device: str | None = None, dtype: torch.dtype | str | None = None
) -> LoadedRewardModel:
    path = Path(path)
    if not (path / CARD_FILE).is_file():
        raise FileNotFoundError(
            f"{path} has no {CARD_FILE}: not a reward model written by `vialign curate train-rm`"
        )
    card = RewardCard.model_validate_json((path / CARD_FILE).read_bytes())
    llava, processor = load_llava(path / "backbone", dtype=dtype)
    head = nn.Linear(llava.config.text_config.hidden_size, 1)
    head.load_state_dict(load_file(path / HEAD_FILE))
    model = RewardModel(llava, head).eval()
    if device:
        model = model.to(device)
    fingerprint = model_fingerprint(path / "backbone") + ":" + model_fingerprint(path)
    return LoadedRewardModel(model, processor, card, path, fingerprint)
