"""Single-answer grading by a judge model (MT-Bench style, 1–10), from any backend, with a cache.

A rating is cached under a key that hashes the judge's identity, the prompt template, the question, the
reference, the image names and the answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from vialign.generation.base import Backend, ChatRequest, JudgeModelSettings, fill_prompt
from vialign.generation.cache import ResponseCache, ask_cached, cache_key
from vialign.records import confined_image_path

DEFAULT_JUDGE_PROMPT = (
    "[Instruction]\nYou are an impartial judge. Rate the quality of the AI assistant's response to the user "
    "question below: its helpfulness, relevance, accuracy, depth and level of detail. Explain briefly and "
    'objectively, then give your rating on a scale of 1 to 10 in exactly this format: "Rating: [[5]]".\n\n'
    "[Question]\n{question}\n\n{reference}[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


class JudgeSettings(JudgeModelSettings):
    prompt: str = DEFAULT_JUDGE_PROMPT

    @field_validator("prompt")
    @classmethod
    def _slots(cls, value: str) -> str:
        for slot in ("{question}", "{answer}"):
            if slot not in value:
                raise ValueError(f"the judge prompt needs the placeholder {slot}")
        return value


def parse_rating(reply: str) -> float | None:
    """The last `[[n]]` in the reply, when 1 ≤ n ≤ 10."""
    found = RATING.findall(reply or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None


def rating_or_refuse(reply: str) -> float:
    rating = parse_rating(reply)
    if rating is None:
        raise ValueError("no rating [[n]] with 1 <= n <= 10 in the reply")
    return rating


def judge_prompt(template: str, question: str, answer: str, reference: str | None) -> str:
    ref = f"[Reference Answer]\n{reference}\n\n" if reference else ""
    return fill_prompt(template, question=question, answer=answer, reference=ref)


def rate_answers(
    judge: Backend,
    settings: JudgeSettings,
    cache: ResponseCache,
    items: Sequence[dict[str, Any]],
    image_root: Path,
) -> list[dict[str, Any]]:
    """One record per item (`id`, `question`, `reference`, `images`, `answer`): rating, judge reply,
    and whether it came from the cache. An unparsable reply is asked once more, then recorded unrated."""
    identity = judge.identity()
    keyed = [
        (
            item,
            cache_key(
                identity,
                settings.prompt,
                item["question"],
                item.get("reference"),
                item.get("images", []),
                item["answer"],
            ),
        )
        for item in items
    ]
    hits = {key for _, key in keyed if key in cache}
    requests = [
        ChatRequest(
            key,
            [
                {
                    "role": "user",
                    "content": judge_prompt(
                        settings.prompt, item["question"], item["answer"], item.get("reference")
                    ),
                }
            ],
            [confined_image_path(image_root, p) for p in item.get("images", [])],
        )
        for item, key in keyed
    ]
    ask_cached(
        judge,
        cache,
        requests,
        settings.params,
        lambda _, reply: rating_or_refuse(reply),
        settings.batch_size,
        identity,
    )
    out = []
    for item, key in keyed:
        entry = cache.entries.get(key, {})
        out.append(
            {
                "id": item["id"],
                "rating": entry.get("value"),
                "judge_reply": entry.get("reply"),
                "cached": key in hits,
            }
        )
    return out
