"""Soft/hard format classes, as in the LLaVA-1.5 665k mix (METHODS.md section 1).

Soft-format samples (open-ended answers) may be rewritten and get LIT loss like any other; hard-format
samples (short answers, option letters, OCR, boxes, yes/no, one word) must keep their exact format.
Rules are tried in order per question/answer pair; the first that matches gives the turn's class. A
sample takes the first hard class among its turns, `open_ended` when all turns are soft, and
`text_only` when it has no image. Users extend the rules in config (`extra_rules` go first).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property
from typing import Literal

from pydantic import Field, model_validator

from vialign.config import Settings
from vialign.records import GPT, HUMAN, IMAGE_TAG, Sample

OPEN_ENDED = "open_ended"
TEXT_ONLY = "text_only"
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or phrase."
OPTION_LETTER_SUFFIX = "Answer with the option's letter from the given choices directly."
BOX = r"\[\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+\s*\]"


class FormatRule(Settings):
    """A turn matches when every condition that is set holds."""

    name: str
    format_class: str
    kind: Literal["soft", "hard"] = "hard"
    question_suffix: list[str] = Field(default_factory=list, description="any of these ends the question")
    question_regex: str | None = None
    answer_regex: str | None = None
    text_regex: str | None = Field(None, description="searched in question and answer")
    max_answer_words: int | None = None

    @model_validator(mode="after")
    def _has_a_condition(self) -> FormatRule:
        if not (
            self.question_suffix
            or self.question_regex
            or self.answer_regex
            or self.text_regex
            or self.max_answer_words
        ):
            raise ValueError(f"format rule {self.name!r} has no condition and would match everything")
        for pattern in (self.question_regex, self.answer_regex, self.text_regex):
            if pattern:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"format rule {self.name!r}: bad regex {pattern!r}: {exc}") from exc
        return self

    def matches(self, question: str, answer: str) -> bool:
        q = question.replace(IMAGE_TAG, "").strip()
        a = answer.strip()
        if self.question_suffix and not any(q.endswith(s) for s in self.question_suffix):
            return False
        if self.question_regex and not re.search(self.question_regex, q, re.IGNORECASE):
            return False
        if self.answer_regex and not re.search(self.answer_regex, a, re.IGNORECASE):
            return False
        if self.text_regex and not re.search(self.text_regex, q + "\n" + a, re.IGNORECASE):
            return False
        return not (self.max_answer_words is not None and len(a.split()) > self.max_answer_words)


DEFAULT_RULES: list[FormatRule] = [
    FormatRule(name="region box", format_class="region", text_regex=BOX),
    FormatRule(
        name="option letter suffix", format_class="multiple_choice", question_suffix=[OPTION_LETTER_SUFFIX]
    ),
    FormatRule(
        name="options and a letter",
        format_class="multiple_choice",
        question_regex=r"(^|\n)\s*A[.)]\s.+\n\s*B[.)]\s",
        answer_regex=r"^\(?[A-Z][.)]?$",
    ),
    FormatRule(
        name="ocr and book questions",
        format_class="ocr",
        question_regex=r"\b(this book|the book's|reference ocr token|ocr|what (?:is|does) the (?:text|sign|label) say|"
        r"what is written|read the text)\b",
    ),
    FormatRule(
        name="one-sentence caption",
        format_class="short_caption",
        question_regex=r"(one-sentence|one sentence|short|brief) (caption|description)",
        max_answer_words=40,
    ),
    FormatRule(
        name="short-answer suffix", format_class="short_answer", question_suffix=[SHORT_ANSWER_SUFFIX]
    ),
    FormatRule(name="yes or no answer", format_class="yes_no", answer_regex=r"^(yes|no)[.!]?$"),
    FormatRule(name="one-word answer", format_class="one_word", max_answer_words=1),
]


class FormatSettings(Settings):
    extra_rules: list[FormatRule] = Field(default_factory=list, description="tried before the defaults")
    use_default_rules: bool = True
    soft_classes: list[str] = Field(default_factory=lambda: [OPEN_ENDED])

    @cached_property
    def rules(self) -> list[FormatRule]:
        return [*self.extra_rules, *(DEFAULT_RULES if self.use_default_rules else [])]


def turn_pairs(sample: Sample) -> list[tuple[str, str]]:
    turns = sample.conversations
    return [
        (turns[i].value, turns[i + 1].value)
        for i in range(0, len(turns) - 1, 2)
        if turns[i].role == HUMAN and turns[i + 1].role == GPT
    ]


def classify_turn(question: str, answer: str, rules: Sequence[FormatRule]) -> str:
    for rule in rules:
        if rule.matches(question, answer):
            return rule.format_class
    return OPEN_ENDED


def is_text_only(sample: Sample) -> bool:
    return not sample.images and not any(IMAGE_TAG in t.value for t in sample.conversations)


def classify_sample(sample: Sample, settings: FormatSettings | None = None) -> str:
    settings = settings or FormatSettings()
    if is_text_only(sample):
        return TEXT_ONLY
    classes = [classify_turn(q, a, settings.rules) for q, a in turn_pairs(sample)]
    hard = [c for c in classes if c not in settings.soft_classes]
    return hard[0] if hard else OPEN_ENDED


def is_soft(format_class: str, settings: FormatSettings | None = None) -> bool:
    return format_class in (settings or FormatSettings()).soft_classes
