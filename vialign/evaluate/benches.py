"""The benchmarks: how each reads its usual file format, prompts the model, and scores the answers.

Each benchmark turns its files into `EvalItem`s, and the predictions into per-sample records plus
metrics. `aggregate(records)` recomputes the resamplable metrics from records alone, which is what
`vialign eval compare` bootstraps.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from statistics import fmean as mean
from typing import Any

import orjson

from vialign.evaluate.metrics import (
    POPE_PARSERS,
    caption_scores,
    normalise_text,
    parse_option_letter,
    pope_metrics,
    vqa_score,
)
from vialign.records import read_jsonl


@dataclass
class EvalItem:
    id: str
    text: str  # the user prompt, after the template, without image tags
    images: list[str] = field(default_factory=list)
    truth: dict[str, Any] = field(default_factory=dict)


def by_group(records: Sequence[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[str(r.get(key))].append(r)
    return dict(sorted(groups.items()))


class Pope:
    """POPE jsonl per negative sampling: `{question_id, image, text, label, category}`."""

    name = "pope"
    default_prompt = "{question}\nAnswer the question using a single word or phrase."
    max_new_tokens = 8

    def files(self, data: Path) -> list[Path]:
        # with none present, the pattern itself is reported missing
        return sorted((data / "pope").glob("*.jsonl")) or [data / "pope" / "*.jsonl"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        per_file = [
            [
                EvalItem(
                    f"{f.stem}/{r['question_id']}",
                    prompt.format(question=r["text"]),
                    [r["image"]],
                    {"label": r["label"].lower().strip(), "category": r.get("category", f.stem)},
                )
                for r in read_jsonl(f)
            ]
            for f in self.files(data)
        ]
        # interleaved, so that a `limit` takes every negative-sampling setting alike
        return [item for group in zip_longest(*per_file) for item in group if item is not None]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        parse = POPE_PARSERS[settings.pope_parser]
        return [
            {
                "id": i.id,
                "category": i.truth["category"],
                "prediction": predictions[i.id],
                "parsed": parse(predictions[i.id]),
                "label": i.truth["label"],
            }
            for i in items
        ], {}

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        out = pope_metrics([r["parsed"] for r in records], [r["label"] for r in records])
        for category, group in by_group(records, "category").items():
            for k, v in pope_metrics([r["parsed"] for r in group], [r["label"] for r in group]).items():
                out[f"{category}/{k}"] = v
        return out


class Caption:
    """COCO captions JSON (`images` with `id`, `file_name`; `annotations` with `image_id`, `caption`)."""

    name = "caption"
    default_prompt = "Provide a one-sentence caption for the provided image."
    max_new_tokens = 48

    def files(self, data: Path) -> list[Path]:
        return [data / "caption" / "references.json"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        coco = orjson.loads(self.files(data)[0].read_bytes())
        refs: dict[int, list[str]] = defaultdict(list)
        for a in coco["annotations"]:
            refs[a["image_id"]].append(a["caption"])
        return [
            EvalItem(str(im["id"]), prompt, [im["file_name"]], {"references": refs[im["id"]]})
            for im in coco["images"]
        ]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        result = caption_scores(
            {i.id: i.truth["references"] for i in items},
            {i.id: predictions[i.id] for i in items},
            spice=settings.caption_spice,
            java=settings.caption_java,
        )
        records = [
            {"id": i.id, "prediction": predictions[i.id], "cider": result["per_image_cider"][i.id]}
            for i in items
        ]
        return records, {
            "metrics": result["metrics"],
            "tokenizer": result["tokenizer"],
            "notes": result["notes"],
        }

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        # pycocoevalcap's CIDEr is the mean of per-image scores (document frequencies from the full set)
        return {"CIDEr": mean(r["cider"] for r in records)}


class Vqa:
    """LLaVA-eval question jsonl `{question_id, image, text}` + VQAv2 annotations JSON (10 answers each)."""

    name = "vqa"
    default_prompt = "{question}\nAnswer the question using a single word or phrase."
    max_new_tokens = 12

    def files(self, data: Path) -> list[Path]:
        return [data / "vqa" / "questions.jsonl", data / "vqa" / "annotations.json"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        questions, annotations = self.files(data)
        answers = {
            a["question_id"]: [x["answer"] for x in a["answers"]]
            for a in orjson.loads(annotations.read_bytes())["annotations"]
        }
        return [
            EvalItem(
                str(q["question_id"]),
                prompt.format(question=q["text"]),
                [q["image"]],
                {"answers": answers[q["question_id"]], "category": q.get("category", "all")},
            )
            for q in read_jsonl(questions)
        ]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        return [
            {
                "id": i.id,
                "category": i.truth["category"],
                "prediction": predictions[i.id],
                "score": vqa_score(predictions[i.id], i.truth["answers"]),
            }
            for i in items
        ], {}

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        out = {"accuracy": mean(r["score"] for r in records)}
        for category, group in by_group(records, "category").items():
            out[f"{category}/accuracy"] = mean(r["score"] for r in group)
        return out


class MultipleChoice:
    """`{question_id, image, question, options: {letter: text}, answer: letter}` jsonl."""

    name = "mc"
    default_prompt = "{question}\n{options}\nAnswer with the option's letter from the given choices directly."
    max_new_tokens = 8

    def files(self, data: Path) -> list[Path]:
        return [data / "mc" / "questions.jsonl"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        rows = read_jsonl(self.files(data)[0])
        return [
            EvalItem(
                str(r["question_id"]),
                prompt.format(
                    question=r["question"], options="\n".join(f"{k}. {v}" for k, v in r["options"].items())
                ),
                [r["image"]] if r.get("image") else [],
                {"options": r["options"], "answer": r["answer"]},
            )
            for r in rows
        ]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        out = []
        for i in items:
            letter = parse_option_letter(predictions[i.id], i.truth["options"])
            out.append(
                {
                    "id": i.id,
                    "prediction": predictions[i.id],
                    "parsed": letter,
                    "answer": i.truth["answer"],
                    "correct": letter == i.truth["answer"],
                }
            )
        return out, {}

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        return {
            "accuracy": mean(r["correct"] for r in records),
            "unparsed": mean(r["parsed"] is None for r in records),
        }


class TextTasks:
    """Text-only tasks `{question_id, task, text, answer}`: the retention measure."""

    name = "text"
    default_prompt = "{question}"
    max_new_tokens = 64

    def files(self, data: Path) -> list[Path]:
        return [data / "text" / "tasks.jsonl"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        return [
            EvalItem(
                str(r["question_id"]),
                prompt.format(question=r["text"]),
                [],
                {"answer": r["answer"], "task": r.get("task", "all")},
            )
            for r in read_jsonl(self.files(data)[0])
        ]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        return [
            {
                "id": i.id,
                "task": i.truth["task"],
                "prediction": predictions[i.id],
                "exact": predictions[i.id].strip() == i.truth["answer"].strip(),
                "normalised": normalise_text(predictions[i.id]) == normalise_text(i.truth["answer"]),
            }
            for i in items
        ], {}

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        out = {
            "exact_match": mean(r["exact"] for r in records),
            "normalised_match": mean(r["normalised"] for r in records),
        }
        for task, group in by_group(records, "task").items():
            out[f"{task}/normalised_match"] = mean(r["normalised"] for r in group)
        return out


class Judge:
    """Open questions `{question_id, text, image?, reference?}` rated 1–10 by a judge (MT-Bench single
    answer grading)."""

    name = "judge"
    default_prompt = "{question}"
    max_new_tokens = 128

    def files(self, data: Path) -> list[Path]:
        return [data / "judge" / "questions.jsonl"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        return [
            EvalItem(
                str(r["question_id"]),
                prompt.format(question=r["text"]),
                [r["image"]] if r.get("image") else [],
                {"question": r["text"], "reference": r.get("reference")},
            )
            for r in read_jsonl(self.files(data)[0])
        ]

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        rated = [r["rating"] for r in records if r.get("rating") is not None]
        return {"mean_rating": mean(rated) if rated else float("nan"), "rated": len(rated) / len(records)}


class IFEval:
    """Verifiable instructions in IFEval's format (`ifeval/prompts.jsonl`, or Google's `input_data.jsonl`)."""

    name = "ifeval"
    default_prompt = "{question}"
    max_new_tokens = 256

    def files(self, data: Path) -> list[Path]:
        from vialign.evaluate.ifeval import IFEVAL_FILES

        found = [data / "ifeval" / f for f in IFEVAL_FILES if (data / "ifeval" / f).is_file()]
        return found[:1] or [data / "ifeval" / IFEVAL_FILES[0]]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        return [
            EvalItem(str(r["key"]), prompt.format(question=r["prompt"]), [], {"record": r})
            for r in read_jsonl(self.files(data)[0])
        ]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        from vialign.evaluate.ifeval import check_response

        return [
            {
                "id": i.id,
                "prediction": predictions[i.id],
                **check_response(i.truth["record"], predictions[i.id]),
            }
            for i in items
        ], {}

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        from vialign.evaluate.ifeval import ifeval_metrics

        return ifeval_metrics(records)


class Drift:
    """`drift/answers.jsonl` (`{question_id, text, answer}`, e.g. the base LLM's own answers): the mean
    per-token NLL the evaluated model gives them, text only. Nothing is generated; a rise from the base
    model's own value measures how far tuning moved the model from its manner."""

    name = "drift"
    default_prompt = "{question}"
    max_new_tokens = 1
    generates = False

    def files(self, data: Path) -> list[Path]:
        return [data / "drift" / "answers.jsonl"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        return [
            EvalItem(str(r["question_id"]), prompt.format(question=r["text"]), [], {"answer": r["answer"]})
            for r in read_jsonl(self.files(data)[0])
        ]

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        scored = [r for r in records if r.get("nll") is not None]
        return {
            "mean_nll": mean(r["nll"] for r in scored) if scored else float("nan"),
            "scored": len(scored) / len(records),
        }


class Facts:
    """Open questions about toy-world scenes `{question_id, image, text, scene}`: each answer's claims
    read by the toy world's claim reader and checked against the scene (what CIDEr against one-sentence
    references cannot tell: whether a long answer is right, and which objects it invents)."""

    name = "facts"
    default_prompt = "{question}"
    max_new_tokens = 96

    def files(self, data: Path) -> list[Path]:
        return [data / "facts" / "questions.jsonl"]

    def items(self, data: Path, prompt: str) -> list[EvalItem]:
        return [
            EvalItem(
                str(r["question_id"]), prompt.format(question=r["text"]), [r["image"]], {"scene": r["scene"]}
            )
            for r in read_jsonl(self.files(data)[0])
        ]

    def score(
        self, items: Sequence[EvalItem], predictions: dict[str, str], settings: Any
    ) -> tuple[list[dict], dict]:
        from vialign.toyworld.language import answer_facts

        return [
            {"id": i.id, "prediction": predictions[i.id], **answer_facts(predictions[i.id], i.truth["scene"])}
            for i in items
        ], {}

    def aggregate(self, records: Sequence[dict]) -> dict[str, float]:
        claims = sum(r["claims"] for r in records)
        return {
            # of every claim made, the share the scene bears out
            "fact_precision": sum(r["true_claims"] for r in records) / claims if claims else float("nan"),
            # answers that state at least one fact and no false one
            "correct_answers": mean(r["claims"] > 0 and r["true_claims"] == r["claims"] for r in records),
            "hallucinated_objects": mean(r["hallucinated_objects"] for r in records),
            "object_recall": mean(r["object_recall"] for r in records),
        }


BENCHES: dict[str, Any] = {
    b.name: b
    for b in (Pope(), Caption(), Vqa(), MultipleChoice(), TextTasks(), Judge(), IFEval(), Drift(), Facts())
}
