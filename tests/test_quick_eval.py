"""The quick held-out VQA probe agrees with the generation backend answering the same prompts."""

import orjson

from vialign.data.formats import SHORT_ANSWER_SUFFIX
from vialign.evaluate.quick import normalise, vqa_accuracy
from vialign.generation.base import ChatRequest, GenerationParams
from vialign.generation.local import TransformersBackend
from vialign.records import read_jsonl


def test_normalise():
    assert normalise(" Red.") == "red" and normalise("Top left!") == "top left" and normalise("3") == "3"


def test_quick_accuracy_equals_backend_answers(toyworld, tiny_model_dir):
    accuracy = vqa_accuracy(tiny_model_dir, toyworld / "eval", limit=12, batch=5)
    questions = list(read_jsonl(toyworld / "eval" / "vqa" / "questions.jsonl"))[:12]
    truth = {a["question_id"]: a["multiple_choice_answer"]
             for a in orjson.loads((toyworld / "eval" / "vqa" / "annotations.json").read_bytes())["annotations"]}  # fmt: skip
    backend = TransformersBackend.load(tiny_model_dir)
    requests = [ChatRequest(str(q["question_id"]), [{"role": "user", "content": f"<image>\n{q['text']}\n{SHORT_ANSWER_SUFFIX}"}],
                            [toyworld / q["image"]]) for q in questions]  # fmt: skip
    answers = [r.text for r in backend.generate(requests, GenerationParams(max_new_tokens=8))]
    expected = (
        sum(
            normalise(a) == normalise(truth[q["question_id"]])
            for a, q in zip(answers, questions, strict=True)
        )
        / 12
    )
    assert accuracy == expected
