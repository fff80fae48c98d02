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

from vialign.generation.base import Backend, ChatRequest, JudgeModelSettings
from vialign.generation.cache import ResponseCache, cache_key

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


def judge_prompt(template: str, question: str, answer: str, reference: str | None) -> str:
    ref = f"[Reference Answer]\n{reference}\n\n" if reference else ""
    return template.replace("{question}", question).replace("{answer}", answer).replace("{reference}", ref)


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
    keyed = [(item, cache_key(identity, settings.prompt, item["question"], item.get("reference"),
                              item.get("images", []), item["answer"])) for item in items]  # fmt: skip
    hits = {key for _, key in keyed if key in cache.entries}
    todo = [(item, key) for item, key in keyed if key not in cache.entries]
    for attempt in (1, 2):
        retry = []
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start : start + settings.batch_size]
            requests = [ChatRequest(key, [{"role": "user", "content": judge_prompt(settings.prompt, item["question"],
                                    item["answer"], item.get("reference"))}],
                                    [image_root / p for p in item.get("images", [])]) for item, key in chunk]  # fmt: skip
            results = judge.generate(requests, settings.params)
            entries = []
            for (item, key), result in zip(chunk, results, strict=True):
                reply = result.texts[0] if result.texts else None
                rating = parse_rating(reply) if reply is not None else None
                if rating is None and attempt == 1:
                    retry.append((item, key))
                    continue
                if result.error is None:  # transport errors are not cached: the next run asks again
                    entries.append({"key": key, "rating": rating, "reply": reply, "judge": identity})
            cache.add(entries)
        todo = retry
    out = []
    for item, key in keyed:
        entry = cache.entries.get(key, {})
        out.append({"id": item["id"], "rating": entry.get("rating"), "judge_reply": entry.get("reply"),
                    "cached": key in hits})  # fmt: skip
    return out
