"""Curation: annotation import, pairs, Bradley–Terry loss, pooling, training, scoring, selection, resume."""

import json
import math
import random
import subprocess
import sys

import pytest
import torch

from tests.resume import kill_then_resume
from vialign.curate.annotations import better_pairs, is_heldout, load_groups, split_groups
from vialign.curate.reward import (
    PreprocessSettings,
    RewardInputs,
    RewardModel,
    answer_text,
    bradley_terry_loss,
    last_token_index,
    load_reward_model,
    questions_text,
)
from vialign.curate.score import CurationScorer, PreprocessMismatch, ScoreSettings, load_scorers
from vialign.curate.select import SelectSettings, select
from vialign.curate.train import (
    RewardCollator,
    RewardTrainSettings,
    build_examples,
    duplicate_part,
    pairwise_accuracy,
    random_crop,
    score_examples,
    shuffle_words,
    train_reward_model,
)
from vialign.models.loading import load_llava
from vialign.records import Sample, read_jsonl, read_samples, write_jsonl


def rm_settings(**train):
    base = {
        "stage": "finetune",
        "lr": 1e-3,
        "batch_size": 4,
        "max_steps": 6,
        "use_cpu": True,
        "logging_steps": 1,
    }
    return RewardTrainSettings(heldout=0.2, train={**base, **train})


@pytest.fixture(scope="module")
def reward_models(toyworld, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rms")
    for kind in ("questions", "answers"):
        train_reward_model(
            tiny_model_dir,
            [toyworld / "annotations" / f"{kind}.jsonl"],
            kind,
            out / kind,
            rm_settings(),
            image_root=toyworld,
        )
    return out


# ---------------------------------------------------------------- annotations and pairs


def test_pairs_drop_ties_and_order_every_strictly_better_pair():
    assert better_pairs([0.9, 0.5, 0.9, 0.1]) == [(0, 1), (0, 3), (1, 3), (2, 1), (2, 3)]
    assert better_pairs([0.4, 0.4, 0.4]) == []
    assert better_pairs([0.2, 0.7]) == [(1, 0)]


def test_bradley_terry_loss_equals_a_hand_computation():
    scores = torch.tensor([2.0, 0.5, -1.0])
    pairs = torch.tensor([[0, 1], [0, 2], [1, 2]])
    by_hand = sum(-math.log(1 / (1 + math.exp(-d))) for d in (1.5, 3.0, 1.5)) / 3
    assert bradley_terry_loss(scores, pairs).item() == pytest.approx(by_hand, abs=1e-6)
    assert bradley_terry_loss(scores, torch.empty((0, 2), dtype=torch.long)).item() == 0.0


def test_pairwise_accuracy_counts_predicted_ties_as_half():
    human = [[0.9, 0.5, 0.1], [0.3, 0.3]]
    predicted = [[3.0, 1.0, 1.0], [0.0, 5.0]]
    # pairs: (0,1) right, (0,2) right, (1,2) tie → 2.5 / 3; the tied human group gives no pair
    assert pairwise_accuracy(human, predicted) == {
        "pairwise_accuracy": round(2.5 / 3, 4),
        "pairs": 3,
        "groups": 2,
    }


def test_bad_annotation_lines_are_rejected_with_line_and_reason(tmp_path):
    good = {
        "group_id": "g1",
        "kind": "answers",
        "image": "a.png",
        "question": "q?",
        "candidates": [{"answer": "x", "score": 0.2}, {"answer": "y", "score": 0.8}],
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps(
            {
                **good,
                "group_id": "g2",
                "candidates": [{"answer": "x", "score": 1.5}, {"answer": "y", "score": 0}],
            }
        ),
        json.dumps({**good, "group_id": "g3", "question": None}),
        json.dumps(
            {
                **good,
                "group_id": "g4",
                "kind": "questions",
                "candidates": [{"questions": ["a"], "score": 0.1}] * 2,
            }
        ),
        json.dumps(good),
        json.dumps({**good, "group_id": "g5", "candidates": [{"answer": "x", "score": 0.5}]}),
        json.dumps(
            {**good, "group_id": "g6", "candidates": [{"answer": "x", "questions": ["q"], "score": 0.5}] * 2}
        ),
    ]
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(lines) + "\n")
    groups, rejected = load_groups([path], "answers")
    assert [g.group_id for g in groups] == ["g1"]
    reasons = {r.line: r.reason for r in rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8]
    assert "not JSON" in reasons[2]
    assert "candidates.0.score" in reasons[3] and "less than or equal to 1" in reasons[3]
    assert "needs the 'question'" in reasons[4]
    assert "this reward model learns 'answers'" in reasons[5]
    assert reasons[6] == "duplicate group_id"
    assert "at least 2" in reasons[7]
    assert "not both" in reasons[8]
    assert all(r.source == str(path) for r in rejected)


def test_heldout_split_is_stable_under_reordering(toyworld):
    groups, _ = load_groups([toyworld / "annotations" / "answers.jsonl"], "answers")
    train, heldout = split_groups(groups, 0.3, seed=5)
    _, heldout_reversed = split_groups(groups[::-1], 0.3, seed=5)
    assert {g.group_id for g in heldout} == {g.group_id for g in heldout_reversed}
    assert 0 < len(heldout) < len(groups) and len(train) + len(heldout) == len(groups)
    assert all(is_heldout(g.group_id, 0.3, 5) for g in heldout)


def test_corruptions_change_the_text_as_named():
    rng = random.Random(0)
    text = "The red circle is at the top. The blue square is below it. Nothing else is there."
    shuffled = shuffle_words(text, rng)
    assert sorted(shuffled.split()) == sorted(text.split()) and shuffled != text
    crop = random_crop(text, rng)
    assert crop in text and len(crop.split()) < len(text.split())
    doubled = duplicate_part(text, rng)
    assert len(doubled.split()) > len(text.split()) and set(doubled.split(". ")) <= set(text.split(". ")) | {
        s + "." for s in text.split(". ")
    }
    assert duplicate_part("a?\nb?", random.Random(1)).split("\n") in (["a?", "a?", "b?"], ["a?", "b?", "b?"])
    assert shuffle_words("one", rng) is None and random_crop("too short", rng) is None


def test_input_formats_follow_align2llava():
    assert questions_text(["<image>\nWhat is it?", "Where is it?"]) == "<image>\nWhat is it?\nWhere is it?"
    assert answer_text("What is it?", "A circle.") == "<image>\nQuestion: What is it?\nAnswer: A circle.\n"


def test_negatives_rank_below_their_original(toyworld, tiny_model_dir):
    _, processor = load_llava(tiny_model_dir)
    groups, _ = load_groups([toyworld / "annotations" / "answers.jsonl"], "answers")
    settings = RewardTrainSettings(negative_prob=1.0)
    examples, dropped = build_examples(
        groups[:5], RewardInputs(processor, settings.preprocess), toyworld, settings, True
    )
    assert not dropped
    for group, e in zip(groups[:5], examples, strict=True):
        negatives = [(i, j) for i, j in e.pairs if j >= e.originals]
        assert len(e.candidates) - e.originals == len(negatives) >= 1
        assert all(i < e.originals for i, _ in negatives)
        assert set(e.pairs) - set(negatives) == set(better_pairs(group.scores))


# ---------------------------------------------------------------- the model


def test_last_token_index_for_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 4]
    assert last_token_index(left).tolist() == [4, 4]


def test_left_and_right_padding_give_the_same_scores(toyworld, tiny_model_dir):
    llava, processor = load_llava(tiny_model_dir)
    torch.manual_seed(0)
    model = RewardModel(llava).eval()
    inputs = RewardInputs(processor, PreprocessSettings())
    groups, _ = load_groups([toyworld / "annotations" / "answers.jsonl"], "answers")
    examples, _ = build_examples(groups[:3], inputs, toyworld, RewardTrainSettings(), with_negatives=False)
    lengths = {len(c) for e in examples for c in e.candidates}
    assert len(lengths) > 1, "the batch must need padding"
    pad = processor.tokenizer.pad_token_id
    right = score_examples(model, RewardCollator(pad, inputs, "right"), examples, batch_size=3)
    left = score_examples(model, RewardCollator(pad, inputs, "left"), examples, batch_size=3)
    alone = score_examples(model, RewardCollator(pad, inputs, "right"), examples, batch_size=1)
    for r, lp, a in zip(right, left, alone, strict=True):
        assert r == pytest.approx(lp, abs=1e-5)
        assert r == pytest.approx(a, abs=1e-5)
    assert len({round(s, 4) for s in right[0]}) > 1


# ---------------------------------------------------------------- training


def test_training_changes_head_and_llm_not_vision_and_reloads_identically(
    toyworld, tiny_model_dir, reward_models
):
    before, _ = load_llava(tiny_model_dir)
    loaded = load_reward_model(reward_models / "answers")
    after = loaded.model.base_llava.state_dict()
    for name, weight in before.state_dict().items():
        changed = not torch.equal(weight, after[name])
        if name.startswith("model.vision_tower."):
            assert not changed, f"frozen {name} changed"
    assert any(
        not torch.equal(w, after[n])
        for n, w in before.state_dict().items()
        if n.startswith("model.language_model.")
    )
    manifest = json.loads((reward_models / "answers" / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 6 and manifest["counts"]["heldout"]["pairs"] > 0
    assert loaded.card.kind == "answers" and loaded.card.preprocess == PreprocessSettings()
    # scores after reload equal the held-out accuracy recorded at the end of training
    groups, _ = load_groups([toyworld / "annotations" / "answers.jsonl"], "answers")
    heldout = split_groups(groups, 0.2, 0)[1]
    examples, _ = build_examples(
        heldout, loaded.inputs, toyworld, RewardTrainSettings(), with_negatives=False
    )
    collator = RewardCollator(loaded.processor.tokenizer.pad_token_id, loaded.inputs)
    predicted = score_examples(loaded.model, collator, examples, 4)
    assert (
        pairwise_accuracy([e.scores for e in examples], predicted)["pairwise_accuracy"]
        == manifest["counts"]["heldout"]["pairwise_accuracy"]
    )


def test_lora_reward_model_trains_the_head_fully_and_never_the_vision_tower(
    toyworld, tiny_model_dir, tmp_path
):
    settings = rm_settings(lora={"enabled": True, "r": 4, "alpha": 8})
    train_reward_model(
        tiny_model_dir,
        [toyworld / "annotations" / "questions.jsonl"],
        "questions",
        tmp_path / "rm",
        settings,
        image_root=toyworld,
    )
    before, _ = load_llava(tiny_model_dir)
    loaded = load_reward_model(tmp_path / "rm")
    after = loaded.model.base_llava.state_dict()
    assert all(torch.equal(w, after[n]) for n, w in before.state_dict().items() if "vision_tower" in n)
    assert any(not torch.equal(w, after[n]) for n, w in before.state_dict().items() if "language_model" in n)
    assert not any("lora" in n for n in after), "the saved backbone must be merged"


# ---------------------------------------------------------------- scoring


def scored_values(path):
    return {r["id"]: r["meta"]["curation"] for r in read_jsonl(path)}


def test_scoring_is_deterministic_and_independent_of_batching(toyworld, reward_models):
    samples = list(read_samples(toyworld / "corpus.jsonl"))[:10]
    models = load_scorers(
        {"questions": reward_models / "questions", "answers": reward_models / "answers"}, ScoreSettings()
    )
    first = CurationScorer(models, toyworld, forward_batch=4)(samples)
    again = CurationScorer(models, toyworld, forward_batch=4)(samples)
    single = [row for s in samples for row in CurationScorer(models, toyworld, forward_batch=1)([s])]
    assert [r.value for r in first] == [r.value for r in again]
    for a, b in zip(first, single, strict=True):
        assert a.value["question_score"] == pytest.approx(b.value["question_score"], abs=1e-5)
        assert a.value["answer_scores"] == pytest.approx(b.value["answer_scores"], abs=1e-5)
        assert len(a.value["answer_scores"]) == len(samples[first.index(a)].answers)


def test_scoring_with_other_preprocessing_is_refused(reward_models):
    with pytest.raises(PreprocessMismatch, match="image_mode='resize' \\(trained: 'pad'\\)"):
        load_scorers(
            {"answers": reward_models / "answers"},
            ScoreSettings(preprocess=PreprocessSettings(image_mode="resize")),
        )
    load_scorers({"answers": reward_models / "answers"}, ScoreSettings(preprocess=PreprocessSettings()))
    with pytest.raises(ValueError, match="is a 'answers' reward model, given as the 'questions' one"):
        load_scorers({"questions": reward_models / "answers"}, ScoreSettings())


def test_a_sample_whose_image_is_missing_is_recorded_as_failed(toyworld, reward_models):
    samples = list(read_samples(toyworld / "corpus.jsonl"))[:3]
    samples[1] = samples[1].model_copy(update={"image": "images/train/missing.png"})
    models = load_scorers({"answers": reward_models / "answers"}, ScoreSettings())
    rows = CurationScorer(models, toyworld, forward_batch=4)(samples)
    assert [r.error is None for r in rows] == [True, False, True]
    assert "image not found" in rows[1].error


def score_command(rms, data, out, image_root):
    return [
        sys.executable,
        "-m",
        "vialign.cli",
        "curate",
        "score",
        str(data),
        "--out",
        str(out),
        "--questions-rm",
        str(rms / "questions"),
        "--answers-rm",
        str(rms / "answers"),
        "--image-root",
        str(image_root),
        "--batch-size",
        "2",
        "--quiet",
    ]


@pytest.mark.slow
def test_scoring_resumes_after_sigkill_without_duplicates(toyworld, reward_models, tmp_path):
    write_jsonl(list(read_samples(toyworld / "corpus.jsonl"))[:120], tmp_path / "in.jsonl")
    kill_then_resume(
        lambda out: score_command(reward_models, tmp_path / "in.jsonl", out, toyworld), tmp_path, 120, 10
    )


def test_resuming_with_another_reward_model_is_refused(toyworld, tmp_path):
    from vialign.generation.runner import Row, RunnerSettings, run_resumable

    samples = list(read_samples(toyworld / "corpus.jsonl"))[:4]
    out = tmp_path / "scored.jsonl"

    def crash_after_first_batch(batch):
        if batch[0].id != samples[0].id:
            raise RuntimeError("crash")
        return [Row(s.id, 1.0) for s in batch]

    settings = RunnerSettings(batch_size=2)
    with pytest.raises(RuntimeError):
        run_resumable(
            samples,
            lambda s: s.id,
            crash_after_first_batch,
            out,
            settings,
            identity={"rm": "a"},
            show_progress=False,
        )
    with pytest.raises(ValueError, match="holds results made with other models or settings"):
        run_resumable(
            samples,
            lambda s: s.id,
            crash_after_first_batch,
            out,
            settings,
            identity={"rm": "b"},
            show_progress=False,
        )
    report = run_resumable(
        samples,
        lambda s: s.id,
        lambda b: [Row(s.id, 2.0) for s in b],
        out,
        settings,
        identity={"rm": "a"},
        show_progress=False,
    )
    assert report.reused == 2 and [r for r in read_jsonl(out)] == [1.0, 1.0, 2.0, 2.0]


# ---------------------------------------------------------------- selection


def table_sample(i, subset, q, a):
    return Sample.model_validate(
        {
            "id": f"s{i}",
            "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            "meta": {"subset": subset, "curation": {"question_score": q, "answer_score": a}},
        }
    )


TABLE = [  # id, subset, question score, answer score
    (0, "conversation", 0.9, 0.1),
    (1, "conversation", 0.8, 0.7),
    (2, "conversation", 0.7, 0.9),
    (3, "conversation", 0.6, 0.95),
    (4, "conversation", 0.5, 0.99),
    (5, "conversation", 0.4, 0.2),
    (6, "conversation", 0.3, 0.3),
    (7, "conversation", 0.2, 0.4),
    (8, "conversation", 0.1, 0.5),
    (9, "conversation", 0.0, 0.6),
    (10, "detail", 0.5, 0.5),
    (11, "detail", 0.5, 0.4),
    (12, "detail", 0.2, 0.9),
    (13, "detail", None, 0.9),
    (14, "vqa", 0.0, 0.0),
]


def test_cascade_selection_on_a_fixed_table_picks_exactly_the_expected_ids():
    samples = [table_sample(*row) for row in TABLE]
    decisions, summary = select(
        samples, SelectSettings(question_keep=0.5, answer_keep=0.4, subsets=["conversation", "detail"])
    )
    # conversation: top 5 by question score = s0..s4; top ceil(0.4*5)=2 by answer score = s4 (0.99), s3 (0.95)
    # detail: s13 has no question score; top ceil(0.5*3)=2 = s10, s11 (tie 0.5, by id); then ceil(0.4*2)=1 → s10
    # vqa is not curated and kept as is
    assert sorted(i for i, d in decisions.items() if d == "kept") == ["s10", "s14", "s3", "s4"]
    assert decisions["s0"] == "dropped: answer score" and decisions["s5"] == "dropped: question score"
    assert decisions["s13"] == "dropped: no question score"
    assert (
        summary["conversation"]["after_questions"] == 5 and summary["conversation"]["answer_cutoff"] == 0.95
    )
    thresholds, _ = select(
        samples,
        SelectSettings(question_min=0.5, answer_min=0.9, others="drop", subsets=["conversation", "detail"]),
    )
    assert sorted(i for i, d in thresholds.items() if d == "kept") == ["s2", "s3", "s4"]
    assert thresholds["s14"] == "dropped: subset not curated"


def test_the_worst_turn_can_decide_instead_of_the_mean():
    samples = []
    for i, turns in enumerate([[0.9, 0.9], [1.0, 0.1], [0.6, 0.5], [0.2, 0.3]]):
        s = table_sample(i, "conversation", 0.5, sum(turns) / 2)
        s.meta.curation["answer_scores"] = turns
        samples.append(s)
    mean, _ = select(samples, SelectSettings(question_keep=1.0, answer_keep=0.5))
    worst, _ = select(samples, SelectSettings(question_keep=1.0, answer_keep=0.5, answer_reduce="min"))
    # means 0.9, 0.55, 0.55, 0.25 (the tie goes to the smaller id); worst turns 0.9, 0.1, 0.5, 0.2
    assert sorted(i for i, d in mean.items() if d == "kept") == ["s0", "s1"]
    assert sorted(i for i, d in worst.items() if d == "kept") == ["s0", "s2"]


def test_a_share_and_a_threshold_for_one_stage_are_refused():
    with pytest.raises(ValueError, match="question_keep or question_min"):
        SelectSettings(question_keep=0.3, question_min=0.5)


def test_cli_select_writes_selected_records_with_their_scores(tmp_path):
    samples = [table_sample(*row) for row in TABLE]
    write_jsonl(samples, tmp_path / "scored.jsonl")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vialign.cli",
            "curate",
            "select",
            str(tmp_path / "scored.jsonl"),
            "--out",
            str(tmp_path / "sel"),
            "--question-keep",
            "0.5",
            "--answer-keep",
            "0.4",
            "--subsets",
            "conversation,detail",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    selected = list(read_jsonl(tmp_path / "sel" / "selected.jsonl"))
    assert [r["id"] for r in selected] == ["s3", "s4", "s10", "s14"]
    assert selected[0]["meta"]["curation"] == {
        "question_score": 0.6,
        "answer_score": 0.95,
        "kept": True,
        "decision": "kept",
    }
    summary = json.loads((tmp_path / "sel" / "summary.json").read_text())
    assert summary["subsets"]["conversation"]["examples"]["kept"][0]["id"] == "s4"
    assert (tmp_path / "sel" / "score_histograms.png").stat().st_size > 1000
    assert len(list(read_jsonl(tmp_path / "sel" / "decisions.jsonl"))) == len(TABLE)


def test_select_stops_naming_the_field_when_no_record_has_it_or_nothing_is_scored(tmp_path):
    from typer.testing import CliRunner

    from vialign.cli import app

    samples = [table_sample(*row) for row in TABLE]
    unsubsetted = [s.model_copy(update={"meta": s.meta.model_copy(update={"subset": None})}) for s in samples]
    write_jsonl(unsubsetted, tmp_path / "real.jsonl")
    args = [
        "curate",
        "select",
        str(tmp_path / "real.jsonl"),
        "--out",
        str(tmp_path / "sel"),
        "--subsets",
        "conversation",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "meta.subset" in result.output and "--subset" in result.output
    assert not (tmp_path / "sel" / "selected.jsonl").exists()
    result = CliRunner().invoke(app, [*args[:5], "--by", "source"])
    assert result.exit_code == 2 and "meta.source" in result.output
    unscored = [
        s.model_copy(update={"meta": s.meta.model_copy(update={"model_extra": None})}) for s in samples
    ]
    write_jsonl(
        [Sample.model_validate({**s.to_json(), "meta": {"subset": s.meta.subset}}) for s in unscored],
        tmp_path / "unscored.jsonl",
    )
    result = CliRunner().invoke(
        app, ["curate", "select", str(tmp_path / "unscored.jsonl"), "--out", str(tmp_path / "s2")]
    )
    assert result.exit_code == 2 and "curate score" in result.output
