"""The verifiable-instruction benchmark: every instruction kind vialign writes passes a response that
follows it and fails one that does not; IFEval's four accuracies by hand; the prompts and the benchmark
end to end."""

import json

import pytest

from vialign.align.gap import answer_nll
from vialign.evaluate.ifeval import KINDS, check_response, ifeval_metrics, ifeval_prompts
from vialign.records import Sample, read_jsonl

LONG = " ".join(["word"] * 70)
CASES = {
    "length_constraints:number_words": (
        {"relation": "at least", "num_words": 60},
        LONG,
        "Too short.",
    ),
    "length_constraints:number_sentences": (
        {"relation": "less than", "num_sentences": 3},
        "One sentence. Two sentences.",
        "One. Two. Three. Four.",
    ),
    "length_constraints:number_paragraphs": (
        {"num_paragraphs": 2},
        "First part here.\n***\nSecond part here.",
        "Only one paragraph here.",
    ),
    "keywords:existence": ({"keywords": ["bright", "calm"]}, "A bright and calm day.", "A bright day."),
    "keywords:forbidden_words": ({"forbidden_words": ["very", "nice"]}, "A fine day.", "A very fine day."),
    "keywords:frequency": (
        {"keyword": "blue", "frequency": 2, "relation": "at least"},
        "Blue sky, blue sea.",
        "A blue sky.",
    ),
    "change_case:english_lowercase": (
        {},
        "the sky is blue and the grass is green today.",
        "The sky is Blue.",
    ),
    "change_case:english_capital": ({}, "THE SKY IS BLUE AND THE GRASS IS GREEN TODAY.", "The sky is blue."),
    "change_case:capital_word_frequency": (
        {"capital_frequency": 2, "capital_relation": "at least"},
        "This is VERY VERY important.",
        "This is Very important.",
    ),
    "detectable_format:number_bullet_lists": (
        {"num_bullets": 2},
        "* first point\n* second point",
        "* only one point",
    ),
    "detectable_format:json_format": ({}, '{"answer": "a red circle"}', "a red circle"),
    "detectable_format:title": ({}, "<<Shapes>>\nA red circle.", "Shapes\nA red circle."),
    "startend:end_checker": (
        {"end_phrase": "That is all."},
        "A red circle. That is all.",
        "That is all. A circle.",
    ),
    "startend:quotation": ({}, '"A red circle."', "A red circle."),
    "detectable_content:postscript": ({"postscript_marker": "P.S."}, "Hello.\nP.S. Bye.", "Hello. Bye."),
    "punctuation:no_comma": ({}, "Red and blue.", "Red, blue."),
    "detectable_format:constrained_response": ({}, "My answer is yes.", "Perhaps."),
    "detectable_content:number_placeholders": ({"num_placeholders": 1}, "Dear [name], hello.", "Dear Ann."),
}


def record(kind, kwargs):
    return {"key": 0, "prompt": "p", "instruction_id_list": [kind], "kwargs": [kwargs]}


def test_every_kind_the_prompts_use_has_a_case():
    assert set(CASES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_following_response_passes_and_another_fails(kind):
    kwargs, good, bad = CASES[kind]
    assert check_response(record(kind, kwargs), good)["strict"] == [True], good
    assert check_response(record(kind, kwargs), bad)["strict"] == [False], bad


def test_loose_mode_forgives_what_ifeval_forgives():
    # IFEval's loose mode also tries the response without its first line and without markdown stars
    rec = record("detectable_format:json_format", {})
    result = check_response(rec, 'Sure! Here it is:\n{"answer": "a red circle"}')
    assert result["strict"] == [False] and result["loose"] == [True]
    lower = record("change_case:english_lowercase", {})
    result = check_response(lower, "Sure:\nthe sky is blue and the grass is green today.")
    assert result == {"instructions": [lower["instruction_id_list"][0]], "strict": [False], "loose": [True]}


def test_an_empty_answer_fails_every_instruction():
    rec = {"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "startend:quotation"]}
    rec["kwargs"] = [{}, {}]
    assert check_response(rec, "") == {
        "instructions": rec["instruction_id_list"],
        "strict": [False, False],
        "loose": [False, False],
    }


def test_metrics_are_ifevals_four_accuracies():
    records = [
        {"instructions": ["a:x", "b:y"], "strict": [True, False], "loose": [True, True]},
        {"instructions": ["a:x"], "strict": [True], "loose": [True]},
        {"instructions": ["b:y"], "strict": [False], "loose": [False]},
    ]
    m = ifeval_metrics(records)
    assert m["prompt_level_strict"] == pytest.approx(1 / 3)
    assert m["prompt_level_loose"] == pytest.approx(2 / 3)
    assert m["instruction_level_strict"] == pytest.approx(2 / 4)
    assert m["instruction_level_loose"] == pytest.approx(3 / 4)
    assert m["x/instruction_strict"] == 1.0 and m["y/instruction_strict"] == 0.0


def test_prompts_are_deterministic_cover_every_kind_and_never_pair_conflicts():
    prompts = ifeval_prompts(60, seed=3)
    assert prompts == ifeval_prompts(60, seed=3) and prompts != ifeval_prompts(60, seed=4)
    used = {k for p in prompts for k in p["instruction_id_list"]}
    assert used == set(KINDS)
    for p in prompts:
        assert len(p["instruction_id_list"]) == len(p["kwargs"]) in (1, 2)
        assert len(set(p["instruction_id_list"])) == len(p["instruction_id_list"])
        assert json.loads(json.dumps(p)) == p


def test_ifeval_and_drift_benchmarks_end_to_end(tiny_model_dir, toyworld, tmp_path):
    from vialign.evaluate.run import EvalSettings, run_eval

    drift = tmp_path / "drift"
    (drift / "drift").mkdir(parents=True)
    rows = [
        {"question_id": f"d{i}", "text": "Name a colour.", "answer": "red circle " * (i + 1)}
        for i in range(4)
    ]
    (drift / "drift" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = EvalSettings(
        benches=["ifeval", "drift"],
        limit=6,
        bench={"ifeval": {"max_new_tokens": 8}, "drift": {"data": str(drift)}},
    )
    results = run_eval(str(tiny_model_dir), toyworld / "eval", tmp_path / "out", settings, toyworld, False)
    ifeval = results["benchmarks"]["ifeval"]
    assert ifeval["n"] == 6 and ifeval["parser"] == "if_verifiable_ifeval_checkers"
    prompts = {str(r["key"]): r for r in read_jsonl(toyworld / "eval" / "ifeval" / "prompts.jsonl")}
    said = {r["id"]: r["prediction"] for r in read_jsonl(tmp_path / "out" / "predictions" / "ifeval.jsonl")}
    for sample in ifeval["samples"]:  # each answer checked against its own prompt's instructions
        checked = check_response(prompts[sample["id"]], said[sample["id"]])
        assert (sample["strict"], sample["loose"]) == (checked["strict"], checked["loose"])
    strict = [s["strict"] for s in ifeval["samples"]]
    assert ifeval["metrics"]["prompt_level_strict"] == pytest.approx(sum(map(all, strict)) / 6)
    assert ifeval["metrics"]["instruction_level_strict"] == pytest.approx(
        sum(map(sum, strict)) / sum(map(len, strict))
    )
    drift_entry = results["benchmarks"]["drift"]
    assert drift_entry["metrics"]["scored"] == 1.0
    asked = [
        Sample(
            id=r["question_id"],
            conversations=[{"from": "human", "value": r["text"]}, {"from": "gpt", "value": r["answer"]}],
        )
        for r in rows
    ]
    expected = {r["id"]: r["nll"] for r in answer_nll(tiny_model_dir, asked).per_sample}
    assert {s["id"]: s["nll"] for s in drift_entry["samples"]} == pytest.approx(expected, abs=1e-4)
    assert not (tmp_path / "out" / "predictions" / "drift.jsonl").exists(), "drift generates nothing"
