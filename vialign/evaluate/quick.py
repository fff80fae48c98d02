"""A quick held-out short-answer accuracy on the toy world's VQA set (the full suite is `vialign eval`)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from vialign.data.formats import SHORT_ANSWER_SUFFIX
from vialign.generation.local import generate_batch
from vialign.models.encoding import ChatEncoder, EncoderSettings
from vialign.models.loading import load_llava, processor_image_tokens
from vialign.records import IMAGE_TAG, read_jsonl


def normalise(answer: str) -> str:
    return re.sub(r"[^\w\s]", "", answer.lower()).strip()


def vqa_accuracy(
    model_dir: str | Path, eval_dir: str | Path, limit: int | None = None, batch: int = 64
) -> float:
    model, processor = load_llava(model_dir)
    encoder = ChatEncoder(
        processor.tokenizer, EncoderSettings(image_tokens=processor_image_tokens(processor))
    )
    eval_dir = Path(eval_dir)
    questions = list(read_jsonl(eval_dir / "vqa" / "questions.jsonl"))[:limit]
    truth = {a["question_id"]: a["multiple_choice_answer"]
             for a in orjson.loads((eval_dir / "vqa" / "annotations.json").read_bytes())["annotations"]}  # fmt: skip
    correct = 0
    for start in range(0, len(questions), batch):
        rows = questions[start : start + batch]
        prompts = [f"{IMAGE_TAG}\n{r['text']}\n{SHORT_ANSWER_SUFFIX}" for r in rows]
        answers = generate_batch(
            model, processor, encoder, prompts, [eval_dir.parent / r["image"] for r in rows], max_new_tokens=8
        )
        correct += sum(
            normalise(a) == normalise(truth[r["question_id"]]) for a, r in zip(answers, rows, strict=True)
        )
    return correct / len(questions)
