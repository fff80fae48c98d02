"""Toy-world checks of a rewritten corpus: are the facts of every answer preserved?

A kept answer preserves the facts when it makes exactly the claims of the original (claims are
manner-independent: "three shapes" and "3 objects" are one claim). The raw rewrites, before review,
are scored the same way, which shows what the review caught.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from vialign.records import Sample
from vialign.stage import StageContext
from vialign.toyworld.language import extract_claims


def rewrite_fact_report(samples: Iterable[Sample]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sample in samples:
        run = last_rewrite(sample)
        for turn in run["turns"] if run else []:
            original = extract_claims(turn["original"])
            final = sample.conversations[turn["turn"]].value
            counts["answers"] += 1
            counts["kept_rewrite"] += turn["kept"] == "rewrite"
            counts["final_preserved"] += extract_claims(final) == original
            counts["raw_preserved"] += extract_claims(turn["rewrite"]) == original
            accepted_bad = turn["kept"] == "rewrite" and extract_claims(turn["rewrite"]) != original
            counts["accepted_with_changed_facts"] += accepted_bad
            counts["refused_though_preserved"] += (
                turn["kept"] == "original" and extract_claims(turn["rewrite"]) == original
            )
    return counts


def last_rewrite(sample: Sample) -> dict[str, Any] | None:
    runs = [p for p in sample.meta.provenance if p.get("stage") == "align.rewrite" and "turns" in p]
    return runs[-1] if runs else None


def review_quality(counts: Counter[str]) -> dict[str, float | None]:
    """Of the rewrites the review kept, the share that preserve every fact (precision); of the rewrites
    that preserve every fact, the share the review kept (recall)."""
    kept, good = counts["kept_rewrite"], counts["raw_preserved"]
    kept_good = kept - counts["accepted_with_changed_facts"]
    return {
        "review_precision": round(kept_good / kept, 4) if kept else None,
        "review_recall": round(kept_good / good, 4) if good else None,
    }


def oracle_reviewed(sample: Sample) -> Sample:
    """The sample with each rewrite kept exactly when the claim reader finds its facts unchanged."""
    run = last_rewrite(sample)
    if run is None:
        return sample
    out = sample.model_copy(deep=True)
    turns = []
    for t in run["turns"]:
        same = t["rewrite"].strip() != "" and extract_claims(t["rewrite"]) == extract_claims(t["original"])
        out.conversations[t["turn"]].value = t["rewrite"].strip() if same else t["original"]
        turns.append(
            {**t, "verdict": "same" if same else "different", "kept": "rewrite" if same else "original"}
        )
    out.meta.provenance.append({"stage": "align.rewrite", "reviewer": "toyworld-oracle", "turns": turns})
    return out


def run_stage(ctx: StageContext) -> None:
    import orjson

    from vialign.manifest import fingerprint_file, stage_manifest
    from vialign.records import read_samples, write_jsonl

    data = ctx.path("data")
    with stage_manifest(ctx.out.parent / f"{ctx.out.stem}.manifest", "toyworld.oracle_review") as manifest:
        samples = list(read_samples(data))
        llm_review = rewrite_fact_report(samples)
        reviewed = [oracle_reviewed(s) for s in samples]
        write_jsonl(reviewed, ctx.out)
        oracle = rewrite_fact_report(reviewed)
        facts = {
            "answers": llm_review["answers"],
            "raw_preserved": llm_review["raw_preserved"],
            "llm_review": {**dict(llm_review), **review_quality(llm_review)},
            "oracle_review": dict(oracle),
        }
        ctx.folder.mkdir(parents=True, exist_ok=True)
        (ctx.folder / f"{ctx.out.stem}.facts.json").write_bytes(
            orjson.dumps(facts, option=orjson.OPT_INDENT_2)
        )
        manifest.inputs = {str(data): fingerprint_file(data)}
        manifest.counts = {"answers": llm_review["answers"], "oracle_kept": oracle["kept_rewrite"]}
        manifest.outputs = {str(ctx.out): fingerprint_file(ctx.out)}
    n = max(llm_review["answers"], 1)
    quality = review_quality(llm_review)
    ctx.say(
        f"{llm_review['answers']} rewritten answers: raw rewrites preserve the facts of "
        f"{llm_review['raw_preserved'] / n:.1%}; the LLM review kept {llm_review['kept_rewrite']} "
        f"(precision {quality['review_precision']}, recall {quality['review_recall']}); the oracle keeps "
        f"{oracle['kept_rewrite']} → {ctx.out}"
    )
