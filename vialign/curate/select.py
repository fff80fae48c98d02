"""Cascade selection (Align2LLaVA): per subset, keep the top share by question score, then the top share
of those by mean answer score. Thresholds can replace either share."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from vialign.config import Settings
from vialign.records import Sample, meta_value, require_meta_field
from vialign.stage import StageContext


class SelectSettings(Settings):
    by: str = Field("subset", description="meta field that names a sample's subset")
    subsets: list[str] | None = Field(None, description="subsets to curate; default: every subset")
    others: Literal["keep", "drop"] = Field("keep", description="what happens to samples of other subsets")
    question_keep: float = Field(0.3, gt=0.0, le=1.0, description="share kept by question score")
    answer_keep: float = Field(0.3, gt=0.0, le=1.0, description="share of those kept by answer score")
    question_min: float | None = Field(None, description="keep question score >= this instead of a share")
    answer_min: float | None = Field(None, description="keep answer score >= this instead of a share")
    answer_reduce: Literal["mean", "min"] = Field(
        "mean", description="a sample's answer score from its turns: mean (Align2LLaVA) or the worst turn"
    )
    examples: int = Field(3, ge=0, description="kept and dropped examples per subset in the summary")

    @model_validator(mode="after")
    def _one_rule_per_stage(self) -> SelectSettings:
        fields = self.model_fields_set
        for stage in ("question", "answer"):
            if f"{stage}_keep" in fields and getattr(self, f"{stage}_min") is not None:
                raise ValueError(f"give {stage}_keep or {stage}_min, not both")
        return self


def subset_of(sample: Sample, by: str) -> str:
    value = meta_value(sample, by)
    return str(value) if value is not None else "(none)"


def curation_of(sample: Sample) -> dict[str, Any]:
    return (sample.meta.model_extra or {}).get("curation") or {}


def answer_score(curation: dict[str, Any], reduce: str) -> float | None:
    if reduce == "min":
        turns = curation.get("answer_scores") or []
        return min(turns) if turns else None
    return curation.get("answer_score")


def top(
    scored: Sequence[tuple[str, float]], keep: float, minimum: float | None
) -> tuple[list[str], float | None]:
    """Ids kept by a share (ceil of keep × n, best first, ties by id) or a threshold; and the cutoff score."""
    ranked = sorted(scored, key=lambda x: (-x[1], x[0]))
    if minimum is not None:
        kept = [i for i, s in ranked if s >= minimum]
        return kept, minimum
    n = math.ceil(keep * len(ranked) - 1e-9)
    return [i for i, _ in ranked[:n]], ranked[n - 1][1] if n else None


def select_subset(
    samples: Sequence[Sample], settings: SelectSettings
) -> tuple[dict[str, str], dict[str, Any]]:
    """Decision per id ('kept' or the stage that dropped it) and this subset's cutoffs."""
    decisions: dict[str, str] = {}
    scored_q = []
    for s in samples:
        score = curation_of(s).get("question_score")
        if score is None:
            decisions[s.id] = "dropped: no question score"
        else:
            scored_q.append((s.id, score))
    kept_q, q_cut = top(scored_q, settings.question_keep, settings.question_min)
    decisions.update({i: "dropped: question score" for i, _ in scored_q})
    answer = {s.id: answer_score(curation_of(s), settings.answer_reduce) for s in samples}
    scored_a = [(i, answer[i]) for i in kept_q if answer[i] is not None]
    decisions.update({i: "dropped: no answer score" for i in kept_q if answer[i] is None})
    kept_a, a_cut = top(scored_a, settings.answer_keep, settings.answer_min)
    decisions.update({i: "dropped: answer score" for i, _ in scored_a})
    decisions.update(dict.fromkeys(kept_a, "kept"))
    return decisions, {
        "question_cutoff": q_cut,
        "answer_cutoff": a_cut,
        "after_questions": len(kept_q),
        "kept": len(kept_a),
    }


def select(
    samples: Sequence[Sample], settings: SelectSettings
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    by_subset: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_subset[subset_of(s, settings.by)].append(s)
    decisions: dict[str, str] = {}
    summary: dict[str, dict[str, Any]] = {}
    for subset, members in sorted(by_subset.items()):
        if settings.subsets is not None and subset not in settings.subsets:
            verdict = "kept" if settings.others == "keep" else "dropped: subset not curated"
            decisions.update(dict.fromkeys((s.id for s in members), verdict))
            summary[subset] = {
                "samples": len(members),
                "curated": False,
                "kept": len(members) if settings.others == "keep" else 0,
            }
            continue
        subset_decisions, cutoffs = select_subset(members, settings)
        decisions.update(subset_decisions)
        summary[subset] = {"samples": len(members), "curated": True, **cutoffs}
    return decisions, summary


def with_decision(sample: Sample, decision: str) -> dict[str, Any]:
    record = sample.to_json()
    curation = {**curation_of(sample), "kept": decision == "kept", "decision": decision}
    record.setdefault("meta", {})["curation"] = curation
    return record


def examples_of(
    samples: Sequence[Sample], decisions: dict[str, str], subset: str, settings: SelectSettings
) -> dict[str, list[dict[str, Any]]]:
    """Best kept and worst dropped samples of a subset, by answer score then question score."""
    members = [s for s in samples if subset_of(s, settings.by) == subset]

    def key(s: Sample) -> tuple[float, float]:
        c = curation_of(s)
        return (c.get("answer_score") or -math.inf, c.get("question_score") or -math.inf)

    def show(s: Sample) -> dict[str, Any]:
        c = curation_of(s)
        return {
            "id": s.id,
            "image": s.image,
            "question_score": c.get("question_score"),
            "answer_score": c.get("answer_score"),
            "decision": decisions[s.id],
            "first_turn": [t.value for t in s.conversations[:2]],
        }

    kept = sorted((s for s in members if decisions[s.id] == "kept"), key=key, reverse=True)
    dropped = sorted((s for s in members if decisions[s.id] != "kept"), key=key)
    return {
        "kept": [show(s) for s in kept[: settings.examples]],
        "dropped": [show(s) for s in dropped[: settings.examples]],
    }


def plot_score_histograms(
    samples: Sequence[Sample], summary: dict[str, dict[str, Any]], by: str, out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subsets = [s for s, info in summary.items() if info.get("curated")]
    if not subsets:
        return
    fig, axes = plt.subplots(len(subsets), 2, figsize=(9, 2.6 * len(subsets)), squeeze=False)
    for row, subset in enumerate(subsets):
        members = [curation_of(s) for s in samples if subset_of(s, by) == subset]
        for col, (field, cut) in enumerate(
            (("question_score", "question_cutoff"), ("answer_score", "answer_cutoff"))
        ):
            ax = axes[row][col]
            values = [m[field] for m in members if m.get(field) is not None]
            ax.hist(values, bins=30, color="#4c72b0")
            if summary[subset].get(cut) is not None:
                ax.axvline(summary[subset][cut], color="#c44e52", linestyle="--", label="cutoff")
                ax.legend(loc="upper left", fontsize=8)
            ax.set_title(f"{subset}: {field.replace('_', ' ')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def select_file(input: Path, out: Path, settings: SelectSettings):
    """Select from a scored JSONL; writes selected.jsonl, decisions.jsonl, summary.json, the histograms
    and a manifest into `out`; returns (decisions, summary)."""
    import orjson

    from vialign.manifest import fingerprint_file, stage_manifest
    from vialign.records import JsonlWriter, read_samples

    with stage_manifest(out, "curate.select") as manifest:
        samples = list(read_samples(input))
        if settings.subsets is not None or "by" in settings.model_fields_set:
            require_meta_field(samples, settings.by, str(input), "curate select (--subsets/--by)")
        if samples and not any(curation_of(s).get("question_score") is not None for s in samples):
            raise ValueError(
                f"{input}: no record has a question score (meta.curation); score it first with "
                "`vialign curate score`"
            )
        decisions, summary = select(samples, settings)
        out.mkdir(parents=True, exist_ok=True)
        with JsonlWriter(out / "selected.jsonl") as kept, JsonlWriter(out / "decisions.jsonl") as log:
            for s in samples:
                record = with_decision(s, decisions[s.id])
                log.write({"id": s.id, **record["meta"]["curation"]})
                if decisions[s.id] == "kept":
                    kept.write(record)
        for subset in summary:
            summary[subset]["examples"] = examples_of(samples, decisions, subset, settings)
        (out / "summary.json").write_bytes(
            orjson.dumps(
                {"settings": settings.model_dump(mode="json"), "subsets": summary}, option=orjson.OPT_INDENT_2
            )
        )
        plot_score_histograms(samples, summary, settings.by, out / "score_histograms.png")
        n_kept = sum(d == "kept" for d in decisions.values())
        manifest.inputs = {str(input): fingerprint_file(input)}
        manifest.settings = settings.model_dump(mode="json")
        manifest.counts = {
            "samples": len(samples),
            "kept": n_kept,
            **{f"{k}.kept": v["kept"] for k, v in summary.items()},
        }
        manifest.outputs = {"selected.jsonl": fingerprint_file(out / "selected.jsonl")}
    return decisions, summary


def run_stage(ctx: StageContext) -> None:
    from rich.table import Table

    data = ctx.path("data")
    decisions, summary = select_file(data, ctx.out, ctx.settings)
    view = Table(title=f"selection from {data}")
    for column in ("subset", "samples", "after questions", "kept", "question cutoff", "answer cutoff"):
        view.add_column(column, justify="left" if column == "subset" else "right")
    for subset, info in summary.items():
        cells = [
            info.get("after_questions", "-"),
            info["kept"],
            info.get("question_cutoff"),
            info.get("answer_cutoff"),
        ]
        view.add_row(
            subset,
            str(info["samples"]),
            *("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells),
        )
    ctx.show(view)
    kept = sum(d == "kept" for d in decisions.values())
    ctx.say(f"kept {kept} of {len(decisions)} → {ctx.out / 'selected.jsonl'}")
