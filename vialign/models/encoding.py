"""Chat encoding with label masks built from token ids, piece by piece (METHODS.md section 2, trap 1).

A conversation is cut into pieces whose role is known before tokenizing: BOS, system prompt, role tags,
user sentences, template sentences, image spans, assistant text and end-of-turn tokens. Each piece is
tokenized on its own and the ids are concatenated, so every token's kind is exact. The concatenation is
checked against tokenizing the rendered string whole; a mismatch raises `EncodingError`, never a
silently blank label row.

Label modes:
- `response` (classic VIT): assistant text and its end-of-turn token;
- `lit` (learning to instruct): also the user's own text, never system, role tags, images or templates;
- `all`: every token (the comparison baseline some trainers use).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Literal

from rich.text import Text
from transformers import PreTrainedTokenizerBase

from vialign.models.tokenizer import VICUNA_SYSTEM
from vialign.records import GPT, IMAGE_TAG, Sample

IGNORE_INDEX = -100
LabelMode = Literal["response", "lit", "all"]


class Kind(IntEnum):
    BOS = 0
    SYSTEM = 1
    ROLE = 2
    IMAGE = 3
    TEMPLATE = 4
    USER = 5
    ASSISTANT = 6
    END = 7


TRAINED: dict[str, frozenset[Kind]] = {
    "response": frozenset({Kind.ASSISTANT, Kind.END}),
    "lit": frozenset({Kind.ASSISTANT, Kind.END, Kind.USER}),
    "all": frozenset(Kind),
}


@dataclass(frozen=True)
class ChatFormat:
    """How turns are laid out. Pieces are joined by single spaces when the whole string is rendered."""

    name: str
    system: str | None
    user_tag: str | None
    assistant_tag: str | None
    keep_question_text: bool = True


CHAT_FORMATS: dict[str, ChatFormat] = {
    # LLaVA-1.5 conversation template `vicuna_v1`: "{system} USER: {q} ASSISTANT: {a}</s>"
    "vicuna_v1": ChatFormat("vicuna_v1", VICUNA_SYSTEM, "USER:", "ASSISTANT:"),
    # LLaVA projector pretraining `plain`: image tokens, then the caption; no system, no tags.
    "plain": ChatFormat("plain", None, None, None, keep_question_text=False),
}


class EncodingError(ValueError):
    def __init__(self, sample_id: str, reason: str):
        self.sample_id, self.reason = sample_id, reason
        super().__init__(f"sample {sample_id!r}: {reason}")


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    kinds: list[int]
    n_images: int
    dropped_turns: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EncoderSettings:
    chat_format: str = "vicuna_v1"
    mode: LabelMode = "lit"
    image_tokens: int = 576
    max_length: int = 2048
    templates: frozenset[str] = field(default_factory=frozenset)
    add_bos: bool = True
    verify: bool = True


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


def sentences(text: str) -> list[str]:
    """Split user text into lines, then sentences; image tags are removed. Used to find templates."""
    out = []
    for line in text.replace(IMAGE_TAG, "\n").split("\n"):
        out += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return out


def user_segments(text: str) -> list[tuple[Kind, str]]:
    """User text → (IMAGE | USER, segment) in order; sentences stay whole so templates can be found."""
    segments: list[tuple[Kind, str]] = []
    for k, chunk in enumerate(text.split(IMAGE_TAG)):
        if k:
            segments.append((Kind.IMAGE, IMAGE_TAG))
        segments += [(Kind.USER, s) for s in sentences(chunk)]
    return segments


class ChatEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings):
        if settings.chat_format not in CHAT_FORMATS:
            raise ValueError(f"unknown chat format {settings.chat_format!r}; known: {sorted(CHAT_FORMATS)}")
        if settings.mode not in TRAINED:
            raise ValueError(f"unknown label mode {settings.mode!r}; known: {sorted(TRAINED)}")
        self.tokenizer, self.settings = tokenizer, settings
        self.format = CHAT_FORMATS[settings.chat_format]
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TAG)
        if self.image_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {IMAGE_TAG} token; add it as a special token")
        self.eos = tokenizer.eos_token
        self._cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def turn_pieces(self, question: str, answer: str | None) -> list[tuple[Kind, str]]:
        fmt = self.format
        pieces: list[tuple[Kind, str]] = []
        if fmt.user_tag:
            pieces.append((Kind.ROLE, fmt.user_tag))
        for kind, text in user_segments(question):
            if kind == Kind.USER and (not fmt.keep_question_text):
                continue
            if kind == Kind.USER and text in self.settings.templates:
                kind = Kind.TEMPLATE
            pieces.append((kind, text))
        if fmt.assistant_tag:
            pieces.append((Kind.ROLE, fmt.assistant_tag))
        if answer is not None:
            pieces += [(Kind.ASSISTANT, answer), (Kind.END, self.eos)]
        return pieces

    def head_pieces(self) -> list[tuple[Kind, str]]:
        return [(Kind.SYSTEM, self.format.system)] if self.format.system else []

    def pieces_to_ids(self, pieces: Sequence[tuple[Kind, str]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        kinds: list[int] = []
        for kind, text in pieces:
            piece = (
                [self.image_token_id] * self.settings.image_tokens if kind == Kind.IMAGE else self.ids(text)
            )
            ids += piece
            kinds += [kind] * len(piece)
        return ids, kinds

    def verify(self, sample_id: str, pieces: Sequence[tuple[Kind, str]], ids: list[int]) -> None:
        whole = self.tokenizer(" ".join(text for _, text in pieces), add_special_tokens=False)["input_ids"]
        expanded = []
        for token in whole:
            expanded += [token] * (self.settings.image_tokens if token == self.image_token_id else 1)
        if expanded != ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(expanded, ids, strict=False)) if a != b),
                min(len(expanded), len(ids)),
            )
            raise EncodingError(
                sample_id, f"piecewise tokenization differs from whole tokenization at token {at}"
            )

    def encode(self, sample: Sample) -> Encoded:
        """Encode one sample; drops whole trailing turns to fit max_length, never part of an image span."""
        turns = sample.conversations
        pairs = [(turns[i].value, turns[i + 1].value if i + 1 < len(turns) and turns[i + 1].role == GPT else None)
                 for i in range(0, len(turns), 2)]  # fmt: skip
        n_tags = sum(t.value.count(IMAGE_TAG) for t in turns)
        if n_tags != len(sample.images):
            raise EncodingError(sample.id, f"{n_tags} <image> tags for {len(sample.images)} image(s)")
        bos = (
            [self.tokenizer.bos_token_id]
            if self.settings.add_bos and self.tokenizer.bos_token_id is not None
            else []
        )
        head = self.head_pieces()
        ids, kinds = self.pieces_to_ids(head)
        ids, kinds = bos + ids, [Kind.BOS] * len(bos) + kinds
        all_pieces = list(head)
        kept = 0
        for question, answer in pairs:
            pieces = self.turn_pieces(question, answer)
            turn_ids, turn_kinds = self.pieces_to_ids(pieces)
            if len(ids) + len(turn_ids) > self.settings.max_length:
                break
            ids, kinds = ids + turn_ids, kinds + turn_kinds
            all_pieces += pieces
            kept += 1
        if kept == 0:
            raise EncodingError(
                sample.id, f"the first turn alone is longer than max_length {self.settings.max_length}"
            )
        if self.settings.verify:
            self.verify(sample.id, all_pieces, ids[len(bos) :])
        n_images = sum(1 for k, _ in all_pieces if k == Kind.IMAGE)
        if ids.count(self.image_token_id) != n_images * self.settings.image_tokens:
            raise EncodingError(sample.id, "image token count differs from images × tokens per image")
        trained = TRAINED[self.settings.mode]
        labels = [t if k in trained else IGNORE_INDEX for t, k in zip(ids, kinds, strict=True)]
        if all(label == IGNORE_INDEX for label in labels):
            raise EncodingError(sample.id, f"no token is trained in mode {self.settings.mode!r}")
        return Encoded(ids, labels, kinds, n_images, dropped_turns=len(pairs) - kept)


def encode_prompt(encoder: ChatEncoder, question: str) -> list[int]:
    """Ids of a one-question generation prompt, ending with the assistant tag."""
    bos = (
        [encoder.tokenizer.bos_token_id]
        if encoder.settings.add_bos and encoder.tokenizer.bos_token_id is not None
        else []
    )
    ids, _ = encoder.pieces_to_ids([*encoder.head_pieces(), *encoder.turn_pieces(question, None)])
    return bos + ids


@dataclass
class EncodeReport:
    encoded: int = 0
    truncated: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)


def encode_all(
    encoder: ChatEncoder, samples: Iterable[Sample]
) -> tuple[list[tuple[Sample, Encoded]], EncodeReport]:
    """Encode every sample; a sample that cannot be encoded is quarantined with its reason and counted."""
    report = EncodeReport()
    out = []
    for sample in samples:
        try:
            encoded = encoder.encode(sample)
        except EncodingError as exc:
            report.quarantined[sample.id] = exc.reason
            continue
        report.encoded += 1
        report.truncated += encoded.dropped_turns > 0
        out.append((sample, encoded))
    return out, report


def render_labels(tokenizer: PreTrainedTokenizerBase, encoded: Encoded) -> Text:
    """Decoded tokens; trained ones green on dark, others dim; an image span collapsed to one mark."""
    text = Text()
    i = 0
    while i < len(encoded.input_ids):
        if encoded.kinds[i] == Kind.IMAGE:
            j = i
            while j < len(encoded.kinds) and encoded.kinds[j] == Kind.IMAGE:
                j += 1
            text.append(
                f"<image×{j - i}>",
                style="bold magenta" if encoded.labels[i] != IGNORE_INDEX else "magenta dim",
            )
            i = j
            continue
        piece = tokenizer.convert_ids_to_tokens(encoded.input_ids[i]).replace("▁", " ")
        trained = encoded.labels[i] != IGNORE_INDEX
        text.append(piece, style="bold green on grey15" if trained else "dim")
        i += 1
    return text
