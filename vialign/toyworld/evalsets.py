"""Evaluation sets in the formats of the real benchmarks, about held-out scenes.

- POPE: `{question_id, image, text, label, category}` JSONL per negative sampling (random, popular,
  adversarial), balanced yes/no;
- captions: a COCO captions JSON (`images`, `annotations`) with several references per image;
- VQA: LLaVA-eval question JSONL plus VQAv2-style annotations (10 answers per question);
- multiple choice: question, options A–D and the answer letter;
- text: own-manner text-only tasks with exact answers (the retention measure);
- judge: open questions with a reference answer, for single-answer grading by a judge model;
- facts: open questions with the scene itself, so that each answer's facts are checked claim by claim.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from vialign.data.formats import SHORT_ANSWER_SUFFIX
from vialign.toyworld.instructions import counting, mc_item, short_answer
from vialign.toyworld.language import neutral_caption
from vialign.toyworld.scene import COLOUR_WEIGHTS, COLOURS, SHAPE_WEIGHTS, SHAPES, Scene
from vialign.toyworld.textcorpus import TEXT_TASKS

POPE_CATEGORIES = ("random", "popular", "adversarial")
CAPTION_FORMS = 3
POPULARITY = sorted(
    ((c, s) for c in COLOURS for s in SHAPES),
    key=lambda p: -COLOUR_WEIGHTS[list(COLOURS).index(p[0])] * SHAPE_WEIGHTS[SHAPES.index(p[1])],
)


def pope_negatives(scene: Scene, category: str, k: int, rng: random.Random) -> list[tuple[str, str]]:
    absent = [p for p in POPULARITY if p not in scene.pairs]
    if category == "popular":
        return absent[:k]
    if category == "adversarial":
        near = [p for p in absent if any(p[0] == c or p[1] == s for c, s in scene.pairs)]
        rng.shuffle(near)
        rest = [p for p in absent if p not in near]
        return (near + rng.sample(rest, len(rest)))[:k]
    return rng.sample(absent, k)


def pope_rows(scenes: list[tuple[Scene, str]], category: str, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"vialign-toyworld:{seed}:pope:{category}")
    rows: list[dict[str, Any]] = []
    for scene, image in scenes:
        present = sorted(scene.pairs)[:3]
        items = [(p, "yes") for p in present] + [
            (p, "no") for p in pope_negatives(scene, category, len(present), rng)
        ]
        for (colour, shape), label in items:
            rows.append(
                {
                    "question_id": len(rows) + 1,
                    "image": image,
                    "text": f"Is there a {colour} {shape} in the image?",
                    "label": label,
                    "category": category,
                }
            )
    return rows


def caption_references(scenes: list[tuple[Scene, str]], seed: int) -> dict[str, Any]:
    images, annotations = [], []
    for image_id, (scene, image) in enumerate(scenes, start=1):
        images.append({"id": image_id, "file_name": image})
        for form in range(CAPTION_FORMS):
            caption = neutral_caption(scene, form)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    return {
        "info": {"description": f"vialign toy world captions, seed {seed}"},
        "images": images,
        "annotations": annotations,
    }


def strip_suffix(question: str) -> str:
    return question.removesuffix(SHORT_ANSWER_SUFFIX).rstrip()


def vqa_sets(scenes: list[tuple[Scene, str]], seed: int) -> tuple[list[dict], dict[str, Any]]:
    questions, annotations = [], []
    makers: dict[str, Callable] = {"attribute": short_answer, "count": counting}
    for image_id, (scene, image) in enumerate(scenes, start=1):
        for category, make in makers.items():
            rng = random.Random(f"vialign-toyworld:{seed}:vqa:{category}:{image_id}")
            ((question, answer),) = make(scene, rng)
            qid = len(questions) + 1
            answer = answer.lower()
            questions.append(
                {"question_id": qid, "image": image, "text": strip_suffix(question), "category": category}
            )
            annotations.append(
                {
                    "question_id": qid,
                    "image_id": image_id,
                    "answer_type": "number" if category == "count" else "other",
                    "multiple_choice_answer": answer,
                    "answers": [
                        {"answer": answer, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)
                    ],
                }
            )
    return questions, {"annotations": annotations}


def mc_rows(scenes: list[tuple[Scene, str]], seed: int) -> list[dict[str, Any]]:
    rows = []
    for k, (scene, image) in enumerate(scenes, start=1):
        question, options, right = mc_item(scene, random.Random(f"vialign-toyworld:{seed}:mc:{k}"))
        letters = "ABCD"[: len(options)]
        rows.append(
            {
                "question_id": k,
                "image": image,
                "question": question,
                "options": dict(zip(letters, options, strict=True)),
                "answer": letters[right],
            }
        )
    return rows


def text_rows(n_per_task: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for task, make in TEXT_TASKS.items():
        for k in range(n_per_task):
            prompt, answer = make(random.Random(f"vialign-toyworld:{seed}:eval-text:{task}:{k}"))
            rows.append({"question_id": len(rows) + 1, "task": task, "text": prompt, "answer": answer})
    return rows


JUDGE_QUESTIONS = (
    "Describe the image in detail.",
    "What objects can you see in the image, and where are they?",
)


def judge_rows(scenes: list[tuple[Scene, str]], seed: int, limit: int = 50) -> list[dict[str, Any]]:
    rng = random.Random(f"vialign-toyworld:{seed}:judge")
    return [
        {
            "question_id": k,
            "image": image,
            "text": rng.choice(JUDGE_QUESTIONS),
            "reference": neutral_caption(scene, 0),
        }
        for k, (scene, image) in enumerate(scenes[:limit], start=1)
    ]


def facts_rows(scenes: list[tuple[Scene, str]], seed: int) -> list[dict[str, Any]]:
    """Open questions about every held-out scene, the scene beside each (the `facts` bench reads its
    answers' claims against it)."""
    rng = random.Random(f"vialign-toyworld:{seed}:facts")
    return [
        {"question_id": k, "image": image, "text": rng.choice(JUDGE_QUESTIONS), "scene": scene.to_json()}
        for k, (scene, image) in enumerate(scenes, start=1)
    ]
