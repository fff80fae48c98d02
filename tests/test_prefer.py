"""Preference data and DPO: judge parsing and failures, the pair rule, TRL loss parity, log-prob
alignment over the expanded image sequence, the reference cache, and training."""

import copy
import json
import shutil

import pytest
import torch

from vialign.generation.base import ModelSettings
from vialign.generation.cache import ResponseCache
from vialign.models.encoding import IGNORE_INDEX
from vialign.models.loading import load_llava
from vialign.prefer.judge import (
    ASPECTS,
    MalformedRatings,
    PreferenceJudgeSettings,
    open_judge,
    parse_ratings,
    render_prompt,
)
from vialign.prefer.pairs import PairSettings, build_pairs, pick_pair, trl_record
from vialign.prefer.sample import ResponseSampler, SampleSettings
from vialign.records import read_samples
from vialign.toyworld.oracle import oracle_ratings
from vialign.train.dpo import (
    DPOSettings,
    PairCollator,
    PairDataset,
    dpo_encoder,
    encode_pairs,
    preference_loss,
    reference_key,
    reference_logps,
    sequence_logps,
    train_dpo,
)


def rating(h, c, o, x=2, v=2):
    return {"helpfulness": h, "correctness": c, "coherence": o, "complexity": x, "verbosity": v}


# ---------------------------------------------------------------- judging


def test_parse_ratings_is_strict():
    good = json.dumps({"ratings": [rating(4, 4, 4), rating(1, 0, 2)]})
    assert parse_ratings("Response 1 is right; 2 is wrong.\n" + good, 2) == [rating(4, 4, 4), rating(1, 0, 2)]
    bad = [
        ("no json here", "no JSON object"),
        ('{"ratings": [' + json.dumps(rating(4, 4, 4)) + "]}", "expected a list of 2"),
        (json.dumps({"ratings": [rating(4, 4, 5), rating(1, 1, 1)]}), "integer from 0 to 4"),
        (json.dumps({"ratings": [rating(4, 4, 4.5), rating(1, 1, 1)]}), "integer from 0 to 4"),
        (json.dumps({"ratings": [{"helpfulness": 1}, rating(1, 1, 1)]}), "exactly the aspects"),
        (good + " and more words", "text after"),
        ('{"ratings": [1, 2', "no JSON object|not valid JSON"),
    ]
    for reply, reason in bad:
        with pytest.raises(MalformedRatings, match=reason):
            parse_ratings(reply, 2)


def test_prompt_lists_every_response_without_image_tags():
    text = render_prompt(PreferenceJudgeSettings().prompt, "<image>\nWhat is it?", ["A circle.", "A square."])
    assert "[Response 1]\nA circle." in text and "[Response 2]\nA square." in text
    assert "<image>" not in text and "What is it?" in text and "each of the 2 responses" in text


def test_the_judge_sees_its_json_shape_as_json_and_braces_in_answers_stay():
    import json
    import re

    text = render_prompt(PreferenceJudgeSettings().prompt, "Q {k}?", ["{responses} {{x}}", "B"])
    assert "{{" not in text.split("[Question]")[0]
    shape = next(line for line in text.splitlines() if line.startswith('{"ratings"'))
    example = json.loads(re.sub(r": [a-z]\b", ": 1", shape.replace(", ...", "")))
    assert set(example["ratings"][0]) == {
        "helpfulness",
        "correctness",
        "coherence",
        "complexity",
        "verbosity",
    }
    assert "Q {k}?" in text and "{responses} {{x}}" in text, "values are inserted verbatim, never re-read"


def test_a_malformed_judge_reply_never_crashes_the_run(tmp_path):
    from tests.fault_server import FaultServer

    good = json.dumps({"ratings": [rating(4, 4, 4), rating(0, 0, 1)]})

    def reply(prompt):
        if "garbage" in prompt:
            return "I think the first is better."
        if "FLAKY" in prompt and server.attempts[prompt] == 1:
            return "Let me think. {ratings: oops"
        return "Reasoning first. " + good

    server = FaultServer(reply=reply)
    settings = PreferenceJudgeSettings(target=server.url, model=ModelSettings(model_name="judge"))
    judge = open_judge(settings, ResponseCache(tmp_path / "cache.jsonl"), tmp_path)
    groups = [
        {"id": "ok", "question": "Q1", "responses": ["a", "b"]},
        {"id": "bad", "question": "garbage", "responses": ["a", "b"]},
        {"id": "flaky", "question": "FLAKY", "responses": ["a", "b"]},
        {"id": "down", "question": "FAULT:500", "responses": ["a", "b"]},
    ]
    results = judge.rate(groups)
    assert results[0]["ratings"] == [rating(4, 4, 4), rating(0, 0, 1)]
    assert results[1]["ratings"] is None and "no JSON object" in results[1]["error"]
    assert results[2]["ratings"] is not None, "a malformed reply is asked once more"
    assert results[3]["ratings"] is None and "rerun to retry" in results[3]["error"]
    asked = sum(server.attempts.values())
    again = open_judge(settings, ResponseCache(tmp_path / "cache.jsonl"), tmp_path).rate(groups[:3])
    assert [r["ratings"] for r in again] == [r["ratings"] for r in results[:3]]
    assert sum(server.attempts.values()) == asked, "cached ratings (and cached failures) are not asked again"
    pairs, counts = build_pairs([{**g, **r} for g, r in zip(groups, results, strict=True)], PairSettings())
    assert [p["id"] for p in pairs] == ["ok", "flaky"] and counts["unrated"] == 2


def test_oracle_ratings_follow_the_scene(toyworld):
    sample = next(
        s
        for s in read_samples(toyworld / "corpus.jsonl")
        if s.meta.subset == "detail" and not s.meta.corruption
    )
    scene = sample.meta.truth["scene"]
    truthful = oracle_ratings(sample.answers[0], scene)
    assert truthful["correctness"] == 4
    wrong = oracle_ratings(
        "There is a large orange triangle and a small yellow diamond at the center.", scene
    )
    if any(o["colour"] == "orange" and o["shape"] == "triangle" for o in scene["objects"]):
        pytest.skip("the lie happens to be true in this scene")
    assert wrong["correctness"] < truthful["correctness"] and wrong["helpfulness"] < truthful["helpfulness"]
    cut = oracle_ratings(sample.answers[0].rsplit(" ", 3)[0], scene)
    assert cut["coherence"] < truthful["coherence"]
    assert set(truthful) == set(ASPECTS) and all(0 <= v <= 4 for v in truthful.values())


# ---------------------------------------------------------------- pairs


def test_pair_rule_on_a_fixed_table():
    table = {
        "g1": [rating(4, 4, 4), rating(3, 3, 3), rating(1, 1, 1), rating(2, 1, 1)],  # scores 12, 9, 3, 4
        "g2": [rating(2, 2, 2), rating(2, 2, 1), rating(2, 1, 2)],  # 6, 5, 5: gap < 2, skipped
        "g3": [rating(1, 1, 1), rating(2, 2, 1)],  # 3, 5: chosen 1, rejected 0
        "g4": [rating(3, 3, 3), rating(3, 3, 3), rating(0, 0, 0)],  # tie at the top: first best
    }
    settings = PairSettings(gap=2, seed=0)
    picked = {g: pick_pair(g, r, settings) for g, r in table.items()}
    assert picked["g1"][0] == 0 and picked["g1"][1] in (1, 2, 3)
    assert picked["g2"] is None and picked["g3"] == (1, 0) and picked["g4"] == (0, 2)
    assert pick_pair("g1", table["g1"], settings) == picked["g1"], "seeded"
    rejected = {pick_pair("g1", table["g1"], PairSettings(seed=s))[1] for s in range(20)}
    assert rejected == {1, 2, 3}, "rejected is drawn among every response at least `gap` below the best"
    assert {pick_pair("g1", table["g1"], PairSettings(gap=4, seed=s))[1] for s in range(20)} == {2, 3}
    assert pick_pair("g1", table["g1"], PairSettings(gap=9)) == (0, 2)
    assert pick_pair("g1", table["g1"], PairSettings(gap=10)) is None


def test_pair_records_in_vialign_and_trl_formats():
    group = {
        "id": "g",
        "image": "images/a.png",
        "question": "<image>\nWhat is it?",
        "responses": ["good", "bad"],
        "ratings": [rating(4, 4, 4), rating(0, 0, 0)],
        "judge": {"judge": "x"},
    }
    (pair,), _ = build_pairs([group], PairSettings())
    assert pair["chosen"] == "good" and pair["rejected"] == "bad"
    assert pair["conversations"] == [{"from": "human", "value": "<image>\nWhat is it?"}]
    assert pair["meta"]["preference"]["scores"] == [12, 0]
    assert trl_record(pair) == {
        "images": ["images/a.png"],
        "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "good"}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "bad"}]}],
    }


# ---------------------------------------------------------------- log-probs and the loss


def encoded_batch(tiny_model_dir, pairs_file, toyworld, n=3):
    model, processor = load_llava(tiny_model_dir)
    encoder = dpo_encoder(processor, DPOSettings(use_cpu=True))
    pairs, quarantined = encode_pairs(encoder, pairs_file)
    assert not quarantined
    dataset = PairDataset(pairs[:n], toyworld)
    collator = PairCollator(processor.tokenizer.pad_token_id, processor.image_processor)
    return model, processor, dataset, collator, collator([dataset[i] for i in range(n)])


def test_summed_logps_equal_a_manual_forward_over_the_expanded_sequence(tiny_model_dir, pairs_file, toyworld):
    model, processor, dataset, _, batch = encoded_batch(tiny_model_dir, pairs_file, toyworld)
    with torch.no_grad():
        logps, tokens = sequence_logps(model, **batch)
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    for row in range(3):
        ids, labels = dataset.pairs[row].chosen
        assert ids.count(image_id) > 1, "the image is expanded in the ids"
        pixels = processor.image_processor(
            images=[__import__("PIL.Image").Image.open(dataset[row]["images"][0]).convert("RGB")],
            return_tensors="pt",
        )["pixel_values"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids]), pixel_values=pixels).logits[0]
        manual = sum(
            torch.log_softmax(logits[t - 1], -1)[ids[t]].item()
            for t in range(1, len(ids))
            if labels[t] != IGNORE_INDEX
        )
        assert logps[row].item() == pytest.approx(manual, abs=1e-4)
        assert tokens[row].item() == sum(label != IGNORE_INDEX for label in labels[1:])


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_loss_equals_trls_on_the_same_batch_and_logps(
    tiny_model_dir, pairs_file, toyworld, loss_type, tmp_path
):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, processor, _, _, batch = encoded_batch(tiny_model_dir, pairs_file, toyworld)
    model.eval()
    with torch.no_grad():
        policy, tokens = sequence_logps(model, **batch)
    chosen, rejected = policy.chunk(2)
    ref_chosen, ref_rejected = (
        chosen - torch.tensor([0.3, -0.2, 0.5]),
        rejected + torch.tensor([0.2, 0.4, -0.1]),
    )
    ours = preference_loss(
        chosen, rejected, ref_chosen, ref_rejected, 0.1, loss_type, *tokens.chunk(2)
    ).mean()
    placeholder = Dataset.from_list(
        [
            {
                "images": [],
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "assistant", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            }
        ]
    )
    config = DPOConfig(
        output_dir=str(tmp_path), use_cpu=True, max_length=None, beta=0.1, loss_type=[loss_type], report_to=[]
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model),
        args=config,
        train_dataset=placeholder,
        processing_class=processor,
    )
    trainer.precompute_ref_logps = True  # hand TRL the same reference log-probs
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "pixel_values": batch["pixel_values"],
        "completion_mask": (batch["labels"] != IGNORE_INDEX).long(),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    model.eval()
    with torch.no_grad():
        theirs = trainer._compute_loss(trainer.model, inputs, False)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


# ---------------------------------------------------------------- reference cache and training


def test_reference_cache_is_reused_and_invalidated(tiny_model_dir, pairs_file, toyworld, tmp_path):
    model, processor, dataset, collator, _ = encoded_batch(tiny_model_dir, pairs_file, toyworld, n=6)
    encoder = dpo_encoder(processor, DPOSettings())
    key = reference_key(pairs_file, tiny_model_dir, encoder, processor, "float32")
    first, computed = reference_logps(model, dataset, collator, tmp_path / f"{key}.jsonl", 4, False)
    again, recomputed = reference_logps(model, dataset, collator, tmp_path / f"{key}.jsonl", 4, False)
    assert computed == 6 and recomputed == 0 and again == first
    assert reference_key(pairs_file, tiny_model_dir, encoder, processor, "float32") == key
    other_format = dpo_encoder(processor, DPOSettings(chat_format="tokenizer"))
    assert reference_key(pairs_file, tiny_model_dir, other_format, processor, "float32") != key
    assert reference_key(pairs_file, tiny_model_dir, encoder, processor, "bfloat16") != key
    assert (
        reference_key(
            pairs_file,
            tiny_model_dir,
            dpo_encoder(processor, DPOSettings(max_length=512)),
            processor,
            "float32",
        )
        != key
    )
    changed_model = tmp_path / "changed"
    shutil.copytree(tiny_model_dir, changed_model)
    (changed_model / "config.json").write_text(
        (changed_model / "config.json").read_text().replace("}", " }", 1)
    )
    assert reference_key(pairs_file, changed_model, encoder, processor, "float32") != key


def test_dpo_training_prefers_chosen_keeps_vision_frozen_and_reuses_the_cache(
    tiny_model_dir, pairs_file, toyworld, tmp_path
):
    settings = DPOSettings(
        use_cpu=True,
        max_steps=12,
        batch_size=4,
        lr=5e-3,
        warmup_ratio=0.0,
        logging_steps=1,
        ref_cache_dir=tmp_path / "refs",
        beta=0.5,
    )
    first = train_dpo(
        tiny_model_dir, pairs_file, tmp_path / "a", settings, image_root=toyworld, show_progress=False
    )
    assert first.counts["reference_computed"] == 16 and first.counts["pairs"] == 16
    history = json.loads((tmp_path / "a" / "log_history.json").read_text())
    accuracy = [h["rewards/accuracy"] for h in history if "rewards/accuracy" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] and accuracy[-1] > 0.5
    before, _ = load_llava(tiny_model_dir)
    after, _ = load_llava(tmp_path / "a")
    trained = after.state_dict()
    for name, weight in before.state_dict().items():
        if "vision_tower" in name:
            assert torch.equal(weight, trained[name]), name
    second = train_dpo(
        tiny_model_dir,
        pairs_file,
        tmp_path / "b",
        settings.model_copy(update={"max_steps": 1}),
        image_root=toyworld,
        show_progress=False,
    )
    assert second.counts["reference_computed"] == 0 and second.counts["reference_reused"] == 16


def test_sampler_returns_k_different_responses(toyworld, tiny_model_dir):
    settings = SampleSettings(k=3, params={"max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0})
    samples = list(read_samples(toyworld / "corpus.jsonl"))[:2]
    rows = ResponseSampler(settings.model.open(str(tiny_model_dir)), settings, str(toyworld))(samples)
    assert [len(r.value["responses"]) for r in rows] == [3, 3]
    assert len(set(rows[0].value["responses"])) > 1
    assert not any("<image>" in t for r in rows for t in r.value["responses"])
