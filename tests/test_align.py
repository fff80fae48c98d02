"""Writing-manner gap (per-token NLL of answers, text only) and the toy-world facts report."""

import json

import pytest
import torch
from typer.testing import CliRunner

from vialign.align.gap import answer_nll
from vialign.cli import app
from vialign.generation.likelihood import text_only
from vialign.models.encoding import ChatEncoder, EncoderSettings, Kind
from vialign.models.loading import load_llava
from vialign.records import Sample, read_samples, write_jsonl
from vialign.toyworld.checks import rewrite_fact_report


def test_answer_nll_matches_a_manual_forward(toyworld, tiny_model_dir):
    samples = list(read_samples(toyworld / "corpus.jsonl"))[:10]
    report = answer_nll(tiny_model_dir, samples, batch_size=4)
    assert [r["id"] for r in report.per_sample] == [s.id for s in samples]
    model, processor = load_llava(tiny_model_dir)
    encoder = ChatEncoder(processor.tokenizer, EncoderSettings(mode="response", image_tokens=0))
    for sample, row in zip(samples[:3], report.per_sample, strict=False):
        e = encoder.encode(text_only(sample))
        answer = [i for i, k in enumerate(e.kinds) if k == Kind.ASSISTANT]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].float(), -1)
        expected = -sum(logp[i - 1, e.input_ids[i]].item() for i in answer) / len(answer)
        assert row["tokens"] == len(answer) and row["nll"] == pytest.approx(expected, rel=1e-4)
    assert "<image>" not in " ".join(t.value for t in text_only(samples[0]).conversations)


def test_gap_cli_compares_two_datasets(toyworld, tiny_model_dir, tmp_path):
    samples = list(read_samples(toyworld / "corpus.jsonl"))[:12]
    write_jsonl(samples[:6], tmp_path / "a.jsonl")
    write_jsonl(samples[6:], tmp_path / "b.jsonl")
    result = CliRunner().invoke(
        app,
        [
            "align",
            "gap",
            str(tmp_path / "a.jsonl"),
            "--llm",
            str(tiny_model_dir),
            "--out",
            str(tmp_path / "gap"),
            "--vs",
            str(tmp_path / "b.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "gap" / "gap.json").read_text())
    assert summary["input"]["samples"] == summary["vs"]["samples"] == 6
    assert summary["delta_mean_nll"] == pytest.approx(
        summary["vs"]["mean_nll"] - summary["input"]["mean_nll"], abs=1e-3
    )
    assert (tmp_path / "gap" / "gap.png").stat().st_size > 1000
    from vialign.report.html import ReportSettings, write_report

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps({"benchmarks": {}}))
    page = write_report(
        tmp_path / "report", ReportSettings(runs={"m": [str(tmp_path / "eval")]}, gap=str(tmp_path / "gap"))
    ).read_text()
    assert "id=gap-histograms" in page and "<table id=gap>" in page and "id=gap-note" not in page


def with_rewrite_run(sample, kept):
    """The sample as `align rewrite` leaves it: every answer rewritten, the rewrite kept or refused."""
    out = sample.model_copy(deep=True)
    turns = []
    for k, turn in enumerate(out.conversations):
        if turn.role == "gpt":
            rewrite = f"I would say: {turn.value}"
            turns.append({"turn": k, "original": turn.value, "rewrite": rewrite, "kept": kept})
            turn.value = rewrite if kept == "rewrite" else turn.value
    out.meta.provenance.append({"stage": "align.rewrite", "turns": turns})
    return out


def gap_rewritten_only(folder, llm):
    """`align gap input.jsonl --vs vs.jsonl --rewritten-only` in `folder`, into folder/gap."""
    args = ["align", "gap", str(folder / "input.jsonl"), "--llm", str(llm), "--out", str(folder / "gap")]
    result = CliRunner().invoke(app, [*args, "--vs", str(folder / "vs.jsonl"), "--rewritten-only"])
    assert result.exit_code == 0, result.output


def test_gap_rewritten_only_scores_the_samples_with_an_answer_replaced(toyworld, tiny_model_dir, tmp_path):
    short = (
        s for s in read_samples(toyworld / "corpus.jsonl") if sum(len(t.value) for t in s.conversations) < 300
    )
    replaced, refused, untouched = next(short), next(short), next(short)
    vs = [
        with_rewrite_run(replaced, "rewrite"),
        with_rewrite_run(refused, "original"),
        untouched,
    ]
    write_jsonl([replaced, refused, untouched], tmp_path / "input.jsonl")
    write_jsonl(vs, tmp_path / "vs.jsonl")
    gap_rewritten_only(tmp_path, tiny_model_dir)
    for name in ("input", "vs"):
        ids = [
            json.loads(line)["id"]
            for line in (tmp_path / "gap" / f"{name}.nll.jsonl").read_text().splitlines()
        ]
        assert ids == [replaced.id], f"{name}: a sample whose every rewrite was refused is not rewritten"
    summary = json.loads((tmp_path / "gap" / "gap.json").read_text())
    assert summary["delta_mean_nll"] != 0, "the replaced answer is scored in its rewritten form"


def test_facts_report_counts_preserved_and_accepted_bad_rewrites():
    teacher = "In the image, there are two shapes: a large red circle in the upper left corner, and a small blue square right in the middle."
    own = "There are 2 objects: a large red circle at top left, and a small blue square at the center."
    wrong = "There are 2 objects: a large green circle at top left, and a small blue square at the center."
    turns = [
        {"turn": 1, "original": teacher, "rewrite": own, "verdict": "same", "kept": "rewrite"},
        {"turn": 3, "original": teacher, "rewrite": wrong, "verdict": "different", "kept": "original"},
        {"turn": 5, "original": teacher, "rewrite": wrong, "verdict": "same", "kept": "rewrite"},
    ]
    values = ["q", own, "q", teacher, "q", wrong]
    sample = Sample.model_validate(
        {
            "id": "s",
            "conversations": [
                {"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)
            ],
            "meta": {"provenance": [{"stage": "align.rewrite", "turns": turns}]},
        }
    )
    c = rewrite_fact_report([sample])
    assert (
        c["answers"],
        c["kept_rewrite"],
        c["final_preserved"],
        c["raw_preserved"],
        c["accepted_with_changed_facts"],
    ) == (3, 2, 2, 1, 1)


def test_gap_rewritten_only_with_no_answer_replaced_measures_nothing_and_says_so(
    toyworld, tiny_model_dir, tmp_path
):
    from vialign.report.html import ReportSettings, claim_delta

    sample = next(s for s in read_samples(toyworld / "corpus.jsonl") if len(s.conversations) == 2)
    write_jsonl([sample], tmp_path / "input.jsonl")
    write_jsonl([with_rewrite_run(sample, "original")], tmp_path / "vs.jsonl")
    gap_rewritten_only(tmp_path, tiny_model_dir)
    summary = json.loads((tmp_path / "gap" / "gap.json").read_text())
    assert (
        summary["delta_mean_nll"] is None and summary["vs"]["samples"] == 0 and "no sample" in summary["note"]
    )
    settings = ReportSettings(runs={}, claims=[{"claim": "g", "paper": "p", "gap": [str(tmp_path / "gap")]}])
    assert claim_delta(settings, settings.claims[0]) == ([], None), "no delta, so the claim is inconclusive"
