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
    """How turns are laid out; `joiner` stands between pieces when the whole string is rendered."""

    name: str
    system: str | None
    user_tag: str | None
    assistant_tag: str | None
    keep_question_text: bool = True
    joiner: str = " "


CHAT_FORMATS: dict[str, ChatFormat] = {
    # LLaVA-1.5 conversation template `vicuna_v1`: "{system} USER: {q} ASSISTANT: {a}</s>"
    "vicuna_v1": ChatFormat("vicuna_v1", VICUNA_SYSTEM, "USER:", "ASSISTANT:"),
    # LLaVA projector pretraining `plain`: image tokens, then the caption; no system, no tags.
    "plain": ChatFormat("plain", None, None, None, keep_question_text=False),
    # The tokenizer's own Jinja chat template; its scaffolding is read off a rendering of sentinels.
    "tokenizer": ChatFormat("tokenizer", None, None, None, joiner=""),
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


_EXACT_SPLIT = re.compile(r"(\n+|(?<=[.!?])\s+(?=[A-Z\"'(\[]))")


def exact_user_segments(text: str) -> list[tuple[Kind, str]]:
    """Like `user_segments`, but the segments concatenate back to `text` exactly (separators are kept
    as the prefix of the next segment), for formats whose pieces are joined with nothing."""
    segments: list[tuple[Kind, str]] = []
    for k, chunk in enumerate(text.split(IMAGE_TAG)):
        if k:
            segments.append((Kind.IMAGE, IMAGE_TAG))
        parts = _EXACT_SPLIT.split(chunk)
        carry = ""
        for i, part in enumerate(parts):
            if i % 2:  # a separator
                carry += part
            elif part:
                segments.append((Kind.USER, carry + part))
                carry = ""
        if carry:
            segments.append((Kind.USER, carry))
    return segments


@dataclass(frozen=True)
class TemplateScaffold:
    """The fixed text a chat template puts around messages."""

    head: str  # before the first user message: BOS, system prompt, first user tag
    user_to_assistant: str  # between a user message and the answer
    end: str  # right after an answer, up to and including EOS: trained as the end of the turn
    next_user: str  # after `end`, before the next user message
    tail: str  # after `end` of the last answer
    generation: str  # after the last user message when prompting for an answer


def _cut(text: str, sentinel: str, template: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise ValueError(
            f"the chat template of {template} does not render message content verbatim; use vicuna_v1"
        )
    before, after = text.split(sentinel)
    return before, after


def template_scaffold(tokenizer: PreTrainedTokenizerBase) -> TemplateScaffold:
    """Render sentinel messages once and read the template's own text around them."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; use chat_format vicuna_v1 or plain")
    u1, a1, u2, a2 = (f"\u2063vialign-{name}\u2063" for name in ("u1", "a1", "u2", "a2"))
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    roles = [("user", u1), ("assistant", a1), ("user", u2), ("assistant", a2)]
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in roles], tokenize=False)
    head, rest = _cut(text, u1, name)
    user_to_assistant, rest = _cut(rest, a1, name)
    between, rest = _cut(rest, u2, name)
    second, tail = _cut(rest, a2, name)
    if second != user_to_assistant:
        raise ValueError(f"the chat template of {name} renders later turns differently; use vicuna_v1")
    eos = tokenizer.eos_token or ""
    if eos and eos in between:
        cut = between.index(eos) + len(eos)
    else:  # the template's own end marker (ChatML's <|im_end|>): its first whitespace-delimited word
        stripped = between.lstrip()
        cut = len(between) - len(stripped) + len(stripped.split(None, 1)[0]) if stripped else 0
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": u1}], tokenize=False, add_generation_prompt=True
    )
    return TemplateScaffold(head, user_to_assistant, between[:cut], between[cut:],
                            tail.removeprefix(between[:cut]), _cut(prompt, u1, name)[1])  # fmt: skip


class ChatEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings):
        if settings.chat_format not in CHAT_FORMATS:
            raise ValueError(f"unknown chat format {settings.chat_format!r}; known: {sorted(CHAT_FORMATS)}")
        if settings.mode not in TRAINED:
            raise ValueError(f"unknown label mode {settings.mode!r}; known: {sorted(TRAINED)}")
        self.tokenizer, self.settings = tokenizer, settings
        self.format = CHAT_FORMATS[settings.chat_format]
        image_id = tokenizer.convert_tokens_to_ids(IMAGE_TAG)
        # A text-only LLM (the inner LLM on its own) may lack <image>; only samples with images need it.
        self.image_token_id = None if image_id in (None, tokenizer.unk_token_id) else image_id
        self.eos = tokenizer.eos_token
        self.scaffold = template_scaffold(tokenizer) if self.format.name == "tokenizer" else None
        bos_text = tokenizer.bos_token or ""
        self.add_bos = (
            settings.add_bos
            and tokenizer.bos_token_id is not None
            and not (self.scaffold and bos_text and self.scaffold.head.startswith(bos_text))
        )
        self._cache: dict[str, list[int]] = {}
        self.straddling = 0  # tokens spanning two piece kinds (template formats only)

    def ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def question_pieces(self, question: str) -> list[tuple[Kind, str]]:
        segments = exact_user_segments(question) if self.scaffold else user_segments(question)
        pieces = []
        for kind, text in segments:
            if kind == Kind.USER and not self.format.keep_question_text:
                continue
            if kind == Kind.USER and text.strip() in self.settings.templates:
                kind = Kind.TEMPLATE
            pieces.append((kind, text))
        return pieces

    def turn_pieces(
        self, question: str, answer: str | None, first: bool = True, last: bool = True
    ) -> list[tuple[Kind, str]]:
        if self.scaffold:
            return self.template_turn_pieces(question, answer, first, last)
        fmt = self.format
        pieces: list[tuple[Kind, str]] = [(Kind.ROLE, fmt.user_tag)] if fmt.user_tag else []
        pieces += self.question_pieces(question)
        if fmt.assistant_tag:
            pieces.append((Kind.ROLE, fmt.assistant_tag))
        if answer is not None:
            pieces += [(Kind.ASSISTANT, answer), (Kind.END, self.eos)]
        return pieces

    def template_turn_pieces(
        self, question: str, answer: str | None, first: bool, last: bool
    ) -> list[tuple[Kind, str]]:
        sc = self.scaffold
        pieces = [] if first else [(Kind.ROLE, sc.next_user)]
        pieces += self.question_pieces(question)
        if answer is None:
            return [*pieces, (Kind.ROLE, sc.generation)]
        pieces += [(Kind.ROLE, sc.user_to_assistant), (Kind.ASSISTANT, answer), (Kind.END, sc.end)]
        return pieces + ([(Kind.ROLE, sc.tail)] if last else [])

    def head_pieces(self) -> list[tuple[Kind, str]]:
        if self.scaffold:
            return [(Kind.SYSTEM, self.scaffold.head)]
        return [(Kind.SYSTEM, self.format.system)] if self.format.system else []

    def pieces_to_ids(self, pieces: Sequence[tuple[Kind, str]]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        kinds: list[int] = []
        for kind, text in pieces:
            if not text:
                continue
            piece = (
                [self.image_token_id] * self.settings.image_tokens if kind == Kind.IMAGE else self.ids(text)
            )
            ids += piece
            kinds += [kind] * len(piece)
        return ids, kinds

    def verify(self, sample_id: str, pieces: Sequence[tuple[Kind, str]], ids: list[int]) -> None:
        rendered = self.format.joiner.join(text for _, text in pieces if text)
        whole = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
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

    def tokenize_pieces(
        self, sample_id: str, pieces: Sequence[tuple[Kind, str]]
    ) -> tuple[list[int], list[int]]:
        """Template formats: the rendered string tokenized once; piecewise formats: verified concatenation."""
        if self.scaffold:
            return self.ids_by_offsets(pieces)
        ids, kinds = self.pieces_to_ids(pieces)
        if self.settings.verify:
            self.verify(sample_id, pieces, ids)
        return ids, kinds

    def ids_by_offsets(self, pieces: Sequence[tuple[Kind, str]]) -> tuple[list[int], list[int]]:
        """Tokenize the exact rendering once; each token takes the kind of the piece its characters
        come from (piece boundaries are known, never searched for). A token spanning two kinds gets
        the first untrained one, so no token outside the trained text is ever trained."""
        text, char_kind = "", []
        for kind, piece in pieces:
            text += piece
            char_kind += [kind] * len(piece)
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        trained = TRAINED[self.settings.mode]
        ids: list[int] = []
        kinds: list[int] = []
        for token, (a, b) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
            # Whitespace folded into a token ("▁word") belongs to the word; a token of whitespace only
            # (a bare "▁" word-start marker) belongs to the word that follows it.
            visible = [char_kind[c] for c in range(a, b) if not text[c].isspace()]
            if not visible:
                after = next((c for c in range(b, len(text)) if not text[c].isspace()), None)
                visible = [char_kind[after]] if after is not None else char_kind[a : a + 1]
            spanned = list(dict.fromkeys(visible))
            kind = next((k for k in spanned if k not in trained), spanned[0]) if spanned else Kind.ROLE
            self.straddling += len(spanned) > 1
            repeat = self.settings.image_tokens if token == self.image_token_id else 1
            ids += [token] * repeat
            kinds += [Kind.IMAGE if token == self.image_token_id else kind] * repeat
        return ids, kinds

    def encode(self, sample: Sample) -> Encoded:
        """Encode one sample; drops whole trailing turns to fit max_length, never part of an image span."""
        turns = sample.conversations
        pairs = [(turns[i].value, turns[i + 1].value if i + 1 < len(turns) and turns[i + 1].role == GPT else None)
                 for i in range(0, len(turns), 2)]  # fmt: skip
        n_tags = sum(t.value.count(IMAGE_TAG) for t in turns)
        if n_tags != len(sample.images):
            raise EncodingError(sample.id, f"{n_tags} <image> tags for {len(sample.images)} image(s)")
        if n_tags and self.image_token_id is None:
            raise EncodingError(
                sample.id, f"the tokenizer has no {IMAGE_TAG} token; this model cannot take images"
            )
        bos = [self.tokenizer.bos_token_id] if self.add_bos else []
        for kept in range(len(pairs), 0, -1):
            pieces = list(self.head_pieces())
            for k, (question, answer) in enumerate(pairs[:kept]):
                pieces += self.turn_pieces(question, answer, first=k == 0, last=k == kept - 1)
            ids, kinds = self.tokenize_pieces(sample.id, pieces)
            if len(bos) + len(ids) <= self.settings.max_length:
                break
        else:
            raise EncodingError(
                sample.id, f"the first turn alone is longer than max_length {self.settings.max_length}"
            )
        ids, kinds = bos + ids, [Kind.BOS] * len(bos) + kinds
        n_images = sum(1 for k, _ in pieces if k == Kind.IMAGE)
        if ids.count(self.image_token_id) != n_images * self.settings.image_tokens:
            raise EncodingError(sample.id, "image token count differs from images × tokens per image")
        trained = TRAINED[self.settings.mode]
        labels = [t if k in trained else IGNORE_INDEX for t, k in zip(ids, kinds, strict=True)]
        if all(label == IGNORE_INDEX for label in labels):
            raise EncodingError(sample.id, f"no token is trained in mode {self.settings.mode!r}")
        return Encoded(ids, labels, kinds, n_images, dropped_turns=len(pairs) - kept)


def encode_prompt(encoder: ChatEncoder, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Ids of a generation prompt: earlier (question, answer) turns, then the question, then the
    assistant tag, encoded exactly as in training."""
    bos = [encoder.tokenizer.bos_token_id] if encoder.add_bos else []
    pieces = list(encoder.head_pieces())
    for k, (q, a) in enumerate(history):
        pieces += encoder.turn_pieces(q, a, first=k == 0, last=False)
    pieces += encoder.turn_pieces(question, None, first=not history)
    if IMAGE_TAG in question + "".join(q for q, _ in history) and encoder.image_token_id is None:
        raise ValueError(f"the tokenizer has no {IMAGE_TAG} token; this model cannot take images")
    ids, _ = encoder.ids_by_offsets(pieces) if encoder.scaffold else encoder.pieces_to_ids(pieces)
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
