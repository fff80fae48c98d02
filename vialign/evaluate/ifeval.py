"""Instruction following with verifiable instructions (IFEval's method): prompts that vialign writes itself
in IFEval's file format (`{"key", "prompt", "instruction_id_list", "kwargs"}`, so Google's own
`input_data.jsonl` drops in as well), checked by the IFEval checkers of the `if-verifiable` package,
scored as IFEval reports: prompt-level and instruction-level accuracy, strict and loose.

Two of those checkers call NLTK's punkt models (a download, absent offline): the sentence count and the
count of capitalised words are redone here with the package's own rule-based sentence splitter and a
regex word tokenizer."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache
from typing import Any

IFEVAL_FILES = ("prompts.jsonl", "input_data.jsonl")

GENERAL_TOPICS = (
    "the ocean at night",
    "a city park in spring",
    "learning to cook",
    "a quiet library",
    "winter mornings",
    "riding a bicycle",
    "a market in a small town",
    "keeping a garden",
    "a long train journey",
    "the first day at a new school",
    "rainy afternoons",
    "a mountain lake",
)
SHAPE_TOPICS = (
    "a red circle and a blue square",
    "three green triangles",
    "a large yellow star",
    "a small purple cross next to a circle",
    "shapes arranged on a dark grid",
    "a white square in the middle of a picture",
)
TASKS = (
    "Describe {topic}.",
    "Write a short story about {topic}.",
    "Explain to a child what is special about {topic}.",
    "Write a short note to a friend about {topic}.",
    "Give some advice to someone who has never seen {topic}.",
)


def instruction(kind: str, rng: random.Random, topic: str) -> tuple[str, dict[str, Any]]:
    """(our wording, the checker's kwargs) for one instruction of IFEval id `kind`."""
    word = rng.choice(["bright", "simple", "quiet", "colour", "small", "light", "together"])
    if kind == "length_constraints:number_words":
        relation, n = rng.choice(
            [("less than", rng.choice([30, 40, 50])), ("at least", rng.choice([40, 60, 80]))]
        )
        text = f"Keep it under {n} words." if relation == "less than" else f"Write at least {n} words."
        return text, {"relation": relation, "num_words": n}
    if kind == "length_constraints:number_sentences":
        if rng.random() < 0.5:
            n = rng.choice([2, 3, 4])
            return f"Use no more than {n - 1} sentences.", {"relation": "less than", "num_sentences": n}
        n = rng.choice([3, 4, 5])
        return f"Use at least {n} sentences.", {"relation": "at least", "num_sentences": n}
    if kind == "length_constraints:number_paragraphs":
        n = rng.choice([2, 3])
        return f"Write {n} paragraphs and put a line with *** between them.", {"num_paragraphs": n}
    if kind == "keywords:existence":
        words = rng.sample(["bright", "calm", "shape", "colour", "morning", "friend", "simple"], 2)
        return f"Mention the words '{words[0]}' and '{words[1]}'.", {"keywords": words}
    if kind == "keywords:forbidden_words":
        words = rng.sample(["very", "really", "nice", "thing", "good"], 2)
        return f"Do not use the words '{words[0]}' or '{words[1]}'.", {"forbidden_words": words}
    if kind == "keywords:frequency":
        n = rng.choice([2, 3])
        text = f"Use the word '{word}' at least {n} times."
        return text, {"keyword": word, "frequency": n, "relation": "at least"}
    if kind == "change_case:english_lowercase":
        return "Write your whole answer in lowercase letters, with no capital letter at all.", {}
    if kind == "change_case:english_capital":
        return "Write your whole answer in capital letters.", {}
    if kind == "change_case:capital_word_frequency":
        n = rng.choice([2, 3])
        text = f"Write at least {n} words fully in capital letters, for emphasis."
        return text, {"capital_frequency": n, "capital_relation": "at least"}
    if kind == "detectable_format:number_bullet_lists":
        n = rng.choice([2, 3, 4])
        return f"Answer with exactly {n} bullet points, each line starting with '* '.", {"num_bullets": n}
    if kind == "detectable_format:json_format":
        return "Give your whole answer as a JSON object.", {}
    if kind == "detectable_format:title":
        return "Start with a title inside double angle brackets, like <<my title>>.", {}
    if kind == "startend:end_checker":
        phrase = rng.choice(["That is all.", "Thank you for reading.", "See you soon."])
        return f"Finish your answer with the exact words '{phrase}' and nothing after them.", {
            "end_phrase": phrase
        }
    if kind == "startend:quotation":
        return "Put your whole answer inside double quotation marks.", {}
    if kind == "detectable_content:postscript":
        return "At the end, add a postscript that starts with P.S.", {"postscript_marker": "P.S."}
    if kind == "punctuation:no_comma":
        return "Do not use any commas.", {}
    if kind == "detectable_format:constrained_response":
        return "Reply only with 'My answer is yes.', 'My answer is no.' or 'My answer is maybe.'", {}
    if kind == "detectable_content:number_placeholders":
        n = rng.choice([1, 2])
        return f"Include {n} placeholder(s) in square brackets, such as [name].", {"num_placeholders": n}
    raise ValueError(f"no wording for instruction {kind!r}")


KINDS = (
    "length_constraints:number_words",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "change_case:english_lowercase",
    "change_case:english_capital",
    "change_case:capital_word_frequency",
    "detectable_format:number_bullet_lists",
    "detectable_format:json_format",
    "detectable_format:title",
    "startend:end_checker",
    "startend:quotation",
    "detectable_content:postscript",
    "punctuation:no_comma",
    "detectable_format:constrained_response",
    "detectable_content:number_placeholders",
)
# combinations the checkers cannot satisfy together (IFEval's own conflict list holds more)
CONFLICTS = {
    frozenset({"change_case:english_lowercase", "change_case:english_capital"}),
    frozenset({"change_case:english_lowercase", "change_case:capital_word_frequency"}),
    frozenset({"detectable_format:json_format", "detectable_format:number_bullet_lists"}),
    frozenset({"detectable_format:json_format", "length_constraints:number_paragraphs"}),
    frozenset({"detectable_format:constrained_response", "length_constraints:number_words"}),
}


def ifeval_prompts(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` prompts in IFEval's format, one or two instructions each, every kind about equally often."""
    rng = random.Random(seed)
    out = []
    for key in range(n):
        first = KINDS[key % len(KINDS)]
        kinds = [first]
        if rng.random() < 0.4:
            second = rng.choice([k for k in KINDS if k != first and frozenset({first, k}) not in CONFLICTS])
            if "constrained_response" not in first + second:
                kinds.append(second)
        topic = rng.choice(SHAPE_TOPICS if rng.random() < 0.35 else GENERAL_TOPICS)
        if "constrained_response" in first:
            task = f"Is {topic} a good subject for a painting?"
        else:
            task = rng.choice(TASKS).format(topic=topic)
        worded = [instruction(k, rng, topic) for k in kinds]
        out.append(
            {
                "key": key,
                "prompt": " ".join([task, *(w for w, _ in worded)]),
                "instruction_id_list": kinds,
                "kwargs": [kw for _, kw in worded],
            }
        )
    return out


@cache
def checker_registry() -> dict[str, Any]:
    """if-verifiable's IFEval registry, with the two punkt-bound checkers replaced."""
    from if_verifiable.ifeval import instructions, instructions_util
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    def compare(count: int, relation: str, threshold: int) -> bool:
        return count < threshold if relation == "less than" else count >= threshold

    class SentenceCount(instructions.NumberOfSentences):
        def check_following(self, value):
            count = len(instructions_util.split_into_sentences(value))
            return compare(count, self._comparison_relation, self._num_sentences_threshold)

    class CapitalWords(instructions.CapitalWordFrequencyChecker):
        def check_following(self, value):
            words = re.findall(r"\w+(?:[-']\w+)*", value)
            return compare(sum(w.isupper() for w in words), self._comparison_relation, self._frequency)

    return {
        **INSTRUCTION_DICT,
        "length_constraints:number_sentences": SentenceCount,
        "change_case:capital_word_frequency": CapitalWords,
    }


def check_response(record: dict[str, Any], response: str) -> dict[str, Any]:
    """Strict and loose pass per instruction of one prompt (an empty answer fails every instruction)."""
    from if_verifiable.common import evaluate_instructions

    ids = list(record["instruction_id_list"])
    kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in record["kwargs"]]
    results, _ = evaluate_instructions(response, ids, kwargs, record["prompt"], checker_registry())
    by_id = {r.instruction_id: r for r in results}
    return {
        "instructions": ids,
        "strict": [bool(by_id[i].strict_pass) if i in by_id else False for i in ids],
        "loose": [bool(by_id[i].loose_pass) if i in by_id else False for i in ids],
    }


def ifeval_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """IFEval's four accuracies, and the strict instruction-level accuracy per instruction kind."""
    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        out[f"prompt_level_{mode}"] = sum(all(r[mode]) for r in records) / len(records)
        flat = [ok for r in records for ok in r[mode]]
        out[f"instruction_level_{mode}"] = sum(flat) / len(flat)
    kinds: dict[str, list[bool]] = {}
    for r in records:
        for kind, ok in zip(r["instructions"], r["strict"], strict=True):
            kinds.setdefault(kind.split(":")[1], []).append(ok)
    for kind, oks in sorted(kinds.items()):
        out[f"{kind}/instruction_strict"] = sum(oks) / len(oks)
    return out
