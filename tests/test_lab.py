"""The lab's pieces (the verdict rule, the drift set, the yes/no judge, the image-reliance check, DPO without
pairs) and the lab itself in miniature: `vialign lab --quick` on a tiny random LM with SmolLM2's tokenizer."""

import json
import re

import pytest
from typer.testing import CliRunner

from vialign.cli import app
from vialign.records import read_jsonl, write_jsonl
from vialign.report.html import verdict


@pytest.mark.parametrize(
    "expect, deltas, interval, outcome",
    [
        ("higher", [0.05], (0.01, 0.09), "reproduced"),
        ("higher", [-0.05], (-0.09, -0.01), "not reproduced"),
        ("higher", [0.02], (-0.01, 0.05), "inconclusive"),
        ("lower", [-0.3], (-0.5, -0.1), "reproduced"),
        ("lower", [0.3], (0.1, 0.5), "not reproduced"),
        ("higher", [0.05, 0.01], (0.01, 0.09), "reproduced"),
        ("higher", [0.05, -0.02], (0.01, 0.09), "inconclusive"),
        ("higher", [-0.6, 0.4], (-0.7, -0.5), "inconclusive"),
        ("higher", [-0.01, -0.02], (0.01, 0.09), "inconclusive"),
        ("higher", [], None, "inconclusive"),
    ],
)
def test_verdict_follows_the_interval_and_the_direction_the_paper_reports(expect, deltas, interval, outcome):
    assert verdict(expect, deltas, interval) == outcome


@pytest.mark.parametrize(
    "expect, deltas, interval, outcome",
    [
        ("higher", [-0.01, 0.0], (-0.015, 0.03), "reproduced"),  # no worse than −0.02
        ("higher", [-0.05], (-0.09, -0.03), "not reproduced"),  # worse by more than the margin
        ("higher", [0.0], (-0.04, 0.04), "inconclusive"),  # the interval holds −0.02
        ("higher", [0.01, -0.03], (-0.01, 0.03), "inconclusive"),  # a seed beyond the margin
        ("lower", [0.01], (-0.01, 0.015), "reproduced"),  # a lower-is-better metric, no higher than +0.02
    ],
)
def test_a_non_inferiority_claim_holds_within_its_margin(expect, deltas, interval, outcome):
    assert verdict(expect, deltas, interval, margin=0.02) == outcome
    assert verdict(expect, deltas, interval) != "reproduced" or outcome != "reproduced", "the margin matters"


def test_drift_set_takes_the_prompts_and_non_empty_answers(tmp_path):
    from vialign.stage import StageContext
    from vialign.stages import STAGES

    results = {
        "benchmarks": {
            "ifeval": {
                "samples": [
                    {"id": "1", "prompt": "Write.", "prediction": "Text."},
                    {"id": "2", "prompt": "P", "prediction": " "},
                ]
            },
            "text": {"samples": [{"id": "t", "prompt": "2+3?", "prediction": "5"}]},
        }
    }
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results))
    stage = STAGES["drift_set"]
    inputs, settings = stage.prepare({"results": str(tmp_path / "eval")})
    stage.run_function()(StageContext(tmp_path / "out", inputs, settings))
    rows = list(read_jsonl(tmp_path / "out" / "drift" / "answers.jsonl"))
    assert rows == [
        {"question_id": "ifeval/1", "text": "Write.", "answer": "Text."},
        {"question_id": "text/t", "text": "2+3?", "answer": "5"},
    ]
    inputs, settings = stage.prepare({"results": str(tmp_path / "eval"), "benches": ["mc"]})
    with pytest.raises(ValueError, match="no 'mc' benchmark"):
        stage.run_function()(StageContext(tmp_path / "out2", inputs, settings))


def test_yes_no_judge_rates_every_response_and_pairs_take_the_lowest(tiny_model_dir, toyworld, tmp_path):
    from vialign.prefer.judge import PreferenceJudgeSettings, judge_file
    from vialign.prefer.pairs import PairSettings, pairs_file

    groups = [
        {
            "id": f"g{i}",
            "image": "images/eval/000000.png",
            "question": "<image>\nWhat is shown?",
            "responses": r,
        }
        for i, r in enumerate([["a red circle", "blue", "circle circle circle"], ["two squares", "no"]])
    ]
    write_jsonl(groups, tmp_path / "groups.jsonl")
    settings = PreferenceJudgeSettings(judge="model-yesno", target=str(tiny_model_dir))
    total, rated = judge_file(tmp_path / "groups.jsonl", tmp_path / "rated.jsonl", settings, toyworld, False)
    assert (total, rated) == (2, 2)
    out = list(read_jsonl(tmp_path / "rated.jsonl"))
    for group, row in zip(groups, out, strict=True):
        assert len(row["ratings"]) == len(group["responses"]) and row["judge"]["judge"] == "model-yesno"
        for rating in row["ratings"]:
            assert rating["complexity"] is None and rating["verbosity"] is None
            assert all(0 <= rating[a] <= 4 for a in ("helpfulness", "correctness", "coherence"))
    counts = pairs_file(
        tmp_path / "rated.jsonl", tmp_path / "pairs.jsonl", PairSettings(gap=1e-6, rejected="lowest")
    )
    assert counts["pairs"] == 2
    for pair, row in zip(read_jsonl(tmp_path / "pairs.jsonl"), out, strict=True):
        scores = [sum(r[a] for a in ("helpfulness", "correctness", "coherence")) for r in row["ratings"]]
        assert pair["meta"]["preference"]["rejected_index"] == scores.index(min(scores))


def test_image_reliance_reads_the_answers_nll_and_is_zero_for_a_model_blind_to_images(
    tiny_model_dir, toyworld, tmp_path
):
    import torch

    from vialign.models.loading import load_llava, save_llava
    from vialign.records import read_samples
    from vialign.train.core import training_encoder
    from vialign.train.reliance import RelianceSettings, image_reliance
    from vialign.train.settings import SFTSettings

    data, settings = toyworld / "pretrain.jsonl", RelianceSettings(limit=8, dtype="float32")
    result = image_reliance(str(tiny_model_dir), data, toyworld, settings)
    model, processor = load_llava(tiny_model_dir)
    encoder = training_encoder(processor, SFTSettings(chat_format="plain", mode="response"), "response")
    total, tokens = 0.0, 0
    for sample in [s for s in read_samples(data) if len(s.images) == 1][:8]:
        e = encoder.encode(sample)
        pixels = processor.image_processor(
            images=[__import__("PIL.Image").Image.open(toyworld / sample.image).convert("RGB")],
            return_tensors="pt",
        )["pixel_values"]
        labels = torch.tensor([e.labels])
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([e.input_ids]), pixel_values=pixels, labels=labels).loss
        n = int((labels[:, 1:] != -100).sum())
        total, tokens = total + loss.item() * n, tokens + n
    assert result["own_images_nll"] == pytest.approx(total / tokens, abs=1e-3)
    assert result["other_images_nll"] != result["own_images_nll"], "the images reach the answers"

    with torch.no_grad():
        for p in model.model.multi_modal_projector.parameters():
            p.zero_()  # every image becomes the same image tokens
    save_llava(model, processor, tmp_path / "blind")
    blind = image_reliance(str(tmp_path / "blind"), data, toyworld, settings)
    assert blind["gap"] == pytest.approx(0.0, abs=1e-5)


def test_dpo_without_pairs_stops_unless_asked_to_keep_the_sft_model(tiny_model_dir, toyworld, tmp_path):
    from safetensors.torch import load_file

    from vialign.train.dpo import DPOSettings, train_dpo

    (tmp_path / "pairs.jsonl").write_text("")
    common = {"use_cpu": True, "max_steps": 1, "batch_size": 2}
    with pytest.raises(ValueError, match="no pair"):
        train_dpo(
            str(tiny_model_dir), tmp_path / "pairs.jsonl", tmp_path / "a", DPOSettings(**common), toyworld
        )
    manifest = train_dpo(
        str(tiny_model_dir),
        tmp_path / "pairs.jsonl",
        tmp_path / "b",
        DPOSettings(**common, allow_no_pairs=True),
        toyworld,
    )
    assert manifest.counts["pairs"] == 0 and "unchanged" in manifest.counts["untrained"]
    before, after = (
        load_file(tiny_model_dir / "model.safetensors"),
        load_file(tmp_path / "b" / "model.safetensors"),
    )
    assert before.keys() == after.keys() and all((before[k] == after[k]).all() for k in before)


@pytest.mark.slow
def test_the_quick_lab_runs_every_arm_and_writes_the_claims_table(tmp_path):
    result = CliRunner().invoke(app, ["lab", "--quick", "--out", str(tmp_path / "lab")])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "lab" / "run.json").read_text())
    arms = [
        "vit_teacher",
        "lit_teacher",
        "vit_rewritten",
        "vit_oracle",
        "vit_curated",
        "vit_own",
        "dpo_oracle",
        "dpo_model",
    ]
    for arm in arms:
        results = json.loads(
            (
                tmp_path / "lab" / "stages" / run[f"eval_{arm}"].split("/stages/")[1] / "results.json"
            ).read_text()
        )
        assert set(results["benchmarks"]) == {
            "pope",
            "caption",
            "vqa",
            "mc",
            "facts",
            "text",
            "ifeval",
            "drift",
        }, arm
    base = json.loads(
        (tmp_path / "lab" / "stages" / run["eval_base"].split("/stages/")[1] / "results.json").read_text()
    )
    assert set(base["benchmarks"]) == {"text", "ifeval", "drift"}
    stage1 = json.loads(
        (tmp_path / "lab" / "stages" / run["stage1"].split("/stages/")[1] / "manifest.json").read_text()
    )
    assert stage1["settings"]["resolved"]["train_llm"] is False, "stage 1 keeps the LLM frozen, as LLaVA does"
    reliance = json.loads(
        (tmp_path / "lab" / "stages" / run["reliance"].split("/stages/")[1] / "reliance.json").read_text()
    )
    assert reliance["samples"] > 1
    page = (tmp_path / "lab" / "report.html").read_text()
    table = re.search(r"<table id=claims>.*?</table>", page, re.S).group(0)
    claims = json.loads((tmp_path / "lab" / "claims.json").read_text())
    assert re.findall(r"class='verdict [^']*'>([^<]*)<", table) == [c["verdict"] for c in claims]
    assert all(c["verdict"] == verdict(c["expect"], c["deltas"], c["interval"], c["margin"]) for c in claims)
    # each measured delta, recomputed from the two eval folders the recipe names
    from importlib import resources

    import yaml

    recipe = yaml.safe_load(
        resources.files("vialign.pipeline").joinpath("recipes", "lab_smollm2.yaml").read_text()
    )
    report = next(st for st in recipe["stages"] if st["name"] == "report")["with"]
    assert [c["claim"] for c in claims] == [c["claim"] for c in report["claims"]], "every claim, in order"
    stage_of = {label: folders[0].strip("${}") for label, folders in report["runs"].items()}
    for claim in (c for c in claims if "bench" in c):
        bench, name, variant, baseline = (claim[k] for k in ("bench", "metric", "variant", "baseline"))
        values = [
            json.loads(
                (
                    tmp_path / "lab" / "stages" / run[stage_of[label]].split("/stages/")[1] / "results.json"
                ).read_text()
            )["benchmarks"][bench]["metrics"][name]
            for label in (variant, baseline)
        ]
        # a metric with nothing to measure (no claim read from a random LM's answers) is null: no delta
        expected = [] if None in values else [values[0] - values[1]]
        assert claim["deltas"] == pytest.approx(expected), claim["claim"]
    assert "<table id=facts>" in page and "Dataset viewer" in page
    # lab-results.json: every arm's metrics read from its eval folder, the claims as claims.json has them
    lab = json.loads((tmp_path / "lab" / "lab-results.json").read_text())
    arms = report["lab_results"]["arms"]
    assert lab["seeds"] == [0] and set(lab["arms"]) == set(arms)
    for arm, label in arms.items():
        results = json.loads(
            (
                tmp_path / "lab" / "stages" / run[stage_of[label]].split("/stages/")[1] / "results.json"
            ).read_text()
        )["benchmarks"]
        for bench, name in report["metrics"]:
            assert lab["arms"][arm][f"{bench}_{name}"] == [
                results.get(bench, {}).get("metrics", {}).get(name)
            ]
    assert {"pope_accuracy", "pope_yes_ratio", "vqa_accuracy"} <= set(lab["arms"]["vit"])
    assert [{k: c[k] for k in ("claim", "deltas", "interval", "verdict")} for c in lab["claims"]] == [
        {k: c[k] for k in ("claim", "deltas", "interval", "verdict")} for c in claims
    ]
    reliance_vit = json.loads(
        (tmp_path / "lab" / "stages" / run["reliance_vit"].split("/stages/")[1] / "reliance.json").read_text()
    )
    assert lab["image_reliance"] == [reliance_vit["gap"]]
    facts = json.loads(next((tmp_path / "lab" / "stages").glob("oracle-*/rewritten.facts.json")).read_text())
    kept = facts["llm_review"]["kept_rewrite"]
    assert lab["rewrite"]["replaced_share"] == pytest.approx(kept / facts["answers"], abs=1e-4)
    gap_claim = next(c for c in claims if "bench" not in c)
    assert (
        lab["rewrite"]["gap"] == gap_claim["deltas"]
        and lab["rewrite"]["gap_interval"] == gap_claim["interval"]
    )


def test_yes_no_judge_refuses_questions_that_leave_a_scored_aspect_unasked(tiny_model_dir):
    from vialign.prefer.judge import PreferenceJudgeSettings, YesNoJudge

    settings = PreferenceJudgeSettings(
        judge="model-yesno",
        target=str(tiny_model_dir),
        yesno_questions={"correctness": "Is it true? {response}", "helpfulness": "Does it help? {response}"},
    )
    with pytest.raises(ValueError, match="coherence"):
        YesNoJudge(settings, cache=None, image_root=None)


def test_report_refuses_claims_that_name_no_run_or_half_a_comparison():
    from pydantic import ValidationError

    from vialign.report.html import ReportSettings

    runs = {"base": ["a"], "vit": ["b"]}
    claim = {
        "claim": "c",
        "paper": "p",
        "bench": "pope",
        "metric": "f1",
        "baseline": "base",
        "variant": "lit",
    }
    with pytest.raises(ValidationError, match="lit"):
        ReportSettings(runs=runs, claims=[claim])
    with pytest.raises(ValidationError, match="missing"):
        ReportSettings(runs=runs, claims=[{"claim": "c", "paper": "p", "bench": "pope"}])
    ReportSettings(
        runs=runs, claims=[{**claim, "variant": "vit"}, {"claim": "g", "paper": "p", "gap": ["x"]}]
    )


def test_seed_independent_folders_count_once_over_seeds():
    from vialign.pipeline.seeds import merged_over_seeds

    resolved = [
        {
            "runs": {"vit": [f"eval-{s}"]},
            "claims": [{"claim": "g", "paper": "p", "gap": ["gap-shared"]}],
            "rewrite_facts": ["oracle-shared"],
        }
        for s in range(3)
    ]
    merged = merged_over_seeds(resolved)
    assert merged["runs"]["vit"] == ["eval-0", "eval-1", "eval-2"]
    assert merged["claims"][0]["gap"] == ["gap-shared"] and merged["rewrite_facts"] == ["oracle-shared"]


def vqa_results(folder, scores):
    """An eval folder whose VQA accuracy is the mean of `scores` (one per item, paired by id)."""
    folder.mkdir(parents=True)
    samples = [{"id": f"q{i}", "score": s, "category": "count"} for i, s in enumerate(scores)]
    accuracy = sum(scores) / len(scores)
    (folder / "results.json").write_text(
        json.dumps({"benchmarks": {"vqa": {"metrics": {"accuracy": accuracy}, "samples": samples}}})
    )
    return str(folder)


@pytest.mark.parametrize("expect, outcome", [("higher", "reproduced"), ("lower", "not reproduced")])
def test_claim_delta_is_variant_minus_baseline_per_seed_with_the_first_seeds_interval(
    expect, outcome, tmp_path
):
    from vialign.report.html import ReportSettings, claim_delta

    base = [0, 0, 1, 0, 1, 0, 0, 1, 0, 0] * 4  # accuracy 0.3
    better = [1, 0, 1, 1, 1, 0, 1, 1, 0, 1] * 4  # 0.7: every item the base got right, and more
    runs = {
        "base": [vqa_results(tmp_path / "b0", base), vqa_results(tmp_path / "b1", base)],
        "tuned": [vqa_results(tmp_path / "t0", better), vqa_results(tmp_path / "t1", base[:-4] + [1] * 4)],
    }
    claim = {
        "claim": "c",
        "paper": "p",
        "bench": "vqa",
        "metric": "accuracy",
        "baseline": "base",
        "variant": "tuned",
    }
    settings = ReportSettings(runs=runs, claims=[{**claim, "expect": expect}], resamples=200)
    deltas, interval = claim_delta(settings, settings.claims[0])
    assert deltas == pytest.approx([0.4, 0.075])
    assert 0 < interval[0] < 0.4 < interval[1] <= 0.6, "seed 0's paired interval, around its own delta"
    assert verdict(expect, deltas, interval) == outcome


def test_a_gap_claim_reads_each_seeds_gap_and_pairs_the_first_seeds_answers(tmp_path):
    from vialign.report.html import ReportSettings, claim_delta

    folders = []
    for seed, shift in enumerate((-0.2, -0.05)):
        folder = tmp_path / f"gap{seed}"
        folder.mkdir()
        teacher = [{"id": f"s{i}", "nll": 1.0 + 0.1 * (i % 5)} for i in range(30)]
        rewritten = [
            {"id": r["id"], "nll": r["nll"] + shift + 0.02 * (i % 3 - 1)} for i, r in enumerate(teacher)
        ]
        write_jsonl(teacher, folder / "input.nll.jsonl")
        write_jsonl(rewritten[::-1], folder / "vs.nll.jsonl")  # paired by id, not by position
        (folder / "gap.json").write_text(json.dumps({"delta_mean_nll": shift}))
        folders.append(str(folder))
    settings = ReportSettings(
        runs={}, claims=[{"claim": "g", "paper": "p", "gap": folders, "expect": "lower"}]
    )
    deltas, interval = claim_delta(settings, settings.claims[0])
    assert deltas == [-0.2, -0.05]
    assert -0.21 < interval[0] < -0.2 < interval[1] < -0.19, "the interval of seed 0's paired mean difference"
    assert verdict("lower", deltas, interval) == "reproduced"
