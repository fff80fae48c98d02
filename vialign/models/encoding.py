"""Chat encoding with label masks (METHODS.md section 2, traps 1 and 11).

A conversation is rendered once to the exact string the model sees, as pieces whose role is known
before tokenizing: BOS, system prompt, role tags, user text, template sentences, image tags, answers and
end-of-turn. The string is tokenized once with offsets, and each token takes the role of the characters
it comes from, so the ids are those of the whole string on any tokenizer (Llama-2's SentencePiece, whose
`▁` and prefix spaces make pieces tokenized apart differ from the whole; byte-level BPE; the toy one),
equal to what inference feeds the model, and every token's role is known. A token that spans an
untrained and a trained piece is never trained.

Label modes:
- `response` (classic VIT): assistant text and its end-of-turn;
- `lit` (learning to instruct): also the user's own text, never system, role tags, images or templates;
- `all`: every token (the comparison baseline some trainers use).
"""

from __future__ import annotations

import re
import typing
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import chain
from typing import Any, Protocol

import numpy as np
from rich.text import Text
from transformers import PreTrainedTokenizerBase

from vialign.choices import ChatFormatName, LabelMode
from vialign.models.tokenizer import VICUNA_SYSTEM
from vialign.records import GPT, IMAGE_TAG, Sample

IGNORE_INDEX = -100


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


CHAT_FORMATS = typing.get_args(ChatFormatName)
# Changes whenever the same settings would encode differently: caches of encoded data key on it.
ENCODER_VERSION = "rendered-once-3"


Spans = Sequence[Sequence[int]]


class ImageSpans(Protocol):
    """Each of a sample's images as the ids its image token becomes, where a family's depend on the
    image (its size: LLaVA-NeXT's AnyRes tiles, Qwen2-VL's native resolution, Idefics3's crops)."""

    def __call__(self, sample: Sample) -> list[list[int]]: ...

    def key(self) -> dict[str, Any]:
        """What the spans depend on besides the images (part of an encoding's cache key)."""
        ...


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
    # A chat template that writes no end-of-turn token after an answer (llava-hf's) would train a model
    # that never stops; the tokenizer's EOS is written there instead, as LLaVA-1.5 was trained.
    eos_after_answer: bool = True
    # LLaVA-1.5's `preprocess_multimodal` takes a turn's <image> tags out and puts them first, each
    # followed by "\n", which is also where every inference prompt (llava-hf, lmms-eval, vialign) puts
    # them; an image-last record trained as written would teach a layout the model is never asked in.
    image_first: bool = True
    # How a record's <image> tag is written for the model's family: `image_text` (Qwen2-VL's
    # <|vision_start|><|image_pad|><|vision_end|>), of which `image_token` is the one the processor
    # expands, and `image_separator` after each image a turn starts with (LLaVA's newline; none for Qwen)
    image_token: str = IMAGE_TAG
    image_text: str = IMAGE_TAG
    image_separator: str = "\n"
    # a turn that opens with an image writes its role tag without the tag's trailing space (SmolVLM)
    image_glued_to_role: bool = False


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


def sentences(text: str) -> list[str]:
    """Split user text into lines, then sentences; image tags are removed. Used to find templates."""
    out = []
    for line in text.replace(IMAGE_TAG, "\n").split("\n"):
        out += [s.strip() for s in _SENTENCE_END.split(line) if s.strip()]
    return out


def images_first(text: str, separator: str = "\n") -> str:
    """A user turn as LLaVA-1.5 trains it: its image tags first, each followed by a newline (or the
    family's separator)."""
    n = text.count(IMAGE_TAG)
    return f"{IMAGE_TAG}{separator}" * n + text.replace(IMAGE_TAG, "").strip() if n else text


_EXACT_SPLIT = re.compile(r"(\n+|(?<=[.!?])\s+(?=[A-Z\"'(\[]))")


def user_segments(text: str) -> list[tuple[Kind, str]]:
    """User text → (IMAGE | USER, segment) in order, concatenating back to `text` exactly: separators
    are kept as the prefix of the next segment, sentences stay whole so templates can be found."""
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
class Scaffold:
    """The fixed text a chat format writes around messages. An answered turn renders as
    `user_tag` (or `next_user_tag`), the user text, `assistant_tag`, `answer_prefix` + answer, `end`;
    `tail` follows the last turn. `assistant_tag` is exactly what a generation prompt ends with, so what
    the model must write after it (`answer_prefix`, e.g. Vicuna's space) is trained with the answer."""

    bos: str  # BOS text the format writes itself (else the encoder adds the BOS id)
    system: str
    user_tag: str
    next_user_tag: str
    assistant_tag: str
    answer_prefix: str
    end: str
    tail: str = ""
    keep_question_text: bool = True


def vicuna_v1_scaffold(tokenizer: PreTrainedTokenizerBase) -> Scaffold:
    """LLaVA-1.5's `conv_vicuna_v1`: `{system} USER: {q} ASSISTANT: {a}</s>USER: {q} ASSISTANT:`."""
    eos = tokenizer.eos_token or ""
    return Scaffold("", VICUNA_SYSTEM, " USER: ", "USER: ", " ASSISTANT:", " ", eos)


def plain_scaffold(tokenizer: PreTrainedTokenizerBase) -> Scaffold:
    """LLaVA's projector pretraining `plain`: image tokens, then the caption (ended by EOS here)."""
    return Scaffold("", "", "", "", "", "", tokenizer.eos_token or "", keep_question_text=False)


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :]


def _render_sentinels(tokenizer: PreTrainedTokenizerBase, turns: list[tuple[str, str]], **kwargs) -> str:
    """Render sentinel messages with string content, else with typed text parts (llava-hf's templates
    take a list of `{"type": ...}` parts); the first rendering that shows every sentinel once wins."""
    sentinels = [content for _, content in turns]
    for typed in (False, True):
        messages = [
            {"role": role, "content": [{"type": "text", "text": c}] if typed else c} for role, c in turns
        ]
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception:  # a template written for the other content shape may raise anything
            continue
        if all(text.count(s) == 1 for s in sentinels):
            return text
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    raise ValueError(f"the chat template of {name} does not render message content verbatim; use vicuna_v1")


def _special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return [t.content for t in decoder.values() if getattr(t, "special", False)]


def template_scaffold(tokenizer: PreTrainedTokenizerBase, eos_after_answer: bool = True) -> Scaffold:
    """Render sentinel messages once and read the template's own text around them."""
    if not tokenizer.chat_template:
        raise ValueError("the tokenizer has no chat template; use chat_format vicuna_v1 or plain")
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    u1, a1, u2, a2 = (f"\u2063vialign-{name}\u2063" for name in ("u1", "a1", "u2", "a2"))
    text = _render_sentinels(tokenizer, [("user", u1), ("assistant", a1), ("user", u2), ("assistant", a2)])
    head, rest = text.split(u1)
    user_to_assistant, rest = rest.split(a1)
    between, rest = rest.split(u2)
    second, tail = rest.split(a2)
    if second != user_to_assistant:
        raise ValueError(f"the chat template of {name} renders later turns differently; use vicuna_v1")
    generation = _render_sentinels(tokenizer, [("user", u1)], add_generation_prompt=True).split(u1)[1]
    if not user_to_assistant.startswith(generation):
        raise ValueError(
            f"the generation prompt of {name}'s chat template ({generation!r}) does not begin "
            f"its answered turns ({user_to_assistant!r}); training would not match inference"
        )
    end, next_user = _end_of_turn(tokenizer, head, between)
    specials = _special_texts(tokenizer)
    eos = tokenizer.eos_token or ""
    template_end = end
    if eos_after_answer and eos and not any(s in end for s in specials):
        end = eos + end
    user_tag = _common_suffix(head, next_user)
    before_user = head[: len(head) - len(user_tag)]
    bos = tokenizer.bos_token or ""
    bos = bos if bos and before_user.startswith(bos) else ""
    return Scaffold(
        bos,
        before_user[len(bos) :],
        user_tag,
        next_user,
        generation,
        user_to_assistant[len(generation) :],
        end,
        tail.removeprefix(template_end),
    )


def _end_of_turn(tokenizer: PreTrainedTokenizerBase, head: str, between: str) -> tuple[str, str]:
    """Split the text between an answer and the next user message into (end-of-turn, next user tag):
    up to EOS when the template writes it there; else its leading special token (Llama-3's
    <|eot_id|>); else whatever precedes the user tag, which is the text `head` ends with too."""
    eos = tokenizer.eos_token or ""
    if eos and eos in between:
        cut = between.index(eos) + len(eos)
        return between[:cut], between[cut:]
    lead = next((s for s in _special_texts(tokenizer) if between.startswith(s)), None)
    if lead:
        return lead, between[len(lead) :]
    next_user = _common_suffix(head, between)
    return between[: len(between) - len(next_user)], next_user


def scaffold_for(tokenizer: PreTrainedTokenizerBase, settings: EncoderSettings) -> Scaffold:
    if settings.chat_format == "vicuna_v1":
        return vicuna_v1_scaffold(tokenizer)
    if settings.chat_format == "plain":
        return plain_scaffold(tokenizer)
    return template_scaffold(tokenizer, settings.eos_after_answer)


Pieces = list[tuple[Kind, str]]


class ChatEncoder:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        settings: EncoderSettings,
        image_spans: ImageSpans | None = None,
    ):
        """`image_spans`: each of a sample's images as ids, for a family whose image tokens depend on the
        image (`families.base.ImageSpansOf`); without it every image is `image_tokens` image tokens."""
        if settings.chat_format not in CHAT_FORMATS:
            raise ValueError(f"unknown chat format {settings.chat_format!r}; known: {sorted(CHAT_FORMATS)}")
        if settings.mode not in TRAINED:
            raise ValueError(f"unknown label mode {settings.mode!r}; known: {sorted(TRAINED)}")
        self.tokenizer, self.settings, self.image_spans = tokenizer, settings, image_spans
        image_id = tokenizer.convert_tokens_to_ids(settings.image_token)
        # A text-only LLM (the inner LLM on its own) may lack <image>; only samples with images need it.
        self.image_token_id = None if image_id in (None, tokenizer.unk_token_id) else image_id
        self.scaffold = scaffold_for(tokenizer, settings)
        self.add_bos = settings.add_bos and tokenizer.bos_token_id is not None and not self.scaffold.bos
        self._cache: dict[str, list[int]] = {}
        self.straddling = 0  # tokens spanning two piece kinds
        # Where the tokenizer would tokenize a generation prompt differently inside the whole string,
        # every answer is tokenized apart from what precedes it, as the model meets it at inference —
        # unless the tokenizer writes a word-start marker before every text it is given (SentencePiece),
        # when apart would add a marker inference never sees; then the whole string stays, with a warning.
        self.answers_apart = False
        if not self.prompt_is_stable():
            name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
            self.answers_apart = not self.marks_word_starts()
            remedy = (
                "answers are tokenized apart from their prompts"
                if self.answers_apart
                else "training keeps the whole string; prefer a template whose generation prompt does not end in whitespace"
            )
            warnings.warn(
                f"{name} tokenizes the generation prompt differently when an answer follows; {remedy}",
                stacklevel=2,
            )

    def ids(self, text: str) -> list[int]:
        """Ids of a text on its own (no special tokens), cached."""
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def question_pieces(self, question: str) -> Pieces:
        pieces = []
        for kind, text in user_segments(question):
            if kind == Kind.USER and not self.scaffold.keep_question_text:
                continue
            if kind == Kind.USER and text.strip() in self.settings.templates:
                kind = Kind.TEMPLATE
            pieces.append((kind, self.settings.image_text if kind == Kind.IMAGE else text))
        return pieces

    def render(self, pairs: Sequence[tuple[str, str | None]]) -> Pieces:
        """The exact string of (question, answer) turns as pieces; a last answer of None ends the
        rendering with the generation prompt."""
        sc = self.scaffold
        pieces: Pieces = [(Kind.BOS, sc.bos), (Kind.SYSTEM, sc.system)]
        for k, (question, answer) in enumerate(pairs):
            tag, question_pieces = sc.user_tag if k == 0 else sc.next_user_tag, self.question_pieces(question)
            if self.settings.image_glued_to_role and question_pieces and question_pieces[0][0] == Kind.IMAGE:
                tag = tag.rstrip(" ")
            pieces += [(Kind.ROLE, tag), *question_pieces]
            pieces.append((Kind.ROLE, sc.assistant_tag))
            if answer is None:
                return pieces
            pieces += [(Kind.ASSISTANT, sc.answer_prefix + answer), (Kind.END, sc.end)]
        return [*pieces, (Kind.ROLE, sc.tail)]

    def tokenize(
        self, pieces: Sequence[tuple[Kind, str]], spans: Spans | None = None
    ) -> tuple[list[int], list[int]]:
        """Tokenize the rendering once (or once per segment, see `answers_apart`); each token takes the
        kind of the characters it comes from, and the k-th image token becomes `spans[k]` (default:
        `image_tokens` image tokens)."""
        text, char_kind, cuts = "", [], [0]
        for k, (kind, piece) in enumerate(pieces):
            text += piece
            char_kind += [kind] * len(piece)
            next_kind = pieces[k + 1][0] if k + 1 < len(pieces) else None
            if self.answers_apart and kind == Kind.ROLE and next_kind == Kind.ASSISTANT:
                cuts.append(len(text))
        ids: list[int] = [self.tokenizer.bos_token_id] if self.add_bos else []
        kinds: list[int] = [Kind.BOS] * len(ids)
        images = iter(spans or ())
        for start, stop in zip(cuts, [*cuts[1:], len(text)], strict=True):
            self._tokenize_segment(text, char_kind, start, stop, ids, kinds, images)
        return ids, kinds

    def _tokenize_segment(
        self,
        text: str,
        char_kind: list[Kind],
        start: int,
        stop: int,
        ids: list[int],
        kinds: list[int],
        spans: Iterator[Sequence[int]],
    ) -> None:
        encoding = self.tokenizer(text[start:stop], add_special_tokens=False, return_offsets_mapping=True)
        trained = TRAINED[self.settings.mode]
        for token, (a, b) in zip(encoding["input_ids"], encoding["offset_mapping"], strict=True):
            if token == self.image_token_id:
                span = next(spans, None)
                span = [token] * self.settings.image_tokens if span is None else list(span)
                ids += span
                kinds += [Kind.IMAGE] * len(span)
                continue
            spanned = token_kinds(text, char_kind, start + a, start + b)
            self.straddling += len(spanned) > 1
            ids.append(token)
            kinds.append(next((k for k in spanned if k not in trained), spanned[0]))

    def marks_word_starts(self) -> bool:
        """Whether the tokenizer writes SentencePiece's word-start marker before any text it is given."""
        tokens = self.tokenizer.convert_ids_to_tokens(self.ids("x"))
        return bool(tokens) and tokens[0].startswith("▁")

    def prompt_is_stable(self) -> bool:
        """Whether a generation prompt tokenizes as the start of the same text followed by an answer.
        SentencePiece and Llama-3-style tokenizers keep it; a byte-level BPE whose regex splits a
        trailing "\n\n" by what follows does not, with a template whose prompt ends in it."""
        for answer in ("Hello there.", "1", "[0.1, 0.2]"):
            prompt, _ = self.tokenize(self.render([("Hi", None)]))
            whole, _ = self.tokenize(self.render([("Hi", answer)]))
            if whole[: len(prompt)] != prompt:
                return False
        return True

    def encode(self, sample: Sample) -> Encoded:
        """Encode one sample; drops whole trailing turns to fit max_length, never part of an image span."""
        pairs = self.conversation_pairs(sample)
        spans = self.spans_of(sample)
        for kept in range(len(pairs), 0, -1):
            pieces = self.render(pairs[:kept])
            ids, kinds = self.tokenize(pieces, spans)
            if len(ids) <= self.settings.max_length:
                break
        else:
            raise EncodingError(
                sample.id, f"the first turn alone is longer than max_length {self.settings.max_length}"
            )
        trained = TRAINED[self.settings.mode]
        labels = [t if k in trained else IGNORE_INDEX for t, k in zip(ids, kinds, strict=True)]
        encoded = Encoded(ids, labels, kinds, 0, dropped_turns=len(pairs) - kept)
        return self.checked(sample, pieces, encoded, spans)

    def conversation_pairs(self, sample: Sample) -> list[tuple[str, str | None]]:
        """The sample's (question, answer) turns, refusing image tags the encoder cannot place."""
        turns = sample.conversations
        pairs = [
            (
                self.placed(turns[i].value),
                turns[i + 1].value if i + 1 < len(turns) and turns[i + 1].role == GPT else None,
            )
            for i in range(0, len(turns), 2)
        ]
        n_tags = sum(t.value.count(IMAGE_TAG) for t in turns)
        if n_tags != len(sample.images):
            raise EncodingError(sample.id, f"{n_tags} <image> tags for {len(sample.images)} image(s)")
        if n_tags and self.image_token_id is None:
            raise EncodingError(
                sample.id, f"the tokenizer has no {IMAGE_TAG} token; this model cannot take images"
            )
        return pairs

    def spans_of(self, sample: Sample) -> list[list[int]] | None:
        """Each image's ids when the family's depend on the image, else None (`image_tokens` each)."""
        if self.image_spans is None:
            return None
        try:
            return self.image_spans(sample)
        except (OSError, ValueError) as exc:
            raise EncodingError(sample.id, f"cannot size its image tokens: {exc}") from exc

    def image_tokens_of(self, n_images: int, spans: Spans | None) -> int:
        """Image tokens the first `n_images` images make."""
        if spans is None:
            return n_images * self.settings.image_tokens
        return sum(list(span).count(self.image_token_id) for span in spans[:n_images])

    def placed(self, question: str) -> str:
        """A user turn with its images where training puts them (first, with the family's separator)."""
        return (
            images_first(question, self.settings.image_separator) if self.settings.image_first else question
        )

    def checked(
        self, sample: Sample, pieces: Pieces, encoded: Encoded, spans: Spans | None = None
    ) -> Encoded:
        """The encoding with its image count set, refused when image spans or trained tokens are wrong."""
        encoded.n_images = sum(1 for k, _ in pieces if k == Kind.IMAGE)
        if encoded.input_ids.count(self.image_token_id) != self.image_tokens_of(encoded.n_images, spans):
            raise EncodingError(sample.id, "image token count differs from images × tokens per image")
        if all(label == IGNORE_INDEX for label in encoded.labels):
            raise EncodingError(sample.id, f"no token is trained in mode {self.settings.mode!r}")
        return encoded

    def encode_many(self, samples: Sequence[Sample]) -> list[Encoded | EncodingError]:
        """`encode` of each sample, or the error it raises, through the batched path."""
        return [r if isinstance(r, EncodingError) else r.to_encoded() for r in self.encode_arrays(samples)]

    def encode_arrays(
        self, samples: Sequence[Sample], chunk: int = 256
    ) -> list[EncodedArrays | EncodingError]:
        """`encode` of each sample as numpy arrays, or the error it raises. Renderings are tokenized
        `chunk` at a time in batch calls of the fast tokenizer (Rust, in threads, overlapping the
        Python work on the previous chunk) and roles are assigned per token in numpy. Samples longer
        than max_length (turns to drop), tokenizers without a fast backend and encoders that tokenize
        answers apart take the per-sample path."""
        backend = batch_backend(self.tokenizer)
        if backend is None or self.answers_apart:
            return [self._arrays_or_error(sample) for sample in samples]
        results: list[EncodedArrays | EncodingError] = []
        with ThreadPoolExecutor(max_workers=1) as tokenizing:
            pending = None
            for start in range(0, len(samples) + chunk, chunk):
                rendered = self._render_many(samples[start : start + chunk])
                texts = [r.text for r in rendered if r.text is not None]
                submitted = (
                    rendered,
                    tokenizing.submit(backend.encode_batch, texts, add_special_tokens=False),
                )
                if pending is not None:
                    results += self._finish_many(*pending)
                pending = submitted
        return results

    def _render_many(self, samples: Sequence[Sample]) -> list[Rendered]:
        rendered: list[Rendered] = []
        for sample in samples:
            try:
                pieces = self.render(self.conversation_pairs(sample))
                spans = self.spans_of(sample)
            except EncodingError as exc:
                rendered.append(Rendered(sample, exc))
                continue
            rendered.append(Rendered(sample, pieces, "".join(piece for _, piece in pieces), spans))
        return rendered

    def _finish_many(
        self, rendered: list[Rendered], tokenized: Future
    ) -> list[EncodedArrays | EncodingError]:
        ok = [r for r in rendered if r.text is not None]
        encoded = iter(ChunkRoles(self, ok, tokenized.result()).samples())
        out: list[EncodedArrays | EncodingError] = []
        for r in rendered:
            if r.text is None:
                out.append(r.pieces)  # type: ignore[arg-type]  # the error rendering raised
            else:
                out.append(self._checked_arrays(r.sample, *next(encoded), r.spans))
        return out

    def _arrays_or_error(self, sample: Sample) -> EncodedArrays | EncodingError:
        try:
            return EncodedArrays.from_encoded(self.encode(sample))
        except EncodingError as exc:
            return exc

    def _checked_arrays(
        self, sample: Sample, arrays: EncodedArrays, straddling: int, spans: Spans | None
    ) -> EncodedArrays | EncodingError:
        """`checked` for the batched path; an over-long sample drops turns first, as `encode` does."""
        self.straddling += straddling
        if len(arrays) > self.settings.max_length:
            return self._dropping_turns(sample, spans)
        image_tokens = (
            np.count_nonzero(arrays.input_ids == self.image_token_id)
            if self.image_token_id is not None
            else 0
        )
        if image_tokens != self.image_tokens_of(arrays.n_images, spans):
            return EncodingError(sample.id, "image token count differs from images × tokens per image")
        if not np.any(arrays.labels != IGNORE_INDEX):
            return EncodingError(sample.id, f"no token is trained in mode {self.settings.mode!r}")
        return arrays

    def _dropping_turns(self, sample: Sample, spans: Spans | None) -> EncodedArrays | EncodingError:
        """`encode`'s loop for a sample over max_length, each shorter rendering through the batched
        machinery: whole trailing turns dropped until it fits."""
        pairs = self.conversation_pairs(sample)
        for kept in range(len(pairs) - 1, 0, -1):
            pieces = self.render(pairs[:kept])
            text = "".join(piece for _, piece in pieces)
            tokenized = batch_backend(self.tokenizer).encode_batch([text], add_special_tokens=False)
            rendered = Rendered(sample, pieces, text, spans)
            arrays, straddling = next(ChunkRoles(self, [rendered], tokenized).samples())
            if len(arrays) <= self.settings.max_length:
                arrays.dropped_turns = len(pairs) - kept
                return self._checked_arrays(sample, arrays, straddling, spans)
            self.straddling += straddling
        return EncodingError(
            sample.id, f"the first turn alone is longer than max_length {self.settings.max_length}"
        )


@dataclass
class Rendered:
    """A sample rendered for the batched path: its pieces and string (or the error rendering raised)
    and its images' spans (None: `image_tokens` image tokens each)."""

    sample: Sample
    pieces: Pieces | EncodingError
    text: str | None = None
    spans: Spans | None = None


@dataclass
class EncodedArrays:
    """An `Encoded` as numpy arrays (what the batched path makes and the encoded-data cache stores)."""

    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where untrained
    kinds: np.ndarray  # uint8 Kind per token
    n_images: int
    dropped_turns: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    def to_encoded(self) -> Encoded:
        return Encoded(
            self.input_ids.tolist(),
            self.labels.tolist(),
            self.kinds.tolist(),
            self.n_images,
            self.dropped_turns,
        )

    @classmethod
    def from_encoded(cls, encoded: Encoded) -> EncodedArrays:
        return cls(
            np.array(encoded.input_ids, dtype=np.int32),
            np.array(encoded.labels, dtype=np.int32),
            np.array(encoded.kinds, dtype=np.uint8),
            encoded.n_images,
            encoded.dropped_turns,
        )


def token_kinds(text: str, char_kind: Sequence[Kind], a: int, b: int) -> list[Kind]:
    """Kinds of the characters a token covers, in order. Whitespace folded into a word ("▁word") belongs
    to the word, and so does a token of spaces right before a word (a bare word-start "▁"); a newline
    token (after a role header, say) belongs to its own characters; a token with no characters (a
    prefix space the tokenizer inserts) to the character it stands before."""
    if b <= a:
        return [char_kind[min(a, len(text) - 1)]]
    visible = [c for c in range(a, b) if not text[c].isspace()]
    if not visible:
        word_start = (
            text[a:b].strip(" ") == ""
            and b < len(text)
            and not text[b].isspace()
            and char_kind[b] != Kind.IMAGE
        )
        visible = [b] if word_start else list(range(a, b))
    return list(dict.fromkeys(char_kind[c] for c in visible))


# str.isspace by code point; every whitespace character lies below U+3001, the table's last entry is
# False and stands for every code point above it.
_IS_SPACE = np.array([chr(c).isspace() for c in range(0x3001)] + [False])


def batch_backend(tokenizer: PreTrainedTokenizerBase) -> Any:
    """The Rust tokenizer of a fast tokenizer, when calling it directly gives what the tokenizer
    gives (no truncation or padding set on it); else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    return backend


class ChunkRoles:
    """`ChatEncoder.tokenize`'s role per token for a chunk of renderings at once, in numpy over the
    chunk's characters and tokens laid end to end: a token inside one piece with a visible character
    takes that piece's kind; the others (across pieces, whitespace only, empty) go through
    `token_kinds` as in the per-sample path."""

    def __init__(self, encoder: ChatEncoder, rendered: list[Rendered], encodings: list[Any]):
        self.encoder, self.texts = encoder, [r.text for r in rendered]
        pieces_of: list[Pieces] = [r.pieces for r in rendered]  # type: ignore[misc]
        self.n_images = [sum(1 for kind, _ in pieces if kind == Kind.IMAGE) for pieces in pieces_of]
        self.rendered_spans = [r.spans for r in rendered]
        kinds = np.array([kind for pieces in pieces_of for kind, _ in pieces], dtype=np.uint8)
        self.char_kind = np.repeat(kinds, [len(piece) for pieces in pieces_of for _, piece in pieces])
        self.char_starts = np.cumsum([0] + [len(text) for text in self.texts])
        self.n_tokens = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        self.ids = np.fromiter(
            chain.from_iterable(e.ids for e in encodings), np.int32, int(self.n_tokens.sum())
        )
        flat_offsets = chain.from_iterable(chain.from_iterable(e.offsets for e in encodings))
        self.spans = np.fromiter(flat_offsets, np.int64, 2 * len(self.ids)).reshape(-1, 2)
        self.sample_of = np.repeat(np.arange(len(encodings)), self.n_tokens)

    def token_kinds(self) -> tuple[np.ndarray, np.ndarray]:
        """Kind per token (image tokens not yet expanded) and tokens spanning two kinds per sample."""
        codes = np.frombuffer("".join(self.texts).encode("utf-32-le"), dtype=np.uint32)
        visible = ~_IS_SPACE[np.minimum(codes, len(_IS_SPACE) - 1)]
        base = self.char_starts[:-1][self.sample_of]
        starts, stops = self.spans[:, 0] + base, self.spans[:, 1] + base
        kinds, simple, blank = self.visible_kinds(visible, starts, stops)
        blank_kinds, blank_simple = self.blank_kinds(codes, visible, starts, stops)
        blank &= blank_simple
        kinds[blank], simple = blank_kinds[blank], simple | blank
        image_id = self.encoder.image_token_id
        image = self.ids == (-1 if image_id is None else image_id)
        kinds[image] = Kind.IMAGE
        trained = TRAINED[self.encoder.settings.mode]
        straddling = np.zeros(len(self.texts), dtype=np.int64)
        local: dict[int, list[int]] = {}
        for t in np.flatnonzero(~(simple | image)).tolist():
            i = int(self.sample_of[t])
            if i not in local:
                local[i] = self.char_kind[self.char_starts[i] : self.char_starts[i + 1]].tolist()
            spanned = token_kinds(self.texts[i], local[i], int(self.spans[t, 0]), int(self.spans[t, 1]))  # type: ignore[arg-type]
            straddling[i] += len(spanned) > 1
            kinds[t] = next((k for k in spanned if k not in trained), spanned[0])
        return kinds, straddling

    def visible_kinds(
        self, visible: np.ndarray, starts: np.ndarray, stops: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A token with visible characters takes their kind when they all share one (whitespace folds
        into the word): those kinds, where they apply, and where a token is whitespace only.
        `first`/`last` index the chunk's visible characters the token covers."""
        visible_kind = np.append(self.char_kind[visible], np.uint8(0))  # a sentinel past the last
        visible_before = np.concatenate([[0], np.cumsum(visible)])
        changes = np.flatnonzero(visible_kind[1:-1] != visible_kind[:-2]) + 1
        first, last = visible_before[starts], visible_before[stops]
        one_kind = np.searchsorted(changes, last, "left") == np.searchsorted(changes, first, "right")
        return visible_kind[first], (last > first) & one_kind, (stops > starts) & (last == first)

    def blank_kinds(
        self, codes: np.ndarray, visible: np.ndarray, starts: np.ndarray, stops: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """For whitespace-only tokens: spaces right before a visible character of the same sample (not
        an image tag) take its kind; other whitespace of a single kind takes that kind."""
        n_chars = len(self.char_kind)
        spaces_before = np.concatenate([[0], np.cumsum(codes == ord(" "))])
        sample_end = self.char_starts[1:][self.sample_of]
        after = np.minimum(stops, n_chars - 1)
        word_start = ((spaces_before[stops] - spaces_before[starts]) == stops - starts) & (stops < sample_end)
        word_start &= visible[after] & (self.char_kind[after] != Kind.IMAGE)
        changes = np.flatnonzero(self.char_kind[1:] != self.char_kind[:-1]) + 1
        one_kind = np.searchsorted(changes, stops, "left") == np.searchsorted(changes, starts, "right")
        kinds = np.where(word_start, self.char_kind[after], self.char_kind[np.minimum(starts, n_chars - 1)])
        return kinds, word_start | one_kind

    def image_spans(self) -> list[Sequence[int]]:
        """Every image of the chunk as its ids, rendering by rendering, in order."""
        image_id, n = self.encoder.image_token_id, self.encoder.settings.image_tokens
        spans: list[Sequence[int]] = []
        for n_images, own in zip(self.n_images, self.rendered_spans, strict=True):
            spans += list(own[:n_images]) if own is not None else [[image_id] * n] * n_images
        return spans

    def samples(self) -> Iterator[tuple[EncodedArrays, int]]:
        """Each rendering's arrays (image tokens expanded, BOS first) and its straddling count."""
        encoder, settings = self.encoder, self.encoder.settings
        kinds, straddling = self.token_kinds()
        image = self.ids == (-1 if encoder.image_token_id is None else encoder.image_token_id)
        repeats = np.where(image, settings.image_tokens, 1)
        spans = self.image_spans() if any(own is not None for own in self.rendered_spans) else None
        if spans is not None:
            repeats[image] = [len(span) for span in spans]
        ids, kinds = np.repeat(self.ids, repeats), np.repeat(kinds, repeats)
        if spans:
            ids[np.repeat(image, repeats)] = np.concatenate([np.asarray(s, dtype=np.int32) for s in spans])
        lengths = np.bincount(self.sample_of, weights=repeats, minlength=len(self.texts)).astype(np.int64)
        if encoder.add_bos:
            firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            ids = np.insert(ids, firsts, np.int32(encoder.tokenizer.bos_token_id))
            kinds = np.insert(kinds, firsts, np.uint8(Kind.BOS))
            lengths += 1
        labels = np.where(np.isin(kinds, list(TRAINED[settings.mode])), ids, IGNORE_INDEX).astype(np.int32)
        cuts = np.cumsum(lengths)[:-1]
        parts = zip(
            np.split(ids, cuts),
            np.split(labels, cuts),
            np.split(kinds, cuts),
            self.n_images,
            straddling.tolist(),
            strict=True,
        )
        for sample_ids, sample_labels, sample_kinds, n_images, straddled in parts:
            yield EncodedArrays(sample_ids, sample_labels, sample_kinds, n_images), straddled


def encode_prompt(
    encoder: ChatEncoder,
    question: str,
    history: Sequence[tuple[str, str]] = (),
    spans: Spans | None = None,
) -> list[int]:
    """Ids of a generation prompt: earlier (question, answer) turns, then the question, then the
    assistant tag, rendered and tokenized exactly as in training (`spans`: as in `tokenize`)."""
    if IMAGE_TAG in question + "".join(q for q, _ in history) and encoder.image_token_id is None:
        raise ValueError(f"the tokenizer has no {IMAGE_TAG} token; this model cannot take images")
    turns = [(encoder.placed(q), a) for q, a in history]
    ids, _ = encoder.tokenize(encoder.render([*turns, (encoder.placed(question), None)]), spans)
    return ids


@dataclass
class EncodeReport:
    encoded: int = 0
    truncated: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)


def encode_all(
    encoder: ChatEncoder, samples: Iterable[Sample], batch_size: int = 512
) -> tuple[list[tuple[Sample, Encoded]], EncodeReport]:
    """Encode every sample, `batch_size` at a time through `encode_many`; a sample that cannot be
    encoded is quarantined with its reason and counted."""
    report = EncodeReport()
    out = []
    for chunk in batched(samples, batch_size):
        for sample, encoded in zip(chunk, encoder.encode_many(chunk), strict=True):
            if isinstance(encoded, EncodingError):
                report.quarantined[sample.id] = encoded.reason
                continue
            report.encoded += 1
            report.truncated += encoded.dropped_turns > 0
            out.append((sample, encoded))
    return out, report


def batched(items: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    chunk: list[Sample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


ROLE_NAMES = {
    Kind.BOS: "bos",
    Kind.SYSTEM: "system",
    Kind.ROLE: "role",
    Kind.IMAGE: "image",
    Kind.TEMPLATE: "template",
    Kind.USER: "user",
    Kind.ASSISTANT: "assistant",
    Kind.END: "end",
}


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """One token as text, its leading space kept (SentencePiece decoders drop a leading `▁`)."""
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    return " " + text if piece.startswith("▁") and not text.startswith(" ") else text


def label_rows(tokenizer: PreTrainedTokenizerBase, encoded: Encoded) -> list[dict]:
    """Every token with its text, role and whether it is trained (the JSON preview)."""
    return [
        {
            "id": t,
            "text": token_text(tokenizer, t),
            "role": ROLE_NAMES[Kind(k)],
            "label": label != IGNORE_INDEX,
        }
        for t, k, label in zip(encoded.input_ids, encoded.kinds, encoded.labels, strict=True)
    ]


def readable(text: str) -> str:
    """Spaces and newlines made visible: `·` for a space, `⏎` before a line break."""
    return text.replace(" ", "·").replace("\n", "⏎\n")


def render_labels(tokenizer: PreTrainedTokenizerBase, encoded: Encoded) -> Text:
    """Decoded tokens, spaces and newlines visible; trained ones green on dark, others dim, boundaries
    between tokens marked by alternating shades; an image span collapsed to one mark with its count."""
    text = Text()
    rows = label_rows(tokenizer, encoded)
    i = 0
    while i < len(rows):
        row = rows[i]
        if row["role"] == "image":
            j = i
            while j < len(rows) and rows[j]["role"] == "image":
                j += 1
            text.append(f"‹image×{j - i}›", style="bold magenta" if row["label"] else "magenta")
            i = j
            continue
        shade = "grey15" if i % 2 else "grey23"
        text.append(
            readable(row["text"]), style=f"bold green on {shade}" if row["label"] else f"dim on {shade}"
        )
        i += 1
    return text
