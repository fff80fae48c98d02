"""Toy-world checks of a rewritten corpus: are the facts of every answer preserved?

A kept answer preserves the facts when it makes exactly the claims of the original (claims are
manner-independent: "three shapes" and "3 objects" are one claim). The raw rewrites, before review,
are scored the same way, which shows what the review caught.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from vialign.records import Sample
from vialign.toyworld.language import extract_claims


def rewrite_fact_report(samples: Iterable[Sample]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for sample in samples:
        runs = [p for p in sample.meta.provenance if p.get("stage") == "align.rewrite" and "turns" in p]
        for turn in runs[-1]["turns"] if runs else []:
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
