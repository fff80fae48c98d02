"""Export collected ratings to the reward-model annotation format, with agreement between annotators.

A candidate's `score` is the mean over annotators of each annotator's overall score (the weighted mean
of the criteria); `criteria` holds the per-criterion means; `ratings` keeps every annotator's scores.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from typing import Any

from vialign.annotate.app import AnnotateSettings
from vialign.annotate.store import AnnotationStore
from vialign.stage import StageContext


def collected(store: AnnotationStore) -> dict[str, dict[int, dict[str, dict[str, float]]]]:
    """item → candidate → annotator → criterion → score."""
    out: dict[str, dict[int, dict[str, dict[str, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in store.all_ratings():
        out[r["item_id"]][r["candidate"]].setdefault(r["annotator"], {})[r["criterion"]] = r["score"]
    return out


def export_groups(
    store: AnnotationStore, settings: AnnotateSettings
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    ratings = collected(store)
    groups, counts = [], {"items": 0, "exported": 0, "unrated": 0}
    for item in store.all_items():
        counts["items"] += 1
        by_candidate = ratings.get(item["item_id"])
        if not by_candidate:
            counts["unrated"] += 1
            continue
        kind, criteria = item["kind"], settings.criteria[item["kind"]]
        candidates = []
        for k, text in enumerate(item["candidates"]):
            per_annotator = by_candidate[k]
            overall = [settings.overall(kind, s) for s in per_annotator.values()]
            candidates.append(
                {
                    ("questions" if kind == "questions" else "answer"): text,
                    "score": round(statistics.fmean(overall), 6),
                    "criteria": {
                        c: round(statistics.fmean(s[c] for s in per_annotator.values()), 6) for c in criteria
                    },
                    "annotators": len(per_annotator),
                    "ratings": per_annotator,
                }
            )
        group = {"group_id": item["item_id"], "kind": kind, "image": item["image"], "candidates": candidates}
        if item["question"] is not None:
            group["question"] = item["question"]
        groups.append(group)
        counts["exported"] += 1
    return groups, counts


def agreement(store: AnnotationStore, settings: AnnotateSettings) -> dict[str, Any]:
    """Per pair of annotators over the items both rated: Pearson r and mean absolute difference of the
    overall scores, and the share of within-item candidate pairs they order the same way (what a
    Bradley–Terry reward model learns from)."""
    ratings = collected(store)
    kinds = {i["item_id"]: i["kind"] for i in store.all_items()}
    overall: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for item_id, by_candidate in ratings.items():
        for k, per in by_candidate.items():
            for annotator, scores in per.items():
                overall[annotator][item_id][k] = settings.overall(kinds[item_id], scores)
    pairs = []
    for a, b in itertools.combinations(sorted(overall), 2):
        shared = sorted(set(overall[a]) & set(overall[b]))
        xs = [overall[a][i][k] for i in shared for k in sorted(overall[a][i])]
        ys = [overall[b][i][k] for i in shared for k in sorted(overall[a][i])]
        same = total = 0
        for i in shared:
            for k, m in itertools.combinations(sorted(overall[a][i]), 2):
                da, db = overall[a][i][k] - overall[a][i][m], overall[b][i][k] - overall[b][i][m]
                if da and db:
                    total += 1
                    same += (da > 0) == (db > 0)
        pairs.append(
            {
                "annotators": [a, b],
                "items": len(shared),
                "ratings": len(xs),
                "pearson": round(statistics.correlation(xs, ys), 4)
                if len(xs) > 1 and len(set(xs)) > 1 and len(set(ys)) > 1
                else None,
                "mean_abs_diff": round(statistics.fmean(abs(x - y) for x, y in zip(xs, ys, strict=True)), 4)
                if xs
                else None,
                "pair_order_agreement": round(same / total, 4) if total else None,
            }
        )
    return {"annotators": sorted(overall), "pairs": pairs}


def run_stage(ctx: StageContext) -> None:
    import orjson
    from rich.table import Table

    from vialign.annotate.store import AnnotationStore
    from vialign.records import write_jsonl

    store = AnnotationStore(ctx.path("db"))
    groups, counts = export_groups(store, ctx.settings)
    write_jsonl(groups, ctx.out)
    stats = agreement(store, ctx.settings)
    agreement_path = ctx.out.with_name(ctx.out.stem + ".agreement.json")
    agreement_path.write_bytes(orjson.dumps({**counts, **stats}, option=orjson.OPT_INDENT_2))
    ctx.say(
        f"exported {counts['exported']} of {counts['items']} items ({counts['unrated']} unrated) → {ctx.out}"
    )
    view = Table(title="agreement between annotators")
    for column in ("annotators", "items", "pearson", "mean |Δ|", "pair order agreement"):
        view.add_column(column, justify="left" if column == "annotators" else "right")
    for p in stats["pairs"]:
        cells = (p["items"], p["pearson"], p["mean_abs_diff"], p["pair_order_agreement"])
        view.add_row(" / ".join(p["annotators"]), *map(str, cells))
    ctx.show(view)
