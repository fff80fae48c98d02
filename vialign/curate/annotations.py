"""Reward-model annotations: groups of candidates (question sets or answers) with human scores in [0, 1].

One group per JSONL line:
    {"group_id": "...", "kind": "questions", "image": "rel/path.png",
     "candidates": [{"questions": ["q1", "q2"], "score": 0.8, "criteria": {"relevance": 0.9}}, ...]}
    {"group_id": "...", "kind": "answers", "image": "...", "question": "q",
     "candidates": [{"answer": "a", "score": 0.7, "criteria": {...}}, ...]}
Unknown keys are kept. A group that cannot be used goes to a rejects file with its line and reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vialign.choices import GroupKind
from vialign.records import image_list


class Candidate(BaseModel):
    model_config = ConfigDict(extra="allow")

    questions: list[str] | None = None
    answer: str | None = None
    score: float = Field(ge=0.0, le=1.0)
    criteria: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_text(self) -> Candidate:
        if (self.questions is None) == (self.answer is None):
            raise ValueError("a candidate has either 'questions' (a question set) or 'answer', not both")
        if self.questions is not None and not any(q.strip() for q in self.questions):
            raise ValueError("empty question set")
        if self.answer is not None and not self.answer.strip():
            raise ValueError("empty answer")
        bad = {k: v for k, v in self.criteria.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"criterion scores must lie in [0, 1]: {bad}")
        return self


class AnnotationGroup(BaseModel):
    model_config = ConfigDict(extra="allow")

    group_id: str = Field(min_length=1)
    kind: GroupKind
    image: str | list[str] | None = None
    question: str | None = None
    candidates: list[Candidate] = Field(min_length=2)

    @model_validator(mode="after")
    def _consistent(self) -> AnnotationGroup:
        field = "questions" if self.kind == "questions" else "answer"
        wrong = [k for k, c in enumerate(self.candidates) if getattr(c, field) is None]
        if wrong:
            raise ValueError(f"{self.kind} group: candidate {wrong[0]} has no {field!r}")
        if self.kind == "answers" and not (self.question or "").strip():
            raise ValueError("an answers group needs the 'question' its candidates answer")
        return self

    @property
    def images(self) -> list[str]:
        return image_list(self.image)

    @property
    def scores(self) -> list[float]:
        return [c.score for c in self.candidates]


@dataclass(frozen=True)
class RejectedGroup:
    line: int
    group_id: str | None
    reason: str
    text: str
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "line": self.line,
            "group_id": self.group_id,
            "reason": self.reason,
            "raw": self.text,
        }


def read_groups(path: str | Path) -> Iterator[tuple[int, AnnotationGroup | RejectedGroup]]:
    """(line, group) for every line, or (line, rejection) naming the reason when it cannot be used."""
    with Path(path).open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            text = raw.decode("utf-8", errors="replace").rstrip("\n")
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield line_no, RejectedGroup(line_no, None, f"not JSON: {exc}", text)
                continue
            group_id = data.get("group_id") if isinstance(data, dict) else None
            try:
                yield line_no, AnnotationGroup.model_validate(data)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'group'}: {e['msg']}" for e in exc.errors()
                )
                yield line_no, RejectedGroup(line_no, group_id, problems, text)


def load_groups(paths: list[Path], kind: GroupKind) -> tuple[list[AnnotationGroup], list[RejectedGroup]]:
    groups, rejected, seen = [], [], set()
    for path in paths:
        for line_no, item in read_groups(path):
            if isinstance(item, RejectedGroup):
                rejected.append(replace(item, source=str(path)))
            elif item.kind != kind:
                reason = f"kind {item.kind!r}; this reward model learns {kind!r}"
                rejected.append(RejectedGroup(line_no, item.group_id, reason, "", str(path)))
            elif item.group_id in seen:
                rejected.append(RejectedGroup(line_no, item.group_id, "duplicate group_id", "", str(path)))
            else:
                seen.add(item.group_id)
                groups.append(item)
    return groups, rejected


def better_pairs(scores: list[float]) -> list[tuple[int, int]]:
    """Every ordered pair (better, worse) whose scores differ; equal scores give no pair."""
    return [(i, j) for i, si in enumerate(scores) for j, sj in enumerate(scores) if si > sj]


def is_heldout(group_id: str, share: float, seed: int) -> bool:
    """A stable split by group id: the same groups are held out whatever the file order."""
    digest = hashlib.sha256(f"{seed}:{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_groups(
    groups: list[AnnotationGroup], share: float, seed: int
) -> tuple[list[AnnotationGroup], list[AnnotationGroup]]:
    train = [g for g in groups if not is_heldout(g.group_id, share, seed)]
    heldout = [g for g in groups if is_heldout(g.group_id, share, seed)]
    return train, heldout
