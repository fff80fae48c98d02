"""Reward-model annotations in Align2LLaVA's shape, scored by a simulated annotator from scene facts.

Per image: one group of candidate question sets, and for some questions a group of candidate
answers. Each candidate has a score in [0, 1], per-criterion scores, and (under `truth`) the flaw the
simulation put in, so a reward model's ranking can be checked.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from vialign.toyworld.instructions import (
    LISTING_QUESTIONS,
    SOFT_MAKERS,
    absent_pairs,
    conv_colour,
    conv_count,
    conv_objects,
    conv_position,
    hallucinated_object,
    truncated_answer,
    wrong_attribute,
)
from vialign.toyworld.language import OWN_POSITIONS
from vialign.toyworld.scene import Scene

QUESTION_WEIGHTS = {"relevance": 0.4, "comprehensiveness": 0.4, "diversity": 0.2}
ANSWER_WEIGHTS = {"accuracy": 0.5, "completeness": 0.25, "fluency": 0.15, "detail": 0.1}
ANNOTATOR_NOISE = 0.03


def annotator_score(criteria: dict[str, float], weights: dict[str, float], rng: random.Random) -> float:
    score = sum(weights[k] * criteria[k] for k in weights) + rng.gauss(0.0, ANNOTATOR_NOISE)
    return round(min(1.0, max(0.0, score)), 4)


def good_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    triples = [conv_objects(scene, rng), conv_position(scene, rng), conv_count(scene, rng)]
    colour = conv_colour(scene, rng)
    return [(q, teacher) for q, teacher, _ in triples + ([colour] if colour else [])]


def coverage(scene: Scene, questions: list[str]) -> float:
    """Share of the scene's objects the questions ask about; a listing question asks about all."""
    if any(q in LISTING_QUESTIONS for q in questions):
        return 1.0
    return sum(any(o.name in q for q in questions) for o in scene.objects) / len(scene.objects)


def question_candidates(scene: Scene, other: Scene, rng: random.Random) -> list[dict[str, Any]]:
    """Question sets for one image. The irrelevant set borrows questions written for another scene, so
    only the image tells it apart from a good set."""
    good = [q for q, _ in good_questions(scene, rng)]
    borrowed = [q for q, _ in good_questions(other, rng) if q not in good and q not in LISTING_QUESTIONS]
    irrelevant = (
        borrowed[:2]
        if len(borrowed) >= 2
        else [f"Where is the {c} {s} located?" for c, s in absent_pairs(scene)[:2]]
    )
    sets = {
        "none": good,
        "narrow": good[1:2],
        "irrelevant": [good[1], *irrelevant],
        "duplicated": [good[1], good[1], good[1]],
    }
    out = []
    for flaw, questions in sets.items():
        criteria = {
            "relevance": sum(q in good for q in questions) / len(questions),
            "comprehensiveness": coverage(scene, questions),
            "diversity": len(set(questions)) / len(questions),
        }
        out.append(
            {
                "questions": questions,
                "score": annotator_score(criteria, QUESTION_WEIGHTS, rng),
                "criteria": criteria,
                "truth": {"flaw": flaw},
            }
        )
    rng.shuffle(out)
    return out


def terse_answer(scene: Scene, question: str, answer: str) -> str:
    """The same facts in a few plain words: correct but thin."""
    names = [f"a {o.full_name} {OWN_POSITIONS[o.cell]}" for o in scene.objects if o.name in question]
    return ("There is " + names[0] + ".") if names else answer.split(". ")[0].rstrip(".") + "."


def answer_candidates(scene: Scene, question: str, answer: str, rng: random.Random) -> list[dict[str, Any]]:
    cands = [("none", answer, {"accuracy": 1.0, "completeness": 1.0, "fluency": 1.0, "detail": 1.0})]
    terse = terse_answer(scene, question, answer)
    if terse != answer:
        cands.append(("terse", terse, {"accuracy": 1.0, "completeness": 0.7, "fluency": 1.0, "detail": 0.2}))
    for flaw, corrupt, criteria in (
        (
            "wrong_attribute",
            wrong_attribute,
            {"accuracy": 0.0, "completeness": 0.8, "fluency": 1.0, "detail": 0.8},
        ),
        (
            "hallucinated_object",
            hallucinated_object,
            {"accuracy": 0.3, "completeness": 1.0, "fluency": 1.0, "detail": 1.0},
        ),
        (
            "truncated_answer",
            truncated_answer,
            {"accuracy": 0.7, "completeness": 0.3, "fluency": 0.0, "detail": 0.4},
        ),
    ):
        result = corrupt(answer, scene, rng)
        if result is not None:
            cands.append((flaw, result[0], criteria))
    out = []
    for flaw, text, criteria in cands:
        out.append(
            {
                "answer": text,
                "score": annotator_score(criteria, ANSWER_WEIGHTS, rng),
                "criteria": criteria,
                "truth": {"flaw": flaw},
            }
        )
    rng.shuffle(out)
    return out


def annotated_turns(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """Question/answer turns of every soft subset (conversation, detail, complex reasoning), as the
    corpus has them, so the answer model is trained on the kind of answers it will score."""
    return [
        (q.replace("<image>", "").strip(), teacher)
        for make in SOFT_MAKERS.values()
        for q, teacher, _ in make(scene, rng)
    ]


def annotation_groups(
    scene: Scene, image: str, rng: random.Random, other: Scene, answers_per_image: int = 2
) -> tuple[dict, list[dict]]:
    question_group = {
        "group_id": f"q-{scene.scene_id}",
        "kind": "questions",
        "image": image,
        "candidates": question_candidates(scene, other, rng),
        "truth": scene.to_json(),
    }
    answer_groups = []
    for k, (question, answer) in enumerate(rng.sample(annotated_turns(scene, rng), answers_per_image)):
        answer_groups.append(
            {
                "group_id": f"a-{scene.scene_id}-{k}",
                "kind": "answers",
                "image": image,
                "question": question,
                "candidates": answer_candidates(scene, question, answer, rng),
                "truth": scene.to_json(),
            }
        )
    return question_group, answer_groups


def best_and_worst_pairs(world: str | Path, limit: int) -> list[dict[str, Any]]:
    """Preference records from a toy world's answer annotations: each question's best rated answer
    chosen, its worst rejected (at most `limit`)."""
    from vialign.records import read_jsonl

    pairs = []
    for group in read_jsonl(Path(world) / "annotations" / "answers.jsonl"):
        ranked = sorted(group["candidates"], key=lambda c: -c["score"])
        pairs.append(
            {
                "id": group["group_id"],
                "image": group["image"],
                "conversations": [{"from": "human", "value": f"<image>\n{group['question']}"}],
                "chosen": ranked[0]["answer"],
                "rejected": ranked[-1]["answer"],
            }
        )
        if len(pairs) == limit:
            break
    return pairs
