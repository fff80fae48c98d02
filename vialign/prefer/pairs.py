"""`vialign prefer pairs`: score = helpfulness + correctness + coherence; a group whose best and worst
differ by less than `gap` gives no pair; chosen = the best (first among equals), rejected = a seeded
random pick among those scoring ≤ best − gap (`rejected: random`) or the worst (`rejected: lowest`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from vialign.config import Settings
from vialign.records import image_list
from vialign.stage import StageContext

SCORED_ASPECTS = ("helpfulness", "correctness", "coherence")


class PairSettings(Settings):
    gap: float = Field(2, gt=0, description="least score difference between chosen and rejected")
    rejected: Literal["random", "lowest"] = Field(
        "random",
        description="random: a seeded pick among those at least `gap` below the best (the paper's wording); "
        "lowest: the worst (the authors' notebook)",
    )
    seed: int = 0


def response_score(rating: dict[str, float]) -> float:
    return sum(rating[a] for a in SCORED_ASPECTS)


def pick_pair(
    group_id: str, ratings: Sequence[dict[str, int]], settings: PairSettings
) -> tuple[int, int] | None:
    scores = [response_score(r) for r in ratings]
    best = max(scores)
    if best - min(scores) < settings.gap:
        return None
    chosen = scores.index(best)
    if settings.rejected == "lowest":
        return chosen, scores.index(min(scores))
    low = [i for i, s in enumerate(scores) if s <= best - settings.gap]
    return chosen, random.Random(f"{settings.seed}:{group_id}").choice(low)


def pair_record(group: dict[str, Any], chosen: int, rejected: int) -> dict[str, Any]:
    """vialign's preference record: a sample (id, image, the question) plus `chosen` and `rejected`."""
    scores = [response_score(r) for r in group["ratings"]]
    return {
        "id": group["id"],
        **({"image": group["image"]} if group.get("image") is not None else {}),
        "conversations": [{"from": "human", "value": group["question"]}],
        "chosen": group["responses"][chosen],
        "rejected": group["responses"][rejected],
        "meta": {
            "preference": {
                "scores": scores,
                "chosen_index": chosen,
                "rejected_index": rejected,
                "ratings": group["ratings"],
                "judge": group.get("judge"),
            },
            **({"truth": group["truth"]} if group.get("truth") else {}),
        },
    }


def trl_record(pair: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational preference format (images, prompt, chosen, rejected)."""
    question = pair["conversations"][0]["value"]
    images = image_list(pair.get("image"))
    text = question.replace("<image>", "").strip()
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
    return {
        "images": images,
        "prompt": [{"role": "user", "content": content}],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair["chosen"]}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair["rejected"]}]}],
    }


def build_pairs(
    groups: Sequence[dict[str, Any]], settings: PairSettings
) -> tuple[list[dict], dict[str, int]]:
    pairs, counts = [], {"groups": len(groups), "unrated": 0, "small_gap": 0, "pairs": 0}
    for group in groups:
        if not group.get("ratings"):
            counts["unrated"] += 1
            continue
        picked = pick_pair(group["id"], group["ratings"], settings)
        if picked is None:
            counts["small_gap"] += 1
            continue
        pairs.append(pair_record(group, *picked))
    counts["pairs"] = len(pairs)
    return pairs, counts


def pairs_file(input: Path, out: Path, settings: PairSettings, trl_out: Path | None = None) -> dict[str, int]:
    """Pairs of a rated-groups file to `out` (and TRL's format to `trl_out`), with a manifest beside them."""
    from vialign.manifest import fingerprint_file, stage_manifest
    from vialign.records import read_jsonl, write_jsonl

    with stage_manifest(out.parent / f"{out.stem}.manifest", "prefer.pairs") as manifest:
        pairs, counts = build_pairs(list(read_jsonl(input)), settings)
        write_jsonl(pairs, out)
        if trl_out:
            write_jsonl([trl_record(p) for p in pairs], trl_out)
        manifest.inputs = {str(input): fingerprint_file(input)}
        manifest.settings = settings.model_dump(mode="json")
        manifest.counts = counts
        manifest.outputs = {str(out): fingerprint_file(out)}
    return counts


def run_stage(ctx: StageContext) -> None:
    counts = pairs_file(ctx.path("data"), ctx.out, ctx.settings, ctx.path("trl_out", None))
    ctx.say(
        f"{counts['pairs']} pairs from {counts['groups']} groups ({counts['small_gap']} below the gap, "
        f"{counts['unrated']} unrated) → {ctx.out}"
    )
