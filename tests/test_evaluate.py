"""Evaluation: parsers and metrics on hand-computed cases, pycocoevalcap parity, provenance, compare's
intervals, the judge with its cache, and lmms-eval-style loading of a vialign checkpoint."""

import json
import math

import orjson
import pytest

from vialign.evaluate.benches import BENCHES
from vialign.evaluate.compare import compare_results, delta_intervals
from vialign.evaluate.judge import JudgeSettings, parse_rating, rate_answers
from vialign.evaluate.metrics import (
    caption_scores,
    fallback_tokenize,
    java_available,
    normalise_vqa_answer,
    parse_option_letter,
    pope_metrics,
    vqa_score,
    yes_no_exact,
    yes_no_first_sentence,
)
from vialign.evaluate.run import EvalSettings, run_eval
from vialign.generation.base import ModelSettings
from vialign.generation.cache import ResponseCache
from vialign.generation.openai_backend import OpenAIBackend

# ---------------------------------------------------------------- POPE

TRICKY = [  # answer, exact (lmms-eval), first sentence (LLaVA)
    ("No, there is not.", "other", "no"),
    ("Yes.", "other", "yes"),
    ("There is no dog", "other", "no"),
    ("", "other", "yes"),
    ("yes", "yes", "yes"),
    (" No ", "no", "no"),
    ("Yes, there is a dog. It is not red.", "other", "yes"),
    ("The dog is not there.", "other", "no"),
    ("NO", "no", "yes"),  # LLaVA's script only knows "No", "no" and "not"
]


@pytest.mark.parametrize(("answer", "exact", "first_sentence"), TRICKY)
def test_pope_parsers_on_tricky_answers(answer, exact, first_sentence):
    assert yes_no_exact(answer) == exact
    assert yes_no_first_sentence(answer) == first_sentence


def test_pope_metrics_by_hand():
    parsed = ["yes", "yes", "no", "other", "yes", "no"]
    labels = ["yes", "no", "no", "yes", "yes", "yes"]
    # tp 2 (0, 4), fp 1 (1), fn 2 (3: unparsed, 5), tn 1 (2)
    m = pope_metrics(parsed, labels)
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert m["yes_ratio"] == pytest.approx(3 / 6) and m["unparsed"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------- VQA, MC, text


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("The red one.", "red 1"),
        ("yes!", "yes"),
        ("1,000", "1000"),
        ("dont know", "don't know"),
        ("top-left", "top left"),
        ("3.5", "3.5"),
        ("an apple", "apple"),
    ],
)
def test_vqa_normalisation(raw, normalised):
    assert normalise_vqa_answer(raw) == normalised


def test_vqa_accuracy_over_ten_answers_by_hand():
    humans = ["red"] * 3 + ["blue"] * 7
    # gt i = red: 2 other reds → 2/3; gt i = blue: 3 reds among the others → 1
    assert vqa_score("Red", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_score("blue", humans) == 1.0
    assert vqa_score("green", humans) == 0.0
    assert vqa_score("Two", ["2"] * 10) == 1.0
    assert vqa_score("red", ["red"] + ["blue"] * 9) == pytest.approx(0.1 * 0 + 0.9 * (1 / 3))


@pytest.mark.parametrize(
    ("answer", "letter"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(C) purple", "C"),
        ("The answer is A", "A"),
        ("purple", "C"),
        ("E", None),
        ("I think so", None),
        ("a", None),
        ("A dog is running, so the answer is B.", "B"),
        ("A", "A"),
        ("A.", "A"),
        ("A is correct", "A"),
        ("I think it is C", "C"),
        ("Option B", "B"),
        ("B) blue", "B"),
        ("A cat sits. C", "C"),
        ("(C) a cat", "C"),
        ("A red one", None),
    ],
)
def test_option_letter_parser(answer, letter):
    assert parse_option_letter(answer, {"A": "red", "B": "blue", "C": "purple"}) == letter


def test_text_and_mc_aggregates_by_hand():
    text = BENCHES["text"].aggregate(
        [
            {"task": "t1", "exact": True, "normalised": True},
            {"task": "t1", "exact": False, "normalised": True},
            {"task": "t2", "exact": False, "normalised": False},
            {"task": "t2", "exact": False, "normalised": False},
        ]
    )
    assert text == {
        "exact_match": 0.25,
        "normalised_match": 0.5,
        "t1/normalised_match": 1.0,
        "t2/normalised_match": 0.0,
    }
    mc = BENCHES["mc"].aggregate([{"parsed": "A", "correct": True}, {"parsed": None, "correct": False}])
    assert mc == {"accuracy": 0.5, "unparsed": 0.5}


# ---------------------------------------------------------------- captions

REFS = {
    1: [
        "A red circle in the top left corner.",
        "There is a red circle at the top left.",
        "A small red circle.",
    ],
    2: ["Two blue squares side by side.", "Two squares, both blue.", "A pair of blue squares."],
    3: [
        "A green triangle in the middle.",
        "One green triangle at the centre.",
        "A triangle, green, centred.",
    ],
}
PREDS = {1: "A red circle at the top left.", 2: "Two blue squares.", 3: "A yellow cross."}


def test_cider_and_bleu_equal_pycocoevalcap_called_directly():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    ours = caption_scores(REFS, PREDS)
    if java_available():
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tok = PTBTokenizer()
        gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
        res = tok.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    else:
        gts, res = fallback_tokenize(REFS), fallback_tokenize({k: [v] for k, v in PREDS.items()})
    cider, per_image = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert ours["metrics"]["CIDEr"] == pytest.approx(cider, abs=1e-12)
    assert ours["metrics"]["BLEU-4"] == pytest.approx(bleu[3], abs=1e-12)
    assert list(ours["per_image_cider"].values()) == pytest.approx(list(per_image))
    assert ours["metrics"]["CIDEr"] == pytest.approx(sum(per_image) / 3)
    assert ours["per_image_cider"][3] < ours["per_image_cider"][1]


def test_a_caption_equal_to_every_reference_scores_bleu_one():
    refs = {1: ["a red circle at the top left"] * 3, 2: ["two blue squares side by side"] * 3}
    result = caption_scores(refs, {1: "a red circle at the top left", 2: "two blue squares side by side"})
    assert result["metrics"]["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.skipif(not java_available(), reason="needs Java for the PTB tokenizer")
def test_fallback_tokenizer_matches_ptb_on_plain_sentences():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ptb = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    assert fallback_tokenize(REFS) == ptb


# ---------------------------------------------------------------- runs and provenance


def small_settings(**extra):
    return EvalSettings(benches=["pope", "caption", "vqa", "mc", "text"], limit=6, **extra)


def test_results_carry_provenance_that_is_stable_across_reruns(toyworld, tiny_model_dir, tmp_path):
    first = run_eval(
        str(tiny_model_dir), toyworld / "eval", tmp_path / "a", small_settings(), toyworld, False
    )
    again = run_eval(
        str(tiny_model_dir), toyworld / "eval", tmp_path / "b", small_settings(), toyworld, False
    )
    assert first["model"]["fingerprint"].startswith("sha256:")
    assert {"python", "torch", "transformers", "pycocoevalcap", "vialign"} <= set(first["versions"])
    for name, entry in first["benchmarks"].items():
        assert {"prompt", "parser", "generation", "data", "metrics", "samples", "chat_format"} <= set(
            entry
        ), name
        assert all(v.startswith("sha256:") for v in entry["data"].values())
        assert len(entry["samples"]) == entry["n"] == 6
        assert all("prediction" in s for s in entry["samples"])
    assert first["benchmarks"]["pope"]["parser"] == "first_sentence"
    assert first["benchmarks"]["pope"]["generation"]["temperature"] == 0.0
    assert {k: v for k, v in first.items() if k != "run"} == {k: v for k, v in again.items() if k != "run"}
    on_disk = orjson.loads((tmp_path / "a" / "results.json").read_bytes())
    assert on_disk["benchmarks"]["vqa"]["metrics"] == first["benchmarks"]["vqa"]["metrics"]


def test_the_parser_choice_changes_pope_and_is_recorded(toyworld, tiny_model_dir, tmp_path):
    settings = EvalSettings(benches=["pope"], limit=6, pope_parser="exact")
    result = run_eval(str(tiny_model_dir), toyworld / "eval", tmp_path, settings, toyworld, False)
    pope = result["benchmarks"]["pope"]
    assert pope["parser"] == "exact"
    assert [s["parsed"] for s in pope["samples"]] == [yes_no_exact(s["prediction"]) for s in pope["samples"]]


def test_missing_benchmark_files_are_named(tmp_path, tiny_model_dir):
    with pytest.raises(FileNotFoundError, match="pope"):
        run_eval(
            str(tiny_model_dir),
            tmp_path,
            tmp_path / "out",
            EvalSettings(benches=["vqa", "pope"]),
            None,
            False,
        )
    with pytest.raises(
        ValueError,
        match=r"(?s)benches.*'pope', 'caption', 'vqa', 'mc', 'text', 'judge', 'ifeval', 'drift' or 'facts'",
    ):
        EvalSettings(benches=["mmmu"])


# ---------------------------------------------------------------- compare


def fake_results(path, correct):
    samples = [{"id": str(i), "parsed": "A" if c else "B", "correct": c} for i, c in enumerate(correct)]
    result = {"benchmarks": {"mc": {"metrics": BENCHES["mc"].aggregate(samples), "samples": samples}}}
    path.write_bytes(orjson.dumps(result))
    return path


def test_compare_intervals_on_a_fixed_seed(tmp_path):
    import random

    rng = random.Random(3)
    coin = [rng.random() < 0.5 for _ in range(400)]
    better = [c or rng.random() < 0.4 for c in coin]
    a, b = fake_results(tmp_path / "a.json", coin), fake_results(tmp_path / "b.json", better)
    rows = compare_results([a, b, a], resamples=400, seed=7)
    again = compare_results([a, b, a], resamples=400, seed=7)
    assert rows == again
    acc = next(r for r in rows if r["metric"] == "accuracy")
    low, high = acc["intervals"][0]
    p = sum(coin) / 400
    assert low < p < high
    assert (high - low) == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 400), rel=0.25)
    d_low, d_high = acc["delta_intervals"][0]
    assert acc["deltas"][0] == pytest.approx(sum(better) / 400 - p)
    assert 0 < d_low < acc["deltas"][0] < d_high  # paired: b is never worse on a shared sample
    assert acc["delta_intervals"][1] == (0.0, 0.0) and acc["deltas"][1] == 0.0
    assert compare_results([a, b], resamples=400, seed=8) != rows[:2]


def test_delta_intervals_are_the_paired_intervals_compare_results_gives(tmp_path):
    import random

    rng = random.Random(5)
    coin = [rng.random() < 0.5 for _ in range(120)]
    a = fake_results(tmp_path / "a.json", coin)
    b = fake_results(tmp_path / "b.json", [c != (rng.random() < 0.3) for c in coin])
    rows = compare_results([a, b], resamples=300, seed=4, all_metrics=True)
    base, other = orjson.loads(a.read_bytes()), orjson.loads(b.read_bytes())
    expected = {(r["bench"], r["metric"]): r["delta_intervals"][0] for r in rows}
    assert delta_intervals(base, other, 300, seed=4) == expected
    assert delta_intervals(base, other, 300, seed=5) != expected
    assert delta_intervals(base, other, 300, seed=4, benches={"vqa"}) == {}


# ---------------------------------------------------------------- judge


def test_parse_rating():
    assert parse_rating("Good answer. Rating: [[7]]") == 7.0
    assert parse_rating("[[3]] at first, but on reflection Rating: [[8.5]]") == 8.5
    assert parse_rating("Rating: 7") is None and parse_rating("[[11]]") is None and parse_rating("") is None


def test_judge_ratings_are_cached_and_malformed_replies_never_crash(tmp_path):
    from tests.fault_server import FaultServer

    def reply(prompt):
        if "garbled" in prompt:
            return "I cannot decide."
        return "Fine. Rating: [[9]]" if "circle" in prompt else "Weak. Rating: [[2]]"

    server = FaultServer(reply=reply)
    settings = JudgeSettings(target=server.url, model=ModelSettings(model_name="judge-x"), batch_size=2)
    judge = settings.model.open(server.url)
    assert isinstance(judge, OpenAIBackend)
    items = [
        {"id": "1", "question": "What is it?", "answer": "A red circle.", "images": []},
        {"id": "2", "question": "What is it?", "answer": "A thing.", "images": []},
        {"id": "3", "question": "What is it?", "answer": "garbled", "images": []},
    ]
    cache = ResponseCache(tmp_path / "cache.jsonl")
    rated = rate_answers(judge, settings, cache, items, tmp_path)
    assert [r["rating"] for r in rated] == [9.0, 2.0, None]
    assert rated[2]["judge_reply"] == "I cannot decide."
    asked = sum(server.attempts.values())
    assert asked == 4  # the unparsable reply was asked once more
    again = rate_answers(judge, settings, ResponseCache(tmp_path / "cache.jsonl"), items, tmp_path)
    assert [r["rating"] for r in again] == [9.0, 2.0, None] and all(r["cached"] for r in again)
    assert sum(server.attempts.values()) == asked, "a cached rating was asked again"
    other_prompt = settings.model_copy(update={"prompt": settings.prompt + "\nBe strict."})
    rate_answers(judge, other_prompt, ResponseCache(tmp_path / "cache.jsonl"), items[:1], tmp_path)
    assert sum(server.attempts.values()) == asked + 1, "a changed prompt must not be served from the cache"
    entry = json.loads((tmp_path / "cache.jsonl").read_text().splitlines()[0])
    assert entry["judge"] == {"backend": "openai", "base_url": server.url, "model": "judge-x"}
    judge.close()


def test_judge_benchmark_end_to_end(toyworld, tiny_model_dir, tmp_path):
    from tests.fault_server import FaultServer

    server = FaultServer(reply=lambda prompt: "Rating: [[6]]")
    settings = EvalSettings(benches=["judge"], limit=4, judge=JudgeSettings(target=server.url))
    result = run_eval(str(tiny_model_dir), toyworld / "eval", tmp_path, settings, toyworld, False)
    judge = result["benchmarks"]["judge"]
    assert judge["metrics"] == {"mean_rating": 6.0, "rated": 1.0}
    assert judge["judge"]["identity"]["base_url"] == server.url and "prompt_sha256" in judge["judge"]
    assert result["run"]["judge_cache_hits"] == 0
    again = run_eval(str(tiny_model_dir), toyworld / "eval", tmp_path, settings, toyworld, False)
    assert again["run"]["judge_cache_hits"] == 4


# ---------------------------------------------------------------- interop


def test_a_vialign_checkpoint_loads_and_generates_as_lmms_eval_llava_hf_does(toyworld, tiny_model_dir):
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vialign.generation.base import ChatRequest, GenerationParams
    from vialign.generation.local import TransformersBackend

    model = LlavaForConditionalGeneration.from_pretrained(str(tiny_model_dir), dtype="auto")
    processor = AutoProcessor.from_pretrained(str(tiny_model_dir))
    processor.tokenizer.padding_side = "left"
    messages = [{"role": "user", "content": "<image>\nWhat color is the circle?"}]
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image = Image.open(toyworld / "images" / "eval" / "000000.png").convert("RGB")
    inputs = processor(images=[image], text=text, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    answer = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    backend = TransformersBackend.load(tiny_model_dir)
    assert inputs["input_ids"][0].tolist() == backend.prompt_ids(ChatRequest("q", messages))
    ours = backend.generate(
        [ChatRequest("q", messages, [toyworld / "images" / "eval" / "000000.png"])],
        GenerationParams(max_new_tokens=6),
    )[0].text
    assert answer.strip() == ours
